"""AI-suggested spans in the annotation Space: the spans that AI annotators (`annotator = "ai:<name>"` rows of the
repo's annotations config) marked on a response are offered to the person annotating it, who accepts, edits or
rejects each one.

How it is kept, without a column of its own in the store's span table:

- Every suggestion has a stable id (`sg-` and a hash of the AI row's annotation id and span id). Accepting one
  saves an ordinary span through `AnnotationService.save_span` whose page-made `key` is that id, so the span is the
  annotator's like any other (editable, deletable), and the key says where it came from. Deleting it offers the
  suggestion again.
- Rejections go to a table of their own (`suggestion_rejections`) in the same SQLite file.
- `SuggestionExport` (a `StoreExport`) writes spans[].source (`"ai:<name>"`, "" for spans the person drew) and
  the annotation's `suggestions` tally (shown, accepted, rejected) into the exported rows.

Suggestions never leave the store as anyone's work: only accepted ones become spans.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from spanpref import schema
from spanpref.errors import SpanprefError
from spanpref.repo import DatasetRepo
from spanpref.taxonomy import Taxonomy
from spanpref.ui.annotate_service import ID_PREFIX, AnnotateConfig, AnnotationService, Item, StoreExport
from spanpref.ui.annotate_store import AnnotationStore
from spanpref.ui.common import UserError, codepoint_to_utf16

logger = logging.getLogger(__name__)

AI_PREFIX = "ai:"
ALL, NONE = "all", "none"
KEY_PREFIX = "sg-"
REJECTIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS suggestion_rejections (
    annotator TEXT NOT NULL, response_id TEXT NOT NULL, suggestion_id TEXT NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (annotator, response_id, suggestion_id))
"""


class SuggestionError(SpanprefError, ValueError):
    """A suggestions option that names no AI annotator."""


@dataclass(frozen=True)
class Suggestion:
    suggestion_id: str
    source: str  # the AI annotator, "ai:<name>"
    response_id: str
    start: int  # Python offsets, as in the repo
    end: int
    polarity: str
    reasons: tuple[str, ...]
    note: str


def suggestion_id(annotation_id: str, span_id: int) -> str:
    return KEY_PREFIX + hashlib.sha256(f"{annotation_id}\0{span_id}".encode()).hexdigest()[:16]


def parse_choice(value: str | None) -> str | None:
    """The suggestions option as `ALL`, one `ai:<name>`, or None (off)."""
    value = (value or "").strip()
    if not value or value.lower() == NONE:
        return None
    if value.lower() == ALL:
        return ALL
    if not value.startswith(AI_PREFIX) or value == AI_PREFIX:
        raise SuggestionError(f"suggestions: give all, none or an AI annotator such as ai:llm (got {value!r})")
    return value


def load_suggestions(repo: DatasetRepo, texts: dict[str, str], taxonomy: Taxonomy) -> dict[str, list[Suggestion]]:
    """response_id -> every AI annotator's spans on it, in text order. Spans that do not fit the response text
    are left out, and so are reasons the taxonomy lacks (an AI annotator may have used another one)."""
    if not repo.has(schema.ANNOTATIONS):
        return {}
    out: dict[str, list[Suggestion]] = {}
    for row in repo.read(schema.ANNOTATIONS):
        source, rid = str(row.get("annotator") or ""), row.get("response_id")
        # a person who logged in under an ai: name is still a person: rows this app wrote are never suggestions
        if not source.startswith(AI_PREFIX) or str(row["annotation_id"]).startswith(ID_PREFIX):
            continue
        if rid not in texts:
            continue
        text = texts[rid]
        for sp in row.get("spans") or []:
            start, end, polarity = sp.get("start"), sp.get("end"), sp.get("polarity")
            if polarity not in schema.POLARITIES or type(start) is not int or type(end) is not int:
                continue
            if not 0 <= start < end <= len(text):
                continue
            note = sp.get("note") or ""
            reasons = tuple(r for r in sp.get("reasons") or [] if taxonomy.has_reason(r, polarity))
            if not note.strip():  # 'other' says why in the note; without one it could not be saved
                reasons = tuple(r for r in reasons if r != taxonomy.other_id(polarity))
            out.setdefault(rid, []).append(
                Suggestion(
                    suggestion_id=suggestion_id(row["annotation_id"], sp["span_id"]),
                    source=source,
                    response_id=rid,
                    start=start,
                    end=end,
                    polarity=polarity,
                    reasons=reasons,
                    note=note,
                )
            )
    for spans in out.values():
        spans.sort(key=lambda s: (s.start, s.end, s.source))
    return out


def offered(suggestions: dict[str, list[Suggestion]], choice: str | None) -> dict[str, list[Suggestion]]:
    """The suggestions of `choice` (`ALL`, one `ai:<name>`, or None: none) among every AI annotator's."""
    if choice is None:
        return {}
    if choice == ALL:
        return suggestions
    out = {rid: [s for s in spans if s.source == choice] for rid, spans in suggestions.items()}
    if not any(out.values()):
        logger.warning("suggestions: %s has no spans on the responses to annotate; none are shown", choice)
    return {rid: spans for rid, spans in out.items() if spans}


