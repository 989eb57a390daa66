#!/usr/bin/env python3
# ruff: noqa: E402  (sys.path is fixed before the imports, see below)
"""Benchmark: the operator with N LiveStreams, on the real local control plane.

    .venv/bin/python bench/operator.py [--streams 100,500,1000] [--steady-streams 1000]
        [--steady-seconds 300] [--cluster-dir DIR] [--json results.json] [--quick]

What runs: the local cluster of hack/cluster-up.sh without a real node
(KUBECAST_REAL_NODE=0: etcd, kube-apiserver, controller-manager, scheduler, kwok
nodes enough for every worker pod), started in a temporary dir unless
``--cluster-dir`` names a running one. The operator is the real
``kubecast-operator`` process with its default timings (2 s worker poll, 30 s
resync), inside the cluster's network namespace, watching the bench's namespace.

NB: no worker runs. The worker pods land on kwok nodes, which give them fake IPs
from 10.245.0.0/16; for the run, that range is routed to the namespace's own
loopback (``ip route replace local``) and ONE small HTTP server there answers
``GET /status`` for every pod IP with the document of an idle, ready worker. So
the operator polls as many addresses as it would in production, and every
stream reaches phase Idle, but media costs nothing.

For each N (fresh namespace, fresh operator process):
- create: N LiveStreams posted at once (16 at a time), and the seconds until
  every one has all its children (Deployment, ConfigMap, 2 Services, key Secret)
  and a status whose observedGeneration is current;
- the operator's peak RSS (VmHWM) and CPU seconds (user + system) until then;
- the API requests the operator made, counted by the API server: its audit log
  (hack/cluster-up.sh writes one), the operator's entries told apart by user
  agent (kopf's client and the Kubernetes Python client), split by verb;
- for N = ``--steady-streams``: ``--steady-seconds`` with nothing changing,
  then requests per stream per minute by verb, and the operator's CPU (cores);
- delete: every LiveStream deleted at once (one DELETE of the collection), and
  the seconds until they and every child are gone.
"""

from __future__ import annotations

import os
import sys

# NB: run as a script, this file's directory comes first on sys.path, where this
# file would stand in for the standard library's ``operator`` module.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse
import asyncio
import contextlib
import json
import math
import platform
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HACK = REPO / "hack"
BIN = Path(sys.executable).parent
MANAGED = "app.kubernetes.io/managed-by=kubecast-operator"
#: Children per stream, by kind (a push stream without a key of its own gets a Secret).
CHILDREN = {"Deployment": 1, "ConfigMap": 1, "Service": 2, "Secret": 1}
#: The operator's clients, as the API server's audit log names them.
OPERATOR_AGENTS = ("kopf/", "OpenAPI-Generator/")
BENCH_AGENT = "kubecast-bench"
KWOK_POD_CIDR = "10.245.0.0/16"  # hack/lib/cluster-common.sh
STATUS_PORT = 9090  # the worker's admin port (kubecast_operator.settings)
#: The operator's /metrics, inside the cluster's network namespace (nothing else listens there).
METRICS_PORT = 18080
#: kwok nodes take 110 pods each (hack/cluster-up.sh).
PODS_PER_NODE = 110

