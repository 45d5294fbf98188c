"""The seed's studies, reproduced with this package's core: ``diffdrr-ros study <name>``.

Every study is a module with the same two functions, so the registry is uniform:

* ``add_arguments(parser)`` - its command-line options (``--out``, ``--ct`` ...);
* ``run(args) -> int`` - runs it, writes JSON/CSV and PNG plots under ``--out``, returns an
  exit status.

Studies: ``landscape`` (the loss around the true pose, the seed's Fig. 5), ``optimizers``
(GD, GDM, GDDM, Adam from the same starts, the seed's Table 2), ``montecarlo`` (N random
starts at +-45 deg / +-60 mm, the seed's Fig. 8 and its 82.7 %) and ``timing`` (the DRR
timing table, the seed's Table 1). A module that cannot be imported only fails when its
study is invoked, with the reason.
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType

#: study name -> (module in this package, one-line description)
STUDIES: dict[str, tuple[str, str]] = {
    "landscape": ("landscape", "loss around the true pose, 1-D sweeps and 2-D pairs (seed Fig. 5)"),
    "optimizers": ("optimizers", "GD, GDM, GDDM, Adam from the same random starts (seed Table 2)"),
    "montecarlo": ("montecarlo", "N random starts at +-45 deg / +-60 mm: success, mTRE, time (seed Fig. 8)"),
    "timing": ("timing", "DRR rendering time per image size and patch size (seed Table 1)"),
}


class StudyUnavailableError(RuntimeError):
    """A registered study whose module cannot be imported."""


def load_study(name: str) -> ModuleType:
    """Import the module of study ``name`` (raises :class:`StudyUnavailableError` with the reason)."""
    if name not in STUDIES:
        raise StudyUnavailableError(f"unknown study {name!r}; choose from {sorted(STUDIES)}")
    module = STUDIES[name][0]
    try:
        mod = importlib.import_module(f"{__name__}.{module}")
    except ImportError as exc:
        raise StudyUnavailableError(f"study {name!r} is not available ({__name__}.{module}: {exc})") from exc
    for fn in ("add_arguments", "run"):
        if not callable(getattr(mod, fn, None)):
            raise StudyUnavailableError(f"study {name!r}: {mod.__name__} has no {fn}()")
    return mod


def _unavailable(reason: str):
    def run(args: argparse.Namespace) -> int:
        raise StudyUnavailableError(reason)

    return run


def add_study_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``study <name> ...`` to a CLI's sub-commands (``args.func(args)`` runs it)."""
    p = subparsers.add_parser("study", help="run one of the seed's studies (landscape, optimizers, ...)",
                              description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="study", required=True, metavar="NAME")
    for name, (_, help_text) in STUDIES.items():
        try:
            mod = load_study(name)
        except StudyUnavailableError as exc:
            # Accept any arguments (no option prefix), so the reason is what the user sees.
            q = sub.add_parser(name, help=help_text + " [unavailable]", prefix_chars="\0", add_help=False)
            q.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
            q.set_defaults(func=_unavailable(str(exc)))
            continue
        q = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(q)
        q.set_defaults(func=mod.run)
    return p


__all__ = ["STUDIES", "StudyUnavailableError", "add_study_parser", "load_study"]
