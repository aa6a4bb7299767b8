"""GPUMD's NEP model (NEP4, NEP3) as an ``energy_models`` plugin, named ``nep``.

Per-atom energy of atom i of type t (Fan et al. 2021; GPUMD ``nep.txt`` conventions):

    U_i = sum_mu w1[t, mu] tanh( sum_nu w0[t, mu, nu] s_nu q_nu(i) - b0[t, mu] ) - b1  (+ ZBL_i)

* q is the NEP descriptor (:mod:`mlip_plugins.nep.descriptor`), s the fixed per-component
  scaler ``q_scaler`` = 1 / (max - min) over the training atoms (a buffer, set once by
  :func:`fit_descriptor_scaler` before training and saved with the weights);
* NEP4 has one network per element and one shared output bias b1; NEP3 one network for all
  elements. Both biases enter with a minus sign, as in GPUMD;
* optional ZBL repulsion (the universal screening function, a cosine switch between an inner
  and an outer radius; typewise radii from covalent radii; or GPUMD's "flexible" per-pair
  table) is added per pair and split half-half between the two atoms.

Use it in the energy tree as ``{model: {name: nep, n_max: [4, 4], ...}}``; GPUMD files are read
and written by :mod:`mlip_plugins.nep.nep_txt`. NEP's L1/L2 regularisation
``lambda_1 mean|z| + lambda_2 sqrt(mean z^2)`` over the trainable parameters z is returned by
:meth:`NEPModel.regularization_loss` (which the trainer adds to the loss) and by
:func:`nep_regularization`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from mlip_plugins.nep.descriptor import NEPDescriptor
from mlip_plugins.graph import AtomicGraph
from mlip_plugins.nn import cosine_switch, per_element, sum_per_atom
from mlip_plugins.units import GPUMD_COULOMB_CONSTANT

#: the universal ZBL screening function: phi(x) = sum_k a_k exp(-b_k x)
ZBL_UNIVERSAL = ((0.18175, 3.1998), (0.50986, 0.94229), (0.28022, 0.4029), (0.02817, 0.20162))
#: 1 / 0.46848 Å: screening length a = 0.46848 / (Z_i^0.23 + Z_j^0.23)
ZBL_INVERSE_LENGTH = 2.134563
#: covalent radii (Å) GPUMD uses for typewise ZBL cutoffs, H..Pu (index = Z - 1)
COVALENT_RADIUS = (
    0.426667, 0.613333, 1.6, 1.25333, 1.02667, 1.0, 0.946667, 0.84, 0.853333, 0.893333,
    1.86667, 1.66667, 1.50667, 1.38667, 1.46667, 1.36, 1.32, 1.28, 2.34667, 2.05333,
    1.77333, 1.62667, 1.61333, 1.46667, 1.42667, 1.38667, 1.33333, 1.32, 1.34667, 1.45333,
    1.49333, 1.45333, 1.53333, 1.46667, 1.52, 1.56, 2.52, 2.22667, 1.96, 1.85333,
    1.76, 1.65333, 1.53333, 1.50667, 1.50667, 1.44, 1.53333, 1.64, 1.70667, 1.68,
    1.68, 1.64, 1.76, 1.74667, 2.78667, 2.34667, 2.16, 1.96, 2.10667, 2.09333,
    2.08, 2.06667, 2.01333, 2.02667, 2.01333, 2.0, 1.98667, 1.98667, 1.97333, 2.04,
    1.94667, 1.82667, 1.74667, 1.64, 1.57333, 1.54667, 1.48, 1.49333, 1.50667, 1.76,
    1.73333, 1.73333, 1.81333, 1.74667, 1.84, 1.89333, 2.68, 2.41333, 2.22667, 2.10667,
    2.02667, 2.04, 2.05333, 2.06667,
)


class ZBLRepulsion(nn.Module):
    """Screened nuclear repulsion as in GPUMD's NEP: per-atom energies [N] (half of each pair).

    Args:
        inner, outer: switching radii (Å) of the universal form (``zbl r`` in nep.in means
            outer = r, inner = r / 2).
        typewise_factor: if set, outer = min(factor (R_cov,i + R_cov,j), outer) and inner = 0
            (GPUMD's ``use_typewise_cutoff_zbl``, the third value of the ``zbl`` line).
        flexible: GPUMD's "flexible" table: per unordered element pair (model order, i <= j,
            row-major upper triangle), 10 values ``[r_in, r_out, a1, b1, ..., a4, b4]``.
        num_species: number of elements (needed for ``flexible``).
    """

    def __init__(
        self,
        inner: float = 1.0,
        outer: float = 2.0,
        typewise_factor: float | None = None,
        flexible: Sequence[Sequence[float]] | None = None,
        num_species: int = 1,
    ):
        super().__init__()
        self.inner, self.outer = float(inner), float(outer)
        self.typewise_factor = None if typewise_factor is None else float(typewise_factor)
        self.num_species = int(num_species)
        self.register_buffer("covalent_radius", torch.tensor((0.0,) + COVALENT_RADIUS), persistent=False)
        if flexible is not None:
            table = torch.tensor([list(map(float, row)) for row in flexible])
            expected = self.num_species * (self.num_species + 1) // 2
            if table.shape != (expected, 10):
                raise ValueError(f"zbl.flexible: expected {expected} rows of 10 values, got {tuple(table.shape)}")
            s = self.num_species
            full = torch.zeros(s, s, 10)
            row = 0
            for a in range(s):
                for b in range(a, s):
                    full[a, b] = full[b, a] = table[row]
                    row += 1
            self.register_buffer("flexible_table", full.flatten(0, 1))
            self.cutoff = float(table[:, 1].max())
        else:
            self.flexible_table = None
            self.cutoff = self.outer

    @property
    def is_flexible(self) -> bool:
        return self.flexible_table is not None

    def config(self) -> dict:
        if self.is_flexible:
            s = self.num_species
            table = self.flexible_table.view(s, s, 10)
            rows = [table[a, b].tolist() for a in range(s) for b in range(a, s)]
            return {"flexible": rows}
        out = {"inner": self.inner, "outer": self.outer}
        if self.typewise_factor is not None:
            out["typewise_factor"] = self.typewise_factor
        return out

    def forward(self, graph: AtomicGraph) -> torch.Tensor:
        src, dst = graph.edge_index[0], graph.edge_index[1]
        r = graph.edge_len
        keep = (r < self.cutoff).nonzero().view(-1)
        r, src, dst = r[keep], src[keep], dst[keep]
        dtype = r.dtype
        zi, zj = graph.z[dst], graph.z[src]
        zi_f, zj_f = zi.to(dtype), zj.to(dtype)
        x = r * (zi_f.pow(0.23) + zj_f.pow(0.23)) * ZBL_INVERSE_LENGTH
        if self.is_flexible:
            pair = graph.species[dst] * self.num_species + graph.species[src]
            p = self.flexible_table.to(dtype)[pair]
            r_in, r_out = p[:, 0], p[:, 1]
            phi = sum(p[:, 2 + 2 * k] * torch.exp(-p[:, 3 + 2 * k] * x) for k in range(4))
        else:
            phi = sum(a * torch.exp(-b * x) for a, b in ZBL_UNIVERSAL)
            if self.typewise_factor is not None:
                radii = self.covalent_radius.to(dtype)
                r_out = torch.clamp((radii[zi] + radii[zj]) * self.typewise_factor, max=self.outer)
                r_in = torch.zeros_like(r_out)
            else:
                r_out = torch.full_like(r, self.outer)
                r_in = torch.full_like(r, self.inner)
        pair_energy = GPUMD_COULOMB_CONSTANT * zi_f * zj_f / r * phi * cosine_switch(r, r_in, torch.clamp(r_out - r_in, min=1e-12))
        pair_energy = torch.where(r < r_out, pair_energy, torch.zeros_like(pair_energy))
        return 0.5 * sum_per_atom(pair_energy, dst, graph.num_atoms)


def _zbl_from_config(zbl, num_species: int) -> ZBLRepulsion | None:
    if zbl is None or zbl is False:
        return None
    if isinstance(zbl, (int, float)):
        return ZBLRepulsion(inner=0.5 * float(zbl), outer=float(zbl), num_species=num_species)
    if isinstance(zbl, Mapping):
        cfg = dict(zbl)
        if "outer" in cfg and "inner" not in cfg:
            cfg["inner"] = 0.5 * float(cfg["outer"])
        unknown = set(cfg) - {"inner", "outer", "typewise_factor", "flexible"}
        if unknown:
            raise ValueError(f"zbl: unknown keys {sorted(unknown)} (known: inner, outer, typewise_factor, flexible)")
        return ZBLRepulsion(num_species=num_species, **cfg)
    raise ValueError(f"zbl: expected null, an outer radius or a mapping, got {zbl!r}")


class NEPModel(nn.Module):
    """GPUMD's NEP (see the module docstring): descriptor, fixed scaler, per-element tanh networks.

    Args:
        num_species, cutoff: injected by the model builder; ``cutoff`` is the radial cutoff or
            ``[radial, angular]``.
        cutoff_angular, n_max, basis_size, l_max, typewise_cutoffs, l_max_convention: the descriptor's
            (:class:`~mlip_plugins.nep.descriptor.NEPDescriptor`).
        neuron: hidden-layer width N_neu.
        version: 4 (one network per element) or 3 (one network shared by all elements).
        zbl: ``null``, an outer radius r (inner r/2), or ``{inner, outer, typewise_factor}``,
            or ``{flexible: [[10 values] per element pair]}``.
        lambda_1, lambda_2: NEP's L1 and L2 regularisation weights (0 disables).
        seed: seed of the initial parameters.
        init: the initial parameters: ``"gnep"`` (GNEP's: c ~ 0.1 N(0,1) + U(-0.5, 0.5),
            w0 ~ N(0, 2/(D+H)), b0 ~ 0.01 N(0,1), w1 ~ N(0, 2/(H+1))) or ``"uniform"`` (GPUMD's
            c ~ U(-1, 1) and PyTorch's layer default w ~ U(+-1/sqrt(fan_in)), b0 = 0, as neppo
            starts).
        charge_mode: 0 (a plain NEP) or GPUMD's qNEP charge mode 1 | 2: the network gets a second
            output, the raw charge (weights ``w1_charge``, no bias), and the model adds the
            Coulomb energy of the neutral charges (:mod:`mlip_plugins.nep.qnep`), returned
            unscaled, with the charges and (when forces are asked) the Born effective charges.
        model_type: GPUMD's 0 (potential), 1 (dipole) or 2 (polarizability): a tensorial NEP
            (:mod:`mlip_plugins.nep.tnep`) returns the dipole or polarizability of each structure
            and a zero energy; a polarizability has a second network (``w0_iso``, ...).
    """

    #: a small configuration for the conformance kit (mlip_plugins.testing)
    conformance_config = {"cutoff_angular": 3.5, "n_max": [2, 2], "basis_size": [3, 3], "l_max": [3, 2, 1], "neuron": 4,
                          "zbl": {"inner": 0.8, "outer": 1.6}}

    def __init__(
        self,
        num_species: int,
        cutoff: float | Sequence[float] = 5.0,
        cutoff_angular: float | None = None,
        n_max: int | Sequence[int] = (4, 4),
        basis_size: int | Sequence[int] = (8, 8),
        l_max: int | Sequence[int] = 4,
        typewise_cutoffs: Sequence[Sequence[float]] | None = None,
        neuron: int = 30,
        version: int = 4,
        zbl=None,
        lambda_1: float = 0.0,
        lambda_2: float = 0.0,
        seed: int = 0,
        l_max_convention: str = "gpumd",
        charge_mode: int = 0,
        model_type: int = 0,
        init: str = "gnep",
    ):
        super().__init__()
        from mlip_plugins.nep.tnep import MODEL_TYPES

        if init not in ("gnep", "uniform"):
            raise ValueError(f"NEP init must be 'gnep' or 'uniform', got {init!r}")
        if int(model_type) not in MODEL_TYPES:
            raise ValueError(f"NEP model_type must be 0 (potential), 1 (dipole) or 2 (polarizability), got {model_type!r}")
        self.model_type = int(model_type)
        if self.model_type and (charge_mode or zbl):
            raise ValueError("a dipole / polarizability NEP (model_type 1 | 2) has no charges and no ZBL")
        if int(version) not in (3, 4):
            raise ValueError(f"NEP version must be 3 or 4, got {version!r}")
        self.version = int(version)
        self.num_species = int(num_species)
        self.descriptor = NEPDescriptor(
            num_species, cutoff=cutoff, cutoff_angular=cutoff_angular, n_max=n_max, basis_size=basis_size,
            l_max=l_max, typewise_cutoffs=typewise_cutoffs, seed=seed, l_max_convention=l_max_convention,
            init="gnep" if init == "gnep" else 1.0,
        )
        self.neuron = int(neuron)
        self.lambda_1, self.lambda_2 = float(lambda_1), float(lambda_2)
        dim = self.descriptor.dim
        networks = self.num_species if self.version == 4 else 1
        dtype = torch.get_default_dtype()
        generator = torch.Generator().manual_seed(int(seed) + 1)
        if init == "gnep":  # w0 ~ N(0, 2/(D+H)), b0 ~ 0.01 N(0,1), w1 ~ N(0, 2/(H+1))
            w0 = torch.randn(networks, self.neuron, dim, generator=generator, dtype=dtype) * math.sqrt(2.0 / (dim + self.neuron))
            b0 = 0.01 * torch.randn(networks, self.neuron, generator=generator, dtype=dtype)
            w1 = torch.randn(networks, self.neuron, generator=generator, dtype=dtype) * math.sqrt(2.0 / (self.neuron + 1))
        else:  # U(-1/sqrt(fan_in), 1/sqrt(fan_in)), b0 = 0
            w0 = (2.0 * torch.rand(networks, self.neuron, dim, generator=generator, dtype=dtype) - 1.0) / math.sqrt(dim)
            b0 = torch.zeros(networks, self.neuron, dtype=dtype)
            w1 = (2.0 * torch.rand(networks, self.neuron, generator=generator, dtype=dtype) - 1.0) / math.sqrt(self.neuron)
        self.w0, self.b0, self.w1 = nn.Parameter(w0), nn.Parameter(b0), nn.Parameter(w1)
        self.b1 = nn.Parameter(torch.zeros((), dtype=dtype))
        if self.model_type == 2:  # the polarizability's isotropic network
            self.w0_iso = nn.Parameter(torch.randn(networks, self.neuron, dim, generator=generator, dtype=dtype) * math.sqrt(2.0 / (dim + self.neuron)))
            self.b0_iso = nn.Parameter(0.01 * torch.randn(networks, self.neuron, generator=generator, dtype=dtype))
            self.w1_iso = nn.Parameter(torch.randn(networks, self.neuron, generator=generator, dtype=dtype) * math.sqrt(2.0 / (self.neuron + 1)))
            self.b1_iso = nn.Parameter(torch.zeros((), dtype=dtype))
        self.register_buffer("q_scaler", torch.ones(dim, dtype=dtype))
        self.register_buffer("scaler_fitted", torch.zeros((), dtype=torch.bool))
        # largest radial / angular neighbour counts seen in training (GPUMD's MN_R, MN_A; 0 = unknown)
        self.register_buffer("max_neighbors", torch.zeros(2, dtype=torch.long))
        self.zbl = _zbl_from_config(zbl, self.num_species)
        self.charge_mode = int(charge_mode)
        #: also compute the Born effective charges while training (set when the loss has a BEC term)
        self.bec_in_training = False
        self.coulomb = None
        if self.charge_mode:
            from mlip_plugins.nep.qnep import QNEPCoulomb

            if self.version != 4:
                raise ValueError("a qNEP (charge_mode 1 | 2) is a NEP4 model: set version 4")
            self.coulomb = QNEPCoulomb(self.charge_mode, self.descriptor.rc_radial)
            self.w1_charge = nn.Parameter(torch.randn(networks, self.neuron, generator=generator, dtype=dtype) * math.sqrt(2.0 / (self.neuron + 1)))
            self.sqrt_epsilon_inf = nn.Parameter(torch.ones((), dtype=dtype))

    @property
    def cutoff(self) -> float:
        return max(self.descriptor.cutoff, self.zbl.cutoff if self.zbl is not None else 0.0)

    def parameter_counts(self) -> dict[str, int]:
        return {"nep": sum(p.numel() for p in self.parameters() if p.requires_grad)}

    def element_parameter_owners(self) -> dict[nn.Parameter, torch.Tensor]:
        """For SNES's per-element ranking: the element (species index) that owns each scalar of
        the element-wise parameters, as a tensor of the parameter's shape. NEP4's networks are
        per element; the descriptor coefficients belong to the centre element of their pair.
        Parameters not listed are shared (ranked on all structures)."""
        num_species = self.descriptor.num_species
        owners: dict[nn.Parameter, torch.Tensor] = {}
        if self.version == 4:
            extra = (self.w1_charge,) if self.charge_mode else (self.w0_iso, self.b0_iso, self.w1_iso) if self.model_type == 2 else ()
            for p in (self.w0, self.b0, self.w1) + extra:
                owners[p] = torch.arange(num_species).view(-1, *([1] * (p.dim() - 1))).expand_as(p)
        for p in (self.descriptor.c_radial, self.descriptor.c_angular):
            owners[p] = torch.arange(num_species).view(-1, 1, 1, 1).expand_as(p)
        return owners

    def config(self) -> dict:
        """Keyword arguments (besides num_species) that rebuild this model's architecture."""
        cfg = dict(self.descriptor.config())
        cfg.update({"neuron": self.neuron, "version": self.version, "lambda_1": self.lambda_1, "lambda_2": self.lambda_2})
        cfg["zbl"] = self.zbl.config() if self.zbl is not None else None
        if self.charge_mode:
            cfg["charge_mode"] = self.charge_mode
        if self.model_type:
            cfg["model_type"] = self.model_type
        return cfg

    def scaled_descriptor(self, graph: AtomicGraph) -> torch.Tensor:
        """q~ = q_scaler * q: the network input [N, D]."""
        return self.descriptor(graph) * self.q_scaler.to(graph.edge_len.dtype)

    def network(self, q: torch.Tensor, species: torch.Tensor, isotropic: bool = False) -> torch.Tensor:
        """sum_mu w1 tanh(w0 q - b0) - b1 with each atom's element network: [N] (``isotropic``:
        the polarizability's second network)."""
        bias = self.b1_iso if isotropic else self.b1
        element = self._isotropic_network if isotropic else self._element_network
        if self.version == 3 or self.num_species == 1:  # one network for every atom
            return element(0, q) - bias
        return per_element(element, q, species, self.num_species) - bias

    def _element_network(self, s: int, q: torch.Tensor) -> torch.Tensor:
        """sum_mu w1 tanh(w0 q - b0) of element s (without the shared bias b1): [n_s]."""
        return torch.tanh(q @ self.w0[s].T - self.b0[s]) @ self.w1[s]

    def _isotropic_network(self, s: int, q: torch.Tensor) -> torch.Tensor:
        return torch.tanh(q @ self.w0_iso[s].T - self.b0_iso[s]) @ self.w1_iso[s]

    def forward(self, graph: AtomicGraph):
        if self.model_type:
            return self._forward_tensor(graph)
        if self.charge_mode:
            return self._forward_charges(graph)
        energy = self.network(self.scaled_descriptor(graph), graph.species)
        if self.zbl is not None:
            energy = energy + self.zbl(graph)
        return energy

    def _forward_tensor(self, graph: AtomicGraph):
        """TNEP: the dipole or polarizability per structure, and a zero energy (with a graph)."""
        from mlip_plugins import keys
        from mlip_plugins.models.outputs import NodeOutput
        from mlip_plugins.nep.tnep import tensor_property

        q = self.scaled_descriptor(graph)
        scalar = self.network(q, graph.species)
        isotropic = self.network(q, graph.species, isotropic=True) if self.model_type == 2 else None
        value = tensor_property(graph, scalar, isotropic, self.model_type, create_graph=self.training)
        key = keys.DIPOLE if self.model_type == 1 else keys.POLARIZABILITY
        extras = {} if value is None else {key: value}
        return NodeOutput(scalar * 0.0, extras, {k: "nep" for k in extras})

    def _charge_network(self, s: int, q: torch.Tensor) -> torch.Tensor:
        """[n_s, 2]: (energy without b1, raw charge) of element s from one shared hidden layer."""
        hidden = torch.tanh(q @ self.w0[s].T - self.b0[s])
        return hidden @ torch.stack([self.w1[s], self.w1_charge[s]], dim=1)

    def _forward_charges(self, graph: AtomicGraph):
        """qNEP: the learned energy, plus the Coulomb energy (eV, unscaled), charges and BEC."""
        from mlip_plugins import keys
        from mlip_plugins.models.outputs import NodeOutput
        from mlip_plugins.nep.qnep import born_effective_charges, neutral_charges

        outputs = per_element(self._charge_network, self.scaled_descriptor(graph), graph.species, self.num_species)
        energy, raw = outputs[:, 0] - self.b1, outputs[:, 1]
        if self.zbl is not None:
            energy = energy + self.zbl(graph)
        charges = neutral_charges(raw, graph)
        coulomb = self.coulomb(graph, charges)
        extras = {keys.ATOMIC_ENERGY_UNSCALED: coulomb, keys.CHARGES: charges}
        # one more backward pass through the descriptor: in evaluation, and in training for a BEC loss
        if not self.training or self.bec_in_training:
            bec = born_effective_charges(graph, raw, charges, self.sqrt_epsilon_inf, create_graph=self.training)
            if bec is not None:
                extras[keys.BORN_EFFECTIVE_CHARGES] = bec
        return NodeOutput(energy, extras, {k: "nep" for k in extras})

    def regularization_loss(self) -> torch.Tensor | None:
        """lambda_1 mean|z| + lambda_2 sqrt(mean z^2) over the trainable parameters (None if off)."""
        if self.lambda_1 == 0.0 and self.lambda_2 == 0.0:
            return None
        return nep_regularization(self, self.lambda_1, self.lambda_2)

    @torch.no_grad()
    def set_scaler_from_range(self, q_min: torch.Tensor, q_max: torch.Tensor) -> None:
        """q_scaler = 1 / (max - min) per component (1 where a component never varies)."""
        span = (q_max - q_min).to(self.q_scaler.dtype)
        self.q_scaler.copy_(torch.where(span > 1e-12, 1.0 / span.clamp(min=1e-12), torch.ones_like(span)))
        self.scaler_fitted.fill_(True)


