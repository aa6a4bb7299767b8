"""Hostile data files: every broken input gives one clear error naming the file, the frame and
the field (or line); a long file with one bad frame names that frame; ``on_error=skip`` drops
bad frames with a warning and a count, and reading resumes after a malformed frame.

The corpus is generated here by editing the text of a good extxyz file, the way real files
break: truncated copies, hand edits with a column too many or too few, ``Properties`` that do
not match the columns, empty frames, degenerate cells, duplicated atoms and absurd values.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from mlip_plugins.data.reading import read_structures
from mlip_plugins.data.structures import DataError

LATTICE = 'Lattice="3.6 0.0 0.0 0.0 3.6 0.0 0.0 0.0 3.6"'


def _frame(energy: float = -3.0, shift: float = 0.0):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.positions[1] += shift
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=np.full((4, 3), 0.01))
    return atoms


def _good_text(tmp_path, frames=None) -> list[str]:
    path = tmp_path / "good.xyz"
    write(path, frames or [_frame(), _frame(-3.1, 0.05)], format="extxyz")
    return path.read_text().splitlines()


def _edit_atom_line(line: str, column: int, value: str) -> str:
    parts = line.split()
    parts[column] = value
    return " ".join(parts)


# name -> (edit of the good two-frame text: lines -> lines, frame, message pattern)
CORPUS = {
    "truncated": (lambda L: L[:-2], 1, r"frame 1: cannot parse \(ValueError: line 7: truncated, the frame declares 4 atoms but the file ends after 2\)"),
    "too_few_columns": (lambda L: L[:3] + [L[3].rsplit(None, 2)[0]] + L[4:], 0,
                        r"frame 0: cannot parse \(ValueError: line 4 \(atom 1\): 5 columns, but Properties=species:S:1:pos:R:3:forces:R:3 declares 7\)"),
    "too_many_columns": (lambda L: L[:8] + [L[8] + " 0.5"] + L[9:], 1, r"frame 1: .*line 9 \(atom 0\): 8 columns, but .* declares 7"),
    "properties_mismatch": (lambda L: [L[0], L[1].replace("forces:R:3", "forces:R:2")] + L[2:], 0, r"frame 0: .*line 3 \(atom 0\): 7 columns, but Properties=species:S:1:pos:R:3:forces:R:2 declares 6"),
    "properties_malformed": (lambda L: [L[0], L[1].replace(":forces:R:3", ":forces:R")] + L[2:], 0, r"frame 0: .*line 2: Properties=.* is not a list of name:type:count triples"),
    "count_not_a_number": (lambda L: L[:6] + ["four"] + L[7:], 1, r"frame 1: cannot parse \(ValueError: line 7: expected the atom count of a frame, got 'four'\)"),
    "count_too_large": (lambda L: ["5"] + L[1:], 0, r"frame 0: .*line 7 \(atom 4\): 1 columns"),
    "unknown_element": (lambda L: L[:2] + [_edit_atom_line(L[2], 0, "Xx")] + L[3:], 0, r"frame 0: .*line 3 \(atom 0\): unknown element 'Xx'"),
    "text_in_positions": (lambda L: L[:2] + [_edit_atom_line(L[2], 2, "abc")] + L[3:], 0, r"frame 0 \(lines 1-6\): cannot parse \(ValueError: could not convert string to float: 'abc'\)"),
    "empty_frame": (lambda L: ["0", f'{LATTICE} Properties=species:S:1:pos:R:3 energy=-1.0 pbc="T T T"'] + L, 0, r"frame 0: field 'positions': structure has no atoms"),
    "zero_volume_cell": (lambda L: [L[0], L[1].replace(LATTICE, 'Lattice="3.6 0.0 0.0 3.6 0.0 0.0 0.0 0.0 3.6"')] + L[2:], 0, r"frame 0: field 'cell': zero-volume cell"),
    "periodic_without_lattice": (lambda L: [L[0], L[1].replace(LATTICE + " ", "")] + L[2:], 0, r"frame 0: field 'cell': zero-volume cell"),
    "duplicate_atoms": (lambda L: L[:9] + [L[8]] + L[10:], 1, r"frame 1: field 'positions': atoms \d and \d are closer than 0.1 Å \(duplicate atoms\?\)"),
    "energy_1e30": (lambda L: [L[0], L[1].replace("energy=-3.0", "energy=1e30")] + L[2:], 0, r"frame 0: field 'energy': \|energy per atom\| = 2.5e\+29 eV exceeds 1e\+07"),
    "energy_overflow": (lambda L: [L[0], L[1].replace("energy=-3.0", "energy=1e400")] + L[2:], 0, r"frame 0: field 'energy': contains NaN or inf"),
    "energy_text": (lambda L: [L[0], L[1].replace("energy=-3.0", "energy=abc")] + L[2:], 0, r"frame 0: field 'energy': not a number \('abc'\)"),
    "force_1e30": (lambda L: L[:10] + [_edit_atom_line(L[10], 5, "1e30")] + L[11:], 1, r"frame 1: field 'forces': \|forces\| = 1e\+30 eV/Å at index 2 exceeds 1e\+05"),
    "force_nan": (lambda L: L[:3] + [_edit_atom_line(L[3], 4, "nan")] + L[4:], 0, r"frame 0: field 'forces': contains NaN or inf \(first at index 1\)"),
    "position_1e30": (lambda L: L[:2] + [_edit_atom_line(L[2], 1, "1e30")] + L[3:], 0, r"frame 0: field 'positions': \|positions\| = 1e\+30 Å at index 0 exceeds"),
    "negative_weight": (lambda L: [L[0], L[1] + " weight=-1"] + L[2:], 0, r"frame 0: field 'weight': must be a finite non-negative number"),
}


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_each_broken_file_gives_one_clear_error(tmp_path, case):
    edit, frame, pattern = CORPUS[case]
    path = tmp_path / f"{case}.xyz"
    path.write_text("\n".join(edit(_good_text(tmp_path))) + "\n")
    with pytest.raises(DataError) as info:
        read_structures(path, require_energy=True)
    message = str(info.value)
    assert message.startswith(f"{path}: frame {frame}"), message
    assert re.search(pattern, message), message
    assert "\n" not in message


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", bytes(range(256)) * 8], ids=["empty", "blank", "binary"])
def test_files_without_structures(tmp_path, content):
    path = tmp_path / "nothing.xyz"
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: (file is empty|no usable structures|frame 0: cannot parse \(ValueError: not a text file)"):
        read_structures(path)


def _long_file(tmp_path, n: int = 300, bad: dict | None = None):
    """n small frames; ``bad`` maps a frame index to an edit of that frame's text lines."""
    rng = np.random.default_rng(0)
    frames = [_frame(-3.0 + 0.01 * k, float(rng.uniform(0, 0.1))) for k in range(n)]
    lines = _good_text(tmp_path, frames)
    per_frame = 6
    for index, edit in (bad or {}).items():
        lines[index * per_frame:(index + 1) * per_frame] = edit(lines[index * per_frame:(index + 1) * per_frame])
    path = tmp_path / "long.xyz"
    path.write_text("\n".join(lines) + "\n")
    return path


