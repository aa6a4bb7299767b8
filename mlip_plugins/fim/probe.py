"""Choosing the probe set of a Fisher analysis.

Per-element-pair parameters (NEP-style radial coefficients c[s_i, s_j, ...]) receive
information only from structures that contain the pair, so a probe set that misses a pair
reports that pair's parameters as unconstrained (sloppy) although the training data
constrains them. ``diverse`` selection picks structures greedily to cover every ordered
element pair (and every element) seen in the candidates, then fills up in order.
"""

from __future__ import annotations

from collections.abc import Sequence


def _pairs(graph) -> set[tuple[int, int]]:
    z = graph.z
    src, dst = graph.edge_index[0], graph.edge_index[1]
    pairs = set(zip(z[dst].tolist(), z[src].tolist()))
    pairs.update((int(a), -1) for a in z.unique().tolist())
    return pairs


def select_probe(graphs: Sequence, size: int, strategy: str = "first") -> list:
    """``size`` structures of ``graphs``: the first ones, or a ``diverse`` pair-covering subset
    (kept in their original order)."""
    if strategy == "first" or size >= len(graphs):
        return list(graphs[:size])
    if strategy != "diverse":
        raise ValueError(f"probe selection must be 'first' or 'diverse', got {strategy!r}")
    covers = [_pairs(g) for g in graphs]
    chosen: list[int] = []
    covered: set = set()
    while len(chosen) < size:
        gains = [(len(c - covered), -k) for k, c in enumerate(covers) if k not in chosen]
        best_gain, neg_k = max(gains)
        if best_gain == 0:
            break
        chosen.append(-neg_k)
        covered |= covers[-neg_k]
    for k in range(len(graphs)):
        if len(chosen) >= size:
            break
        if k not in chosen:
            chosen.append(k)
    return [graphs[k] for k in sorted(chosen)]
