"""Weighted, label-masked losses and the per-target errors that metrics accumulate."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from ase.data import chemical_symbols

from mlip_plugins import keys
from mlip_plugins.elements import to_atomic_numbers
from mlip_plugins.errors import MLIPError
from mlip_plugins.keys import TARGETS
from mlip_plugins.models.builder import ConfigError
from mlip_plugins.targets import Residual, residuals, weighted_mean

LOSS_KINDS = ("mse", "huber")
#: the per-atom targets whose entries ``loss.element_weights`` may weigh by element
PER_ATOM_TARGETS = (keys.FORCES, keys.CHARGES, keys.BEC)


@dataclass
class LossWeights:
    """Weights of the loss terms and the pointwise loss (``mse`` or ``huber``).

    ``normalize="variance"`` divides each term by the training set's variance of that label
    (``PotentialModule.loss_scales``, from ``mlip_plugins.data.statistics.label_variances``),
    so the weights compare dimensionless terms: energy per atom and force components weigh
    by how well each is fitted relative to its spread, not by their units. ``"none"`` keeps
    the raw per-atom MSE in eV², eV²/Å², ... (the recipe before issue 17).
    """

    energy: float = 1.0
    forces: float = 10.0
    stress: float = 0.0
    charges: float = 0.0
    #: Born effective charges (labels ``bec``, models that predict them: qNEP)
    bec: float = 0.0
    #: the structure's dipole per atom (a TNEP's, or sum q r of a charge model's; labels ``dipole``) and
    #: a TNEP's polarizability per atom (labels ``pol``)
    dipole: float = 0.0
    polarizability: float = 0.0
    kind: str = "mse"
    huber_delta: float = 0.01
    normalize: str = "none"
    #: staged weighting (as MACE's final stage): from ``final.start`` (fraction of training:
    #: steps or wall budget, whichever is further) the training loss uses ``final``'s weights,
    #: e.g. ``{start: 0.7, energy: 10.0}``; validation keeps the first-stage weights, so that
    #: ``val/loss`` (checkpoint monitor) means the same thing throughout
    final: dict | None = None
    #: a first stage until ``initial.end`` (fraction of training, as ``final.start``), e.g. the
    #: charge-first stage of the 4G-HDNNP, ``{end: 0.2, energy: 0.0, forces: 0.0, freeze: charges}``:
    #: the charges are fitted to their labels first; with ``freeze: charges`` the charge models
    #: are then held fixed (the 4G-HDNNP's short-range network learns E - E_elec of fixed charges)
    initial: dict | None = None
    #: per-atom targets weighted by element, e.g. ``{charges: {Au: 25.0}}``: a minority element's
    #: entries count that many times in the term's mean (elements not named weigh 1). For a
    #: quantity carried by a few atoms, as the charge of an Au2 dimer on a 108-atom MgO slab,
    #: which the mean over all atoms otherwise barely sees
    element_weights: dict | None = None

    @property
    def freezes_charges(self) -> bool:
        """Whether the charge models are held fixed after ``loss.initial`` (``freeze: charges``)."""
        return bool(self.initial) and self.initial.get("freeze") == "charges"

    def final_stage(self) -> LossWeights:
        """The weights of the final stage (``self`` where there is none)."""
        return self._stage(self.final, "start")

    def initial_stage(self) -> LossWeights:
        """The weights of the first stage (``self`` where there is none)."""
        return self._stage(self.initial, "end")

    def _stage(self, stage: dict | None, boundary: str) -> LossWeights:
        if not stage:
            return self
        weights = {k: float(v) for k, v in stage.items() if k not in (boundary, "freeze")}
        return dataclasses.replace(self, final=None, initial=None, **weights)

    def __post_init__(self) -> None:
        if self.kind not in LOSS_KINDS:
            raise ConfigError(f"loss.kind: expected one of {', '.join(LOSS_KINDS)}, got {self.kind!r}")
        for name in (*TARGETS, "huber_delta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
                raise ConfigError(f"loss.{name}: expected a finite number >= 0, got {value!r}")
        if self.normalize not in ("none", "variance"):
            raise ConfigError(f"loss.normalize: expected none or variance, got {self.normalize!r}")
        for name, boundary in (("final", "start"), ("initial", "end")):
            stage = getattr(self, name)
            if stage:
                unknown = set(stage) - {boundary, *TARGETS, *(("freeze",) if name == "initial" else ())}
                if unknown or not 0.0 <= float(stage.get(boundary, -1)) <= 1.0:
                    raise ConfigError(f"loss.{name}: expected {{{boundary}: 0..1, <target>: weight}} with targets from "
                                      f"{', '.join(TARGETS)}, got {stage!r}")
        if self.initial and self.initial.get("freeze") not in (None, "charges"):
            raise ConfigError(f"loss.initial.freeze: expected charges or null, got {self.initial['freeze']!r}")
        self._element_factors = self._parse_element_weights()
        if self.final and self.initial and float(self.initial["end"]) > float(self.final["start"]):
            raise ConfigError(f"loss.initial ends at {self.initial['end']}, after loss.final starts ({self.final['start']})")

    def _parse_element_weights(self) -> dict[str, torch.Tensor]:
        """``element_weights`` checked, as a factor per atomic number for each target (a table
        indexed by Z; 1 for the elements not named)."""
        parsed: dict[str, torch.Tensor] = {}
        for target, table in (self.element_weights or {}).items():
            if target not in PER_ATOM_TARGETS or not isinstance(table, dict):
                raise ConfigError(f"loss.element_weights: expected {{<target>: {{<element>: weight}}}} with targets from "
                                  f"{', '.join(PER_ATOM_TARGETS)}, got {self.element_weights!r}")
            parsed[target] = torch.ones(len(chemical_symbols), dtype=torch.float64)
            for element, weight in table.items():
                try:
                    (number,) = to_atomic_numbers([element])
                except (MLIPError, ValueError):
                    raise ConfigError(f"loss.element_weights.{target}: unknown element {element!r}") from None
                if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < float("inf"):
                    raise ConfigError(f"loss.element_weights.{target}.{element}: expected a finite number >= 0, got {weight!r}")
                parsed[target][number] = float(weight)
        return parsed

    def weigh_elements(self, errs: dict, atomic_numbers: torch.Tensor) -> dict:
        """``errs`` with the loss weights of per-atom targets scaled by ``element_weights``."""
        weighted = dict(errs)
        for target, factors in self._element_factors.items():
            if target in errs:
                diff, w = errs[target]
                factor = factors.to(device=w.device, dtype=w.dtype)[atomic_numbers]
                weighted[target] = (diff, w * factor.view(-1, *([1] * (w.dim() - 1))))
        return weighted


def _pointwise(diff: torch.Tensor, kind: str, delta: float) -> torch.Tensor:
    if kind == "mse":
        return diff.pow(2)
    if kind == "huber":
        return torch.nn.functional.huber_loss(diff, torch.zeros_like(diff), reduction="none", delta=delta)
    raise ConfigError(f"loss.kind must be 'mse' or 'huber', got {kind!r}")


def errors(batch, out: dict, weights: LossWeights | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(prediction - label, per-entry loss weight) for every target, from
    :func:`mlip_plugins.targets.residuals` (energies per atom; unlabelled entries weigh zero);
    with ``weights``, per-atom entries are weighted by its ``element_weights``."""
    return errors_from(residuals(batch, out), batch, weights)


