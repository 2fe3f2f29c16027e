"""The annotation Space: annotators highlight liked and disliked spans of two responses, tick reasons from the
taxonomy, give response-level reasons and an A/B choice with a rationale (appendix C of CH-Wang et al., 2025).

How it is put together:

- An **item** is a query with two of its responses (consecutive responses of the `responses` config are paired;
  an odd one out is left out), shown with the query's source document.
- `AnnotationStore` (SQLite, WAL, `synchronous=FULL`) is the source of truth. Every span is saved on its own
  the moment the annotator presses Save in the span popup; the page says "saved" only after the commit.
- Each annotator has a **queue**: the `overlap` items everyone sees (for agreement), then items taken one at a
  time from a shared pool (each pool item goes to one annotator only), up to `items_per_annotator`.
- The page is one `gr.HTML` whose JavaScript draws the item from JSON with DOM text nodes (never `innerHTML`
  with data, so responses, documents and notes cannot inject markup) and calls the Python functions of
  `AnnotationService` through Gradio's component-server route. Every call carries the session token issued at
  login; the server maps it to the annotator, and every read and write is keyed by that annotator, so no page
  can read or change another annotator's records.
- Offsets: the page sends UTF-16 offsets (what JavaScript counts) and the server converts them to Python
  code-point offsets against the exact response text; stored and exported offsets are Python offsets.
- `export_annotations` writes the `annotations` and `comparisons` configs of the dataset repo (atomic and
  validated; rows with other ids, e.g. imported ones, are kept). The app exports in the background and an
  optional `huggingface_hub.CommitScheduler` pushes the folder to a Hub dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from spanpref import schema
from spanpref.repo import DatasetRepo, open_repo
from spanpref.taxonomy import Taxonomy, load_taxonomy
from spanpref.ui.common import (
    DEFAULT_BOUNDS,
    AuthError,
    Bounds,
    LocalAuth,
    SQLiteStore,
    UserError,
    bound_int,
    bound_list,
    bound_number,
    bound_text,
    codepoint_to_utf16,
    lock_down,
    oauth_username,
    on_spaces,
    server_function,
    utf16_to_codepoint,
)

logger = logging.getLogger(__name__)

ID_PREFIX = "ui-"  # ids of exported rows; rows with other ids in the repo (imports) are kept on export
TIE_CONFIRM = "confirmed"


# ---------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class AnnotateConfig:
    folder: str = field(metadata={"help": "dataset repo folder with responses, queries and documents configs",
                                  "positional": True})  # fmt: skip
    port: int = field(default=7860, metadata={"help": "port to serve on (127.0.0.1)"})
    db: str | None = field(default=None, metadata={"help": "SQLite file holding the annotations (default: "
                                                   "<FOLDER>.annotate.sqlite beside the folder; on Spaces put it on "
                                                   "persistent storage, e.g. /data/annotate.sqlite)"})  # fmt: skip
    taxonomy: str = field(default="default", metadata={"help": "taxonomy name or YAML file of the span reasons"})
    overlap: int = field(default=5, metadata={"help": "items every annotator sees (for agreement); the rest are "
                                              "shared out, one annotator each"})  # fmt: skip
    items_per_annotator: int | None = field(default=None, metadata={"help": "most pool items one annotator takes "
                                                                    "(default: no limit)"})  # fmt: skip
    shuffle: bool = field(default=True, metadata={"help": "shuffle the items (seeded) before choosing the overlap "
                                                  "items; --no-shuffle keeps the repo's order"})  # fmt: skip
    seed: int = field(default=0, metadata={"help": "seed of the item order (which items are the overlap items)"})
    swap_ab: bool = field(default=True, metadata={"help": "show each annotator the two responses of an item in their "
                                                  "own fixed random order, against position bias (choices are "
                                                  "stored for the repo's order); --no-swap-ab shows the repo's "
                                                  "order"})  # fmt: skip
    annotators: list[str] | None = field(default=None, metadata={"help": "names allowed to log in (default: "
                                                                 "anyone; a name is claimed by its first login)"})  # fmt: skip
    access_code: str | None = field(default=None, metadata={"help": "a code every local login must give (default: "
                                                            "$SPANPREF_ACCESS_CODE, or none)"})  # fmt: skip
    session_hours: float = field(default=12.0, metadata={"help": "hours a login lasts before the annotator logs in "
                                                         "again (a restart with another --access-code or "
                                                         "--annotators ends every session at once)"})  # fmt: skip
    export_every: float = field(default=30.0, metadata={"help": "seconds between background exports to the repo "
                                                        "after changes (0: only on exit and with --export-only)"})  # fmt: skip
    hub_repo: str | None = field(default=None, metadata={"help": "Hub dataset id to push the folder to with a "
                                                         "CommitScheduler (default: no push)"})  # fmt: skip
    hub_every: float = field(default=5.0, metadata={"help": "minutes between Hub pushes"})
    hub_private: bool = field(default=True, metadata={"help": "create the Hub dataset as private (if it is new)"})
    oauth: bool | None = field(default=None, metadata={"help": "log in with Hugging Face OAuth (default: on when "
                                                       "running in a Space)"})  # fmt: skip
    title: str = field(default="spanpref annotation", metadata={"help": "page title"})
    export_only: bool = field(default=False, metadata={"help": "export the store to the repo and exit"})


# ---------------------------------------------------------------------------------------------------
# Items
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    item_id: str
    query_id: str
    query: str
    doc_title: str
    doc_text: str
    response_ids: tuple[str, str]
    texts: tuple[str, str]


def load_items(repo: DatasetRepo, seed: int | None = 0) -> list[Item]:
    """Pairs of responses to annotate, in a seeded random order (repo order with `seed=None`); the first ones
    become the overlap items."""
    for config in (schema.RESPONSES, schema.QUERIES):
        if not repo.has(config):
            raise UserError(f"{repo.path} has no {config} config; the annotation app needs responses to queries")
    queries = {q["query_id"]: q for q in repo.read(schema.QUERIES)}
    docs = {d["doc_id"]: d for d in repo.read(schema.DOCUMENTS)} if repo.has(schema.DOCUMENTS) else {}
    by_query: dict[str, list[dict]] = {}
    for r in repo.read(schema.RESPONSES):
        by_query.setdefault(r["query_id"], []).append(r)
    items = []
    for qid, responses in by_query.items():
        if qid not in queries:
            raise UserError(f"{repo.path}: response {responses[0]['response_id']!r} refers to query {qid!r}, which "
                            "is not in the queries config")  # fmt: skip
        q = queries[qid]
        doc = docs.get(q["doc_id"], {})
        for a, b in zip(responses[0::2], responses[1::2], strict=False):
            items.append(Item(item_id=f"{a['response_id']}~{b['response_id']}", query_id=qid, query=q["query"],
                              doc_title=doc.get("title") or "", doc_text=doc.get("text") or "",
                              response_ids=(a["response_id"], b["response_id"]), texts=(a["text"], b["text"])))  # fmt: skip
    if not items:
        raise UserError(f"{repo.path}: no query has two responses, so there is nothing to compare")
    if seed is not None:
        random.Random(seed).shuffle(items)
    return items


# ---------------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------------
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

    def __init__(self, path: str | os.PathLike):
        super().__init__(path)
        with self.write() as db:
            columns = {r[1] for r in db.execute("PRAGMA table_info(spans)")}
            if "fix" not in columns:  # a database from before suggested fixes: its spans have none
                db.execute("ALTER TABLE spans ADD COLUMN fix TEXT NOT NULL DEFAULT ''")


@dataclass
class ExportReport:
    annotations: int
    comparisons: int
    kept_annotations: int
    kept_comparisons: int

    def summary(self) -> str:
        return (f"exported {self.annotations} annotation(s) and {self.comparisons} comparison(s) "
                f"(kept {self.kept_annotations} and {self.kept_comparisons} rows from other sources)")  # fmt: skip


class AnnotationService:
    """Everything the page can ask for. Each public method takes the page's session token first and acts
    only on that annotator's records."""

    def __init__(self, config: AnnotateConfig, *, bounds: Bounds = DEFAULT_BOUNDS):
        self.config = config
        self.bounds = bounds
        self.repo = open_repo(config.folder)
        self.taxonomy: Taxonomy = load_taxonomy(config.taxonomy)
        self.items = load_items(self.repo, config.seed if config.shuffle else None)
        self.by_id = {it.item_id: it for it in self.items}
        self.item_of_response = {rid: it for it in self.items for rid in it.response_ids}
        self.overlap = [it.item_id for it in self.items[: max(0, config.overlap)]]
        self.pool = [it.item_id for it in self.items[max(0, config.overlap) :]]
        self.store = AnnotationStore(config.db or default_db_path(config.folder))
        code = config.access_code if config.access_code is not None else os.environ.get("SPANPREF_ACCESS_CODE")
        self.auth = LocalAuth(self.store, allowed=config.annotators, access_code=code, bounds=bounds,
                              session_hours=config.session_hours)  # fmt: skip
        self.oauth = on_spaces() if config.oauth is None else config.oauth
        self.changed = threading.Event()  # set by every write; the background exporter clears it
        self.export_lock = threading.Lock()
        self._assign_lock = threading.Lock()
        self.restore_from_repo()

    # -- identity --------------------------------------------------------------------------------------
    def login(self, name: Any, password: Any, access_code: Any = None) -> dict[str, Any]:
        if self.oauth:
            raise AuthError("this server uses Hugging Face login: press 'Sign in with Hugging Face' first")
        token, name = self.auth.login(name, password, access_code)
        return {"token": token, **self.session_info(name)}

    def login_oauth(self, request: Any) -> dict[str, Any]:
        if not self.oauth:
            raise AuthError("Hugging Face login is not enabled on this server")
        name = oauth_username(request)
        if not name:
            raise AuthError("not signed in with Hugging Face yet")
        token, name = self.auth.login_external(name)
        return {"token": token, **self.session_info(name)}

    def session_info(self, annotator: str) -> dict[str, Any]:
        tax = self.taxonomy

        def groups(polarity: str) -> list[dict[str, Any]]:
            out = [{"label": g.label, "reasons": [{"id": r.id, "label": r.label} for r in g.reasons]}
                   for g in tax.groups_of(polarity)]  # fmt: skip
            return out

        return {
            "annotator": annotator,
            "taxonomy": {
                "key": tax.key,
                "like": groups(schema.LIKE),
                "dislike": groups(schema.DISLIKE),
                "other": {p: tax.other_id(p) for p in schema.POLARITIES},
            },
            "bounds": {"note": self.bounds.note, "rationale": self.bounds.rationale, "fix": self.bounds.fix},
            "progress": self.progress(annotator),
        }

    def resume(self, token: Any) -> dict[str, Any]:
        return self.session_info(self.auth.resolve(token))

    # -- queue -----------------------------------------------------------------------------------------
    def queue(self, annotator: str) -> list[str]:
        assigned = [r["item_id"] for r in self.store.read(
            "SELECT item_id FROM assignments WHERE annotator = ? ORDER BY assigned, rowid", (annotator,))]  # fmt: skip
        return self.overlap + [i for i in assigned if i in self.by_id]

    def _submitted(self, annotator: str) -> set[str]:
        return {r["item_id"] for r in self.store.read(
            "SELECT item_id FROM items WHERE annotator = ? AND submitted IS NOT NULL", (annotator,))}  # fmt: skip

    def _take_from_pool(self, annotator: str) -> str | None:
        """Give the annotator the next unassigned pool item (each pool item goes to one annotator)."""
        limit = self.config.items_per_annotator
        with self._assign_lock, self.store.write() as db:
            mine = db.execute("SELECT COUNT(*) FROM assignments WHERE annotator = ?", (annotator,)).fetchone()[0]
            if limit is not None and mine >= limit:
                return None
            taken = {r[0] for r in db.execute("SELECT item_id FROM assignments")}
            free = next((i for i in self.pool if i not in taken), None)
            if free is not None:
                db.execute("INSERT INTO assignments VALUES (?, ?, ?)", (free, annotator, time.time()))
        return free

    def progress(self, annotator: str) -> dict[str, Any]:
        queue = self.queue(annotator)
        done = len(self._submitted(annotator) & set(queue))
        limit = self.config.items_per_annotator
        target = len(self.overlap) + (len(self.pool) if limit is None else min(limit, len(self.pool)))
        return {"done": done, "queue": len(queue), "target": target}

    def _check_item(self, annotator: str, item_id: Any) -> Item:
        if not isinstance(item_id, str) or item_id not in self.by_id:
            raise UserError(f"unknown item {str(item_id)[:100]!r}")
        if item_id not in self.overlap:
            rows = self.store.read("SELECT annotator FROM assignments WHERE item_id = ?", (item_id,))
            if not rows or rows[0]["annotator"] != annotator:
                raise AuthError(f"item {item_id!r} is not in your queue")
        return self.by_id[item_id]

    # -- reading an item -------------------------------------------------------------------------------
    def get_item(self, token: Any, index: Any = None) -> dict[str, Any]:
        """The item at `index` of the annotator's queue; without an index, the first one not yet submitted
        (taking a new one from the pool when the queue is done)."""
        annotator = self.auth.resolve(token)
        queue = self.queue(annotator)
        if index is None:
            submitted = self._submitted(annotator)
            index = next((i for i, item_id in enumerate(queue) if item_id not in submitted), None)
            if index is None:
                if self._take_from_pool(annotator) is None:
                    return {"item": None, "progress": self.progress(annotator)}
                queue = self.queue(annotator)
                index = len(queue) - 1
        else:
            index = bound_int(index, "item index", 0, 10**9)
            if index >= len(queue):
                if index == len(queue) and self._take_from_pool(annotator) is not None:
                    queue = self.queue(annotator)
                else:
                    return {"item": None, "progress": self.progress(annotator)}
        return {"item": self.item_view(annotator, queue[index], index), "progress": self.progress(annotator)}

    def swapped(self, annotator: str, item_id: str) -> bool:
        """Whether `annotator` sees the item's responses in reverse order: a fixed coin per (annotator, item), so
        that position bias averages out over annotators and a reload shows the same order."""
        if not self.config.swap_ab:
            return False
        return hashlib.sha256(f"{self.config.seed}\0{annotator}\0{item_id}".encode()).digest()[0] & 1 == 1

    @staticmethod
    def _flip(choice: str | None) -> str | None:
        return {schema.CHOICE_A: schema.CHOICE_B, schema.CHOICE_B: schema.CHOICE_A}.get(choice, choice)  # type: ignore[arg-type]

    def item_view(self, annotator: str, item_id: str, index: int) -> dict[str, Any]:
        """The item as the annotator sees it: responses (and the choice) in their display order."""
        item = self.by_id[item_id]
        swapped = self.swapped(annotator, item_id)
        row = self.store.read("SELECT choice, rationale, seconds, submitted FROM items WHERE annotator = ? AND "
                              "item_id = ?", (annotator, item_id))  # fmt: skip
        state = dict(row[0]) if row else {"choice": None, "rationale": "", "seconds": 0.0, "submitted": None}
        responses = []
        shown = list(zip(item.response_ids, item.texts, strict=True))
        for rid, text in reversed(shown) if swapped else shown:
            spans = [self._span_view(text, dict(r)) for r in self.store.read(
                'SELECT span_id, start, "end", polarity, reasons, note, fix FROM spans WHERE annotator = ? AND '
                "response_id = ? ORDER BY start, span_id", (annotator, rid))]  # fmt: skip
            rr = self.store.read("SELECT reasons FROM response_reasons WHERE annotator = ? AND response_id = ?",
                                 (annotator, rid))  # fmt: skip
            responses.append({"response_id": rid, "text": text, "spans": spans,
                              "reasons": json.loads(rr[0]["reasons"]) if rr else []})  # fmt: skip
        return {"item_id": item_id, "index": index, "query": item.query,
                "document": {"title": item.doc_title, "text": item.doc_text}, "responses": responses,
                "choice": self._flip(state["choice"]) if swapped else state["choice"], "rationale": state["rationale"],
                "seconds": state["seconds"],
                "submitted": state["submitted"] is not None}  # fmt: skip

    @staticmethod
    def _span_view(text: str, r: dict[str, Any]) -> dict[str, Any]:
        return {"span_id": r["span_id"], "start": r["start"], "end": r["end"], "polarity": r["polarity"],
                "reasons": json.loads(r["reasons"]) if isinstance(r["reasons"], str) else r["reasons"],
                "note": r["note"], "fix": r["fix"] or "", "start16": codepoint_to_utf16(text, r["start"]),
                "end16": codepoint_to_utf16(text, r["end"]), "text": text[r["start"]: r["end"]]}  # fmt: skip

    # -- writing ---------------------------------------------------------------------------------------
    def _add_seconds(self, db: Any, annotator: str, item_id: str, seconds: Any) -> None:
        seconds = bound_number(seconds or 0, "seconds", 0, self.bounds.seconds_per_report)
        db.execute("INSERT INTO items (annotator, item_id, seconds, updated) VALUES (?, ?, ?, ?) ON CONFLICT "
                   "(annotator, item_id) DO UPDATE SET seconds = seconds + excluded.seconds, updated = "
                   "excluded.updated", (annotator, item_id, seconds, time.time()))  # fmt: skip

    def _check_reasons(self, reasons: Any, polarity: str | None, note: str, what: str) -> list[str]:
        reasons = bound_list(reasons, f"{what} reasons", self.bounds.reasons_per_span)
        out: list[str] = []
        for r in reasons:
            if not isinstance(r, str) or not self.taxonomy.has_reason(r, polarity):
                kind = f"{polarity} reason" if polarity else "reason"
                raise UserError(f"{what}: {str(r)[:80]!r} is not a {kind} of taxonomy {self.taxonomy.key}")
            if r not in out:
                out.append(r)
        if polarity and self.taxonomy.other_id(polarity) in out and not note.strip():
            raise UserError(f"{what}: 'Other' needs a note saying why")
        return out

    def save_span(self, token: Any, item_id: Any, response_id: Any, span: Any, seconds: Any = 0) -> dict[str, Any]:
        """Create or update one span. `span` has UTF-16 `start`/`end` (as the page counts), `polarity`,
        `reasons`, `note`, an optional `fix` (the text the annotator suggests in place of a dislike span's), and
        `span_id` (to update) or a `key` (a page-made id that makes a retried create save the span once)."""
        annotator = self.auth.resolve(token)
        item = self._check_item(annotator, item_id)
        if response_id not in item.response_ids:
            raise UserError(f"response {str(response_id)[:100]!r} is not part of item {item.item_id!r}")
        if not isinstance(span, dict):
            raise UserError("span must be an object")
        text = item.texts[item.response_ids.index(response_id)]
        start16 = bound_int(span.get("start"), "span start", 0, 10**9)
        end16 = bound_int(span.get("end"), "span end", 0, 10**9)
        start, end = utf16_to_codepoint(text, start16), utf16_to_codepoint(text, end16)
        if start >= end:
            raise UserError(f"a span needs some text (got start {start}, end {end})")
        polarity = span.get("polarity")
        if polarity not in schema.POLARITIES:
            raise UserError(f"polarity must be one of {list(schema.POLARITIES)}, got {str(polarity)[:40]!r}")
        note = bound_text(span.get("note"), "note", self.bounds.note)
        reasons = self._check_reasons(span.get("reasons"), polarity, note, "span")
        fix = bound_text(span.get("fix"), "suggested fix", self.bounds.fix) if polarity == schema.DISLIKE else ""
        key = span.get("key")
        key = bound_text(key, "span key", 64) or None if key is not None else None
        span_id = span.get("span_id")
        now = time.time()
        with self.store.write() as db:
            if span_id is not None:
                span_id = bound_int(span_id, "span_id", 1, 10**9)
                cur = db.execute('UPDATE spans SET start = ?, "end" = ?, polarity = ?, reasons = ?, note = ?, '
                                 "fix = ?, updated = ? WHERE annotator = ? AND response_id = ? AND span_id = ?",
                                 (start, end, polarity, json.dumps(reasons), note, fix, now, annotator, response_id,
                                  span_id))  # fmt: skip
                if cur.rowcount != 1:
                    raise UserError(f"you have no span {span_id} on this response (deleted in another tab?)")
            else:
                existing = db.execute("SELECT span_id FROM spans WHERE annotator = ? AND response_id = ? AND "
                                      "client_key = ?", (annotator, response_id, key)).fetchone() if key else None  # fmt: skip
                if existing is not None:  # a retry of a create that reached the disk: the same span again
                    span_id = existing[0]
                    db.execute('UPDATE spans SET start = ?, "end" = ?, polarity = ?, reasons = ?, note = ?, '
                               "fix = ?, updated = ? WHERE annotator = ? AND response_id = ? AND span_id = ?",
                               (start, end, polarity, json.dumps(reasons), note, fix, now, annotator, response_id,
                                span_id))  # fmt: skip
                else:
                    count, top = db.execute("SELECT COUNT(*), COALESCE(MAX(span_id), 0) FROM spans WHERE "
                                            "annotator = ? AND response_id = ?", (annotator, response_id)).fetchone()  # fmt: skip
                    if count >= self.bounds.spans_per_response:
                        raise UserError(f"at most {self.bounds.spans_per_response} spans per response")
                    span_id = top + 1
                    db.execute(f"INSERT INTO spans ({SPAN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               (annotator, response_id, span_id, start, end, polarity, json.dumps(reasons), note,
                                key, now, fix))  # fmt: skip
            self._add_seconds(db, annotator, item.item_id, seconds)
        self.changed.set()
        row = {"span_id": span_id, "start": start, "end": end, "polarity": polarity, "reasons": reasons, "note": note,
               "fix": fix}  # fmt: skip
        return {"span": self._span_view(text, row)}

    def delete_span(self, token: Any, item_id: Any, response_id: Any, span_id: Any) -> dict[str, Any]:
        annotator = self.auth.resolve(token)
        item = self._check_item(annotator, item_id)
        if response_id not in item.response_ids:
            raise UserError(f"response {str(response_id)[:100]!r} is not part of item {item.item_id!r}")
        span_id = bound_int(span_id, "span_id", 1, 10**9)
        with self.store.write() as db:
            cur = db.execute("DELETE FROM spans WHERE annotator = ? AND response_id = ? AND span_id = ?",
                             (annotator, response_id, span_id))  # fmt: skip
        self.changed.set()
        return {"deleted": cur.rowcount}

    def save_item(self, token: Any, item_id: Any, data: Any, seconds: Any = 0) -> dict[str, Any]:
        """Save the response-level reasons, the A/B choice and the rationale. `data["submit"]` marks the item
        done, which needs a choice and a rationale (and, for a tie, `data["tie"] == "confirmed"`). "a", "b" and
        `data["responses"]` are in the annotator's display order (see `swapped`); they are stored in the repo's."""
        annotator = self.auth.resolve(token)
        item = self._check_item(annotator, item_id)
        if not isinstance(data, dict):
            raise UserError("item data must be an object")
        responses = bound_list(data.get("responses"), "responses", 2)
        if len(responses) not in (0, 2):
            raise UserError("give response-level reasons for both responses or for none")
        reasons_by_response = []
        for k, r in enumerate(responses):
            if not isinstance(r, dict):
                raise UserError("response-level reasons must be objects")
            which = "AB"[k]
            others = {self.taxonomy.other_id(p) for p in schema.POLARITIES}  # these come with their notes below
            rows = [{"reason": reason, "note": ""} for reason in
                    self._check_reasons(r.get("reasons"), None, "", f"response {which}") if reason not in others]  # fmt: skip
            for polarity in schema.POLARITIES:
                note = bound_text(r.get(f"other_{polarity}"), f"response {which} other ({polarity})", self.bounds.note)
                if note.strip():
                    rows.append({"reason": self.taxonomy.other_id(polarity), "note": note})
            reasons_by_response.append(rows)
        choice = data.get("choice") or None
        if choice is not None and choice not in schema.CHOICES:
            raise UserError(f"choice must be one of {list(schema.CHOICES)}, got {str(choice)[:40]!r}")
        rationale = bound_text(data.get("rationale"), "rationale", self.bounds.rationale)
        submit = bool(data.get("submit"))
        if submit:
            if choice is None:
                raise UserError("choose the response you prefer (A or B) before submitting")
            if choice == schema.CHOICE_TIE and data.get("tie") != TIE_CONFIRM:
                raise UserError("a tie is for responses that are truly indistinguishable: confirm it first")
            if not rationale.strip():
                raise UserError("write a short rationale for your choice before submitting")
        if self.swapped(annotator, item.item_id):
            choice, reasons_by_response = self._flip(choice), reasons_by_response[::-1]
        now = time.time()
        with self.store.write() as db:
            for rid, rows in zip(item.response_ids, reasons_by_response, strict=False):
                db.execute("INSERT INTO response_reasons VALUES (?, ?, ?, ?) ON CONFLICT (annotator, response_id) "
                           "DO UPDATE SET reasons = excluded.reasons, updated = excluded.updated",
                           (annotator, rid, json.dumps(rows), now))  # fmt: skip
            self._add_seconds(db, annotator, item.item_id, seconds)
            db.execute("UPDATE items SET choice = ?, rationale = ?, updated = ?, submitted = CASE WHEN ? THEN "
                       "COALESCE(submitted, ?) ELSE submitted END WHERE annotator = ? AND item_id = ?",
                       (choice, rationale, now, submit, now, annotator, item.item_id))  # fmt: skip
        self.changed.set()
        return {"saved": True, "submitted": submit, "progress": self.progress(annotator)}

    def logout(self, token: Any) -> dict[str, Any]:
        self.auth.logout(token)
        return {}

    # -- export ----------------------------------------------------------------------------------------
    def export_rows(self) -> tuple[list[schema.Annotation], list[schema.Comparison]]:
        """Every annotator's work as records of the annotations and comparisons configs (Python offsets)."""
        items = {(r["annotator"], r["item_id"]): dict(r) for r in self.store.read("SELECT * FROM items")}
        spans: dict[tuple[str, str], list[schema.Span]] = {}
        for r in self.store.read("SELECT * FROM spans ORDER BY annotator, response_id, span_id"):
            spans.setdefault((r["annotator"], r["response_id"]), []).append(schema.Span(
                span_id=r["span_id"], start=r["start"], end=r["end"], polarity=r["polarity"],
                reasons=json.loads(r["reasons"]), note=r["note"], fix=r["fix"] or ""))  # fmt: skip
        reasons = {(r["annotator"], r["response_id"]): [schema.ResponseReason(**x) for x in json.loads(r["reasons"])]
                   for r in self.store.read("SELECT * FROM response_reasons")}  # fmt: skip
        keys = set(spans) | {k for k, v in reasons.items() if v}
        keys |= {(a, rid) for (a, item_id), row in items.items() if row["submitted"] is not None
                 for rid in self.by_id[item_id].response_ids if item_id in self.by_id}  # fmt: skip
        annotations = []
        for annotator, rid in sorted(keys):
            item = self.item_of_response.get(rid)
            if item is None:
                logger.warning("store has work on response %r, which is no longer in the repo; not exported", rid)
                continue
            seconds = (items.get((annotator, item.item_id)) or {}).get("seconds")
            annotations.append(schema.Annotation(
                annotation_id=f"{ID_PREFIX}{annotator}-{rid}", annotator=annotator, response_id=rid,
                spans=spans.get((annotator, rid), []), response_reasons=reasons.get((annotator, rid), []),
                # the time of the pair, split evenly between its two responses (sums stay right)
                seconds=None if seconds is None else round(seconds / 2, 3), taxonomy=self.taxonomy.key))  # fmt: skip
        comparisons = []
        for (annotator, item_id), row in sorted(items.items()):
            if row["submitted"] is None or item_id not in self.by_id:
                continue
            a, b = self.by_id[item_id].response_ids
            comparisons.append(schema.Comparison(
                comparison_id=f"{ID_PREFIX}{annotator}-{item_id}", annotator=annotator, response_a=a, response_b=b,
                choice=row["choice"], rationale=row["rationale"], seconds=round(row["seconds"], 3)))  # fmt: skip
        return annotations, comparisons

    def export(self) -> ExportReport | None:
        """Write the store into the repo's annotations and comparisons configs (atomically, validated).
        Rows this app wrote before are replaced; rows from elsewhere are kept. None when there is nothing."""
        with self.export_lock:
            self.changed.clear()
            annotations, comparisons = self.export_rows()
            configs: dict[str, list[Any]] = {}
            kept = {}
            for name, rows, id_col in ((schema.ANNOTATIONS, annotations, "annotation_id"),
                                       (schema.COMPARISONS, comparisons, "comparison_id")):  # fmt: skip
                others = [r for r in (self.repo.read(name) if self.repo.has(name) else [])
                          if not str(r[id_col]).startswith(ID_PREFIX)]  # fmt: skip
                kept[name] = len(others)
                if rows or self.repo.has(name):
                    configs[name] = others + [schema.to_row(r) for r in rows]
            configs = {k: v for k, v in configs.items() if v}
            if not configs:
                return None
            keys = {r.get("taxonomy") for r in configs.get(schema.ANNOTATIONS, [])}
            self.repo.write(configs, taxonomy=self.taxonomy if keys <= {self.taxonomy.key} else None)
            report = ExportReport(len(annotations), len(comparisons), kept[schema.ANNOTATIONS],
                                  kept[schema.COMPARISONS])  # fmt: skip
            logger.info("%s to %s", report.summary(), self.repo.path)
            return report

    def restore_from_repo(self) -> int:
        """Read back into the store the work this app exported earlier but the store lacks (a Space restarted
        without persistent storage starts from an empty database). Items the store already has any record of,
        for that annotator, are left alone. Returns the number of (annotator, item) pairs restored."""
        if not (self.repo.has(schema.ANNOTATIONS) or self.repo.has(schema.COMPARISONS)):
            return 0
        known = {(r["annotator"], r["item_id"]) for r in self.store.read("SELECT annotator, item_id FROM items")}
        ours = lambda name, col: [r for r in (self.repo.read(name) if self.repo.has(name) else [])  # noqa: E731
                                  if str(r[col]).startswith(ID_PREFIX)]  # fmt: skip
        restored: set[tuple[str, str]] = set()
        now = time.time()
        with self.store.write() as db:

            def claim(annotator: str, item_id: str, seconds: float | None) -> bool:
                if (annotator, item_id) in known and (annotator, item_id) not in restored:
                    return False
                if (annotator, item_id) not in restored:
                    db.execute("INSERT INTO items (annotator, item_id, seconds, updated) VALUES (?, ?, ?, ?)",
                               (annotator, item_id, seconds or 0.0, now))  # fmt: skip
                    if item_id in self.pool:
                        db.execute("INSERT OR IGNORE INTO assignments VALUES (?, ?, ?)", (item_id, annotator, now))
                    restored.add((annotator, item_id))
                return True

            for row in ours(schema.COMPARISONS, "comparison_id"):
                item_id = f"{row['response_a']}~{row['response_b']}"
                if item_id in self.by_id and claim(row["annotator"], item_id, row["seconds"]):
                    db.execute("UPDATE items SET choice = ?, rationale = ?, submitted = ? WHERE annotator = ? AND "
                               "item_id = ?", (row["choice"], row["rationale"], now, row["annotator"], item_id))  # fmt: skip
            for row in ours(schema.ANNOTATIONS, "annotation_id"):
                item = self.item_of_response.get(row["response_id"])
                seconds = None if row["seconds"] is None else 2 * row["seconds"]
                if item is None or not claim(row["annotator"], item.item_id, seconds):
                    continue
                for sp in row["spans"]:
                    db.execute(f"INSERT OR IGNORE INTO spans ({SPAN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)",
                               (row["annotator"], row["response_id"], sp["span_id"], sp["start"], sp["end"],
                                sp["polarity"], json.dumps(sp["reasons"] or []), sp["note"] or "", now,
                                sp.get("fix") or ""))  # fmt: skip
                if row["response_reasons"]:
                    db.execute("INSERT OR REPLACE INTO response_reasons VALUES (?, ?, ?, ?)",
                               (row["annotator"], row["response_id"], json.dumps(row["response_reasons"]), now))  # fmt: skip
        if restored:
            logger.info("restored %d annotator item(s) from the exported configs of %s", len(restored), self.repo.path)
        return len(restored)

    def close(self) -> None:
        self.store.close()


