"""Measured state energies: table sanity and agreement with the mendeleev database."""

from __future__ import annotations

import pytest
import torch

from mlip_plugins.charges.ensemble import atomic_data as ad


def test_known_values_and_state_energies():
    # NIST: IP(H) = 13.598 eV, IP(Li) = 5.392 eV; CRC: EA(Cl) = 3.613 eV, EA(H) = 0.754 eV
    assert ad.ionisation_energy(1) == pytest.approx(13.5984, abs=1e-4)
    assert ad.ionisation_energy(3) == pytest.approx(5.3917, abs=1e-4)
    assert ad.electron_affinity(17) == pytest.approx(3.6127, abs=1e-4)
    assert ad.state_energy(1, -1) == pytest.approx(-0.7542, abs=1e-4)
    assert ad.state_energy(12, 2) == pytest.approx(7.6462 + 15.0353, abs=1e-3)
    assert ad.state_energy(1, 2) is None  # no H2+ ion
    assert ad.electron_affinity(7, bound_only=True) is None and ad.electron_affinity(7) == ad.UNBOUND_ANION_EA
    energies, mask = ad.state_table([1, 11], (2, 1, 0, -1))
    assert energies.dtype == torch.float64 and mask.tolist() == [[False, True, True, True], [True, True, True, True]]


def test_table_is_physical():
    for z, (symbol, ip1, ip2, ea) in ad.ATOMIC_STATE_DATA.items():
        assert 3.0 < ip1 < 25.0, symbol
        assert ip2 is None or ip2 > ip1, symbol
        assert ea is None or 0.0 < ea < ip1, symbol  # a bound anion, and IP > EA (convex E(N))


def test_bad_state_sets_and_elements():
    with pytest.raises(ValueError, match="neutral"):
        ad.check_state_charges((1, -1))
    with pytest.raises(ValueError, match="unsupported"):
        ad.check_state_charges((3, 0))
    with pytest.raises(ad.MissingAtomicDataError, match="H..Rn"):
        ad.ionisation_energy(92)


def test_table_matches_mendeleev():
    """Every tabulated value equals mendeleev's database (read with sqlite3: importing mendeleev takes ~15 s)."""
    import importlib.util
    import sqlite3
    from pathlib import Path

    spec = importlib.util.find_spec("mendeleev")
    if spec is None or spec.origin is None:
        pytest.skip("mendeleev is not installed")
    db = sqlite3.connect(Path(spec.origin).with_name("elements.db"))
    ionisation = {(z, d): e for z, d, e in db.execute("select atomic_number, ion_charge + 1, ionization_energy from ionizationenergies where ion_charge <= 1")}
    affinity = dict(db.execute("select atomic_number, electron_affinity from elements"))
    for z, (symbol, ip1, ip2, ea) in ad.ATOMIC_STATE_DATA.items():
        assert ip1 == pytest.approx(ionisation[(z, 1)], abs=6e-5), symbol
        assert (ip2 is None and (z, 2) not in ionisation) or ip2 == pytest.approx(ionisation[(z, 2)], abs=6e-5), symbol
        reference = affinity[z]
        assert (ea is None and (reference is None or reference <= 0)) or ea == pytest.approx(reference, abs=6e-5), symbol
