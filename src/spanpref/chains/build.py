"""The chains stage: for every annotation with a dislike span, a validated improvement chain (or a recorded
rejection), written to the chains config. Resumable: chains are journaled as each chunk finishes, and a rerun
skips chains already in the config or the journal."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from spanpref import schema
from spanpref.backends import Backend
from spanpref.chains.rewriters import HUMAN_MODEL, ChainContext, build_rewriter
from spanpref.chains.validate import ValidationConfig, order_dislikes, summarize_chains
from spanpref.feedback.agreement import matches_annotator
from spanpref.journal import Journal
from spanpref.repo import RepoError, open_repo
from spanpref.taxonomy import Taxonomy, load_taxonomy

logger = logging.getLogger(__name__)


@dataclass
class ChainReport:
    rewriter: str
    annotations: int = 0  # annotations with at least one dislike span
    skipped: int = 0  # chains already built
    built: int = 0
    valid: int = 0
    seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [
            f"chains ({self.rewriter}): {self.annotations} annotation(s) with dislikes; {self.skipped} already "
            f"built, {self.built} built now ({self.valid} valid) in {self.seconds:.1f} s"
        ]
        for rewriter, s in self.stats.items():
            mean_steps = f"{s['mean_steps']:.2f}" if s["mean_steps"] is not None else "-"
            edit = f"{s['mean_edit_size']:.1f}" if s["mean_edit_size"] is not None else "-"
            per_chain = s["tokens"]["completion_per_valid_chain"]
            lines.append(
                f"  {rewriter}: {s['valid']}/{s['chains']} valid ({s['validity_rate']:.1%}), mean steps "
                f"{mean_steps}, mean edit size {edit} chars, completion tokens per valid chain "
                f"{per_chain if per_chain is None else round(per_chain)}"
            )
            for code, n in sorted(s.get("reject_reasons", {}).items(), key=lambda kv: -kv[1]):
                lines.append(f"    rejected: {code}: {n}")
            sim = s.get("similarity")
            if sim and sim["chains"]:
                lines.append(
                    f"    similarity to the human correction (ROUGE-L F1, {sim['chains']} valid chain(s) with "
                    f"one): a* {sim['rouge_l']:.3f}, a0 {sim['rouge_l_a0']:.3f}"
                )
        return "\n".join(lines)


def _labels(span: dict, taxonomy: Taxonomy) -> str:
    parts = [taxonomy.label(r) if taxonomy.has_reason(r) else r for r in span.get("reasons") or []]
    text = "; ".join(parts) or "(no reason given)"
    return text + (f" (note: {span['note']})" if span.get("note") else "")


def load_contexts(
    repo: Any, rewriter: str, model_id: str, taxonomy: Taxonomy | None = None, annotator: str | None = None
) -> list[ChainContext]:
    """One context per annotation with at least one dislike span, in annotation order; with `annotator`, only the
    annotations of that annotator (a name such as `ai:llm`, or `human` for every annotator not named `ai:...`)."""
    for needed in (schema.ANNOTATIONS, schema.RESPONSES, schema.QUERIES, schema.DOCUMENTS):
        if not repo.has(needed):
            raise RepoError(
                f"{repo.path} has no {needed} config; chains need annotations, responses, queries and documents"
            )
    taxonomy = taxonomy or load_taxonomy()
    responses = {r["response_id"]: r for r in repo.read(schema.RESPONSES)}
    queries = {q["query_id"]: q for q in repo.read(schema.QUERIES)}
    documents = {d["doc_id"]: d for d in repo.read(schema.DOCUMENTS)}
    from spanpref.generate import model_slug

    contexts = []
    for ann in repo.read(schema.ANNOTATIONS):
        if annotator is not None and not matches_annotator(ann.get("annotator") or "", annotator):
            continue
        spans = [schema.from_row(schema.Span, s) for s in ann["spans"]]
        dislikes = order_dislikes([s for s in spans if s.polarity == schema.DISLIKE])
        if not dislikes:
            continue
        response = responses[ann["response_id"]]
        query = queries[response["query_id"]]
        labels = {s["span_id"]: _labels(s, taxonomy) for s in ann["spans"]}
        contexts.append(
            ChainContext(
                chain_id=f"{ann['annotation_id']}-{rewriter}-{model_slug(model_id)}",
                annotation_id=ann["annotation_id"],
                query=query["query"],
                document=documents[query["doc_id"]]["text"],
                a0=response["text"],
                dislikes=dislikes,
                likes=[s for s in spans if s.polarity == schema.LIKE],
                reason_labels=labels,
                correction=ann.get("reference_rewrite"),
                annotator=ann.get("annotator") or "",
            )
        )
    return contexts


def build_chains(
    folder: str,
    rewriter: str,
    backend: Backend | None,
    *,
    validation: ValidationConfig | None = None,
    limit: int | None = None,
    chunk_size: int = 16,
    seed: int = 0,
    progress: bool = True,
    annotator: str | None = None,
    **rewriter_overrides: Any,
) -> ChainReport:
    """Build (or finish building) the chains of `folder` with one rewriter, and write them to its chains config.

    Chains of other rewriters or models already in the config are kept, so rewriters can be compared side by
    side on the same annotations. A rewriter without a model (`human`) takes `backend=None`. `annotator` keeps
    only the annotations of one annotator (e.g. `ai:llm` for chains from AI feedback, `human` for the people's).
    """
    repo = open_repo(folder)
    rw = build_rewriter(rewriter, validation, **rewriter_overrides)
    if backend is None and rw.needs_backend:
        raise ValueError(f"the {rw.name} rewriter needs a generation backend")
    model_id = backend.model_id if backend is not None and rw.needs_backend else HUMAN_MODEL
    everything = load_contexts(repo, rw.name, model_id, annotator=annotator)
    contexts = everything[:limit]
    references = {c.annotation_id: (c.a0, c.correction) for c in everything if c.correction and c.correction.strip()}
    existing = repo.read(schema.CHAINS) if repo.has(schema.CHAINS) else []
    journal = Journal(repo.path, f"chains-{rw.name}")
    journaled = list(journal.records())
    done = {c["chain_id"] for c in existing} | {c["chain_id"] for c in journaled}
    todo = [c for c in contexts if c.chain_id not in done]
    report = ChainReport(rewriter=rw.name, annotations=len(contexts), skipped=len(contexts) - len(todo))
    new_rows = list(journaled)
    start = time.perf_counter()
    bar = tqdm(total=len(todo), desc=f"chains ({rw.name})", unit="chain", disable=not progress)
    try:
        for i in range(0, len(todo), chunk_size):
            chunk = todo[i : i + chunk_size]
            rows = rw.rewrite(chunk, backend, seed=seed)
            journal.append(*rows)
            new_rows.extend(rows)
            bar.update(len(chunk))
    finally:
        bar.close()
        journal.close()
        report.seconds = time.perf_counter() - start
        if new_rows:
            repo.write({schema.CHAINS: existing + new_rows})
        journal.clear()
    report.built = len(new_rows)
    report.valid = sum(r["status"] == "ok" for r in new_rows)
    all_rows = existing + new_rows
    report.stats = summarize_chains(all_rows, references)
    return report
