"""The adaptive, Fisher-guided design loop (best-first search over model configurations).

1. Train the start configuration (a single-term model) and evaluate it: errors on held-out
   structures (energy, forces, stress, optionally the EOS against a reference calculator)
   and the Fisher report on a fixed probe set.
2. Take the best configuration evaluated so far (lowest score) that still has untried moves,
   rank its moves with its Fisher report (:func:`mlip_plugins.design.space.propose_moves`),
   and train and evaluate the first one not tried yet (identical models are never retrained).
3. Repeat within the trial budget (and the optional wall-time limit).
4. With ``final_epochs``, train the pick once more with that many epochs (a cheap schedule to
   explore, a long one for the model that is kept): the refit is one more candidate, and the
   best-candidate rule then chooses between it and the rest as before. Moves to a model larger
   than ``DesignLimits.max_params`` are not trained (the paper's search for a small model).

With test graphs (``mlip-design --test``) every candidate is also evaluated on them; the test
errors are reported beside the validation errors but never enter the score or the choice of
the best candidate, so the test set stays held out.

The score of a candidate is the mean, over the properties, of its error divided by the start
model's error (1.0 = as good as the start). The *best* candidate is the one with the fewest
parameters among those whose score is within ``tolerance`` of the lowest score, a parsimony
rule in the spirit of the paper's search for a small, well-conditioned model.

Training uses the compact trainer of :mod:`mlip_plugins.design.training` (plain Adam on the
energy + force loss of ``mlip-train``, no Lightning) so trials stay fast.
"""

from __future__ import annotations

import copy
import math
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import torch

from mlip_plugins.design.properties import eos_errors, validation_errors
from mlip_plugins.design.space import (
    Block,
    DesignLimits,
    Move,
    available_blocks,
    canonical_key,
    describe,
    iter_terms,
    propose_moves,
)
from mlip_plugins.design.training import TrainSettings, train_potential
from mlip_plugins.errors import MLIPError
from mlip_plugins.fim.probe import select_probe
from mlip_plugins.fim.report import analyse
from mlip_plugins.models import build_potential

class DesignError(MLIPError, RuntimeError):
    """The design loop has no result (every candidate failed)."""


#: properties that enter the score (when measured)
SCORED = ("energy_rmse", "forces_rmse", "stress_rmse", "eos_rmse")
#: test-set errors in the candidate table (key, unit of the column after x1000)
TEST_COLUMNS = (("energy_mae", "meV_atom"), ("energy_rmse", "meV_atom"), ("forces_mae", "meV_A"), ("forces_rmse", "meV_A"))


@dataclass
class DesignSettings:
    """Settings of the loop (see the module docstring).

    Attributes:
        budget: number of candidates of the search, the start included (a refit comes on top).
        max_minutes: stop starting new trials after this wall time.
        probe_size: training structures in the Fisher probe set.
        probe_selection: ``diverse`` (cover every element pair first) or ``first``.
        fisher_weights: residual weights of the Fisher analysis.
        sloppy_threshold: relative eigenvalue below which a direction is sloppy.
        eos_reference: ASE calculator name for the EOS property (``emt``), or None.
        score_properties: which of energy_rmse, forces_rmse, stress_rmse, eos_rmse enter the score.
        tolerance: parsimony window of the best-candidate rule.
        blocks: building blocks to use (default: every installed one of radial, eam, angular).
        start: the start spec (default: a linear two-body term).
        final_epochs: refit the pick with this many epochs after the search (None: no refit).
    """

    budget: int = 8
    max_minutes: float | None = None
    train: TrainSettings = field(default_factory=TrainSettings)
    probe_size: int = 16
    probe_selection: str = "diverse"
    fisher_weights: dict = field(default_factory=lambda: {"energy": 1.0, "forces": 1.0, "stress": 1.0})
    sloppy_threshold: float = 1e-6
    fisher_method: str = "auto"
    eos_reference: str | None = None
    score_properties: tuple[str, ...] = ("energy_rmse", "forces_rmse")
    tolerance: float = 0.05
    limits: DesignLimits = field(default_factory=DesignLimits)
    blocks: Sequence[str] | None = None
    start: dict | None = None
    seed: int = 0
    final_epochs: int | None = None


