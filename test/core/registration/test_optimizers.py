"""The seed's optimisers: update rules and separate step sizes."""

import pytest
import torch

from diffdrr_ros.core.registration.optimizers import OPTIMIZERS, make_optimizer


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


def test_plateau_is_absolute_so_small_steps_near_a_match_do_not_halve_the_rate():
    # Near a match -ZNCC is ~ -1 and improves by ~1e-5 per step: torch's default relative
    # threshold (1e-4 * |loss|) would call that a plateau and halve the steps again and again.
    p = torch.zeros(1, requires_grad=True)
    q = torch.zeros(1, requires_grad=True)
    opt, sched = make_optimizer("adam", [p], [q], lr_rotation=0.01, lr_translation=1.0, plateau_patience=3)
    for i in range(20):
        sched.step(-0.99 - 1e-5 * i)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 1.0]
    for _ in range(5):  # a true plateau still halves them
        sched.step(-0.99)
    assert [g["lr"] for g in opt.param_groups] == [0.005, 0.5]


def test_default_step_sizes_cover_every_optimizer():
    from diffdrr_ros.core.registration.optimizers import DEFAULT_STEP_SIZES

    assert set(DEFAULT_STEP_SIZES) == set(OPTIMIZERS)
    for name, (rot, trans) in DEFAULT_STEP_SIZES.items():
        assert rot > 0 and trans > 0
        if name != "adam":  # per unit gradient: translation gradients are ~1000x smaller per mm
            assert trans / rot > 1000
