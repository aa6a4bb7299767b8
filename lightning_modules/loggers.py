"""A CSV logger that keeps the history of a resumed run.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts, so resuming a
crashed run (same run directory, ``ckpt_path=...``) would lose every row logged before the
crash. :class:`AppendingCSVLogger` continues the existing file instead: new rows are appended
under its header, and a new metric name rewrites the file with the wider header (the old rows
kept, their new columns empty), which is what Lightning does within one run.
"""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.rank_zero import rank_zero_only


class _AppendingExperimentWriter(ExperimentWriter):
    """``ExperimentWriter`` that continues an existing ``metrics.csv`` instead of deleting it."""

    def _check_log_dir_exists(self) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
            header = next(csv.reader(handle), [])
        self.metrics_keys = sorted(header)
        if header != self.metrics_keys:  # rows are written in sorted key order: realign the file once
            self._rewrite_with_new_header(self.metrics_keys)


class AppendingCSVLogger(CSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` that appends to an existing ``metrics.csv``."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None and rank_zero_only.rank == 0:  # other ranks get Lightning's dummy
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingExperimentWriter(log_dir=self.log_dir)
        return super().experiment