@dataclass
class Trial:
    """One evaluated candidate."""

    id: int
    parent: int | None
    move: str
    reason: str
    description: str
    spec: dict
    n_params: int = 0
    params_per_term: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)
    test_errors: dict = field(default_factory=dict)  # reported only, never scored
    fisher: dict = field(default_factory=dict)  # summary: metrics and per-term sloppy fractions
    score: float = math.inf
    train_seconds: float = 0.0
    seconds: float = 0.0
    status: str = "ok"

    def row(self) -> dict:
        """Flat record for tables."""
        f = self.fisher
        return {
            "id": self.id, "parent": "" if self.parent is None else self.parent, "move": self.move, "model": self.description,
            "params": self.n_params, "score": self.score,
            "energy_rmse_meV_atom": 1000 * self.errors["energy_rmse"] if "energy_rmse" in self.errors else None,
            "forces_rmse_meV_A": 1000 * self.errors["forces_rmse"] if "forces_rmse" in self.errors else None,
            "stress_rmse_meV_A3": 1000 * self.errors["stress_rmse"] if "stress_rmse" in self.errors else None,
            "eos_rmse_meV_atom": 1000 * self.errors["eos_rmse"] if "eos_rmse" in self.errors else None,
            **{f"test_{key}_{unit}": 1000 * self.test_errors[key] if key in self.test_errors else None
               for key, unit in TEST_COLUMNS},
            "bulk_modulus_rel_error": self.errors.get("bulk_modulus_rel_error"),
            "condition_number": f.get("condition_number"), "decades": f.get("decades"),
            "n_sloppy": f.get("n_sloppy"), "sloppy_ratio": f.get("sloppy_ratio"),
            "effective_dimension": f.get("effective_dimension"),
            "term_sloppy_fractions": "; ".join(f"{k}={v:.2f}" for k, v in (f.get("term_sloppy_fraction") or {}).items()
                                               if v is not None),
            "seconds": round(self.seconds, 1), "status": self.status,
        }


