"""AI annotators: models that mark liked and disliked spans with reasons from the taxonomy, as a person would.

An annotator is a folder `recipes/annotators/<name>/` with `config.yaml` (its `kind` and settings) and, for a
language model, `prompt.txt` (and `compare.txt` for A/B choices). The kinds (`ANNOTATORS`):

- `llm`: any generation backend. The model reads the query, the document, the response and the taxonomy and replies
  with a JSON object (requested through the backend's `response_format`): spans given as quotes with polarity and
  reason ids, and optional response-level reasons. Quotes become offsets by exact matching
  (`spanpref.feedback.quotes`); a quote that occurs several times or not at all, a reason outside the taxonomy and a
  reply that is not the JSON asked for are recorded as problems, never repaired by a guess.
- `reward-models`: span reward models trained by `spanpref.rewards.reward_model`; every segment a model predicts to
  be an error becomes a dislike span with the reasons of that model's group and P(error) in its note, and a
  response-level group (completeness) gives response-level reasons.

Annotators turn `AnnotationItem`s into `ItemResult`s: one annotation row (or none, when the model gave no usable
reply) plus what went wrong, which the stage (`spanpref.feedback.annotate`) journals and counts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from spanpref import schema
from spanpref.backends import Backend, Completion, GenerationConfig
from spanpref.configfile import load_mapping
from spanpref.errors import InputError, MissingInputError, UsageError
from spanpref.feedback.quotes import locate_quote
from spanpref.prompts import PromptTemplate, parse_prompt, truncate_text
from spanpref.taxonomy import Taxonomy

logger = logging.getLogger(__name__)

SEED_STRIDE = 100_003  # seed offset between attempts, so a retry samples anew


@dataclass(kw_only=True)
class AnnotatorSettings:
    """The `config.yaml` of an annotator folder; unknown keys are errors."""

    kind: str = field(metadata={"help": "which annotator implementation: llm or reward-models"})
    prompt: str = field(default="prompt.txt", metadata={"help": "llm: prompt file, relative to the annotator folder"})
    compare_prompt: str = field(
        default="compare.txt", metadata={"help": "llm: prompt file of the A/B choice, relative to the folder"}
    )
    temperature: float = field(default=0.0, metadata={"help": "llm: sampling temperature (0: greedy)"})
    top_p: float = field(default=1.0, metadata={"help": "llm: nucleus sampling mass"})
    max_new_tokens: int = field(default=512, metadata={"help": "llm: longest reply, in tokens"})
    max_attempts: int = field(
        default=2, metadata={"help": "llm: tries per response; a reply that is not the JSON asked for is asked again"}
    )
    max_document_chars: int = field(default=3000, metadata={"help": "llm: the document is cut to this length"})
    max_spans: int = field(default=5, metadata={"help": "llm: most spans the reply may hold"})
    max_quote_chars: int = field(default=200, metadata={"help": "llm: longest quote the reply may hold"})
    structured: bool = field(
        default=True,
        metadata={
            "help": "llm: send the reply's JSON schema as response_format (HTTP servers enforce it while decoding; "
            "the in-process backend does not, and the reply is checked either way)"
        },
    )
    constrain_reasons: bool = field(
        default=True,
        metadata={
            "help": "llm: the schema lists the taxonomy's reason ids, so a server cannot decode another one; "
            "false lets the model name any reason (those outside the taxonomy are recorded)"
        },
    )
    notes: bool = field(
        default=False,
        metadata={
            "help": "llm: the schema has a short free-text note per span (small models tend to ramble in it until "
            "the reply hits the token limit)"
        },
    )
    response_reasons: bool = field(
        default=True, metadata={"help": "llm: also ask for reasons about the response as a whole (dislike only)"}
    )
    reward_models: list[str] = field(
        default_factory=list,
        metadata={"help": "reward-models: model folders or Hub ids written by `spanpref rewards train`"},
    )
    threshold: float = field(
        default=0.5, metadata={"help": "reward-models: a segment with P(error) at or above this is marked"}
    )
    batch_size: int = field(default=8, metadata={"help": "reward-models: responses per forward pass"})


def annotator_folder(name_or_dir: str | Path) -> Path:
    """A bundled annotator by name (`recipes/annotators/<name>`) or any folder holding a config.yaml."""
    folder = Path(name_or_dir)
    if folder.is_dir():
        if not (folder / "config.yaml").is_file():
            raise MissingInputError(f"annotator folder {folder} has no config.yaml")
        return folder
    bundled = resources.files("spanpref") / "recipes" / "annotators"
    target = bundled / str(name_or_dir)
    if not target.is_dir():
        names = sorted(p.name for p in bundled.iterdir() if p.is_dir())
        raise UsageError(f"unknown annotator {str(name_or_dir)!r}; choose from {names} or give an annotator folder")
    return Path(str(target))


def load_annotator_settings(name_or_dir: str | Path, **overrides: Any) -> tuple[AnnotatorSettings, Path]:
    folder = annotator_folder(name_or_dir)
    known = {f.name for f in dataclasses.fields(AnnotatorSettings)}
    data = load_mapping(folder / "config.yaml", known, what="annotator settings")
    unknown = set(overrides) - known
    if unknown:
        raise UsageError(f"unknown annotator setting(s) {sorted(unknown)}; known: {sorted(known)}")
    if "kind" not in data:
        raise UsageError(f"{folder / 'config.yaml'}: needs `kind`, one of {sorted(ANNOTATORS)}")
    settings = AnnotatorSettings(**{**data, **overrides})
    if settings.kind not in ANNOTATORS:
        raise UsageError(
            f"{folder / 'config.yaml'}: unknown annotator kind {settings.kind!r}; choose from {sorted(ANNOTATORS)}"
        )
    if settings.max_attempts < 1:
        raise UsageError(f"max_attempts must be >= 1, got {settings.max_attempts}")
    return settings, folder


@dataclass
class AnnotationItem:
    """One response to annotate, with what the annotator may read about it."""

    response_id: str
    text: str
    query: str
    document: str = ""
    query_id: str = ""


@dataclass
class ItemResult:
    """What one annotator did with one response: the journal record of the stage."""

    response_id: str
    annotation: dict[str, Any] | None  # an annotations-config row; None when no usable reply came
    problems: list[dict[str, Any]] = field(default_factory=list)  # {"kind": ..., ...}, see PROBLEM_KINDS
    format_errors: int = 0  # replies that were not the JSON asked for
    attempts: int = 1
    prompt_tokens: int = 0
    completion_tokens: int = 0
    raw: str = ""  # the last reply, kept when no usable reply came

    def to_record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PROBLEM_KINDS = (
    "missing_quote",
    "ambiguous_quote",
    "empty_quote",
    "unknown_reason",
    "malformed_span",
    "format_error",
    "failed",
)


def annotation_id_for(response_id: str, name: str) -> str:
    return f"{response_id}-ai-{name}"


class AIAnnotator(ABC):
    kind: str
    needs_backend = True

    def __init__(self, name: str, settings: AnnotatorSettings, folder: Path, taxonomy: Taxonomy):
        self.name = name
        self.settings = settings
        self.folder = folder
        self.taxonomy = taxonomy

    @property
    def label(self) -> str:
        """The annotator column of its rows."""
        return f"ai:{self.name}"

    @abstractmethod
    def model_id(self, backend: Backend | None) -> str:
        """What produced the spans (recorded with the rows)."""

    def prompt_version(self) -> str:
        return ""

    @abstractmethod
    def annotate(self, items: list[AnnotationItem], backend: Backend | None, seed: int = 0) -> list[ItemResult]:
        """One result per item, in item order."""

    def row(self, item: AnnotationItem, spans: list[schema.Span], reasons: list[schema.ResponseReason]) -> dict:
        return schema.to_row(
            schema.Annotation(
                annotation_id=annotation_id_for(item.response_id, self.name),
                annotator=self.label,
                response_id=item.response_id,
                spans=spans,
                response_reasons=reasons,
                taxonomy=self.taxonomy.key,
            )
        )


# ---------------------------------------------------------------------------------------------------
# llm
# ---------------------------------------------------------------------------------------------------
def render_taxonomy(taxonomy: Taxonomy) -> str:
    """The reason ids and labels, grouped by polarity, as the prompt shows them."""
    lines = []
    for polarity, title in ((schema.DISLIKE, "Reasons to dislike a span"), (schema.LIKE, "Reasons to like a span")):
        lines.append(f"{title}:")
        lines.extend(f"- {r.id}: {r.label}" for r in taxonomy.reasons(polarity, include_other=False))
        other = taxonomy.other_id(polarity)
        if other:
            lines.append(f"- {other}: {taxonomy.label(other)} (say why in the note)")
    return "\n".join(lines)


def annotation_schema(taxonomy: Taxonomy, settings: AnnotatorSettings) -> dict[str, Any]:
    """The JSON schema of a reply: spans (quote, polarity, reasons, note) and, if asked, response-level reasons."""

    def item(polarity: str | None) -> dict[str, Any]:
        if polarity is None:
            reasons: dict[str, Any] = {"type": "string"}
            pol: dict[str, Any] = {"type": "string", "enum": list(schema.POLARITIES)}
        else:
            reasons = {"type": "string", "enum": [r.id for r in taxonomy.reasons(polarity)]}
            pol = {"type": "string", "const": polarity}
        return {
            "type": "object",
            "properties": {
                "quote": {"type": "string", "minLength": 1, "maxLength": settings.max_quote_chars},
                "polarity": pol,
                "reasons": {"type": "array", "items": reasons, "minItems": 1, "maxItems": 3},
                **({"note": {"type": "string", "maxLength": 120}} if settings.notes else {}),
            },
            "required": ["quote", "polarity", "reasons"],
            "additionalProperties": False,
        }

    if settings.constrain_reasons:
        span: dict[str, Any] = {"anyOf": [item(schema.DISLIKE), item(schema.LIKE)]}
        whole: dict[str, Any] = {"type": "string", "enum": [r.id for r in taxonomy.reasons(schema.DISLIKE)]}
    else:
        span, whole = item(None), {"type": "string"}
    properties: dict[str, Any] = {"spans": {"type": "array", "items": span, "maxItems": settings.max_spans}}
    required = ["spans"]
    if settings.response_reasons:
        properties["response_reasons"] = {"type": "array", "items": whole, "maxItems": 3}
        required.append("response_reasons")
    body = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    return {"type": "json_schema", "json_schema": {"name": "span_feedback", "schema": body}}


@dataclass
class ParsedReply:
    spans: list[schema.Span]
    response_reasons: list[schema.ResponseReason]
    problems: list[dict[str, Any]]


def _reasons(given: Any, polarity: str, taxonomy: Taxonomy, problems: list[dict], where: dict) -> tuple[list, str]:
    """The taxonomy's reasons among `given`, plus a note naming the others (which then count as `other`)."""
    if isinstance(given, str):
        given = [given]
    kept, outside = [], []
    for r in given if isinstance(given, list) else []:
        r = str(r).strip()
        if taxonomy.has_reason(r, polarity):
            if r not in kept:
                kept.append(r)
        elif r:
            outside.append(r)
            problems.append({"kind": "unknown_reason", "reason": r, "polarity": polarity, **where})
    note = ""
    if outside:
        other = taxonomy.other_id(polarity)
        if other and other not in kept:
            kept.append(other)
        note = f"reason(s) outside {taxonomy.key}: {', '.join(outside)}"
    return kept, note


