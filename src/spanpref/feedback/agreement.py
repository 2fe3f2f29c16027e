"""How far one annotator's spans are from another's: character, span, sentence and reason agreement.

`compute_span_agreement` is the pure core: for each response, the text and two lists of spans, `reference` (a,
e.g. the humans) and `candidate` (b, e.g. a model). Precision is measured on the candidate's spans, recall on the
reference's. Per polarity (dislike and like, separately):

- character level (micro over all responses): a character is marked when any span of the polarity covers it;
  precision = marked by both / marked by b, recall = marked by both / marked by a, F1 from those counts.
- span level with overlap matching: a span of b is matched when it shares at least one character with a span of a
  (and the other way round for recall); F1 is the harmonic mean of the two matched shares.
- reasons on matched spans: each span of b is paired with the span of a it overlaps most; per reason, the share of
  pairs holding it on both sides among those holding it on either, and `reason_overlap`, the share of pairs whose
  reason sets share at least one reason (lenient, so an annotator that gives a whole group of reasons is not
  penalised for the ones the other did not pick).
- sentence level: a sentence is marked when a span shares a non-space character with it; Cohen's kappa between the
  two labellings, pooled over all sentences.

Every count is summed per response, so the bootstrap resamples responses (with replacement, seeded) and recomputes
the micro numbers from resampled sums: the intervals reflect how much the numbers depend on which responses were
annotated. A quantity with a zero denominator (no span of b, so no precision) is None, never a made-up 0 or 1.
`span_agreement` picks the two annotators out of annotation rows; `agreement` reads them from a dataset repo.
"""

from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spanpref.errors import InputError, UsageError
from spanpref.rewards.segment import split_sentences
from spanpref.schema import DISLIKE, LIKE

logger = logging.getLogger(__name__)

HUMAN = "human"  # every annotator whose name does not start with AI_PREFIX
AI_PREFIX = "ai:"

# one row of counts per (response, polarity); the bootstrap sums rows of resampled responses
_COUNTS = (
    "tp",
    "fp",
    "fn",
    "chars",
    "a_spans",
    "a_matched",
    "b_spans",
    "b_matched",
    "s11",
    "s10",
    "s01",
    "s00",
    "pairs",
    "shared",
)
_K = {name: i for i, name in enumerate(_COUNTS)}
METRICS = (
    "char_precision",
    "char_recall",
    "char_f1",
    "span_precision",
    "span_recall",
    "span_f1",
    "sentence_kappa",
    "sentence_agreement",
    "reason_overlap",
    "coverage_a",
    "coverage_b",
)


def is_ai(annotator: str) -> bool:
    return str(annotator).startswith(AI_PREFIX)


def _get(span: Any, key: str, default: Any = None) -> Any:
    return span.get(key, default) if isinstance(span, Mapping) else getattr(span, key, default)


def _spans_of(spans: Iterable[Any], polarity: str, n_chars: int) -> list[tuple[int, int, frozenset[str]]]:
    out = []
    for s in spans or []:
        if _get(s, "polarity") != polarity:
            continue
        start, end = int(_get(s, "start")), int(_get(s, "end"))
        if not 0 <= start <= end <= n_chars:
            raise InputError(f"span [{start}, {end}) does not fit a text of {n_chars} characters")
        if start < end:
            out.append((start, end, frozenset(_get(s, "reasons") or [])))
    return out


def _mask(spans: list[tuple[int, int, frozenset[str]]], n_chars: int) -> np.ndarray:
    mask = np.zeros(n_chars, dtype=bool)
    for start, end, _ in spans:
        mask[start:end] = True
    return mask


def _overlap(x: tuple[int, int, Any], y: tuple[int, int, Any]) -> int:
    return max(0, min(x[1], y[1]) - max(x[0], y[0]))


@dataclass
class _ItemCounts:
    counts: np.ndarray  # len(_COUNTS)
    reasons: dict[str, list[int]] = field(default_factory=dict)  # reason -> [pairs with it on either side, on both]


