"""``gatelens search RUN``: every span of a run where the same units are on, or where a unit-signal condition holds.

    gatelens search RUN --span SEQ:START:END [--threshold T] [--layer L] [--signal S] --out matches.csv
    gatelens search RUN --where "forget_gate of lstm:5 below 0.1" --out matches.csv
    gatelens search RUN --pattern "0.1,0.5,0.9" --unit lstm:3 [--signal S] [--min-r R] --out matches.csv

A thin layer over :func:`gatelens.analysis.search.search`; the CSV has the columns of ``matches.csv``
(docs/csv-columns.md), best match first. A bad query (unknown layer, unit or signal, a span outside the
sequence, a threshold that is not a number) exits 2 with one line.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from gatelens.analysis.search import DEFAULT_LIMIT, QueryError
from gatelens.models.argtypes import checked
from gatelens.models.cli_output import check_replaceable, say

_number = checked(float, math.isfinite, "a finite number", "a number")
_count = checked(int, lambda v: v >= 1, "a number >= 1", "a whole number")


def cmd_search(args: argparse.Namespace) -> int:
    from gatelens.analysis.export import write_csv
    from gatelens.analysis.search import MATCH_COLUMNS, PatternQuery, SpanQuery, parse_span, search
    from gatelens.analysis.store import open_run

    # before the search: a user's file at --out is never replaced (a matches table gatelens wrote may be)
    check_replaceable(args.out, "gatelens search --out", [[MATCH_COLUMNS[0], "query", *MATCH_COLUMNS[1:]]])

    trace = open_run(args.run)
    query: Any
    if args.span is not None:
        s, a, b = parse_span(args.span)
        query = SpanQuery(s, a, b, 0.5 if args.threshold is None else args.threshold, args.layer,
                          args.signal or "hidden_state")  # fmt: skip
    elif args.where is not None:
        if args.threshold is not None:
            raise QueryError("gatelens search: --threshold goes with --span; a --where condition carries its own")
        query = args.where
    else:
        if args.unit is None:
            raise QueryError("gatelens search: --pattern needs --unit LAYER:N")
        layer, _, unit = args.unit.rpartition(":")
        try:
            values = tuple(float(v) for v in args.pattern.replace(",", " ").split())
        except ValueError:
            raise QueryError(
                f"gatelens search: --pattern must be numbers separated by commas, got {args.pattern!r}"
            ) from None
        query = PatternQuery(values, layer or (args.layer or trace.layers[0]), unit, args.signal or "hidden_state",
                             args.min_r)  # fmt: skip
    result = search(trace, query, layer=args.layer, limit=args.limit, min_length=args.min_length)
    m = result.matches.copy()
    m.insert(1, "query", result.query)
    write_csv(m, args.out)
    units = f"; units {', '.join(map(str, result.units))}" if result.units else ""
    say(f"{result.query}: {result.n_matches} match(es) in {args.run}{units}; wrote the best {len(m)} to {args.out}")
    return 0


def register(sub: Any) -> None:
    """Add the ``search`` subcommand to ``gatelens``'s subparsers."""
    p = sub.add_parser("search", help="find every span where the same units are on, or where a condition holds")
    p.add_argument("run", help="a run directory written by gatelens extract")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--span", metavar="SEQ:START:END", help="a span of one sequence (steps START..END-1)")
    q.add_argument("--where", metavar="CONDITION", help='e.g. "forget_gate of lstm:5 below 0.1"')
    q.add_argument("--pattern", metavar="V1,V2,...", help="values of one unit's signal to match by correlation")
    p.add_argument("--threshold", type=_number, help="with --span: a unit is on at >= T (default 0.5)")
    p.add_argument("--layer", help="the layer (default the first)")
    p.add_argument("--signal", help="with --span/--pattern: the signal (default hidden_state)")
    p.add_argument("--unit", metavar="LAYER:N", help="with --pattern: the unit")
    p.add_argument("--min-r", type=_number, default=0.9, help="with --pattern: the least correlation (default 0.9)")
    p.add_argument("--min-length", type=_count, default=1, help="shortest span returned (default 1)")
    p.add_argument(
        "--limit", type=_count, default=DEFAULT_LIMIT, help=f"best matches written (default {DEFAULT_LIMIT})"
    )
    p.add_argument("--out", required=True, help="the CSV file to write (matches.csv columns)")
    p.set_defaults(func=cmd_search)
