"""Chains from human corrections, with no model: the `human` rewriter.

An annotation may carry a corrected response (qa-feedback's corrected answer, kept as `reference_rewrite`). The
corrected text a* is aligned with the response a0 at character level (`Levenshtein.opcodes`); each changed region
is given to one dislike span, and the chain applies the regions span by span, left to right:
a0 -> a1 -> ... -> a*. Every state is a0 with the regions of the steps so far applied, so the last one is the
correction exactly, character for character.

Which span a region belongs to:
- a region that overlaps dislike spans goes to the one it shares the most characters with; on a tie, to the
  shorter span (a change inside a nested span fixes the more specific complaint), then to the earlier one in
  chain order. An insertion overlaps a span when it sits inside it or at one of its edges;
- a region outside every span goes to the nearest span when it lies within `attach_chars` of that span, or of
  a region already given to it (so a rewrite that runs a few characters past a span stays one step): the
  adjustments around a fix (a capital letter after a deleted sentence, a comma, a space);
- the regions left after that are changes the annotator made without marking a span (a date fixed elsewhere,
  information added). They become steps of their own at the end of the chain, left to right, with
  `span_id = OUTSIDE_SPAN`; neighbouring ones that the validator would count as one edit share a step. With
  `outside_steps: false` they are not chains of their own: the chain is rejected (`outside_change`), because a
  chain ending short of the correction would not be the human's a*.

The correction may also come from fixes typed per span in the annotation Space (`Span.fix`, DELETE to remove
the span's text): a0 with every fix applied is then the correction, and the same alignment makes the steps.

A dislike span no region belongs to is one the correction leaves as it is: the chain records it in
`untouched_spans`. A span whose text lay wholly inside a change given to another span has no step of its own
and is not untouched: it was fixed with that span. An annotation whose correction touches no dislike span has no
chain (`untouched`), nor has one without a correction (`no_correction`).

Every step goes through `check_chain`, the validator the model rewriters' steps pass, with the same structural
rules (one local edit at its span, liked spans kept). The checks that catch a model's broken output are off for
human steps (see `human_validation`): a person who cuts most of an off-topic answer or adds a paragraph of
missing facts wrote what they meant.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from difflib import SequenceMatcher

from spanpref.chains.validate import (
    LIKED_SPAN_CHANGED,
    ValidationConfig,
    _merge_gaps,
    _overlaps,
    check_chain,
    order_dislikes,
)
from spanpref.schema import DISLIKE, Span

OUTSIDE_SPAN = -1  # span_id of a step that applies changes made outside every dislike span
Region = tuple[int, int, int, int]  # (a0 start, a0 end, a* start, a* end), as in spanpref.chains.validate


DELETE_FIX = "DELETE"  # a suggested fix that removes the span's text (as the local rewriter's DELETE reply)


def apply_fix(text: str, start: int, end: int, fix: str) -> str:
    """`text` with [start, end) replaced by a suggested fix; DELETE removes it and the space it leaves doubled."""
    if fix.strip() != DELETE_FIX:
        return text[:start] + fix + text[end:]
    before, after = text[:start].rstrip(" "), text[end:].lstrip(" ")
    joiner = " " if before and after and not after.startswith(("\n", ".", ",", ";", ":", "!", "?")) else ""
    return before + joiner + after


def correction_from_fixes(a0: str, dislikes: list[Span]) -> tuple[str | None, str]:
    """The corrected response the annotators' per-span fixes spell out (None when no span has one), or a reason
    when fixes cannot all hold: two fixed spans that overlap would each rewrite the other's text."""
    fixed = sorted((s for s in dislikes if s.fix.strip()), key=lambda s: (s.start, s.end, s.span_id))
    if not fixed:
        return None, ""
    for prev, nxt in zip(fixed, fixed[1:], strict=False):
        if nxt.start < prev.end:
            return None, f"fix_overlap: spans {prev.span_id} and {nxt.span_id} both have a fix and overlap"
    text = a0
    for s in reversed(fixed):  # right to left, so earlier offsets stay put
        text = apply_fix(text, s.start, s.end, s.fix)
    return text, ""


def human_validation(cfg: ValidationConfig | None = None) -> ValidationConfig:
    """The validation of human steps: `cfg`'s structural rules (slack, merge_gap, liked spans) with the checks
    for broken model output switched off.

    Off: min/max length ratio (a correction may cut most of an answer or add to it), max_edit_fraction (a span
    that is most of a short answer is rewritten whole), duplicate_min_chars (a person may repeat a phrase on
    purpose) and max_tail_drop (deleting a final off-topic paragraph is a fix, not a model that stopped early).
    The truncation check stays: it needs an edit past the span, which a step given to that span does not have.
    """
    cfg = cfg or ValidationConfig()
    return dataclasses.replace(
        cfg,
        min_length_ratio=0.0,
        max_length_ratio=float("inf"),
        max_edit_fraction=1.0,
        duplicate_min_chars=0,
        max_tail_drop=10**9,
    )


