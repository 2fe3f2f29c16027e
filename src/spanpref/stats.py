"""Annotation statistics: the paper's Table 1 (per domain) and per-reason counts, for any annotations config."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from spanpref import schema

UNKNOWN_DOMAIN = "(unknown)"


@dataclass
class DomainStats:
    domain: str
    responses: int = 0  # N: responses annotated
    likes: int = 0  # H+: like highlights
    dislikes: int = 0  # H-: dislike highlights
    reasons: int = 0  # ΣA: checkboxes ticked (span reasons + response-level reasons)
    words: int = 0  # #w: words highlighted, whitespace tokenization, summed over highlights

    def add(self, other: DomainStats) -> None:
        self.responses += other.responses
        self.likes += other.likes
        self.dislikes += other.dislikes
        self.reasons += other.reasons
        self.words += other.words


@dataclass
class AnnotationStats:
    domains: list[DomainStats]
    total: DomainStats
    span_reasons: Counter = field(default_factory=Counter)  # (polarity, reason id) -> count
    response_reasons: Counter = field(default_factory=Counter)  # reason id -> count
    annotators: int = 0
    annotations: int = 0


def compute_annotation_stats(
    annotations: Iterable[Mapping[str, Any]],
    responses: Iterable[Mapping[str, Any]],
    queries: Iterable[Mapping[str, Any]] = (),
    documents: Iterable[Mapping[str, Any]] = (),
) -> AnnotationStats:
    """Table 1 of CH-Wang et al. (2025) for these annotations, grouped by the domain of each response's
    document. N counts distinct responses annotated (several annotators on one response count once)."""
    texts = {r["response_id"]: r["text"] for r in responses}
    query_of = {r["response_id"]: r["query_id"] for r in responses} if texts else {}
    doc_of = {q["query_id"]: q["doc_id"] for q in queries}
    domain_of_doc = {d["doc_id"]: d["domain"] for d in documents}

    per: dict[str, DomainStats] = {}
    seen_responses: dict[str, set[str]] = defaultdict(set)
    span_reasons: Counter = Counter()
    response_reasons: Counter = Counter()
    annotators: set[str] = set()
    n = 0
    for a in annotations:
        n += 1
        rid = a["response_id"]
        domain = domain_of_doc.get(doc_of.get(query_of.get(rid, ""), ""), UNKNOWN_DOMAIN)
        s = per.setdefault(domain, DomainStats(domain))
        annotators.add(a["annotator"])
        if rid not in seen_responses[domain]:
            seen_responses[domain].add(rid)
            s.responses += 1
        text = texts.get(rid, "")
        for span in a.get("spans") or []:
            if span["polarity"] == schema.LIKE:
                s.likes += 1
            else:
                s.dislikes += 1
            s.reasons += len(span.get("reasons") or [])
            s.words += len(text[span["start"] : span["end"]].split())
            span_reasons.update((span["polarity"], r) for r in span.get("reasons") or [])
        for rr in a.get("response_reasons") or []:
            s.reasons += 1
            response_reasons[rr["reason"]] += 1
    domains = [per[d] for d in sorted(per)]
    total = DomainStats("Total")
    for d in domains:
        total.add(d)
    return AnnotationStats(domains, total, span_reasons, response_reasons, len(annotators), n)


def load_annotation_stats(repo: Any) -> AnnotationStats:
    """Statistics of a repo's annotations config (joins responses, queries and documents when present)."""

    def read(config: str) -> list[dict]:
        return repo.read(config) if repo.has(config) else []

    return compute_annotation_stats(
        read(schema.ANNOTATIONS), read(schema.RESPONSES), read(schema.QUERIES), read(schema.DOCUMENTS)
    )


def _fmt(n: int) -> str:
    return f"{n / 1000:.0f}k" if n >= 10_000 else str(n)


def format_table1(stats: AnnotationStats) -> str:
    """Markdown table in the paper's Table 1 layout."""
    lines = ["| Domain | N | H+ | H− | ΣA | #w |", "|---|---:|---:|---:|---:|---:|"]
    for d in [*stats.domains, stats.total]:
        name = f"**{d.domain}**" if d is stats.total else d.domain
        lines.append(f"| {name} | {d.responses} | {d.likes} | {d.dislikes} | {d.reasons} | {_fmt(d.words)} |")
    return "\n".join(lines)


def format_reason_table(stats: AnnotationStats, taxonomy: Any = None) -> str:
    """Markdown table of how often each reason was ticked, on spans and on whole responses."""
    lines = ["| Polarity | Reason | Label | Spans | Responses |", "|---|---|---|---:|---:|"]
    keys = {(p, r) for p, r in stats.span_reasons} | {
        (schema.DISLIKE if r.startswith("dislike") else schema.LIKE, r) for r in stats.response_reasons
    }
    for polarity, reason in sorted(keys, key=lambda k: (k[0] != schema.LIKE, -stats.span_reasons[k], k[1])):
        label = ""
        if taxonomy is not None and taxonomy.has_reason(reason):
            label = taxonomy.label(reason)
        lines.append(
            f"| {polarity} | `{reason}` | {label} | {stats.span_reasons[(polarity, reason)]} | "
            f"{stats.response_reasons[reason]} |"
        )
    return "\n".join(lines)
