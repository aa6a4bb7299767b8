"""Read labelled structures from any file ASE reads (extxyz first, ASE .db), with clear errors.

(Extended) XYZ files are split into frames by their atom-count lines before ASE parses each
frame, so an error names the frame *and the line*, the columns of every atom line are checked
against the frame's ``Properties``, and with ``on_error="skip"`` reading resumes at the next
frame after a malformed one (ASE's own reader cannot continue past a parse error).
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from ase import Atoms
from ase.data import atomic_numbers
from ase.io import iread
from ase.io.extxyz import read_xyz

from mlip_plugins.data.structures import DataError, LabelKeys, check_geometry, extract_labels

log = logging.getLogger(__name__)


@dataclass
class LabelledStructure:
    """One structure and its checked labels; ``source`` is 'file:frame' for error messages."""

    atoms: Atoms
    labels: dict
    source: str


XYZ_SUFFIXES = (".xyz", ".extxyz")


def _is_bare_count(line: str) -> bool:
    return line.strip().isdigit()


def _columns_declared(comment: str) -> tuple[int, str] | None:
    """Columns per atom line that the comment's ``Properties`` declares, or None if absent."""
    if "properties=" not in comment.lower():
        return None
    from ase.io.extxyz import key_val_str_to_dict

    try:
        info = key_val_str_to_dict(comment)
    except Exception:  # noqa: BLE001 - ASE reports a broken comment line when it parses the frame
        return None
    properties = next((v for k, v in info.items() if k.lower() == "properties"), None)
    if not isinstance(properties, str):
        return None
    fields = properties.split(":")
    if len(fields) % 3 or not all(f.isdigit() for f in fields[2::3]):
        raise ValueError(f"Properties={properties!r} is not a list of name:type:count triples")
    return sum(int(f) for f in fields[2::3]), properties


def _xyz_frame_texts(path: str) -> Iterator[tuple[int, int, str | Exception]]:
    """(frame index, line number of its count line, frame text or the error) for each frame,
    split off by the count lines only (the atom lines are checked by :func:`_check_xyz_frame`).

    A count line that is not an integer is an error for that frame; reading resumes at the
    next line that is a bare integer (the next frame's count line).
    """
    with open(path, encoding="utf-8") as handle:
        lines = iter(enumerate(handle, start=1))
        frame = 0
        pending = next(lines, None)
        while pending is not None:
            number, header = pending
            if not header.strip():  # blank lines between frames (or at the end)
                pending = next(lines, None)
                continue
            if not _is_bare_count(header):
                yield frame, number, ValueError(f"line {number}: expected the atom count of a frame, got {header.strip()[:60]!r}")
                frame += 1
                pending = next(lines, None)
                while pending is not None and not _is_bare_count(pending[1]):
                    pending = next(lines, None)
                continue
            count = int(header)
            body = [header]
            for _ in range(count + 1):
                item = next(lines, None)
                if item is None:
                    break
                body.append(item[1])
            pending = next(lines, None)
            if len(body) < count + 2:
                yield frame, number, ValueError(f"line {number}: truncated, the frame declares {count} atoms but the file ends "
                                                f"after {max(len(body) - 2, 0)}")
                return
            yield frame, number, "".join(body)
            frame += 1


GPUMD_XYZ = "gpumd-xyz"


def detect_format(path: str | os.PathLike) -> str | None:
    """``"gpumd-xyz"`` for an XYZ file written to GPUMD's conventions, else None (ASE's choice).

    Judged from the first frame's header: a count line, then a comment whose keys are
    GPUMD's and not extxyz's: lower-case ``lattice=``/``properties=`` (ASE's extxyz needs
    ``Lattice``/``Properties`` and would drop the cell and columns), or forces in a column
    named ``force`` (ASE would keep them under a name the labels do not look for).
    """
    try:
        with open(path, encoding="utf-8") as handle:
            count, comment = handle.readline(), handle.readline()
    except (OSError, UnicodeDecodeError):
        return None
    if not _is_bare_count(count.split()[0] if count.split() else ""):
        return None
    keys = set(re.findall(r"(?:^|\s)([A-Za-z_]\w*)=", comment))
    lowercase = ({"lattice", "properties"} & keys) and not ({"Lattice", "Properties"} & keys)
    force_column = re.search(r"properties=\S*:force:R:3", comment, re.IGNORECASE)
    return GPUMD_XYZ if lowercase or force_column else None


def _check_xyz_frame(number: int, text: str) -> Exception | None:
    """The first problem of a frame's atom lines (columns against its ``Properties``, unknown
    element), naming the line; None if there is none."""
    body = text.split("\n")  # (not splitlines: a form feed inside a line is not a line break here)
    if body[-1] == "":
        body.pop()
    try:
        declared = _columns_declared(body[1])
    except ValueError as exc:
        return ValueError(f"line {number + 1}: {exc}")
    species_first = declared is None or declared[1].lower().startswith("species:s:")
    for offset, line in enumerate(body[2:]):
        columns = line.split()
        if declared is not None and len(columns) != declared[0]:
            return ValueError(f"line {number + 2 + offset} (atom {offset}): {len(columns)} columns, but "
                              f"Properties={declared[1]} declares {declared[0]}")
        if species_first and columns and columns[0].capitalize() not in atomic_numbers and not columns[0].isdigit():
            return ValueError(f"line {number + 2 + offset} (atom {offset}): unknown element {columns[0][:20]!r}")
    return None


