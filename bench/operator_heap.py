"""kubecast-operator under tracemalloc: on SIGUSR1 it writes where its live memory is.

    python bench/operator_heap.py OUT_PREFIX [kubecast-operator arguments...]

``bench/operator.py --heap`` runs the operator this way and signals it at
convergence and at the end of the steady state. Each signal writes
``OUT_PREFIX-K.txt``: the traced total and the biggest allocation sites, by line
and by the stack (several frames) that made them. A site says where an object was
*made*; what keeps it alive is usually the caller a few frames up, hence the
stacks.

NB: tracemalloc itself costs memory (about a pointer's worth and a frame list
per live block) and CPU, so a run under it measures *where* memory goes, not how
much RSS the operator needs: that stays the plain run's figure. A report stops
the operator while it is written (minutes at 500 streams: millions of blocks
grouped by stack), so whatever the bench measures after the first is disturbed.
"""

from __future__ import annotations

import os
import sys

# NB: run as a script, this file's directory comes first on sys.path, where
# bench/operator.py would stand in for the standard library's ``operator``.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import gc  # noqa: E402
import signal  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402
from types import FrameType  # noqa: E402

FRAMES = 12
TOP = 40


def _dump(prefix: str, count: list[int]) -> None:
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]
    )
    count[0] += 1
    traced, peak = tracemalloc.get_traced_memory()
    lines = [f"traced now {traced / 2**20:.1f} MB, peak {peak / 2**20:.1f} MB"]
    lines.append(f"gc objects: {len(gc.get_objects())}")
    lines.append("\n== by file ==")
    for stat in snapshot.statistics("filename")[:TOP]:
        lines.append(f"{stat.size / 2**20:8.2f} MB {stat.count:9d} {stat.traceback[0].filename}")
    lines.append("\n== by line ==")
    for stat in snapshot.statistics("lineno")[:TOP]:
        frame = stat.traceback[0]
        lines.append(f"{stat.size / 2**20:8.2f} MB {stat.count:9d} {frame.filename}:{frame.lineno}")
    lines.append("\n== by stack ==")
    for stat in snapshot.statistics("traceback")[:TOP]:
        lines.append(f"{stat.size / 2**20:8.2f} MB {stat.count:9d} blocks")
        lines.extend(f"    {line}" for line in stat.traceback.format(most_recent_first=True))
    Path(f"{prefix}-{count[0]}.txt").write_text("\n".join(lines) + "\n")


def main() -> int:
    prefix, argv = sys.argv[1], sys.argv[2:]
    tracemalloc.start(FRAMES)
    count = [0]

    def on_signal(signum: int, frame: FrameType | None) -> None:
        _dump(prefix, count)

    signal.signal(signal.SIGUSR1, on_signal)
    sys.argv = ["kubecast-operator", *argv]
    from kubecast_operator.cli import main as operator_main

    print(f"operator_heap: pid {os.getpid()}, SIGUSR1 writes {prefix}-K.txt", file=sys.stderr)
    return operator_main(argv)


if __name__ == "__main__":
    sys.exit(main())
