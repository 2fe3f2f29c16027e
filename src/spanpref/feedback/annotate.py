"""The AI feedback stage: an AI annotator marks spans on the responses of a dataset repo, as annotations rows.

Rows go to the annotations config under `annotator = "ai:<name>"`, beside the human ones, so chains, pairs and
statistics read them unchanged, and `spanpref.feedback.agreement` can compare them with the humans'. By default
only responses that a person annotated are done (those are the ones agreement can be measured on).

What made the rows is recorded in the repo, in `ai_annotators/<name>.yaml`: the annotator folder, kind, model id,
prompt version (file name and content hash), settings, taxonomy and seed. Their hash is the run key: resuming,
or adding rows to an annotator's existing ones, needs the same key, so one annotator name never mixes two setups
(choose another name, or pass `overwrite`). What could not be used (quotes found several times or not at all,
reasons outside the taxonomy, replies that are not JSON) is logged per response in
`logs/annotate-ai-<name>_problems.jsonl` and counted in the report.

Resumable like every long stage: each chunk of results is journaled (`spanpref.journal`) as it finishes; a rerun
skips responses already in the config or the journal, and the end merges everything with one atomic write.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml
from tqdm.auto import tqdm

from spanpref import schema
from spanpref.backends import Backend
from spanpref.errors import InputError, UsageError
from spanpref.feedback.agreement import is_ai
from spanpref.feedback.annotators import (
    PROBLEM_KINDS,
    AIAnnotator,
    AnnotationItem,
    LLMAnnotator,
    annotation_id_for,
    build_annotator,
)
from spanpref.journal import Journal
from spanpref.repo import RepoError, open_repo
from spanpref.taxonomy import load_taxonomy

logger = logging.getLogger(__name__)

RESPONSE_SETS = ("annotated", "all")


@dataclass(kw_only=True)
class AIAnnotatorConfig:
    """Options of an AI feedback run; the override fields (None: the annotator's config.yaml) change its settings."""

    annotator: str = field(
        default="llm",
        metadata={
            "help": "bundled annotator (llm, reward-models) or an annotator folder with config.yaml (+ prompt.txt)"
        },
    )
    name: str | None = field(
        default=None,
        metadata={"help": "the rows get annotator `ai:<name>` (default: the annotator folder's name)"},
    )
    responses: str = field(
        default="annotated",
        metadata={
            "help": "annotated: only responses a person annotated (agreement can be measured on them); all: every "
            "response"
        },
    )
    limit: int | None = field(default=None, metadata={"help": "only the first N of those responses"})
    seed: int = field(default=0, metadata={"help": "base seed of the model's sampling"})
    chunk_size: int = field(
        default=8, metadata={"help": "responses per journal write (a killed run loses at most one chunk)"}
    )
    compare: bool = field(
        default=False,
        metadata={
            "help": "llm: also make an A/B choice with a rationale on every pair a person compared among the "
            "selected responses' queries (written to the comparisons config)"
        },
    )
    overwrite: bool = field(
        default=False, metadata={"help": "replace this annotator's existing rows instead of adding to them"}
    )
    taxonomy: str = field(default="default", metadata={"help": "taxonomy name or YAML file the reasons come from"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    temperature: float | None = field(default=None, metadata={"help": "llm: sampling temperature"})
    max_new_tokens: int | None = field(default=None, metadata={"help": "llm: longest reply, in tokens"})
    max_attempts: int | None = field(default=None, metadata={"help": "llm: tries per response"})
    max_document_chars: int | None = field(default=None, metadata={"help": "llm: the document is cut to this length"})
    reward_models: list[str] | None = field(
        default=None, metadata={"help": "reward-models: model folders written by `spanpref rewards train`"}
    )
    threshold: float | None = field(
        default=None, metadata={"help": "reward-models: smallest P(error) that marks a segment"}
    )

    def __post_init__(self) -> None:
        if self.responses not in RESPONSE_SETS:
            raise UsageError(f"responses must be one of {list(RESPONSE_SETS)}, got {self.responses!r}")
        if self.chunk_size < 1:
            raise UsageError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.limit is not None and self.limit < 0:
            raise UsageError(f"limit must be >= 0, got {self.limit}")

    def overrides(self) -> dict[str, Any]:
        keys = ("temperature", "max_new_tokens", "max_attempts", "max_document_chars", "reward_models", "threshold")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


@dataclass
class AIAnnotationReport:
    annotator: str  # ai:<name>
    kind: str
    model: str
    selected: int = 0  # responses chosen for this run
    skipped: int = 0  # already annotated by this annotator (config or journal from a killed run)
    annotated: int = 0  # rows written by this run, resumed part included
    failed: int = 0  # responses without a usable reply after every attempt
    spans: dict[str, int] = field(default_factory=lambda: {schema.DISLIKE: 0, schema.LIKE: 0})
    response_reasons: int = 0
    format_errors: int = 0  # replies that were not the JSON asked for (retried up to max_attempts)
    problems: dict[str, int] = field(default_factory=dict)  # kind -> count (missing_quote, ambiguous_quote, ...)
    comparisons: int = 0
    comparison_format_errors: int = 0
    choice_agreement: float | None = None  # share of A/B choices equal to the person's on the same pair
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    run_file: str = ""
    problems_file: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        quotes = sum(self.problems.get(k, 0) for k in ("missing_quote", "ambiguous_quote", "empty_quote"))
        lines = [
            f"{self.annotator} ({self.kind}, {self.model or '-'}): {self.selected} response(s); {self.skipped} "
            f"already done, {self.annotated} annotated now, {self.failed} without a usable reply, in "
            f"{self.seconds:.1f} s",
            f"  spans: {self.spans[schema.DISLIKE]} dislike, {self.spans[schema.LIKE]} like; "
            f"{self.response_reasons} response-level reason(s)",
            f"  format errors (reply not the JSON asked for): {self.format_errors}; quotes not placed: {quotes} "
            f"(missing {self.problems.get('missing_quote', 0)}, ambiguous {self.problems.get('ambiguous_quote', 0)}, "
            f"empty {self.problems.get('empty_quote', 0)}); reasons outside the taxonomy: "
            f"{self.problems.get('unknown_reason', 0)}; malformed spans: {self.problems.get('malformed_span', 0)}",
        ]
        if self.comparisons or self.comparison_format_errors:
            agree = "-" if self.choice_agreement is None else f"{self.choice_agreement:.1%}"
            lines.append(
                f"  A/B choices: {self.comparisons} ({self.comparison_format_errors} format errors); "
                f"same as the person's: {agree}"
            )
        if self.prompt_tokens or self.completion_tokens:
            lines.append(f"  tokens: {self.prompt_tokens} prompt, {self.completion_tokens} completion")
        if self.problems_file:
            lines.append(f"  problems per response: {self.problems_file}")
        return "\n".join(lines)


def run_file_name(name: str) -> str:
    return f"ai_annotators/{name}.yaml"


def problems_file_name(name: str) -> str:
    return f"logs/annotate-ai-{name}_problems.jsonl"


def provenance(annotator: AIAnnotator, backend: Backend | None, seed: int) -> dict[str, Any]:
    """What the rows come from; the hash of it is the run key."""
    record = {
        "annotator": annotator.label,
        "kind": annotator.kind,
        "folder": annotator.folder.name,
        "model": annotator.model_id(backend),
        "prompt": annotator.prompt_version(),
        "taxonomy": annotator.taxonomy.key,
        "seed": seed,
        "settings": asdict(annotator.settings),
    }
    record["run_key"] = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:12]
    return record


def _load_items(repo: Any, cfg: AIAnnotatorConfig, annotations: list[dict]) -> list[AnnotationItem]:
    for needed in (schema.RESPONSES, schema.QUERIES):
        if not repo.has(needed):
            raise RepoError(f"{repo.path} has no {needed} config; AI feedback needs responses and queries")
    queries = {q["query_id"]: q for q in repo.read(schema.QUERIES)}
    documents = {d["doc_id"]: d["text"] for d in repo.read(schema.DOCUMENTS)} if repo.has(schema.DOCUMENTS) else {}
    human = {a["response_id"] for a in annotations if not is_ai(a.get("annotator") or "")}
    if cfg.responses == "annotated" and not human:
        raise InputError(
            f"{repo.path}: no response has a human annotation; pass responses='all' to annotate every response"
        )
    items = []
    for r in repo.read(schema.RESPONSES):
        if cfg.responses == "annotated" and r["response_id"] not in human:
            continue
        q = queries.get(r["query_id"])
        if q is None:
            raise InputError(f"response {r['response_id']}: query {r['query_id']!r} is not in the queries config")
        items.append(
            AnnotationItem(r["response_id"], r["text"], q["query"], documents.get(q["doc_id"], ""), r["query_id"])
        )
    return items[: cfg.limit] if cfg.limit is not None else items


def _comparison_tasks(repo: Any, items: list[AnnotationItem], name: str, limit: int | None) -> list[dict[str, Any]]:
    """The pairs a person compared among the queries of `items`, one task per pair (in the person's order)."""
    if not repo.has(schema.COMPARISONS):
        return []
    responses = {r["response_id"]: r for r in repo.read(schema.RESPONSES)}
    by_query = {it.query_id: it for it in items}
    tasks: dict[str, dict[str, Any]] = {}
    for c in repo.read(schema.COMPARISONS):
        if is_ai(c.get("annotator") or ""):
            continue
        ra, rb = responses.get(c["response_a"]), responses.get(c["response_b"])
        if ra is None or rb is None or ra["query_id"] not in by_query:
            continue
        cid = f"{c['response_a']}-vs-{c['response_b']}-ai-{name}"
        it = by_query[ra["query_id"]]
        tasks.setdefault(
            cid,
            {
                "comparison_id": cid,
                "response_a": c["response_a"],
                "response_b": c["response_b"],
                "query": it.query,
                "document": it.document,
                "text_a": ra["text"],
                "text_b": rb["text"],
            },
        )
    out = list(tasks.values())
    return out[:limit] if limit is not None else out


def annotate_with_ai(
    folder: str, config: AIAnnotatorConfig | None = None, backend: Backend | None = None
) -> AIAnnotationReport:
    """Annotate the responses of dataset repo `folder` with one AI annotator (see the module docstring).

    `backend` serves the `llm` kind (any `spanpref.backends` backend); `reward-models` needs none.
    """
    cfg = config or AIAnnotatorConfig()
    taxonomy = load_taxonomy(cfg.taxonomy)
    annotator = build_annotator(cfg.annotator, name=cfg.name, taxonomy=taxonomy, **cfg.overrides())
    if annotator.needs_backend and backend is None:
        raise UsageError(f"the {annotator.kind} annotator needs a generation backend")
    if cfg.compare and not isinstance(annotator, LLMAnnotator):
        raise UsageError(f"A/B choices (compare) need an llm annotator, not {annotator.kind}")
    repo = open_repo(folder)
    annotations = repo.read(schema.ANNOTATIONS) if repo.has(schema.ANNOTATIONS) else []
    items = _load_items(repo, cfg, annotations)
    run = provenance(annotator, backend if annotator.needs_backend else None, cfg.seed)
    run_path = repo.path / run_file_name(annotator.name)
    problems_path = repo.path / problems_file_name(annotator.name)

    mine = [a for a in annotations if a.get("annotator") == annotator.label]
    comparisons = repo.read(schema.COMPARISONS) if repo.has(schema.COMPARISONS) else []
    my_comparisons = [c for c in comparisons if c.get("annotator") == annotator.label]
    if cfg.overwrite:
        annotations = [a for a in annotations if a.get("annotator") != annotator.label]
        comparisons = [c for c in comparisons if c.get("annotator") != annotator.label]
        mine, my_comparisons = [], []
    elif mine or my_comparisons:
        recorded = yaml.safe_load(run_path.read_text(encoding="utf-8")) if run_path.is_file() else {}
        if (recorded or {}).get("run_key") != run["run_key"]:
            raise UsageError(
                f"{repo.path} already has rows of {annotator.label} made with other settings (see "
                f"{run_path}); choose another name, or pass overwrite to replace them"
            )

    journal = Journal(repo.path, f"annotate-ai-{annotator.name}")
    journaled = list(journal.records())
    if journaled and (journaled[0].get("type") != "run" or journaled[0].get("run_key") != run["run_key"]):
        raise UsageError(
            f"{journal.path} holds an interrupted run of {annotator.label} with other settings; rerun "
            "it with the same settings to finish it, or delete that file to start over"
        )
    item_records = [r for r in journaled if r.get("type") == "item"]
    comparison_records = [r for r in journaled if r.get("type") == "comparison"]
    done = {a["response_id"] for a in mine} | {r["response_id"] for r in item_records}
    todo = [it for it in items if it.response_id not in done]
    tasks = _comparison_tasks(repo, items, annotator.name, cfg.limit) if cfg.compare else []
    done_cmp = {c["comparison_id"] for c in my_comparisons} | {r["comparison_id"] for r in comparison_records}
    todo_cmp = [t for t in tasks if t["comparison_id"] not in done_cmp]

    report = AIAnnotationReport(
        annotator=annotator.label,
        kind=annotator.kind,
        model=run["model"],
        selected=len(items),
        skipped=len(items) - len(todo),
    )
    start = time.perf_counter()
    bar = tqdm(
        total=len(todo) + len(todo_cmp),
        desc=f"AI feedback ({annotator.label})",
        unit="response",
        disable=not cfg.progress,
    )
    try:
        if not journaled and (todo or todo_cmp):
            journal.append({"type": "run", "run_key": run["run_key"]})
        for i in range(0, len(todo), cfg.chunk_size):
            chunk = todo[i : i + cfg.chunk_size]
            results = annotator.annotate(chunk, backend, seed=cfg.seed)
            records = [{"type": "item", **r.to_record()} for r in results]
            journal.append(*records)
            item_records.extend(records)
            bar.update(len(chunk))
        for i in range(0, len(todo_cmp), cfg.chunk_size):
            chunk = todo_cmp[i : i + cfg.chunk_size]
            records = [{"type": "comparison", **r} for r in annotator.compare(chunk, backend, seed=cfg.seed)]
            journal.append(*records)
            comparison_records.extend(records)
            bar.update(len(chunk))
    finally:
        bar.close()
        journal.close()
        report.seconds = time.perf_counter() - start
        _merge(repo, annotator, run, annotations, comparisons, item_records, comparison_records, cfg.overwrite)
        journal.clear()
    _count(report, item_records, comparison_records, comparisons)
    if item_records or comparison_records:
        report.run_file = str(run_path)
        report.problems_file = str(problems_path) if problems_path.is_file() else ""
    return report


def _merge(
    repo: Any,
    annotator: AIAnnotator,
    run: dict,
    annotations: list[dict],
    comparisons: list[dict],
    item_records: list[dict],
    comparison_records: list[dict],
    overwrite: bool,
) -> None:
    # a run killed after its merge but before clearing the journal left rows that are in the config already
    have = {a["annotation_id"] for a in annotations} | {c["comparison_id"] for c in comparisons}
    new_rows = [
        r["annotation"] for r in item_records if r["annotation"] and r["annotation"]["annotation_id"] not in have
    ]
    new_cmp = [r["row"] for r in comparison_records if r["row"] and r["row"]["comparison_id"] not in have]
    if not item_records and not comparison_records:
        return
    lines = [
        json.dumps({"response_id": r["response_id"], **p}, ensure_ascii=False)
        for r in item_records
        for p in r["problems"]
    ]
    lines += [
        json.dumps(
            {"comparison_id": r["comparison_id"], "kind": "format_error", "error": r["error"]}, ensure_ascii=False
        )
        for r in comparison_records
        if r["row"] is None
    ]
    problems_path = repo.path / problems_file_name(annotator.name)
    if problems_path.is_file() and not overwrite:  # problems of rows merged by an earlier, partial run
        lines = list(dict.fromkeys(problems_path.read_text(encoding="utf-8").splitlines() + lines))
    extra = {run_file_name(annotator.name): yaml.safe_dump(run, sort_keys=False, allow_unicode=True)}
    if lines:
        extra[problems_file_name(annotator.name)] = "".join(line + "\n" for line in lines)
    configs: dict[str, list[dict]] = {}
    if new_rows or overwrite:
        configs[schema.ANNOTATIONS] = annotations + new_rows
    if new_cmp or (overwrite and comparison_records):
        configs[schema.COMPARISONS] = comparisons + new_cmp
    configs = {k: v for k, v in configs.items() if v}
    repo.write(configs, taxonomy=annotator.taxonomy, extra_files=extra)


def _count(
    report: AIAnnotationReport, item_records: list[dict], comparison_records: list[dict], comparisons: list[dict]
) -> None:
    problems: Counter = Counter()
    for r in item_records:
        problems.update(p["kind"] for p in r["problems"])
        report.format_errors += r["format_errors"]
        report.prompt_tokens += r["prompt_tokens"]
        report.completion_tokens += r["completion_tokens"]
        ann = r["annotation"]
        if ann is None:
            report.failed += 1
            continue
        report.annotated += 1
        for s in ann["spans"]:
            report.spans[s["polarity"]] += 1
        report.response_reasons += len(ann["response_reasons"])
    report.problems = {k: problems[k] for k in PROBLEM_KINDS if problems[k]}
    human: dict[tuple[str, str], list[str]] = {}
    for c in comparisons:
        if not is_ai(c.get("annotator") or ""):
            human.setdefault((c["response_a"], c["response_b"]), []).append(c["choice"])
    same = []
    for r in comparison_records:
        report.comparison_format_errors += r["format_errors"]
        report.prompt_tokens += r.get("prompt_tokens", 0)
        report.completion_tokens += r.get("completion_tokens", 0)
        if r["row"] is not None:
            report.comparisons += 1
            key = (r["row"]["response_a"], r["row"]["response_b"])
            same.extend(choice == r["row"]["choice"] for choice in human.get(key, []))
    report.choice_agreement = sum(same) / len(same) if same else None


__all__ = [
    "AIAnnotationReport",
    "AIAnnotatorConfig",
    "RESPONSE_SETS",
    "annotate_with_ai",
    "annotation_id_for",
    "problems_file_name",
    "provenance",
    "run_file_name",
]
