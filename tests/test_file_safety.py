"""Files are what their content says, the cache cannot serve stale graphs, and the CLIs fail in one line.

Covers issue 14, items 4 (cache keyed on content), 10 (temporaries removed on failure and
swept), 11 (``mlip-export`` onto its input / into a missing folder), 12 (format by content,
not by name) and the one-line exit-2 contract of ``mlip-eval``, ``mlip-export``, ``mlip-fim``,
``mlip-design`` and ``mlip-moe``; the tiny-cell and disk-full cases live in test_bad_input.py
and test_faults.py.
"""

from __future__ import annotations

import copy
import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xxhash
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from mlip_plugins.checkpoint import EXPORT_FORMAT, export_potential
from mlip_plugins.models.builder import build_potential

MODEL = {"elements": ["Cu", "Au"], "cutoff": 4.0,
         "energy": {"descriptor": {"name": "radial", "n_max": 2, "basis_size": 3}, "readout": {"name": "linear"}}}
NEP_MODEL = {"elements": ["Cu", "Au"], "cutoff": 4.0,
             "energy": {"model": {"name": "nep", "version": 4, "cutoff_angular": 3.5, "n_max": [2, 2], "basis_size": [3, 3],
                                  "l_max": [2, 0, 0], "neuron": 4, "seed": 1}}}


def _frames(symbols=("Cu", "Au"), energies=(-3.0, -3.1)) -> list:
    frames = []
    for k, energy in enumerate(energies):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.symbols[1] = symbols[k % len(symbols)]
        atoms.rattle(0.05, seed=k)
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=np.zeros((4, 3)))
        frames.append(atoms)
    return frames


@pytest.fixture
def potential(float64):
    return build_potential(copy.deepcopy(MODEL))


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "data.xyz"
    write(path, _frames(), format="extxyz")
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh graph cache folder, swept anew."""
    from mlip_plugins.data import graph_cache

    folder = tmp_path / "cache"
    monkeypatch.setenv("MLIP_PLUGINS_CACHE", str(folder))
    monkeypatch.setattr(graph_cache, "_swept", set(), raising=False)
    return folder


def _one_error_line(err: str, prog: str) -> str:
    """The one error line of ``err`` (the start-up line naming the thread choice aside)."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(f"{prog}: torch threads:")]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    assert "Traceback" not in err and "weights_only" not in err, err
    return lines[0]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _stale(path: Path) -> Path:
    path.write_bytes(b"PK\x03\x04 half")
    old = time.time() - 3600
    os.utime(path, (old, old))
    return path


# ------------------------------------------------------------------- item 4: content-keyed cache
def test_file_fingerprint_is_xxh3_128_of_the_bytes_streamed(tmp_path):
    from mlip_plugins.data.fingerprint import file_fingerprint

    payload = os.urandom(3 * (1 << 20) + 17)  # several read chunks
    (tmp_path / "a").write_bytes(payload)
    (tmp_path / "b").write_bytes(payload[:-1] + bytes([payload[-1] ^ 1]))
    assert file_fingerprint(tmp_path / "a") == f"xxh3_128:{xxhash.xxh3_128(payload).hexdigest()}"
    assert file_fingerprint(tmp_path / "a") != file_fingerprint(tmp_path / "b")


def test_a_copy_with_the_same_size_and_mtime_but_other_labels_is_not_served_from_the_cache(tmp_path, cache):
    from mlip_plugins.data.loading import load_graph_file
    from mlip_plugins.data.structures import LabelKeys

    path = tmp_path / "train.xyz"
    write(path, _frames(energies=(-3.0, -3.5)), format="extxyz")
    stat = path.stat()
    first = load_graph_file(str(path), 4.0, LabelKeys())
    assert [float(g.energy) for g in first] == [-3.0, -3.5]
    assert len(list(cache.glob("graphs_*.pt"))) == 1
    # other labels, same byte count, the old mtime restored (what `cp -p` / `rsync -t` of another file does)
    write(path, _frames(energies=(-4.0, -4.5)), format="extxyz")
    assert path.stat().st_size == stat.st_size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = load_graph_file(str(path), 4.0, LabelKeys())
    assert [float(g.energy) for g in second] == [-4.0, -4.5]
    # the unchanged file is served from the cache (no rebuild: the builder is not called)
    import mlip_plugins.data.graph_cache as graph_cache

    calls = []
    original = graph_cache.load_graphs
    graph_cache.load_graphs = lambda p: calls.append(p) or original(p)
    try:
        third = load_graph_file(str(path), 4.0, LabelKeys())
    finally:
        graph_cache.load_graphs = original
    assert calls and [float(g.energy) for g in third] == [-4.0, -4.5]