def parse_annotation_reply(reply: str, text: str, taxonomy: Taxonomy) -> ParsedReply:
    """Spans and response-level reasons from a reply; raises `InputError` when the reply is not the JSON object
    asked for. Quotes that cannot be placed, unknown reasons and malformed span entries become problems."""
    try:
        data = json.loads(reply)
    except json.JSONDecodeError as e:
        raise InputError(f"the reply is not JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(data, dict) or not isinstance(data.get("spans"), list):
        raise InputError("the reply is not an object with a list under 'spans'")
    problems: list[dict[str, Any]] = []
    spans: list[schema.Span] = []
    placed: dict[tuple[int, int, str], schema.Span] = {}
    for i, entry in enumerate(data["spans"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("quote"), str):
            problems.append({"kind": "malformed_span", "index": i, "entry": entry})
            continue
        polarity = entry.get("polarity")
        if polarity not in schema.POLARITIES:
            problems.append({"kind": "malformed_span", "index": i, "entry": entry})
            continue
        match = locate_quote(text, entry["quote"])
        if not match.ok:
            problems.append(
                {
                    "kind": f"{match.status}_quote",
                    "index": i,
                    "quote": entry["quote"],
                    "occurrences": match.occurrences,
                    "polarity": polarity,
                }
            )
            continue
        where = {"index": i, "quote": entry["quote"]}
        reasons, outside = _reasons(entry.get("reasons"), polarity, taxonomy, problems, where)
        note = "; ".join(x for x in (str(entry.get("note") or "").strip(), outside) if x)
        if taxonomy.other_id(polarity) in reasons and not note:
            note = "(the model chose 'other' without saying why)"
        key = (match.start, match.end, polarity)
        if key in placed:  # the same passage quoted twice: one span with both sets of reasons
            same = placed[key]
            same.reasons.extend(r for r in reasons if r not in same.reasons)
            same.note = "; ".join(x for x in (same.note, note) if x)
            continue
        span = schema.Span(
            span_id=len(spans) + 1, start=match.start, end=match.end, polarity=polarity, reasons=reasons, note=note
        )
        placed[key] = span
        spans.append(span)
    whole: list[schema.ResponseReason] = []
    given = data.get("response_reasons") or []
    reasons, outside = _reasons(given, schema.DISLIKE, taxonomy, problems, {"index": -1, "quote": ""})
    for r in reasons:
        note = outside if r == taxonomy.other_id(schema.DISLIKE) else ""
        whole.append(schema.ResponseReason(reason=r, note=note))
    return ParsedReply(spans, whole, problems)


class LLMAnnotator(AIAnnotator):
    kind = "llm"

    def __init__(self, name: str, settings: AnnotatorSettings, folder: Path, taxonomy: Taxonomy):
        super().__init__(name, settings, folder, taxonomy)
        path = folder / settings.prompt
        if not path.is_file():
            raise MissingInputError(f"annotator {name}: prompt file {path} does not exist")
        self.prompt: PromptTemplate = parse_prompt(path.read_text(encoding="utf-8"), f"annotators/{folder.name}")
        compare = folder / settings.compare_prompt
        self.compare_prompt: PromptTemplate | None = (
            parse_prompt(compare.read_text(encoding="utf-8"), f"annotators/{folder.name}/{compare.stem}")
            if compare.is_file()
            else None
        )
        self.taxonomy_text = render_taxonomy(taxonomy)
        self.response_format = annotation_schema(taxonomy, settings) if settings.structured else None

    def model_id(self, backend: Backend | None) -> str:
        return backend.model_id if backend is not None else ""

    def prompt_version(self) -> str:
        versions = [self.prompt.version] + ([self.compare_prompt.version] if self.compare_prompt else [])
        return ", ".join(versions)

    def messages(self, item: AnnotationItem) -> list[dict[str, str]]:
        return self.prompt.messages(
            query=item.query,
            document=truncate_text(item.document, self.settings.max_document_chars),
            response=item.text,
            taxonomy=self.taxonomy_text,
        )

    def _gen(self, seed: int) -> GenerationConfig:
        s = self.settings
        return GenerationConfig(temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens, seed=seed)

    def annotate(self, items: list[AnnotationItem], backend: Backend | None, seed: int = 0) -> list[ItemResult]:
        if backend is None:
            raise UsageError(f"the {self.kind} annotator needs a generation backend")
        results = {it.response_id: ItemResult(it.response_id, None, attempts=0) for it in items}
        pending = list(items)
        for attempt in range(self.settings.max_attempts):
            if not pending:
                break
            gen = self._gen(seed + attempt * SEED_STRIDE)
            replies = backend.generate(
                [self.messages(it) for it in pending], gen, response_format=self.response_format
            )
            again = []
            for it, completions in zip(pending, replies, strict=True):
                res, c = results[it.response_id], completions[0]
                res.attempts = attempt + 1
                res.prompt_tokens += c.prompt_tokens
                res.completion_tokens += c.completion_tokens
                try:
                    parsed = parse_annotation_reply(c.text, it.text, self.taxonomy)
                except InputError as e:
                    cut = " (cut off at the token limit)" if c.finish_reason == "length" else ""
                    res.format_errors += 1
                    res.problems.append(
                        {"kind": "format_error", "attempt": attempt, "error": f"{e}{cut}", "reply": c.text[:2000]}
                    )
                    res.raw = c.text
                    again.append(it)
                    continue
                res.problems.extend(parsed.problems)
                res.annotation = self.row(it, parsed.spans, parsed.response_reasons)
                res.raw = ""
            pending = again
        for it in pending:
            results[it.response_id].problems.append({"kind": "failed", "attempts": self.settings.max_attempts})
        return [results[it.response_id] for it in items]

    # -- A/B choices --------------------------------------------------------------------------------
    @staticmethod
    def choice_schema() -> dict[str, Any]:
        body = {
            "type": "object",
            "properties": {
                "rationale": {"type": "string", "maxLength": 600},
                "choice": {"type": "string", "enum": list(schema.CHOICES)},
            },
            "required": ["rationale", "choice"],
            "additionalProperties": False,
        }
        return {"type": "json_schema", "json_schema": {"name": "ab_choice", "schema": body}}

    def compare(self, tasks: list[dict[str, Any]], backend: Backend, seed: int = 0) -> list[dict[str, Any]]:
        """One record per task ({comparison_id, response_a, response_b, query, document, text_a, text_b}): the
        comparisons row, or None with the format error."""
        if self.compare_prompt is None:
            raise MissingInputError(
                f"annotator {self.name}: A/B choices need {self.folder / self.settings.compare_prompt}"
            )
        fmt = self.choice_schema() if self.settings.structured else None
        out = {
            t["comparison_id"]: {
                "comparison_id": t["comparison_id"],
                "row": None,
                "format_errors": 0,
                "error": "",
                "prompt_tokens": 0,
                "completion_tokens": 0,
            }
            for t in tasks
        }
        pending = list(tasks)
        for attempt in range(self.settings.max_attempts):
            if not pending:
                break
            requests = [
                self.compare_prompt.messages(
                    query=t["query"],
                    document=truncate_text(t["document"], self.settings.max_document_chars),
                    response_a=t["text_a"],
                    response_b=t["text_b"],
                )
                for t in pending
            ]
            replies = backend.generate(requests, self._gen(seed + attempt * SEED_STRIDE), response_format=fmt)
            again = []
            for t, completions in zip(pending, replies, strict=True):
                rec = out[t["comparison_id"]]
                rec["prompt_tokens"] += completions[0].prompt_tokens
                rec["completion_tokens"] += completions[0].completion_tokens
                choice, rationale, error = parse_choice_reply(completions[0])
                if error:
                    rec["format_errors"] += 1
                    rec["error"] = error
                    again.append(t)
                    continue
                rec["row"] = schema.to_row(
                    schema.Comparison(
                        comparison_id=t["comparison_id"],
                        annotator=self.label,
                        response_a=t["response_a"],
                        response_b=t["response_b"],
                        choice=choice,
                        rationale=rationale,
                    )
                )
            pending = again
        return [out[t["comparison_id"]] for t in tasks]


def parse_choice_reply(completion: Completion) -> tuple[str, str, str]:
    """(choice, rationale, "") from an A/B reply, or ("", "", why it is not the JSON asked for)."""
    try:
        data = json.loads(completion.text)
    except json.JSONDecodeError as e:
        cut = " (cut off at the token limit)" if completion.finish_reason == "length" else ""
        return "", "", f"the reply is not JSON ({e.msg} at character {e.pos}){cut}"
    if not isinstance(data, dict) or data.get("choice") not in schema.CHOICES:
        return "", "", f"the reply has no choice among {list(schema.CHOICES)}"
    return data["choice"], str(data.get("rationale") or ""), ""


# ---------------------------------------------------------------------------------------------------
# reward-models
# ---------------------------------------------------------------------------------------------------
class RewardModelAnnotator(AIAnnotator):
    kind = "reward-models"
    needs_backend = False

    def __init__(self, name: str, settings: AnnotatorSettings, folder: Path, taxonomy: Taxonomy):
        super().__init__(name, settings, folder, taxonomy)
        if not settings.reward_models:
            raise UsageError(f"annotator {name}: list the reward model folders under `reward_models`")
        if not 0 < settings.threshold < 1:
            raise UsageError(f"threshold must be in (0, 1), got {settings.threshold}")
        self._models: list[Any] | None = None

    @property
    def models(self) -> list[Any]:
        if self._models is None:  # loaded on first use: torch and the weights are not needed to plan a run
            from spanpref.rewards.reward_model import REWARD_META_FILE, SpanRewardModel

            models = []
            for path in self.settings.reward_models:
                local = Path(path).exists() or path.startswith((".", "/")) or path.count("/") != 1
                if local and not (Path(path) / REWARD_META_FILE).is_file():
                    raise MissingInputError(
                        f"{path} is not a reward model folder (no {REWARD_META_FILE}); train "
                        "them with `spanpref rewards train`"
                    )
                models.append(SpanRewardModel(path))
            for m in models:
                bad = [r for r in m.group.reasons if not self.taxonomy.has_reason(r, schema.DISLIKE)]
                if bad:
                    raise UsageError(
                        f"reward model {m.name}: reasons {bad} are not dislike reasons of {self.taxonomy.key}"
                    )
            self._models = models
        return self._models

    def model_id(self, backend: Backend | None) -> str:
        return ", ".join(self.settings.reward_models)

    def annotate(self, items: list[AnnotationItem], backend: Backend | None, seed: int = 0) -> list[ItemResult]:
        from spanpref.rewards.segment import RESPONSE, split_segments

        spans: list[list[schema.Span]] = [[] for _ in items]
        whole: list[list[schema.ResponseReason]] = [[] for _ in items]
        step = max(1, self.settings.batch_size)
        for model in self.models:
            for start in range(0, len(items), step):
                batch = items[start : start + step]
                probs = model.error_probs(
                    [it.query for it in batch], [it.text for it in batch], documents=[it.document for it in batch]
                )
                for k, (it, ps) in enumerate(zip(batch, probs, strict=True)):
                    segments = split_segments(it.text, model.level)
                    for seg, p in zip(segments, ps, strict=True):
                        if p < self.settings.threshold:
                            continue
                        note = f"{model.name} reward model: P(error) = {p:.3f}"
                        if model.level == RESPONSE:
                            whole[start + k].extend(
                                schema.ResponseReason(reason=r, note=note) for r in model.group.reasons
                            )
                        else:
                            out = spans[start + k]
                            out.append(
                                schema.Span(
                                    span_id=len(out) + 1,
                                    start=seg.start,
                                    end=seg.end,
                                    polarity=schema.DISLIKE,
                                    reasons=list(model.group.reasons),
                                    note=note,
                                )
                            )
        return [ItemResult(it.response_id, self.row(it, s, w)) for it, s, w in zip(items, spans, whole, strict=True)]


ANNOTATORS: dict[str, type[AIAnnotator]] = {"llm": LLMAnnotator, "reward-models": RewardModelAnnotator}


def annotator_needs_backend(name_or_dir: str | Path) -> bool:
    """Whether an annotator folder's kind generates text (so a command builds a backend only when it does)."""
    settings, _ = load_annotator_settings(name_or_dir)
    return ANNOTATORS[settings.kind].needs_backend


def build_annotator(
    name_or_dir: str | Path, *, name: str | None = None, taxonomy: Taxonomy | None = None, **overrides: Any
) -> AIAnnotator:
    """An annotator from its folder (bundled name or path); `overrides` replace keys of its config.yaml."""
    from spanpref.taxonomy import load_taxonomy

    settings, folder = load_annotator_settings(name_or_dir, **overrides)
    name = name or folder.name
    if not name or any(c in name for c in "/\\:") or name.startswith("."):
        raise UsageError(f"annotator name {name!r}: use letters, digits, '-', '_' or '.' (it names files)")
    return ANNOTATORS[settings.kind](name, settings, folder, taxonomy or load_taxonomy())


__all__ = [
    "ANNOTATORS",
    "AIAnnotator",
    "AnnotationItem",
    "AnnotatorSettings",
    "ItemResult",
    "LLMAnnotator",
    "ParsedReply",
    "RewardModelAnnotator",
    "annotation_schema",
    "annotator_needs_backend",
    "build_annotator",
    "load_annotator_settings",
    "parse_annotation_reply",
    "parse_choice_reply",
    "render_taxonomy",
]
