"""Files that readers see whole: the one atomic-write helper of the worker and recorder.

A reader (the origin, a player, the recorder after a restart) must see the old
file or the new one, never a mix: the new bytes go to a temporary file in the
same directory, which is then renamed over the old name (``rename(2)`` is atomic
within a filesystem). The temporary name starts with a dot and ends in ``.tmp``,
which the origin never serves.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def write_atomically(path: Path, data: bytes | str, *, durable: bool = False) -> None:
    """Replace ``path`` with ``data`` in one step.

    ``durable`` also fsyncs the file before the rename: a recording's journal must
    survive a power cut, a live playlist rewritten every second need not.
    Raises the ``OSError`` as it came; callers add what they were doing.
    """
    payload = data.encode() if isinstance(data, str) else data
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        # mkstemp creates 0600; players and the origin's other readers need 0644.
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
