"""``gatelens intervene`` and ``gatelens sweep``: interventions on gates, units and states from the command line.

``gatelens intervene MODEL DATA --do "lstm:5:forget_gate=1@10:20" [--do ...] [--targets FILE] --out DIR`` writes
``interventions.csv`` (one row per intervention and metric, with its bootstrap interval) and
``intervention_steps.csv`` (per intervention, sequence, step and metric; streamed batch by batch);
``gatelens sweep MODEL DATA --layer lstm --op zero [--signal hidden_state] --out DIR`` writes ``sweep.csv``.
Each ``--do`` is one experiment (several ``--do`` give several rows); ``+`` joins interventions applied together
(``--do "lstm:1:forget_gate=0+lstm:1:input_gate=0"``). Without ``--targets`` the metric is the mean absolute
change of the model's output. Columns: docs/csv-columns.md.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from gatelens.errors import DataError, UsageError
from gatelens.models.argtypes import MAX_BOOTSTRAP, add_input_options, bootstrap, seed
from gatelens.models.cli_output import ProgressBar, say

INTERVENTIONS_COLUMNS = [
    "intervention", "layer", "units", "signal", "op", "value", "steps", "metric",
    "original", "intervened", "effect", "ci_low", "ci_high", "n_sequences",
]  # fmt: skip
STEPS_COLUMNS = ["intervention", "sequence", "step", "metric", "original", "intervened", "effect"]
SWEEP_COLUMNS = [
    "layer", "unit", "signal", "op", "value", "steps", "metric",
    "original", "intervened", "effect", "ci_low", "ci_high", "n_sequences", "rank",
]  # fmt: skip


def _data_opts(sp: argparse.ArgumentParser) -> None:
    add_input_options(sp)
    sp.add_argument("--out", required=True, help="output directory (created; only gatelens's own CSVs are replaced)")
    sp.add_argument(
        "--targets",
        help="targets: .npy/.npz (key y) or a CSV (sequence[, step], target) with one value per sequence or "
        "per step (integers: classes, -1 none; floats: regression); 'next-token' for a text model",
    )
    sp.add_argument(
        "--metric", action="append", help="loss, prob, logit_diff, accuracy, mse or output_change (repeatable)"
    )
    sp.add_argument("--class", dest="class_id", type=int, help="the class for prob and logit_diff")
    sp.add_argument("--contrast", type=int, help="logit_diff against this class (default: the best other class)")
    sp.add_argument("--features", help="CSV (sequence, step, columns) for steps 'where:FEATURE'")
    sp.add_argument(
        "--bootstrap",
        type=bootstrap,
        default=1000,
        help=f"bootstrap resamples for the intervals (at most {MAX_BOOTSTRAP})",
    )
    sp.add_argument(
        "--seed", type=seed, default=0, help="seed of the bootstrap and of 'resample' (a whole number >= 0)"
    )


def register(sub: Any) -> None:
    """Add ``intervene`` and ``sweep`` to the ``gatelens`` subcommands."""
    p = sub.add_parser("intervene", help="what if a gate did otherwise: clamp, ablate, patch or steer, and the effect")
    _data_opts(p)
    p.add_argument(
        "--do",
        action="append",
        required=True,
        help="LAYER:UNITS:SIGNAL=VALUE[@STEPS], e.g. 'lstm:5:forget_gate=1@10:20'; VALUE a number, '+=' a number "
        "(steer), zero, mean, resample or patch; UNITS 5, 3,5 or all; STEPS all, 12, 10:20, 3,7,9 or "
        "where:FEATURE; '+' joins interventions applied together",
    )
    p.add_argument("--source", help="input data that 'patch' takes its values from (same shape as DATA)")
    p.add_argument("--no-steps", action="store_true", help="do not write intervention_steps.csv")
    p.set_defaults(func=cmd_intervene)

    s = sub.add_parser("sweep", help="single-unit interventions over every unit of a layer, ranked by effect")
    _data_opts(s)
    s.add_argument("--layer", required=True, help="the layer (contract name, e.g. lstm or bidirectional/forward)")
    s.add_argument("--op", default="zero", help="zero, mean, resample, set or add (default zero)")
    s.add_argument("--signal", default="hidden_state", help="the signal (default hidden_state)")
    s.add_argument("--value", type=float, help="the value for --op set/add")
    s.add_argument("--steps", default="all", help="all, 12, 10:20, 3,7,9 or where:FEATURE")
    s.add_argument("--units", help="only these units (e.g. 0,3,5); default all")
    s.set_defaults(func=cmd_sweep)


# -- inputs -----------------------------------------------------------------------------------------------------


def _load(args: argparse.Namespace):
    from gatelens.cli.main import _load_model_and_data

    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: expected a positive integer")
    return _load_model_and_data(args)


def load_targets(path: str, n: int, t: int) -> np.ndarray:
    """Targets from ``path`` for ``n`` sequences of ``t`` steps: (n,) or (n, t) (int classes or float values)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: {'a folder, not a targets file' if p.is_dir() else 'no such targets file'}")
    if p.suffix in (".npy", ".npz"):  # the data loader's readers: within its size caps, every malformed file one line
        from gatelens.models.data import _read_npy_file, _read_npz_file, max_data_bytes

        if p.suffix == ".npy":
            arr = _read_npy_file(p, max_data_bytes(), None)[0]
        else:
            arr = _read_npz_file(p, max_data_bytes(), None, keys=("y", "targets"))[0]
        if arr.ndim == 2 and arr.shape[1] == 1 and t != 1:
            arr = arr[:, 0]
        if arr.shape[0] != n or arr.ndim > 3:
            raise DataError(f"{path}: targets have shape {arr.shape}; the data has {n} sequences of {t} steps")
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise DataError(f"{path}: targets must be numbers, got {arr.dtype}")
        return arr
    import pandas as pd

    try:
        df = pd.read_csv(p)
    except Exception as e:
        raise DataError(f"{path}: not a readable CSV ({str(e).splitlines()[0]})") from None
    if "sequence" not in df.columns or "target" not in df.columns:
        raise DataError(f"{path}: line 1: expected columns sequence[, step], target; got {list(df.columns)}")
    for col in [c for c in ("sequence", "step") if c in df.columns]:
        v = pd.to_numeric(df[col], errors="coerce")
        bad = np.flatnonzero(~np.isfinite(v) | (v < 0) | (v != np.round(v)) | (v >= (n if col == "sequence" else t)))
        if bad.size:
            raise DataError(
                f"{path}: line {bad[0] + 2}: {col} {df[col].astype(str).iloc[bad[0]]} is not in "
                f"0..{(n if col == 'sequence' else t) - 1}"
            )
    if df.empty:
        raise DataError(f"{path}: no rows after the header; expected a target per sequence (or per sequence and step)")
    keys = [c for c in ("sequence", "step") if c in df.columns]
    dup = np.flatnonzero(df.duplicated(keys, keep=False).to_numpy())
    if dup.size:
        first = df.iloc[dup[0]]
        again = dup[1:][(df.iloc[dup[1:]][keys].to_numpy() == first[keys].to_numpy()).all(axis=1)][0]
        where = ", ".join(f"{k} {int(first[k])}" for k in keys)
        raise DataError(
            f"{path}: line {dup[0] + 2} and line {again + 2}: {where} given twice; expected one target each"
        )
    vals = pd.to_numeric(df["target"], errors="coerce")
    bad = np.flatnonzero(vals.isna().to_numpy() & df["target"].notna().to_numpy())
    if bad.size:
        raise DataError(f"{path}: line {bad[0] + 2}: target {df['target'].iloc[bad[0]]!r} is not a number")
    integer = bool(np.all(vals.dropna() == np.round(vals.dropna()))) and not str(df["target"].dtype).startswith("float")
    seq = df["sequence"].to_numpy(np.int64)
    if "step" in df.columns:
        out = np.full((n, t), -1 if integer else np.nan, np.int64 if integer else np.float64)
        out[seq, df["step"].to_numpy(np.int64)] = vals.to_numpy()
    else:
        out = np.full(n, -1 if integer else np.nan, np.int64 if integer else np.float64)
        out[seq] = vals.to_numpy()
    return out


