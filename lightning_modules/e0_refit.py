"""E0 refitted to the model's residual energies when a stage that did not train energies ends.

A charges-first stage (``loss.initial={end: 0.2, energy: 0.0, forces: 0.0}``, as the 4G-HDNNP
fits its charges before its energies) leaves the model with the electrostatic energy of the
fitted charges on top of E0, which was fitted to the labels alone: for ionic slabs (Au2 on MgO)
that is eV per atom. The energy term, switched on, would then pull the charges back towards zero
to cancel it rather than let the short-range part absorb it. The 4G-HDNNP trains its short-range
part on E_ref - E_elec; here, equivalently, the per-element references are shifted by the
least-squares fit (the composition matrix of :func:`mlip_plugins.data.statistics.fit_e0`) of
E_label - E_model over the training structures, in the raw model and its EMA copy.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from lightning_modules.datamodule import chunked_batches
from mlip_plugins.data.statistics import composition_matrix, e0_from_normal_equations

log = logging.getLogger(__name__)

#: atoms per forward pass of the residual evaluation (bounds its memory)
CHUNK_ATOMS = 20000


def residual_energies(model: torch.nn.Module, graphs, device) -> tuple[list, np.ndarray]:
    """(the energy-labelled graphs, their E_label - E_model in eV), the model evaluated without forces."""
    labelled = [k for k, g in enumerate(graphs) if bool(g.has_energy.item())]
    residuals = []
    with torch.no_grad():
        for batch in chunked_batches(graphs, labelled, CHUNK_ATOMS, device):
            predicted = model(batch, compute_forces=False)["energy"]
            residuals.append((batch.energy.view(-1) - predicted.view(-1).to(batch.energy.dtype)).cpu().numpy())
    return [graphs[k] for k in labelled], np.concatenate(residuals) if residuals else np.zeros(0)


def refit_e0(module, graphs) -> np.ndarray | None:
    """Shift E0 of ``module.model`` (and its EMA copy) by the least-squares fit of the residual
    energies of ``graphs``; returns the shift per element (None when nothing was fitted)."""
    model = module.model
    labelled, residual = residual_energies(model, graphs, module.device)
    if not len(labelled):
        return None
    elements = model.element_map.atomic_numbers
    counts = composition_matrix(labelled, elements)
    shift = e0_from_normal_equations(counts.T @ counts, counts.T @ residual)
    delta = torch.as_tensor(shift, dtype=model.e0.dtype, device=model.e0.device)
    with torch.no_grad():
        model.e0.add_(delta)
        if module.ema is not None:
            module.ema.module.e0.add_(delta)
    log.info("E0 refitted to the residual energies after the initial stage: shift %s eV",
             ", ".join(f"{s}: {d:+.4f}" for s, d in zip(model.element_map.symbols, shift)))
    return shift