IDLE_WORKER = {
    "stream": "bench",
    "state": "idle",
    "ready": True,
    "ingest": {"mode": "push", "url": "rtmp://0.0.0.0:1935/live", "counters": {}},
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the one /status server for every fake pod IP ------------------------------


def serve_status(port: int) -> None:
    """Answer every HTTP request with an idle worker's /status (keep-alive, no parsing
    beyond the end of the headers: it must cost far less than what it answers)."""
    body = json.dumps(IDLE_WORKER).encode()
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )

    class Answer(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while b"\r\n\r\n" in self.buffer:
                _, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
                self.transport.write(response)  # type: ignore[attr-defined]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Answer, "0.0.0.0", port, backlog=1024)
        print("serving", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# --- the cluster -------------------------------------------------------------------


class Cluster:
    def __init__(self, cluster_dir: Path, env: dict[str, str]) -> None:
        self.dir, self.env = cluster_dir, env
        self.netns = env["KUBECAST_NETNS_PATH"]
        self.audit = cluster_dir / "logs" / "audit.log"

    @classmethod
    @contextlib.contextmanager
    def of(cls, cluster_dir: Path | None, kwok_nodes: int, keep: bool) -> Iterator[Cluster]:
        env = dict(os.environ)
        ours = cluster_dir is None
        if cluster_dir is None:
            cluster_dir = Path(tempfile.mkdtemp(prefix="kubecast-bench-")) / "cluster"
            env.update(KUBECAST_REAL_NODE="0", KUBECAST_KWOK_NODES=str(kwok_nodes))
        env["KUBECAST_CLUSTER_DIR"] = str(cluster_dir)
        try:
            if ours:
                log(f"starting a cluster in {cluster_dir} ({kwok_nodes} kwok nodes, no real node)")
                subprocess.run([str(HACK / "cluster-up.sh")], env=env, check=True, timeout=600)
            for line in (cluster_dir / "cluster.env").read_text().splitlines():
                key, sep, value = line.partition("=")
                if sep and not key.startswith("#"):
                    env[key] = value
            cluster = cls(cluster_dir, env)
            cluster.install_crds()
            yield cluster
        finally:
            if ours and not keep:
                subprocess.run(
                    [str(HACK / "cluster-down.sh")], env=env, capture_output=True, timeout=300
                )

    def install_crds(self) -> None:
        crds = str(REPO / "crds")
        self.kubectl("apply", "--server-side", "--field-manager=kubecast-bench", "-f", crds,
                     check=True)  # fmt: skip
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", crds,
                     check=True)  # fmt: skip

    def kube(self) -> Any:
        from kubernetes import config

        from kubecast_operator.kube import Kube

        api = config.new_client_from_config(config_file=self.env["KUBECONFIG"])
        api.user_agent = BENCH_AGENT  # so that the audit log tells the bench apart
        api.configuration.connection_pool_maxsize = 32
        api.rest_client.pool_manager.connection_pool_kw["maxsize"] = 32
        return Kube(api)

    def in_netns(self, *argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nsenter", f"--net={self.netns}", "--", *argv], text=True, capture_output=True,
            **kwargs,
        )  # fmt: skip

    def kubectl(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        bin_dir = Path(self.env["KUBECAST_BIN_DIR"])
        return subprocess.run(
            [str(bin_dir / "kubectl"), f"--kubeconfig={self.env['KUBECONFIG']}", *args],
            text=True, capture_output=True, env=self.env, **kwargs,
        )  # fmt: skip

    def kwok_capacity(self) -> int:
        nodes = self.kube().list("Node", label_selector="type=kwok")
        return sum(int(n["status"]["allocatable"]["pods"]) for n in nodes)


@contextlib.contextmanager
def status_server(cluster: Cluster) -> Iterator[None]:
    """Route the kwok pod range to the namespace's loopback and answer /status there."""
    # NB: a route of type local goes to the local table, which is looked up before
    # the main one and its "unreachable" route for the range.
    routed = cluster.in_netns("ip", "route", "replace", "local", KWOK_POD_CIDR, "dev", "lo",
                              "table", "local")  # fmt: skip
    if routed.returncode != 0:
        raise SystemExit(f"could not route {KWOK_POD_CIDR} locally: {routed.stderr}")
    server = subprocess.Popen(
        ["nsenter", f"--net={cluster.netns}", "--", sys.executable, __file__,
         "--serve-status", str(STATUS_PORT)],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "serving":
            raise SystemExit(f"the /status server did not start (port {STATUS_PORT} taken?)")
        yield
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)
        # Back to what hack/cluster-up.sh made: nothing answers at a fake pod IP.
        cluster.in_netns("ip", "route", "del", "local", KWOK_POD_CIDR, "dev", "lo", "table",
                         "local")  # fmt: skip


# --- the operator process --------------------------------------------------------


class Operator:
    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        log_path: Path,
        source: Path | None = None,
        heap: Path | None = None,
    ) -> None:
        env = {
            **cluster.env,
            "KUBECONFIG": cluster.env["KUBECONFIG_NETNS"],
            "KUBECAST_PUBLIC_HOST": "127.0.0.1",
            "KUBECAST_WORKER_NODE_SELECTOR": json.dumps({"type": "kwok"}),
            "KUBECAST_WORKER_TOLERATIONS": json.dumps(
                [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]
            ),
        }
        for name in ("KUBECAST_POLL_SECONDS", "KUBECAST_RESYNC_SECONDS"):
            env.pop(name, None)  # the defaults, as installed by the chart
        program = [str(BIN / "kubecast-operator")]
        if source is not None:  # another tree's operator, e.g. a commit's for before/after
            env["PYTHONPATH"] = str(source / "operator")
            program = [sys.executable, "-m", "kubecast_operator.cli"]
        if heap is not None:  # under tracemalloc: where its memory goes (heap_dump)
            program = [sys.executable, str(REPO / "bench" / "operator_heap.py"), str(heap)]
        self.heap = heap
        # Its /metrics, in the cluster's namespace, for the worker polls it counts.
        self.cluster, self.metrics_port = cluster, METRICS_PORT
        argv = [
            "nsenter", f"--net={cluster.netns}", "--", *program,
            "--namespace", namespace, "--metrics-port", str(self.metrics_port),
            "--liveness-port", "0", "--no-leader-election",
        ]  # fmt: skip
        self.log_path = log_path
        with open(log_path, "ab") as sink:
            # nsenter execs the operator: this pid is the operator's.
            self.proc = subprocess.Popen(
                argv, env=env, stdout=sink, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime

    def memory_mb(self) -> tuple[float, float]:
        """(RSS now, peak RSS) in MB."""
        found = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) / 1024
        return round(found["VmRSS"], 1), round(found["VmHWM"], 1)

    def polls(self) -> dict[str, float]:
        """Its counters of worker polls: failed, and of those forgiven (one miss in a row)."""
        got = self.cluster.in_netns(
            "curl", "-s", "--max-time", "10", f"http://127.0.0.1:{self.metrics_port}/metrics"
        )
        found = {"failed": 0.0, "forgiven": 0.0}
        for line in got.stdout.splitlines():
            name, _, value = line.partition("{")
            if 'resource="LiveStream"' not in value:
                continue
            if name == "kubecast_operator_worker_poll_errors_total":
                found["failed"] = float(value.rsplit(" ", 1)[1])
            elif name == "kubecast_operator_worker_polls_forgiven_total":
                found["forgiven"] = float(value.rsplit(" ", 1)[1])
        return found

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_lines(self, text: str) -> list[str]:
        """The lines of its log that hold ``text``."""
        with open(self.log_path, errors="replace") as log:
            return [line.rstrip() for line in log if text in line]

    def log_count(self, text: str) -> int:
        return len(self.log_lines(text))

    def heap_dump(self, wait: float = 600) -> str | None:
        """Under ``--heap``: the operator's tracemalloc report of now (bench/operator_heap.py).

        NB: writing it takes minutes at 500 streams, the operator stopped meanwhile.
        """
        if self.heap is None:
            return None
        before = set(self.heap.parent.glob(f"{self.heap.name}-*.txt"))
        os.kill(self.proc.pid, signal.SIGUSR1)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            new = set(self.heap.parent.glob(f"{self.heap.name}-*.txt")) - before
            if new:
                time.sleep(1)  # written in one go, but let it finish
                return str(new.pop())
            time.sleep(1)
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# --- counting requests -------------------------------------------------------------


class Audit:
    """The operator's requests in the API server's audit log, from a mark on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.inode, self.offset = self._where()

    def _where(self) -> tuple[int, int]:
        stat = self.path.stat()
        return stat.st_ino, stat.st_size

    def since(self) -> tuple[Counter[str], Counter[str]]:
        """(requests by verb, by verb and resource) since the mark."""
        time.sleep(2)  # the API server writes its audit log in batches
        inode, _ = self._where()
        if inode != self.inode:
            raise SystemExit(f"{self.path} was rotated during a measurement; figures lost")
        verbs: Counter[str] = Counter()
        detail: Counter[str] = Counter()
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line being written
                if entry.get("stage") != "ResponseComplete":
                    continue
                if not str(entry.get("userAgent", "")).startswith(OPERATOR_AGENTS):
                    continue
                verb = entry["verb"]
                ref = entry.get("objectRef") or {}
                resource = ref.get("resource", "?") + (
                    f"/{ref['subresource']}" if ref.get("subresource") else ""
                )
                code = (entry.get("responseStatus") or {}).get("code")
                verbs[verb] += 1
                detail[f"{verb} {resource} {code}"] += 1
        return verbs, detail


def phase_changes(kube: Any, namespace: str, since: str) -> dict[str, int]:
    """The streams' phase changes from ``since`` (UTC, RFC 3339) on, by the phase
    entered: the operator posts one Event per change, its reason the new phase."""
    found: Counter[str] = Counter()
    for event in kube.list("Event", namespace):
        if (event.get("involvedObject") or {}).get("kind") != "LiveStream":
            continue
        if (event.get("firstTimestamp") or event.get("eventTime") or "") >= since:
            found[str(event.get("reason"))] += int(event.get("count") or 1)
    return dict(sorted(found.items()))


def events_per_stream(kube: Any, namespace: str) -> dict[str, dict[str, int]]:
    """How many Events of each reason each stream got: reason -> {count: streams}.

    One per phase entered: a stream that was Pending and then Idle has one of each
    (``kubectl describe`` shows what happened, once)."""
    counts: Counter[tuple[str, str]] = Counter()
    for event in kube.list("Event", namespace):
        involved = event.get("involvedObject") or {}
        if involved.get("kind") == "LiveStream":
            key = (str(event.get("reason")), str(involved.get("name")))
            counts[key] += int(event.get("count") or 1)
    found: dict[str, Counter[str]] = {}
    for (reason, _), count in counts.items():
        found.setdefault(reason, Counter())[str(count)] += 1
    return {reason: dict(sorted(c.items())) for reason, c in sorted(found.items())}


def per(counts: Counter[str], divisor: float) -> dict[str, float]:
    return {k: round(v / divisor, 2) for k, v in sorted(counts.items())}


# --- one run -----------------------------------------------------------------------


def stream(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubecast.dev/v1alpha1",
        "kind": "LiveStream",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "ingest": {"push": {"app": "live"}},
            "profileRef": {"name": "default"},
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
        },
    }


def progress(kube: Any, namespace: str) -> tuple[int, int, int]:
    """(streams, streams with every child, of those the ones whose status is current)."""
    streams = kube.list("LiveStream", namespace)
    owned: Counter[tuple[str, str]] = Counter()
    for kind in CHILDREN:
        for child in kube.list(kind, namespace, label_selector=MANAGED):
            for owner in child["metadata"].get("ownerReferences") or []:
                owned[(owner["uid"], kind)] += 1
    complete = current = 0
    for s in streams:
        uid = s["metadata"]["uid"]
        if all(owned[(uid, kind)] >= n for kind, n in CHILDREN.items()):
            complete += 1
            if (s.get("status") or {}).get("observedGeneration") == s["metadata"]["generation"]:
                current += 1
    return len(streams), complete, current


def remaining(kube: Any, namespace: str) -> dict[str, int]:
    """What is left of the streams and their children (not the worker pods: their
    end is the garbage collector's and kwok's work, not the operator's)."""
    left = {"LiveStream": len(kube.list("LiveStream", namespace))}
    for kind in CHILDREN:
        left[kind] = len(kube.list(kind, namespace, label_selector=MANAGED))
    return {k: v for k, v in left.items() if v}


def run(
    cluster: Cluster,
    n: int,
    steady_seconds: float,
    workdir: Path,
    source: Path | None,
    settle_seconds: float = 35,
    heap: bool = False,
    skip_delete: bool = False,
) -> dict[str, Any]:
    kube = cluster.kube()
    namespace = f"bench-{n}-{os.urandom(2).hex()}"
    cluster.kubectl("create", "namespace", namespace, check=True)
    cluster.kubectl("-n", namespace, "apply", "-f", str(REPO / "samples" /
                    "transcodeprofile-default.yaml"), check=True)  # fmt: skip
    result: dict[str, Any] = {"streams": n, "namespace": namespace}
    op = Operator(
        cluster, namespace, workdir / f"operator-{n}.log", source,
        heap=workdir / f"heap-{n}" if heap else None,
    )  # fmt: skip
    try:
        time.sleep(3)  # let it start its watches, so that creation is what it sees
        cpu0 = op.cpu_seconds()
        audit = Audit(cluster.audit)
        log(f"N={n}: creating {n} LiveStreams")
        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(kube.create, (stream(namespace, f"s{i:04d}") for i in range(n))))
        result["create_seconds"] = round(time.monotonic() - started, 1)
        interval = 1.0 if n <= 200 else 2.0
        reached: dict[str, float] = {}  # share of the streams converged -> seconds
        while True:
            _, complete, current = progress(kube, namespace)
            for share in (0.1, 0.5, 0.9):
                if current >= share * n:
                    reached.setdefault(f"{share:.0%}", round(time.monotonic() - started, 1))
            if current == n:
                break
            if not op.alive():
                raise SystemExit(f"the operator exited; see {op.log_path}")
            if time.monotonic() - started > max(600, n):
                raise SystemExit(f"N={n}: not converged ({complete} complete, {current} current)")
            time.sleep(interval)
        result["converge_seconds"] = round(time.monotonic() - started, 1)
        # A stream's own wait: how soon the first streams were done, not only the last.
        result["converged_share_seconds"] = reached
        result["load_average"] = round(os.getloadavg()[0], 2)  # the machine's, meanwhile
        verbs, detail = audit.since()
        result["converge_cpu_seconds"] = round(op.cpu_seconds() - cpu0, 1)
        result["rss_mb"], result["peak_rss_mb"] = op.memory_mb()
        result["converge_requests_per_stream"] = per(verbs, n)
        result["converge_requests_total"] = sum(verbs.values())
        result["converge_requests_detail"] = dict(detail.most_common())
        per_stream = json.dumps(result["converge_requests_per_stream"])
        log(f"N={n}: converged in {result['converge_seconds']} s; {per_stream}")
        if heap:
            result["heap_at_convergence"] = op.heap_dump()

        # Every worker's answer in status (phase Idle): the pods run later than the
        # children exist, and the streams' writes for them are part of the start.
        while True:
            phases = Counter(
                (x.get("status") or {}).get("phase") for x in kube.list("LiveStream", namespace)
            )
            if phases["Idle"] == n or time.monotonic() - started > max(600, 2 * n):
                break
            time.sleep(interval)
        result["idle_seconds"] = round(time.monotonic() - started, 1)
        result["phases"] = dict(phases)
        # kopf posts Events from a queue of its own, after the status write that
        # caused them: the last streams' "Idle" can be a moment behind their phase.
        waited = time.monotonic()
        deadline = waited + 20
        while True:
            events = events_per_stream(kube, namespace)
            posted = sum((events.get("Idle") or {}).values())
            if posted >= phases["Idle"] or time.monotonic() > deadline:
                break
            time.sleep(1)
        result["events_per_stream"] = events
        result["events_waited_seconds"] = round(time.monotonic() - waited, 1)
        result["event_posts_failed"] = op.log_count("Failed to post an event")
        if posted < phases["Idle"]:  # which, and what the operator said of them
            announced = {
                (e.get("involvedObject") or {}).get("name")
                for e in kube.list("Event", namespace)
                if e.get("reason") == "Idle"
            }
            result["idle_unannounced"] = {
                name: op.log_lines(f"[{namespace}/{name}]")[-10:]
                for name in sorted(
                    x["metadata"]["name"] for x in kube.list("LiveStream", namespace)
                )
                if name not in announced
            }
        # Status PATCHes from the first POST until every stream was Idle: Pending,
        # then Idle is two; more is a status written again with nothing new in it.
        _, detail = audit.since()
        result["status_writes_per_stream_to_idle"] = round(
            detail["patch livestreams/status 200"] / n, 2
        )
        if steady_seconds:
            time.sleep(settle_seconds)  # the workers' first answers are in status by then
            log(f"N={n}: steady state for {steady_seconds:.0f} s")
            audit = Audit(cluster.audit)
            polls0, since = op.polls(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            cpu0, t0 = op.cpu_seconds(), time.monotonic()
            time.sleep(steady_seconds)
            elapsed = time.monotonic() - t0
            cpu = op.cpu_seconds() - cpu0
            polls = {k: v - polls0[k] for k, v in op.polls().items()}
            verbs, detail = audit.since()
            minutes = elapsed / 60
            result["steady"] = {
                "seconds": round(elapsed),
                "requests_per_stream_per_minute": per(verbs, n * minutes),
                "requests_per_stream_per_minute_total": round(sum(verbs.values()) / n / minutes, 2),
                "writes_per_minute": round(
                    sum(v for k, v in verbs.items() if k not in ("get", "list", "watch")) / minutes,
                    1,
                ),
                "detail_per_minute": per(detail, minutes),
                "cpu_cores": round(cpu / elapsed, 3),
                "rss_mb": op.memory_mb()[0],
                "load_average": round(os.getloadavg()[0], 2),
                # Flapping: a poll that misses its 2 s timeout, read as "unreachable",
                # turns an idle stream Pending and back. Each miss not forgiven (the
                # second in a row) is a real report; forgiven ones wrote nothing.
                "worker_polls_failed": int(polls["failed"]),
                "worker_polls_forgiven": int(polls["forgiven"]),
                "phase_changes": phase_changes(kube, namespace, since),
                "status_patches": sum(
                    v for k, v in detail.items() if k.startswith("patch livestreams/status ")
                ),
                "events_posted": sum(
                    v for k, v in detail.items() if k.startswith("create events ")
                ),
            }
            log(f"N={n}: steady {json.dumps(result['steady']['requests_per_stream_per_minute'])}")
            if heap:
                result["heap_after_steady"] = op.heap_dump()

        if skip_delete:  # a throwaway cluster: its garbage collector's 20 QPS are not waited for
            result["peak_rss_mb"] = op.memory_mb()[1]
            return result
        log(f"N={n}: deleting every LiveStream")
        started = time.monotonic()
        kube._call("DELETE", f"/apis/kubecast.dev/v1alpha1/namespaces/{namespace}/livestreams")
        while left := remaining(kube, namespace):
            if time.monotonic() - started > max(600, n):
                raise SystemExit(f"N={n}: not deleted: {left}")
            time.sleep(interval)
        result["delete_seconds"] = round(time.monotonic() - started, 1)
        # The profile too, while the operator runs: its in-use finalizer is the
        # operator's to remove, and the namespace could not go without that.
        kube.delete("TranscodeProfile", namespace, "default")
        while kube.get("TranscodeProfile", namespace, "default") is not None:
            if time.monotonic() - started > max(660, n + 60):
                raise SystemExit(f"N={n}: the profile stays")
            time.sleep(1)
        result["peak_rss_mb"] = op.memory_mb()[1]
        log(f"N={n}: deleted in {result['delete_seconds']} s")
    finally:
        op.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false")
    return result


# --- report --------------------------------------------------------------------------


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| streams | create s | converge s | CPU s | peak RSS MB | requests/stream"
        " (by verb) | delete s | load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        verbs = ", ".join(f"{k} {v}" for k, v in r["converge_requests_per_stream"].items())
        lines.append(
            f"| {r['streams']} | {r['create_seconds']} | {r['converge_seconds']} |"
            f" {r['converge_cpu_seconds']} | {r['peak_rss_mb']} | {verbs} |"
            f" {r.get('delete_seconds', '—')} | {r['load_average']} |"
        )
    for r in results:
        if "steady" in r:
            s = r["steady"]
            verbs = ", ".join(f"{k} {v}" for k, v in s["requests_per_stream_per_minute"].items())
            lines.append(
                f"\nSteady state, {r['streams']} idle streams, {s['seconds']} s:"
                f" {s['requests_per_stream_per_minute_total']} requests/stream/min ({verbs});"
                f" {s['writes_per_minute']} writes/min in all; operator CPU {s['cpu_cores']}"
                f" cores, RSS {s['rss_mb']} MB; worker polls failed {s['worker_polls_failed']},"
                f" forgiven {s['worker_polls_forgiven']}; phase changes {s['phase_changes']};"
                f" {s['status_patches']} status PATCHes, {s['events_posted']} Events"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="100,500,1000", help="comma-separated N")
    parser.add_argument("--steady-streams", type=int, default=1000,
                        help="the N whose steady state is measured (0: none)")  # fmt: skip
    parser.add_argument("--steady-seconds", type=float, default=300)
    parser.add_argument("--settle-seconds", type=float, default=35,
                        help="seconds from convergence to the steady state")  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="N=50 and 30 s of steady state: does the bench work")  # fmt: skip
    parser.add_argument("--cluster-dir", type=Path, help="a running cluster (default: start one)")
    parser.add_argument("--keep-cluster", action="store_true")
    parser.add_argument("--operator-source", type=Path,
                        help="the operator of this tree (default: the installed one)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--heap",
        action="store_true",
        help="run the operator under tracemalloc and write where its memory goes,"
        " at convergence and after the steady state (not for RSS figures)",
    )
    parser.add_argument(
        "--skip-delete",
        action="store_true",
        help="leave the streams in place: for a cluster thrown away after the run",
    )
    parser.add_argument("--serve-status", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # A stop ends the run the way ^C does: the operator, the /status server and the
    # route go away (background jobs of a shell ignore SIGINT).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if args.serve_status:
        serve_status(args.serve_status)
        return 0
    sizes = [int(s) for s in args.streams.split(",") if s]
    if args.quick:
        sizes, args.steady_streams, args.steady_seconds = [50], 50, 30
        args.settle_seconds = 10
    kwok_nodes = max(2, math.ceil(max(sizes) * 1.1 / PODS_PER_NODE))
    workdir = Path(tempfile.mkdtemp(prefix="kubecast-bench-operator-"))
    results = []
    with Cluster.of(args.cluster_dir, kwok_nodes, args.keep_cluster) as cluster:
        if not cluster.audit.exists():
            raise SystemExit(f"no audit log at {cluster.audit}: start the cluster again")
        if cluster.kwok_capacity() < max(sizes):
            capacity = cluster.kwok_capacity()
            log(f"note: the kwok nodes take {capacity} pods; some workers stay Pending")
        with status_server(cluster):
            for n in sizes:
                results.append(
                    run(
                        cluster,
                        n,
                        args.steady_seconds if n == args.steady_streams else 0,
                        workdir,
                        args.operator_source,
                        args.settle_seconds,
                        args.heap,
                        args.skip_delete,
                    )
                )
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "worker": "none: one local HTTP server answers /status for every pod IP (idle worker)",
        "operator": str(args.operator_source or "installed"),
        "operator_logs": str(workdir),
        "results": results,
    }
    print(json.dumps(report, indent=2))
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "operator"))
    sys.exit(main())
