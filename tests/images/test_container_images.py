"""The operator and worker images, really built (``hack/images.sh``) and looked into.

``make images`` builds both Dockerfile targets with buildah on a Debian base it
bootstraps itself (no Docker daemon, no registry) and writes archives for
``ctr images import``. These tests run it (cached: seconds after the first
time) and check what a user of the images would notice: the names the Helm
chart pulls, the numeric non-root user, the entrypoints, the HEALTHCHECK, that
both programs start and import inside their image, that the worker has no
compiler or pip cache, that the build's CA-bundle mount left nothing behind,
and that containerd imports the archives under the chart's names.

They need root, buildah (and, for the first build, debootstrap); containerd for
the import. Without them they skip, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
IMAGES_SH = REPO / "hack" / "images.sh"
CHART = yaml.safe_load((REPO / "charts" / "kubecast" / "Chart.yaml").read_text())
VALUES = yaml.safe_load((REPO / "charts" / "kubecast" / "values.yaml").read_text())
TAG = os.environ.get("IMAGE_TAG") or CHART["appVersion"]
BASE = f"localhost/kubecast/python-base:{os.environ.get('DEBIAN_SUITE', 'bookworm')}"
UID = 10001
PROGRAMS = {"operator": "kubecast-operator", "worker": "kubecast-worker"}
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
COMPILERS = ("cc", "c++", "gcc", "g++", "cpp", "clang", "tcc", "x86_64-linux-gnu-gcc")


def normalise(repository: str, tag: str) -> str:
    """The full name containerd (and so the kubelet) gives ``repository:tag``."""
    first = repository.split("/", 1)[0]
    if "/" in repository and ("." in first or ":" in first or first == "localhost"):
        return f"{repository}:{tag}"
    if "/" not in repository:
        repository = f"library/{repository}"
    return f"docker.io/{repository}:{tag}"


NAMES = {
    "operator": normalise(VALUES["image"]["repository"], TAG),
    "worker": normalise(VALUES["worker"]["image"]["repository"], TAG),
}


def unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: not skipping)")
    pytest.skip(reason)


def run(
    *cmd: str | Path, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check:
        assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@dataclass
class Image:
    target: str
    name: str
    archive: Path
    config: dict[str, Any]
    container: str
    rootfs: Path

    def run(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        """``cmd`` inside the image, as the image's user, with its environment."""
        return run("buildah", "run", "--isolation", "chroot", self.container, "--", *cmd)


@pytest.fixture(scope="module")
def archives() -> dict[str, Path]:
    """Run hack/images.sh (on its default, bootstrapped base) and read the archive paths."""
    if shutil.which("buildah") is None:
        unavailable("needs buildah (apt-get install buildah)")
    if os.geteuid() != 0:
        unavailable("buildah builds here run as root")
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_IMAGE"}
    proc = subprocess.run(
        [str(IMAGES_SH)], capture_output=True, text=True, timeout=1500, env=env, check=False
    )
    assert proc.returncode == 0, f"hack/images.sh failed:\n{proc.stderr[-4000:]}"
    printed = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    assert set(printed) == {"operator", "worker"}, proc.stdout
    # The same paths for other scripts, without a build.
    again = run(IMAGES_SH, "--print-archives")
    assert again.stdout.splitlines() == proc.stdout.splitlines()[-2:]
    return {target: Path(path) for target, path in printed.items()}


def _mount(image: str) -> tuple[str, Path]:
    container = run("buildah", "from", "--pull=never", "--quiet", image).stdout.strip()
    return container, Path(run("buildah", "mount", container).stdout.strip())


@pytest.fixture(scope="module")
def images(archives: dict[str, Path]) -> Iterator[dict[str, Image]]:
    out: dict[str, Image] = {}
    try:
        for target, name in NAMES.items():
            inspected = json.loads(run("buildah", "inspect", "--type", "image", name).stdout)
            container, rootfs = _mount(name)
            out[target] = Image(
                target, name, archives[target], inspected["Docker"]["config"], container, rootfs
            )
        yield out
    finally:
        for image in out.values():
            run("buildah", "rm", image.container, check=False)


