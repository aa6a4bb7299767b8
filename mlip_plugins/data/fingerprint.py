"""Content fingerprints of data files: what the graph cache (and the saved split) are keyed on.

A key on (size, mtime) serves stale graphs for a file copied with ``cp -p`` or ``rsync -t``
that has the same size and time but other labels; a hash of the bytes cannot be fooled that
way. xxHash's XXH3-128 reads several GB/s, so a few-MB structure file costs milliseconds.
"""

from __future__ import annotations

import os

import xxhash

_CHUNK = 1 << 20  # 1 MiB reads: constant memory for files of any size


def file_fingerprint(path: str | os.PathLike) -> str:
    """``xxh3_128:<32 hex digits>`` of the file's bytes, read in 1 MiB chunks."""
    digest = xxhash.xxh3_128()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return f"xxh3_128:{digest.hexdigest()}"
