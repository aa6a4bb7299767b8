"""Dataset statistics in one pass, shard by shard, without holding the data.

:class:`StreamingStatistics` keeps sums from which the in-memory functions of
:mod:`mlip_plugins.data.statistics` are recovered exactly:

* E0 (:func:`~mlip_plugins.data.statistics.fit_e0`): the normal equations CᵀC and CᵀE over the
  structures with an energy, C being the per-structure element counts;
* the energy scale (:func:`~mlip_plugins.data.statistics.energy_scale`): the sum of squared
  force components and their number (force RMS), and for the fallback without forces the
  moments of the per-atom energy a = E/n and composition b = C/n, since
  std(a - b·e0)² = ⟨a²⟩ - 2⟨ab⟩·e0 + e0ᵀ⟨bbᵀ⟩e0 - (⟨a⟩ - ⟨b⟩·e0)² for any e0 given later;
* the loss's label variances (:func:`~mlip_plugins.data.statistics.label_variances`): the
  sums and sums of squares of the stress components, the charges, the Born effective charge
  components and the dipole and polarizability components per atom, with their counts;
* neighbour counts: edges per atom, and the largest number of neighbours of one atom.

Sums over shards are merged (:meth:`StreamingStatistics.merge`), so each build worker sums its
shard and the store keeps each shard's sums (a resumed build needs no re-read); statistics of a
subset (the training split) are summed from the per-structure columns of the shards only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from mlip_plugins.data.statistics import choose_energy_scale, e0_from_normal_equations, e0_mapping
from mlip_plugins.data.store import layout


#: the sums that add as plain numbers (the element-indexed ones are re-indexed first)
#: the pooled components whose variance the loss uses: (count, sum, sum of squares) of each
_POOLED = {"charges": ("n_charges", "charge_sum", "charge_sq"), "bec": ("n_bec", "bec_sum", "bec_sq"),
           "dipole": ("n_dipole", "dipole_sum", "dipole_sq"),
           "polarizability": ("n_polarizability", "polarizability_sum", "polarizability_sq")}
_SCALAR_SUMS = ("n_energy", "sum_a", "sum_a2", "force_sq", "force_components", "n_stress", "stress_sum", "stress_sq",
                *(name for sums in _POOLED.values() for name in sums))


def _sums(values: np.ndarray) -> tuple[int, float, float]:
    return int(values.size), float(values.sum()), float(np.square(values).sum())


@dataclass
class StreamingStatistics:
    """Additive sums over structures (see the module docstring); ``elements`` index the arrays."""

    elements: list[int] = field(default_factory=list)
    n_structures: int = 0
    n_atoms: int = 0
    n_edges: int = 0
    max_neighbors: int = 0
    atom_counts: list = field(default_factory=list)   #: [S] atoms of each element
    n_energy: int = 0                                 #: structures with an energy
    gram: list = field(default_factory=list)          #: [S, S] CᵀC over those
    rhs: list = field(default_factory=list)           #: [S] CᵀE
    sum_a: float = 0.0
    sum_a2: float = 0.0
    sum_ab: list = field(default_factory=list)        #: [S]
    sum_b: list = field(default_factory=list)         #: [S]
    sum_bb: list = field(default_factory=list)        #: [S, S]
    force_sq: float = 0.0
    force_components: int = 0
    n_stress: int = 0                                 #: structures with a stress
    stress_sum: float = 0.0                           #: sum of their stress components
    stress_sq: float = 0.0                            #: ... and of their squares
    n_charges: int = 0                                #: per-atom charges (structures that have them)
    charge_sum: float = 0.0
    charge_sq: float = 0.0
    n_bec: int = 0                                    #: Born effective charge components
    bec_sum: float = 0.0
    bec_sq: float = 0.0
    n_dipole: int = 0                                 #: dipole components per atom
    dipole_sum: float = 0.0
    dipole_sq: float = 0.0
    n_polarizability: int = 0                         #: polarizability components per atom
    polarizability_sum: float = 0.0
    polarizability_sq: float = 0.0

    # -- building the sums ------------------------------------------------------------------
    @classmethod
    def from_tables(cls, arrays: Mapping[str, np.ndarray], rows: np.ndarray | None = None) -> StreamingStatistics:
        """Sums over the structures ``rows`` (default: all) of one shard (its arrays, packed or
        memory-mapped) from the per-structure tables, ``z`` and, if some of them have charges
        or BEC, the charge column and the BEC rows; no neighbour counts."""
        offsets, index, structures = arrays["offsets"], arrays["index"], arrays["structures"]
        z = np.asarray(arrays["z"], dtype=np.int64)
        atom_offsets = np.asarray(offsets[:, 0], dtype=np.int64)
        elements = np.unique(z)
        n_atoms = np.diff(atom_offsets)
        owner = np.repeat(np.arange(len(n_atoms)), n_atoms)
        counts = np.zeros((len(n_atoms), len(elements)))
        np.add.at(counts, (owner, np.searchsorted(elements, z)), 1.0)
        rows = np.arange(len(n_atoms)) if rows is None else np.asarray(rows, dtype=np.int64)
        counts, n_atoms, index, structures = counts[rows], n_atoms[rows], index[rows], structures[rows]
        energy, has_energy = structures[:, layout.ENERGY], index[:, layout.HAS_ENERGY] != 0
        has_forces, has_stress = index[:, layout.HAS_FORCES] != 0, index[:, layout.HAS_STRESS] != 0
        labelled, e = counts[has_energy], energy[has_energy]
        a, b = e / n_atoms[has_energy], labelled / n_atoms[has_energy, None]
        stress = structures[has_stress][:, layout.STRESS]
        charged = rows[index[:, layout.HAS_CHARGES] != 0]
        pooled = {"charges": arrays["atoms"][layout.ranges(atom_offsets[charged], np.diff(atom_offsets)[charged]), layout.CHARGE]}
        bec_offsets = np.asarray(offsets[:, layout.BEC_ROW], dtype=np.int64)
        pooled["bec"] = arrays["bec"][layout.ranges(bec_offsets[rows], np.diff(bec_offsets)[rows])]
        for name, columns in layout.TENSOR_COLUMNS.items():  # per atom, as the loss compares them
            has = index[:, layout.HAS_TENSOR[name]] != 0
            pooled[name] = structures[has][:, columns] / n_atoms[has, None]
        sums = {name: value for key, names in _POOLED.items() for name, value in zip(names, _sums(pooled[key]))}
        return cls(
            elements=[int(x) for x in elements], n_structures=len(rows), n_atoms=int(n_atoms.sum()),
            atom_counts=counts.sum(0).tolist(), n_energy=int(has_energy.sum()),
            gram=(labelled.T @ labelled).tolist(), rhs=(labelled.T @ e).tolist(),
            sum_a=float(a.sum()), sum_a2=float((a * a).sum()), sum_ab=(b.T @ a).tolist(), sum_b=b.sum(0).tolist(),
            sum_bb=(b.T @ b).tolist(), force_sq=float(structures[has_forces, layout.FORCE_SQ].sum()),
            force_components=int(3 * n_atoms[has_forces].sum()),
            n_stress=int(has_stress.sum()), stress_sum=float(stress.sum()), stress_sq=float(np.square(stress).sum()),
            **sums,
        )

    @classmethod
    def from_shard(cls, shard: dict[str, np.ndarray]) -> StreamingStatistics:
        """Sums over every structure of a packed shard (:func:`layout.pack_shard`), with neighbour counts."""
        stats, offsets = cls.from_tables(shard), shard["offsets"]
        edges = shard["edges"]
        stats.n_edges = int(len(edges))
        if len(edges):  # in-degree of every atom: edges[:, 1] is the centre, local to its structure
            owner = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets[:, 1]))
            centre = offsets[owner, 0] + edges[:, 1].astype(np.int64)  # global atom index of each edge's centre
            stats.max_neighbors = int(np.bincount(centre).max())
        return stats

    # -- combining ----------------------------------------------------------------------------
    def _embedded(self, elements: Sequence[int]) -> dict[str, np.ndarray]:
        """The element-indexed sums re-indexed on ``elements`` (a superset), zeros elsewhere."""
        position = {z: k for k, z in enumerate(elements)}
        missing = [z for z in self.elements if z not in position]
        if missing:
            raise ValueError(f"elements {missing} of the data are not in {list(elements)}")
        where = np.array([position[z] for z in self.elements], dtype=np.int64)
        size = len(elements)
        out = {}
        for name in ("atom_counts", "rhs", "sum_ab", "sum_b"):
            vector = np.zeros(size)
            vector[where] = np.asarray(getattr(self, name), dtype=np.float64).reshape(-1) if where.size else 0.0
            out[name] = vector
        for name in ("gram", "sum_bb"):
            matrix = np.zeros((size, size))
            if where.size:
                matrix[np.ix_(where, where)] = np.asarray(getattr(self, name), dtype=np.float64)
            out[name] = matrix
        return out

    def merge(self, other: StreamingStatistics) -> StreamingStatistics:
        """The sums over both sets of structures."""
        elements = sorted(set(self.elements) | set(other.elements))
        mine, theirs = self._embedded(elements), other._embedded(elements)
        merged = {name: (mine[name] + theirs[name]).tolist() for name in mine}
        return StreamingStatistics(
            elements=elements, n_structures=self.n_structures + other.n_structures, n_atoms=self.n_atoms + other.n_atoms,
            n_edges=self.n_edges + other.n_edges, max_neighbors=max(self.max_neighbors, other.max_neighbors),
            **{name: getattr(self, name) + getattr(other, name) for name in _SCALAR_SUMS}, **merged,
        )

    @classmethod
    def total(cls, parts: Sequence[StreamingStatistics]) -> StreamingStatistics:
        result = cls()
        for part in parts:
            result = result.merge(part)
        return result

    # -- results --------------------------------------------------------------------------------
    def fit_e0(self, elements: Sequence[int], ridge: float = 1e-8, fixed: Mapping | None = None) -> np.ndarray:
        """:func:`mlip_plugins.data.statistics.fit_e0` of these structures (``fixed``: E0 of some
        elements given, the others fitted)."""
        fixed = {z: e for z, e in e0_mapping(fixed or {}).items() if z in elements}
        e0 = np.array([fixed.get(z, 0.0) for z in elements])
        free = [k for k, z in enumerate(elements) if z not in fixed]
        if self.n_energy == 0:
            return e0
        sums = self._embedded(elements)
        return e0_from_normal_equations(sums["gram"], sums["rhs"], ridge, e0, free)

    def force_rms(self) -> float | None:
        return float(np.sqrt(self.force_sq / self.force_components)) if self.force_components else None

    def per_atom_energy_std(self, elements: Sequence[int], e0: np.ndarray) -> float | None:
        """Standard deviation of (E - C·e0)/n over the structures with an energy (None below two)."""
        if self.n_energy < 2:
            return None
        sums, e0, n = self._embedded(elements), np.asarray(e0, dtype=np.float64), self.n_energy
        mean = (self.sum_a - sums["sum_b"] @ e0) / n
        mean_square = (self.sum_a2 - 2.0 * sums["sum_ab"] @ e0 + e0 @ sums["sum_bb"] @ e0) / n
        return float(np.sqrt(max(mean_square - mean * mean, 0.0)))

    def energy_scale(self, elements: Sequence[int], e0: np.ndarray) -> float:
        """:func:`mlip_plugins.data.statistics.energy_scale` of these structures."""
        return choose_energy_scale(self.force_rms(), self.per_atom_energy_std(elements, e0))

    def label_variances(self, elements: Sequence[int], e0: np.ndarray) -> dict[str, float]:
        """:func:`mlip_plugins.data.statistics.label_variances` of these structures (the loss's
        ``normalize: variance``): the per-atom energy spread after E0 (squared), the mean square
        force component, and the (n-1)-normalised variance of the stress components, the
        charges, the BEC components and the dipole and polarizability components per atom."""
        def variance(n: int, total: float, squares: float) -> float:
            return (squares - total * total / n) / (n - 1)

        energy_std = self.per_atom_energy_std(elements, e0)
        result = {
            "energy": energy_std**2 if energy_std is not None else 1.0,
            "forces": self.force_sq / self.force_components if self.force_components else 1.0,
            "stress": variance(9 * self.n_stress, self.stress_sum, self.stress_sq) if self.n_stress > 1 else 1.0,
        }
        for key, (count, total, squares) in _POOLED.items():
            n = getattr(self, count)
            result[key] = variance(n, getattr(self, total), getattr(self, squares)) if n > 1 else 1.0
        return {key: value if np.isfinite(value) and value > 1e-12 else 1.0 for key, value in result.items()}

    def summary(self) -> dict:
        """Neighbour counts and label coverage, for people (the manifest's ``summary``)."""
        return {
            "structures": self.n_structures, "atoms": self.n_atoms, "edges": self.n_edges,
            "neighbors_per_atom": self.n_edges / self.n_atoms if self.n_atoms else 0.0,
            "max_neighbors": self.max_neighbors, "elements": dict(zip(map(str, self.elements), map(int, self.atom_counts))),
            "with_energy": self.n_energy, "force_rms": self.force_rms(),
        }

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> StreamingStatistics:
        return cls(**data)