@pytest.fixture(scope="module")
def base_rootfs(images: dict[str, Image]) -> Iterator[Path]:
    container, rootfs = _mount(BASE)
    try:
        yield rootfs
    finally:
        run("buildah", "rm", container, check=False)


def test_both_images_exist_under_the_names_the_chart_pulls(images: dict[str, Image]) -> None:
    for target, image in images.items():
        listed = run("buildah", "images", "--noheading", "--format", "{{.Name}}:{{.Tag}}").stdout
        assert image.name in listed.split(), f"{target}: {image.name} not in buildah images"
        assert image.archive.is_file() and image.archive.stat().st_size > 50_000_000


@pytest.mark.parametrize("target", ["operator", "worker"])
def test_the_image_config_runs_the_program_as_the_numeric_non_root_user(
    images: dict[str, Image], target: str
) -> None:
    config = images[target].config
    # NB: numeric, or the kubelet cannot check runAsNonRoot and refuses the pod.
    assert config["User"] in (str(UID), f"{UID}:{UID}")
    assert config["Entrypoint"] == [PROGRAMS[target]]
    assert any(e.startswith("PATH=/opt/kubecast/bin:") for e in config["Env"])


def test_the_operator_keeps_its_healthcheck_and_the_worker_has_none(
    images: dict[str, Image],
) -> None:
    # buildah drops HEALTHCHECK from OCI-format images: this proves --format docker.
    check = images["operator"].config.get("Healthcheck") or {}
    assert check.get("Test", [None])[0] == "CMD", check
    assert f"127.0.0.1:{VALUES['operator']['healthPort']}/healthz" in " ".join(check["Test"])
    assert check["Retries"] == 3
    worker = images["worker"].config.get("Healthcheck")
    assert worker is None or worker.get("Test") == ["NONE"], worker


@pytest.mark.parametrize("target", ["operator", "worker"])
def test_the_program_starts_inside_its_image(images: dict[str, Image], target: str) -> None:
    program = PROGRAMS[target]
    proc = images[target].run(program, "--help")
    assert proc.stdout.startswith(f"usage: {program}"), proc.stdout


@pytest.mark.parametrize(
    ("target", "present", "absent"),
    [
        ("operator", ["kopf", "kubernetes", "kubecast_operator", "kubecast_api"], ["av"]),
        ("worker", ["av", "kubecast_worker", "kubecast_api"], ["kopf", "kubernetes"]),
    ],
)
def test_the_image_imports_its_stack_and_only_that(
    images: dict[str, Image], target: str, present: list[str], absent: list[str]
) -> None:
    script = (
        f"import importlib.util, os; import {', '.join(present)}; "
        f"print(os.getuid(), [m for m in {absent!r} if importlib.util.find_spec(m)])"
    )
    proc = images[target].run("python", "-c", script)
    assert proc.stdout.strip().split(maxsplit=1) == [str(UID), "[]"], proc.stdout + proc.stderr


def test_the_worker_has_its_srt_listener_and_no_apt_caches(images: dict[str, Image]) -> None:
    """SRT ingest runs srt-live-transmit (srt.py); it must start as the worker's user."""
    proc = images["worker"].run("srt-live-transmit", "-version")
    assert "SRT Library version: 1.5" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    root = images["worker"].rootfs
    assert not list((root / "var/lib/apt/lists").glob("*_Packages"))
    assert not list((root / "var/cache/apt").glob("*.bin")), "apt's package caches (tens of MB)"