def load_step_features(path: str, n: int, t: int) -> dict[str, np.ndarray]:
    """A features CSV (validated by :func:`gatelens.analysis.features.load_user_features`) as name -> (n, t)."""
    from gatelens.analysis.features import load_user_features

    df = load_user_features(path, SimpleNamespace(n_sequences=n, n_steps=t))
    out = {}
    s, k = df["sequence"].to_numpy(), df["step"].to_numpy()
    for col in df.columns:
        if col in ("sequence", "step"):
            continue
        a = np.full((n, t), np.nan)
        a[s, k] = df[col].to_numpy(np.float64)
        out[col] = a
    return out


def _common(args: argparse.Namespace):
    model, spec, data = _load(args)
    x = data.x
    n, t = x.shape[0], x.shape[1]
    targets: Any = None
    if args.targets:
        targets = "next_token" if args.targets in ("next-token", "next_token") else load_targets(args.targets, n, t)
    features = load_step_features(args.features, n, t) if args.features else None
    if args.bootstrap < 1:
        raise UsageError(f"--bootstrap {args.bootstrap}: expected a positive integer")
    return model, data, x, targets, features


# -- output -----------------------------------------------------------------------------------------------------


def _prepare_out(out: str, names: list[str], headers: dict[str, list[str]]) -> Path:
    """Create ``out``; refuse to replace a file there that gatelens did not write (its header differs)."""
    d = Path(out)
    if d.exists() and not d.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    d.mkdir(parents=True, exist_ok=True)
    for name in names:
        p = d / name
        if p.exists():
            with open(p, encoding="utf-8", errors="replace") as f:
                first = f.readline().strip()
            if first != ",".join(headers[name]):
                raise UsageError(f"--out {out}: {name} exists and was not written by gatelens; not replacing it")
    return d


