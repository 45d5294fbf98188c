"""What an unmodelled source-to-detector distance does to the registered pose.

A DRR of the head phantom rendered with the detector at each ``--sdd`` (SID fixed), then
registered with a detector configured at ``--configured`` from the true pose: the mTRE
(mm) and the ZNCC. The match stays near perfect while the depth is wrong, which is why the
node follows the SDD in the joint state (``joints.follow_sdd``).

    .venv/bin/python bench/bench_sdd_error.py --sdd 1020 1040 1100
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from diffdrr_ros.core.geometry import Detector  # noqa: E402
from diffdrr_ros.core.registration import Registrar, RegistrationConfig  # noqa: E402
from diffdrr_ros.core.volume.phantoms import make_phantom  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sdd", type=float, nargs="+", default=[1020.0, 1040.0, 1100.0], help="true SDDs, mm")
    p.add_argument("--configured", type=float, default=1020.0, help="the SDD the registration assumes, mm")
    p.add_argument("--sid", type=float, default=750.0)
    args = p.parse_args(argv)
    vol = make_phantom("head")
    cfg = RegistrationConfig(init_search=False)

    def detector(sdd: float) -> Detector:
        return Detector(128, 128, spacing_mm=(3.125, 3.125), sdd_mm=sdd, sid_mm=args.sid)

    reg = Registrar(vol, detector(args.configured), cfg, device="cpu")
    print(f"| true SDD (registration assumes {args.configured:g} mm) | mTRE mm | ZNCC |\n|---|---|---|")
    for sdd in args.sdd:
        truth_reg = Registrar(vol, detector(sdd), cfg, device="cpu")
        truth = truth_reg.pose_from_carm([0.1, 0.2, 0.0], [3.0, -2.0, 4.0])
        res = reg.register(truth_reg.render(truth).numpy(), truth, truth=truth)
        print(f"| {sdd:g} mm | {res.mtre_mm:.2f} | {res.zncc:.5f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
