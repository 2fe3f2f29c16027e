"""Structural checks on improvement chains: is each step a_i -> a_{i+1} one local edit of the addressed span?

CH-Wang et al. (2025, section 3) keep a chain only if every step rewrites one disliked span (left to right) and
nothing else, using "a Levenshtein distance heuristic" to discard "multi-edit steps or non-contiguous rewrites".
This module is that heuristic, made explicit:

- `edit_regions` / `single_edit` describe what changed between two texts;
- `reanchor` carries span offsets from one text to the next through an edit;
- `check_step` accepts or rejects one step, `check_chain` a whole chain;
- `summarize_chains` turns rows of the chains config into per-rewriter validity and cost statistics.

Every rejection reason starts with a stable code (`reason_code` extracts it) so statistics can group them.
Offsets are Python `str` offsets (code points), as everywhere in `spanpref`: an emoji outside the BMP is one
character, not two UTF-16 units.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rapidfuzz.distance import Indel, Levenshtein, Postfix, Prefix

from spanpref.schema import DISLIKE, Span, to_row

logger = logging.getLogger(__name__)

# Reason codes, in the order `check_step` tests them: the first that applies is reported. Specific diagnoses of
# a broken output (blank, unchanged, repeated, cut off) come first, because a broken output usually also trips
# the generic checks below it (a truncated text is too short and far from the span) and "truncated" says more.
# Whole-text size checks come next, then the shape of the edit (how many regions), then where it is.
EMPTY = "empty"
NO_CHANGE = "no_change"
DUPLICATED = "duplicated"
TRUNCATED = "truncated"
DROPS_TAIL = "drops_tail"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
REWRITES_TOO_MUCH = "rewrites_too_much"
TWO_EDITS = "two_edits"
FAR_FROM_SPAN = "far_from_span"
LIKED_SPAN_CHANGED = "liked_span_changed"
STEP_REASONS = (
    EMPTY,
    NO_CHANGE,
    DUPLICATED,
    TRUNCATED,
    DROPS_TAIL,
    TOO_SHORT,
    TOO_LONG,
    REWRITES_TOO_MUCH,
    TWO_EDITS,
    FAR_FROM_SPAN,
    LIKED_SPAN_CHANGED,
)
# Chain-level codes (`check_chain`).
STEP_COUNT = "step_count"
SPAN_LOST = "span_lost"

LIKED_SPAN_MODES = ("reject", "warn")


@dataclass
class ValidationConfig:
    slack: int = field(
        default=40,
        metadata={
            "help": "Characters an edit may reach beyond the addressed span and still count as touching it: the "
            "paper lets the model revise the surrounding clause for fluency, so an edit need not overlap the span."
        },
    )
    merge_gap: int = field(
        default=12,
        metadata={
            "help": "Changed regions separated by fewer unchanged characters than this count as one edit (the "
            "character alignment keeps stray letters and short words inside a rewritten phrase)."
        },
    )
    merge_kept_phrases: bool = field(
        default=True,
        metadata={
            "help": "Also count two changed regions as one edit when the unchanged text between them is shorter "
            "than each of them: a sentence rewrite that keeps a phrase in its middle is still one edit. False "
            "counts regions with merge_gap alone."
        },
    )
    liked_spans: str = field(
        default="reject",
        metadata={"help": "What to do when an edit alters a liked span: 'reject' the step or 'warn' and accept it."},
    )
    min_length_ratio: float = field(
        default=0.3,
        metadata={"help": "Reject a step whose text is shorter than this fraction of the previous text (0 disables)."},
    )
    max_length_ratio: float = field(
        default=2.0,
        metadata={"help": "Reject a step whose text is longer than this multiple of the previous text (>= 1)."},
    )
    max_edit_fraction: float = field(
        default=0.8,
        metadata={
            "help": "Reject a step whose changed regions cover more than this fraction of the previous text "
            "(a full rewrite, not a local edit); texts shorter than short_text_chars are exempt."
        },
    )
    short_text_chars: int = field(
        default=200,
        metadata={
            "help": "Texts shorter than this are exempt from max_edit_fraction: fixing one span of a two-sentence "
            "answer can legitimately rewrite most of it."
        },
    )
    duplicate_min_chars: int = field(
        default=60,
        metadata={
            "help": "A passage at least this long that the step makes occur more often than before, and at least "
            "twice, marks the text as duplicated (models sometimes repeat the response or a paragraph). 0 disables."
        },
    )
    max_tail_drop: int = field(
        default=200,
        metadata={
            "help": "Reject (drops_tail) a step whose edit runs to the end of the text and removes more than this "
            "many characters beyond the addressed span plus slack, even though the text ends cleanly: the model "
            "stopped early instead of copying the rest of the response."
        },
    )

    def __post_init__(self) -> None:
        def fail(name: str, rule: str) -> None:
            raise ValueError(f"ValidationConfig.{name} {rule}, got {getattr(self, name)!r}")

        for name in ("slack", "short_text_chars", "duplicate_min_chars", "max_tail_drop"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                fail(name, "must be an integer >= 0")
        if not _is_int(self.merge_gap) or self.merge_gap < 1:
            fail("merge_gap", "must be an integer >= 1")
        if self.liked_spans not in LIKED_SPAN_MODES:
            fail("liked_spans", f"must be one of {list(LIKED_SPAN_MODES)}")
        if not _is_number(self.min_length_ratio) or not 0 <= self.min_length_ratio <= 1:
            fail("min_length_ratio", "must be a number in [0, 1]")
        if not _is_number(self.max_length_ratio) or self.max_length_ratio < 1:
            fail("max_length_ratio", "must be a number >= 1")
        if not _is_number(self.max_edit_fraction) or not 0 < self.max_edit_fraction <= 1:
            fail("max_edit_fraction", "must be a number in (0, 1]")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value  # rejects NaN


# ---------------------------------------------------------------------------------------------------
# What changed
# ---------------------------------------------------------------------------------------------------
@dataclass
class Edit:
    start: int  # changed region [start, end) in the old text
    end: int
    new_end: int  # end of the changed region in the new text (it starts at `start` there too)
    distance: int  # character-level Levenshtein distance old -> new

    @property
    def shift(self) -> int:
        """How far text after the edit moves: new_end - end."""
        return self.new_end - self.end


Region = tuple[int, int, int, int]  # (old_start, old_end, new_start, new_end)


def edit_regions(old: str, new: str, merge_gap: int = 12) -> list[Region]:
    """Separate changed regions as (old_start, old_end, new_start, new_end), left to right.

    From the character alignment of `Levenshtein.opcodes`; changes separated by fewer than `merge_gap` unchanged
    characters are merged into one region (changes with nothing unchanged between them always are). Identical
    texts give [].
    """
    opcodes = Levenshtein.opcodes(old, new)
    changes = [(op.src_start, op.src_end, op.dest_start, op.dest_end) for op in opcodes if op.tag != "equal"]
    return _merge_gaps(changes, merge_gap)


def _merge_gaps(regions: list[Region], merge_gap: int) -> list[Region]:
    """Merge neighbouring regions separated by fewer than merge_gap (and always by 0) unchanged characters."""
    out: list[Region] = []
    for r in regions:
        if out and r[0] - out[-1][1] < max(merge_gap, 1):
            out[-1] = (out[-1][0], r[1], out[-1][2], r[3])
        else:
            out.append(r)
    return out


def single_edit(old: str, new: str) -> Edit:
    """The one region enclosing every change: everything between the common prefix and the common suffix.

    Where the change sits in repeated text (inserting "a" into "aa"), the prefix is taken first, so the edit is
    placed as far right as it can be. Identical texts give an empty edit at the end of the text, distance 0.
    """
    prefix = Prefix.similarity(old, new)
    # The suffix may not overlap the prefix in either text.
    suffix = min(Postfix.similarity(old, new), min(len(old), len(new)) - prefix)
    end, new_end = len(old) - suffix, len(new) - suffix
    # Levenshtein distance is unchanged by stripping a common prefix and suffix, and this is much faster.
    distance = Levenshtein.distance(old[prefix:end], new[prefix:new_end])
    return Edit(start=prefix, end=end, new_end=new_end, distance=distance)


# ---------------------------------------------------------------------------------------------------
# Carrying spans through an edit
# ---------------------------------------------------------------------------------------------------
def reanchor_span(span: Span, edit: Edit) -> Span | None:
    """One span of the old text in the new text, or None if the edit deleted all of it. See `reanchor`."""
    s, e = span.start, span.end
    a, b = edit.start, edit.end
    if e <= a:
        new_s, new_e = s, e  # wholly before the edit (an insertion right at its end leaves it as it was)
    elif s >= b:
        new_s, new_e = s + edit.shift, e + edit.shift  # wholly after: shifts with the text
    else:
        # Overlaps the edit: keep the part before it, and the part after it (shifted); the replacement text takes
        # the place of the span's removed characters, so it joins the span.
        new_s = s if s < a else a
        new_e = e + edit.shift if e > b else edit.new_end
    if new_e <= new_s:
        return None
    return dataclasses.replace(span, start=new_s, end=new_e, reasons=list(span.reasons))


def reanchor(spans: list[Span], edit: Edit) -> list[Span | None]:
    """Map spans of the old text into the new text through one edit: new Span objects, one per input span, in
    input order (the input is never mutated).

    The rule, for a span [s, e) and an edit replacing old [a, b) by new [a, new_end):
    - wholly before the edit (e <= a): unchanged;
    - wholly after it (s >= b): shifted by new_end - b;
    - overlapping it: the start stays where it is if it lies before the edit, else moves to a; the end moves
      with the text (shifted) if it lies after the edit, else to new_end. So a span partly rewritten covers
      its surviving text plus the whole replacement, and a span wholly inside a replaced region becomes the
      replacement: it covers whatever its characters turned into, never less.
    - a span wholly inside a region that was deleted (the replacement is empty) has nothing left: its entry is
      None (and logged), so the result stays aligned with the input and a caller sees which span was lost.
    An insertion (a == b) strictly inside a span extends that span; one at its edge leaves it unchanged.
    """
    out: list[Span | None] = []
    for span in spans:
        moved = reanchor_span(span, edit)
        if moved is None:
            logger.debug("span %s [%d, %d) was deleted by edit %s", span.span_id, span.start, span.end, edit)
        out.append(moved)
    return out


def order_dislikes(spans: Iterable[Span]) -> list[Span]:
    """The dislike spans of `spans` in the order a chain addresses them: left to right.

    Sorted by start, then end, then span_id, so the order is deterministic. Like spans are left out, so an
    annotation's whole span list can be passed. Overlapping spans: the one starting first goes first. Nested
    spans with the same start: the shorter goes first, because its fix is the more specific one and the longer
    span, re-anchored through that edit (`reanchor`), still covers the fixed text when its own turn comes; the
    other way round, the longer span's rewrite would usually swallow the shorter one before it is addressed.
    (This differs from `markup.render_markup`, which opens the longer tag first so that tags nest.)
    """
    dislikes = [s for s in spans if s.polarity == DISLIKE]
    return sorted(dislikes, key=lambda s: (s.start, s.end, s.span_id))


# ---------------------------------------------------------------------------------------------------
# One step
# ---------------------------------------------------------------------------------------------------
@dataclass
class StepCheck:
    ok: bool
    reason: str  # "" when ok; otherwise "<code>: <detail>", the code one of STEP_REASONS
    edit: Edit | None  # the enclosing edit, whenever the texts differ (also for most rejections)
    warnings: list[str] = field(default_factory=list)


_REASON_PREFIX_RE = re.compile(r"^(?:(?:step \d+|chain)\s*:\s*)+")


def reason_code(reason: str) -> str:
    """The stable code of a rejection reason: "step 3: two_edits: ..." -> "two_edits"; "" -> "".

    Leading "step k:" and "chain:" prefixes (where a reason came from) are skipped.
    """
    reason = _REASON_PREFIX_RE.sub("", reason.strip())
    return reason.split(":", 1)[0].strip()


# Characters that may follow the final punctuation mark of a finished text: closing quotes and brackets,
# markdown emphasis and code marks; symbols (emoji) are skipped by category.
_CLOSERS = set("\"'”’»)]}*_`")
_FINAL_PUNCTUATION = set(".!?…。！？")


def _ends_cleanly(text: str) -> bool:
    """Whether `text` ends like a finished text: sentence-final punctuation, or a closed code block."""
    text = text.rstrip()
    if text.endswith("```"):
        return True
    i = len(text)
    while i > 0 and (text[i - 1] in _CLOSERS or unicodedata.category(text[i - 1]) in ("So", "Sk", "Mn")):
        i -= 1
    return i > 0 and text[i - 1] in _FINAL_PUNCTUATION


def _fmt_regions(regions: list[Region], limit: int = 4) -> str:
    shown = [f"[{a}, {b})" for a, b, _, _ in regions[:limit]]
    more = f" and {len(regions) - limit} more" if len(regions) > limit else ""
    if len(shown) == 1:
        return shown[0] + more
    return ", ".join(shown[:-1]) + (f", {shown[-1]}{more}" if more else f" and {shown[-1]}")


def _excerpt(text: str, width: int = 60) -> str:
    return repr(text if len(text) <= width else text[: width - 1] + "…")


def _merge_step_regions(regions: list[Region], lo: int, hi: int, kept_phrases: bool) -> list[Region]:
    """Merge neighbouring regions (already merged by merge_gap) that belong to one edit of the addressed span.

    Two neighbours are one edit when the unchanged text between them lies within [lo, hi] (the addressed span
    plus slack: changing "5,889,000 visitors in 2022" to "6.3 million visitors in 2023" keeps " visitors in 202"
    but fixes one span), or, with `kept_phrases`, when that text is shorter than each of them (a rewritten
    sentence that keeps a phrase in its middle).
    """

    def size(r: Region) -> int:
        return max(r[1] - r[0], r[3] - r[2])

    out: list[Region] = []
    for r in regions:
        if out:
            p = out[-1]
            if (p[1] >= lo and r[0] <= hi) or (kept_phrases and r[0] - p[1] < min(size(p), size(r))):
                out[-1] = (p[0], r[1], p[2], r[3])
                continue
        out.append(r)
    return out


def _duplicated(prev: str, new: str, edit: Edit, min_chars: int) -> str | None:
    """The detail of a duplication the step introduced, or None.

    A passage of `min_chars` characters is duplicated if it occurs at least twice in the new text and more often
    than in the previous one. Only passages that touch the changed text are looked at: a repetition the step did
    not create is not its fault. Passages that are mostly punctuation or spaces (rules, table borders) are skipped.
    """
    if min_chars <= 0 or len(new) < 2 * min_chars:
        return None
    windows = Counter(new[i : i + min_chars] for i in range(len(new) - min_chars + 1))
    lo, hi = max(0, edit.start - min_chars + 1), min(edit.new_end, len(new) - min_chars + 1)
    for i in range(lo, hi):
        w = new[i : i + min_chars]
        count = windows[w]
        if count < 2 or sum(c.isalnum() for c in w) < min_chars // 2:
            continue
        before = prev.count(w)
        if count > before:
            return (
                f"a passage of {min_chars}+ characters occurs {count} times in the new text ({before} in the "
                f"previous one), at {i}: {_excerpt(w)}"
            )
    return None


def _check_span(span: Span, text: str, what: str) -> None:
    if not 0 <= span.start < span.end <= len(text):
        raise ValueError(
            f"{what} span {span.span_id} [{span.start}, {span.end}) does not lie in the previous text "
            f"({len(text)} characters)"
        )


def _overlaps(a: int, b: int, s: int, e: int) -> bool:
    """Whether changing old [a, b) alters the text of [s, e): an insertion (a == b) only strictly inside it."""
    return s < a < e if a == b else a < e and b > s


def check_step(
    prev: str, new: str, addressed: Span, liked: list[Span], cfg: ValidationConfig | None = None
) -> StepCheck:
    """Whether `new` is `prev` with one local edit at `addressed` (a span of `prev`) that leaves `liked` alone.

    Checks, in this order (the first that fails is the reason; codes are the module constants):
     1. empty               the new text is blank
     2. no_change           the new text is identical to the previous one
     3. duplicated          the step made a passage of duplicate_min_chars+ characters occur twice or more
     4. truncated           the edit runs to (within merge_gap of) the end of the text, removes text beyond the
                            addressed span + slack, and the new text ends without sentence-final punctuation
     5. drops_tail          as truncated, but the text ends cleanly and more than max_tail_drop characters beyond
                            the span + slack are gone (the model stopped early at a sentence boundary)
     6. too_short           len(new) / len(prev) < min_length_ratio
     7. too_long            len(new) / len(prev) > max_length_ratio
     8. rewrites_too_much   the changed regions cover more than max_edit_fraction of a prev of at least
                            short_text_chars characters (a full rewrite would otherwise show as two_edits)
     9. two_edits           more than one changed region after merging: changes count as one edit when fewer than
                            merge_gap unchanged characters separate them, when what separates them lies within
                            the addressed span +- slack, or (merge_kept_phrases) when it is shorter than both
    10. far_from_span       the edit neither overlaps [addressed.start, addressed.end) nor comes within slack
    11. liked_span_changed  a change falls inside a liked span (outside the addressed span); with
                            liked_spans="warn" this is a warning and the step is accepted
    Truncation is tested before far_from_span and the length checks because a cut-off text fails those too:
    when the edit reaches the end of the text, "truncated" is the cause.

    The liked-span check uses the exact changed characters, not the enclosing region, so a liked phrase that a
    sentence rewrite keeps verbatim is not "changed". The part of a liked span that overlaps the addressed span
    is exempt: fixing a disliked word inside a liked paragraph must change that paragraph.
    """
    cfg = cfg or ValidationConfig()
    _check_span(addressed, prev, "addressed")
    for span in liked:
        _check_span(span, prev, "liked")

    def reject(code: str, detail: str, edit: Edit | None = None) -> StepCheck:
        return StepCheck(ok=False, reason=f"{code}: {detail}", edit=edit, warnings=[])

    if not new.strip():
        return reject(EMPTY, "the new text is blank")
    if new == prev:
        return reject(NO_CHANGE, "the new text is identical to the previous one")

    edit = single_edit(prev, new)
    raw = edit_regions(prev, new, merge_gap=1)  # the exact changes, for the liked-span check
    regions = _merge_step_regions(
        _merge_gaps(raw, cfg.merge_gap),
        addressed.start - cfg.slack,
        addressed.end + cfg.slack,
        cfg.merge_kept_phrases,
    )

    detail = _duplicated(prev, new, edit, cfg.duplicate_min_chars)
    if detail:
        return reject(DUPLICATED, detail, edit)

    # Truncation: the last change runs to the end of prev, past the window around the span. "To the end" allows
    # fewer than merge_gap kept characters after it: the alignment keeps the final "." of a text cut at a
    # sentence boundary, and a stray letter or two of one cut mid-word.
    last_start, last_end, last_new_start, last_new_end = regions[-1]
    window_end = addressed.end + cfg.slack
    if len(prev) - last_end < cfg.merge_gap and last_end > window_end:
        removed_beyond = last_end - max(last_start, window_end)
        shrink = (last_end - last_start) - (last_new_end - last_new_start)
        lost = min(removed_beyond, shrink)
        if lost > 0 and not _ends_cleanly(new):
            return reject(
                TRUNCATED,
                f"the edit [{last_start}, {last_end}) runs to the end of the text, {lost} characters beyond the "
                f"span end + slack ({window_end}) are gone, and the new text ends mid-sentence: "
                f"{_excerpt(new[-40:])}",
                edit,
            )
        if lost > cfg.max_tail_drop:
            return reject(
                DROPS_TAIL,
                f"the edit [{last_start}, {last_end}) runs to the end of the text and {lost} characters beyond "
                f"the span end + slack ({window_end}) are gone (limit {cfg.max_tail_drop})",
                edit,
            )

    ratio = len(new) / len(prev) if prev else float("inf")
    if ratio < cfg.min_length_ratio:
        return reject(TOO_SHORT, f"{len(new)} / {len(prev)} characters = {ratio:.2f} < {cfg.min_length_ratio}", edit)
    if ratio > cfg.max_length_ratio:
        return reject(TOO_LONG, f"{len(new)} / {len(prev)} characters = {ratio:.2f} > {cfg.max_length_ratio}", edit)

    if len(prev) >= cfg.short_text_chars:
        covered = sum(b - a for a, b, _, _ in regions)
        fraction = covered / len(prev)
        if fraction > cfg.max_edit_fraction:
            return reject(
                REWRITES_TOO_MUCH,
                f"the changes cover {covered} of {len(prev)} characters ({fraction:.2f} > {cfg.max_edit_fraction})",
                edit,
            )

    if len(regions) > 1:
        return reject(TWO_EDITS, f"{len(regions)} separate changed regions at {_fmt_regions(regions)}", edit)

    gap = max(edit.start - addressed.end, addressed.start - edit.end, 0)
    if gap > cfg.slack:
        return reject(
            FAR_FROM_SPAN,
            f"the edit [{edit.start}, {edit.end}) is {gap} characters from span {addressed.span_id} "
            f"[{addressed.start}, {addressed.end}) (slack {cfg.slack})",
            edit,
        )

    warnings: list[str] = []
    for span in liked:
        # The liked text outside the addressed span, as up to two pieces.
        pieces = [(span.start, min(span.end, addressed.start)), (max(span.start, addressed.end), span.end)]
        hit = [(a, b) for a, b, _, _ in raw if any(s < e and _overlaps(a, b, s, e) for s, e in pieces)]
        if not hit:
            continue
        detail = (
            f"the change at {_fmt_regions([(a, b, 0, 0) for a, b in hit])} alters liked span {span.span_id} "
            f"[{span.start}, {span.end})"
        )
        if cfg.liked_spans == "reject":
            return reject(LIKED_SPAN_CHANGED, detail, edit)
        warnings.append(f"{LIKED_SPAN_CHANGED}: {detail}")
    return StepCheck(ok=True, reason="", edit=edit, warnings=warnings)


# ---------------------------------------------------------------------------------------------------
# A whole chain
# ---------------------------------------------------------------------------------------------------
@dataclass
class ChainCheck:
    ok: bool
    reason: str  # "" when ok; "step k: <step reason>" (k from 1: a_{k-1} -> a_k) or "step_count: ..."
    edits: list[Edit] = field(default_factory=list)  # one per accepted step, in order
    warnings: list[str] = field(default_factory=list)  # each prefixed "step k: "


def check_chain(
    a0: str, steps: list[str], dislikes: list[Span], likes: list[Span], cfg: ValidationConfig | None = None
) -> ChainCheck:
    """Check an improvement chain a0 -> steps[0] -> steps[1] -> ..., step k addressing dislikes[k-1].

    `dislikes` and `likes` are spans of `a0`; `dislikes` is in the order the steps address them (usually
    `order_dislikes`; another order is checked as given, with a warning). Before step k, the addressed span and
    the liked spans are carried through the edits of steps 1..k-1 with `reanchor`. A dislike whose text an
    earlier edit deleted entirely cannot be addressed: the chain is rejected at its step with `span_lost`.
    Stops at the first failing step; `edits` holds the edits of the steps accepted before it.
    """
    cfg = cfg or ValidationConfig()
    if len(steps) != len(dislikes):
        return ChainCheck(ok=False, reason=f"{STEP_COUNT}: expected {len(dislikes)} steps, got {len(steps)}")
    warnings: list[str] = []
    if [s.span_id for s in dislikes] != [s.span_id for s in order_dislikes(dislikes)]:
        warnings.append("dislikes are not in left-to-right order (order_dislikes); checked in the order given")

    pending: list[Span | None] = list(dislikes)
    lost_at: dict[int, int] = {}  # index into dislikes -> step whose edit deleted it
    current_likes = list(likes)
    edits: list[Edit] = []
    prev = a0
    for k, new in enumerate(steps, start=1):
        addressed = pending[k - 1]
        if addressed is None:
            original = dislikes[k - 1]
            return ChainCheck(
                ok=False,
                reason=f"step {k}: {SPAN_LOST}: dislike span {original.span_id} [{original.start}, {original.end}) "
                f"was deleted by the edit of step {lost_at[k - 1]}",
                edits=edits,
                warnings=warnings,
            )
        result = check_step(prev, new, addressed, current_likes, cfg)
        warnings.extend(f"step {k}: {w}" for w in result.warnings)
        if not result.ok:
            return ChainCheck(ok=False, reason=f"step {k}: {result.reason}", edits=edits, warnings=warnings)
        edit = result.edit
        assert edit is not None  # an accepted step always changed the text
        edits.append(edit)
        for i in range(k, len(pending)):
            span = pending[i]
            if span is not None:
                pending[i] = reanchor_span(span, edit)
                if pending[i] is None:
                    lost_at[i] = k
        # A liked span that an accepted edit deleted (possible with liked_spans="warn") has nothing left to protect.
        current_likes = [span for span in reanchor(current_likes, edit) if span is not None]
        prev = new
    return ChainCheck(ok=True, reason="", edits=edits, warnings=warnings)


# ---------------------------------------------------------------------------------------------------
# Statistics over the chains config
# ---------------------------------------------------------------------------------------------------
def _mean(total: float, n: int) -> float | None:
    return total / n if n else None


_WORD = re.compile(r"[a-z0-9]+")


def compute_rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F1 (Lin, 2004) over lowercased words: 2 * LCS / (len(hyp) + len(ref)), the F-measure of LCS-based
    precision and recall with beta 1. It equals rouge-score's `rougeL` fmeasure (default tokenizer, no stemming);
    rapidfuzz's Indel similarity computes exactly this ratio on the word lists. Two empty texts score 1."""
    hyp, ref = _WORD.findall(hypothesis.lower()), _WORD.findall(reference.lower())
    if not hyp and not ref:
        return 1.0
    return Indel.normalized_similarity(hyp, ref)