_TOKEN = re.compile(r"\w+|\s+|[^\w\s]")


def _tokens(text: str) -> tuple[list[str], list[int]]:
    """Words, runs of whitespace and single other characters (punctuation, emoji), with their start offsets."""
    matches = list(_TOKEN.finditer(text))
    return [m.group(0) for m in matches], [m.start() for m in matches] + [len(text)]


def align(a0: str, corrected: str) -> list[Region]:
    """The changed regions of a0 -> corrected, left to right, as exact character offsets in both texts.

    The alignment runs over tokens (words, spaces, punctuation marks) with difflib's longest-matching-block
    search, not over characters with a minimum edit distance: a minimal character alignment of a rewritten
    sentence threads through the letters the old and new wording happen to share ("fable" -> "3", "abou" ->
    "Li"), and kept sentences that move relative to deleted ones come out as dozens of scattered edits. Matching
    the longest common passages first keeps an unchanged sentence unchanged, so a deleted or rewritten span is
    one region. Regions that touch (nothing unchanged between them) are merged.
    """
    old, old_at = _tokens(a0)
    new, new_at = _tokens(corrected)
    ops = [
        (old_at[i1], old_at[i2], new_at[j1], new_at[j2])
        for tag, i1, i2, j1, j2 in SequenceMatcher(None, old, new, autojunk=False).get_opcodes()
        if tag != "equal"
    ]
    return _merge_gaps(ops, 1)


def apply_regions(a0: str, corrected: str, regions: list[Region]) -> str:
    """a0 with the given regions (a subset of `align(a0, corrected)`) replaced by their corrected text."""
    out, pos = [], 0
    for a, b, c, d in sorted(regions):
        out.append(a0[pos:a])
        out.append(corrected[c:d])
        pos = b
    out.append(a0[pos:])
    return "".join(out)


def _gap(a: int, b: int, s: int, e: int) -> int:
    """Unchanged characters between region [a, b) and span [s, e); 0 when they touch or overlap."""
    return max(s - b, a - e, 0)


def _touches(a: int, b: int, s: int, e: int) -> bool:
    """Whether region [a, b) changes span [s, e): overlaps it, or (an insertion) sits inside it or at its edge."""
    return s <= a <= e if a == b else a < e and b > s


@dataclass
class HumanPlan:
    """How a correction becomes steps: which regions each step applies, for which span."""

    regions: list[Region]  # every changed region, left to right
    owner: list[int | None]  # per region: the span_id it is given to, or None (outside every span)
    steps: list[tuple[Span, list[Region]]] = field(default_factory=list)  # (addressed span, its regions), in order
    untouched: list[int] = field(default_factory=list)  # dislike span_ids no region belongs to
    outside: list[list[Region]] = field(default_factory=list)  # groups of regions outside every span


def _inside(a: int, b: int, spans: list[Span]) -> int:
    """Characters of [a, b) that lie in some span (spans may overlap; each character counts once)."""
    cover = sorted((max(a, s.start), min(b, s.end)) for s in spans if s.start < b and s.end > a)
    total, reach = 0, a
    for lo, hi in cover:
        lo = max(lo, reach)
        if hi > lo:
            total, reach = total + hi - lo, hi
    return total


def _fit(a: int, b: int, deletion: bool, spans: list[Span]) -> tuple[int, bool, bool]:
    """How well a deletion [a, b) (or an insertion at a) sits on the spans: a deletion by its characters inside
    them, then by starting where a span starts, then by ending where one ends; an insertion by touching one."""
    if deletion:
        return _inside(a, b, spans), any(s.start == a for s in spans), any(s.end == b for s in spans)
    return 0, any(s.start <= a <= s.end for s in spans), True


