"""``kubecast-worker``: run a stream's media worker, or transcode a file once.

    kubecast-worker run --config worker.yaml
    kubecast-worker run --listen rtmp://127.0.0.1:1935/live --stream-key KEY \\
        --profile samples/transcodeprofile-default.yaml --out /tmp/hls --http 127.0.0.1:8080 \\
        --admin 127.0.0.1:9090
    kubecast-worker run --pull file:///media/loop.mp4 --loop --profile ... --out ... --http ...
    kubecast-worker transcode input.mp4 --profile ... --out /tmp/hls
    kubecast-worker record ...     (the recorder: kubecast_worker.recorder.cli)
    kubecast-worker restream ...   (one restream target; the worker starts these itself)

``transcode`` runs the same pipeline as ``run`` on a file as fast as the CPU
allows (no pacing, no frame dropping) and prints a JSON summary; the benchmark
uses it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import threading
import time
from pathlib import Path

from kubecast_worker import config as config_mod
from kubecast_worker import ingest, ladder, logs, packager, pipeline
from kubecast_worker.status import Status


def _tuning(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("tuning")
    group.add_argument(
        "--x264-threads",
        type=int,
        default=0,
        metavar="N",
        help="libx264 threads per rendition (default 0: x264 decides)",
    )
    group.add_argument(
        "--x264-thread-type",
        choices=("frame", "slice"),
        default="frame",
        help="libx264 frame threads (default), or sliced threads as PyAV would pick",
    )


def _logging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-format", choices=("json", "text"), default="json")
    parser.add_argument("--log-level", default="info")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubecast-worker", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="serve one live stream: ingest, ladder, HLS, HTTP")
    run.add_argument("--config", help="WorkerConfig file (YAML or JSON), as the operator renders")
    source = run.add_mutually_exclusive_group()
    source.add_argument("--listen", metavar="rtmp://HOST:PORT/APP", help="accept RTMP publishers")
    source.add_argument("--pull", metavar="URL", help="pull rtmp://, rtsp://, http(s):// or a file")
    run.add_argument("--loop", action="store_true", help="loop a pulled file")
    run.add_argument("--stream-key", help="stream key for --listen (visible in ps; prefer a file)")
    run.add_argument("--stream-key-file", help="file holding the stream key")
    run.add_argument(
        "--wrong-key-limit",
        default="5/60/60",
        metavar="N[/WINDOW[/BACKOFF]]",
        help="after N wrong stream keys within WINDOW seconds from one address, refuse its"
        " connections for BACKOFF seconds (default 5/60/60; 0 turns it off)",
    )
    run.add_argument("--profile", help="TranscodeProfile manifest or bare spec (default ladder)")
    run.add_argument("--out", help="output directory for playlists and segments")
    run.add_argument(
        "--http", default="127.0.0.1:8080", help="playback port HOST:PORT: media, player, probes"
    )
    run.add_argument(
        "--admin",
        metavar="HOST:PORT",
        help="admin port: /status and /metrics (default 127.0.0.1:9090; any free port when"
        " --http's port is 0)",
    )
    run.add_argument("--stream", default="local", help="stream name for logs and metrics")
    run.add_argument(
        "--bind-host",
        metavar="HOST",
        help="bind the RTMP and HTTP listeners (playback and admin) to HOST instead of the"
        " config's host (the operator passes the pod IP)",
    )
    run.add_argument("--segment-type", choices=("ts", "fmp4"))
    run.add_argument(
        "--dash", action="store_true", help="also a DASH manifest (needs --segment-type fmp4)"
    )
    run.add_argument(
        "--low-latency",
        action="store_true",
        help="low-latency HLS: parts, preload hints, blocking reloads (needs --segment-type"
        " fmp4; the config's outputs.hls.lowLatency)",
    )
    run.add_argument("--window-segments", type=int, metavar="N")
    run.add_argument("--reconnect-window", type=int, metavar="SECONDS")
    run.add_argument(
        "--event-playlist",
        action="store_true",
        help="keep every segment (an EVENT playlist, DVR from the start) instead of a window"
        " (the config's outputs.hls.playlistType: event)",
    )
    run.add_argument(
        "--whep",
        action="store_true",
        help="offer WebRTC viewers (WHEP) on the playback port: POST /whep/<rendition>",
    )
    _tuning(run)
    _logging(run)

    transcode = commands.add_parser(
        "transcode", help="transcode a file through the ladder once, as fast as possible"
    )
    transcode.add_argument("input", help="input file or URL")
    transcode.add_argument("--profile", help="TranscodeProfile manifest or bare spec")
    transcode.add_argument("--out", required=True, help="output directory")
    transcode.add_argument("--segment-type", choices=("ts", "fmp4"), default="ts")
    transcode.add_argument(
        "--dash", action="store_true", help="also a DASH manifest (needs --segment-type fmp4)"
    )
    transcode.add_argument(
        "--low-latency",
        action="store_true",
        help="low-latency HLS: parts and preload hints (needs --segment-type fmp4)",
    )
    _tuning(transcode)
    _logging(transcode)

    # Handled before parsing (see main): the recorder has its own flags.
    commands.add_parser(
        "record", help="record a stream from a worker's origin (kubecast-worker record --help)"
    )
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.config:
        flags = [f for f in ("listen", "pull", "profile", "out", "admin") if getattr(args, f)]
        if flags:
            raise config_mod.ConfigError(
                f"--config already says where media comes from and goes; drop --{flags[0]}"
            )
        config = config_mod.load_config(args.config)
        if args.event_playlist:
            hls = config.outputs.hls.model_copy(update={"playlist_type": "event"})
            outputs = config.outputs.model_copy(update={"hls": hls})
            config = config.model_copy(update={"outputs": outputs})
    else:
        if not args.out:
            raise config_mod.ConfigError("--out DIR is required (or use --config)")
        config = config_mod.config_from_flags(
            stream=args.stream,
            profile=args.profile,
            out=args.out,
            http=args.http,
            admin=args.admin,
            listen=args.listen,
            pull=args.pull,
            loop=args.loop,
            segment_type=args.segment_type,
            dash=args.dash,
            low_latency=args.low_latency,
            window_segments=args.window_segments,
            reconnect_window=args.reconnect_window,
            event_playlist=args.event_playlist,
        )
    if args.bind_host:
        config = config_mod.with_bind_host(config, args.bind_host)
    key = config_mod.read_stream_key(config, key=args.stream_key, key_file=args.stream_key_file)
    logs.setup(fmt=args.log_format, level=args.log_level, secret=key)
    if key and config.ingest.protocol == "srt":
        from kubecast_worker import srt

        try:
            srt.check_passphrase(key)  # before anything listens: a bad key is a config error
        except srt.SrtError as e:
            raise config_mod.ConfigError(str(e)) from e
    from kubecast_worker import worker
    from kubecast_worker.rtmp.throttle import WrongKeyLimit

    try:
        wrong_key_limit = WrongKeyLimit.parse(args.wrong_key_limit)
    except ValueError as e:
        raise config_mod.ConfigError(f"--wrong-key-limit: {e}") from None

    asyncio.run(
        worker.serve(
            config,
            stream_key=key,
            stream_key_file=None
            if args.stream_key
            else args.stream_key_file or config.ingest.stream_key_file,
            x264_threads=args.x264_threads,
            x264_thread_type=args.x264_thread_type,
            wrong_key_limit=wrong_key_limit,
            whep=args.whep,
        )
    )
    return 0


def _transcode(args: argparse.Namespace) -> int:
    logs.setup(fmt=args.log_format, level=args.log_level)
    profile = config_mod.load_profile(args.profile) if args.profile else None
    if profile is None:
        from kubecast_api import TranscodeProfileSpec

        profile = TranscodeProfileSpec()
    url = args.input if "://" in args.input else Path(args.input).resolve().as_uri()
    status = Status(stream="transcode", mode="pull", ingest_url=url)
    stop = threading.Event()
    if args.dash and args.segment_type != "fmp4":
        raise config_mod.ConfigError("--dash needs --segment-type fmp4 (DASH describes CMAF)")
    if args.low_latency and args.segment_type != "fmp4":
        raise config_mod.ConfigError("--low-latency needs --segment-type fmp4 (parts are CMAF)")
    settings = pipeline.Settings(
        profile=profile,
        packaging=packager.Packaging(
            out_dir=Path(args.out),
            segment_seconds=profile.segment_seconds,
            segment_type=args.segment_type,
            event=True,
            dash=args.dash,
            low_latency=args.low_latency,
        ),
        live=False,
        x264_threads=args.x264_threads,
        x264_thread_type=args.x264_thread_type,
    )
    source = ingest.Source(opener=ingest.open_pull(url), status=status, stop=stop)
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    outcome = pipeline.run(source=source, settings=settings, status=status, stop=stop)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    packager.end(settings.packaging.out_dir, [r.name for r in profile.renditions])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    summary = {
        "input": args.input,
        "x264Threads": args.x264_threads,
        "x264ThreadType": args.x264_thread_type,
        "mediaSeconds": round(outcome.media_seconds, 3),
        "wallSeconds": round(wall, 3),
        "cpuSeconds": round(cpu, 3),
        "speed": round(outcome.media_seconds / wall, 3) if wall else None,
        "renditions": outcome.renditions,
    }
    print(json.dumps(summary, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["restream"]:
        from kubecast_worker import restream

        return restream.main(argv[1:])
    if argv[:1] == ["record"]:
        from kubecast_worker.recorder import cli as recorder_cli

        return recorder_cli.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        return _transcode(args)
    except (config_mod.ConfigError, ingest.SourceError, ladder.LadderError) as e:
        print(f"kubecast-worker: {e}", file=sys.stderr)
        return 2
    except pipeline.PipelineError as e:
        print(f"kubecast-worker: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. a port already in use
        print(f"kubecast-worker: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
