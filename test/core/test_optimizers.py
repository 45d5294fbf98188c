"""The seed's optimisers: update rules and separate step sizes."""

import pytest
import torch

from diffdrr_ros.core.optimizers import OPTIMIZERS, make_optimizer


def _quadratic_run(name, steps=200, **kw):
    rot = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
    trans = torch.tensor([30.0, -10.0, 5.0], requires_grad=True)
    opt, _ = make_optimizer(name, [rot], [trans], **kw)
    for _ in range(steps):
        opt.zero_grad()
        loss = (rot**2).sum() + 1e-3 * (trans**2).sum()  # translations in mm: much flatter
        loss.backward()
        opt.step()
    return rot.detach(), trans.detach()


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_descends_a_quadratic(name):
    lrs = {"gd": (0.1, 100.0), "gdm": (0.05, 50.0), "gddm": (0.05, 50.0), "adam": (0.05, 1.0)}[name]
    rot, trans = _quadratic_run(name, lr_rotation=lrs[0], lr_translation=lrs[1])
    assert rot.abs().max() < 0.05 and trans.abs().max() < 1.0


def test_gd_step_is_lr_times_gradient_per_group():
    rot = torch.tensor([1.0], requires_grad=True)
    trans = torch.tensor([1.0], requires_grad=True)
    opt, _ = make_optimizer("gd", [rot], [trans], lr_rotation=0.1, lr_translation=2.0)
    (3 * rot + 5 * trans).sum().backward()
    opt.step()
    torch.testing.assert_close(rot.detach(), torch.tensor([1.0 - 0.1 * 3]))
    torch.testing.assert_close(trans.detach(), torch.tensor([1.0 - 2.0 * 5]))


def test_damped_momentum_velocity():
    # v1 = g; v2 = beta v1 + (1 - gamma) g   (PyTorch: the first step is undamped)
    p = torch.tensor([0.0], requires_grad=True)
    q = torch.tensor([0.0], requires_grad=True)
    opt, _ = make_optimizer("gddm", [p], [q], lr_rotation=1.0, lr_translation=1.0, momentum=0.9, dampening=0.2)
    for _ in range(2):
        opt.zero_grad()
        p.sum().backward()  # gradient 1
        opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([-(1.0 + 0.9 * 1.0 + 0.8 * 1.0)]))


def test_unknown_optimizer_and_scheduler():
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("lbfgs", [], [])
    _, sched = make_optimizer("adam", [torch.zeros(1, requires_grad=True)], [torch.zeros(1, requires_grad=True)],
                              plateau_patience=3)
    assert sched is not None
