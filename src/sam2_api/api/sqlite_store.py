"""A small SQLite file that every API worker process of a replica shares (in the state folder):
opened in WAL mode with its tables made, emptied at server start, a connection per use."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path


class SqliteStore:
    """Subclasses name their ``CREATE … IF NOT EXISTS`` statements in :attr:`SCHEMA`."""

    SCHEMA: tuple[str, ...] = ()

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        with closing(self._connect()) as db, db:
            db.execute("PRAGMA journal_mode=WAL")
            for statement in self.SCHEMA:
                db.execute(statement)

    @classmethod
    def reset(cls, path: str | Path):
        """A fresh, empty store (at server start: what it indexed is gone with the last start)."""
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return cls(path)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10)
