"""A simulated C-arm's motion: scripted / random views, noisy delayed joints, patient motion.

The trajectory gives, for a time ``t`` (s), the C-arm joints (LAO/RAO, cranial/caudal,
detector rotation, table) and the true placement of the patient (CT) on the table, which
drifts slowly and jumps now and then (patient motion). Outputs in rad and mm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ..geometry.kinematics import CArmJoints, default_prior
from ..geometry.rotations import axis_angle_to_matrix, make_transform


@dataclass(frozen=True)
class Trajectory:
    """C-arm motion and patient motion over time.

    ``kind="sweep"``: LAO/RAO and cranial/caudal follow slow sinusoids (a scripted
    acquisition); ``kind="random"``: piecewise-constant views held for ``hold_s`` seconds.
    Angles in degrees here for readability; the outputs are rad and mm.
    """

    kind: str = "sweep"
    lao_amplitude_deg: float = 25.0
    cranial_amplitude_deg: float = 10.0
    period_s: float = 40.0
    hold_s: float = 3.0
    table_amplitude_mm: float = 10.0
    patient_drift_mm_per_s: float = 0.2
    patient_jump_every_s: float = 15.0  # a small jump (cough, repositioning) this often; 0 disables
    patient_jump_mm: float = 3.0
    patient_jump_deg: float = 1.5
    # Where the patient actually lies relative to the planned placement (CT centre on the
    # isocentre): the set-up error the first registration must find. mm, and degrees about x, y, z.
    setup_offset_mm: tuple[float, float, float] = (12.0, -8.0, 10.0)
    setup_offset_deg: tuple[float, float, float] = (3.0, -2.0, 4.0)
    seed: int = 0

    def joints(self, t: float) -> CArmJoints:
        """True C-arm joints at time ``t`` (s)."""
        if self.kind == "sweep":
            w = 2 * math.pi / self.period_s
            lao = math.radians(self.lao_amplitude_deg) * math.sin(w * t)
            cran = math.radians(self.cranial_amplitude_deg) * math.sin(0.5 * w * t)
        elif self.kind == "random":
            rng = np.random.default_rng([self.seed, int(t // self.hold_s)])
            lao = math.radians(self.lao_amplitude_deg) * rng.uniform(-1, 1)
            cran = math.radians(self.cranial_amplitude_deg) * rng.uniform(-1, 1)
        else:
            raise ValueError(f"unknown trajectory kind {self.kind!r} (sweep, random)")
        table_z = self.table_amplitude_mm * math.sin(2 * math.pi * t / (2 * self.period_s))
        return CArmJoints(lao_rad=lao, cranial_rad=cran, table_mm=(0.0, 0.0, table_z))

    def table_from_ct(self, t: float, ct_center: Float[Tensor, " 3"]) -> Float[Tensor, "4 4"]:
        """True ``T_table_ct`` at time ``t``: the CT on the table, drifting and jumping."""
        drift = torch.tensor([1.0, -0.5, 0.3], dtype=torch.float64)
        drift = drift / drift.norm() * self.patient_drift_mm_per_s * t
        trans = drift + torch.tensor(self.setup_offset_mm, dtype=torch.float64)
        rotvec = torch.tensor([math.radians(a) for a in self.setup_offset_deg], dtype=torch.float64)
        if self.patient_jump_every_s > 0:
            for k in range(1, int(t // self.patient_jump_every_s) + 1):
                rng = np.random.default_rng([self.seed, 1000 + k])
                trans += torch.from_numpy(rng.normal(size=3)) * self.patient_jump_mm / math.sqrt(3)
                rotvec += torch.from_numpy(rng.normal(size=3)) * math.radians(self.patient_jump_deg) / math.sqrt(3)
        motion = make_transform(axis_angle_to_matrix(rotvec), trans)
        # Rotate about the CT centre (in the table frame it sits at the origin).
        return motion @ default_prior(ct_center)


@dataclass(frozen=True)
class JointSensor:
    """How the C-arm reports its joints: Gaussian noise (deg, mm) and a latency (s)."""

    angle_noise_deg: float = 0.2
    table_noise_mm: float = 0.2
    latency_s: float = 0.03

    def read(self, trajectory: Trajectory, t: float, rng: np.random.Generator) -> CArmJoints:
        """What the controller publishes at ``t``: the joints at ``t - latency``, noisy."""
        j = trajectory.joints(t - self.latency_s)
        da = np.radians(rng.normal(0.0, self.angle_noise_deg, size=2))
        dt = rng.normal(0.0, self.table_noise_mm, size=3)
        return CArmJoints(lao_rad=j.lao_rad + float(da[0]), cranial_rad=j.cranial_rad + float(da[1]),
                          detector_rotation_rad=j.detector_rotation_rad, sdd_mm=j.sdd_mm,
                          table_mm=tuple(float(a + b) for a, b in zip(j.table_mm, dt, strict=True)))
