"""A real local cluster for the integration tests.

One per test session: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
kwok fake nodes and one real node (containerd, kubelet, kube-proxy, CoreDNS), all in a
network namespace of their own, started by ``hack/cluster-up.sh`` in a temporary
cluster dir and stopped by ``hack/cluster-down.sh`` (see docs/local-cluster.md). Only
one real node runs per machine, so a developer's ``make cluster-up`` must be down.

The binaries are built (or found in the cache) by ``hack/build-binaries.sh`` right after
collection, outside any test's timeout: a cold build compiles Kubernetes (15-20 minutes
on 2 cores); later runs find them in ``~/.cache/kubecast`` in milliseconds.
If the control plane cannot start, every test that needs it fails with the reason; it is
never skipped.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HACK = REPO_ROOT / "hack"
HERE = Path(__file__).resolve().parent
T = TypeVar("T")

# Generous: the first run compiles Kubernetes (tens of minutes on 2 cores).
BUILD_TIMEOUT_S = 3 * 60 * 60
CLUSTER_UP_TIMEOUT_S = 300


def _is_ours(item: pytest.Item) -> bool:
    return HERE in Path(str(item.fspath)).resolve().parents


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Everything in tests/integration needs the control plane: mark it so
    # `pytest -m "not integration"` leaves it out.
    for item in items:
        if _is_ours(item):
            item.add_marker(pytest.mark.integration)


_build: subprocess.CompletedProcess[str] | None = None


def _build_binaries() -> subprocess.CompletedProcess[str]:
    """Run hack/build-binaries.sh once per session (a no-op when the cache is warm)."""
    global _build
    if _build is None:
        cmd = [str(HACK / "build-binaries.sh")]
        try:
            _build = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            _build = subprocess.CompletedProcess(cmd, 124, "", f"timed out after {exc.timeout}s")
    return _build


def pytest_collection_finish(session: pytest.Session) -> None:
    # Build here rather than in the fixture: pytest-timeout counts a fixture's
    # setup against the first test, and a cold build takes far longer than that.
    if session.config.option.collectonly or not any(_is_ours(i) for i in session.items):
        return
    bin_dir = subprocess.run(
        [str(HACK / "build-binaries.sh"), "--print-bindir"], capture_output=True, text=True
    ).stdout.strip()
    if not (Path(bin_dir) / "kube-apiserver").exists():
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                "kubecast: building the control plane binaries into "
                f"{bin_dir} (first run: 15-20 min on 2 cores)..."
            )
    _build_binaries()


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl call whose message carries kubectl's stderr."""

    def __str__(self) -> str:
        return (
            f"kubectl {' '.join(map(str, self.cmd[2:]))} exited {self.returncode}\n"
            f"stdout: {self.stdout}\nstderr: {self.stderr}"
        )


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class ControlPlane:
    """Handle on the running control plane given to tests."""

    cluster_dir: Path
    kubeconfig: Path
    bin_dir: Path
    env: dict[str, str] = field(repr=False)

    def kubectl(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; with check=True raise KubectlError on failure."""
        cmd = [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args]
        proc = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, env=self.env
        )
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def apply(self, manifest: str, *args: str) -> subprocess.CompletedProcess[str]:
        """``kubectl apply -f -`` with the given YAML."""
        return self.kubectl("apply", "-f", "-", *args, input=manifest)

    @property
    def netns(self) -> str:
        """Path of the cluster's network namespace (for nsenter and tests.integration.netns)."""
        return self.env["KUBECAST_NETNS_PATH"]

    def log(self, component: str) -> str:
        """The log of a component (etcd, kube-apiserver, kube-controller-manager, ...)."""
        path = self.cluster_dir / "logs" / f"{component}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def restart_apiserver(self) -> float:
        """Stop kube-apiserver (SIGTERM) and start it again on the same port and data.

        Returns once /readyz is ok, with the seconds that took. Clients with open
        watches see their connections drop, which is what the operator's recovery
        tests need.
        """
        started = time.monotonic()
        proc = subprocess.run(
            [str(HACK / "cluster-up.sh"), "--restart-apiserver"],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=CLUSTER_UP_TIMEOUT_S,
        )
        if proc.returncode != 0:
            pytest.fail(f"kube-apiserver did not restart:\n{_tail(proc.stderr)}", pytrace=False)
        return time.monotonic() - started

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for this cluster (imported lazily)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def wait_for(
        self,
        what: str,
        predicate: Callable[[], T],
        timeout: float = 60,
        interval: float = 0.25,
    ) -> T:
        """Poll ``predicate()`` until it returns something truthy; fail with ``what``."""
        deadline = time.monotonic() + timeout
        last: T | None = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(interval)
        pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """The session's control plane (see module docstring)."""
    env = dict(os.environ)
    build = _build_binaries()
    if build.returncode != 0:
        pytest.fail(
            f"hack/build-binaries.sh failed ({build.returncode}):\n{_tail(build.stderr)}",
            pytrace=False,
        )
    bin_dir = Path(build.stdout.strip().splitlines()[-1])

    cluster_dir = tmp_path_factory.mktemp("kubecast") / "cluster"
    env.update(
        KUBECAST_CLUSTER_DIR=str(cluster_dir),
        KUBECAST_BIN_DIR=str(bin_dir),
        KUBECONFIG=str(cluster_dir / "kubeconfig"),
    )
    cp = ControlPlane(
        cluster_dir=cluster_dir,
        kubeconfig=cluster_dir / "kubeconfig",
        bin_dir=bin_dir,
        env=env,
    )
    try:
        for attempt in (1, 2):
            up = subprocess.run(
                [str(HACK / "cluster-up.sh")],
                capture_output=True,
                text=True,
                env=env,
                timeout=CLUSTER_UP_TIMEOUT_S,
            )
            if up.returncode == 0 or attempt == 2:
                break
            # Free ports are picked before they are bound, so another process can
            # take one in between; a second try with fresh ports settles that.
            subprocess.run(
                [str(HACK / "cluster-down.sh")], env=env, capture_output=True, timeout=120
            )
        if up.returncode != 0:
            pytest.fail(
                f"hack/cluster-up.sh failed ({up.returncode}); logs in {cluster_dir}/logs:\n"
                f"{_tail(up.stderr, 80)}",
                pytrace=False,
            )
        # The namespace, the node and the in-namespace kubeconfig, for the
        # processes a test runs inside the cluster's network namespace.
        for line in (cluster_dir / "cluster.env").read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not key.startswith("#") and key != "KUBECONFIG":
                env[key] = value
        yield cp
    finally:
        # Keep the logs next to pytest's other temp files for a post-mortem;
        # pytest prunes old temp dirs itself.
        subprocess.run(
            [str(HACK / "cluster-down.sh")],
            env={**env, "KUBECAST_KEEP_LOGS": "1"},
            capture_output=True,
            timeout=120,
        )


CRD_DIR = REPO_ROOT / "crds"
SAMPLES_DIR = REPO_ROOT / "samples"


@pytest.fixture(scope="session")
def kubecast_crds(control_plane: ControlPlane) -> list[str]:
    """Install crds/*.yaml and wait until every CRD is Established; returns their names."""
    files = sorted(CRD_DIR.glob("*.yaml"))
    assert files, f"no CRDs in {CRD_DIR}"
    # Server-side apply: no last-applied-configuration annotation, whose 256 KiB
    # limit large CRDs hit with client-side apply.
    control_plane.kubectl(
        "apply", "--server-side", "--field-manager=kubecast-tests", "-f", str(CRD_DIR)
    )
    names = [control_plane.kubectl("get", "-f", str(f), "-o", "name").stdout.strip() for f in files]
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
    return names


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting for it to go)."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())
    name = f"t-{base[:40].strip('-')}-{os.urandom(3).hex()}"
    control_plane.kubectl("create", "namespace", name)
    # Pods need the namespace's default ServiceAccount (ServiceAccount admission).
    control_plane.wait_for(
        f"ServiceAccount {name}/default",
        lambda: (
            control_plane.kubectl(
                "-n", name, "get", "serviceaccount", "default", check=False
            ).returncode
            == 0
        ),
    )
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def kubecast_images(control_plane: ControlPlane) -> dict[str, str]:
    """Both images built from this tree (``make images``) and loaded into the real node."""
    from . import release

    return release.build_images(control_plane)


@pytest.fixture(scope="module")
def kubecast(
    control_plane: ControlPlane, kubecast_crds: list[str], kubecast_images: dict[str, str]
) -> Iterator[Any]:
    """kubecast installed with helm for one test module (its operator a real pod).

    Module scope, on purpose: a module's release is the only operator while the
    module runs, and it is uninstalled before the next module starts its own.
    """
    from . import release

    installed = release.install(control_plane)
    yield installed
    release.uninstall(installed)
