"""``gatelens``: the command line, a thin layer over the same functions the dashboard uses.

Exit codes: 0 success; 2 bad input or usage (one plain line on stderr naming the file and the
problem, no traceback); 3 model rejected as unsafe or unsupported; 1 internal error.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from gatelens import __version__
from gatelens._console import interrupted
from gatelens.cli.intervene import register as register_intervene
from gatelens.cli.search import register as register_search
from gatelens.cli.windows import register as register_windows
from gatelens.errors import UsageError
from gatelens.models.argtypes import MAX_SAMPLE_SIZE, add_input_options, port, sample_size, tolerance
from gatelens.models.cli_output import ProgressBar, say
from gatelens.models.distributed import add_cluster_options, local_path, wants_cluster
from gatelens.models.zoo.cli import register

log = logging.getLogger("gatelens")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one plain line instead of usage + message
        raise UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")


def _load_model_and_data(args: argparse.Namespace):
    from gatelens.models import load_model
    from gatelens.models.data import load_data
    from gatelens.models.spec import input_spec, read_vocabulary, sidecar_vocabulary_path

    model = load_model(args.model)
    vocab = None
    if getattr(args, "vocab", None):
        vocab = read_vocabulary(args.vocab)
    else:
        side = sidecar_vocabulary_path(args.model)
        if side is not None:
            vocab = read_vocabulary(side)
    spec = input_spec(model, vocabulary=vocab, level=getattr(args, "level", None))
    data = load_data(
        args.data,
        spec,
        columns=getattr(args, "columns", None),
        window=getattr(args, "window", None),
        stride=getattr(args, "stride", None),
        level=getattr(args, "level", None),
        max_sequences=getattr(args, "max_sequences", None),
        time_column=getattr(args, "time_column", None),
    )
    return model, spec, data


def cmd_extract(args: argparse.Namespace) -> int:
    from gatelens.analysis.store import run_manifest, sha256_file
    from gatelens.models.extract import Extractor, write_run
    from gatelens.models.strings import record_unknown_tokens, recorded_unknown_tokens

    model, spec, data = _load_model_and_data(args)
    ex = Extractor(model, layers=args.layers)
    options = ("batch_size", "dtype", "layers", "window", "stride", "time_column", "level", "verify", "compile")
    manifest = run_manifest(
        {"path": str(args.model), "sha256": sha256_file(args.model), "name": model.name},
        data,
        {k: getattr(args, k) for k in options},
    )
    record_unknown_tokens(manifest, ex.front, strict=args.strict_vocab, where=str(args.data))
    run = write_run
    if wants_cluster(args):  # the same run, written by the workers of a Dask cluster
        from gatelens.models.distributed import cli_write_run as run
    trace = run(
        model if wants_cluster(args) else ex,
        data.x,
        args.out,
        batch_size=args.batch_size,
        layers=args.layers,
        dtype=args.dtype,
        tolerance=args.tolerance,
        progress=ProgressBar("extract"),
        vocabulary=data.vocabulary,
        feature_names=data.feature_names,
        manifest=manifest,
        verify=args.verify,
        sample_size=args.sample_size,
        compile=args.compile,
        **_cluster(args, model_path=args.model),
        strict_vocab=args.strict_vocab,
    )
    worst = max(trace.verification.values())
    unknown = recorded_unknown_tokens(trace.meta)
    vocab_note = f"; {unknown.describe()}" if unknown is not None else ""
    say(
        f"wrote {args.out}: {trace.n_sequences} sequences x {trace.n_steps} steps, layers {', '.join(trace.layers)}; "
        f"max |h recomputed - Keras| = {worst:.2e}{vocab_note}"
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from gatelens.models.extract import verification_errors

    model, spec, data = _load_model_and_data(args)
    errors = verification_errors(model, data.x, batch_size=args.batch_size, progress=ProgressBar("verify"))
    say(f"{'layer':<32} {'max_abs_error':>14}  status")
    failed = False
    for name, err in errors.items():
        ok = err <= args.tolerance
        failed |= not ok
        say(f"{name:<32} {err:>14.3e}  {'ok' if ok else 'FAIL'}")
    return 1 if failed else 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from gatelens.analysis.pipeline import analyze_run
    from gatelens.analysis.store import ANALYSIS_DIR

    run_analysis = analyze_run
    if wants_cluster(args):  # the same tables, computed by the workers of a Dask cluster
        from gatelens.analysis.distributed import cli_analyze_run as run_analysis
    result = run_analysis(args.run, features=args.features, progress=ProgressBar("analyze"), **_cluster(args))
    where = local_path(args.run) / ANALYSIS_DIR
    rows = {name: len(getattr(result, name)) for name in result.tables()}
    if result.events_file is not None:
        import pyarrow.parquet as pq

        rows["events"] = pq.ParquetFile(result.events_file).metadata.num_rows
    tables = ", ".join(f"{name} ({n} rows)" for name, n in rows.items())
    say(
        f"analysed {args.run} -> {where}: {tables}",
        *(f"  skipped {step}: {why}" for step, why in result.skipped.items()),
    )
    return 0


def _cluster(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """The keyword arguments of the distributed twin of a command (none without --workers/--scheduler)."""
    return {"workers": args.workers, "scheduler": args.scheduler, **extra} if wants_cluster(args) else {}


def cmd_export(args: argparse.Namespace) -> int:
    from gatelens.analysis.export import export_run, parse_sequences
    from gatelens.analysis.outpaths import check_export_dir
    from gatelens.analysis.pipeline import load_analysis
    from gatelens.analysis.store import open_run

    if args.csv or args.out:  # new, empty or a previous export: nothing else is touched
        check_export_dir(args.csv or args.out, add=args.add)
    trace = open_run(args.run)
    sequences = parse_sequences(args.sequences) if args.sequences else None
    if sequences is not None and sequences.start >= trace.n_sequences:  # would export headers only
        raise UsageError(
            f"gatelens export --sequences {args.sequences}: {args.run} has {trace.n_sequences} sequences "
            f"(0 to {trace.n_sequences - 1})"
        )
    if (Path(args.run) / "analysis").is_dir():
        result = load_analysis(args.run)
    else:
        result = None
        sys.stderr.write(
            f"gatelens: {args.run} has no analysis yet: writing activations.csv and units.csv only "
            f"(run 'gatelens analyze {args.run}' for every table)\n"
        )
    if (args.csv is None) == (args.out is None):
        raise UsageError(
            "gatelens export: give --csv DIR, or --out DIR [--format csv|parquet] (see 'gatelens export --help')"
        )
    if args.csv is not None and args.format != "csv":
        raise UsageError("gatelens export: --csv DIR writes CSV; use --out DIR --format parquet for Parquet")
    paths = export_run(
        trace,
        args.csv or args.out,
        format=args.format,
        analysis=result,
        layers=args.layers,
        signals=args.signals,
        sequences=sequences,
    )
    say(*(f"{name}: {path}" for name, path in paths.items()))
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    import socket

    from gatelens.dashboards.server import serve

    address = args.address or "0.0.0.0"
    try:  # a port in use: one line here, not Streamlit's own report after its start
        with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds (a closed one's port is free)
            s.bind((address, args.port))
    except OSError as e:
        raise UsageError(f"gatelens dashboard --port {args.port}: cannot listen on {address}: {e.strerror}") from None

    return serve(args.port, args.address)  # SIGTERM/SIGINT reach the Streamlit server; it is waited for


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="gatelens", description="See what the gates of a Keras LSTM/GRU keep and forget.")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    p.add_argument("--version", action="version", version=f"gatelens {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def data_opts(sp: argparse.ArgumentParser) -> None:
        add_input_options(sp)
        sp.add_argument("--tolerance", type=tolerance, default=1e-4, help="max accepted |h recomputed - Keras|")

    e = sub.add_parser("extract", help="re-run the recurrent layers and store every gate in a run directory")
    data_opts(e)
    e.add_argument("--out", required=True, help="the run directory to write (new, empty, or a run to replace)")
    e.add_argument("--layers", nargs="+", help="only these layers (contract names)")
    e.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    e.add_argument(
        "--strict-vocab", action="store_true", help="fail (exit 2) when a token is not in the model's vocabulary"
    )
    e.add_argument(
        "--verify",
        choices=["cell", "full", "sample"],
        default="cell",
        help="cell (default): every step of every sequence checked by Keras's own cell, and a sample of each "
        "batch by Keras's layer end to end; full: Keras's layer runs every sequence (a second forward pass); "
        "sample: only the sample (fastest)",
    )
    e.add_argument(
        "--sample-size",
        type=sample_size,
        default=8,
        help=f"sequences per batch Keras's layer re-runs with --verify cell or sample (at most {MAX_SAMPLE_SIZE})",
    )
    e.add_argument(
        "--compile",
        choices=["auto", "xla", "graph"],
        default="auto",
        help="auto (default): graph mode for small inputs (sequences x steps x units <= 4194304: XLA's "
        "compilation would cost more than it saves), XLA above; xla or graph: always that",
    )
    add_cluster_options(e)
    e.set_defaults(func=cmd_extract)

    v = sub.add_parser("verify", help="per layer: max |hidden state recomputed - Keras's own output|")
    data_opts(v)
    v.set_defaults(func=cmd_verify)

    a = sub.add_parser("analyze", help="statistics, memory, correlations, probes, clusters, events of a run")
    a.add_argument("run")
    a.add_argument("--features", help="CSV with columns sequence, step and one column per feature")
    add_cluster_options(a)
    a.set_defaults(func=cmd_analyze)

    x = sub.add_parser("export", help="write a run and its analysis as CSV files or Parquet")
    x.add_argument("run")
    x.add_argument("--csv", help="output directory for CSV files (same as --out DIR --format csv)")
    x.add_argument("--out", help="output directory")
    x.add_argument("--format", choices=["csv", "parquet"], default="csv", help="file format with --out (default csv)")
    x.add_argument("--layers", nargs="+", help="only these layers")
    x.add_argument("--signals", nargs="+", help="only these signals (activations, and tables with a signal column)")
    x.add_argument("--sequences", help="only sequences A:B (B excluded), e.g. 0:100")
    x.add_argument("--add", action="store_true", help="write into a folder that holds other files too")
    x.set_defaults(func=cmd_export)

    d = sub.add_parser("dashboard", help="serve the Streamlit dashboard")
    d.add_argument("--port", type=port, default=8501, help="the TCP port to serve on (1-65535; default 8501)")
    d.add_argument("--address", default=None)
    d.set_defaults(func=cmd_dashboard)

    register(sub)
    register_search(sub)
    register_intervene(sub)  # intervene, sweep
    register_windows(sub)
    return p


#: The hidden siblings gatelens writes a result into before it renames it into place (``.NAME.partial-1a2b``).
_HIDDEN_SIBLING = re.compile(r"^\.(?P<name>.+)\.(?:partial|tmp|trash|old)-[0-9a-f]+$")


def _os_error_line(e: OSError) -> str:
    """An OS error as one line that names the user's path: a hidden sibling gatelens was writing (``.run.partial-...``)
    is named by the path it was to become.

    Examples
    --------
    >>> _os_error_line(FileNotFoundError(2, "No such file or directory", "/proc/.run.partial-4f43"))
    '/proc/run: No such file or directory (while writing it; is its folder there and writable?)'
    >>> _os_error_line(FileNotFoundError(2, "No such file or directory", "data/x.npy"))
    'data/x.npy: No such file or directory'
    """
    if e.filename is None or e.strerror is None:
        return _one_line(e)
    path = Path(os.fsdecode(e.filename))
    if e.errno == errno.EEXIST and path.is_file():  # a folder to make where a file of the user's is (--out FILE/run)
        return f"{path}: is a file, not a folder: nothing can be written inside it"
    hidden = _HIDDEN_SIBLING.match(path.name)
    if hidden:
        return f"{path.with_name(hidden['name'])}: {e.strerror} (while writing it; is its folder there and writable?)"
    return f"{path}: {e.strerror}"


#: OS errors that are the user's environment, not a fault of gatelens: a path that is missing, of the wrong kind, not
#: writable (permissions, a read-only file system), too long, or a disk or quota that is full.
_USERS_ERRNOS = frozenset(
    {errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
     errno.ENAMETOOLONG, errno.ELOOP, errno.EEXIST}
)  # fmt: skip


def _is_users_os_error(e: OSError) -> bool:
    """Whether ``e`` is one of :data:`_USERS_ERRNOS` (exit 2, one line naming the path).

    Examples
    --------
    >>> _is_users_os_error(OSError(30, "Read-only file system", "out/run")), _is_users_os_error(OSError(5, "I/O"))
    (True, False)
    """
    return isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)) or (
        e.errno in _USERS_ERRNOS
    )


def _one_line(e: BaseException) -> str:
    """An error's message on one line (a user's error is always reported as exactly one line)."""
    return " ".join(str(e).split()) or type(e).__name__


#: Options whose value may start with "-" (a mistyped range such as "-1:3"): argparse takes such a value for an
#: option and reports "expected one argument"; attached as "--sequences=-1:3", the option's own check explains it.
_DASH_VALUE_OPTIONS = ("--sequences",)


def _attach_dash_values(argv: Sequence[str]) -> list[str]:
    """``["--sequences", "-1:3"]`` -> ``["--sequences=-1:3"]`` (only for :data:`_DASH_VALUE_OPTIONS`).

    Examples
    --------
    >>> _attach_dash_values(["export", "run", "--sequences", "-1:3", "--csv", "out"])
    ['export', 'run', '--sequences=-1:3', '--csv', 'out']
    >>> _attach_dash_values(["export", "run", "--sequences", "--csv", "out"])  # no value: argparse reports it
    ['export', 'run', '--sequences', '--csv', 'out']
    """
    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        nxt = args[i + 1] if i + 1 < len(args) else None
        if a in _DASH_VALUE_OPTIONS and nxt is not None and re.match(r"^-[\d:]", nxt):
            out.append(f"{a}={nxt}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gatelens`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import gatelens

    if not gatelens._TF_LOG_LEVEL_FROM_USER:  # before TensorFlow is imported (lazily, by the command)
        # 3: TensorFlow's C++ ERROR lines too, which Keras's own masked layers cause on every CPU without AVX-512
        # ("oneDNN supports DT_BOOL only on platforms with AVX-512. Falling back ..."): a failure that matters
        # reaches the command as an exception, reported in one line
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if debug else "3"
    if not debug:  # Dask's scheduler and workers log their start and stop at INFO (34 lines a --workers run): only
        # warnings, unless the user configured Dask's logging (read when distributed is imported, by a command)
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    from gatelens.errors import GatelensError, VerificationError, exit_code_of, is_user_error

    raise_internal: BaseException
    try:
        args = build_parser().parse_args(_attach_dash_values(argv))
        return int(args.func(args) or 0)
    except VerificationError as e:
        sys.stderr.write(f"gatelens: verification failed: {_one_line(e)}\n")
        return e.exit_code
    except OSError as e:
        if not _is_users_os_error(e):
            raise_internal = e
        else:
            sys.stderr.write(f"gatelens: {_os_error_line(e)}\n")
            return 2
    except KeyboardInterrupt:
        return interrupted()
    except Exception as e:  # user errors: one line; anything else: one line, and the traceback with --debug
        if is_user_error(e):
            prefix = "" if str(e).startswith("gatelens") else "gatelens: "  # argparse's message names the command
            sys.stderr.write(f"{prefix}{_one_line(e)}\n")
            return exit_code_of(e)
        if isinstance(e, GatelensError) and not debug:  # internal but deliberate (CompatError): its own message
            sys.stderr.write(f"gatelens: internal error: {_one_line(e)}\n")
            return exit_code_of(e)
        raise_internal = e
    if debug:
        raise raise_internal
    sys.stderr.write(
        f"gatelens: internal error: {type(raise_internal).__name__}: {raise_internal} "
        "(run with --debug for the traceback)\n"
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
