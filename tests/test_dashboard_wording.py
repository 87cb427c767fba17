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


def test_relative_scale_spans_each_units_own_range():
    """A forget gate between 0.85 and 0.99 is nearly one colour on the fixed scale, the whole ramp on the relative."""
    import numpy as np

    from gatelens.dashboards import charts, render

    f = np.stack([np.linspace(0.85, 0.99, 8), np.linspace(0.2, 0.3, 8)], axis=1)
    sig = {"forget_gate": f, "input_gate": f}
    tokens = list("abcdefgh")
    light, dark = render.colours(np.array([0.0, 1.0]), render.Scale("sequential", 0.0, 1.0))
    rel = render.unit_rows_html(tokens, sig, "forget_gate", [0, 1], relative=True)
    fixed = render.unit_rows_html(tokens, sig, "forget_gate", [0, 1])
    for html in (rel,):
        assert html.count(f"background:{light[0]}") == 2 and html.count(f"background:{dark[0]}") == 2
    assert f"background:{light[0]}" not in fixed  # on [0, 1] none of these values is the lightest colour
    assert "0.85 to 0.99" in rel
    chart = charts.series_with_strips(
        __import__("pandas").DataFrame({"step": range(8), "x": np.arange(8.0)}), sig, [0, 1], relative=True
    )
    strip = chart.vconcat[1].data
    for u in (0, 1):
        shade = strip.loc[strip["unit"] == u, "shade"]
        assert shade.min() == 0.0 and shade.max() == 1.0
    np.testing.assert_array_equal(strip.loc[strip["unit"] == 0, "value"], f[:, 0])
