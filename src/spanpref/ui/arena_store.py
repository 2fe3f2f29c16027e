"""The arena's SQLite store: votes, each judge's current battle, the battles each judge was shown, and the login
tables (`LocalAuth`), in one file (WAL, so the app survives restarts and concurrent judges)."""

from __future__ import annotations

from typing import Any

from spanpref.ui.common import LocalAuth, SQLiteStore


class VoteStore(SQLiteStore):
    """Votes, each judge's current battle, and the login tables, in one SQLite file (WAL)."""

    SCHEMA = (
        """
    CREATE TABLE IF NOT EXISTS votes (
        vote_id TEXT PRIMARY KEY,
        login TEXT NOT NULL,
        query_id TEXT NOT NULL,
        model_a TEXT NOT NULL,
        model_b TEXT NOT NULL,
        left_model TEXT NOT NULL,
        winner TEXT NOT NULL CHECK (winner IN ('model_a', 'model_b', 'tie')),
        rationale TEXT NOT NULL DEFAULT '',
        seconds REAL,
        created_at REAL NOT NULL,
        UNIQUE (login, query_id, model_a, model_b)
    );
    CREATE TABLE IF NOT EXISTS shown (
        login TEXT NOT NULL,
        query_id TEXT NOT NULL,
        model_a TEXT NOT NULL,
        model_b TEXT NOT NULL,
        shown_at REAL NOT NULL,
        PRIMARY KEY (login, query_id, model_a, model_b)
    );
    CREATE TABLE IF NOT EXISTS assignments (
        login TEXT PRIMARY KEY,
        query_id TEXT NOT NULL,
        model_a TEXT NOT NULL,
        model_b TEXT NOT NULL,
        left_model TEXT NOT NULL,
        issued_at REAL NOT NULL
    );
    """
        + LocalAuth.SCHEMA
    )

    def votes(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.read("SELECT * FROM votes ORDER BY created_at, vote_id")]

    def count(self) -> int:
        return self.read("SELECT COUNT(*) FROM votes")[0][0]
