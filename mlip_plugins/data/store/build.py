"""Build a graph store: parallel, resumable, locked, with the checks of today's loader.

The parent process streams the sources frame by frame (:func:`~mlip_plugins.data.reading.iter_frames`)
and cuts them into chunks of ``shard_size`` frames; chunk k (frames k·F ... (k+1)·F - 1 of the
sources read one after the other) becomes ``shard_k``. Worker processes check each structure
(:func:`~mlip_plugins.data.reading.check_structure`: the same ``DataError`` naming file, frame and
field), build its neighbour list (:func:`~mlip_plugins.data.structures.graph_arrays`), sum its
statistics and write the shard atomically (a hidden temporary, then rename). At most
``2 × workers`` chunks are in flight, so the parent's memory stays flat for sources of any size.

* **Resume**: a build that was killed leaves complete shards and a manifest marked incomplete;
  the next build with the same sources and settings keeps every complete shard (each records the
  build key it belongs to) and builds the rest.
* **Changes**: a complete store built from other content or settings is refused
  (:class:`~.layout.StoreMismatchError`, one line); an incomplete one is ours to restart, so its
  shards are removed and it is rebuilt.
* **Concurrency**: the build holds ``<store>/.lock`` (filelock); a second build of the same
  store waits for it (or gives up after ``lock_timeout`` s with ``StoreLockedError``) and then
  finds the store complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import filelock
from safetensors import safe_open
from safetensors.numpy import save as safetensors_bytes
from tqdm import tqdm

from mlip_plugins.atomic_files import atomic_output, sweep_stale_temporaries
from mlip_plugins.data.fingerprint import file_fingerprint
from mlip_plugins.data.reading import check_source_file, check_structure, iter_unparsed_frames, parse_error_message, parse_frame
from mlip_plugins.data.store import layout
from mlip_plugins.data.store.statistics import StreamingStatistics
from mlip_plugins.data.structures import DataError, LabelKeys, graph_arrays

log = logging.getLogger(__name__)

#: structures (source frames) per shard: a few MB each, a few hundred shards per million
DEFAULT_SHARD_SIZE = 2000


def store_settings(keys: LabelKeys, file_format: str | None, on_error: str, require_energy: bool) -> dict:
    """The label settings a store is keyed on (the same dict the graph cache is keyed on)."""
    return {"keys": vars(keys), "format": file_format, "on_error": on_error, "require_energy": require_energy}


def _key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


# -- the work of one shard (runs in a worker process) -----------------------------------------
def _build_shard(task: dict) -> dict:
    """Check and build the graphs of one chunk of frames and write its shard; returns a summary."""
    items, skipped = [], list(task["skipped"])
    keys = LabelKeys(**task["keys"])
    for frame, source, item in task["frames"]:
        where = f"{task['paths'][source]}: frame {frame}"
        try:
            lines, atoms = parse_frame(item)
            if isinstance(atoms, Exception):
                raise DataError(parse_error_message(where, lines, atoms)) from atoms
            labels = check_structure(atoms, keys, where, task["require_energy"])
            items.append((graph_arrays(atoms, task["cutoff"], labels, where), frame, source))
        except DataError as exc:
            if task["on_error"] == "raise":
                raise
            skipped.append(str(exc))
    shard = layout.pack_shard(items)
    statistics = StreamingStatistics.from_shard(shard)
    metadata = {"store_key": task["key_hash"], "chunk": str(task["chunk"]), "structures": str(len(items)),
                "statistics": json.dumps(statistics.to_dict()), "skipped": json.dumps(skipped)}
    with atomic_output(Path(task["directory"]) / layout.shard_name(task["chunk"])) as handle:
        handle.write(safetensors_bytes(shard, metadata=metadata))
    return {"chunk": task["chunk"], "structures": len(items), "skipped": skipped}


def shard_metadata(path: Path, key_hash: str, chunk: int) -> dict | None:
    """The metadata of a complete shard of this build, None if it is missing, damaged or another build's."""
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            if set(layout.SHARD_ARRAYS) - set(handle.keys()):
                return None
    except Exception:  # noqa: BLE001 - a truncated or foreign file is rebuilt, never trusted
        return None
    if metadata.get("store_key") != key_hash or metadata.get("chunk") != str(chunk):
        return None
    return metadata