class AdaptiveDesign:
    """Run the loop on fixed train / validation graphs.

    Args:
        elements: the model's elements (symbols or atomic numbers).
        cutoff: model cutoff (Å).
        train_graphs, val_graphs: PyG graphs (with labels) built with ``cutoff``.
        settings: :class:`DesignSettings`.
        log: called with one line of text per event.
        test_graphs: optional held-out graphs, evaluated for the record only (never scored).
    """

    def __init__(self, elements: Sequence, cutoff: float, train_graphs: Sequence, val_graphs: Sequence,
                 settings: DesignSettings | None = None, log: Callable[[str], None] = print,
                 test_graphs: Sequence | None = None):
        self.elements = list(elements)
        self.cutoff = float(cutoff)
        self.train_graphs = list(train_graphs)
        self.val_graphs = list(val_graphs)
        self.test_graphs = list(test_graphs or [])
        self._sizes: dict[str, int] = {}
        self.settings = settings or DesignSettings()
        self.log = log
        self.blocks: dict[str, Block] = available_blocks(self.settings.blocks, self.cutoff)
        self.probe = select_probe(self.train_graphs, self.settings.probe_size, self.settings.probe_selection)
        self.trials: list[Trial] = []
        self.reports: dict[int, dict] = {}
        self._moves: dict[int, list[Move]] = {}
        self._tried: set[str] = set()
        self._counter = 0

    # -- naming --------------------------------------------------------------------------
    def new_name(self, block_key: str) -> str:
        self._counter += 1
        return f"{block_key}_{self._counter}"

    def start_spec(self) -> dict:
        if self.settings.start is not None:
            return copy.deepcopy(self.settings.start)
        key = "radial" if "radial" in self.blocks else next(iter(self.blocks))
        return self.blocks[key].term(nonlinear=False, name=self.new_name(key))

    # -- evaluation ----------------------------------------------------------------------
    def model_config(self, spec: dict) -> dict:
        return {"elements": self.elements, "cutoff": self.cutoff, "energy": copy.deepcopy(spec)}

    def evaluate(self, spec: dict, parent: int | None = None, move: str = "start", reason: str = "",
                 train: TrainSettings | None = None) -> Trial:
        trial = Trial(len(self.trials), parent, move, reason, describe(spec, self.blocks), copy.deepcopy(spec))
        self._tried.add(canonical_key(spec))
        start = time.perf_counter()
        try:
            torch.manual_seed(self.settings.seed)
            potential = build_potential(self.model_config(spec))
            counts = potential.parameter_counts()
            trial.n_params = int(counts.pop("total"))
            trial.params_per_term = counts
            history = train_potential(potential, self.train_graphs, train or self.settings.train)
            trial.train_seconds = history["seconds"]
            trial.errors = validation_errors(potential, self.val_graphs)
            if self.test_graphs:
                trial.test_errors = validation_errors(potential, self.test_graphs)
            if self.settings.eos_reference:
                trial.errors.update(eos_errors(potential, self.settings.eos_reference))
            report = analyse(potential, self.probe, weights=self.settings.fisher_weights, method=self.settings.fisher_method,
                             sloppy_threshold=self.settings.sloppy_threshold)
            data = report.to_dict()
            self.reports[trial.id] = data
            m = report.metrics
            trial.fisher = {
                "method": report.method, "condition_number": m.get("condition_number"), "decades": m.get("decades"),
                "n_sloppy": m.get("n_sloppy"), "effective_dimension": m.get("effective_dimension"),
                "sloppy_ratio": (m["n_sloppy"] / report.n_params) if m.get("n_sloppy") is not None else None,
                "n_observations": report.n_observations,
                "term_sloppy_fraction": {t.name: t.sloppy_fraction for t in report.terms},
                "term_information_share": {t.name: t.information_share for t in report.terms},
            }
            if not all(math.isfinite(trial.errors.get(k, 0.0)) for k in SCORED):
                raise FloatingPointError("non-finite validation error")
        except Exception as exc:  # noqa: BLE001 - a failed candidate is recorded, the search goes on
            trial.status = f"failed: {type(exc).__name__}: {exc}"
            self.log(traceback.format_exc(limit=3))
        trial.seconds = time.perf_counter() - start
        self.trials.append(trial)
        self._rescore()
        return trial

    def _rescore(self) -> None:
        reference = next((t for t in self.trials if t.status == "ok"), None)
        if reference is None:
            return
        keys = [k for k in self.settings.score_properties if k in reference.errors and reference.errors[k] > 0]
        for t in self.trials:
            if t.status != "ok" or not keys:
                t.score = math.inf
                continue
            t.score = float(sum(t.errors.get(k, math.inf) / reference.errors[k] for k in keys) / len(keys))

    # -- search --------------------------------------------------------------------------
    def limits(self) -> DesignLimits:
        """The search limits, with the 'well conditioned' level taken from the start model if unset."""
        limits = self.settings.limits
        if limits.sloppy_ratio_ok is None:
            start = next((t for t in self.trials if t.status == "ok" and t.fisher.get("sloppy_ratio") is not None), None)
            level = start.fisher["sloppy_ratio"] + limits.sloppy_ratio_margin if start is not None else 0.5
            limits = replace(limits, sloppy_ratio_ok=level)
        return limits

    def moves_of(self, trial: Trial) -> list[Move]:
        if trial.id not in self._moves:
            self._moves[trial.id] = propose_moves(trial.spec, self.reports.get(trial.id), self.blocks, self.new_name,
                                                  self.limits())
        return self._moves[trial.id]

    def parameter_count(self, spec: dict) -> int:
        """Trainable parameters of the model ``spec`` describes (built once per distinct model, untrained)."""
        key = canonical_key(spec)
        if key not in self._sizes:
            self._sizes[key] = int(build_potential(self.model_config(spec)).parameter_counts()["total"])
        return self._sizes[key]

    def allowed(self, spec: dict) -> bool:
        """Within the limits: at most ``max_terms`` terms and ``max_params`` parameters."""
        limits = self.settings.limits
        if len(list(iter_terms(spec))) > limits.max_terms:
            return False
        return limits.max_params is None or self.parameter_count(spec) <= limits.max_params

    def next_move(self) -> tuple[Trial, Move] | None:
        for parent in sorted((t for t in self.trials if t.status == "ok"), key=lambda t: (t.score, t.n_params)):
            for move in self.moves_of(parent):
                if canonical_key(move.spec) not in self._tried and self.allowed(move.spec):
                    return parent, move
        return None

    def run(self) -> list[Trial]:
        """Run the loop until the budget, the time limit or the moves run out."""
        start = time.perf_counter()
        first = self.evaluate(self.start_spec())
        self._log_trial(first)
        if self.settings.limits.max_params is not None and first.n_params > self.settings.limits.max_params:
            self.log(f"the start model has {first.n_params} parameters, more than max_params={self.settings.limits.max_params}: "
                     "only candidates within the limit are tried after it")
        while len(self.trials) < self.settings.budget:
            if self.settings.max_minutes is not None and time.perf_counter() - start > 60 * self.settings.max_minutes:
                self.log(f"time limit of {self.settings.max_minutes} min reached")
                break
            choice = self.next_move()
            if choice is None:
                self.log("no untried moves left")
                break
            parent, move = choice
            trial = self.evaluate(move.spec, parent.id, move.label, move.reason)
            self._log_trial(trial)
        if self.settings.final_epochs and any(t.status == "ok" for t in self.trials):
            pick = self.best()
            refit = self.evaluate(pick.spec, pick.id, f"refit {pick.id} ({self.settings.final_epochs} epochs)",
                                  "the pick of the search, trained longer",
                                  replace(self.settings.train, epochs=self.settings.final_epochs))
            self._log_trial(refit)
        return self.trials

    def _log_trial(self, t: Trial) -> None:
        if t.status != "ok":
            self.log(f"[{t.id}] {t.move}: {t.description} -> {t.status}")
            return
        e = t.errors
        f = t.fisher
        test = (f" | test MAE E {1000 * t.test_errors['energy_mae']:.1f}, F {1000 * t.test_errors['forces_mae']:.0f}"
                if "forces_mae" in t.test_errors and "energy_mae" in t.test_errors else "")
        self.log(f"[{t.id}] {t.move}: {t.description} | {t.n_params} params | E {1000 * e.get('energy_rmse', math.nan):.1f} meV/atom, "
                 f"F {1000 * e.get('forces_rmse', math.nan):.0f} meV/Å{test} | score {t.score:.3f} | "
                 f"sloppy {f.get('n_sloppy')}/{t.n_params}, cond {f.get('condition_number') or math.nan:.2e} | {t.seconds:.0f} s")

    # -- results -------------------------------------------------------------------------
    def pareto_front(self) -> list[Trial]:
        """Candidates no other candidate beats on both parameter count and score."""
        ok = [t for t in self.trials if t.status == "ok" and math.isfinite(t.score)]
        return [t for t in ok if not any(
            (o.n_params <= t.n_params and o.score <= t.score) and (o.n_params < t.n_params or o.score < t.score) for o in ok)]

    def best(self) -> Trial:
        ok = [t for t in self.trials if t.status == "ok" and math.isfinite(t.score)]
        if not ok:
            raise DesignError("no candidate trained successfully (see the log of each trial; a lower --lr may help)")
        lowest = min(t.score for t in ok)
        window = [t for t in ok if t.score <= lowest * (1 + self.settings.tolerance)]
        return min(window, key=lambda t: (t.n_params, t.score))

    def summary(self) -> dict:
        best = self.best()
        return {
            "best": asdict(best), "pareto": [t.id for t in self.pareto_front()],
            "trials": [asdict(t) for t in self.trials],
            "settings": {"budget": self.settings.budget, "train": asdict(self.settings.train),
                         "probe_size": self.settings.probe_size,
                         "probe_selection": self.settings.probe_selection, "fisher_weights": self.settings.fisher_weights,
                         "sloppy_threshold": self.settings.sloppy_threshold, "eos_reference": self.settings.eos_reference,
                         "score_properties": list(self.settings.score_properties), "tolerance": self.settings.tolerance,
                         "blocks": list(self.blocks), "limits": asdict(self.settings.limits)},
            "elements": self.elements, "cutoff": self.cutoff,
        }