def default_db_path(folder: str | os.PathLike) -> Path:
    """Beside the repo folder, not in it: a repo write swaps the folder, which must not move an open database."""
    folder = Path(folder).resolve()
    return folder.parent / f"{folder.name}.annotate.sqlite"


class BackgroundExporter:
    """Exports after changes, at most every `every` seconds, and once more on `stop()`."""

    def __init__(self, service: AnnotationService, every: float):
        self.service, self.every = service, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="annotate-export", daemon=True)

    def start(self) -> BackgroundExporter:
        if self.every > 0:
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            if self.service.changed.is_set():
                self._export()

    def _export(self) -> None:
        try:
            self.service.export()
        except Exception:  # the store still has everything; the next export tries again
            logger.exception("export to %s failed", self.service.repo.path)
            self.service.changed.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.service.changed.is_set():
            self._export()


def start_hub_sync(
    service: AnnotationService, repo_id: str, every_minutes: float, *, private: bool = True, api: Any = None
) -> Any:
    """Push the repo folder to a Hub dataset every few minutes with a `huggingface_hub.CommitScheduler`.

    The stock scheduler expects an append-only folder and reads files after releasing its lock; an export
    replaces files (and renames the folder), so here the changed files are read into memory under the lock,
    which exports also hold: a commit never mixes two versions of the repo.
    """
    from huggingface_hub import CommitOperationAdd, CommitScheduler
    from huggingface_hub.utils import filter_repo_objects

    class FolderScheduler(CommitScheduler):
        def push_to_hub(self) -> Any:
            with self.lock:
                files = {p.relative_to(self.folder_path).as_posix(): p for p in sorted(self.folder_path.glob("**/*"))
                         if p.is_file()}  # fmt: skip
                changed = []
                for rel in filter_repo_objects(files, allow_patterns=self.allow_patterns,
                                               ignore_patterns=self.ignore_patterns):  # fmt: skip
                    mtime = files[rel].stat().st_mtime
                    if self.last_uploaded.get(files[rel]) != mtime:
                        changed.append((files[rel], rel, mtime, files[rel].read_bytes()))
            if not changed:
                return None
            info = self.api.create_commit(
                repo_id=self.repo_id, repo_type=self.repo_type, revision=self.revision,
                operations=[CommitOperationAdd(path_in_repo=rel, path_or_fileobj=data) for _, rel, _, data in changed],
                commit_message=f"spanpref annotate: {len(changed)} changed file(s)")  # fmt: skip
            for path, _, mtime, _ in changed:
                self.last_uploaded[path] = mtime
            return info

    scheduler = FolderScheduler(repo_id=repo_id, repo_type="dataset", folder_path=service.repo.path,
                                every=every_minutes, ignore_patterns=[".*", "**/.*"], private=private,
                                hf_api=api)  # fmt: skip
    service.export_lock = scheduler.lock
    return scheduler


