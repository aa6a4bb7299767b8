"""The conformance checks: each takes a :class:`PluginCase` and raises ``AssertionError`` with a clear message.

Physics checks run in float64 on a real ``Potential`` that uses the plugin (see
:mod:`mlip_plugins.testing.harness`): forces are central finite differences of the energy,
stress is the finite strain derivative, the energy is invariant under rotation, translation
and permutation, a structure's energy does not depend on the rest of its batch, energy and
forces are continuous as a neighbour crosses any cutoff radius, the weights survive a
state-dict round trip through ``torch.load(weights_only=True)``, and a forward pass changes no
state. A plugin opts out of a check by naming it in ``conformance_skip`` with a reason.
"""

from __future__ import annotations

import copy
import io
import os
from collections.abc import Callable

import numpy as np
import torch

from mlip_plugins.models.composition import UNSCALED_ENERGY_KEY
from mlip_plugins.models.outputs import NodeOutput
from mlip_plugins.nn import sum_per_structure
from mlip_plugins.testing import structures as st
from mlip_plugins.dtypes import default_dtype
from mlip_plugins.testing.finite_differences import numerical_force, numerical_stress
from mlip_plugins.testing.harness import PluginCase, scale_of

FD_STEP = 1e-5
STRAIN_STEP = 1e-6
COMPILE_BACKEND_ENV = "MLIP_CONFORMANCE_COMPILE_BACKEND"


class CheckSkipped(Exception):
    """A check does not apply to a plugin; the message says why."""


def _assert_close(actual, expected, atol: float, what: str) -> None:
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {actual.shape} != expected {expected.shape}")
    error = np.abs(actual - expected)
    if not np.all(error <= atol):
        k = np.unravel_index(int(np.argmax(error)), error.shape) if error.ndim else ()
        raise AssertionError(
            f"{what}: max abs difference {float(np.max(error)):.3e} > tolerance {atol:.3e} "
            f"(at index {tuple(int(i) for i in k)}: {float(actual[k]):.12g} vs {float(expected[k]):.12g})"
        )


def _energy_tol(energies, rtol: float = 1e-9) -> float:
    return rtol * max(1.0, float(np.max(np.abs(energies))))


def _needs_energy_model(case: PluginCase) -> None:
    if case.energy_spec() is None:
        raise CheckSkipped(
            f"{case}: no energy model to test (a {case.group} plugin declares `conformance_energy_spec` to get the physics checks)"
        )


def _features(module, graph) -> torch.Tensor:
    out = module(graph)
    return out["features"] if isinstance(out, dict) else out


# ---------------------------------------------------------------------- contracts
def check_contract(case: PluginCase) -> None:
    """The group's interface: constructor arguments, attributes, output shapes and dtypes."""
    contract = GROUP_CONTRACTS.get(case.group)
    if contract is None:
        if not callable(case.cls):
            raise AssertionError(f"{case}: {case.ref} is not callable")
        return
    contract(case)


def _descriptor_contract(case: PluginCase) -> None:
    num_species = len(case.elements)
    for dtype in (torch.float64, torch.float32):
        descriptor = case.instantiate(dtype, num_species=num_species, cutoff=case.cutoff)
        for attr in ("dim", "cutoff"):
            if not hasattr(descriptor, attr):
                raise AssertionError(f"{case}: a descriptor must expose `{attr}`")
        if int(descriptor.dim) <= 0:
            raise AssertionError(f"{case}: dim must be positive, got {descriptor.dim}")
        if not 0 < float(descriptor.cutoff) <= case.cutoff + 1e-12:
            raise AssertionError(f"{case}: cutoff {descriptor.cutoff} not in (0, model cutoff {case.cutoff}]")
        isolated = st.cluster(case.elements)[:1]
        for atoms in case.structures() + [isolated]:
            graph = case.graph(atoms, dtype)
            features = _features(descriptor, graph)
            expected = (len(atoms), int(descriptor.dim))
            if tuple(features.shape) != expected:
                raise AssertionError(f"{case}: features shape {tuple(features.shape)} != [N, dim] = {list(expected)} for {atoms.get_chemical_formula()}")
            if features.dtype != dtype:
                raise AssertionError(f"{case}: features are {features.dtype} for {dtype} inputs (follow the input dtype)")
            if not torch.isfinite(features).all():
                raise AssertionError(f"{case}: non-finite features for {atoms.get_chemical_formula()} ({len(graph.edge_len)} edges)")


