"""The ``sam2-api`` command-line client: a thin HTTP client of a running server (no torch, no
BentoML; ``pip install sam2-api`` installs only what it needs)."""

from .commands import main

__all__ = ["main"]