@pytest.mark.parametrize("target", ["operator", "worker"])
def test_no_compiler_no_pip_cache_no_build_leftovers(images: dict[str, Image], target: str) -> None:
    root = images[target].rootfs
    for bindir in ("usr/bin", "usr/local/bin", "bin", "opt/kubecast/bin"):
        found = [c for c in COMPILERS if (root / bindir / c).exists()]
        assert not found, f"{target}: compilers in /{bindir}: {found}"
    assert not list((root / "usr/lib/gcc").glob("*/*/cc1")), f"{target}: gcc's cc1 is there"
    caches = [
        Path(dirpath, name)
        for dirpath, dirnames, _ in os.walk(root)
        for name in dirnames
        if name == "pip" and Path(dirpath).name == ".cache"
    ]
    assert not caches, f"{target}: pip caches {caches}"
    assert not (root / "wheels").exists() and not (root / "src").exists()


@pytest.mark.parametrize("target", ["operator", "worker"])
def test_the_build_mounts_left_nothing_in_the_image(
    images: dict[str, Image], base_rootfs: Path, target: str
) -> None:
    root = images[target].rootfs
    # The host's /etc/pip.conf is not mounted for the bootstrapped base, and
    # an empty mount point would show here.
    assert not (root / "etc/pip.conf").exists() and not (base_rootfs / "etc/pip.conf").exists()
    # The host's CA bundle was mounted over the base's: the image keeps the base's.
    ca = "etc/ssl/certs/ca-certificates.crt"
    assert (root / ca).read_bytes() == (base_rootfs / ca).read_bytes()
    if HOST_CA.is_file() and HOST_CA.read_bytes() != (base_rootfs / ca).read_bytes():
        assert (root / ca).read_bytes() != HOST_CA.read_bytes()


@pytest.mark.parametrize("target", ["operator", "worker"])
def test_the_archive_is_a_docker_archive_named_for_the_chart(
    images: dict[str, Image], target: str
) -> None:
    with tarfile.open(images[target].archive) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        (manifest,) = json.load(member)
    # containerd normalises kubecast/worker:0.1.0 to docker.io/kubecast/worker:0.1.0.
    tags = {normalise(*t.rsplit(":", 1)) for t in manifest["RepoTags"]}
    assert tags == {images[target].name}


@pytest.fixture(scope="module")
def containerd() -> Iterator[str]:
    """A throwaway containerd (own root, state and socket) for the import; its socket."""
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        unavailable("needs containerd and ctr (apt-get install containerd)")
    work = Path(tempfile.mkdtemp(prefix="kc-ctrd-", dir="/tmp"))
    (work / "config.toml").write_text(
        'version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
    )
    sock = str(work / "containerd.sock")
    log = (work / "containerd.log").open("w")
    proc = subprocess.Popen(
        [
            "containerd",
            "--config",
            str(work / "config.toml"),
            "--address",
            sock,
            "--root",
            str(work / "root"),
            "--state",
            str(work / "state"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while run("ctr", "-a", sock, "version", check=False).returncode != 0:
            assert proc.poll() is None, (work / "containerd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "containerd did not answer in 30 s"
            time.sleep(0.2)
        yield sock
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        for line in reversed(Path("/proc/mounts").read_text().splitlines()):
            mountpoint = line.split()[1]
            if mountpoint.startswith(f"{work}/"):
                subprocess.run(["umount", "-l", mountpoint], check=False)
        shutil.rmtree(work, ignore_errors=True)


def test_containerd_imports_the_archives_under_the_chart_names(
    images: dict[str, Image], containerd: str
) -> None:
    ctr = ("ctr", "-a", containerd, "-n", "k8s.io")
    for image in images.values():
        run(*ctr, "images", "import", image.archive, timeout=300)
    listed = run(*ctr, "images", "ls", "-q").stdout.split()
    assert {i.name for i in images.values()} <= set(listed), listed
    # Unpacked into the snapshotter, so a pod can start without a pull.
    for image in images.values():
        (row,) = [
            r
            for r in run(*ctr, "images", "check").stdout.splitlines()
            if r.startswith(image.name + " ")
        ]
        assert "complete" in row and row.split()[-1] == "true", row
