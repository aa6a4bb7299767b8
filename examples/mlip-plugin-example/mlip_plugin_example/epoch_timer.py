"""EpochTimer: the wall time of every training epoch, logged and written to a JSON file.

A minimal Lightning callback plugin. It holds no model state; its only output is the metric
``time/epoch_s`` and, at the end of fitting, ``<dirpath>/<filename>`` on rank zero.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback


class EpochTimer(Callback):
    """Time each training epoch.

    Args:
        dirpath: folder of the JSON file (default: the trainer's ``default_root_dir``).
        filename: name of the JSON file.
    """

    def __init__(self, dirpath: str | None = None, filename: str = "epoch_times.json"):
        super().__init__()
        self.dirpath = dirpath
        self.filename = filename
        self.epoch_seconds: list[float] = []
        self._start: float | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._start is None:
            return
        seconds = time.perf_counter() - self._start
        self.epoch_seconds.append(seconds)
        pl_module.log("time/epoch_s", seconds, on_epoch=True, prog_bar=False, sync_dist=False)

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.global_rank != 0:
            return
        folder = Path(self.dirpath or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        payload = {"epoch_seconds": self.epoch_seconds, "total_seconds": sum(self.epoch_seconds)}
        (folder / self.filename).write_text(json.dumps(payload, indent=2) + "\n")

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_seconds": list(self.epoch_seconds)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epoch_seconds = list(state_dict.get("epoch_seconds", []))
