"""Content fingerprints of data files.

A file's size and mtime survive ``cp -p`` and ``rsync -t`` while its labels may not, so
anything derived from a data file (the graph cache, a run's ``split.json``) is keyed on a hash
of the bytes. xxHash's XXH3-128 reads at memory speed, so hashing costs less than parsing.
"""

from __future__ import annotations

import os

import xxhash

_CHUNK = 1 << 20


def file_fingerprint(path: str | os.PathLike) -> str:
    """Hex XXH3-128 digest of the file's bytes (read in 1 MiB chunks)."""
    digest = xxhash.xxh3_128()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
