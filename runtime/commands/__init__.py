"""Subcommands of the ``runtime`` CLI, one module each (see ``segflow.runtime.cli``)."""
