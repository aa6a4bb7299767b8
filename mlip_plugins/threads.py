"""How many CPU threads torch uses: one choice, made once at start-up by every command.

torch's default (one intra-op thread per core of the machine) oversubscribes a shared node:
beside any other CPU job, OpenMP threads spin against each other and a small training run
gets an order of magnitude slower. :func:`choose_threads` picks a count that fits what this
process was given, in this order:

1. an explicit setting (``threads=N`` in the config, ``--threads N`` on a command line);
2. ``OMP_NUM_THREADS`` (per process, as OpenMP defines it);
3. ``SLURM_CPUS_PER_TASK`` (the CPUs of this SLURM task);
4. the affinity mask (``os.sched_getaffinity``: the cores this process may run on; taskset,
   cgroups and SLURM's binding shrink it; ``os.cpu_count()`` where there is none), less the
   cores other processes keep busy (the 1-minute load average, ``os.getloadavg``): a shared
   node or a second training leaves fewer free cores, and threads beyond them only contend;

and for 3 and 4 divides the count by the number of local processes that share it (DDP ranks
on this node), at least one thread each. The inter-op pool gets the same count.
:func:`set_threads` applies the choice and reports it in one line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

log = logging.getLogger("mlip_plugins.threads")


@dataclass(frozen=True)
class ThreadChoice:
    """The thread counts and where they come from (for the start-up line)."""

    intra_op: int
    inter_op: int
    source: str

    def describe(self) -> str:
        return f"torch threads: {self.intra_op} intra-op, {self.inter_op} inter-op ({self.source})"


def _positive_int(value: object) -> int | None:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def available_cpus() -> int:
    """Cores this process may run on: the affinity mask, else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def busy_cpus() -> float:
    """Cores kept busy by running processes (the 1-minute load average; 0 where unknown)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


def choose_threads(requested: int | None = None, local_processes: int = 1, environ: Mapping[str, str] | None = None,
                   cpus: int | None = None, busy: float | None = None) -> ThreadChoice:
    """The thread counts for this process (see the module docstring for the order of the rules).

    Args:
        requested: an explicit count (None or 0: choose automatically).
        local_processes: processes on this node sharing the CPUs (DDP ranks; 1 otherwise).
        environ: the environment to read (default ``os.environ``).
        cpus: the affinity-mask count (default :func:`available_cpus`).
        busy: cores other processes keep busy (default :func:`busy_cpus`); only rule 4 uses it.
    """
    environ = os.environ if environ is None else environ
    explicit = _positive_int(requested)
    if requested not in (None, 0, "auto") and explicit is None:
        from mlip_plugins.models.builder import ConfigError

        raise ConfigError(f"threads: expected a positive integer or null (automatic), got {requested!r}")
    if explicit:
        return ThreadChoice(explicit, explicit, f"threads={explicit}")
    omp = _positive_int(environ.get("OMP_NUM_THREADS"))
    if omp:
        return ThreadChoice(omp, omp, f"OMP_NUM_THREADS={omp}")
    slurm = _positive_int(environ.get("SLURM_CPUS_PER_TASK"))
    if slurm:
        budget, source = slurm, f"SLURM_CPUS_PER_TASK={slurm}"
    else:
        cpus = cpus or available_cpus()
        busy = busy_cpus() if busy is None else float(busy)
        budget = max(1, min(cpus, cpus - round(busy)))
        source = f"{cpus} CPUs in the affinity mask" + (f", {busy:.1f} busy (load average)" if budget < cpus else "")
    processes = max(1, int(local_processes))
    count = max(1, budget // processes)
    if processes > 1:
        source += f" / {processes} local processes"
    return ThreadChoice(count, count, source)


def set_threads(requested: int | None = None, local_processes: int = 1) -> ThreadChoice:
    """Choose (:func:`choose_threads`), apply to torch and log the choice in one line.

    torch takes the inter-op count only before its inter-op pool has started; later calls
    keep the pool as it is (and say so in the line).
    """
    choice = choose_threads(requested, local_processes)
    torch.set_num_threads(choice.intra_op)
    try:
        torch.set_num_interop_threads(choice.inter_op)
    except RuntimeError:  # the pool already runs (a second call in one process)
        choice = ThreadChoice(choice.intra_op, torch.get_num_interop_threads(), choice.source + "; inter-op pool already started")
    log.info(choice.describe())
    return choice


def local_processes(trainer_cfg: Mapping) -> int:
    """Local processes of a Lightning run: ``LOCAL_WORLD_SIZE`` (torchrun), else ``trainer.devices``
    of a DDP run that Lightning launches itself (an int or a list of devices), else 1."""
    from_launcher = _positive_int(os.environ.get("LOCAL_WORLD_SIZE"))
    if from_launcher:
        return from_launcher
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, (list, tuple)):
        return max(1, len(devices))
    count = _positive_int(devices)
    return count if count and "ddp" in str(trainer_cfg.get("strategy", "")) else 1
