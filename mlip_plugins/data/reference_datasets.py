"""The held-out reference DFT datasets (``../shared/datasets``): where they are, how to read them.

The datasets are never copied into the repository. Tests and ``benchmarks/real_data.py`` find
them through ``MLIP_DATASETS`` (default: the folder ``shared/datasets`` beside the repository
root's parent, i.e. ``<repo>/../shared/datasets``) and skip where they are absent.

``READERS`` says, per folder, which files hold structures and which reader settings
(``data.keys``, ``data.file_format``, ``data.require_energy``) read them as they are, so that
the same settings serve the tests, the benchmark and a user's ``mlip-train`` command line.
Files in formats ASE does not read (n2p2 ``input.data``, GPUMD's ``.out``/``.npz`` goldens)
are not listed; their extxyz conversions in the same folder carry the same labels.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

from mlip_plugins.errors import MLIPError

ENV_VAR = "MLIP_DATASETS"


class DatasetNotFound(MLIPError, FileNotFoundError):
    """A reference dataset (or the datasets folder) is not on this machine."""


def datasets_root() -> Path:
    """``$MLIP_DATASETS``, else ``../shared/datasets`` beside the repository: the checkout this
    module was imported from (an editable install), or else the working directory's (a
    non-editable install runs from site-packages; tests and benchmarks run in the checkout)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / "pyproject.toml").exists():
        checkout = Path.cwd()
    return checkout.parent / "shared" / "datasets"


def dataset_path(folder: str, *parts: str) -> Path:
    """Path of a file (or folder) in the reference datasets; ``DatasetNotFound`` if absent."""
    path = datasets_root().joinpath(folder, *parts)
    if not path.exists():
        raise DatasetNotFound(f"{path}: not found (set {ENV_VAR} to the folder holding the reference datasets)")
    return path


@dataclass(frozen=True)
class FileReader:
    """Files of one folder (a glob relative to it) and the reader settings they need."""

    pattern: str
    keys: dict = field(default_factory=dict)
    file_format: str | None = None
    require_energy: bool = True
    #: labels every frame of these files carries (checked by tests/test_reference_datasets.py)
    labels: tuple[str, ...] = ("energy", "forces")


#: mlearn stores VASP's stress in kB (order xx yy zz xy yz xz, positive = compressive)
MLEARN_KEYS = {"stress_kB_vasp": "virial_stress_kB_vasp"}
#: n2p2 / RuNNer conversions: Hirshfeld charges as ASE's initial_charges, total_charge in info
N2P2_KEYS = {"charges": "initial_charges"}

READERS: dict[str, list[FileReader]] = {
    "mlearn_zuo2020": [FileReader("*.extxyz", MLEARN_KEYS, labels=("energy", "forces", "stress"))],
    "gpumd_nep4_test_CHN_2022": [FileReader("nep3/*.extxyz")],
    "gpumd_pbte": [FileReader("train.xyz", file_format="gpumd-xyz")],
    "gpumd_qnep": [FileReader("train.xyz", file_format="gpumd-xyz")],
    "gpumd_pytest_fixtures_and_nep_models": [
        FileReader("fixtures/training/train.xyz", file_format="gpumd-xyz"),
        FileReader("fixtures/structures/*.xyz", require_energy=False, labels=()),
    ],
    "gromacs_nacl_frames": [FileReader("*.xyz", N2P2_KEYS, labels=("energy", "forces", "stress", "charges"))],
    "hea25_subset_metatrain": [FileReader("*.xyz", labels=("energy", "forces", "stress"))],
    "ko2021_au2_mgo_4g_subset": [FileReader("*.extxyz", N2P2_KEYS, labels=("energy", "forces", "charges", "total_charge"))],
    "ko2021_carbon_chain_4g_subset": [FileReader("*.extxyz", N2P2_KEYS, labels=("energy", "forces", "charges", "total_charge"))],
    "ko2021_nacl_clusters_4g_subset": [FileReader("*.xyz", N2P2_KEYS, labels=("energy", "forces", "charges", "total_charge"))],
    "water_rpbe_d3_4g_n2p2_subset": [FileReader("*.extxyz", N2P2_KEYS, labels=("energy", "forces", "charges", "total_charge"))],
    "water_h2o_rpbe_d3_les_test": [FileReader("*.xyz")],
    "lode_dimers_cace_lr_fit": [FileReader("*.xyz")],
    "spice_subsets_bec_les_fit": [FileReader("*.xyz")],
    "torchnep_golden": [
        FileReader("set_v2026-05/mixed.xyz", file_format="gpumd-xyz", labels=("energy", "forces", "stress")),
        FileReader("*/CrCoNi.xyz", require_energy=False, labels=()),
        FileReader("set_v2026-05/PdCuNiP.xyz", require_energy=False, labels=()),
    ],
}


def files_of(folder: str, reader: FileReader) -> list[Path]:
    """The files of ``folder`` that ``reader`` matches (sorted)."""
    return [Path(p) for p in sorted(glob.glob(str(dataset_path(folder) / reader.pattern)))]