BAD_FRAMES = {
    "columns": lambda F: F[:3] + [F[3].rsplit(None, 1)[0]] + F[4:],
    "nan_force": lambda F: F[:4] + [_edit_atom_line(F[4], 6, "nan")] + F[5:],
    "duplicate": lambda F: F[:3] + [F[2]] + F[4:],
    "energy": lambda F: [F[0], re.sub(r"energy=\S+", "energy=1e30", F[1])] + F[2:],
    "header": lambda F: ["x"] + F[1:],
}


@pytest.mark.parametrize("kind", sorted(BAD_FRAMES))
def test_a_long_file_with_one_bad_frame_names_it_and_skip_keeps_the_rest(tmp_path, kind, caplog):
    path = _long_file(tmp_path, 300, {217: BAD_FRAMES[kind]})
    with pytest.raises(DataError, match=rf"long.xyz: frame 217\b"):
        read_structures(path)
    with caplog.at_level(logging.WARNING, logger="mlip_plugins.data.reading"):
        kept = read_structures(path, on_error="skip")
    assert len(kept) == 299
    assert [s.source.rsplit(":", 1)[1] for s in kept][216:218] == ["216", "218"]
    assert kept[-1].labels["energy"] == pytest.approx(-3.0 + 0.01 * 299)  # reading went on to the end
    assert any("long.xyz: skipped 1 bad frame(s) of 300" in r.getMessage() for r in caplog.records)
    assert any("frame 217" in r.getMessage() for r in caplog.records)


def test_skip_counts_several_bad_frames_and_reports_each(tmp_path, caplog):
    path = _long_file(tmp_path, 40, {3: BAD_FRAMES["header"], 20: BAD_FRAMES["columns"], 39: lambda F: F[:-1]})
    with caplog.at_level(logging.WARNING, logger="mlip_plugins.data.reading"):
        kept = read_structures(path, on_error="skip")
    assert len(kept) == 37
    messages = [r.getMessage() for r in caplog.records]
    assert any("skipped 3 bad frame(s) of 40" in m for m in messages), messages
    for frame in (3, 20, 39):
        assert any(f"frame {frame}:" in m for m in messages), (frame, messages)


@pytest.fixture
def restore_dtype():
    import torch

    previous = torch.get_default_dtype()
    yield
    torch.set_default_dtype(previous)


def test_on_error_skip_end_to_end_through_training(tmp_path, caplog, restore_dtype):
    """``data.on_error=skip`` in mlip-train: bad frames dropped with a count, training runs on the rest."""
    from hydra import compose, initialize_config_module

    from lightning_modules.train import run_training

    path = _long_file(tmp_path, 24, {5: BAD_FRAMES["duplicate"], 11: BAD_FRAMES["energy"]})
    overrides = [f"data.path={path}", "model=composable", "model.energy.descriptor.n_max=2", "model.energy.descriptor.basis_size=3",
                 "model.energy.readout.hidden=[4]", "model.cutoff=3.0", "model.elements=[Cu]", "trainer.max_epochs=1",
                 "trainer.enable_progress_bar=false", "logger=[]", "scheduler.warmup_steps=1", "data.cache=false"]
    with initialize_config_module("mlip_plugins.conf", version_base=None):
        with pytest.raises(DataError, match=r"long.xyz: frame 5: field 'positions': atoms .* closer than"):
            run_training(compose("train", overrides=[*overrides, f"run_dir={tmp_path / 'raise'}"]))
        with caplog.at_level(logging.WARNING, logger="mlip_plugins.data.reading"):
            result = run_training(compose("train", overrides=[*overrides, "data.on_error=skip", f"run_dir={tmp_path / 'skip'}"]))
    assert any("long.xyz: skipped 2 bad frame(s) of 24" in r.getMessage() for r in caplog.records)
    import json

    split = json.loads((tmp_path / "skip" / "split.json").read_text())
    assert sum(len(split[part]) for part in ("train", "val", "test")) == 22
    assert np.isfinite(result["metrics"]["energy_rmse"])
