"""What the annotation page can ask for: queues and assignment, saving spans and items, submitting, and the export
to the dataset repo. No Gradio here; the page (`spanpref.ui.annotate`) calls these methods.

- An **item** is a query with two of its responses (consecutive responses of the `responses` config are paired;
  an odd one out is left out), shown with the query's source document.
- Each annotator has a **queue**: the `overlap` items everyone sees (for agreement), then items taken one at a
  time from a shared pool (each pool item goes to one annotator only), up to `items_per_annotator`.
- Every call carries the session token issued at login; the service maps it to the annotator, and every read and
  write is keyed by that annotator, so no page can read or change another annotator's records.
- Offsets: the page sends UTF-16 offsets (what JavaScript counts) and the service converts them to Python
  code-point offsets against the exact response text; stored and exported offsets are Python offsets.
- `AnnotationService.export` writes the `annotations` and `comparisons` configs of the dataset repo (atomic and
  validated; rows with other ids, e.g. imported ones, are kept); `spanpref.ui.annotate_export` runs it after
  changes, in a process of its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from spanpref import schema
from spanpref.repo import DatasetRepo, open_repo
from spanpref.taxonomy import Taxonomy, load_taxonomy
from spanpref.ui.annotate_store import SPAN_COLUMNS, AnnotationStore, default_db_path
from spanpref.ui.common import (
    DEFAULT_BOUNDS,
    AuthError,
    Bounds,
    LocalAuth,
    UserError,
    bound_int,
    bound_list,
    bound_number,
    bound_text,
    codepoint_to_utf16,
    oauth_username,
    on_spaces,
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
    folder: str = field(
        metadata={"help": "dataset repo folder with responses, queries and documents configs", "positional": True}
    )
    port: int = field(default=7860, metadata={"help": "port to serve on (127.0.0.1)"})
    db: str | None = field(
        default=None,
        metadata={
            "help": "SQLite file holding the annotations (default: "
            "<FOLDER>.annotate.sqlite beside the folder; on Spaces put it on "
            "persistent storage, e.g. /data/annotate.sqlite)"
        },
    )
    taxonomy: str = field(default="default", metadata={"help": "taxonomy name or YAML file of the span reasons"})
    overlap: int = field(
        default=5,
        metadata={"help": "items every annotator sees (for agreement); the rest are shared out, one annotator each"},
    )
    items_per_annotator: int | None = field(
        default=None, metadata={"help": "most pool items one annotator takes (default: no limit)"}
    )
    shuffle: bool = field(
        default=True,
        metadata={
            "help": "shuffle the items (seeded) before choosing the overlap items; --no-shuffle keeps the repo's order"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of the item order (which items are the overlap items)"})
    swap_ab: bool = field(
        default=True,
        metadata={
            "help": "show each annotator the two responses of an item in their "
            "own fixed random order, against position bias (choices are "
            "stored for the repo's order); --no-swap-ab shows the repo's "
            "order"
        },
    )
    annotators: list[str] | None = field(
        default=None,
        metadata={"help": "names allowed to log in (default: anyone; a name is claimed by its first login)"},
    )
    access_code: str | None = field(
        default=None, metadata={"help": "a code every local login must give (default: $SPANPREF_ACCESS_CODE, or none)"}
    )
    session_hours: float = field(
        default=12.0,
        metadata={
            "help": "hours a login lasts before the annotator logs in "
            "again (a restart with another --access-code or "
            "--annotators ends every session at once)"
        },
    )
    export_every: float = field(
        default=30.0,
        metadata={
            "help": "seconds between background exports to the repo "
            "after changes (0: only on exit and with --export-only)"
        },
    )
    hub_repo: str | None = field(
        default=None,
        metadata={"help": "Hub dataset id to push the folder to every --hub-every minutes (default: no push)"},
    )
    hub_every: float = field(default=5.0, metadata={"help": "minutes between Hub pushes"})
    hub_private: bool = field(default=True, metadata={"help": "create the Hub dataset as private (if it is new)"})
    oauth: bool | None = field(
        default=None, metadata={"help": "log in with Hugging Face OAuth (default: on when running in a Space)"}
    )
    title: str = field(default="spanpref annotation", metadata={"help": "page title"})
    suggestions: str | None = field(
        default="all",
        metadata={
            "help": "AI annotators whose spans are shown as suggestions to accept or reject: all (every ai:* "
            "annotator in the repo), one ai:<name>, or none"
        },
    )
    export_only: bool = field(default=False, metadata={"help": "export the store to the repo and exit"})
    server_timing: bool = field(
        default=False,
        metadata={
            "help": "add a Server-Timing header to every response (time in the app, in the handler, waiting for "
            "the write lock, writing, committing), as benchmarks/annotate_load.py reads it"
        },
    )


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
            raise UserError(
                f"{repo.path}: response {responses[0]['response_id']!r} refers to query {qid!r}, which "
                "is not in the queries config"
            )
        q = queries[qid]
        doc = docs.get(q["doc_id"], {})
        for a, b in zip(responses[0::2], responses[1::2], strict=False):
            items.append(
                Item(
                    item_id=f"{a['response_id']}~{b['response_id']}",
                    query_id=qid,
                    query=q["query"],
                    doc_title=doc.get("title") or "",
                    doc_text=doc.get("text") or "",
                    response_ids=(a["response_id"], b["response_id"]),
                    texts=(a["text"], b["text"]),
                )
            )
    if not items:
        raise UserError(f"{repo.path}: no query has two responses, so there is nothing to compare")
    if seed is not None:
        random.Random(seed).shuffle(items)
    return items


@dataclass
class ExportReport:
    annotations: int
    comparisons: int
    kept_annotations: int
    kept_comparisons: int

    def summary(self) -> str:
        return (
            f"exported {self.annotations} annotation(s) and {self.comparisons} comparison(s) "
            f"(kept {self.kept_annotations} and {self.kept_comparisons} rows from other sources)"
        )


class StoreExport:
    """The export of an annotation store into its repo: `AnnotationService.export` runs it in the app's process,
    `spanpref.ui.annotate_export` in a process of its own (with the store opened read-only)."""

    def __init__(self, store: AnnotationStore, repo: DatasetRepo, items: list[Item], taxonomy: Taxonomy):
        self.store, self.repo, self.taxonomy = store, repo, taxonomy
        self.by_id = {it.item_id: it for it in items}
        self.item_of_response = {rid: it for it in items for rid in it.response_ids}

    def rows(self) -> tuple[list[schema.Annotation], list[schema.Comparison]]:
        """Every annotator's work as records of the annotations and comparisons configs (Python offsets)."""
        with self.store.snapshot():  # one state of the store, however many saves land meanwhile
            stored_items = self.store.read("SELECT * FROM items")
            stored_spans = self.store.read("SELECT * FROM spans ORDER BY annotator, response_id, span_id")
            stored_reasons = self.store.read("SELECT * FROM response_reasons")
        items = {(r["annotator"], r["item_id"]): dict(r) for r in stored_items}
        spans: dict[tuple[str, str], list[schema.Span]] = {}
        for r in stored_spans:
            spans.setdefault((r["annotator"], r["response_id"]), []).append(
                schema.Span(
                    span_id=r["span_id"],
                    start=r["start"],
                    end=r["end"],
                    polarity=r["polarity"],
                    reasons=json.loads(r["reasons"]),
                    note=r["note"],
                    fix=r["fix"] or "",
                )
            )
        reasons = {
            (r["annotator"], r["response_id"]): [schema.ResponseReason(**x) for x in json.loads(r["reasons"])]
            for r in stored_reasons
        }
        keys = set(spans) | {k for k, v in reasons.items() if v}
        keys |= {
            (a, rid)
            for (a, item_id), row in items.items()
            if row["submitted"] is not None
            for rid in self.by_id[item_id].response_ids
            if item_id in self.by_id
        }
        annotations = []
        for annotator, rid in sorted(keys):
            item = self.item_of_response.get(rid)
            if item is None:
                logger.warning("store has work on response %r, which is no longer in the repo; not exported", rid)
                continue
            seconds = (items.get((annotator, item.item_id)) or {}).get("seconds")
            annotations.append(
                schema.Annotation(
                    annotation_id=f"{ID_PREFIX}{annotator}-{rid}",
                    annotator=annotator,
                    response_id=rid,
                    spans=spans.get((annotator, rid), []),
                    response_reasons=reasons.get((annotator, rid), []),
                    # the time of the pair, split evenly between its two responses (sums stay right)
                    seconds=None if seconds is None else round(seconds / 2, 3),
                    taxonomy=self.taxonomy.key,
                )
            )
        comparisons = []
        for (annotator, item_id), row in sorted(items.items()):
            if row["submitted"] is None or item_id not in self.by_id:
                continue
            a, b = self.by_id[item_id].response_ids
            comparisons.append(
                schema.Comparison(
                    comparison_id=f"{ID_PREFIX}{annotator}-{item_id}",
                    annotator=annotator,
                    response_a=a,
                    response_b=b,
                    choice=row["choice"],
                    rationale=row["rationale"],
                    seconds=round(row["seconds"], 3),
                )
            )
        return annotations, comparisons

    def write(self) -> ExportReport | None:
        """Write the store into the repo's annotations and comparisons configs (atomically, validated).
        Rows this app wrote before are replaced; rows from elsewhere are kept. None when there is nothing."""
        annotations, comparisons = self.rows()
        configs: dict[str, list[Any]] = {}
        kept = {}
        for name, rows, id_col in (
            (schema.ANNOTATIONS, annotations, "annotation_id"),
            (schema.COMPARISONS, comparisons, "comparison_id"),
        ):
            others = [
                r
                for r in (self.repo.read(name) if self.repo.has(name) else [])
                if not str(r[id_col]).startswith(ID_PREFIX)
            ]
            kept[name] = len(others)
            if rows or self.repo.has(name):
                configs[name] = others + [schema.to_row(r) for r in rows]
        configs = {k: v for k, v in configs.items() if v}
        if not configs:
            return None
        keys = {r.get("taxonomy") for r in configs.get(schema.ANNOTATIONS, [])}
        self.repo.write(configs, taxonomy=self.taxonomy if keys <= {self.taxonomy.key} else None)
        report = ExportReport(len(annotations), len(comparisons), kept[schema.ANNOTATIONS], kept[schema.COMPARISONS])
        logger.info("%s to %s", report.summary(), self.repo.path)
        return report


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
        self.auth = LocalAuth(
            self.store, allowed=config.annotators, access_code=code, bounds=bounds, session_hours=config.session_hours
        )
        self.oauth = on_spaces() if config.oauth is None else config.oauth
        self.store_export = StoreExport(self.store, self.repo, self.items, self.taxonomy)
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
            out = [
                {"label": g.label, "reasons": [{"id": r.id, "label": r.label} for r in g.reasons]}
                for g in tax.groups_of(polarity)
            ]
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
        assigned = [
            r["item_id"]
            for r in self.store.read(
                "SELECT item_id FROM assignments WHERE annotator = ? ORDER BY assigned, rowid", (annotator,)
            )
        ]
        return self.overlap + [i for i in assigned if i in self.by_id]

    def _submitted(self, annotator: str) -> set[str]:
        return {
            r["item_id"]
            for r in self.store.read(
                "SELECT item_id FROM items WHERE annotator = ? AND submitted IS NOT NULL", (annotator,)
            )
        }

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
        row = self.store.read(
            "SELECT choice, rationale, seconds, submitted FROM items WHERE annotator = ? AND item_id = ?",
            (annotator, item_id),
        )
        state = dict(row[0]) if row else {"choice": None, "rationale": "", "seconds": 0.0, "submitted": None}
        responses = []
        shown = list(zip(item.response_ids, item.texts, strict=True))
        for rid, text in reversed(shown) if swapped else shown:
            spans = [
                self._span_view(text, dict(r))
                for r in self.store.read(
                    'SELECT span_id, start, "end", polarity, reasons, note, fix FROM spans WHERE annotator = ? AND '
                    "response_id = ? ORDER BY start, span_id",
                    (annotator, rid),
                )
            ]
            rr = self.store.read(
                "SELECT reasons FROM response_reasons WHERE annotator = ? AND response_id = ?", (annotator, rid)
            )
            responses.append(
                {
                    "response_id": rid,
                    "text": text,
                    "spans": spans,
                    "reasons": json.loads(rr[0]["reasons"]) if rr else [],
                }
            )
        return {
            "item_id": item_id,
            "index": index,
            "query": item.query,
            "document": {"title": item.doc_title, "text": item.doc_text},
            "responses": responses,
            "choice": self._flip(state["choice"]) if swapped else state["choice"],
            "rationale": state["rationale"],
            "seconds": state["seconds"],
            "submitted": state["submitted"] is not None,
        }

    @staticmethod
    def _span_view(text: str, r: dict[str, Any]) -> dict[str, Any]:
        return {
            "span_id": r["span_id"],
            "start": r["start"],
            "end": r["end"],
            "polarity": r["polarity"],
            "reasons": json.loads(r["reasons"]) if isinstance(r["reasons"], str) else r["reasons"],
            "note": r["note"],
            "fix": r["fix"] or "",
            "start16": codepoint_to_utf16(text, r["start"]),
            "end16": codepoint_to_utf16(text, r["end"]),
            "text": text[r["start"] : r["end"]],
        }

    # -- writing ---------------------------------------------------------------------------------------
    def _add_seconds(self, db: Any, annotator: str, item_id: str, seconds: Any) -> None:
        seconds = bound_number(seconds or 0, "seconds", 0, self.bounds.seconds_per_report)
        db.execute(
            "INSERT INTO items (annotator, item_id, seconds, updated) VALUES (?, ?, ?, ?) ON CONFLICT "
            "(annotator, item_id) DO UPDATE SET seconds = seconds + excluded.seconds, updated = "
            "excluded.updated",
            (annotator, item_id, seconds, time.time()),
        )

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
                cur = db.execute(
                    'UPDATE spans SET start = ?, "end" = ?, polarity = ?, reasons = ?, note = ?, '
                    "fix = ?, updated = ? WHERE annotator = ? AND response_id = ? AND span_id = ?",
                    (start, end, polarity, json.dumps(reasons), note, fix, now, annotator, response_id, span_id),
                )
                if cur.rowcount != 1:
                    raise UserError(f"you have no span {span_id} on this response (deleted in another tab?)")
            else:
                existing = (
                    db.execute(
                        "SELECT span_id FROM spans WHERE annotator = ? AND response_id = ? AND client_key = ?",
                        (annotator, response_id, key),
                    ).fetchone()
                    if key
                    else None
                )
                if existing is not None:  # a retry of a create that reached the disk: the same span again
                    span_id = existing[0]
                    db.execute(
                        'UPDATE spans SET start = ?, "end" = ?, polarity = ?, reasons = ?, note = ?, '
                        "fix = ?, updated = ? WHERE annotator = ? AND response_id = ? AND span_id = ?",
                        (start, end, polarity, json.dumps(reasons), note, fix, now, annotator, response_id, span_id),
                    )
                else:
                    count, top = db.execute(
                        "SELECT COUNT(*), COALESCE(MAX(span_id), 0) FROM spans WHERE "
                        "annotator = ? AND response_id = ?",
                        (annotator, response_id),
                    ).fetchone()
                    if count >= self.bounds.spans_per_response:
                        raise UserError(f"at most {self.bounds.spans_per_response} spans per response")
                    span_id = top + 1
                    db.execute(
                        f"INSERT INTO spans ({SPAN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            annotator,
                            response_id,
                            span_id,
                            start,
                            end,
                            polarity,
                            json.dumps(reasons),
                            note,
                            key,
                            now,
                            fix,
                        ),
                    )
            self._add_seconds(db, annotator, item.item_id, seconds)
        self.changed.set()
        row = {
            "span_id": span_id,
            "start": start,
            "end": end,
            "polarity": polarity,
            "reasons": reasons,
            "note": note,
            "fix": fix,
        }
        return {"span": self._span_view(text, row)}

    def delete_span(self, token: Any, item_id: Any, response_id: Any, span_id: Any) -> dict[str, Any]:
        annotator = self.auth.resolve(token)
        item = self._check_item(annotator, item_id)
        if response_id not in item.response_ids:
            raise UserError(f"response {str(response_id)[:100]!r} is not part of item {item.item_id!r}")
        span_id = bound_int(span_id, "span_id", 1, 10**9)
        with self.store.write() as db:
            cur = db.execute(
                "DELETE FROM spans WHERE annotator = ? AND response_id = ? AND span_id = ?",
                (annotator, response_id, span_id),
            )
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
            rows = [
                {"reason": reason, "note": ""}
                for reason in self._check_reasons(r.get("reasons"), None, "", f"response {which}")
                if reason not in others
            ]
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
                db.execute(
                    "INSERT INTO response_reasons VALUES (?, ?, ?, ?) ON CONFLICT (annotator, response_id) "
                    "DO UPDATE SET reasons = excluded.reasons, updated = excluded.updated",
                    (annotator, rid, json.dumps(rows), now),
                )
            self._add_seconds(db, annotator, item.item_id, seconds)
            db.execute(
                "UPDATE items SET choice = ?, rationale = ?, updated = ?, submitted = CASE WHEN ? THEN "
                "COALESCE(submitted, ?) ELSE submitted END WHERE annotator = ? AND item_id = ?",
                (choice, rationale, now, submit, now, annotator, item.item_id),
            )
        self.changed.set()
        return {"saved": True, "submitted": submit, "progress": self.progress(annotator)}

    def logout(self, token: Any) -> dict[str, Any]:
        self.auth.logout(token)
        return {}

    # -- export ----------------------------------------------------------------------------------------
    def export_rows(self) -> tuple[list[schema.Annotation], list[schema.Comparison]]:
        """Every annotator's work as records of the annotations and comparisons configs (Python offsets)."""
        return self.store_export.rows()

    def export(self, run: Callable[[], ExportReport | None] | None = None) -> ExportReport | None:
        """Write the store into the repo's annotations and comparisons configs (atomically, validated), by `run`
        (default: `StoreExport.write` in this process), under the export lock. None when there is nothing."""
        with self.export_lock:
            self.changed.clear()
            return (run or self.store_export.write)()

    def restore_from_repo(self) -> int:
        """Read back into the store the work this app exported earlier but the store lacks (a Space restarted
        without persistent storage starts from an empty database). Items the store already has any record of,
        for that annotator, are left alone. Returns the number of (annotator, item) pairs restored."""
        if not (self.repo.has(schema.ANNOTATIONS) or self.repo.has(schema.COMPARISONS)):
            return 0
        known = {(r["annotator"], r["item_id"]) for r in self.store.read("SELECT annotator, item_id FROM items")}

        def ours(name: str, col: str) -> list[dict[str, Any]]:
            rows = self.repo.read(name) if self.repo.has(name) else []
            return [r for r in rows if str(r[col]).startswith(ID_PREFIX)]

        restored: set[tuple[str, str]] = set()
        now = time.time()
        with self.store.write() as db:

            def claim(annotator: str, item_id: str, seconds: float | None) -> bool:
                if (annotator, item_id) in known and (annotator, item_id) not in restored:
                    return False
                if (annotator, item_id) not in restored:
                    db.execute(
                        "INSERT INTO items (annotator, item_id, seconds, updated) VALUES (?, ?, ?, ?)",
                        (annotator, item_id, seconds or 0.0, now),
                    )
                    if item_id in self.pool:
                        db.execute("INSERT OR IGNORE INTO assignments VALUES (?, ?, ?)", (item_id, annotator, now))
                    restored.add((annotator, item_id))
                return True

            for row in ours(schema.COMPARISONS, "comparison_id"):
                item_id = f"{row['response_a']}~{row['response_b']}"
                if item_id in self.by_id and claim(row["annotator"], item_id, row["seconds"]):
                    db.execute(
                        "UPDATE items SET choice = ?, rationale = ?, submitted = ? WHERE annotator = ? AND "
                        "item_id = ?",
                        (row["choice"], row["rationale"], now, row["annotator"], item_id),
                    )
            for row in ours(schema.ANNOTATIONS, "annotation_id"):
                item = self.item_of_response.get(row["response_id"])
                seconds = None if row["seconds"] is None else 2 * row["seconds"]
                if item is None or not claim(row["annotator"], item.item_id, seconds):
                    continue
                for sp in row["spans"]:
                    db.execute(
                        f"INSERT OR IGNORE INTO spans ({SPAN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)",
                        (
                            row["annotator"],
                            row["response_id"],
                            sp["span_id"],
                            sp["start"],
                            sp["end"],
                            sp["polarity"],
                            json.dumps(sp["reasons"] or []),
                            sp["note"] or "",
                            now,
                            sp.get("fix") or "",
                        ),
                    )
                if row["response_reasons"]:
                    db.execute(
                        "INSERT OR REPLACE INTO response_reasons VALUES (?, ?, ?, ?)",
                        (row["annotator"], row["response_id"], json.dumps(row["response_reasons"]), now),
                    )
        if restored:
            logger.info("restored %d annotator item(s) from the exported configs of %s", len(restored), self.repo.path)
        return len(restored)

    def close(self) -> None:
        self.store.close()
