"""Read labelled structures from any file ASE reads (extxyz first, ASE .db), with clear errors."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from ase import Atoms
from ase.io import iread

from mlip_plugins.data.structures import DataError, LabelKeys, check_geometry, extract_labels

log = logging.getLogger(__name__)


@dataclass
class LabelledStructure:
    """One structure and its checked labels; ``source`` is 'file:frame' for error messages."""

    atoms: Atoms
    labels: dict
    source: str


def read_structures(
    path: str | os.PathLike,
    keys: LabelKeys | None = None,
    index: str = ":",
    file_format: str | None = None,
    on_error: str = "raise",
    require_energy: bool = False,
) -> list[LabelledStructure]:
    """Read every frame of ``path`` and check positions, cell and labels.

    Args:
        on_error: ``"raise"`` stops at the first bad frame with an error naming the file,
            frame and field; ``"skip"`` drops bad frames with a warning and a count.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    keys = keys or LabelKeys()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, expected a structure file")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: file is empty")
    structures: list[LabelledStructure] = []
    skipped: list[str] = []
    frame = 0
    reader = iread(path, index=index, format=file_format)
    while True:
        where = f"{path}: frame {frame}"
        try:
            atoms = next(reader)
        except StopIteration:
            break
        except Exception as exc:  # noqa: BLE001 - ASE raises many types on malformed input
            message = f"{where}: cannot parse ({type(exc).__name__}: {exc})"
            if on_error == "skip":  # the reader cannot continue past an unparsable frame
                skipped.append(message)
                log.warning("%s; stopping at the unreadable frame", message)
                break
            raise DataError(message) from exc
        try:
            check_geometry(atoms, where)
            labels = extract_labels(atoms, keys, where, require_energy=require_energy)
        except DataError as exc:
            if on_error == "raise":
                raise
            skipped.append(str(exc))
            log.warning("skipping %s", exc)
        else:
            structures.append(LabelledStructure(atoms, labels, f"{path}:{frame}"))
        frame += 1
    if skipped:
        log.warning("%s: skipped %d bad frame(s) of %d", path, len(skipped), frame)
    if not structures:
        raise DataError(f"{path}: no usable structures ({len(skipped)} bad frame(s))")
    return structures