# -- streaming the sources --------------------------------------------------------------------
def _chunks(paths: Sequence[str], file_format: str | None, on_error: str, shard_size: int,
            frame_counts: list[int]) -> Iterator[tuple[int, list, list[str]]]:
    """(chunk index, [(frame, source, unparsed frame)], read errors) for consecutive chunks of frames.

    XYZ frames travel as text and are parsed by the workers (:func:`~mlip_plugins.data.reading.parse_frame`),
    so the parent only splits the file. ``frame_counts`` receives the number of frames of each
    source as they are read.
    """
    chunk, frames, errors, seen = 0, [], [], 0
    for source, path in enumerate(paths):
        frame_counts.append(0)
        for frame, item, _ in iter_unparsed_frames(path, file_format):
            frame_counts[source] = frame + 1
            if isinstance(item, Exception):
                message = parse_error_message(f"{path}: frame {frame}", "", item)
                if on_error == "raise":
                    raise DataError(message) from item
                errors.append(message)
            else:
                frames.append((frame, source, item))
            seen += 1
            if seen == shard_size:
                yield chunk, frames, errors
                chunk, frames, errors, seen = chunk + 1, [], [], 0
    if seen:
        yield chunk, frames, errors


class _InProcess:
    """The executor of a one-worker build: runs each task in this process when it is submitted."""

    def submit(self, fn, task) -> Future:
        future: Future = Future()
        future.set_result(fn(task))
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def _executor(workers: int):
    if workers <= 1:
        return _InProcess()
    # spawn: clean workers (no copy of the parent's threads, tensors or open handles)
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


@contextlib.contextmanager
def _worker_start_environment(workers: int) -> Iterator[None]:
    """How spawned workers start, for the whole build (the executor starts them as it needs them):

    * ``OMP_NUM_THREADS=1``: OpenMP threads in the neighbour lists of small structures only
      contend with the other workers;
    * without re-importing the parent's ``__main__`` (multiprocessing's spawn runs the main
      script again in each worker; ``mlip-train``'s would import the whole trainer, ~150 MB and
      seconds per worker). The work lives in this importable module, so the workers do not need it.
    """
    if workers <= 1:
        yield
        return
    main = sys.modules.get("__main__")
    hidden = {name: getattr(main, name) for name in ("__file__", "__spec__") if hasattr(main, name)}
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    if "__file__" in hidden:
        del main.__file__
    if "__spec__" in hidden:
        main.__spec__ = None
    try:
        yield
    finally:
        for name, value in hidden.items():
            setattr(main, name, value)
        if previous is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = previous


# -- the build --------------------------------------------------------------------------------
def _prepare(directory: Path, key: dict, key_hash: str) -> dict | None:
    """The complete manifest if the store is already built for ``key``; otherwise get the folder
    ready to (re)build and return None."""
    manifest = layout.read_manifest(directory)
    if manifest is not None and manifest.get("complete"):
        layout.check_format(directory, manifest)  # an older store is the user's: refused, never rebuilt over
    if manifest is not None:
        difference = layout.key_difference(manifest["key"], key)
        if difference is None and manifest.get("complete"):
            return manifest
        if difference is not None and manifest.get("complete"):
            raise layout.StoreMismatchError(
                f"{directory}: graph store built from other data or settings: {difference}; "
                f"remove the folder or choose another store folder")
        if difference is not None:  # an incomplete build of other data: ours, and unusable
            log.warning("%s: restarting an incomplete graph store build (%s)", directory, difference)
            for shard in directory.glob("shard_*.safetensors"):
                shard.unlink()
    elif any(directory.glob("shard_*.safetensors")):
        raise layout.StoreError(f"{directory}: holds shards but no manifest; remove the folder to rebuild it")
    for stale in sweep_stale_temporaries(directory, "shard_*"):
        log.info("removed %s (a shard write that was killed)", stale)
    layout.write_manifest(directory, {"format": layout.FORMAT_VERSION, "complete": False, "key": key, "key_hash": key_hash})
    return None