def _slide(regions: list[Region], a0: str, corrected: str, spans: list[Span]) -> list[Region]:
    """Move each pure deletion or insertion along the repeated text around it to where it best fits the spans.

    Deleting "album ... The " or "The album ... " from "The album ... The title" gives the same text: an
    alignment picks one arbitrarily. The position chosen is the one whose deleted characters lie most inside
    dislike spans (an insertion: one inside or at the edge of a span), then the nearest to where the alignment
    put it. A region never moves past its unchanged neighbours.
    """
    out: list[Region] = []
    for i, (a, b, c, d) in enumerate(regions):
        if (b > a) == (d > c):  # a replacement (or nothing): its ends are fixed by what changed
            out.append((a, b, c, d))
            continue
        lo = out[-1][1] if out else 0  # the unchanged text it may move through, in a0
        hi = regions[i + 1][0] if i + 1 < len(regions) else len(a0)
        text, start, end = (a0, a, b) if b > a else (corrected, c, d)  # the removed or the inserted text
        moves = [0]
        k = 1
        while a - k >= lo and text[start - k] == text[end - k]:
            moves.append(-k)
            k += 1
        k = 1
        while b + k <= hi and text[start + k - 1] == text[end + k - 1]:
            moves.append(k)
            k += 1

        k = max((*_fit(a + m, b + m, b > a, spans), -abs(m), m) for m in moves)[-1]  # then the nearest
        out.append((a + k, b + k, c + k, d + k))
    return out


def _split_at_spans(regions: list[Region], spans: list[Span]) -> list[Region]:
    """Cut a region that runs over several disjoint dislike spans between them, so each span gets the part of
    the change over its own text (a deletion of two adjacent sentences is two steps). The new text of a
    replacement stays with the first part, which ends where the first span ends; the later parts are deletions
    ("2017. Ariana sang." -> "2018" is "2017" -> "2018", then ". Ariana sang." deleted, not "2018Ariana sang.").
    A deletion's text between two spans goes with the later one, unless the deletion starts before its first
    span: then with the earlier one, so that deleting " A. B." leaves "x. B." and not "x.B." after one step."""
    out: list[Region] = []
    for a, b, c, d in regions:
        cuts: list[int] = []
        reach: int | None = None
        for s in spans:  # in chain order: by start
            if s.start < b and s.end > a:
                if reach is not None and a < s.start and s.start >= reach:
                    first_start = next(x.start for x in spans if x.start < b and x.end > a)
                    cuts.append(reach if a < first_start or d > c else s.start)
                reach = s.end if reach is None else max(reach, s.end)
        if not cuts:
            out.append((a, b, c, d))
            continue
        bounds = [a, *cuts, b]
        for k, (x, y) in enumerate(zip(bounds, bounds[1:], strict=False)):
            out.append((x, y, c, d) if k == 0 else (x, y, d, d))
    return out


def plan_steps(
    a0: str, corrected: str, dislikes: list[Span], *, attach_chars: int = 12, cfg: ValidationConfig | None = None
) -> HumanPlan:
    """Give each changed region of a0 -> corrected to a dislike span (the rules in the module docstring)."""
    cfg = cfg or ValidationConfig()
    ordered = order_dislikes(dislikes)
    rank = {s.span_id: i for i, s in enumerate(ordered)}
    regions = _split_at_spans(_slide(align(a0, corrected), a0, corrected, ordered), ordered)
    owner: list[int | None] = []
    for a, b, _, _ in regions:
        hits = [s for s in ordered if _touches(a, b, s.start, s.end)]
        if not hits:
            owner.append(None)
            continue
        best = max(hits, key=lambda s: (min(b, s.end) - max(a, s.start), -(s.end - s.start), -rank[s.span_id]))
        owner.append(best.span_id)

    # Outside regions join the nearest span, or a region already given to one, until nothing more joins.
    by_id = {s.span_id: s for s in ordered}
    changed = True
    while changed:
        changed = False
        for i, (a, b, _, _) in enumerate(regions):
            if owner[i] is not None:
                continue
            near: list[tuple[int, int, int]] = []  # (distance, rank, span_id)
            for s in ordered:
                d = _gap(a, b, s.start, s.end)
                d = min([d] + [_gap(a, b, r[0], r[1]) for r, o in zip(regions, owner, strict=True) if o == s.span_id])
                if d <= attach_chars:
                    near.append((d, rank[s.span_id], s.span_id))
            if near:
                owner[i] = min(near)[2]
                changed = True

    plan = HumanPlan(regions=regions, owner=owner)
    for s in ordered:
        mine = [r for r, o in zip(regions, owner, strict=True) if o == s.span_id]
        if mine:
            plan.steps.append((by_id[s.span_id], mine))
        elif not any(_touches(r[0], r[1], s.start, s.end) for r in regions):
            plan.untouched.append(s.span_id)
    # Outside regions that the validator would count as one edit share a step: closer than merge_gap, or the
    # unchanged text between them shorter than each of them (merge_kept_phrases).
    loose = [r for r, o in zip(regions, owner, strict=True) if o is None]
    groups: list[list[Region]] = []
    for r in loose:
        if groups:
            first, last = groups[-1][0], groups[-1][-1]
            gap, size = r[0] - last[1], max(last[1] - first[0], last[3] - first[2])
            if gap < cfg.merge_gap or (cfg.merge_kept_phrases and gap < min(size, max(r[1] - r[0], r[3] - r[2]))):
                groups[-1].append(r)
                continue
        groups.append([r])
    plan.outside = groups
    return plan


