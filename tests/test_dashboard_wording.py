"""Dashboard wording: articles that fit every archetype, controls named instead of command-line flags."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gatelens.analysis.clusters import ARCHETYPES
from gatelens.dashboards import core
from gatelens.dashboards.explain import with_article
from gatelens.errors import DataError

ROOT = Path(__file__).resolve().parent.parent


def test_no_template_hard_codes_an_article_before_a_name():
    """An f-string like "is a {kind}" reads "is a input-driven" for some values: every article comes from with_article."""
    for path in (ROOT / "dashboards").rglob("*.py"):
        hits = re.findall(r"""\b(?:a|an) \{(?!with_article)[^}]*\}""", path.read_text())
        assert not hits, f"{path.name}: {hits}"


@pytest.mark.parametrize("archetype", ARCHETYPES)
def test_every_archetype_gets_its_article(archetype):
    phrase = with_article(archetype)
    assert phrase.split()[0] == ("an" if archetype[0] in "aeiou" else "a") and phrase.endswith(archetype)


def test_flags_become_dashboard_controls():
    msg = (
        "x.txt: the model takes token ids but has no vocabulary; pass --vocab FILE (a JSON list of tokens in id order)"
    )
    out = core.dashboard_message(DataError(msg))
    assert "--" not in out and "Data page" in out
    for flag in core.CONTROL_FOR_FLAG:
        assert "--" not in core.dashboard_message(DataError(f"bad window; {flag} 3"))
