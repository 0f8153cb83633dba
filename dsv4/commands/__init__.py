"""CLI subcommands: each module here is one `dsv4 <name>` command (see dsv4/cli.py)."""
