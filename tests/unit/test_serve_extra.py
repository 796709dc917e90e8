"""The PanDA test double is a distribution of its own (``serve/``, hpcpilot-serve): the hpcpilot package
holds no HTTP server, and ``hpcpilot serve`` delegates to hpcpilot-serve where it is installed, or refuses
in one line where it is not."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

import pytest

from hpcpilot import cli
from tests.pilotrun import REPO


def _imported_modules(source: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_hpcpilot_package_imports_no_http_server_and_not_the_double() -> None:
    for path in (REPO / "hpcpilot").rglob("*.py"):
        imported = _imported_modules(path.read_text())
        assert not {name for name in imported if name.startswith(("http.server", "hpcpilot_serve"))}, path


def test_the_double_is_its_own_distribution_depending_on_hpcpilot() -> None:
    pilot = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert all(not pattern.startswith("hpcpilot_serve") and pattern != "hpcpilot*"
               for pattern in pilot["tool"]["setuptools"]["packages"]["find"]["include"])
    serve = tomllib.loads((REPO / "serve" / "pyproject.toml").read_text())["project"]
    assert serve["name"] == "hpcpilot-serve" and serve["dependencies"] == ["hpcpilot"]
    assert serve["scripts"] == {"hpcpilot-serve": "hpcpilot_serve.cli:main"}


def test_serve_without_the_double_installed_refuses_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "hpcpilot_serve", None)  # as if hpcpilot-serve were not installed
    for argv in (["serve"], ["serve", "--port", "0", "--state", "panda.db"], ["serve", "--help"]):
        assert cli.main(argv) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and "pip install ./serve" in err and "hpcpilot-serve" in err


def test_serve_with_the_double_installed_is_its_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("hpcpilot_serve")
    from hpcpilot_serve.cli import main, run_serve

    assert cli.build_parser().parse_args(["serve", "--port", "0", "--state", "panda.db"]).func is run_serve
    assert main(["--dump", str(tmp_path / "none.db")]) == 2  # the hpcpilot-serve console script, same refusals
    assert capsys.readouterr().err == f"hpcpilot serve: no server state file {tmp_path / 'none.db'}\n"


def test_serve_on_an_address_this_machine_lacks_refuses_in_one_line(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("hpcpilot_serve")
    from hpcpilot_serve.cli import main

    # --host: the nodes tier's server listens on its bridge; 203.0.113.0/24 (TEST-NET-3) is nobody's here
    assert main(["--host", "203.0.113.77", "--port", "0", "--state", str(tmp_path / "s.db")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hpcpilot serve: cannot serve on 203.0.113.77:0: ") and err.count("\n") == 1, err
