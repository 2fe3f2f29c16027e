"""Spans as inline tags: render a response with its spans marked up, and parse marked-up text back exactly.

The tagged form is what language models see and write (rewrite prompts, model annotators), so it has to be
readable and it has to survive a round trip. A span becomes a pair of tags that both carry its id::

    <like id='1'>ab<dislike id='2'>cd</like id='1'>ef</dislike id='2'>

Because the closing tag names its id, crossing and nested spans are unambiguous, which plain XML-style tags
could not express.

The text itself may contain strings that look like tags (a response that quotes markup, say). Only those are
escaped, with a small reversible scheme (see `escape_text`); all other text, including `<`, `&` and `&lt;`,
is left exactly as it is, so a model reads the response it wrote.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from spanpref.errors import InputError
from spanpref.schema import DISLIKE, LIKE, POLARITIES, Span

logger = logging.getLogger(__name__)

__all__ = [
    "MarkupError",
    "escape_text",
    "parse_markup",
    "render_markup",
    "spans_of_polarity",
    "strip_markup",
    "unescape_text",
]


class MarkupError(InputError):
    """Tagged text that cannot be parsed, or spans that cannot be rendered. The message says where and why."""


# ---------------------------------------------------------------------------------------------------
# Escaping
# ---------------------------------------------------------------------------------------------------
# What a tag name looks like right after its `<`. Text is escaped only where this follows.
_TAG_NAME_AHEAD = r"(?=/?(?:dis)?like\b)"
_AMP = "&amp;"
_LT = "&lt;"
# A run of `&amp;`s ending in `&lt;` or a raw `<`, in front of a tag name. Matching is leftmost, so the
# run always starts at the first `&amp;` of a chain: runs never split, which keeps the scheme reversible.
_ESCAPE_RE = re.compile(rf"(?P<amps>(?:{_AMP})*)(?P<lt>{_LT}|<){_TAG_NAME_AHEAD}")
_UNESCAPE_RE = re.compile(rf"(?P<amps>(?:{_AMP})*){_LT}{_TAG_NAME_AHEAD}")
# A raw `<` in front of a tag name: never in rendered text, so in tagged text it is a tag we failed to read.
_RAW_TAG_START_RE = re.compile(rf"<{_TAG_NAME_AHEAD}")


def _escape_run(m: re.Match[str]) -> str:
    # n `&amp;` + `<` -> 2n `&amp;` + `&lt;`;  n `&amp;` + `&lt;` -> 2n+1 `&amp;` + `&lt;`.
    # Parity tells the two apart, so every run has its own escaped form.
    n = len(m["amps"]) // len(_AMP)
    return _AMP * (2 * n + (m["lt"] == _LT)) + _LT


def _unescape_run(m: re.Match[str]) -> str:
    n, was_entity = divmod(len(m["amps"]) // len(_AMP), 2)
    return _AMP * n + (_LT if was_entity else "<")


def escape_text(text: str) -> str:
    """Make `text` safe to place between tags, changing nothing that cannot be mistaken for a tag.

    Only runs `(&amp;)*` + (`<` or `&lt;`) directly before `like`, `dislike`, `/like` or `/dislike` (as whole
    words) change: every `&amp;` in the run is doubled, `&lt;` gains one `&amp;` in front and `<` becomes
    `&lt;`. So `<like` -> `&lt;like` and `&lt;like` -> `&amp;&lt;like`, and `unescape_text` undoes it exactly.
    """
    return _ESCAPE_RE.sub(_escape_run, text)


def unescape_text(text: str) -> str:
    """Invert `escape_text`: `unescape_text(escape_text(t)) == t` for every string `t`."""
    return _UNESCAPE_RE.sub(_unescape_run, text)


# ---------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Item:
    span_id: int
    start: int
    end: int
    polarity: str


def _field(span: Span | Mapping[str, Any], name: str, index: int) -> Any:
    if isinstance(span, Mapping):
        if name not in span:
            raise MarkupError(f"span #{index} (id {span.get('span_id', '?')!r}): missing field {name!r}")
        return span[name]
    return getattr(span, name)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _checked_items(text: str, spans: Iterable[Span | Mapping[str, Any]]) -> list[_Item]:
    """The spans as `_Item`s, or `MarkupError` naming the first span that cannot be rendered and why."""
    items: list[_Item] = []
    seen: set[int] = set()
    for index, span in enumerate(spans):
        sid, start, end, polarity = (_field(span, f, index) for f in ("span_id", "start", "end", "polarity"))
        if not _is_int(sid):
            raise MarkupError(f"span #{index}: span_id {sid!r} is not an integer")
        label = f"span {sid}"
        if not _is_int(start) or not _is_int(end):
            raise MarkupError(f"{label}: start and end must be integers, got start={start!r}, end={end!r}")
        if start < 0:
            raise MarkupError(f"{label}: start {start} is negative")
        if start >= end:
            raise MarkupError(f"{label}: start {start} is not before end {end} (empty or reversed span)")
        if end > len(text):
            raise MarkupError(f"{label}: end {end} is past the end of the text ({len(text)} characters)")
        if polarity not in POLARITIES:
            raise MarkupError(f"{label}: polarity {polarity!r} is not one of {list(POLARITIES)}")
        if sid in seen:
            raise MarkupError(f"{label}: span_id {sid} is used by more than one span")
        seen.add(sid)
        items.append(_Item(sid, start, end, polarity))
    return items


def _open_tag(item: _Item) -> str:
    return f"<{item.polarity} id='{item.span_id}'>"


def _close_tag(item: _Item) -> str:
    return f"</{item.polarity} id='{item.span_id}'>"


def render_markup(text: str, spans: Iterable[Span | Mapping[str, Any]]) -> str:
    """`text` with each span wrapped in `<like id='k'>…</like id='k'>` or `<dislike id='k'>…</dislike id='k'>`.

    Tag order at a shared position is chosen so the markup reads naturally and nests where it can:
    closing tags come before opening tags (adjacent spans stay visibly adjacent instead of appearing to
    overlap by nothing); of spans opening together, the longer opens first; of spans closing together, the
    one opened last closes first. `parse_markup` gives back `text` and the spans exactly.

    Raises `MarkupError` for a span outside the text, an empty span, an unknown polarity or a repeated id.
    """
    items = _checked_items(text, spans)
    # Opening order: by position, longer first, then by id (identical ranges open in id order).
    by_open = sorted(items, key=lambda s: (s.start, -s.end, s.span_id))
    rank = {s.span_id: i for i, s in enumerate(by_open)}
    opens: dict[int, list[_Item]] = {}
    closes: dict[int, list[_Item]] = {}
    for s in by_open:
        opens.setdefault(s.start, []).append(s)
        closes.setdefault(s.end, []).append(s)

    out: list[str] = []
    prev = 0
    for pos in sorted(opens.keys() | closes.keys()):
        # Escape each stretch between tags on its own: `parse_markup` unescapes the same stretches.
        out.append(escape_text(text[prev:pos]))
        out.extend(_close_tag(s) for s in sorted(closes.get(pos, []), key=lambda s: -rank[s.span_id]))
        out.extend(_open_tag(s) for s in opens.get(pos, []))
        prev = pos
    out.append(escape_text(text[prev:]))
    return "".join(out)


# ---------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------
# Quotes around the id: ASCII, plus the typographic ones models sometimes write instead.
_QUOTES = "'\"\u2018\u2019\u201c\u201d"
_TAG_RE = re.compile(
    rf"<(?P<close>/?)(?P<polarity>like|dislike)\s+id\s*=\s*[{_QUOTES}](?P<id>[^{_QUOTES}<>]*)[{_QUOTES}]\s*>"
)
_INT_RE = re.compile(r"\s*(-?[0-9]+)\s*")
_CONTEXT = 30


def _context(tagged: str, at: int) -> str:
    """A short excerpt around position `at` for error messages."""
    lo, hi = max(0, at - _CONTEXT), min(len(tagged), at + _CONTEXT)
    return f"{'…' if lo > 0 else ''}{tagged[lo:hi]!r}{'…' if hi < len(tagged) else ''}"


@dataclass
class _Open:
    polarity: str
    start: int  # offset in the plain text
    at: int  # position of the opening tag in the tagged text
    tag: str


class _Parser:
    """One pass over tagged text. In strict mode the first problem raises; otherwise the offending tag is
    dropped (or, for a closing tag of the wrong polarity, trusted to close its span) and a warning logged."""

    def __init__(self, tagged: str, strict: bool):
        self.tagged = tagged
        self.strict = strict
        self.parts: list[str] = []
        self.length = 0  # plain-text characters so far
        self.open: dict[int, _Open] = {}
        self.first_seen: dict[int, int] = {}  # id -> position of its first opening tag
        self.spans: list[Span] = []

    def problem(self, message: str, at: int) -> None:
        full = f"{message} at position {at}: {_context(self.tagged, at)}"
        if self.strict:
            raise MarkupError(full)
        logger.warning("markup: %s (ignored)", full)

    def text(self, segment: str, at: int) -> None:
        raw = _RAW_TAG_START_RE.search(segment)
        if raw:
            self.problem(
                "text looks like a tag but is not one of <like id='N'>, </like id='N'>, <dislike id='N'>, "
                "</dislike id='N'>; it is kept as text",
                at + raw.start(),
            )
        plain = unescape_text(segment)
        self.parts.append(plain)
        self.length += len(plain)

    def tag(self, m: re.Match[str]) -> None:
        tag, at, polarity = m[0], m.start(), m["polarity"]
        id_match = _INT_RE.fullmatch(m["id"])
        if id_match is None:
            self.problem(f"tag {tag!r} has id {m['id']!r}, which is not an integer", at)
            return
        sid = int(id_match[1])
        if not m["close"]:
            if sid in self.first_seen:
                state = "still open" if sid in self.open else "already closed"
                self.problem(f"id {sid} is opened twice (first at position {self.first_seen[sid]}, {state})", at)
                return
            self.first_seen[sid] = at
            self.open[sid] = _Open(polarity, self.length, at, tag)
            return
        opened = self.open.get(sid)
        if opened is None:
            self.problem(f"closing tag {tag!r} has no matching opening tag", at)
            return
        if opened.polarity != polarity:
            self.problem(
                f"closing tag {tag!r} has polarity {polarity!r} but span {sid} was opened as {opened.polarity!r} "
                f"by {opened.tag!r} at position {opened.at}",
                at,
            )
        del self.open[sid]
        if opened.start == self.length:
            self.problem(f"span {sid} is empty (nothing between {opened.tag!r} and {tag!r})", at)
            return
        self.spans.append(Span(span_id=sid, start=opened.start, end=self.length, polarity=opened.polarity))

    def finish(self) -> tuple[str, list[Span]]:
        for sid, opened in sorted(self.open.items(), key=lambda kv: kv[1].at):
            self.problem(f"tag {opened.tag!r} (span {sid}) is never closed", opened.at)
        self.spans.sort(key=lambda s: (s.start, -s.end, s.span_id))
        return "".join(self.parts), self.spans


def parse_markup(tagged: str, *, strict: bool = True) -> tuple[str, list[Span]]:
    """The plain text and the spans of `tagged` (the inverse of `render_markup`).

    Spans come back sorted by (start, -end, span_id), with empty reasons and note. In strict mode a stray or
    unclosed tag, an id opened twice, a closing tag whose polarity differs from its opening tag, a non-integer
    id, an empty span, or tag-like text that is not a well-formed tag raises `MarkupError` with the position
    and the text around it. With `strict=False` (for model output) such tags are dropped with a warning and
    the rest is kept; a closing tag of the wrong polarity still closes its span, which keeps its opening
    polarity. The plain text is the same in both modes.
    """
    parser = _Parser(tagged, strict)
    last = 0
    for m in _TAG_RE.finditer(tagged):
        parser.text(tagged[last : m.start()], last)
        parser.tag(m)
        last = m.end()
    parser.text(tagged[last:], last)
    return parser.finish()


def strip_markup(tagged: str) -> str:
    """The plain text of `tagged`: tags removed, escapes undone. Never fails on malformed tags."""
    last = 0
    parts: list[str] = []
    for m in _TAG_RE.finditer(tagged):
        parts.append(unescape_text(tagged[last : m.start()]))
        last = m.end()
    parts.append(unescape_text(tagged[last:]))
    return "".join(parts)


_S = TypeVar("_S", Span, Mapping[str, Any])


def spans_of_polarity(spans: Iterable[_S], polarity: str) -> list[_S]:
    """The spans (dataclasses or row dicts) with the given polarity, in their original order."""
    if polarity not in POLARITIES:
        raise MarkupError(f"polarity {polarity!r} is not one of {[LIKE, DISLIKE]}")
    return [s for s in spans if (s.get("polarity") if isinstance(s, Mapping) else s.polarity) == polarity]
