"""The ``fleetsync`` command line: subcommands, and one composition root per process."""