def summarize_chains(
    rows: Iterable[Mapping[str, Any] | Any], references: Mapping[str, tuple[str, str]] | None = None
) -> dict[str, dict[str, Any]]:
    """Validity and cost of chains, per rewriter: rows of the chains config (dicts or `schema.Chain`).

    For each rewriter: `chains` (rows), `valid` (status "ok"), `validity_rate`, `mean_steps` (steps per valid
    chain), `mean_edit_size` (mean `distance` per step of the valid chains), `mean_attempts`, `tokens`
    (`prompt` and `completion` summed over all rows, rejected ones included since they were paid for, and
    `completion_per_valid_chain`), and `reject_reasons` (code -> count, from `reason_code`; "unknown" for a
    rejected row without a reason). Means over nothing are None. Rewriters are in sorted order.

    With `references` (annotation_id -> (a0, the human's corrected a*)), `similarity` says how close the valid
    chains' last state comes to the human a*: `chains` (valid chains whose annotation has a correction),
    `rouge_l` (mean `compute_rouge_l(a*, human a*)`) and `rouge_l_a0` (the same for a0, on the same chains): a
    rewriter whose a* scores below a0 moved away from what the annotator wrote.
    """
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        row = row if isinstance(row, Mapping) else to_row(row)
        groups[str(row.get("rewriter", ""))].append(row)

    out: dict[str, dict[str, Any]] = {}
    for rewriter in sorted(groups):
        chains = groups[rewriter]
        valid = [r for r in chains if r.get("status") == "ok"]
        steps = [s if isinstance(s, Mapping) else to_row(s) for r in valid for s in r.get("steps") or []]
        reasons = Counter(
            reason_code(r.get("reject_reason") or "") or "unknown" for r in chains if r.get("status") != "ok"
        )
        prompt = sum(int(r.get("prompt_tokens") or 0) for r in chains)
        completion = sum(int(r.get("completion_tokens") or 0) for r in chains)
        out[rewriter] = {
            "chains": len(chains),
            "valid": len(valid),
            "validity_rate": _mean(len(valid), len(chains)),
            "mean_steps": _mean(len(steps), len(valid)),
            "mean_edit_size": _mean(sum(int(s.get("distance") or 0) for s in steps), len(steps)),
            "mean_attempts": _mean(sum(int(r.get("attempts") or 1) for r in chains), len(chains)),
            "tokens": {
                "prompt": prompt,
                "completion": completion,
                "completion_per_valid_chain": _mean(completion, len(valid)),
            },
            "reject_reasons": dict(reasons.most_common()),
        }
        if references is not None:
            pairs = [
                (references[r["annotation_id"]], _last_text(r))
                for r in valid
                if r.get("annotation_id") in references and r.get("steps")
            ]
            out[rewriter]["similarity"] = {
                "chains": len(pairs),
                "rouge_l": _mean(sum(compute_rouge_l(final, human) for (_, human), final in pairs), len(pairs)),
                "rouge_l_a0": _mean(sum(compute_rouge_l(a0, human) for (a0, human), _ in pairs), len(pairs)),
            }
    return out


def _last_text(row: Mapping[str, Any]) -> str:
    step = row["steps"][-1]
    return step["text"] if isinstance(step, Mapping) else step.text
