"""Writing a file so that a reader sees the old content or the new, never part of either.

One helper for the package (the in-job runner, which imports nothing of mantik's, keeps a copy of its own).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path | str, data: str | bytes, durable: bool = False) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through a temporary file beside it, renamed over it.

    The temporary name is unique (``.NAME.XXXXXXXX.tmp``), so writers racing on one path never share it: the
    last rename wins and every reader sees a whole file. ``durable`` flushes it to disk before the rename
    (for records that must survive a crash of the machine). Raises OSError; the temporary file is removed."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as output:
            output.write(data.encode() if isinstance(data, str) else data)
            if durable:
                output.flush()
                os.fsync(output.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
