"""docs/api.md is the public contract: every name it lists exists, every command it lists is a subcommand."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from gatelens.models.cli import build_parser

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