def count_item(text: str, reference: Iterable[Any], candidate: Iterable[Any], polarity: str) -> _ItemCounts:
    """The agreement counts of one response for one polarity (see the module docstring)."""
    n = len(text)
    a, b = _spans_of(reference, polarity, n), _spans_of(candidate, polarity, n)
    ma, mb = _mask(a, n), _mask(b, n)
    c = np.zeros(len(_COUNTS), dtype=np.int64)
    c[_K["tp"]], c[_K["fp"]], c[_K["fn"]] = (ma & mb).sum(), (mb & ~ma).sum(), (ma & ~mb).sum()
    c[_K["chars"]] = n
    c[_K["a_spans"]], c[_K["b_spans"]] = len(a), len(b)
    c[_K["a_matched"]] = sum(any(_overlap(x, y) for y in b) for x in a)
    c[_K["b_matched"]] = sum(any(_overlap(y, x) for x in a) for y in b)
    nonspace = np.fromiter((not ch.isspace() for ch in text), dtype=bool, count=n)
    for sent in split_sentences(text):
        la = bool((ma & nonspace)[sent.start : sent.end].any())
        lb = bool((mb & nonspace)[sent.start : sent.end].any())
        c[_K[f"s{int(la)}{int(lb)}"]] += 1
    reasons: dict[str, list[int]] = {}
    for y in b:
        best = max(a, key=lambda x: _overlap(x, y), default=None)
        if best is None or not _overlap(best, y):
            continue
        c[_K["pairs"]] += 1
        c[_K["shared"]] += bool(best[2] & y[2])
        for r in best[2] | y[2]:
            tally = reasons.setdefault(r, [0, 0])
            tally[0] += 1
            tally[1] += r in best[2] and r in y[2]
    return _ItemCounts(c, reasons)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def compute_metrics_from_counts(sums: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric from summed counts; `sums` has the counts on its last axis (NaN where undefined)."""
    s = {name: sums[..., i].astype(float) for name, i in _K.items()}
    out = {
        "char_precision": _ratio(s["tp"], s["tp"] + s["fp"]),
        "char_recall": _ratio(s["tp"], s["tp"] + s["fn"]),
        "char_f1": _ratio(2 * s["tp"], 2 * s["tp"] + s["fp"] + s["fn"]),
        "span_precision": _ratio(s["b_matched"], s["b_spans"]),
        "span_recall": _ratio(s["a_matched"], s["a_spans"]),
        "reason_overlap": _ratio(s["shared"], s["pairs"]),
        "coverage_a": _ratio(s["tp"] + s["fn"], s["chars"]),
        "coverage_b": _ratio(s["tp"] + s["fp"], s["chars"]),
    }
    p, r = out["span_precision"], out["span_recall"]
    out["span_f1"] = np.where(p + r > 0, _ratio(2 * p * r, p + r), np.where(np.isnan(p + r), np.nan, 0.0))
    total = s["s11"] + s["s10"] + s["s01"] + s["s00"]
    po = _ratio(s["s11"] + s["s00"], total)
    pa, pb = _ratio(s["s11"] + s["s10"], total), _ratio(s["s11"] + s["s01"], total)
    pe = pa * pb + (1 - pa) * (1 - pb)
    # pe == 1: both labellings are constant and equal; kappa is undefined there, not perfect
    out["sentence_kappa"] = _ratio(po - pe, np.where(np.isclose(pe, 1.0), 0.0, 1 - pe))
    out["sentence_agreement"] = po
    return out


def _value(x: Any) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x


def _bootstrap_weights(n: int, rounds: int, rng: np.random.Generator, chunk: int = 200):
    """Resampling weights (how often each response is drawn), `chunk` rounds at a time to bound memory."""
    for start in range(0, rounds, chunk):
        yield rng.multinomial(n, np.full(n, 1.0 / n), size=min(chunk, rounds - start))


def compute_span_agreement(
    texts: Sequence[str],
    references: Sequence[Iterable[Any]],
    candidates: Sequence[Iterable[Any]],
    *,
    groups: Sequence[str] | None = None,
    rounds: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Agreement of `candidates` (b) with `references` (a), one entry per response text.

    Spans are dicts or `schema.Span`s with start, end, polarity and reasons. `groups` (one key per entry, e.g. the
    response id) makes entries that share a key one unit of the bootstrap, for a response compared several times.
    Returns the dislike metrics at the top level and again under "dislike", the like metrics under "like"; each
    metric has a `<metric>_ci` [low, high] interval from `rounds` bootstrap resamples (None where undefined).
    """
    if not len(texts) == len(references) == len(candidates):
        raise UsageError(
            f"{len(texts)} texts, {len(references)} reference and {len(candidates)} candidate span lists: "
            "give one of each per response"
        )
    if not 0 < confidence < 1:
        raise UsageError(f"confidence must be in (0, 1), got {confidence}")
    if rounds < 0:
        raise UsageError(f"rounds must be >= 0, got {rounds}")
    keys = list(groups) if groups is not None else list(range(len(texts)))
    if len(keys) != len(texts):
        raise UsageError(f"{len(keys)} group keys for {len(texts)} responses")
    units = list(dict.fromkeys(keys))
    where = {k: i for i, k in enumerate(units)}
    result: dict[str, Any] = {"responses": len(units), "items": len(texts), "rounds": rounds, "confidence": confidence}
    rng = np.random.default_rng(seed)
    tail = (1 - confidence) / 2 * 100
    for polarity in (DISLIKE, LIKE):
        per_unit = np.zeros((len(units), len(_COUNTS)), dtype=np.int64)
        reasons: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for key, text, ref, cand in zip(keys, texts, references, candidates, strict=True):
            item = count_item(text, ref, cand, polarity)
            per_unit[where[key]] += item.counts
            for r, (either, both) in item.reasons.items():
                reasons[r][0] += either
                reasons[r][1] += both
        totals = per_unit.sum(axis=0)
        point = compute_metrics_from_counts(totals)
        block: dict[str, Any] = {name: _value(point[name]) for name in METRICS}
        block["counts"] = {name: int(v) for name, v in zip(_COUNTS, totals, strict=True)}
        if rounds and units:
            draws = np.concatenate([w @ per_unit for w in _bootstrap_weights(len(units), rounds, rng)])
            boot = compute_metrics_from_counts(draws)
            for name in METRICS:
                values = boot[name][~np.isnan(boot[name])]
                block[f"{name}_ci"] = (
                    [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]
                    if len(values)
                    else None
                )
        else:
            block.update({f"{name}_ci": None for name in METRICS})
        block["reasons"] = {
            r: {"matched_spans": either, "both": both, "agreement": both / either}
            for r, (either, both) in sorted(reasons.items())
        }
        result[polarity] = block
    result.update({k: v for k, v in result[DISLIKE].items() if k not in ("counts", "reasons")})
    return result


# ---------------------------------------------------------------------------------------------------
# Annotators in annotation rows
# ---------------------------------------------------------------------------------------------------
def matches_annotator(annotator: str, selector: str) -> bool:
    """Whether an annotation's annotator is `selector`: a name, or `human` for every non-AI annotator."""
    return not is_ai(annotator) if selector == HUMAN else annotator == selector


def _by_response(annotations: Iterable[Mapping[str, Any]], selector: str) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for ann in annotations:
        if matches_annotator(ann.get("annotator") or "", selector):
            out[ann["response_id"]].append(ann)
    return out


def span_agreement(
    annotations: Iterable[Mapping[str, Any]],
    texts: Mapping[str, str],
    a: str = HUMAN,
    b: str = "ai:llm",
    *,
    rounds: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    response_ids: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Agreement of annotator `b` with annotator `a` over the responses both annotated (`texts`: response id ->
    text). Either may be `human` (every non-AI annotator). A response that several annotators of one side annotated
    contributes every (a, b) combination, resampled together. `human_vs_human` holds the same numbers between
    distinct human annotators on the responses they share (None when no response has two)."""
    annotations = list(annotations)
    keep = set(response_ids) if response_ids is not None else None
    side_a, side_b = _by_response(annotations, a), _by_response(annotations, b)
    shared = sorted(rid for rid in set(side_a) & set(side_b) if keep is None or rid in keep)
    missing = [rid for rid in shared if rid not in texts]
    if missing:
        raise InputError(f"{len(missing)} annotated response(s) are not in the responses config, e.g. {missing[0]!r}")
    kw = {"rounds": rounds, "seed": seed, "confidence": confidence}
    items = [
        (rid, x, y)
        for rid in shared
        for x in side_a[rid]
        for y in side_b[rid]
        if x["annotation_id"] != y["annotation_id"]
    ]
    if not items:
        raise InputError(
            f"no response is annotated by both {a!r} and {b!r}; annotators present: "
            f"{sorted({ann.get('annotator') for ann in annotations})}"
        )
    out = {"a": a, "b": b, **_agreement_of(items, texts, **kw)}
    humans = _by_response(annotations, HUMAN)
    pairs = [
        (rid, x, y)
        for rid, anns in sorted(humans.items())
        if keep is None or rid in keep
        for x, y in itertools.combinations(sorted(anns, key=lambda z: z["annotator"]), 2)
        if x["annotator"] != y["annotator"]
    ]
    out["human_vs_human"] = _agreement_of(pairs, texts, **kw) if pairs else None
    return out


def _agreement_of(items: list[tuple[str, Mapping, Mapping]], texts: Mapping[str, str], **kw: Any) -> dict[str, Any]:
    return compute_span_agreement(
        [texts[rid] for rid, _, _ in items],
        [x["spans"] for _, x, _ in items],
        [y["spans"] for _, _, y in items],
        groups=[rid for rid, _, _ in items],
        **kw,
    )


def agreement(
    folder: str, a: str = HUMAN, b: str = "ai:llm", *, rounds: int = 1000, seed: int = 0, confidence: float = 0.95
) -> dict[str, Any]:
    """`span_agreement` between two annotators of the annotations config of a dataset repo (folder or Hub id)."""
    from spanpref import schema
    from spanpref.repo import load_rows

    annotations = load_rows(folder, schema.ANNOTATIONS)
    texts = {r["response_id"]: r["text"] for r in load_rows(folder, schema.RESPONSES)}
    return span_agreement(annotations, texts, a, b, rounds=rounds, seed=seed, confidence=confidence)


@dataclass(kw_only=True)
class AgreementConfig:
    """Options of an agreement run between two annotators of one dataset repo."""

    a: str = field(
        default=HUMAN,
        metadata={
            "help": "the reference annotator (recall is measured on its spans): a name, or `human` for every annotator "
            "whose name does not start with `ai:`"
        },
    )
    b: str = field(default="ai:llm", metadata={"help": "the compared annotator (precision is measured on its spans)"})
    rounds: int = field(default=1000, metadata={"help": "bootstrap resamples of the responses (0: no intervals)"})
    seed: int = field(default=0, metadata={"help": "seed of the bootstrap"})
    confidence: float = field(default=0.95, metadata={"help": "coverage of the bootstrap intervals"})


def format_agreement(result: Mapping[str, Any]) -> str:
    """A short table: every metric per polarity with its interval."""

    def cell(block: Mapping[str, Any], name: str) -> str:
        v, ci = block.get(name), block.get(f"{name}_ci")
        if v is None:
            return "-"
        return f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    lines = [
        f"agreement of {result.get('b', 'b')} with {result.get('a', 'a')} on {result['responses']} response(s) "
        f"({result['confidence']:.0%} bootstrap intervals, {result['rounds']} rounds)"
    ]
    for polarity in (DISLIKE, LIKE):
        block = result[polarity]
        lines.append(f"  {polarity}: {block['counts']['a_spans']} spans of a, {block['counts']['b_spans']} of b")
        lines.extend(f"    {name:18s} {cell(block, name)}" for name in METRICS)
    hh = result.get("human_vs_human")
    if hh:
        lines.append(
            f"  between human annotators ({hh['responses']} shared response(s)): dislike char F1 "
            f"{cell(hh[DISLIKE], 'char_f1')}, kappa {cell(hh[DISLIKE], 'sentence_kappa')}"
        )
    return "\n".join(lines)


__all__ = [
    "AgreementConfig",
    "HUMAN",
    "METRICS",
    "agreement",
    "compute_span_agreement",
    "count_item",
    "format_agreement",
    "is_ai",
    "matches_annotator",
    "span_agreement",
]
