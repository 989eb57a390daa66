"""``kubecast-operator``: run the operator against a kubeconfig or in-cluster."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

import kopf
from prometheus_client import start_http_server

from kubecast_operator import (
    handlers,  # noqa: F401  (registers the kopf handlers)
    health,
)
from kubecast_operator.kube import Kube, load_config
from kubecast_operator.leader import LeaderElector

log = logging.getLogger("kubecast.operator")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kubecast-operator", description=__doc__)
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable); default: all",
    )
    parser.add_argument(
        "--metrics-port", type=int, default=8080, help="port of /metrics (0 disables)"
    )
    parser.add_argument(
        "--liveness-port",
        type=int,
        default=8081,
        help="port of /healthz (liveness) and /readyz (readiness), 0 disables;"
        " both answer while standing by too",
    )
    parser.add_argument(
        "--leader-election",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="hold a Lease so that only one replica acts",
    )
    parser.add_argument(
        "--lease-namespace",
        default=os.environ.get("POD_NAMESPACE", "default"),
        help="namespace of the leader-election Lease",
    )
    parser.add_argument("--log-format", choices=["plain", "json"], default="plain")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    load_config()
    elector = (
        LeaderElector(Kube(), namespace=args.lease_namespace) if args.leader_election else None
    )
    state = health.Health(elector)
    # NB: up before the Lease is asked for, so that a standby answers its probes.
    runner = (await health.serve(state, port=args.liveness_port))[0] if args.liveness_port else None
    try:
        return await _operate(args, state)
    finally:
        if runner is not None:
            await runner.cleanup()


async def _operate(args: argparse.Namespace, state: health.Health) -> int:
    namespaces = args.namespace or [
        n for n in os.environ.get("KUBECAST_NAMESPACES", "").split(",") if n
    ]
    elector = state.elector
    if elector is not None:
        await elector.acquire()
        state.lead()
    stop = asyncio.Event()
    operator = asyncio.create_task(
        kopf.operator(
            clusterwide=not namespaces,
            namespaces=namespaces,
            standalone=True,
            stop_flag=stop,
            # Raised once the startup handlers ran and the watch tasks start: /readyz.
            ready_flag=state.watching,
        )
    )
    if elector is None:
        await operator
        return 0
    holding = asyncio.create_task(elector.hold())
    done, _ = await asyncio.wait({operator, holding}, return_when=asyncio.FIRST_COMPLETED)
    if holding in done:
        # Lost the lease: stop acting at once and let the pod restart and queue up.
        stop.set()
        await asyncio.wait({operator}, timeout=10)
        return 1
    holding.cancel()
    await asyncio.to_thread(elector.release)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kopf.configure(
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.FULL,
    )
    if args.metrics_port:
        start_http_server(args.metrics_port)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