def nep_regularization(model: nn.Module, lambda_1: float, lambda_2: float) -> torch.Tensor:
    """NEP's regulariser lambda_1 (1/N) sum|z| + lambda_2 sqrt((1/N) sum z^2) over the N
    trainable parameters z of ``model``."""
    params = [p.reshape(-1) for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nep_regularization: the model has no trainable parameters")
    z = torch.cat(params)
    n = z.numel()
    loss = z.new_zeros(())
    if lambda_1:
        loss = loss + float(lambda_1) * z.abs().sum() / n
    if lambda_2:
        loss = loss + float(lambda_2) * torch.sqrt(z.pow(2).sum() / n + 1e-30)
    return loss


def nep_models(module: nn.Module) -> list[NEPModel]:
    """Every :class:`NEPModel` inside ``module`` (a Potential or an energy tree)."""
    return [m for m in module.modules() if isinstance(m, NEPModel)]


@torch.no_grad()
def fit_descriptor_scaler(potential: nn.Module, graphs: Iterable, batch_size: int = 32, refit: bool = False) -> int:
    """Set ``q_scaler = 1/(max - min)`` of every NEP model in ``potential`` from ``graphs``.

    ``graphs`` are PyG ``Data`` objects (the training set); the descriptor is evaluated with the
    model's current coefficients (GNEP's choice). Models whose scaler is already fitted are
    skipped unless ``refit``. Returns the number of models fitted.
    """
    from torch_geometric.data import Batch

    from mlip_plugins.graph import build_atomic_graph

    models = [m for m in nep_models(potential) if refit or not bool(m.scaler_fitted)]
    if not models:
        return 0
    graphs = list(graphs)
    if not graphs:
        raise ValueError("fit_descriptor_scaler: no training structures")
    lows: list = [None] * len(models)
    highs: list = [None] * len(models)
    dtype = next(potential.parameters()).dtype
    device = next(potential.parameters()).device
    for start in range(0, len(graphs), batch_size):
        batch = Batch.from_data_list(graphs[start : start + batch_size]).to(device)
        species = potential.element_map(batch.z)
        graph = build_atomic_graph(batch, species, pos=batch.pos.to(dtype))
        for k, model in enumerate(models):
            q = model.descriptor(graph)
            lo, hi = q.min(0).values, q.max(0).values
            lows[k] = lo if lows[k] is None else torch.minimum(lows[k], lo)
            highs[k] = hi if highs[k] is None else torch.maximum(highs[k], hi)
            counts = neighbor_counts(model.descriptor, graph)
            model.max_neighbors.copy_(torch.maximum(model.max_neighbors, counts.to(model.max_neighbors)))
    for model, lo, hi in zip(models, lows, highs):
        model.set_scaler_from_range(lo, hi)
    return len(models)


def neighbor_counts(descriptor: NEPDescriptor, graph: AtomicGraph) -> torch.Tensor:
    """Largest number of radial and angular neighbours of any atom: [2] long."""
    dst = graph.edge_index[1]
    pair = graph.species[dst] * descriptor.num_species + graph.species[graph.edge_index[0]]
    result = []
    for table in (descriptor.pair_cutoff_radial, descriptor.pair_cutoff_angular):
        inside = graph.edge_len < table.to(graph.edge_len.dtype)[pair]
        counts = torch.bincount(dst[inside], minlength=graph.num_atoms)
        result.append(counts.max() if counts.numel() else torch.zeros((), dtype=torch.long))
    return torch.stack(result).cpu()
