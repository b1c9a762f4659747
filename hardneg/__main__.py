"""``python -m hardneg``: the CLI (same as the ``hardneg`` entry point)."""

from hardneg.cli import app

app()
