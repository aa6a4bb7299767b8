"""Read and write GPUMD ``nep.txt`` model files (NEP3 and NEP4, with or without ZBL; qNEP charge
models; TNEP dipole / polarizability models, whose polarizability files carry a second network
after b1, laid out like the first, with its own bias).

Layout written by GPUMD (``Fitness::write_nep_txt``)::

    nep4[_zbl] N_typ sym_1 ... sym_N
    [zbl r_in r_out [typewise_factor]]        ("zbl 0 0": a flexible table follows q_scaler)
    cutoff rc_R rc_A [rc_R,2 rc_A,2 ...] MN_R MN_A
    n_max n_R n_A
    basis_size K_R K_A
    l_max L_3b 0|2 0|1 [q112 [q123 [q233 [q134]]]]   (higher-body channel flags)
    ANN N_neu 0
    NEP4: per type w0[N_neu x N_des] (row = neuron), b0[N_neu], w1[N_neu]; NEP3: one network
          (qNEP, header nep4[_zbl]_charge<mode>: per type also w1_charge[N_neu] after w1, and
          sqrt_epsilon_infinity before b1)
    b1
    c_radial[(n (K_R+1) + k) N_typ^2 + t_i N_typ + t_j], then c_angular alike
    q_scaler[N_des]
    [10 values per unordered type pair: flexible ZBL]

Our models number elements by increasing atomic number; the file's type order is mapped on
read, and files are written in the model's order. A ``Potential``'s E0 and energy scale have
no place in a NEP4 file; :func:`write_nep` folds them in exactly (the scale into w1 and b1,
a common E0 into b1 and per-element differences into one extra hidden neuron that outputs a
constant: w0 = 0, b0 = -20, so tanh(20) = 1 in both float64 and float32).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mlip_plugins.atomic_files import atomic_write_text
from mlip_plugins.dtypes import default_dtype
from mlip_plugins.nep.descriptor import l_max_entries, parse_l_max
from mlip_plugins.errors import MLIPError


class NEPFormatError(MLIPError, ValueError):
    """A malformed or unsupported nep.txt (the message names the file and the line), or a model
    that cannot be written as one."""


@dataclass
class NEPFile:
    """The content of a nep.txt, in the file's type order."""

    version: int
    types: list[str]
    cutoff_radial: float
    cutoff_angular: float
    n_max: tuple[int, int]
    basis_size: tuple[int, int]
    l_max: tuple[int, ...]  # GPUMD's l_max line: L, then the higher-body flags (see parse_l_max)
    neuron: int
    w0: np.ndarray  # [networks, neuron, dim]
    b0: np.ndarray  # [networks, neuron]
    w1: np.ndarray  # [networks, neuron]
    b1: float
    c_radial: np.ndarray  # [T, T, n_R+1, K_R+1] (centre, neighbour)
    c_angular: np.ndarray  # [T, T, n_A+1, K_A+1]
    q_scaler: np.ndarray  # [dim]
    typewise_cutoffs: list[list[float]] | None = None
    max_neighbors: tuple[int, int] | None = None
    zbl: dict | None = None  # {inner, outer[, typewise_factor]} or {flexible: rows}
    charge_mode: int = 0  # qNEP: GPUMD's charge mode (1 | 2), 0 for a plain NEP
    w1_charge: np.ndarray | None = None  # qNEP: [networks, neuron] charge output weights
    sqrt_epsilon_inf: float | None = None  # qNEP: the BEC scale
    model_type: int = 0  # GPUMD's 0 potential, 1 dipole (nep4_dipole), 2 polarizability (nep4_polarizability)
    iso: tuple | None = None  # polarizability: the isotropic network (w0, b0, w1, b1), laid out like the first
    extra: dict = field(default_factory=dict)
    l_max_convention: str = "gpumd"  # what the l_max flags mean (descriptor.L_MAX_CONVENTIONS)

    @property
    def dim(self) -> int:
        l3, channels = parse_l_max(self.l_max, self.l_max_convention)
        return (self.n_max[0] + 1) + (self.n_max[1] + 1) * (l3 + len(channels))


def _fail(path, line: int | None, message: str):
    where = f"{path}" if line is None else f"{path}: line {line}"
    raise NEPFormatError(f"{where}: {message}")