def build_store(directory: str | os.PathLike, sources: Sequence[str | os.PathLike], cutoff: float,
                keys: LabelKeys | None = None, file_format: str | None = None, on_error: str = "raise",
                require_energy: bool = True, workers: int = 1, shard_size: int = DEFAULT_SHARD_SIZE,
                progress: bool = True, lock_timeout: float = -1) -> dict:
    """Build (or resume, or find built) the graph store of ``sources`` in ``directory``; returns its manifest.

    Args:
        workers: processes computing neighbour lists (1: in this process).
        lock_timeout: seconds to wait for another build of the same store (-1: as long as it takes).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    keys = keys or LabelKeys()
    paths = [os.fspath(path) for path in sources]
    for path in paths:
        check_source_file(path)
    described = [{"path": path, "fingerprint": file_fingerprint(path)} for path in paths]
    settings = store_settings(keys, file_format, on_error, require_energy)
    key = layout.build_key(described, cutoff, settings, shard_size)
    key_hash = _key_hash(key)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(directory / layout.LOCK), timeout=lock_timeout)
    try:
        lock.acquire()
    except filelock.Timeout as exc:
        raise layout.StoreLockedError(f"{directory}: another process is building this graph store "
                                      f"(lock {directory / layout.LOCK} held for over {lock_timeout:g} s)") from exc
    try:
        manifest = _prepare(directory, key, key_hash)
        if manifest is None:
            with _worker_start_environment(workers):
                manifest = _build(directory, paths, described, key, key_hash, cutoff, keys, file_format, on_error,
                                  require_energy, workers, shard_size, progress)
        return manifest
    finally:
        lock.release()


def _build(directory: Path, paths: list[str], described: list[dict], key: dict, key_hash: str, cutoff: float,
           keys: LabelKeys, file_format: str | None, on_error: str, require_energy: bool, workers: int,
           shard_size: int, progress: bool) -> dict:
    frame_counts: list[int] = []
    n_chunks = 0
    pending: deque[Future] = deque()
    executor = _executor(workers)
    bar = tqdm(desc=f"graph store {directory.name}", unit=" structures", disable=not progress, dynamic_ncols=True)

    def collect(future: Future) -> None:
        summary = future.result()
        for message in summary["skipped"]:
            log.warning("skipping %s", message)
        bar.update(summary["structures"])

    try:
        for chunk, frames, errors in _chunks(paths, file_format, on_error, shard_size, frame_counts):
            n_chunks = chunk + 1
            existing = shard_metadata(directory / layout.shard_name(chunk), key_hash, chunk)
            if existing is not None:  # a complete shard of an earlier, interrupted build
                bar.update(int(existing["structures"]))
                continue
            while len(pending) >= 2 * max(workers, 1):
                collect(pending.popleft())
            task = {"chunk": chunk, "frames": frames, "skipped": errors, "paths": paths, "keys": asdict(keys),
                    "cutoff": float(cutoff), "require_energy": require_energy, "on_error": on_error,
                    "key_hash": key_hash, "directory": str(directory)}
            pending.append(executor.submit(_build_shard, task))
        while pending:
            collect(pending.popleft())
    except BaseException:
        executor.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        bar.close()
    executor.shutdown()
    return _finish(directory, described, frame_counts, key, key_hash, cutoff, n_chunks)


def _finish(directory: Path, described: list[dict], frame_counts: list[int], key: dict, key_hash: str,
            cutoff: float, n_chunks: int) -> dict:
    """Sum the shards' statistics and write the complete manifest."""
    shards, parts, skipped = [], [], 0
    for chunk in range(n_chunks):
        metadata = shard_metadata(directory / layout.shard_name(chunk), key_hash, chunk)
        if metadata is None:
            raise layout.StoreError(f"{directory / layout.shard_name(chunk)}: shard missing or damaged after the build")
        shards.append({"file": layout.shard_name(chunk), "structures": int(metadata["structures"])})
        parts.append(StreamingStatistics.from_dict(json.loads(metadata["statistics"])))
        skipped += len(json.loads(metadata["skipped"]))
    statistics = StreamingStatistics.total(parts)
    if statistics.n_structures == 0:
        raise DataError(f"{', '.join(d['path'] for d in described)}: no usable structures ({skipped} bad frame(s))")
    if skipped:
        log.warning("%s: skipped %d bad frame(s) of %d", directory, skipped, sum(frame_counts))
    manifest = {
        "format": layout.FORMAT_VERSION, "complete": True, "key": key, "key_hash": key_hash,
        "sources": [{**d, "frames": n} for d, n in zip(described, frame_counts)],
        "cutoff": float(cutoff), "structures": statistics.n_structures, "skipped": skipped, "shards": shards,
        "summary": statistics.summary(), "statistics": statistics.to_dict(),
    }
    layout.write_manifest(directory, manifest)
    return manifest
