"""Subcommands: filled in by their feature (see leaf_engine/cli/__init__.py)."""
