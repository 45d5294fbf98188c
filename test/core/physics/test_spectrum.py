"""The tube spectrum (diffdrr_ros.core.physics.spectrum)."""

import pytest
import torch

from diffdrr_ros.core.physics import Spectrum
from diffdrr_ros.core.sim import Spectrum as SimSpectrum


def test_bins_weights_and_filtration():
    assert SimSpectrum is Spectrum
    e, w = Spectrum(kvp=80.0, filtration_mm_al=2.5, bins=6).weights()
    assert e.shape == w.shape == (6,) and float(w.sum()) == pytest.approx(1.0)
    assert bool(torch.all(e.diff() > 0)) and float(e[0]) > 10.0 and float(e[-1]) < 80.0
    # More aluminium hardens the beam; a higher kVp too.
    assert Spectrum(filtration_mm_al=6.0).mean_energy() > Spectrum(filtration_mm_al=1.0).mean_energy()
    assert Spectrum(kvp=120.0).mean_energy() > Spectrum(kvp=70.0).mean_energy()
    with pytest.raises(ValueError):
        Spectrum(kvp=160.0)
    with pytest.raises(ValueError):
        Spectrum(bins=0)
