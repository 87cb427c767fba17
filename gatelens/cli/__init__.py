"""The ``gatelens`` command line: a thin layer over the library's functions, above ``models``, ``analysis`` and
``dashboards`` (which never import it).

One module per group of subcommands: :mod:`gatelens.cli.main` (the parser, ``extract``, ``verify``, ``analyze``,
``export``, ``dashboard``, and the exit codes), :mod:`gatelens.cli.search`, :mod:`gatelens.cli.intervene`
(``intervene``, ``sweep``), :mod:`gatelens.cli.windows`; ``train`` is :mod:`gatelens.models.zoo.cli`.

Examples
--------
>>> from gatelens.cli.main import build_parser
>>> args = build_parser().parse_args(["analyze", "runs/a", "--workers", "2"])
>>> args.command, args.run, args.workers
('analyze', 'runs/a', 2)
"""
