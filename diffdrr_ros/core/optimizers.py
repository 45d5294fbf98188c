"""The seed's optimisers, with separate step sizes for rotation and translation.

Built on ``torch.optim`` (well kept, fused, tested) rather than written by hand:

* ``gd``   - gradient descent, the seed's eq. 3: ``theta -= alpha * grad``
  (``SGD(momentum=0)``).
* ``gdm``  - GD with momentum, eq. 4: ``v = beta * v + grad; theta -= alpha * v``
  (``SGD(momentum=beta)``; the seed writes the velocity with a ``(1 - beta)`` factor, which
  only rescales ``alpha``).
* ``gddm`` - GD with damped momentum, eq. 5: ``v = beta * v + (1 - gamma) * grad``
  (``SGD(momentum=beta, dampening=gamma)``; DiffDRR's experiment used 0.9 / 0.2).
* ``adam`` - Adam, eq. 6 (``Adam(betas=(0.9, 0.999))``).

Rotation and translation parameters sit in two parameter groups with their own step
sizes (rad and mm per step for Adam, whose steps are scale-free; per unit gradient for
the GD family). An optional reduce-on-plateau schedule halves both when the loss stalls.
"""

from __future__ import annotations

import torch
from torch import Tensor

OPTIMIZERS = ("gd", "gdm", "gddm", "adam")

# (rotation, translation) step sizes that work on the built-in phantom with -ZNCC.
DEFAULT_STEP_SIZES: dict[str, tuple[float, float]] = {
    "gd": (0.5, 100.0),
    "gdm": (0.05, 10.0),
    "gddm": (0.06, 12.0),
    "adam": (0.02, 2.0),
}


def make_optimizer(
    name: str,
    rotation_params: list[Tensor],
    translation_params: list[Tensor],
    *,
    lr_rotation: float | None = None,
    lr_translation: float | None = None,
    momentum: float = 0.9,
    dampening: float = 0.2,
    plateau_patience: int | None = None,
    plateau_factor: float = 0.5,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.ReduceLROnPlateau | None]:
    """Build the optimiser (and optional plateau scheduler) named ``name``."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {OPTIMIZERS}")
    d_rot, d_trans = DEFAULT_STEP_SIZES[name]
    groups = [
        {"params": rotation_params, "lr": d_rot if lr_rotation is None else lr_rotation},
        {"params": translation_params, "lr": d_trans if lr_translation is None else lr_translation},
    ]
    if name == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(groups, betas=(0.9, 0.999))
    elif name == "gd":
        opt = torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=0.0)
    elif name == "gdm":
        opt = torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=momentum)
    else:
        opt = torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=momentum, dampening=dampening)
    sched = None
    if plateau_patience is not None and plateau_patience > 0:
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=plateau_factor, patience=plateau_patience, threshold=1e-4
        )
    return opt, sched
