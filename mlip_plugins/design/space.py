"""The design space of the adaptive loop: building blocks, energy-tree edits, and move proposals.

A candidate model is an energy-tree spec (see :mod:`mlip_plugins.models.builder`): a term
``{descriptor, readout, name}`` or a ``{sum: [...]}`` / ``{product: [...]}`` of candidates.
A *term* is one building block (a descriptor plugin at some basis size) with a linear or a
nonlinear (small per-element MLP) readout, as the single-term models of the composable-MLIP
paper. The moves are the paper's reconfigurations:

* ``add``       E → E + T              (a new single-term model T)
* ``multiply``  E → E × T
* ``swap``      a term's readout linear ↔ nonlinear
* ``resize``    a term's basis size up or down
* ``remove``    drop a term (proposed when the FIM says its parameters are all sloppy)

:func:`propose_moves` ranks the moves from one evaluated candidate with its Fisher report:
terms whose parameter space is (almost) entirely sloppy are removed or shrunk first; while
the model is well conditioned and not accurate enough, growth (add, multiply, larger basis,
nonlinear readout) comes first.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from mlip_plugins.models.builder import ConfigError


@dataclass(frozen=True)
class Block:
    """A descriptor the loop may use, with the config key that sets its basis size.

    Attributes:
        descriptor: registry name of the descriptor plugin.
        config: its default config (without ``name``).
        size_key: the key that ``resize`` changes; ``linked`` keys follow it (same value).
        min_size, max_size: allowed range of ``size_key``.
        label: short name used in descriptions.
    """

    descriptor: str
    config: dict
    size_key: str
    min_size: int
    max_size: int
    linked: tuple[str, ...] = ()
    label: str = ""

    def term(self, size: int | None = None, nonlinear: bool = False, name: str = "t", hidden: int = 8) -> dict:
        cfg = {"name": self.descriptor, **copy.deepcopy(self.config)}
        if size is not None:
            cfg[self.size_key] = int(size)
            for key in self.linked:
                cfg[key] = int(size)
        return {"descriptor": cfg, "readout": readout_spec(nonlinear, hidden), "name": name}


#: built-in blocks; only those whose descriptor is registered are used (see ``available_blocks``)
DEFAULT_BLOCKS: dict[str, Block] = {
    "radial": Block("radial", {"n_max": 3, "basis_size": 3}, "n_max", 1, 10, linked=("basis_size",), label="2b"),
    "eam": Block("eam", {"n_densities": 2, "basis_size": 4}, "n_densities", 1, 6, label="eam"),
    "angular": Block("angular", {"n_max": 2, "basis_size": 3, "l_max": 2}, "n_max", 1, 6, linked=("basis_size",), label="3b"),
}


def readout_spec(nonlinear: bool, hidden: int = 8) -> dict:
    """The linear readout, or a one-hidden-layer per-element MLP (the nonlinear single term)."""
    return {"name": "mlp", "hidden": [int(hidden)]} if nonlinear else {"name": "linear"}


def available_blocks(names: Sequence[str] | None = None, cutoff: float | None = None) -> dict[str, Block]:
    """The blocks whose descriptor plugin is installed (optionally only ``names``).

    Angular blocks get a cutoff no larger than the model's (their default is 4 Å).
    """
    from mlip_plugins import registry

    installed = set(registry.available("descriptors"))
    chosen = {}
    for key, block in DEFAULT_BLOCKS.items():
        if (names is None or key in names) and block.descriptor in installed:
            if cutoff is not None and key == "angular":
                block = Block(block.descriptor, {**block.config, "cutoff": min(4.0, float(cutoff))}, block.size_key,
                              block.min_size, block.max_size, block.linked, block.label)
            chosen[key] = block
    unknown = [n for n in (names or []) if n not in DEFAULT_BLOCKS]
    if unknown:
        raise ConfigError(f"unknown design blocks {unknown}; known: {', '.join(DEFAULT_BLOCKS)}")
    if not chosen:
        raise ConfigError(f"none of the blocks {list(names or DEFAULT_BLOCKS)} has an installed descriptor ({sorted(installed)})")
    return chosen


# -- tree helpers --------------------------------------------------------------------------

def is_term(spec: dict) -> bool:
    return "descriptor" in spec


def iter_terms(spec: dict) -> Iterator[dict]:
    """Every term of a spec, depth first."""
    if is_term(spec):
        yield spec
        return
    for key in ("sum", "product"):
        for child in spec.get(key, []):
            yield from iter_terms(child)


def term_names(spec: dict) -> list[str]:
    return [t["name"] for t in iter_terms(spec)]


def _map_terms(spec: dict, fn) -> dict | None:
    """Copy of ``spec`` with every term replaced by ``fn(term)`` (None drops it; one child collapses)."""
    if is_term(spec):
        return fn(copy.deepcopy(spec))
    for key in ("sum", "product"):
        if key in spec:
            children = [c for c in (_map_terms(child, fn) for child in spec[key]) if c is not None]
            if not children:
                return None
            if len(children) == 1:
                return children[0]
            return {key: children}
    raise ConfigError(f"unsupported spec node {sorted(spec)}")


def replace_term(spec: dict, name: str, new: dict) -> dict:
    return _map_terms(spec, lambda t: copy.deepcopy(new) if t["name"] == name else t)


def remove_term(spec: dict, name: str) -> dict | None:
    return _map_terms(spec, lambda t: None if t["name"] == name else t)


def combine(spec: dict, term: dict, op: str) -> dict:
    """``spec + term`` (flattening into an existing top-level sum) or ``spec × term``."""
    if op not in ("sum", "product"):
        raise ValueError(op)
    if op in spec:
        return {op: [copy.deepcopy(c) for c in spec[op]] + [copy.deepcopy(term)]}
    return {op: [copy.deepcopy(spec), copy.deepcopy(term)]}


def _strip(spec: dict):
    if is_term(spec):
        return {"descriptor": spec["descriptor"], "readout": spec.get("readout")}
    key = "sum" if "sum" in spec else "product"
    children = sorted((json.dumps(_strip(c), sort_keys=True) for c in spec[key]))
    return {key: children}


def canonical_key(spec: dict) -> str:
    """Identical models (up to term names and the order of + and × operands) share a key."""
    return json.dumps(_strip(spec), sort_keys=True)


def block_of(term: dict, blocks: dict[str, Block]) -> tuple[str, Block] | None:
    name = term["descriptor"]["name"]
    for key, block in blocks.items():
        if block.descriptor == name:
            return key, block
    return None


def describe(spec: dict, blocks: dict[str, Block] | None = None) -> str:
    """Short human-readable form, e.g. ``(2b[3]·L + eam[2]·NL) × 3b[2]·L``."""
    blocks = blocks or DEFAULT_BLOCKS
    if is_term(spec):
        found = block_of(spec, blocks)
        if found:
            _, block = found
            label = f"{block.label}[{spec['descriptor'].get(block.size_key, block.config.get(block.size_key))}]"
        else:
            label = spec["descriptor"]["name"]
        kind = "NL" if spec.get("readout", {}).get("name") == "mlp" else "L"
        return f"{label}·{kind}"
    key = "sum" if "sum" in spec else "product"
    parts = []
    for child in spec[key]:
        text = describe(child, blocks)
        if key == "product" and "sum" in child:
            text = f"({text})"
        parts.append(text)
    return (" + " if key == "sum" else " × ").join(parts)


# -- moves ---------------------------------------------------------------------------------

@dataclass(order=True)
class Move:
    """A proposed reconfiguration; higher ``priority`` is tried first."""

    priority: float
    label: str = field(compare=False)
    spec: dict = field(compare=False)
    reason: str = field(default="", compare=False)


@dataclass
class DesignLimits:
    """Bounds and thresholds of the search.

    Attributes:
        max_terms: largest number of terms in a candidate.
        remove_threshold: a term is *all sloppy* (removal first) when its sloppy fraction
            (share of its own parameter space in the sloppy subspace) reaches this.
        shrink_margin: a term whose sloppy fraction exceeds the model's fraction of sloppy
            directions by this margin is sloppier than the rest: shrinking it, or making it
            linear, comes first.
        sloppy_ratio_ok: the model counts as well conditioned (growth first) while its
            fraction of sloppy directions stays below this; ``None`` lets the loop use the
            start model's fraction plus ``sloppy_ratio_margin`` (no sloppier than the start).
        hidden: hidden width of the nonlinear readout.
        max_params: largest number of trainable parameters of a candidate (None: no limit);
            larger moves are skipped before training.
    """

    max_terms: int = 3
    max_params: int | None = None
    remove_threshold: float = 0.99
    shrink_margin: float = 0.02
    sloppy_ratio_ok: float | None = None
    sloppy_ratio_margin: float = 0.01
    hidden: int = 8


def propose_moves(spec: dict, fisher: dict | None, blocks: dict[str, Block], new_name, limits: DesignLimits | None = None) -> list[Move]:
    """Moves from ``spec`` ranked with its Fisher report (``report.to_dict()``; None: unguided).

    Args:
        new_name: ``fn(block_key) -> str`` giving a fresh unique term name.
    """
    limits = limits or DesignLimits()
    terms = list(iter_terms(spec))
    per_term = {t["name"]: t for t in (fisher or {}).get("terms", [])}
    metrics = (fisher or {}).get("metrics", {})
    n_params = max(int((fisher or {}).get("n_params", 0)), 1)
    n_sloppy = metrics.get("n_sloppy")
    sloppy_ratio = (n_sloppy / n_params) if isinstance(n_sloppy, (int, float)) else None
    ok = limits.sloppy_ratio_ok if limits.sloppy_ratio_ok is not None else 0.5
    well_conditioned = sloppy_ratio is None or sloppy_ratio <= ok
    moves: list[Move] = []
    for term in terms:
        name = term["name"]
        attribution = per_term.get(name, {})
        fraction = attribution.get("sloppy_fraction")
        fraction = (sloppy_ratio if sloppy_ratio is not None else 0.5) if fraction is None else float(fraction)
        sloppier = sloppy_ratio is not None and fraction >= sloppy_ratio + limits.shrink_margin
        found = block_of(term, blocks)
        if len(terms) > 1:
            removed = remove_term(spec, name)
            if removed is not None:
                all_sloppy = fraction >= limits.remove_threshold
                moves.append(Move(3.0 if all_sloppy else (0.9 if sloppier else 0.2), f"remove {name}", removed,
                                  f"sloppy fraction {fraction:.3f}" + (" (all sloppy)" if all_sloppy else "")))
        nonlinear = term.get("readout", {}).get("name") == "mlp"
        swapped = copy.deepcopy(term)
        swapped["readout"] = readout_spec(not nonlinear, limits.hidden)
        if nonlinear:
            swap_priority = 1.8 if (sloppier or not well_conditioned) else 0.4
        else:
            swap_priority = 1.3 if well_conditioned else 0.7
        moves.append(Move(swap_priority, f"swap {name} to {'linear' if nonlinear else 'nonlinear'}",
                          replace_term(spec, name, swapped), f"sloppy fraction {fraction:.3f}"))
        if found:
            _, block = found
            size = int(term["descriptor"].get(block.size_key, block.config[block.size_key]))
            for step in (+1, -1):
                new_size = size + step
                if not block.min_size <= new_size <= block.max_size:
                    continue
                resized = copy.deepcopy(term)
                resized["descriptor"][block.size_key] = new_size
                for key in block.linked:
                    resized["descriptor"][key] = new_size
                if step < 0:
                    priority = 2.0 if sloppier else (1.5 if not well_conditioned else 0.3)
                else:
                    priority = 1.4 if (well_conditioned and not sloppier) else 0.5
                moves.append(Move(priority, f"resize {name} {block.size_key} {size}->{new_size}",
                                  replace_term(spec, name, resized), f"sloppy fraction {fraction:.3f}"))
    if sloppy_ratio is None:
        sloppy_ratio = 0.5
    if len(terms) < limits.max_terms:
        existing = {block_of(t, blocks)[0] for t in terms if block_of(t, blocks)}
        for key, block in blocks.items():
            novelty = 0.3 if key not in existing else 0.0
            for op, base in (("sum", 1.6), ("product", 1.1)):
                for nonlinear in (False, True):
                    term = block.term(nonlinear=nonlinear, name=new_name(key), hidden=limits.hidden)
                    priority = (base if well_conditioned else base - 0.8) + novelty - (0.2 if nonlinear else 0.0)
                    sign = "+" if op == "sum" else "×"
                    moves.append(Move(priority, f"{'add' if op == 'sum' else 'multiply'} {sign} {describe(term, blocks)}",
                                      combine(spec, term, op), f"sloppy ratio {sloppy_ratio:.2f}"))
    return sorted(moves, reverse=True)