# ---------------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------------
def _asset(name: str) -> str:
    return (resources.files("spanpref.ui") / "assets" / name).read_text(encoding="utf-8")


def guidelines_markdown() -> str:
    return _asset("annotate_guidelines.md")


def build_app(config: AnnotateConfig, service: AnnotationService | None = None) -> Any:
    """The annotation app as a `gr.Blocks` (its `service` attribute is the `AnnotationService` behind it)."""
    import gradio as gr

    service = service or AnnotationService(config)

    def fn(name: str, body: Any) -> Any:
        return server_function(body, name=name)

    api = [
        fn("login", lambda a, req: service.login(*(a + [None] * 3)[:3])),
        fn("login_oauth", lambda a, req: service.login_oauth(req)),
        fn("resume", lambda a, req: service.resume(a[0] if a else None)),
        fn("logout", lambda a, req: service.logout(a[0] if a else None)),
        fn("get_item", lambda a, req: service.get_item(*(a + [None] * 2)[:2])),
        fn("save_span", lambda a, req: service.save_span(*(a + [None] * 5)[:5])),
        fn("delete_span", lambda a, req: service.delete_span(*(a + [None] * 4)[:4])),
        fn("save_item", lambda a, req: service.save_item(*(a + [None] * 4)[:4])),
    ]
    with gr.Blocks(title=config.title) as demo:
        gr.Markdown(f"## {config.title}")
        if service.oauth and on_spaces():  # outside a Space, gradio's mocked OAuth needs a saved HF token
            gr.LoginButton()
        with gr.Accordion("Guidelines (read these first)", open=False):
            gr.Markdown(guidelines_markdown())
        gr.HTML(
            value="",
            html_template='<div class="sp-root" data-oauth="${oauth}"></div>',
            css_template=_asset("annotate.css"),
            js_on_load=_asset("annotate.js"),
            server_functions=api,
            elem_id="spanpref-annotate",
            oauth="1" if service.oauth else "0",
        )
    demo.service = service
    return lock_down(demo)