def _readout_contract(case: PluginCase) -> None:
    in_dim = 6
    readout = case.instantiate(torch.float64, in_dim=in_dim, num_species=len(case.elements))
    for atoms in case.structures():
        graph = case.graph(atoms)
        features = torch.randn(len(atoms), in_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        energy = NodeOutput.of(readout(features, graph), str(case)).energy
        if tuple(energy.shape) != (len(atoms),):
            raise AssertionError(f"{case}: per-atom energies shape {tuple(energy.shape)} != [N] = [{len(atoms)}]")
        if energy.dtype != torch.float64 or not torch.isfinite(energy).all():
            raise AssertionError(f"{case}: energies must be finite float64 for float64 features, got {energy.dtype}")


def _router_contract(case: PluginCase) -> None:
    num_experts, in_dim, num_species = 4, 6, len(case.elements)
    router = case.instantiate(torch.float64, num_experts=num_experts, num_species=num_species, in_dim=in_dim)
    top_k = getattr(router, "top_k", None)
    for atoms in case.structures():
        graph = case.graph(atoms)
        features = torch.randn(len(atoms), in_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        gates = router(features, graph)
        if tuple(gates.shape) != (len(atoms), num_experts):
            raise AssertionError(f"{case}: gates shape {tuple(gates.shape)} != [N, E] = [{len(atoms)}, {num_experts}]")
        if (gates < 0).any():
            raise AssertionError(f"{case}: negative gates")
        _assert_close(gates.sum(-1).detach(), np.ones(len(atoms)), 1e-10, f"{case}: gate rows must sum to one")
        active = (gates > 0).sum(-1)
        if top_k is not None and int(top_k) < num_experts and bool((active > int(top_k)).any()):
            raise AssertionError(f"{case}: top_k={top_k} but up to {int(active.max())} experts are active per atom")
        if getattr(router, "element_wise", False):
            table = router.element_gates()
            _assert_close(gates.detach(), table[graph.species].detach(), 1e-12, f"{case}: element_wise gates != element_gates()[species]")


def _energy_model_contract(case: PluginCase) -> None:
    model = case.potential.energy_model
    if not hasattr(model, "cutoff"):
        raise AssertionError(f"{case}: an energy node must expose `cutoff`")
    for atoms in case.structures():
        graph = case.graph(atoms)
        out = NodeOutput.of(model(graph), str(case))
        energy = out.energy
        if tuple(energy.shape) != (len(atoms),):
            raise AssertionError(f"{case}: per-atom energies shape {tuple(energy.shape)} != [N] = [{len(atoms)}]")
        unscaled = out.extras.get(UNSCALED_ENERGY_KEY)
        if unscaled is not None and tuple(unscaled.shape) != (len(atoms),):
            raise AssertionError(f"{case}: {UNSCALED_ENERGY_KEY} shape {tuple(unscaled.shape)} != [N] = [{len(atoms)}]")


def _callback_contract(case: PluginCase) -> None:
    from lightning.pytorch.callbacks import Callback

    try:
        callback = case.cls(**copy.deepcopy(case.config))
    except Exception as exc:
        raise AssertionError(f"{case}: constructing with conformance_config {case.config} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(callback, Callback):
        raise AssertionError(f"{case}: a callback plugin must build a lightning Callback, got {type(callback).__name__}")
    callback.load_state_dict(copy.deepcopy(callback.state_dict()))


def _random_charges(n: int, total: float = 0.0) -> torch.Tensor:
    q = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    return q - q.mean() + total / n


def _long_range_contract(case: PluginCase) -> None:
    solver = case.instantiate(torch.float64, cutoff=case.cutoff)
    for atoms in case.structures():
        graph = case.graph(atoms)
        charges = _random_charges(len(atoms))
        out = solver(graph, charges)
        if not isinstance(out, dict) or "potentials" not in out or "energy" not in out:
            raise AssertionError(f"{case}: forward(graph, charges) must return a dict with 'potentials' [N] and 'energy' [B]")
        phi, energy = out["potentials"], out["energy"]
        if tuple(phi.shape) != (len(atoms),) or tuple(energy.shape) != (1,):
            raise AssertionError(f"{case}: potentials {tuple(phi.shape)} / energy {tuple(energy.shape)} != [N] / [B]")
        if phi.dtype != torch.float64 or not torch.isfinite(phi).all():
            raise AssertionError(f"{case}: potentials must be finite float64 for float64 inputs")
        half_q_phi = float(0.5 * (charges * phi).sum())
        _assert_close(energy.detach()[0], half_q_phi, 1e-10 * max(1.0, abs(half_q_phi)), f"{case}: energy != 1/2 sum_i q_i phi_i")


def _charge_model_contract(case: PluginCase) -> None:
    in_dim = 6
    model = case.instantiate(torch.float64, in_dim=in_dim, num_species=len(case.elements))
    for total in (0.0, 1.0):
        batch_atoms = case.structures()
        for atoms in batch_atoms:  # reference charges (for models that read them) with the requested total
            atoms.set_initial_charges(atoms.get_initial_charges() + total / len(atoms))
        batch = st.to_batch(batch_atoms, case.cutoff)
        from mlip_plugins.elements import ElementMap
        from mlip_plugins.graph import build_atomic_graph

        graph = build_atomic_graph(batch, ElementMap(list(case.elements))(batch.z), pos=batch.pos)
        features = torch.randn(graph.num_atoms, in_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        out = model(features, graph)
        charges = out["charges"] if isinstance(out, dict) else out
        if tuple(charges.shape) != (graph.num_atoms,):
            raise AssertionError(f"{case}: charges shape {tuple(charges.shape)} != [N] = [{graph.num_atoms}]")
        sums = sum_per_structure(charges.detach(), graph.batch, graph.num_graphs)
        _assert_close(sums, np.full(graph.num_graphs, total), 1e-9, f"{case}: charges must sum to each structure's total_charge ({total})")


def _module_contract(case: PluginCase) -> None:
    if not (isinstance(case.cls, type) and issubclass(case.cls, torch.nn.Module)) and not callable(case.cls):
        raise AssertionError(f"{case}: {case.ref} is neither an nn.Module class nor a factory")
    if case.energy_spec() is not None:
        _energy_model_contract(case)


GROUP_CONTRACTS: dict[str, Callable[[PluginCase], None]] = {
    "descriptors": _descriptor_contract,
    "readouts": _readout_contract,
    "routers": _router_contract,
    "energy_models": _energy_model_contract,
    "callbacks": _callback_contract,
    "long_range": _long_range_contract,
    "charge_models": _charge_model_contract,
}


# ---------------------------------------------------------------------- dtypes
def check_float64(case: PluginCase) -> None:
    """Parameters, buffers and outputs stay float64 in a float64 model."""
    _needs_energy_model(case)
    potential = case.potential
    for name, tensor in [*potential.named_parameters(), *potential.named_buffers()]:
        if tensor.is_floating_point() and tensor.dtype != torch.float64:
            raise AssertionError(f"{case}: {name} is {tensor.dtype} in a float64 model (register it as a buffer/parameter so .double() converts it)")
    batch = st.to_batch(case.structures(), potential.cutoff, torch.float64)
    out = potential(batch, compute_forces=True, compute_stress=case.periodic)
    for key in ("energy", "forces", "atomic_energies") + (("stress",) if case.periodic else ()):
        value = out[key]
        if value.dtype != torch.float64:
            raise AssertionError(f"{case}: output {key!r} is {value.dtype} in a float64 model")
        if not torch.isfinite(value).all():
            raise AssertionError(f"{case}: output {key!r} is not finite")
    if tuple(out["forces"].shape) != (int(batch.num_nodes), 3) or tuple(out["energy"].shape) != (int(batch.num_graphs),):
        raise AssertionError(f"{case}: energy {tuple(out['energy'].shape)} / forces {tuple(out['forces'].shape)} shapes wrong")


def check_float32(case: PluginCase) -> None:
    """The plugin builds and runs in float32 (the training default) and agrees with float64."""
    _needs_energy_model(case)
    reference = case.evaluate(case.structures())
    with default_dtype(torch.float32):  # as in training with dtype=float32
        model32 = case.build_potential(torch.float32)
        model32.load_state_dict(case.potential.state_dict())
        batch = st.to_batch(case.structures(), model32.cutoff, torch.float32)
        out = model32(batch, compute_forces=True)
    for key in ("energy", "forces"):
        if out[key].dtype != torch.float32:
            raise AssertionError(f"{case}: output {key!r} is {out[key].dtype} in a float32 model")
    _assert_close(out["energy"].detach().numpy(), reference["energy"], 1e-4 * scale_of(reference["energy"]) + 1e-5, f"{case}: float32 vs float64 energies")
    _assert_close(out["forces"].detach().numpy(), reference["forces"], 1e-3 * scale_of(reference["forces"]) + 1e-5, f"{case}: float32 vs float64 forces")


# ---------------------------------------------------------------------- derivatives
def check_forces(case: PluginCase) -> None:
    """Forces equal central finite differences of the energy (float64)."""
    _needs_energy_model(case)
    structures = case.structures()
    for atoms in {id(a): a for a in (structures[0], structures[-1])}.values():
        out = case.evaluate([atoms])
        forces, energy = out["forces"], float(out["energy"][0])
        tol = 1e-6 * scale_of(forces) + 1e-9 * max(1.0, abs(energy))
        for atom, axis in [(0, 0), (1, 1), (2, 2), (len(atoms) - 1, 0)]:
            numeric = numerical_force(case.energy, atoms, atom, axis, FD_STEP)
            _assert_close(forces[atom, axis], numeric, tol, f"{case}: force on atom {atom} axis {axis} of {atoms.get_chemical_formula()} vs finite differences")


def check_stress(case: PluginCase) -> None:
    """Stress equals the finite strain derivative of the energy over the volume (float64)."""
    _needs_energy_model(case)
    if not case.periodic:
        raise CheckSkipped(f"{case}: periodic structures are skipped ({case.skip['periodic']})")
    atoms = st.periodic_alloy(case.elements)
    out = case.evaluate([atoms], stress=True)
    stress, volume, energy = out["stress"][0], atoms.get_volume(), float(out["energy"][0])
    tol = 1e-5 * scale_of(stress) + 1e-8 * max(1.0, abs(energy)) / volume
    for i, j in [(0, 0), (1, 2), (0, 1)]:
        numeric = numerical_stress(case.energy, atoms, i, j, STRAIN_STEP)
        _assert_close(stress[i, j], numeric, tol, f"{case}: stress[{i},{j}] vs finite strain differences")


# ---------------------------------------------------------------------- symmetries
def _check_symmetry(case: PluginCase, transform, what: str, map_forces, map_rows) -> None:
    _needs_energy_model(case)
    descriptor = getattr(getattr(case.potential, "energy_model", None), "descriptor", None) if case.group == "descriptors" else None
    for atoms in case.structures():
        other = transform(atoms)
        a, b = case.evaluate([atoms]), case.evaluate([other])
        _assert_close(b["energy"], a["energy"], _energy_tol(a["energy"], case.rtol), f"{case}: energy under {what} of {atoms.get_chemical_formula()}")
        _assert_close(b["forces"], map_forces(a["forces"]), case.rtol * scale_of(a["forces"]) + 1e-12, f"{case}: forces under {what}")
        if descriptor is not None:
            fa = _features(descriptor, case.graph(atoms)).detach().numpy()
            fb = _features(descriptor, case.graph(other)).detach().numpy()
            _assert_close(fb, map_rows(fa), case.rtol * scale_of(fa) + 1e-12, f"{case}: features under {what}")


def check_rotation(case: PluginCase) -> None:
    """Energy and features invariant, forces covariant, under a proper rotation."""
    rotation = st.random_rotation(7)

    def rotate(atoms):
        out = atoms.copy()
        out.positions = atoms.positions @ rotation.T
        if atoms.pbc.any():
            out.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
        return out

    _check_symmetry(case, rotate, "rotation", lambda f: f @ rotation.T, lambda x: x)


def check_translation(case: PluginCase) -> None:
    """Energy, forces and features unchanged by a translation (wrapped back into periodic cells)."""
    shift = np.array([0.37, -1.21, 2.05])

    def translate(atoms):
        out = atoms.copy()
        out.positions += shift
        if atoms.pbc.any():
            out.wrap()
        return out

    _check_symmetry(case, translate, "translation", lambda f: f, lambda x: x)


def check_permutation(case: PluginCase) -> None:
    """Energy invariant; forces and features permuted with the atoms."""
    results = []
    for atoms in case.structures():
        perm = np.random.default_rng(len(atoms)).permutation(len(atoms))
        if len(atoms) > 1 and np.all(perm == np.arange(len(atoms))):
            perm = np.roll(perm, 1)
        results.append(perm)
    perms = iter(results)
    current: dict = {}

    def permute(atoms):
        current["perm"] = next(perms)
        return atoms[current["perm"]]

    _check_symmetry(case, permute, "permutation", lambda f: f[current["perm"]], lambda x: x[current["perm"]])


def check_batch(case: PluginCase) -> None:
    """A structure's energy and forces do not depend on what else is in its batch."""
    _needs_energy_model(case)
    structures = case.structures()
    together = case.evaluate(structures)
    start = 0
    for k, atoms in enumerate(structures):
        alone = case.evaluate([atoms])
        n = len(atoms)
        _assert_close(together["energy"][k], alone["energy"][0], _energy_tol(alone["energy"], case.rtol), f"{case}: energy of structure {k} in a batch vs alone")
        _assert_close(together["forces"][start:start + n], alone["forces"], case.rtol * scale_of(alone["forces"]) + 1e-12, f"{case}: forces of structure {k} in a batch vs alone")
        start += n


# ---------------------------------------------------------------------- smoothness
def check_cutoff(case: PluginCase) -> None:
    """Energy and forces continuous as a neighbour crosses each cutoff radius (smooth cutoff)."""
    _needs_energy_model(case)
    atoms, start, direction = st.leaving_atom_path(case.elements)
    index = len(atoms) - 1

    def at(t):
        return case.evaluate([st.moved(atoms, index, start + t * direction)])

    radii = case.cutoff_radii()
    crossings = sorted({t for r in radii for t in st.crossing_times(atoms, start, direction, r)})
    if not crossings:
        raise AssertionError(f"{case}: the test path crosses none of the cutoff radii {radii}")
    far = crossings[-1] + 0.5
    scan = [at(t) for t in np.linspace(0.0, far, 9)]
    e_far = float(scan[-1]["energy"][0])
    e_scale = max(abs(float(s["energy"][0]) - e_far) for s in scan)
    f_scale = max(scale_of(s["forces"]) for s in scan)
    if e_scale < 1e-12:
        raise AssertionError(f"{case}: the energy does not change as an atom leaves a cluster (radii {radii}); nothing to test")
    delta = 1e-6
    for t in crossings:
        inside, outside = at(t - delta), at(t + delta)
        where = f"{case}: crossing a cutoff at t = {t:.4f} Å along the path (radii {radii})"
        _assert_close(outside["energy"], inside["energy"], 1e-4 * e_scale, f"{where}: energy jumps")
        _assert_close(outside["forces"], inside["forces"], 1e-3 * f_scale, f"{where}: forces jump (is the cutoff function smooth, with zero slope at the cutoff?)")


# ---------------------------------------------------------------------- state
def check_state_dict(case: PluginCase) -> None:
    """Weights survive torch.save / torch.load(weights_only=True) into a freshly built model."""
    _needs_energy_model(case)
    state = case.potential.state_dict()
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise AssertionError(f"{case}: state_dict entry {key!r} is a {type(value).__name__}, not a tensor")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    try:
        loaded = torch.load(buffer, weights_only=True)
    except Exception as exc:
        raise AssertionError(f"{case}: state_dict does not load with weights_only=True: {exc}") from exc
    fresh = case.build_potential(torch.float64, seed=case.seed + 12345)
    try:
        fresh.load_state_dict(loaded, strict=True)
    except RuntimeError as exc:
        raise AssertionError(f"{case}: a freshly built model rejects the saved state_dict: {exc}") from exc
    structures = case.structures()
    a, b = case.evaluate(structures), case.evaluate(structures, model=fresh)
    _assert_close(b["energy"], a["energy"], 1e-12 * max(1.0, scale_of(a["energy"])), f"{case}: energy after a state_dict round trip (state outside the state_dict?)")
    _assert_close(b["forces"], a["forces"], 1e-12 * max(1.0, scale_of(a["forces"])), f"{case}: forces after a state_dict round trip")


def check_pure(case: PluginCase) -> None:
    """A forward pass changes no state (train or eval mode) and repeats exactly in eval mode."""
    _needs_energy_model(case)
    potential = case.potential
    before = {k: v.detach().clone() for k, v in potential.state_dict().items()}
    structures = case.structures()
    was_training = potential.training
    try:
        potential.train()
        case.evaluate(structures)
        potential.eval()
        first, second = case.evaluate(structures), case.evaluate(structures)
    finally:
        potential.train(was_training)
    for key, value in potential.state_dict().items():
        if not torch.equal(value, before[key]):
            raise AssertionError(f"{case}: a forward pass changed {key!r} (hidden state breaks DDP, resume and compile)")
    _assert_close(second["energy"], first["energy"], 0.0, f"{case}: two identical eval-mode calls differ")


def check_compile(case: PluginCase) -> None:
    """``torch.compile`` gives the eager result (backend from $MLIP_CONFORMANCE_COMPILE_BACKEND, default aot_eager)."""
    if not case.supports_compile:
        raise CheckSkipped(f"{case}: the plugin does not declare supports_compile = True")
    backend = os.environ.get(COMPILE_BACKEND_ENV, "aot_eager")
    import torch._dynamo

    torch._dynamo.reset()
    try:
        if case.group == "descriptors":
            module = case.instantiate(torch.float64, num_species=len(case.elements), cutoff=case.cutoff)
            compiled = torch.compile(module, backend=backend)
            structures = case.structures()
            for atoms in {id(a): a for a in (structures[0], structures[-1])}.values():
                graph = case.graph(atoms)
                expected = _features(module, graph).detach().numpy()
                actual = _features(compiled, graph).detach().numpy()
                _assert_close(actual, expected, 1e-10 * scale_of(expected), f"{case}: compiled ({backend}) vs eager features")
            return
        _needs_energy_model(case)
        model = copy.deepcopy(case.potential)
        model.energy_model = torch.compile(model.energy_model, backend=backend)
        structures = case.structures()
        for atoms in {id(a): a for a in (structures[0], structures[-1])}.values():
            a, b = case.evaluate([atoms]), case.evaluate([atoms], model=model)
            _assert_close(b["energy"], a["energy"], _energy_tol(a["energy"]), f"{case}: compiled ({backend}) vs eager energy")
            _assert_close(b["forces"], a["forces"], 1e-9 * scale_of(a["forces"]), f"{case}: compiled ({backend}) vs eager forces")
    finally:
        torch._dynamo.reset()


CHECKS: dict[str, Callable[[PluginCase], None]] = {
    "contract": check_contract,
    "float64": check_float64,
    "float32": check_float32,
    "forces": check_forces,
    "stress": check_stress,
    "rotation": check_rotation,
    "translation": check_translation,
    "permutation": check_permutation,
    "batch": check_batch,
    "cutoff": check_cutoff,
    "state_dict": check_state_dict,
    "pure": check_pure,
    "compile": check_compile,
}

MODEL_CHECKS = [name for name in CHECKS if name not in ("contract", "compile")]
GROUP_CHECKS: dict[str, list[str]] = {
    "descriptors": ["contract", *MODEL_CHECKS],
    "readouts": ["contract", *MODEL_CHECKS],
    "routers": ["contract", *MODEL_CHECKS],
    "energy_models": ["contract", *MODEL_CHECKS],
    "long_range": ["contract", *MODEL_CHECKS],
    "charge_models": ["contract", *MODEL_CHECKS],
    "callbacks": ["contract"],
}


def checks_for(case: PluginCase) -> list[str]:
    """The check names that apply to ``case`` (``compile`` only where the plugin claims support)."""
    names = list(GROUP_CHECKS.get(case.group, ["contract"]))
    if case.supports_compile and case.group in GROUP_CHECKS and case.group != "callbacks":
        names.append("compile")
    return names


def run_check(case: PluginCase, check: str) -> None:
    """Run one check; raises ``CheckSkipped`` if the plugin documents it as not applicable."""
    if check not in CHECKS:
        raise ValueError(f"unknown conformance check {check!r}; known: {', '.join(CHECKS)}")
    if check in case.skip:
        raise CheckSkipped(f"{case}: {check} skipped: {case.skip[check]}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # structures are tiny: threads only add overhead (and spin under load)
    try:
        with default_dtype(torch.float64):
            CHECKS[check](case)
    except (AssertionError, CheckSkipped):
        raise
    except Exception as exc:  # the plugin raised: report it as this check's failure, with the cause chained
        raise AssertionError(f"{case}: check {check!r} raised {type(exc).__name__}: {exc}") from exc
    finally:
        torch.set_num_threads(threads)
