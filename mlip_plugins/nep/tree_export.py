"""Which energy trees a nep.txt can hold, and the plain NEP equivalent of those that are one.

A nep.txt describes one function: the NEP descriptor, scaled, into one tanh network per element
(plus ZBL and, for a qNEP, charges). An energy tree trained in this project is exported to it
only when it computes exactly that:

* ``{model: {name: nep}}``: written as it is;
* ``{descriptor: {name: nep}, readout: {name: moe, ...}}``, a NEP descriptor with a
  mixture-of-experts readout trained together, when the routing is element-wise (the gates are
  a per-element table), the experts have one hidden layer and the activation is ``tanh``: the
  active experts of each element merge (:meth:`mlip_plugins.moe.layer.MoEMLP.merge`) into one
  per-element tanh network of (shared + top-k) x hidden neurons, the descriptor scaler is 1,
  and the per-element output biases become per-element reference energies (which the writer
  folds in exactly).

Anything else (a sum with an ensemble-charge or long-range term, a structure-dependent router,
SiLU experts, deeper experts, a second term) is refused with :class:`NEPFormatError` naming the
tree and the reason, rather than writing a file GPUMD would evaluate differently.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from mlip_plugins.nep.nep_txt import NEPFormatError
from mlip_plugins.dtypes import default_dtype

ADVICE = "nep.txt holds a single NEP (descriptor -> one tanh network per element); export with --format pt instead"


def describe_tree(node: nn.Module) -> str:
    """A short text of an energy tree: ``sum(nep, ensemble_electrostatic)``, ``term(nep + moe)``."""
    from mlip_plugins.models.composition import Product, Sum, Term

    if isinstance(node, (Sum, Product)):
        return f"{'sum' if isinstance(node, Sum) else 'product'}({', '.join(describe_tree(t) for t in node.terms)})"
    if isinstance(node, Term):
        return f"{_plugin_name(node.descriptor)} descriptor + {_plugin_name(node.readout)} readout"
    return _plugin_name(node)


def _plugin_name(module: nn.Module) -> str:
    from mlip_plugins.moe.layer import MergedMoEReadout, MoEReadout
    from mlip_plugins.nep.descriptor import NEPDescriptor
    from mlip_plugins.nep.model import NEPModel

    known = {NEPModel: "nep", NEPDescriptor: "nep", MoEReadout: "moe", MergedMoEReadout: "moe (merged)"}
    return next((name for cls, name in known.items() if isinstance(module, cls)), type(module).__name__)


def nep_equivalent(potential):
    """``potential`` itself if its energy model is a NEP, else an equivalent Potential whose
    energy model is one (module docstring); :class:`NEPFormatError` (one line) otherwise."""
    from mlip_plugins.models.composition import Term
    from mlip_plugins.nep.model import NEPModel

    tree = getattr(potential, "energy_model", None)
    if isinstance(tree, NEPModel):
        return potential
    if tree is None:
        raise NEPFormatError(f"a {type(potential).__name__} is not a Potential with an energy tree; {ADVICE}")
    where = f"the energy tree is {describe_tree(tree)}"
    if not isinstance(tree, Term):
        raise NEPFormatError(f"{where}: only a NEP (or a NEP descriptor with an element-routed MoE readout) "
                             f"is a pure NEP; {ADVICE}")
    return _moe_term_as_nep(potential, tree, where)


def _merged_mlp(readout: nn.Module, where: str):
    """The per-element dense MLP of an MoE readout, or the reason it is not a NEP network."""
    from mlip_plugins.moe.layer import MergedMoEReadout, MoEReadout

    if isinstance(readout, MergedMoEReadout):
        mlp = readout.mlp
    elif isinstance(readout, MoEReadout):
        moe = readout.moe
        if not moe.can_merge():
            raise NEPFormatError(f"{where}: the {type(moe.router).__name__} routes by structure, not by element, so the "
                                 f"experts do not merge into per-element networks; {ADVICE}")
        if moe.activation_name != "tanh":
            raise NEPFormatError(f"{where}: the experts' activation is {moe.activation_name}, NEP's networks are tanh; {ADVICE}")
        mlp = moe.merge(readout.num_species)
    else:
        raise NEPFormatError(f"{where}: only an MoE readout with element-wise routing merges into NEP's networks; {ADVICE}")
    if mlp.first_w is None or len(mlp.mid_w):
        layers = 1 + len(mlp.mid_w) if mlp.first_w is not None else 0
        raise NEPFormatError(f"{where}: the experts have {layers} hidden layers, NEP's networks one; {ADVICE}")
    if not isinstance(mlp.act, nn.Tanh):
        raise NEPFormatError(f"{where}: the experts' activation is {type(mlp.act).__name__}, NEP's networks are tanh; {ADVICE}")
    return mlp


@torch.no_grad()
def _moe_term_as_nep(potential, term, where: str):
    from mlip_plugins.nep.descriptor import NEPDescriptor
    from mlip_plugins.nep.model import NEPModel

    if not isinstance(term.descriptor, NEPDescriptor):
        raise NEPFormatError(f"{where}: the descriptor is not NEP's; {ADVICE}")
    mlp = _merged_mlp(term.readout, where)
    first_w, first_b = mlp.first_w.detach(), mlp.first_b.detach()  # [S, D, H'], [S, H']
    last_w, last_b = mlp.last_w.detach()[..., 0], mlp.last_b.detach()[..., 0]  # [S, H'], [S]
    desc = term.descriptor
    dtype = first_w.dtype
    with default_dtype(dtype):
        nep = NEPModel(desc.num_species, neuron=int(first_w.shape[-1]), version=4, **desc.config())
    nep.descriptor.load_state_dict(desc.state_dict())
    # E = sum_h last_w tanh(q first_w + first_b) + last_b  ==  sum_h w1 tanh(w0 q - b0) - b1 (+ per-element constant)
    nep.w0.copy_(first_w.transpose(1, 2))
    nep.b0.copy_(-first_b)
    nep.w1.copy_(last_w)
    nep.b1.zero_()
    nep.q_scaler.fill_(1.0)
    nep.scaler_fitted.fill_(True)
    equivalent = copy.deepcopy(potential)
    equivalent.energy_model = nep.to(potential.e0.device)
    # the per-element output biases, in eV, join E0 (write_nep folds per-element E0 in exactly)
    equivalent.e0.add_(last_b.to(equivalent.e0) * equivalent.energy_scale)
    return equivalent
