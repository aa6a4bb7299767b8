"""Gate computation shared by all routers: softmax, top-k selection, load-balancing loss.

Convention (DeepSeekMoE / Switch style): ``probs = softmax(logits / T)``; with top-k the
``k`` largest probabilities are kept and renormalised to sum to one, the others are zero.
Without top-k the gates are the probabilities themselves (dense soft gating).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class RouterOutput(NamedTuple):
    """Gates [N, E] (sparse with top-k, rows sum to one) and router probabilities [N, E]."""

    gates: torch.Tensor
    probs: torch.Tensor


def effective_top_k(top_k: int | None, num_experts: int) -> int | None:
    """``top_k`` validated; ``None`` when every expert is active (dense gating)."""
    if top_k is None:
        return None
    top_k = int(top_k)
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None (dense gating), got {top_k}")
    return None if top_k >= num_experts else top_k


def select_top_k(logits: torch.Tensor, top_k: int | None, temperature: float = 1.0, renormalize: bool = True) -> RouterOutput:
    """Gates from router logits [..., E].

    Args:
        logits: router scores, any leading shape.
        top_k: number of active experts, or ``None`` for dense soft gating.
        temperature: softmax temperature (lower is sharper).
        renormalize: rescale the kept top-k probabilities to sum to one.
    """
    probs = torch.softmax(logits / temperature, dim=-1)
    k = effective_top_k(top_k, logits.shape[-1])
    if k is None:
        return RouterOutput(probs, probs)
    values, indices = probs.topk(k, dim=-1)
    if renormalize:
        values = values / values.sum(-1, keepdim=True)
    gates = torch.zeros_like(probs).scatter(-1, indices, values)
    return RouterOutput(gates, probs)


def load_balancing_loss(gates: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Switch-Transformer balance loss ``E * sum_e f_e P_e`` (1 at perfect balance).

    ``f_e`` is the fraction of (atom, slot) assignments that go to expert ``e`` (not
    differentiable) and ``P_e`` the mean router probability. For dense gating (every gate
    non-zero) ``f_e`` would be uniform and carry no signal, so ``f_e = P_e`` is used instead,
    giving ``E * sum_e P_e^2``, minimal for uniform mean usage.
    """
    num_experts = probs.shape[-1]
    if probs.shape[0] == 0:
        return probs.sum() * 0.0
    mean_probs = probs.mean(0)
    selected = (gates > 0).to(probs.dtype)
    if bool(selected.all()):
        fraction = mean_probs
    else:
        fraction = (selected.sum(0) / selected.sum()).detach()
    return num_experts * (fraction * mean_probs).sum()