class _AtomicCsv:
    """A CSV written to a temporary file next to ``path`` and renamed into place by :meth:`commit`."""

    def __init__(self, path: Path, header: list[str]) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        self.f = open(self.tmp, "w", encoding="utf-8", newline="")
        self.w = csv.writer(self.f)
        self.w.writerow(header)

    def rows(self, rows) -> None:
        self.w.writerows(rows)

    def commit(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if not self.f.closed:
            self.f.close()
        self.tmp.unlink(missing_ok=True)


def _fmt(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if not np.isfinite(v) else repr(v)
    return v


def _progress(label: str) -> ProgressBar:
    return ProgressBar(label)


#: A '+' that joins two interventions: not the '+' of '+=' (steer) nor the sign of a number ('1e+3', '+0.5').
_JOIN = re.compile(r"\+(?![=\d.])")


def split_joined(text: str) -> list[str]:
    """The interventions of one ``--do`` value, ``'+'`` joining those applied together.

    Examples
    --------
    >>> split_joined("lstm:0:hidden_state+=0.5+lstm:1:forget_gate=1e+3@2")
    ['lstm:0:hidden_state+=0.5', 'lstm:1:forget_gate=1e+3@2']
    >>> split_joined("lstm:5:forget_gate=1+")
    Traceback (most recent call last):
    gatelens.errors.UsageError: --do 'lstm:5:forget_gate=1+': an empty intervention after or before '+' (a '+' joins two)
    """
    parts = _JOIN.split(text)
    if len(parts) > 1 and not all(p.strip() for p in parts):
        raise UsageError(f"--do {text!r}: an empty intervention after or before '+' (a '+' joins two)")
    return parts


def cmd_intervene(args: argparse.Namespace) -> int:
    from gatelens.models.intervene import Intervener, Intervention, evaluate

    experiments = [[Intervention.parse(part) for part in split_joined(d)] for d in args.do]
    labels = ["+".join(one.label for one in ivs) for ivs in experiments]
    model, data, x, targets, features = _common(args)
    source = None
    if args.source:
        from gatelens.models.data import load_data
        from gatelens.models.spec import input_spec

        source = load_data(args.source, input_spec(model, vocabulary=data.vocabulary), window=args.window).x
    iv = Intervener(model)
    t = x.shape[1]
    for ivs in experiments:
        for one in ivs:
            iv.check(one, t, features)
    out = _prepare_out(
        args.out,
        ["interventions.csv", "intervention_steps.csv"],
        {"interventions.csv": INTERVENTIONS_COLUMNS, "intervention_steps.csv": STEPS_COLUMNS},
    )
    steps_csv = None if args.no_steps else _AtomicCsv(out / "intervention_steps.csv", STEPS_COLUMNS)

    def on_steps(v: int, start: int, metric: str, e: dict[str, np.ndarray]) -> None:
        eff = e["effect"]
        nb, ts = eff.shape
        seq, step = np.nonzero(np.isfinite(eff))
        out_step = step if ts == t else np.full_like(step, t - 1)  # a per-sequence output: the last step
        o, i, d = e["original"][seq, step], e["intervened"][seq, step], eff[seq, step]
        steps_csv.rows(
            (labels[v], int(a) + start, int(b), metric, repr(float(p)), repr(float(q)), repr(float(r)))
            for a, b, p, q, r in zip(seq, out_step, o, i, d)
        )

    try:
        res = evaluate(
            iv, x, experiments, targets=targets, metrics=args.metric, class_id=args.class_id, contrast=args.contrast,
            source=source, features=features, batch_size=args.batch_size, seed=args.seed,
            progress=_progress("intervene"), on_steps=None if steps_csv is None else on_steps,
        )  # fmt: skip
        main = _AtomicCsv(out / "interventions.csv", INTERVENTIONS_COLUMNS)
        try:
            for row in res.summary(n_boot=args.bootstrap, seed=args.seed):
                ivs = experiments[row["variant"]]
                one = ivs[0] if len(ivs) == 1 else None
                main.rows(
                    [
                        [
                            labels[row["variant"]],
                            one.layer if one else ";".join(i.layer for i in ivs),
                            ("all" if one.units is None else ",".join(map(str, one.units))) if one else "",
                            one.signal if one else ";".join(i.signal for i in ivs),
                            one.op if one else ";".join(i.op for i in ivs),
                            _fmt(one.value) if one else "",
                            one.steps if one else ";".join(i.steps for i in ivs),
                            row["metric"],
                            *(_fmt(row[k]) for k in ("original", "intervened", "effect", "ci_low", "ci_high")),
                            row["n_sequences"],
                        ]
                    ]
                )
        except BaseException:
            main.abort()
            raise
        if steps_csv is not None:
            steps_csv.commit()
        main.commit()  # the summary last: its presence means the run finished
    except BaseException:
        if steps_csv is not None:
            steps_csv.abort()
        raise
    summary = res.summary(n_boot=min(args.bootstrap, 200), seed=args.seed)
    say(*(f"{labels[r['variant']]}: {r['metric']} {r['original']:.4g} -> {r['intervened']:.4g} (effect {r['effect']:+.4g})"
          for r in summary))  # fmt: skip
    say(f"wrote {out / 'interventions.csv'}" + ("" if steps_csv is None else f" and {out / 'intervention_steps.csv'}"))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from gatelens.models.intervene import Intervener, Intervention, _parse_units, sweep

    if args.op in ("set", "add") and args.value is None:
        raise UsageError(f"gatelens sweep: --op {args.op} needs --value V (the value to {args.op})")
    Intervention(args.layer, args.signal, args.op, args.value, None, args.steps)  # field checks before loading
    model, data, x, targets, features = _common(args)
    iv = Intervener(model)
    units = _parse_units(args.units, "--units") if args.units else None
    iv.check(Intervention(args.layer, args.signal, args.op, args.value, units, args.steps), x.shape[1], features)
    out = _prepare_out(args.out, ["sweep.csv"], {"sweep.csv": SWEEP_COLUMNS})
    df = sweep(
        iv, x, args.layer, op=args.op, signal=args.signal, value=args.value, units=units, steps=args.steps,
        targets=targets, metrics=args.metric, batch_size=args.batch_size, n_boot=args.bootstrap, seed=args.seed,
        features=features, progress=_progress("sweep"),
    )  # fmt: skip
    w = _AtomicCsv(out / "sweep.csv", SWEEP_COLUMNS)
    try:
        w.rows([[_fmt(r[c]) if not isinstance(r[c], (np.integer,)) else int(r[c]) for c in SWEEP_COLUMNS]
                for r in df.to_dict("records")])  # fmt: skip
        w.commit()
    except BaseException:
        w.abort()
        raise
    top = df.iloc[0]
    say(
        f"wrote {out / 'sweep.csv'}: {df['unit'].nunique()} units of {args.layer}; rank 1: unit {int(top['unit'])} "
        f"({top['metric']} effect {top['effect']:+.4g})"
    )
    return 0