def _texts(items: Iterable[Item]) -> dict[str, str]:
    return {rid: text for it in items for rid, text in zip(it.response_ids, it.texts, strict=True)}


def _keyed_spans(store: AnnotationStore, where: str = "", params: tuple = ()) -> list[Any]:
    return store.read(
        f'SELECT annotator, response_id, span_id, start, "end", client_key FROM spans WHERE client_key LIKE ?{where}',
        (KEY_PREFIX + "%", *params),
    )


def _rejections(store: AnnotationStore, where: str = "", params: tuple = ()) -> list[Any]:
    try:
        return store.read(
            f"SELECT annotator, response_id, suggestion_id FROM suggestion_rejections{' WHERE ' + where if where else ''}",
            params,
        )
    except sqlite3.OperationalError as e:  # a store no suggestion was ever offered from lacks the table
        if "no such table" in str(e):
            return []
        raise


class SuggestionExport(StoreExport):
    """The store's export with the provenance of accepted suggestions: spans[].source, and the tally of suggestions
    shown, accepted and rejected per annotation."""

    def __init__(
        self,
        store: AnnotationStore,
        repo: DatasetRepo,
        items: list[Item],
        taxonomy: Taxonomy,
        choice: str | None = ALL,
    ):
        super().__init__(store, repo, items, taxonomy)
        every = load_suggestions(repo, _texts(items), taxonomy)
        # every AI annotator's, whatever is offered now: a span accepted earlier keeps its source
        self.known = {s.suggestion_id: s for spans in every.values() for s in spans}
        self.offered = {rid: {s.suggestion_id for s in spans} for rid, spans in offered(every, choice).items()}

    def rows(self) -> tuple[list[schema.Annotation], list[schema.Comparison]]:
        annotations, comparisons = super().rows()
        # read after the spans: a span saved in between is exported without its source once, and with it at the
        # next export (every save triggers one); offsets are compared so that a span id reused meanwhile is not
        # given another span's source
        keyed = {
            (r["annotator"], r["response_id"], r["span_id"]): (r["client_key"], r["start"], r["end"])
            for r in _keyed_spans(self.store)
        }
        rejected: dict[tuple[str, str], set[str]] = {}
        for r in _rejections(self.store):
            rejected.setdefault((r["annotator"], r["response_id"]), set()).add(r["suggestion_id"])
        for a in annotations:
            accepted = set()
            for sp in a.spans:
                key, start, end = keyed.get((a.annotator, a.response_id, sp.span_id), (None, None, None))
                suggestion = self.known.get(key)
                if suggestion and suggestion.response_id == a.response_id and (start, end) == (sp.start, sp.end):
                    sp.source = suggestion.source
                    accepted.add(key)
            offered = self.offered.get(a.response_id, set())
            shown = offered | accepted
            if shown:
                a.suggestions = schema.SuggestionTally(
                    shown=len(shown),
                    accepted=len(accepted),
                    rejected=len((rejected.get((a.annotator, a.response_id), set()) & shown) - accepted),
                )
        return annotations, comparisons


