"""Subcommands of the ``raydbb`` CLI: argument parsing and one call into the library each."""
