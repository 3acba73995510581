"""One module per `mrifoundry` subcommand: `add_parser(subparsers)` registers it, `run(args)` runs it.

Each module imports only argparse/pathlib at module level, so `mrifoundry --help` stays instant;
Prefect, torch, DuckDB and the imaging stack are imported inside `run`. The table of subcommands is
`flows.cli.COMMANDS`: adding a subcommand is one module here plus one line there.
"""
