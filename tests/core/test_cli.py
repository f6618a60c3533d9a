"""The ``python -m PACKAGE COMMAND`` dispatcher both packages share (:func:`mfassl.cli.run_commands`)."""

from __future__ import annotations

import sys
import types

import pytest

from mfassl.cli import run_commands


@pytest.fixture()
def fake_cli(monkeypatch):
    """A module ``fake_cli`` whose ``main`` and ``other`` record the arguments they get."""
    calls: list[tuple[str, list[str]]] = []
    module = types.ModuleType("fake_cli")
    module.main = lambda argv: calls.append(("main", list(argv))) or len(argv)
    module.other = lambda argv: calls.append(("other", list(argv)))
    monkeypatch.setitem(sys.modules, "fake_cli", module)
    return calls


def test_run_commands_hands_on_the_rest_and_its_status(fake_cli, capsys) -> None:
    table = {"go": ("fake_cli", "run main"), "second": ("fake_cli:other", "run other")}
    assert run_commands("prog", table, ["go", "a", "--b"]) == 2  # main's return value is the exit status
    assert run_commands("prog", table, ["second", "x"]) == 0  # None counts as 0
    assert fake_cli == [("main", ["a", "--b"]), ("other", ["x"])]
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("argv, status", [(["--help"], 0), (["-h"], 0), ([], 2), (["gone"], 2), (["GO"], 2)])
def test_run_commands_lists_the_commands(fake_cli, capsys, argv, status) -> None:
    table = {"go": ("fake_cli", "run main"), "second": ("fake_cli:other", "run other")}
    assert run_commands("python -m prog", table, argv) == status
    assert capsys.readouterr().out == ("usage: python -m prog COMMAND [ARGS]\n\ncommands:\n"
                                       "  go      run main\n  second  run other\n")
    assert fake_cli == []  # nothing was run
