"""`diffdrr-ros study <name>`: the registry, its uniform shape, and lazy failure."""

import argparse

import pytest

from diffdrr_ros import studies
from diffdrr_ros.app.cli import build_parser, main


def test_registry_lists_the_seed_studies_with_the_same_two_functions():
    assert {"landscape", "optimizers", "montecarlo", "timing"} <= set(studies.STUDIES)
    for name in ("landscape", "optimizers", "montecarlo"):
        mod = studies.load_study(name)
        assert callable(mod.add_arguments) and callable(mod.run)


def test_cli_parses_a_study():
    args = build_parser().parse_args(["study", "montecarlo", "--n", "7", "--set", "init_keep=2"])
    assert args.command == "study" and args.study == "montecarlo" and args.n == 7
    assert args.overrides == ["init_keep=2"] and callable(args.func)


def test_a_missing_study_module_fails_only_when_invoked(monkeypatch, capsys):
    monkeypatch.setitem(studies.STUDIES, "ghost", ("no_such_module", "a study whose module is missing"))
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    studies.add_study_parser(sub)  # building the CLI does not fail
    args = parser.parse_args(["study", "ghost", "--whatever"])
    with pytest.raises(studies.StudyUnavailableError, match="no_such_module"):
        args.func(args)
    assert main(["study", "ghost", "--n", "3"]) == 1  # the CLI turns it into a clear error message
    assert "ghost" in capsys.readouterr().err
    with pytest.raises(studies.StudyUnavailableError, match="unknown study"):
        studies.load_study("nope")
