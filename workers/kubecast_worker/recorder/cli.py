"""``kubecast-worker record``: record a live stream from the worker's origin.

    kubecast-worker record --source http://demo-playback.live.svc.cluster.local:8080 \\
        --out /var/lib/kubecast/recording --formats hls,mp4 --idle-timeout 300 \\
        --admin 0.0.0.0:9090 --stop-token-file /etc/kubecast/stop-token/token

Exit status: 0 after SIGTERM (what was recorded is written out first: playlist
and MP4; the recording stays resumable, so the next run on the same --out goes
on with it; POST /stop is what completes it); 1 when the recording failed
(after answering /status with the reason for ``--fail-linger`` seconds, so the
operator can read it); 2 for bad flags.
A completed recorder keeps serving /status until it is terminated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from kubecast_api.worker_status import RecorderStatus
from kubecast_worker import logs
from kubecast_worker.recorder import api
from kubecast_worker.recorder.metrics import Metrics
from kubecast_worker.recorder.options import (
    Options,
    OptionsError,
    check,
    parse_formats,
    parse_listen,
    parse_time,
    read_stop_token,
)
from kubecast_worker.recorder.recorder import Recorder


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kubecast-worker record",
        description="Record a live stream from a kubecast origin: an HLS event playlist that"
        " plays while it grows, and an MP4 when it finishes.",
    )
    p.add_argument("--source", required=True, help="origin base URL (serves /master.m3u8)")
    p.add_argument("--out", required=True, help="recording directory (created if missing)")
    p.add_argument("--formats", default="hls,mp4", help="comma list of hls, mp4, fmp4")
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=300.0,
        help="finish when the source stays idle this many seconds after recording started",
    )
    p.add_argument(
        "--admin",
        default="0.0.0.0:9090",
        help="HOST:PORT of the admin port: /status, POST /stop, /metrics, probes",
    )
    p.add_argument("--bind-host", default=None, help="overrides the host part of --admin")
    p.add_argument(
        "--stop-token-file",
        default=None,
        help="file holding the bearer token POST /stop needs (without it, /stop is refused)",
    )
    p.add_argument(
        "--termination-log",
        default=None,
        help="on exit, write the last /status here (Kubernetes: /dev/termination-log), so"
        " that what the recorder did outlives its process",
    )
    p.add_argument("--rendition", default=None, help="rendition name (default: the highest)")
    p.add_argument("--max-duration", type=float, default=None, help="seconds of media to record")
    p.add_argument(
        "--wait-for-next-live",
        action="store_true",
        help="start only when the source goes from idle to live",
    )
    p.add_argument("--start-at", default=None, help="RFC 3339 time to start recording")
    p.add_argument("--stop-at", default=None, help="RFC 3339 time to stop recording")
    p.add_argument(
        "--fail-linger",
        type=float,
        default=30.0,
        help="seconds to keep answering /status after a failure before exiting 1",
    )
    p.add_argument("--log-format", choices=("json", "text"), default="json")
    p.add_argument("--log-level", default="info")
    return p


def options_from(args: argparse.Namespace) -> Options:
    host, port = parse_listen(args.admin)
    return check(
        Options(
            source=args.source,
            out=Path(args.out),
            formats=parse_formats(args.formats),
            idle_timeout=args.idle_timeout,
            http_host=args.bind_host or host,
            http_port=port,
            rendition=args.rendition or None,
            max_duration=args.max_duration,
            wait_for_next_live=args.wait_for_next_live,
            start_at=parse_time(args.start_at, "--start-at") if args.start_at else None,
            stop_at=parse_time(args.stop_at, "--stop-at") if args.stop_at else None,
            fail_linger=max(0.0, args.fail_linger),
            stop_token_file=Path(args.stop_token_file) if args.stop_token_file else None,
            termination_log=Path(args.termination_log) if args.termination_log else None,
        )
    )


async def serve(
    options: Options,
    logger: logging.LoggerAdapter[logging.Logger],
    *,
    stop_token: bytes | None = None,
) -> int:
    metrics = Metrics(options.stream_name)
    recorder = Recorder(options=options, metrics=metrics, logger=logger)
    app = api.make_app(recorder, metrics, stop_token=stop_token)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, options.http_host, options.http_port).start()
    except OSError as e:
        logger.error("cannot listen on %s:%s: %s", options.http_host, options.http_port, e.strerror)
        await runner.cleanup()
        return 1
    host, port = runner.addresses[0][:2]
    logger.info("recorder listening", extra={"admin": f"{host}:{port}", "out": str(options.out)})
    terminated = asyncio.Event()

    def on_signal(name: str) -> None:
        # A signal ends this process, not the recording (POST /stop does that):
        # a pod that is deleted or evicted writes what it has, and the next one
        # resumes.
        terminated.set()
        recorder.request_stop(name, resumable=True)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        completed = await recorder.run()
        if completed:
            await terminated.wait()  # keep answering /status until the pod is deleted
            logger.info("recorder exits", extra={"state": recorder.state})
            return 0
        # Failed: stay long enough for the operator's poll to see why, then exit
        # non-zero so that the pod restarts (and the recording resumes).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(terminated.wait(), timeout=options.fail_linger)
        logger.error("recorder exits after a failure", extra={"error": recorder.last_error})
        return 1
    finally:
        await runner.cleanup()
        if options.termination_log is not None:
            write_termination_log(options.termination_log, recorder.status(), logger)


#: The kubelet keeps at most 4096 bytes of a termination message.
TERMINATION_MESSAGE_LIMIT = 4096


def write_termination_log(
    path: Path, status: dict[str, Any], logger: logging.LoggerAdapter[logging.Logger]
) -> None:
    """The recorder's last /status, for the kubelet to keep in the pod's status.

    The operator reads it when the recorder no longer answers (its pod ended,
    restarts, or was left behind), so that the Recording says what really
    happened rather than what it said last. Too long (many files): the file
    list goes first, the figures stay.
    """
    document = RecorderStatus.model_validate(status)
    text = document.model_dump_json(exclude_unset=True)
    if len(text.encode()) > TERMINATION_MESSAGE_LIMIT:
        text = document.model_copy(update={"files": []}).model_dump_json(exclude_unset=True)
    try:
        path.write_text(text[:TERMINATION_MESSAGE_LIMIT])
    except OSError as e:
        logger.warning("cannot write the termination log %s: %s", path, e.strerror)


def main(argv: list[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["record"]:
        args_list = args_list[1:]
    try:
        args = parser().parse_args(args_list)
    except SystemExit as e:  # --help, or flags argparse already explained
        return e.code if isinstance(e.code, int) else 2
    try:
        options = options_from(args)
        stop_token = read_stop_token(options.stop_token_file)
    except OptionsError as e:
        print(f"kubecast-worker record: {e}", file=sys.stderr)
        return 2
    logs.setup(fmt=args.log_format, level=args.log_level)
    logger = logs.for_stream(options.stream_name, "recorder")
    try:
        return asyncio.run(serve(options, logger, stop_token=stop_token))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