def read_nep(path: str | os.PathLike, l_max_convention: str = "gpumd") -> NEPFile:
    """Parse a nep.txt (NEP3 or NEP4 potential, optional ZBL) into a :class:`NEPFile`.

    ``l_max_convention`` says which GPUMD version's meaning of the ``l_max`` flags the file
    follows (a file cannot tell; see :data:`mlip_plugins.nep.descriptor.L_MAX_CONVENTIONS`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: nep.txt not found")
    lines = [(k + 1, line.split()) for k, line in enumerate(path.read_text().splitlines()) if line.strip()]
    if not lines:
        _fail(path, None, "file is empty")
    header_line, head = lines[0]
    token = head[0]
    if not token.startswith("nep"):
        _fail(path, header_line, f"expected a header like 'nep4 2 Te Pb', got {' '.join(head)!r}")
    parts = token.split("_")
    try:
        version = int(parts[0][3:])
    except ValueError:
        _fail(path, header_line, f"cannot read the NEP version from {token!r}")
    flags = parts[1:]
    from mlip_plugins.nep.tnep import MODEL_TYPES

    tensor_flags = {name: kind for kind, name in MODEL_TYPES.items() if kind}
    model_type = next((tensor_flags[f] for f in flags if f in tensor_flags), 0)
    flags = [f for f in flags if f not in tensor_flags]
    has_zbl = "zbl" in flags
    charge_mode = 0
    charge_flags = [f for f in flags if f.startswith("charge")]
    if len(charge_flags) == 1 and charge_flags[0] in ("charge1", "charge2"):
        charge_mode = int(charge_flags[0][-1])
        flags = [f for f in flags if f != charge_flags[0]]
    unsupported = [f for f in flags if f != "zbl"]
    if unsupported or len(charge_flags) > 1 or (charge_flags and not charge_mode):
        _fail(path, header_line, f"model kind {token!r} is not supported (potentials nep3, nep4 with or without _zbl, "
                                 "the charge models nep4[_zbl]_charge1 / _charge2, and nep3|4_dipole / _polarizability)")
    if model_type and (has_zbl or charge_mode):
        _fail(path, header_line, f"{token!r}: a dipole / polarizability model has no ZBL and no charges")
    if charge_mode and version != 4:
        _fail(path, header_line, f"{token!r}: charge models are NEP4 models (nep4_charge1 / nep4_charge2)")
    if version not in (3, 4):
        _fail(path, header_line, f"NEP version {version} is not supported (nep3 and nep4 are)")
    try:
        n_types = int(head[1])
    except (IndexError, ValueError):
        _fail(path, header_line, "expected the number of types after the version")
    types = head[2:]
    if len(types) != n_types:
        _fail(path, header_line, f"{n_types} types announced but {len(types)} symbols given")
    cursor = 1
    keywords: dict[str, tuple[int, list[str]]] = {}
    expected = (["zbl"] if has_zbl else []) + ["cutoff", "n_max", "basis_size", "l_max", "ANN"]
    for name in expected:
        if cursor >= len(lines):
            _fail(path, None, f"missing the {name!r} line")
        number, fields = lines[cursor]
        if fields[0] != name:
            _fail(path, number, f"expected the {name!r} line, got {' '.join(fields)!r}")
        keywords[name] = (number, fields[1:])
        cursor += 1

    def ints(name: str, count: int | None = None) -> list[int]:
        number, fields = keywords[name]
        try:
            values = [int(v) for v in fields]
        except ValueError:
            _fail(path, number, f"{name}: expected integers, got {' '.join(fields)!r}")
        if count is not None and len(values) < count:
            _fail(path, number, f"{name}: expected {count} values, got {len(values)}")
        return values

    number, fields = keywords["cutoff"]
    try:
        cut = [float(v) for v in fields]
    except ValueError:
        _fail(path, number, f"cutoff: expected numbers, got {' '.join(fields)!r}")
    typewise = None
    max_neighbors = None
    if len(cut) == 2:
        rc_r, rc_a = cut
    elif len(cut) == 4:
        rc_r, rc_a = cut[0], cut[1]
        max_neighbors = (int(cut[2]), int(cut[3]))
    elif len(cut) == 2 * n_types + 2 and n_types > 1:
        typewise = [[cut[2 * t], cut[2 * t + 1]] for t in range(n_types)]
        rc_r = max(r for r, _ in typewise)
        rc_a = max(a for _, a in typewise)
        max_neighbors = (int(cut[-2]), int(cut[-1]))
    else:
        _fail(path, number, f"cutoff: {len(cut)} values; expected 'rc_R rc_A MN_R MN_A' or per-type cutoffs "
                            "(typewise cutoff factors are not supported)")
    n_max = ints("n_max", 2)[:2]
    basis = ints("basis_size", 2)[:2]
    l_values = ints("l_max", 1)
    try:
        l_values = l_max_entries(*parse_l_max(l_values, l_max_convention), l_max_convention)
    except ValueError as exc:
        _fail(path, keywords["l_max"][0], str(exc))
    ann = ints("ANN", 1)
    if len(ann) > 1 and ann[1] != 0:
        _fail(path, keywords["ANN"][0], "two hidden layers are not supported")
    neuron = ann[0]

    zbl = None
    flexible = False
    if has_zbl:
        number, fields = keywords["zbl"]
        values = [float(v) for v in fields]
        if len(values) < 2:
            _fail(path, number, "zbl: expected 'zbl r_in r_out [factor]'")
        if values[0] == 0 and values[1] == 0:
            flexible = True
        else:
            zbl = {"inner": values[0], "outer": values[1]}
            if len(values) > 2:
                zbl["typewise_factor"] = values[2]

    try:
        numbers = np.array([float(fields[0]) for _, fields in lines[cursor:]], dtype=np.float64)
    except ValueError as exc:
        _fail(path, None, f"a parameter line is not a number ({exc})")
    for number, fields in lines[cursor:]:
        if len(fields) != 1:
            _fail(path, number, f"expected one value per line, got {' '.join(fields)!r}")

    content = NEPFile(
        version=version, types=list(types), cutoff_radial=float(rc_r), cutoff_angular=float(rc_a),
        n_max=(n_max[0], n_max[1]), basis_size=(basis[0], basis[1]), l_max=tuple(l_values), neuron=neuron,
        w0=np.zeros(0), b0=np.zeros(0), w1=np.zeros(0), b1=0.0, c_radial=np.zeros(0), c_angular=np.zeros(0),
        q_scaler=np.zeros(0), typewise_cutoffs=typewise, max_neighbors=max_neighbors, zbl=zbl,
        l_max_convention=l_max_convention,
        charge_mode=charge_mode, model_type=model_type,
    )
    dim = content.dim
    networks = n_types if version == 4 else 1
    t2 = n_types * n_types
    outputs = 2 if charge_mode else 1  # w1 (and w1_charge) per network
    n_ann = ((dim + 1 + outputs) * neuron * networks + 1) * (2 if model_type == 2 else 1) + (1 if charge_mode else 0)
    n_c_r = t2 * (n_max[0] + 1) * (basis[0] + 1)
    n_c_a = t2 * (n_max[1] + 1) * (basis[1] + 1)
    n_flex = 10 * n_types * (n_types + 1) // 2 if flexible else 0
    total = n_ann + n_c_r + n_c_a + dim + n_flex
    if numbers.size != total:
        _fail(path, None, f"expected {total} parameter values for this header, found {numbers.size}"
                          + (" (file truncated?)" if numbers.size < total else " (extra values?)"))
    offset = 0

    def read_networks(with_charge: bool) -> tuple[np.ndarray, ...]:
        """Per network w0 [neuron x dim], b0, w1 (and w1_charge), as GPUMD lays them out."""
        nonlocal offset
        blocks = [np.zeros((networks, neuron, dim)), np.zeros((networks, neuron)), np.zeros((networks, neuron))]
        blocks += [np.zeros((networks, neuron))] if with_charge else []
        for t in range(networks):
            for block in blocks:
                size = block[t].size
                block[t] = numbers[offset : offset + size].reshape(block[t].shape)
                offset += size
        return tuple(blocks)

    w0, b0, w1, *charge = read_networks(bool(charge_mode))
    if charge_mode:
        content.w1_charge = charge[0]
        content.sqrt_epsilon_inf = float(numbers[offset])
        offset += 1
    b1 = float(numbers[offset])
    offset += 1
    if model_type == 2:  # the isotropic network, laid out like the first
        content.iso = read_networks(False) + (float(numbers[offset]),)
        offset += 1

    def coefficients(count: int, n: int, k: int) -> np.ndarray:
        nonlocal offset
        block = numbers[offset : offset + count].reshape(n + 1, k + 1, n_types, n_types)
        offset += count
        return np.ascontiguousarray(block.transpose(2, 3, 0, 1))  # [t_i, t_j, n, k]

    c_radial = coefficients(n_c_r, n_max[0], basis[0])
    c_angular = coefficients(n_c_a, n_max[1], basis[1])
    q_scaler = numbers[offset : offset + dim].copy()
    offset += dim
    if flexible:
        zbl = {"flexible": numbers[offset:].reshape(-1, 10).tolist()}
    content.w0, content.b0, content.w1, content.b1 = w0, b0, w1, b1
    content.c_radial, content.c_angular, content.q_scaler, content.zbl = c_radial, c_angular, q_scaler, zbl
    return content


def _permute_flexible(rows: list, order: list[int], n_types: int) -> list:
    """Reorder a flexible-ZBL upper-triangle table from one type order to another.

    ``order[s]`` is the old index of new type s."""
    index = {}
    k = 0
    for a in range(n_types):
        for b in range(a, n_types):
            index[(a, b)] = index[(b, a)] = k
            k += 1
    return [rows[index[(order[a], order[b])]] for a in range(n_types) for b in range(a, n_types)]


def nep_model_config(content: NEPFile) -> dict:
    """The ``model`` config (elements by atomic number, cutoff, energy tree ``{model: {name: nep,
    ...}}``) of the architecture ``content`` describes."""
    from ase.data import atomic_numbers

    for symbol in content.types:
        if symbol not in atomic_numbers:
            raise NEPFormatError(f"unknown element {symbol!r} in the nep.txt header")
    if len(set(content.types)) != len(content.types):
        raise NEPFormatError(f"an element appears twice in the nep.txt header: {content.types}")
    order = _model_order(content)
    zbl = content.zbl
    if zbl is not None and "flexible" in zbl:
        zbl = {"flexible": _permute_flexible(zbl["flexible"], order, len(order))}
    cfg = {
        "name": "nep",
        "cutoff": [content.cutoff_radial, content.cutoff_angular],
        "n_max": list(content.n_max),
        "basis_size": list(content.basis_size),
        "l_max": list(content.l_max),
        "l_max_convention": content.l_max_convention,
        "neuron": content.neuron,
        "version": content.version,
        "zbl": zbl,
        "typewise_cutoffs": None if content.typewise_cutoffs is None else [content.typewise_cutoffs[t] for t in order],
    }
    if content.charge_mode:
        cfg["charge_mode"] = content.charge_mode
    if content.model_type:
        cfg["model_type"] = content.model_type
    zbl_outer = 0.0
    if zbl is not None:
        zbl_outer = max(row[1] for row in zbl["flexible"]) if "flexible" in zbl else zbl["outer"]
    cutoff = max(content.cutoff_radial, zbl_outer)
    return {"elements": [content.types[t] for t in order], "cutoff": cutoff, "energy": {"model": cfg}}


def _model_order(content: NEPFile) -> list[int]:
    """order[s] = file index of model species s (our models number elements by atomic number)."""
    from ase.data import atomic_numbers

    return sorted(range(len(content.types)), key=lambda t: atomic_numbers[content.types[t]])


def nep_to_potential(content: NEPFile, dtype: torch.dtype = torch.float64):
    """Build a ``Potential`` (E0 = 0, scale 1) that evaluates exactly what ``content`` describes."""
    from mlip_plugins.models.builder import build_potential

    model_cfg = nep_model_config(content)
    order = _model_order(content)
    with default_dtype(dtype):
        potential = build_potential(model_cfg)
    model = potential.energy_model
    perm = torch.tensor(order)
    with torch.no_grad():
        as_tensor = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype)  # noqa: E731
        net = perm if content.version == 4 else torch.tensor([0])
        model.w0.copy_(as_tensor(content.w0)[net])
        model.b0.copy_(as_tensor(content.b0)[net])
        model.w1.copy_(as_tensor(content.w1)[net])
        model.b1.fill_(content.b1)
        if content.charge_mode:
            model.w1_charge.copy_(as_tensor(content.w1_charge)[net])
            model.sqrt_epsilon_inf.fill_(content.sqrt_epsilon_inf)
        if content.model_type == 2:
            iso_w0, iso_b0, iso_w1, iso_b1 = content.iso
            model.w0_iso.copy_(as_tensor(iso_w0)[net])
            model.b0_iso.copy_(as_tensor(iso_b0)[net])
            model.w1_iso.copy_(as_tensor(iso_w1)[net])
            model.b1_iso.fill_(iso_b1)
        model.descriptor.c_radial.copy_(as_tensor(content.c_radial)[perm][:, perm])
        model.descriptor.c_angular.copy_(as_tensor(content.c_angular)[perm][:, perm])
        model.q_scaler.copy_(as_tensor(content.q_scaler))
        model.scaler_fitted.fill_(True)
        if content.max_neighbors is not None:
            model.max_neighbors.copy_(torch.tensor(content.max_neighbors))
    return potential


def load_nep_potential(path: str | os.PathLike, dtype: torch.dtype = torch.float64, l_max_convention: str = "gpumd"):
    """A ``Potential`` from a GPUMD nep.txt (NEP3/NEP4, optional ZBL), ready for ``MLIPCalculator``
    (``l_max_convention``: see :func:`read_nep`)."""
    return nep_to_potential(read_nep(path, l_max_convention), dtype=dtype)


# -- writing ------------------------------------------------------------------------------------
def _nep_model_of(potential):
    from mlip_plugins.nep.model import NEPModel

    model = getattr(potential, "energy_model", None)
    if not isinstance(model, NEPModel):
        kind = type(model).__name__ if model is not None else type(potential).__name__
        raise NEPFormatError(
            f"only a Potential whose energy model is a single NEP model ({{model: {{name: nep}}}}) can be written "
            f"as nep.txt; this one is a {kind}"
        )
    return model


def _estimate_max_neighbors(cutoff: float, density: float = 0.1) -> int:
    """A generous neighbour count for a cutoff: 1.5 x atoms in the sphere at ``density`` atoms/Å^3."""
    return int(math.ceil(1.5 * density * 4.0 / 3.0 * math.pi * cutoff**3)) + 10


def potential_to_nep(potential) -> NEPFile:
    """The :class:`NEPFile` of a ``Potential`` with a NEP energy model (or an energy tree that is
    one, :mod:`mlip_plugins.nep.tree_export`), E0 and scale folded in."""
    from ase.data import chemical_symbols

    from mlip_plugins.nep.tree_export import nep_equivalent

    potential = nep_equivalent(potential)
    model = _nep_model_of(potential)
    desc = model.descriptor
    to_np = lambda t: t.detach().to("cpu", torch.float64).numpy().copy()  # noqa: E731
    # a dipole / polarizability model's outputs are not energies: no energy scale, no E0
    scale = float(potential.energy_scale) if not model.model_type else 1.0
    e0 = to_np(potential.e0) if not model.model_type else np.zeros(len(potential.atomic_numbers))
    w0, b0, w1 = to_np(model.w0), to_np(model.b0), to_np(model.w1) * scale
    w1_charge = to_np(model.w1_charge) if model.charge_mode else None
    b1 = float(model.b1.detach()) * scale
    if np.allclose(e0, e0[0], rtol=0.0, atol=0.0):
        b1 -= float(e0[0])
    else:
        if model.version != 4:
            raise NEPFormatError("a NEP3 model has one network for all elements and cannot carry per-element E0; "
                             "train with e0 equal for all elements or use version 4")
        reference = float(e0.mean())
        b1 -= reference
        networks, neuron, dim = w0.shape
        w0 = np.concatenate([w0, np.zeros((networks, 1, dim))], axis=1)
        b0 = np.concatenate([b0, np.full((networks, 1), -20.0)], axis=1)
        w1 = np.concatenate([w1, (e0 - reference).reshape(networks, 1)], axis=1)
        if w1_charge is not None:  # the constant neuron carries no charge
            w1_charge = np.concatenate([w1_charge, np.zeros((networks, 1))], axis=1)
    symbols = [chemical_symbols[z] for z in potential.atomic_numbers]
    max_nb = tuple(int(v) for v in model.max_neighbors.tolist())
    if min(max_nb) <= 0:
        max_nb = (_estimate_max_neighbors(desc.rc_radial), _estimate_max_neighbors(desc.rc_angular))
    return NEPFile(
        version=model.version, types=symbols, cutoff_radial=desc.rc_radial, cutoff_angular=desc.rc_angular,
        n_max=(desc.n_max_radial, desc.n_max_angular), basis_size=(desc.basis_size_radial, desc.basis_size_angular),
        l_max=tuple(l_max_entries(desc.l_max, desc.channels, desc.l_max_convention)), neuron=w0.shape[1],
        w0=w0, b0=b0, w1=w1, b1=b1, c_radial=to_np(desc.c_radial), c_angular=to_np(desc.c_angular),
        q_scaler=to_np(model.q_scaler), typewise_cutoffs=desc.typewise_cutoffs, max_neighbors=max_nb,
        zbl=model.zbl.config() if model.zbl is not None else None, l_max_convention=desc.l_max_convention,
        charge_mode=model.charge_mode, w1_charge=w1_charge,
        sqrt_epsilon_inf=float(model.sqrt_epsilon_inf.detach()) if model.charge_mode else None,
        model_type=model.model_type,
        iso=(to_np(model.w0_iso), to_np(model.b0_iso), to_np(model.w1_iso), float(model.b1_iso.detach()))
        if model.model_type == 2 else None,
    )


def _fmt(value: float) -> str:
    # 17 significant digits: a float64 survives the round trip exactly
    return f"{float(value): .16e}"


def _header_number(value: float) -> str:
    return f"{float(value):.10g}"


def format_nep(content: NEPFile) -> str:
    """The text of a nep.txt for ``content``."""
    n_types = len(content.types)
    kind = f"nep{content.version}" + ("_zbl" if content.zbl is not None else "")
    if content.charge_mode:
        kind += f"_charge{content.charge_mode}"
    if content.model_type:
        from mlip_plugins.nep.tnep import MODEL_TYPES

        kind += f"_{MODEL_TYPES[content.model_type]}"
    out = [f"{kind} {n_types} {' '.join(content.types)}"]
    zbl = content.zbl
    if zbl is not None:
        if "flexible" in zbl:
            out.append("zbl 0 0")
        else:
            values = [zbl["inner"], zbl["outer"]] + ([zbl["typewise_factor"]] if zbl.get("typewise_factor") is not None else [])
            out.append("zbl " + " ".join(_header_number(v) for v in values))
    mn = content.max_neighbors or (_estimate_max_neighbors(content.cutoff_radial), _estimate_max_neighbors(content.cutoff_angular))
    if content.typewise_cutoffs is not None:
        cut = " ".join(f"{_header_number(r)} {_header_number(a)}" for r, a in content.typewise_cutoffs)
    else:
        cut = f"{_header_number(content.cutoff_radial)} {_header_number(content.cutoff_angular)}"
    out.append(f"cutoff {cut} {int(mn[0])} {int(mn[1])}")
    out.append(f"n_max {content.n_max[0]} {content.n_max[1]}")
    out.append(f"basis_size {content.basis_size[0]} {content.basis_size[1]}")
    out.append("l_max " + " ".join(str(int(v)) for v in content.l_max))
    out.append(f"ANN {content.neuron} 0")
    values: list[float] = []
    for t in range(content.w0.shape[0]):
        values.extend(np.asarray(content.w0[t]).reshape(-1))
        values.extend(np.asarray(content.b0[t]).reshape(-1))
        values.extend(np.asarray(content.w1[t]).reshape(-1))
        if content.charge_mode:
            values.extend(np.asarray(content.w1_charge[t]).reshape(-1))
    if content.charge_mode:
        values.append(content.sqrt_epsilon_inf)
    values.append(content.b1)
    if content.model_type == 2:
        iso_w0, iso_b0, iso_w1, iso_b1 = content.iso
        for t in range(np.asarray(iso_w0).shape[0]):
            values.extend(np.asarray(iso_w0[t]).reshape(-1))
            values.extend(np.asarray(iso_b0[t]).reshape(-1))
            values.extend(np.asarray(iso_w1[t]).reshape(-1))
        values.append(iso_b1)
    for c in (content.c_radial, content.c_angular):
        values.extend(np.asarray(c).transpose(2, 3, 0, 1).reshape(-1))  # (n, k, t_i, t_j)
    values.extend(np.asarray(content.q_scaler).reshape(-1))
    if zbl is not None and "flexible" in zbl:
        values.extend(np.asarray(zbl["flexible"], dtype=np.float64).reshape(-1))
    out.extend(_fmt(v) for v in values)
    return "\n".join(out) + "\n"


def write_nep(potential, path: str | os.PathLike) -> Path:
    """Write ``potential`` (energy model ``nep``) as a GPUMD nep.txt; returns the path.

    The file is written to a temporary name and renamed (:mod:`mlip_plugins.atomic_files`), so a
    failure leaves neither a partial file nor its temporary.
    """
    return atomic_write_text(format_nep(potential_to_nep(potential)), path)