def errors_from(targets: dict[str, Residual], batch=None,
                weights: LossWeights | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(prediction - label, loss weight) of each target's :class:`~mlip_plugins.targets.Residual`;
    with ``weights`` (and the ``batch`` for its atoms' elements), weighted by element."""
    errs = {key: (r.error, r.weight) for key, r in targets.items()}
    if weights is not None and batch is not None:
        errs = weights.weigh_elements(errs, getattr(batch, keys.ATOMIC_NUMBERS))
    return errs


def total_loss(errs: dict, weights: LossWeights, denominators: dict | None = None,
               scales: dict | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sum of weighted mean pointwise losses; also returns each term for logging.

    ``scales`` (per target, used when ``weights.normalize == "variance"``) divide each term:
    the training set's label variances, the one place where the terms are made dimensionless.

    ``denominators`` (per target) replace the local weight totals of the means: under DDP,
    the global total divided by the number of processes, so that the gradient average over
    processes equals the gradient of the mean over the global batch (see
    ``PotentialModule.training_step``).
    """
    parts = {}
    loss = None
    for key, (diff, w) in errs.items():
        coefficient = getattr(weights, key, 0.0)
        if coefficient == 0.0:
            continue
        total = None if denominators is None else denominators[key]
        term = weighted_mean(_pointwise(diff, weights.kind, weights.huber_delta), w.to(diff.dtype), total)
        if weights.normalize == "variance" and scales is not None:
            term = term / scales[key].to(term.dtype)
        parts[key] = term.detach()
        loss = coefficient * term if loss is None else loss + coefficient * term
    if loss is None:
        raise ConfigError("loss: every loss weight is zero, nothing to train on")
    return loss, parts
