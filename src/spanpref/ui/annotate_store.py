"""The annotation app's SQLite store: spans, response-level reasons, A/B choices, time spent and queue assignments,
per annotator, beside the login tables (`LocalAuth`). WAL with `synchronous=FULL` (see `SQLiteStore`): the page
says "saved" only after the commit."""

from __future__ import annotations

import os
from pathlib import Path

from spanpref.ui.common import LocalAuth, SQLiteStore

SPAN_COLUMNS = 'annotator, response_id, span_id, start, "end", polarity, reasons, note, client_key, updated, fix'


class AnnotationStore(SQLiteStore):
    """Spans, response-level reasons, A/B choices, time spent and queue assignments, per annotator."""

    SCHEMA = (
        LocalAuth.SCHEMA
        + """
    CREATE TABLE IF NOT EXISTS assignments (
        item_id TEXT PRIMARY KEY, annotator TEXT NOT NULL, assigned REAL NOT NULL);
    CREATE INDEX IF NOT EXISTS assignments_by_annotator ON assignments (annotator, assigned);
    CREATE TABLE IF NOT EXISTS spans (
        annotator TEXT NOT NULL, response_id TEXT NOT NULL, span_id INTEGER NOT NULL,
        start INTEGER NOT NULL, "end" INTEGER NOT NULL, polarity TEXT NOT NULL,
        reasons TEXT NOT NULL, note TEXT NOT NULL, client_key TEXT, updated REAL NOT NULL,
        fix TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (annotator, response_id, span_id));
    CREATE UNIQUE INDEX IF NOT EXISTS spans_by_key ON spans (annotator, response_id, client_key);
    CREATE TABLE IF NOT EXISTS response_reasons (
        annotator TEXT NOT NULL, response_id TEXT NOT NULL, reasons TEXT NOT NULL, updated REAL NOT NULL,
        PRIMARY KEY (annotator, response_id));
    CREATE TABLE IF NOT EXISTS items (
        annotator TEXT NOT NULL, item_id TEXT NOT NULL, choice TEXT, rationale TEXT NOT NULL DEFAULT '',
        seconds REAL NOT NULL DEFAULT 0, submitted REAL, updated REAL NOT NULL,
        PRIMARY KEY (annotator, item_id));
    """
    )

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False):
        super().__init__(path, readonly=readonly)
        if readonly:
            return
        with self.write() as db:
            columns = {r[1] for r in db.execute("PRAGMA table_info(spans)")}
            if "fix" not in columns:  # a database from before suggested fixes: its spans have none
                db.execute("ALTER TABLE spans ADD COLUMN fix TEXT NOT NULL DEFAULT ''")


def default_db_path(folder: str | os.PathLike) -> Path:
    """Beside the repo folder, not in it: a repo write swaps the folder, which must not move an open database."""
    folder = Path(folder).resolve()
    return folder.parent / f"{folder.name}.annotate.sqlite"