def serve(config: AnnotateConfig, *, block: bool = True) -> Any:
    """Build the app and serve it on 127.0.0.1:`config.port` with background export (and Hub push)."""
    from spanpref.ui.common import launch_local

    demo = build_app(config)
    service: AnnotationService = demo.service
    exporter = BackgroundExporter(service, config.export_every)
    scheduler = (
        start_hub_sync(service, config.hub_repo, config.hub_every, private=config.hub_private)
        if config.hub_repo
        else None
    )
    exporter.start()
    demo.exporter, demo.scheduler = exporter, scheduler
    logger.info("annotating %d items (%d overlap) from %s; store %s", len(service.items), len(service.overlap),
                service.repo.path, service.store.path)  # fmt: skip
    try:
        launch_local(demo, config.port, block=block)
    finally:
        if block:
            exporter.stop()
            if scheduler is not None:
                scheduler.stop()
    return demo


def build_space_app() -> Any:
    """The app as a Hugging Face Space runs it, configured by Space variables (see spaces/annotate/README.md):
    `SPANPREF_ANNOTATE_DATA` (a Hub dataset id or a folder), `SPANPREF_ANNOTATE_PUSH` (dataset to push to;
    default: the data's id), `SPANPREF_ANNOTATORS` (comma-separated HF names; default: anyone signed in),
    `SPANPREF_OVERLAP`, `SPANPREF_ITEMS_PER_ANNOTATOR` and `SPANPREF_SESSION_HOURS`. State (database, working copy of the dataset) lives in
    `SPANPREF_STATE_DIR`, by default /data when the Space has persistent storage, else ./annotate-state."""
    data = os.environ.get("SPANPREF_ANNOTATE_DATA")
    if not data:
        raise UserError("set the Space variable SPANPREF_ANNOTATE_DATA to the dataset to annotate (org/name)")
    state = Path(
        os.environ.get("SPANPREF_STATE_DIR") or ("/data" if os.access("/data", os.W_OK) else "annotate-state")
    )
    state = state.resolve()
    if Path(data).is_dir():
        folder, push = Path(data), os.environ.get("SPANPREF_ANNOTATE_PUSH")
    else:
        folder, push = state / "repo", os.environ.get("SPANPREF_ANNOTATE_PUSH") or data
        if not (folder / "README.md").is_file():  # on persistent storage the folder from last time is newer
            from huggingface_hub import snapshot_download

            snapshot_download(repo_id=data, repo_type="dataset", local_dir=folder)
    per = os.environ.get("SPANPREF_ITEMS_PER_ANNOTATOR")
    config = AnnotateConfig(
        folder=str(folder), db=str(state / "annotate.sqlite"), oauth=True, hub_repo=push or None,
        overlap=int(os.environ.get("SPANPREF_OVERLAP", "5")), items_per_annotator=int(per) if per else None,
        session_hours=float(os.environ.get("SPANPREF_SESSION_HOURS") or 12.0),
        annotators=[a.strip() for a in os.environ.get("SPANPREF_ANNOTATORS", "").split(",") if a.strip()] or None,
    )  # fmt: skip
    demo = build_app(config)
    demo.exporter = BackgroundExporter(demo.service, config.export_every).start()
    demo.scheduler = start_hub_sync(demo.service, push, config.hub_every) if push else None
    return demo


def run_annotate(args: AnnotateConfig) -> None:
    if args.export_only:
        service = AnnotationService(args)
        report = service.export()
        print(report.summary() if report else "nothing to export yet")
        return
    serve(args)