# ------------------------------------------------------------------- item 10: temporaries
def test_stale_cache_temporaries_are_swept_and_live_ones_kept(data_file, cache):
    from mlip_plugins.data.loading import load_graph_file
    from mlip_plugins.data.structures import LabelKeys

    cache.mkdir()
    dead = _stale(cache / f".graphs_0123.pt.tmp{_dead_pid()}")
    live = _stale(cache / f".graphs_4567.pt.tmp{os.getppid()}")  # a running process (pytest's parent)
    fresh = cache / f".graphs_89ab.pt.tmp{_dead_pid()}"  # touched just now: maybe another host's writer
    fresh.write_bytes(b"x")
    user = _stale(cache / "notes.tmp1")  # not named like our temporaries
    load_graph_file(str(data_file), 4.0, LabelKeys())
    assert not dead.exists()
    assert live.exists() and fresh.exists() and user.exists()


def test_mlip_export_removes_its_temporary_on_a_full_disk_and_keeps_the_previous_output(tmp_path, potential, monkeypatch,
                                                                                         capsys):
    from mlip_plugins.cli.export import main

    model = export_potential(potential, tmp_path / "model.pt")
    out = tmp_path / "out.pt"
    out.write_bytes(b"the previous export")
    real_save = torch.save

    def disk_full(obj, target, *args, **kwargs):
        handle = open(target, "wb") if isinstance(target, (str, os.PathLike)) else target  # noqa: SIM115
        handle.write(b"PK\x03\x04 half an archive")
        handle.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    assert main([str(model), "-o", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err, "mlip-export")
    assert "No space left on device" in line and str(out) in line
    assert out.read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "out.pt"]
    monkeypatch.setattr(torch, "save", real_save)
    # a temporary of a killed export of this output is swept at start; others are not touched
    dead = _stale(tmp_path / f".out.pt.tmp{_dead_pid()}")
    other = _stale(tmp_path / f".model.pt.tmp{_dead_pid()}")
    assert main([str(model), "-o", str(out)]) == 0
    assert not dead.exists() and other.exists()
    assert torch.load(out, weights_only=True)["format"] == EXPORT_FORMAT


# ------------------------------------------------------------------- item 11: export target
def test_mlip_export_refuses_to_write_over_its_input(tmp_path, potential, capsys):
    from mlip_plugins.cli.export import main

    model = export_potential(potential, tmp_path / "model.pt")
    before = model.read_bytes()
    (tmp_path / "sub").mkdir()
    os.link(model, tmp_path / "hardlink.pt")
    for target in (model, tmp_path / "sub" / ".." / "model.pt", tmp_path / "hardlink.pt"):
        assert main([str(model), "-o", str(target), "--format", "pt"]) == 2
        assert "is the input model itself" in _one_error_line(capsys.readouterr().err, "mlip-export")
    assert model.read_bytes() == before


def test_mlip_export_into_a_missing_folder_is_one_line(tmp_path, potential, capsys):
    from mlip_plugins.cli.export import main

    model = export_potential(potential, tmp_path / "model.pt")
    assert main([str(model), "-o", str(tmp_path / "nope" / "out.pt")]) == 2
    line = _one_error_line(capsys.readouterr().err, "mlip-export")
    assert "nope" in line and "does not exist" in line
    assert not (tmp_path / "nope").exists()


