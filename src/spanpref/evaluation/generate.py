"""Each model's responses to the held-out test prompts, into the `eval_outputs` config; resumable.

The test prompts are the queries of the test split of the pairs configs (`spanpref pairs` splits by query, so
none of them was trained on). The prompt is the one the training pairs were built with (document + query in the
response prompt), sampled at temperature 0.8 and top-p 0.95 by default, seeded. Every model runs as its own
journaled stage through `spanpref.generate.run_stage`: a killed run resumes where it stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from spanpref import schema
from spanpref.backends import Backend, Completion, GenerationConfig
from spanpref.generate import ItemState, StageReport, WorkItem, run_stage, slug
from spanpref.prompts import load_prompt, truncate_text
from spanpref.repo import RepoError, open_repo

logger = logging.getLogger(__name__)

QUERY_SETS = ("test", "all")


@dataclass(kw_only=True)
class EvalGenerationConfig:
    queries: str = field(
        default="test",
        metadata={"help": "which prompts: test (the test split of the pairs configs) or all (every query)"},
    )
    pairs_config: str | None = field(
        default=None,
        metadata={"help": "take the test split from this pairs config only (default: every pairs config present)"},
    )
    prompt: str = field(
        default="generate_responses",
        metadata={"help": "prompt name or .txt file: the prompt the training pairs were built with"},
    )
    max_document_chars: int = field(default=6000, metadata={"help": "documents are cut to this many characters"})
    max_attempts: int = field(default=3, metadata={"help": "model calls per output before it counts as failed"})
    min_chars: int = field(default=1, metadata={"help": "outputs shorter than this (stripped) are retried"})
    limit: int | None = field(default=None, metadata={"help": "only the first N prompts (sorted by query id)"})


def parse_model_specs(specs: list[str] | str) -> list[tuple[str, str]]:
    """`name=model` or `model` items (a comma-separated string or a list) -> [(name, model)], names unique.

    The name is what the eval_outputs, judgments and ratings configs call the model (e.g. `dpo=outputs/dpo-run`).
    """
    parts = specs.split(",") if isinstance(specs, str) else [p for spec in specs for p in spec.split(",")]
    out = []
    for item in filter(None, (p.strip() for p in parts)):
        name, _, model = item.partition("=") if "=" in item else (item, "", item)
        if not name or not model:
            raise ValueError(f"bad model spec {item!r}: use `name=model-id-or-path` or `model-id-or-path`")
        out.append((name.strip(), model.strip()))
    if not out:
        raise ValueError("no models given")
    names = [n for n, _ in out]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"model name(s) {duplicates} given twice; name them apart with name=model")
    return out


def select_queries(folder: str, queries: str = "test", pairs_config: str | None = None) -> list[str]:
    """The query ids to evaluate on, sorted."""
    if queries not in QUERY_SETS:
        raise ValueError(f"unknown query set {queries!r}; choose from {list(QUERY_SETS)}")
    repo = open_repo(folder)
    if queries == "all":
        if not repo.has(schema.QUERIES):
            raise RepoError(f"{folder} has no queries config")
        return sorted(q["query_id"] for q in repo.read(schema.QUERIES))
    configs = [pairs_config] if pairs_config else [c for c in schema.PAIR_CONFIGS if repo.has(c)]
    ids = set()
    for config in configs:
        if not repo.has(config):
            raise RepoError(f"{folder} has no {config} config")
        if "test" in repo.splits(config):
            ids.update(r["query_id"] for r in repo.read(config, "test"))
    if not ids:
        raise RepoError(
            f"{folder}: no test split in {configs or 'any pairs config'}; build pairs with a test share "
            "(`spanpref pairs FOLDER --test 0.1`) or evaluate on every query with --queries all"
        )
    return sorted(ids)


def generate_eval_outputs(
    folder: str,
    models: list[tuple[str, str]],
    build_backend_for: Callable[[str], Backend],
    gen: GenerationConfig,
    cfg: EvalGenerationConfig | None = None,
) -> list[StageReport]:
    """One output per (model, prompt) into `folder`'s eval_outputs config; one stage report per model.

    `models` is [(name, model id or path)]; `build_backend_for(model)` builds the backend that serves it (called
    once per model that still has work, so in-process models are loaded one at a time).
    """
    cfg = cfg or EvalGenerationConfig()
    repo = open_repo(folder)
    for needed in (schema.QUERIES, schema.DOCUMENTS):
        if not repo.has(needed):
            raise RepoError(f"{folder} has no {needed} config")
    query_ids = select_queries(folder, cfg.queries, cfg.pairs_config)[: cfg.limit]
    queries = {q["query_id"]: q for q in repo.read(schema.QUERIES)}
    docs = {d["doc_id"]: d for d in repo.read(schema.DOCUMENTS)}
    missing = [q for q in query_ids if q not in queries]
    if missing:
        raise RepoError(f"{folder}: test query {missing[0]!r} (and {len(missing) - 1} more) not in the queries config")
    prompt = load_prompt(cfg.prompt)
    reports = []
    for name, model in models:
        done = {r["output_id"] for r in repo.read(schema.EVAL_OUTPUTS)} if repo.has(schema.EVAL_OUTPUTS) else set()
        name_slug = slug(name)
        items = []
        for qid in query_ids:
            output_id = f"{qid}-{name_slug}"
            if output_id in done:
                continue
            q = queries[qid]
            text = truncate_text(docs[q["doc_id"]]["text"], cfg.max_document_chars) if q["doc_id"] in docs else ""
            items.append(WorkItem(output_id, prompt.messages(text=text, query=q["query"]), {"query_id": qid}))
        skipped = len(query_ids) - len(items)
        if not items:
            reports.append(StageReport(stage=f"eval {name}", items=skipped, skipped=skipped))
            continue
        backend = build_backend_for(model)

        def accept(
            item: WorkItem, completion: Completion, st: ItemState, seed: int, name: str = name
        ) -> tuple[list[dict[str, Any]], str, bool]:
            text = completion.text.strip()
            if len(text) < cfg.min_chars:
                return [], f"empty output ({len(text)} characters)", False
            row = schema.to_row(
                schema.EvalOutput(
                    output_id=item.key,
                    model=name,
                    query_id=item.info["query_id"],
                    text=text,
                    temperature=gen.temperature,
                    top_p=gen.top_p,
                    seed=seed,
                )
            )
            return [row], "", True

        report, _ = run_stage(
            repo,
            f"eval_outputs_{name_slug}",
            schema.EVAL_OUTPUTS,
            items,
            backend,
            gen,
            accept,
            max_attempts=cfg.max_attempts,
        )
        report.stage = f"eval {name}"
        report.items += skipped
        report.skipped += skipped
        reports.append(report)
    return reports
