"""The polychromatic signal model (diffdrr_ros.core.physics.poly_model)."""

import pytest
import torch

from diffdrr_ros.core.physics import (
    PolyModel,
    Spectrum,
    mass_attenuation,
    primary_transmission,
    primary_transmission_reference,
)
from diffdrr_ros.core.sim import polychromatic_transmission


def _thicknesses(b=2, h=3, w=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(b, 2, h, w, generator=g, dtype=torch.float64)
    return a * torch.tensor([20.0, 3.0], dtype=torch.float64)[None, :, None, None]  # g/cm^2 soft, bone


def test_transmission_against_a_direct_per_energy_sum_and_the_simulator():
    spec = Spectrum(kvp=90.0, filtration_mm_al=3.0, bins=5)
    model = PolyModel.from_spectrum(spec)
    a = _thicknesses()
    # Direct: the spectrum's own bins, energy-integrating weights w E, each energy's Beer-Lambert.
    energies, w = spec.weights()
    direct = torch.zeros(2, 3, 4, dtype=torch.float64)
    for e, wk in zip(energies, w, strict=True):
        mu_s, mu_b = mass_attenuation("soft", e), mass_attenuation("bone", e)
        direct += wk * e * torch.exp(-(mu_s * a[:, 0] + mu_b * a[:, 1]))
    direct /= (w * energies).sum()
    t, _ = primary_transmission(model, a)
    torch.testing.assert_close(t, direct, rtol=1e-12, atol=0)
    torch.testing.assert_close(primary_transmission_reference(model, a), direct, rtol=1e-12, atol=0)
    torch.testing.assert_close(polychromatic_transmission(a[:, 0], a[:, 1], spec), direct, rtol=1e-12, atol=0)
    assert float(primary_transmission(model, torch.zeros(1, 2, 1, 1))[0]) == pytest.approx(1.0)
    # Beam hardening: the effective attenuation of 20 cm of water is below that of its first cm.
    thin = -torch.log(primary_transmission(model, torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1))[0])
    thick = -torch.log(primary_transmission(model, torch.tensor([20.0, 0.0]).reshape(1, 2, 1, 1))[0])
    assert float(thick) < 20 * float(thin) * 0.95


def test_mu_eff_is_the_derivative_of_the_effective_line_integral():
    model = PolyModel.from_spectrum(Spectrum(bins=4))
    a = _thicknesses(1, 2, 2).requires_grad_(True)
    t, mu_eff = primary_transmission(model, a, want_mu_eff=True)
    (-torch.log(t)).sum().backward()
    torch.testing.assert_close(a.grad, mu_eff, rtol=1e-10, atol=1e-12)
    # Between the bins' extremes, and bone attenuates more than water per gram.
    assert bool(torch.all(mu_eff[:, 1] > mu_eff[:, 0]))
    soft = mu_eff[:, 0]
    assert bool(torch.all(soft <= model.mu_rho[0].max())) and bool(torch.all(soft >= model.mu_rho[0].min()))


def test_counting_detector_and_validation():
    spec = Spectrum(bins=3)
    counting = PolyModel.from_spectrum(spec, energy_integrating=False)
    torch.testing.assert_close(counting.detector_weights, spec.weights()[1])
    with pytest.raises(ValueError):
        PolyModel(torch.ones(3), torch.ones(2), torch.ones(2, 3), ("soft", "bone"))
    with pytest.raises(ValueError):
        PolyModel.from_spectrum(spec, scatter_to_primary=-0.1)