# ------------------------------------------------------------------- item 12: format by content
def test_model_file_format_is_read_from_the_content(tmp_path, potential):
    from mlip_plugins.checkpoint import CheckpointError
    from mlip_plugins.nep.nep_txt import write_nep
    from mlip_plugins.model_files import model_file_format

    zipped = export_potential(potential, tmp_path / "nep_model.ckpt")
    legacy = tmp_path / "nepal.pt"
    torch.save({"format": EXPORT_FORMAT}, legacy, _use_new_zipfile_serialization=False)
    nep_text = write_nep(build_potential(copy.deepcopy(NEP_MODEL)), tmp_path / "weights.pt")
    assert model_file_format(zipped) == "torch" and model_file_format(legacy) == "torch"
    assert model_file_format(nep_text) == "nep"
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "random.ckpt").write_bytes(os.urandom(512))
    (tmp_path / "nepnotes.txt").write_text("nepal trip: bring boots\n")
    for name, why in [("empty.ckpt", "empty"), ("random.ckpt", "neither"), ("nepnotes.txt", "neither")]:
        with pytest.raises(CheckpointError, match=rf"not a mlip-plugins checkpoint or nep.txt: .*{name} \(.*{why}"):
            model_file_format(tmp_path / name)


def test_files_named_nep_load_by_content_everywhere(tmp_path, float64, data_file, capsys):
    from mlip_plugins.calculator import MLIPCalculator
    from mlip_plugins.cli.evaluate import main as evaluate
    from mlip_plugins.cli.export import main as export
    from mlip_plugins.cli.fim import main as fim
    from mlip_plugins.nep.nep_txt import write_nep

    nep = build_potential(copy.deepcopy(NEP_MODEL))
    checkpoint = export_potential(nep, tmp_path / "nep_model.ckpt")  # a torch file named like a nep.txt
    renamed = tmp_path / "nepal.pt"
    renamed.write_bytes(checkpoint.read_bytes())
    text = write_nep(nep, tmp_path / "potential.model")  # a nep.txt named like anything
    atoms = _frames()[0]
    reference = atoms.copy()
    reference.calc = MLIPCalculator(nep)
    energy = reference.get_potential_energy()
    for path in (checkpoint, renamed, text):
        other = atoms.copy()
        other.calc = MLIPCalculator.from_file(path)
        assert other.get_potential_energy() == pytest.approx(energy, abs=1e-8)
    assert evaluate([str(renamed), str(data_file), "-o", str(tmp_path / "eval")]) == 0
    assert export([str(checkpoint), "-o", str(tmp_path / "out.pt")]) == 0
    assert export([str(checkpoint), "-o", str(tmp_path / "nep_export.pt")]) == 0  # a .pt output is a torch file
    from mlip_plugins.model_files import model_file_format

    assert model_file_format(tmp_path / "nep_export.pt") == "torch"
    assert export([str(text), "-o", str(tmp_path / "copy.txt"), "--no-check"]) == 0
    assert fim([str(text), str(data_file), "--probe-size", "2", "--json"]) == 0
    assert "error" not in capsys.readouterr().err


# ------------------------------------------------------------------- one line, exit 2
@pytest.fixture
def bad_models(tmp_path, potential):
    """An empty file, random bytes, and a model that needs a plugin that is not installed."""
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    random_bytes = tmp_path / "random.pt"
    random_bytes.write_bytes(b"\x80\x02" + os.urandom(400))  # looks like a legacy pickle at first
    missing_plugin = tmp_path / "needs_plugin.pt"
    torch.save({"format": EXPORT_FORMAT, "model_config": potential.model_config(),
                "state_dict": potential.state_dict(),
                "metadata": {"plugins": [{"group": "mlip_plugins.descriptors", "name": "fancy", "distribution": "mlip-fancy",
                                          "version": "1.0", "target": "mlip_fancy:Fancy"}]}}, missing_plugin)
    return {"empty": (empty, "not a mlip-plugins checkpoint or nep.txt"),
            "random": (random_bytes, "not a mlip-plugins checkpoint or nep.txt"),
            "plugin": (missing_plugin, "pip install 'mlip-fancy==1.0'")}


