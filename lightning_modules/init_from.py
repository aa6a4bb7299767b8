"""Fine-tuning: ``init_from=<file>`` starts training from an existing model instead of a fresh one.

    mlip-train experiment=nep init_from=nep.txt data.path=train.xyz     # GPUMD's NEP, trained on
    mlip-train init_from=runs/.../checkpoints/best.ckpt data.path=new.xyz

* a GPUMD ``nep.txt``: the architecture is the file's (elements, cutoffs, n_max, basis, l_max,
  neurons, ZBL, charge mode; the config's NEP regularisation and seed are kept), and so are the
  weights, descriptor coefficients and descriptor scaler (the ``nep_scaler`` callback leaves a
  loaded scaler as it is). E0 is 0 and the energy scale 1 (a nep.txt has both folded in), so the
  first step's loss is the loaded model's loss;
* a training checkpoint or an exported model (``.ckpt``/``.pt``): its model config and weights
  (the EMA copy where there is one). Unlike ``ckpt_path`` (resume), the optimizer, schedule and
  step count start afresh.

No E0 or energy scale is fitted from the data: the loaded model's are kept.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mlip_plugins.model_files import model_file_format
from mlip_plugins.models.builder import ConfigError

#: keys of the config's NEP model that a nep.txt does not define, kept from the config
KEPT_NEP_KEYS = ("lambda_1", "lambda_2", "seed")


def initial_model(path: str | os.PathLike, model_cfg: Mapping[str, Any]) -> tuple[dict, dict[str, torch.Tensor]]:
    """(model config, Potential state dict) of the model in ``path`` (see the module docstring)."""
    path = Path(path)
    where = f"init_from={path}"
    if not path.is_file():
        raise ConfigError(f"{where}: no such file (a GPUMD nep.txt, a training checkpoint or an exported model)")
    if model_file_format(path) == "nep":  # told apart by content, as everywhere
        from mlip_plugins.nep.nep_txt import nep_model_config, nep_to_potential, read_nep

        content = read_nep(path)
        config = nep_model_config(content)
        ours = ((model_cfg.get("energy") or {}).get("model") or {}) if isinstance(model_cfg.get("energy"), Mapping) else {}
        for key in KEPT_NEP_KEYS:
            if key in ours:
                config["energy"]["model"][key] = ours[key]
        potential = nep_to_potential(content, dtype=torch.get_default_dtype())
        return config, potential.state_dict()
    from mlip_plugins.checkpoint import load_torch_file, split_checkpoint

    config, weights, _ = split_checkpoint(load_torch_file(path), path)
    return dict(config), dict(weights)


def load_initial_weights(module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Copy ``state`` (a Potential's state dict) into the module's model and its EMA copy."""
    targets = [module.model] + ([module.ema.module] if getattr(module, "ema", None) is not None else [])
    for target in targets:
        try:
            target.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())[:300]
            raise ConfigError(f"{where}: the weights do not fit the model ({detail})") from None
