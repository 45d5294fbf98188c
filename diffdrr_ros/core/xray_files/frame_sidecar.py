"""The JSON sidecar ``<frame>.json`` that says what a frame file written by diffdrr-ros holds.

A frame written as ``f.png`` gets ``f.png.json``::

    {"format": "diffdrr-ros frame", "version": 1,
     "domain": "line_integral" | "intensity",     # what the pixel values stand for
     "stored_range": [lo, hi] | null,              # stored 0 and full_scale map to lo and hi
     "full_scale": 65535 | null,                    # null: the stored values are the values (.npy)
     "i0": 1.0,                                     # intensity of an unattenuated ray (intensity = i0 exp(-L))
     "volume_values": "attenuation" | "raw",       # attenuation (1/mm): L is an optical depth
     "pose_carm_deg_mm": [theta, phi, gamma, bx, by, bz],
     "detector": {"height", "width", "spacing_mm", "sdd_mm", "sid_mm", "principal_point_mm"}}

Line integrals ``L`` are attenuation x path length (dimensionless optical depth).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from jaxtyping import Float, Shaped

from ..geometry import Detector

__all__ = ["FRAME_DOMAINS", "FrameSidecar", "SidecarError", "sidecar_path"]

FRAME_DOMAINS = ("line_integral", "intensity")
_FORMAT = "diffdrr-ros frame"


class SidecarError(ValueError):
    """A sidecar that cannot be read or does not describe its frame file."""


def sidecar_path(frame_path: str | Path) -> Path:
    """``f.png`` -> ``f.png.json``."""
    p = Path(frame_path)
    return p.with_name(p.name + ".json")


@dataclass(frozen=True)
class FrameSidecar:
    """What a frame file holds, how it was scaled, and where it was taken (see the module doc)."""

    domain: str
    stored_range: tuple[float, float] | None = None
    full_scale: int | None = None
    i0: float = 1.0
    volume_values: str = "attenuation"
    pose_carm_deg_mm: tuple[float, ...] | None = None
    detector: dict | None = None

    def __post_init__(self) -> None:
        if self.domain not in FRAME_DOMAINS:
            raise SidecarError(f"sidecar domain must be one of {FRAME_DOMAINS}, got {self.domain!r}")
        if (self.stored_range is None) != (self.full_scale is None):
            raise SidecarError("sidecar stored_range and full_scale go together")
        if self.i0 <= 0:
            raise SidecarError(f"sidecar i0 must be positive, got {self.i0}")

    @staticmethod
    def detector_dict(det: Detector) -> dict:
        """The JSON form of a :class:`Detector` (floats, mm)."""
        return {"height": int(det.height), "width": int(det.width),
                "spacing_mm": [float(s) for s in det.spacing_mm], "sdd_mm": float(det.sdd_mm),
                "sid_mm": float(det.sid), "principal_point_mm": [float(p) for p in det.principal_point_mm]}

    def values(self, stored: Shaped[np.ndarray, "H W"]) -> Float[np.ndarray, "H W"]:
        """The physical values (line integrals or intensities) of the stored pixels, float64."""
        x = np.asarray(stored, dtype=np.float64)
        if self.stored_range is None:
            return x
        lo, hi = self.stored_range
        return lo + x / float(self.full_scale) * (hi - lo)

    def write(self, frame_path: str | Path) -> Path:
        """Write ``<frame_path>.json``; returns its path."""
        out = sidecar_path(frame_path)
        payload = {"format": _FORMAT, "version": 1, **asdict(self)}
        out.write_text(json.dumps(payload, indent=2) + "\n")
        return out

    @classmethod
    def read(cls, frame_path: str | Path) -> FrameSidecar | None:
        """The sidecar of ``frame_path``, or ``None`` when there is none.

        Raises:
            SidecarError: a sidecar that is not JSON or not a diffdrr-ros frame description.
        """
        path = sidecar_path(frame_path)
        if not path.is_file():
            return None
        try:
            payload = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SidecarError(f"{path}: cannot read the frame sidecar: {exc}") from exc
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise SidecarError(f"{path}: not a {_FORMAT!r} sidecar (delete or rename it to read {frame_path} alone)")
        try:
            rng = payload.get("stored_range")
            pose = payload.get("pose_carm_deg_mm")
            return cls(domain=payload["domain"], stored_range=None if rng is None else (float(rng[0]), float(rng[1])),
                       full_scale=payload.get("full_scale"), i0=float(payload.get("i0", 1.0)),
                       volume_values=str(payload.get("volume_values", "attenuation")),
                       pose_carm_deg_mm=None if pose is None else tuple(float(v) for v in pose),
                       detector=payload.get("detector"))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise SidecarError(f"{path}: malformed frame sidecar: {exc}") from exc