@dataclass(frozen=True)
class FrameText:
    """One frame of an (extended) XYZ file as text, split off but not parsed: splitting is cheap
    and sequential, parsing (:func:`parse_frame`) can happen in another process."""

    line: int  #: line number of its count line
    text: str


def _is_xyz(path: str, file_format: str | None) -> bool:
    fmt = (file_format or "").lower()
    return fmt in ("extxyz", "xyz") or (not fmt and path.lower().endswith(XYZ_SUFFIXES))


def _ase_frames(path: str, index: str, file_format: str | None) -> Iterator[tuple[int, Atoms | Exception, bool]]:
    reader = iread(path, index=index, format=file_format)
    frame = 0
    while True:
        try:
            atoms = next(reader)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001 - ASE raises many types on malformed input
            yield frame, exc, False  # ASE's reader cannot continue past an unparsable frame
            return
        yield frame, atoms, True
        frame += 1


def iter_unparsed_frames(path: str, file_format: str | None = None) -> Iterator[tuple[int, FrameText | Atoms | Exception, bool]]:
    """(frame, its :class:`FrameText` (XYZ files) or ``Atoms`` (other formats, read by ASE) or the
    error that stopped its reading, whether reading goes on after an error), one at a time."""
    file_format = file_format or detect_format(path)
    if not _is_xyz(path, file_format):
        yield from _ase_frames(path, ":", file_format)
        return
    frame = 0
    try:
        for frame, line, chunk in _xyz_frame_texts(path):
            yield frame, chunk if isinstance(chunk, Exception) else FrameText(line, chunk), True
    except UnicodeDecodeError as exc:
        yield frame, ValueError(f"not a text file ({exc})"), False


def parse_frame(item: FrameText | Atoms | Exception) -> tuple[str, Atoms | Exception]:
    """(where in the file, for messages; the ``Atoms`` or the parse error) of an item of
    :func:`iter_unparsed_frames`."""
    if not isinstance(item, FrameText):
        return "", item
    error = _check_xyz_frame(item.line, item.text)
    if error is not None:  # the message names the line
        return "", error
    try:
        return "", next(read_xyz(io.StringIO(item.text), index=0))
    except Exception as exc:  # noqa: BLE001 - ASE raises many types on malformed input
        return f" (lines {item.line}-{item.line + item.text.count(chr(10)) - 1})", exc


def iter_frames(path: str, index: str = ":", file_format: str | None = None) -> Iterator[tuple[int, str, Atoms | Exception, bool]]:
    """(frame, where in the file, Atoms or the parse error, whether reading goes on after an error),
    one frame at a time (constant memory for files of any size)."""
    if index != ":":
        for frame, atoms, can_continue in _ase_frames(path, index, file_format or detect_format(path)):
            yield frame, "", atoms, can_continue
        return
    for frame, item, can_continue in iter_unparsed_frames(path, file_format):
        lines, atoms = parse_frame(item)
        yield frame, lines, atoms, can_continue


def check_source_file(path: str) -> None:
    """A ``DataError`` unless ``path`` is an existing, non-empty file."""
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, expected a structure file")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: file is empty")


def parse_error_message(where: str, lines: str, exc: Exception) -> str:
    """The one-line message of a frame ASE could not parse."""
    return f"{where}{lines}: cannot parse ({type(exc).__name__}: {exc})"


def check_structure(atoms: Atoms, keys: LabelKeys, where: str, require_energy: bool = False) -> dict:
    """Check one frame's geometry and read its labels (a ``DataError`` naming ``where`` and the field)."""
    check_geometry(atoms, where)
    return extract_labels(atoms, keys, where, require_energy=require_energy)


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
        file_format: an ASE format name; None detects GPUMD's ``train.xyz`` conventions
            (:func:`detect_format`) and otherwise lets ASE choose by the file name.
        on_error: ``"raise"`` stops at the first bad frame with an error naming the file,
            frame and field; ``"skip"`` drops bad frames with a warning and a count.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    keys = keys or LabelKeys()
    path = os.fspath(path)
    check_source_file(path)
    structures: list[LabelledStructure] = []
    skipped: list[str] = []
    frames = 0
    for frame, lines, atoms, can_continue in iter_frames(path, index, file_format):
        where = f"{path}: frame {frame}"
        frames = frame + 1
        if isinstance(atoms, Exception):
            message = parse_error_message(where, lines, atoms)
            if on_error == "raise":
                raise DataError(message) from atoms
            skipped.append(message)
            log.warning("skipping %s%s", message, "" if can_continue else "; stopping at the unreadable frame")
            continue
        try:
            labels = check_structure(atoms, keys, where, require_energy)
        except DataError as exc:
            if on_error == "raise":
                raise
            skipped.append(str(exc))
            log.warning("skipping %s", exc)
        else:
            structures.append(LabelledStructure(atoms, labels, f"{path}:{frame}"))
    if skipped:
        log.warning("%s: skipped %d bad frame(s) of %d", path, len(skipped), frames)
    if not structures:
        raise DataError(f"{path}: no usable structures ({len(skipped)} bad frame(s))")
    return structures
