"""docs/api.md is the public contract: every name it lists exists, every command it lists is a subcommand."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from gatelens.cli.main import build_parser

API = Path(__file__).resolve().parent.parent / "docs" / "api.md"
TEXT = API.read_text(encoding="utf-8")
#: Dotted names in backticks or code lines, with an optional call: `gatelens.x.y(...)` -> gatelens.x.y
NAMES = sorted(set(re.findall(r"(?<![\w.])(gatelens(?:\.[A-Za-z_]\w*)+)", TEXT)))
COMMANDS = sorted(set(re.findall(r"^\s+gatelens ([a-z]+)\b", TEXT, flags=re.M)))


def resolve(name: str):
    """Import the longest module prefix of ``name``, then walk its attributes."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(name)


def test_the_contract_lists_names_and_commands():
    assert len(NAMES) >= 40 and {"extract", "analyze", "export", "dashboard"} <= set(COMMANDS)


@pytest.mark.parametrize("name", NAMES)
def test_every_listed_name_exists(name):
    resolve(name)  # AttributeError / ModuleNotFoundError: listed but missing


def test_a_missing_name_would_fail():
    with pytest.raises(AttributeError):
        resolve("gatelens.analysis.store.no_such_function")


def test_every_listed_command_is_a_subcommand():
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    missing = sorted(set(COMMANDS) - set(sub.choices))
    assert not missing, f"docs/api.md lists commands gatelens does not have: {missing}"


SOURCES = ("gatelens", "analysis", "models", "dashboards", "data")


def print_calls(source: str) -> list[int]:
    """Line numbers of every call of the builtin ``print`` in ``source`` (docstring examples are strings)."""
    import ast

    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
    ]


def test_no_module_prints_the_commands_write_through_cli_output():
    root = API.parent.parent
    found = {
        str(p.relative_to(root)): print_calls(p.read_text(encoding="utf-8"))
        for top in SOURCES
        for p in sorted((root / top).rglob("*.py"))
    }
    assert len(found) > 80  # every module of the package was read
    offenders = {p: lines for p, lines in found.items() if lines}
    assert not offenders, f"print() in library code (use logging, a progress callback or cli_output.say): {offenders}"


def test_the_print_check_finds_a_call():
    assert print_calls('"""print(1) in a docstring"""\nx = 1\nprint(x)\n') == [3]
