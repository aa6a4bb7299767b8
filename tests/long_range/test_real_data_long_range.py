"""The long-range real-data cases (benchmarks/real_data_long_range.py) are registered with the
benchmark, and their table says plainly where long range does not beat short range (the
training itself is the benchmark's, not a unit test's)."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import real_data  # noqa: E402
import real_data_long_range as lr  # noqa: E402


def _row(model: str, e: float, f: float, by_state: dict[str, float], q: float | None = None) -> dict:
    test = {"n_test": 4, "test": [0, 1, 2, 3], "energy_rmse": e, "forces_rmse": f,
            "energy_rmse_by_state": by_state, "n_by_state": {s: 2 for s in by_state}}
    if q is not None:
        test["charges_rmse"] = q
    return {"model": model, "charges_trained": model == "latent + q", "wall_s": 60.0, "load": {"before": 1.0, "after": 1.0},
            "parameters": 100, "test": test, "command": f"mlip-train {model}"}


def test_every_long_range_case_is_registered_with_the_benchmark():
    assert set(lr.LR_CASES) <= set(real_data.SPECIAL_CASES)
    for case in lr.LR_CASES.values():
        assert case.solver in ("ewald", "direct") and set(case.models) <= set(lr.MODELS)


def test_table_reports_per_state_errors_and_says_when_long_range_does_not_win():
    case = lr.LR_CASES["ko2021_carbon_chain"]
    budget = real_data.Budget(8.0, Path("/nonexistent"), 1)
    rows = [_row("short-range", 0.004, 0.50, {"Q = +0": 0.003, "Q = +1": 0.005}),
            _row("latent", 0.005, 0.40, {"Q = +0": 0.004, "Q = +1": 0.006}, q=0.03)]
    text = lr.markdown("ko2021_carbon_chain", case, rows, None, budget)
    assert "E RMSE Q = +1 (n=2)" in text and "| 6.000 |" in text   # per charge state, meV/atom
    assert "| 30.0 |" in text                                      # charges in milli-e
    assert "beating short-range on both E and F here: none" in text  # better forces, worse energy: no win
    assert "4G-HDNNP (published, full set) | – | – | 1.194 | 78.0 | 6.58" in text
    rows[1] = _row("latent", 0.003, 0.40, {"Q = +0": 0.002, "Q = +1": 0.004})
    assert "here: latent." in lr.markdown("ko2021_carbon_chain", case, rows, None, budget)


def test_spice_table_marks_the_dipole_trained_model_and_says_maceles_has_no_dipoles():
    case = lr.LR_CASES["spice_dipeptides"]
    assert "latent + dipole" in case.models and "loss.dipole=1" in lr.MODELS["latent + dipole"].overrides("direct")
    budget = real_data.Budget(8.0, Path("/nonexistent"), 1)
    rows = [_row("short-range", 0.009, 0.47, {}), _row("latent + dipole", 0.009, 0.48, {}, q=None)]
    rows[1]["dipole_trained"] = True
    rows[1]["test"].update(dipole_rmse=0.25, dipole_reference_rms=1.25)
    text = lr.markdown("spice_dipeptides", case, rows, {"energy_rmse": 0.00128, "forces_rmse": 0.020}, budget)
    assert "| dipole RMSE |" in text and "| 0.250 (trained) |" in text
    assert "MACELES-OFF (in-file) | – | – | 1.280 | 20.0 | – | not in the file |" in text
    assert "predicts zero (the reference dipoles' RMS): 1.250 e·Å" in text
    assert "water_les" in real_data.SPECIAL_CASES and lr.LR_CASES["water_les"].solver == "ewald"


def test_several_splits_give_medians_and_paired_wins():
    tests = [{"energy_rmse": e, "forces_rmse": f, "test": [i], "energy_rmse_by_state": {"Q = +0": e}}
             for i, (e, f) in enumerate([(0.002, 0.30), (0.004, 0.10), (0.003, 0.20)])]
    merged = lr.median_over_splits(tests)
    assert merged["energy_rmse"] == 0.003 and merged["forces_rmse"] == 0.20
    assert merged["energy_rmse_by_state"] == {"Q = +0": 0.003} and merged["test"] == [[0], [1], [2]]
    case = lr.LR_CASES["ko2021_carbon_chain"]
    budget = real_data.Budget(8.0, Path("/nonexistent"), 1, (), (0, 1, 2))
    sr = _row("short-range", 0.003, 0.20, {"Q = +0": 0.003})
    sr.update(seeds=[0, 1, 2], splits=tests)
    # better than short-range on the same split in two of three splits, on both E and F
    ours = [{"energy_rmse": e, "forces_rmse": f} for e, f in [(0.001, 0.35), (0.003, 0.09), (0.002, 0.18)]]
    latent = _row("latent", 0.002, 0.18, {"Q = +0": 0.002})
    latent.update(seeds=[0, 1, 2], splits=ours)
    text = lr.markdown("ko2021_carbon_chain", case, [sr, latent], None, budget)
    assert "3 seeded splits (data.split_seed=0,1,2" in text
    assert "| 0.67 | 0.90 |" in text  # the medians of the same-split ratios: E 0.5, 0.75, 0.67; F 1.17, 0.9, 0.9
    assert "here: latent (median ratios over the splits)." in text
    assert "on both: latent 2/3." in text
    assert "Short-range alone over the splits (the noise any ranking must beat): E 2.000–4.000 meV/atom, F 100.0–300.0" in text
    assert lr.median_over_splits([{"n_test": 4}, {"n_test": 4}]) == {"n_test": 4}  # a shared count stays a count