def _outside_span(group: list[Region], text_length: int) -> Span:
    """A stand-in dislike span over a group of outside changes, so the validator can check that step like the
    others; an insertion gets the character after it (or before it, at the end of the text)."""
    a, b = group[0][0], group[-1][1]
    if a == b:
        a, b = (a, a + 1) if a < text_length else (a - 1, a)
    return Span(OUTSIDE_SPAN, a, b, DISLIKE)


@dataclass
class HumanChain:
    ok: bool
    reason: str  # "" when ok; "<code>: <detail>"
    texts: list[str] = field(default_factory=list)  # a1 .. a*
    spans: list[Span] = field(default_factory=list)  # the span each step addresses (OUTSIDE_SPAN for outside steps)
    edits: list = field(default_factory=list)  # validate.Edit per step
    untouched: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def build_human_chain(
    a0: str,
    corrected: str | None,
    dislikes: list[Span],
    likes: list[Span],
    *,
    attach_chars: int = 12,
    outside_steps: bool = True,
    cfg: ValidationConfig | None = None,
) -> HumanChain:
    """The chain a0 -> ... -> corrected, one step per dislike span the correction changes (plus, with
    `outside_steps`, one per group of changes outside every span), validated with `human_validation(cfg)`.
    When dislike spans carry suggested fixes (`Span.fix`), the correction is a0 with those fixes applied, and
    `corrected` is not used."""
    cfg = human_validation(cfg)
    from_fixes, problem = correction_from_fixes(a0, dislikes)
    if problem:
        return HumanChain(ok=False, reason=problem)
    if from_fixes is not None:  # fixes typed per span say more precisely what each span should become
        corrected = from_fixes
    if corrected is None or not corrected.strip():
        return HumanChain(ok=False, reason="no_correction: the annotation has no corrected text")
    plan = plan_steps(a0, corrected, dislikes, attach_chars=attach_chars, cfg=cfg)
    if not plan.steps:
        where = f"{len(plan.regions)} changed region(s), all outside them" if plan.regions else "it equals a0"
        return HumanChain(
            ok=False, reason=f"untouched: the correction changes no dislike span ({where})", untouched=plan.untouched
        )
    if plan.outside and not outside_steps:
        spots = ", ".join(f"[{g[0][0]}, {g[-1][1]})" for g in plan.outside[:4])
        return HumanChain(
            ok=False,
            reason=f"outside_change: {len(plan.outside)} change(s) outside every dislike span, at {spots}",
            untouched=plan.untouched,
        )
    # An outside step's stand-in span covers its own changes, which the validator exempts from the liked-span
    # rule (a fix must change its span); so the liked spans are checked here against those changes.
    warnings = []
    for group in plan.outside:
        for like in likes:
            hit = [(a, b) for a, b, _, _ in group if _overlaps(a, b, like.start, like.end)]
            if not hit:
                continue
            detail = (
                f"the change at [{hit[0][0]}, {hit[0][1]}) outside every dislike span alters liked span {like.span_id}"
            )
            if cfg.liked_spans == "reject":
                return HumanChain(ok=False, reason=f"{LIKED_SPAN_CHANGED}: {detail}", untouched=plan.untouched)
            warnings.append(f"{LIKED_SPAN_CHANGED}: {detail}")
    steps = [*plan.steps, *((_outside_span(g, len(a0)), g) for g in plan.outside)]
    applied: list[Region] = []
    texts = []
    for _, regions in steps:
        applied += regions
        texts.append(apply_regions(a0, corrected, applied))
    # Holds by construction (every region is applied once); checked because pairs are cut from these texts.
    assert texts[-1] == corrected, "the last step must be the correction"
    spans = [s for s, _ in steps]
    check = check_chain(a0, texts, spans, likes, cfg)
    if not check.ok:
        return HumanChain(ok=False, reason=check.reason, untouched=plan.untouched, warnings=check.warnings)
    # Outside steps come after the spans' steps, so check_chain warns about the order; that order is the rule.
    warnings += [w for w in check.warnings if "left-to-right" not in w]
    return HumanChain(
        ok=True, reason="", texts=texts, spans=spans, edits=check.edits, untouched=plan.untouched, warnings=warnings
    )