class Suggestions:
    """The page's side: the suggestions of an item, rejecting one, and bringing rejected ones back."""

    def __init__(self, service: AnnotationService, choice: str | None = ALL):
        self.service = service
        self.choice = choice
        every = load_suggestions(service.repo, _texts(service.items), service.taxonomy)
        self.known = {s.suggestion_id: s for spans in every.values() for s in spans}
        self.by_response = offered(every, choice)
        self.by_id = {s.suggestion_id: s for spans in self.by_response.values() for s in spans}
        if self.known and not service.store.readonly:
            with service.store.write() as db:
                db.execute(REJECTIONS_SCHEMA)
            restored = self._restore_keys()
            if restored:
                logger.info("%d restored span(s) are accepted suggestions again", restored)

    def _restore_keys(self) -> int:
        """Give spans that `AnnotationService.restore_from_repo` read back from the exported configs (a store that
        started empty) their suggestion's key again, so that their source survives the next export. Rejections are
        not in the export, so those suggestions are offered again."""
        place = {(s.response_id, s.source, s.start, s.end): s.suggestion_id for s in self.known.values()}
        found = []
        for row in self.service.repo.read(schema.ANNOTATIONS):
            if not str(row["annotation_id"]).startswith(ID_PREFIX):
                continue
            for sp in row.get("spans") or []:
                key = place.get((row["response_id"], sp.get("source") or "", sp["start"], sp["end"]))
                if key:
                    found.append((key, row["annotator"], row["response_id"], sp["span_id"], sp["start"], sp["end"]))
        if not found:
            return 0
        n = 0
        with self.service.store.write() as db:
            for key, annotator, rid, span_id, start, end in found:
                taken = db.execute(
                    "SELECT 1 FROM spans WHERE annotator = ? AND response_id = ? AND client_key = ?",
                    (annotator, rid, key),
                ).fetchone()
                if taken is None:  # restored spans have no key; a span saved from the page has its own
                    n += db.execute(
                        "UPDATE spans SET client_key = ? WHERE annotator = ? AND response_id = ? AND span_id = ? AND "
                        'start = ? AND "end" = ? AND client_key IS NULL',
                        (key, annotator, rid, span_id, start, end),
                    ).rowcount
        return n

    def __len__(self) -> int:
        return len(self.by_id)

    def add_to_item(self, token: Any, reply: dict[str, Any]) -> dict[str, Any]:
        """`reply` (of `AnnotationService.get_item`) with each response's pending suggestions, and each span's
        source."""
        view = reply.get("item")
        if not view or not self.known:  # a repo without AI annotations: the item as it was
            return reply
        annotator = self.service.auth.resolve(token)
        rids = [r["response_id"] for r in view["responses"]]
        marks = "(" + ", ".join("?" * len(rids)) + ")"
        keyed = {
            (r["response_id"], r["span_id"]): r["client_key"]
            for r in _keyed_spans(
                self.service.store, f" AND annotator = ? AND response_id IN {marks}", (annotator, *rids)
            )
        }
        rejected = {
            r["suggestion_id"]
            for r in _rejections(self.service.store, f"annotator = ? AND response_id IN {marks}", (annotator, *rids))
        }
        for r in view["responses"]:
            accepted = set()
            for sp in r["spans"]:
                s = self.known.get(keyed.get((r["response_id"], sp["span_id"])))
                sp["source"] = s.source if s and s.response_id == r["response_id"] else ""
                sp["suggested"] = None
                if sp["source"]:
                    accepted.add(s.suggestion_id)
                    if s.suggestion_id in self.by_id:  # deleting the span offers the suggestion again
                        sp["suggested"] = self._view(r["text"], s)
            offered = self.by_response.get(r["response_id"], [])
            r["suggestions"] = [
                self._view(r["text"], s) for s in offered if s.suggestion_id not in accepted | rejected
            ]
            r["rejected_suggestions"] = sum(1 for s in offered if s.suggestion_id in rejected - accepted)
        return reply

    @staticmethod
    def _view(text: str, s: Suggestion) -> dict[str, Any]:
        return {
            "id": s.suggestion_id,
            "source": s.source,
            "start": s.start,
            "end": s.end,
            "start16": codepoint_to_utf16(text, s.start),
            "end16": codepoint_to_utf16(text, s.end),
            "polarity": s.polarity,
            "reasons": list(s.reasons),
            "note": s.note,
            "text": text[s.start : s.end],
        }

    def _check(self, token: Any, item_id: Any, response_id: Any, sid: Any) -> tuple[str, Suggestion]:
        annotator = self.service.auth.resolve(token)
        item = self.service._check_item(annotator, item_id)
        if response_id not in item.response_ids:
            raise UserError(f"response {str(response_id)[:100]!r} is not part of item {item.item_id!r}")
        s = self.by_id.get(sid) if isinstance(sid, str) else None
        if s is None or s.response_id != response_id:
            raise UserError(f"no suggestion {str(sid)[:40]!r} on this response")
        return annotator, s

    def reject(self, token: Any, item_id: Any, response_id: Any, sid: Any) -> dict[str, Any]:
        annotator, s = self._check(token, item_id, response_id, sid)
        with self.service.store.write() as db:
            db.execute(
                "INSERT OR REPLACE INTO suggestion_rejections VALUES (?, ?, ?, ?)",
                (annotator, response_id, s.suggestion_id, time.time()),
            )
        self.service.changed.set()
        return {"rejected": s.suggestion_id}

    def restore(self, token: Any, item_id: Any, response_id: Any) -> dict[str, Any]:
        """Offer the rejected suggestions of a response again."""
        annotator = self.service.auth.resolve(token)
        item = self.service._check_item(annotator, item_id)
        if response_id not in item.response_ids:
            raise UserError(f"response {str(response_id)[:100]!r} is not part of item {item.item_id!r}")
        with self.service.store.write() as db:
            cur = db.execute(
                "DELETE FROM suggestion_rejections WHERE annotator = ? AND response_id = ?", (annotator, response_id)
            )
        self.service.changed.set()
        return {"restored": cur.rowcount}


def attach(service: AnnotationService) -> Suggestions:
    """Offer the repo's AI spans on `service`'s page (as `service.config.suggestions` says) and export their
    provenance (with the option off, accepted spans still say where they came from)."""
    choice = parse_choice(service.config.suggestions)
    service.store_export = SuggestionExport(service.store, service.repo, service.items, service.taxonomy, choice)
    suggestions = Suggestions(service, choice)
    if suggestions:
        logger.info("offering %d AI-suggested span(s) (%s)", len(suggestions), choice)
    return suggestions


def export_for(
    config: AnnotateConfig, store: AnnotationStore, repo: DatasetRepo, items: list[Item], taxonomy: Taxonomy
) -> SuggestionExport:
    """The export an export process runs: `SuggestionExport` with the option of `config`."""
    return SuggestionExport(store, repo, items, taxonomy, parse_choice(config.suggestions))
