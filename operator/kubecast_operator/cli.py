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
    handlers,  # also registers the kopf handlers
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
    parser.add_argument(
        "--lease-seconds",
        type=int,
        default=15,
        help="how long a standby waits on an unrenewed Lease before taking it over",
    )
    parser.add_argument(
        "--renew-deadline-seconds",
        type=float,
        default=10.0,
        help="a leader that has not renewed for this long stops acting and exits"
        " (shorter than --lease-seconds)",
    )
    parser.add_argument(
        "--lease-retry-seconds",
        type=float,
        default=2.0,
        help="how often the Lease is renewed, or looked at while standing by",
    )
    parser.add_argument("--log-format", choices=["plain", "json"], default="plain")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    load_config()
    elector = (
        LeaderElector(
            # NB: a client of its own: renewals never wait for the reconciles'
            # connections, and give up in time to meet the renew deadline.
            Kube(request_timeout=args.renew_deadline_seconds / 2),
            namespace=args.lease_namespace,
            lease_seconds=args.lease_seconds,
            renew_deadline=args.renew_deadline_seconds,
            retry_seconds=args.lease_retry_seconds,
        )
        if args.leader_election
        else None
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
        # From here the lease thread renews on its own, and ends the process
        # the moment leadership is lost (see leader.py).
        await elector.acquire()
        state.lead()
    await kopf.operator(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=True,
        # Every write of ours goes through this gate (handlers.configure).
        memo=kopf.Memo(
            fence=elector.check if elector is not None else None,
            kopf_connections=handlers.kopf_connections(namespaces),
        ),
        # Raised once the startup handlers ran and the watch tasks start: /readyz.
        ready_flag=state.watching,
    )
    if elector is not None:
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