@pytest.mark.parametrize("tool", ["mlip-eval", "mlip-export", "mlip-fim", "mlip-moe"])
def test_unloadable_models_are_one_line_errors_in_every_cli(tool, bad_models, data_file, tmp_path, capsys):
    from mlip_plugins.cli import evaluate, export, fim, moe

    for name, (path, message) in bad_models.items():
        argv = {"mlip-eval": [str(path), str(data_file), "-o", str(tmp_path / "eval")],
                "mlip-export": [str(path), "-o", str(tmp_path / "out.pt")],
                "mlip-fim": [str(path), str(data_file)],
                "mlip-moe": [str(path), "--out", str(tmp_path / "moe")]}[tool]
        main = {"mlip-eval": evaluate, "mlip-export": export, "mlip-fim": fim, "mlip-moe": moe}[tool].main
        assert main(argv) == 2, name
        line = _one_error_line(capsys.readouterr().err, tool)
        assert message in line and str(path) in line, (name, line)


def test_mlip_eval_names_the_file_and_frame_of_an_unknown_element(tmp_path, potential, capsys):
    from mlip_plugins.cli.evaluate import main

    model = export_potential(potential, tmp_path / "model.pt")
    data = tmp_path / "zinc.xyz"
    write(data, _frames(symbols=("Cu", "Zn")), format="extxyz")
    assert main([str(model), str(data), "-o", str(tmp_path / "eval")]) == 2
    line = _one_error_line(capsys.readouterr().err, "mlip-eval")
    assert f"{data}: frame 1: field 'numbers': element Zn not known to the model (it knows Cu, Au)" in line


def test_mlip_design_bad_arguments_are_one_line(data_file, tmp_path, capsys):
    from mlip_plugins.cli.design import main

    assert main(["--data", str(data_file), "--score", "energy,speed", "-o", str(tmp_path / "design")]) == 2
    assert "unknown speed" in _one_error_line(capsys.readouterr().err, "mlip-design")
    assert main(["--data", str(data_file), "--blocks", "radail", "--budget", "1", "-o", str(tmp_path / "design")]) == 2
    assert "unknown design blocks ['radail']" in _one_error_line(capsys.readouterr().err, "mlip-design")


def test_internal_bugs_keep_their_traceback_and_debug_reraises(tmp_path, monkeypatch, bad_models, data_file):
    from mlip_plugins.checkpoint import CheckpointError
    from mlip_plugins.cli import evaluate

    def bug(args):
        raise ZeroDivisionError("an internal bug")

    monkeypatch.setattr(evaluate, "run", bug)
    with pytest.raises(ZeroDivisionError):
        evaluate.main([str(bad_models["empty"][0]), str(data_file)])
    monkeypatch.undo()
    with pytest.raises(CheckpointError):
        evaluate.main([str(bad_models["empty"][0]), str(data_file), "--debug"])
    monkeypatch.setenv("MLIP_DEBUG", "1")
    with pytest.raises(CheckpointError):
        evaluate.main([str(bad_models["empty"][0]), str(data_file)])


def test_mlip_eval_never_replaces_an_earlier_evaluation_by_default(tmp_path, potential, data_file):
    """Without -o, a second evaluation of the same data file (another model, say) goes to a new
    folder beside the first; the first one's files are left as they were."""
    from mlip_plugins.cli.evaluate import main as evaluate

    model = export_potential(potential, tmp_path / "model.ckpt")
    assert evaluate([str(model), str(data_file)]) == 0
    first = tmp_path / "data_eval" / "metrics.json"
    before = first.read_bytes()
    (tmp_path / "data_eval" / "notes.txt").write_text("mine\n")
    assert evaluate([str(model), str(data_file)]) == 0
    assert first.read_bytes() == before and (tmp_path / "data_eval" / "notes.txt").read_text() == "mine\n"
    assert (tmp_path / "data_eval-2" / "metrics.json").is_file()
