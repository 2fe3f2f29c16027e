"""The data contract between stages: config names, column names, `datasets.Features` and dataclasses.

Every config of a dataset repo is described once, as a dataclass. Its `datasets.Features` are derived
from the type hints, so the two cannot drift. `validate_configs` checks a whole repo's rows and names
the config, the row and the problem.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import datasets

from spanpref.errors import InputError

# ---------------------------------------------------------------------------------------------------
# Config names (one constant each; stages refer to these, never to string literals)
# ---------------------------------------------------------------------------------------------------
DOCUMENTS = "documents"
QUERIES = "queries"
RESPONSES = "responses"
ANNOTATIONS = "annotations"
COMPARISONS = "comparisons"
REFERENCES = "references"
CHAINS = "chains"
PAIRS_AB = "pairs_ab"
PAIRS_FIRST_EDIT = "pairs_first_edit"
PAIRS_FULL_REWRITE = "pairs_full_rewrite"
PAIRS_STEPWISE = "pairs_stepwise"
PAIRS_STEPWISE_DS = "pairs_stepwise_ds"
PAIRS_HUMAN_REWRITE = "pairs_human_rewrite"
SFT_FULL_REWRITE = "sft_full_rewrite"
EVAL_OUTPUTS = "eval_outputs"
JUDGMENTS = "judgments"
RATINGS = "ratings"
JUDGE_STATS = "judge_stats"

PAIR_CONFIGS = (PAIRS_AB, PAIRS_FIRST_EDIT, PAIRS_FULL_REWRITE, PAIRS_STEPWISE, PAIRS_STEPWISE_DS, PAIRS_HUMAN_REWRITE)

LIKE = "like"
DISLIKE = "dislike"
POLARITIES = (LIKE, DISLIKE)

CHOICE_A, CHOICE_B, CHOICE_TIE = "a", "b", "tie"
CHOICES = (CHOICE_A, CHOICE_B, CHOICE_TIE)

SPLITS = ("train", "validation", "test")


# ---------------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------------
@dataclass
class Document:
    doc_id: str
    domain: str
    title: str
    text: str
    source: str = ""


@dataclass
class Query:
    query_id: str
    doc_id: str
    query: str
    source: str = ""  # who wrote it: a dataset name, an annotator, or a model id


@dataclass
class Response:
    response_id: str
    query_id: str
    model: str
    text: str
    # Generation parameters; None where they are unknown (imported responses).
    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    seed: int | None = None
    prompt_version: str = ""


@dataclass
class Span:
    span_id: int
    start: int  # Python str offset into the response text, inclusive
    end: int  # exclusive
    polarity: str  # "like" | "dislike"
    reasons: list[str] = field(default_factory=list)
    note: str = ""
    fix: str = ""  # the annotator's suggested replacement for a dislike span's text ("": none given)
    source: str = ""  # the AI annotator ("ai:<name>") whose suggested span the annotator accepted ("": drawn by them)


@dataclass
class ResponseReason:
    """A reason about the response as a whole (e.g. information it left out)."""

    reason: str
    note: str = ""


@dataclass
class SuggestionTally:
    """What an annotator did with the AI-suggested spans shown on a response (the rest were left untouched)."""

    shown: int = 0
    accepted: int = 0
    rejected: int = 0


@dataclass
class Annotation:
    annotation_id: str
    annotator: str  # a person's login or a model id: the config is annotator-agnostic
    response_id: str
    spans: list[Span] = field(default_factory=list)
    response_reasons: list[ResponseReason] = field(default_factory=list)
    seconds: float | None = None
    taxonomy: str = ""  # "<name>@<version>" of the taxonomy the reasons come from
    reference_rewrite: str | None = None  # a human-corrected response, where the source has one
    suggestions: SuggestionTally | None = None  # AI-suggested spans shown to the annotator; None: none were


@dataclass
class Comparison:
    comparison_id: str
    annotator: str
    response_a: str
    response_b: str
    choice: str  # "a" | "b" | "tie"
    rationale: str = ""
    seconds: float | None = None


@dataclass
class Reference:
    """A reference answer to a query (e.g. a dataset's gold answer)."""

    reference_id: str
    query_id: str
    text: str
    kind: str = "gold"
    source: str = ""


@dataclass
class ChainStep:
    text: str  # the whole response after this step
    span_id: int  # the dislike span this step addressed; -1: changes outside every span (human chains)
    edit_start: int  # changed region [edit_start, edit_end) in the previous text
    edit_end: int
    new_end: int  # end of the changed region in this step's text
    distance: int  # character-level edit distance from the previous text


@dataclass
class Chain:
    chain_id: str
    annotation_id: str
    method: str  # "sequential": one dislike span per step, left to right
    rewriter: str  # "paper" | "local" | "human"
    model: str
    steps: list[ChainStep] = field(default_factory=list)
    status: str = "ok"  # "ok" | "rejected"
    reject_reason: str = ""
    attempts: int = 1
    prompt_tokens: int = 0
    completion_tokens: int = 0
    untouched_spans: list[int] = field(default_factory=list)  # dislike span_ids a human correction left as they were


@dataclass
class Message:
    role: str
    content: str


@dataclass
class PreferencePair:
    """TRL conversational preference format plus provenance."""

    pair_id: str
    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    query_id: str
    construction: str
    chain_id: str = ""
    step: int = -1  # index i of the pair (a_i, a_i+1); -1 where it does not apply


@dataclass
class SFTExample:
    example_id: str
    messages: list[Message]
    query_id: str
    chain_id: str = ""


@dataclass
class EvalOutput:
    output_id: str
    model: str
    query_id: str
    text: str
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None


WINNER_A, WINNER_B, WINNER_TIE = "model_a", "model_b", "tie"
WINNERS = (WINNER_A, WINNER_B, WINNER_TIE)


@dataclass
class Judgment:
    judgment_id: str
    judge: str
    query_id: str
    model_a: str
    model_b: str
    winner: str | None  # "model_a" | "model_b" | "tie"; None when the judge output could not be parsed
    raw_output: str = ""
    parse_error: str = ""
    shown_first: str = ""  # the model whose output the judge saw first (order is randomised per judgment)


@dataclass
class Rating:
    model: str
    judge: str
    rating: float
    ci_low: float | None = None  # 95% bootstrap interval of the difference from the best model
    ci_high: float | None = None
    n_judgments: int = 0
    diff: float | None = None  # rating - the best model's rating
    rounds: int = 0  # bootstrap rounds behind the interval (0: none)


@dataclass
class JudgeStats:
    """How much one person judged in the arena (one row per judge id and person)."""

    judge: str  # the judge id of their rows in the judgments config
    annotator: str
    battles_shown: int = 0  # distinct battles put on their screen
    votes: int = 0
    votes_counted: int = 0  # votes that enter the ratings
    votes_too_fast: int = 0  # cast before the minimum reading time: kept, not rated
    first_vote: float | None = None  # Unix time
    last_vote: float | None = None


# config name -> (record class, id column)
CONFIGS: dict[str, tuple[type, str | None]] = {
    DOCUMENTS: (Document, "doc_id"),
    QUERIES: (Query, "query_id"),
    RESPONSES: (Response, "response_id"),
    ANNOTATIONS: (Annotation, "annotation_id"),
    COMPARISONS: (Comparison, "comparison_id"),
    REFERENCES: (Reference, "reference_id"),
    CHAINS: (Chain, "chain_id"),
    **{name: (PreferencePair, "pair_id") for name in PAIR_CONFIGS},
    SFT_FULL_REWRITE: (SFTExample, "example_id"),
    EVAL_OUTPUTS: (EvalOutput, "output_id"),
    JUDGMENTS: (Judgment, "judgment_id"),
    RATINGS: (Rating, None),
    JUDGE_STATS: (JudgeStats, None),
}


# ---------------------------------------------------------------------------------------------------
# Features from dataclasses
# ---------------------------------------------------------------------------------------------------
_SCALARS = {str: "string", int: "int64", float: "float64", bool: "bool"}


def _feature_for(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        # `X | None`: arrow columns are nullable already
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported union type {tp!r}")
        return _feature_for(args[0])
    if origin is list:
        (item,) = typing.get_args(tp)
        return datasets.List(_feature_for(item))
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return {f.name: _feature_for(hints[f.name]) for f in dataclasses.fields(tp)}
    if tp in _SCALARS:
        return datasets.Value(_SCALARS[tp])
    raise TypeError(f"no datasets feature for type {tp!r}")


def features_for(record_cls: type) -> datasets.Features:
    """`datasets.Features` of a record dataclass (nested dataclasses become structs, lists become List)."""
    return datasets.Features(_feature_for(record_cls))


def features_of(config: str) -> datasets.Features:
    return features_for(record_class(config))


def record_class(config: str) -> type:
    try:
        return CONFIGS[config][0]
    except KeyError:
        raise ValueError(f"unknown config {config!r}; choose from {sorted(CONFIGS)}") from None


def columns_of(config: str) -> list[str]:
    return [f.name for f in dataclasses.fields(record_class(config))]


def to_row(record: Any) -> dict[str, Any]:
    """A record dataclass as a plain dict row (nested dataclasses become dicts)."""
    return dataclasses.asdict(record)


def from_row(record_cls: type, row: Mapping[str, Any]) -> Any:
    """Build a record dataclass from a row dict, recursing into nested dataclasses and lists of them."""
    hints = typing.get_type_hints(record_cls)
    kwargs = {}
    for f in dataclasses.fields(record_cls):
        if f.name in row:
            kwargs[f.name] = _convert(hints[f.name], row[f.name])
    return record_cls(**kwargs)


def _convert(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(args[0], value)
    if origin is list:
        (item,) = typing.get_args(tp)
        return [_convert(item, v) for v in value]
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else from_row(tp, value)
    return value


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def check_values(record_cls: type, row: Mapping[str, Any], where: str = "") -> list[str]:
    """Values of a row that do not fit the record's types, each named by its column path: a bool where an int
    or float belongs (Python counts True as 1; the data contract does not), a lone surrogate in a text (not
    Unicode, so no UTF-8 file can hold it), a wrong scalar, list or struct type."""
    out: list[str] = []
    hints = typing.get_type_hints(record_cls)
    for f in dataclasses.fields(record_cls):
        if f.name in row:
            _check_value(hints[f.name], row[f.name], f"{where}{f.name}", out)
    return out


def _check_value(tp: Any, value: Any, where: str, out: list[str]) -> None:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
        origin = typing.get_origin(tp)
    if origin is list:
        if not isinstance(value, list | tuple):
            out.append(f"{where}: expected a list, got {type(value).__name__} {value!r:.60}")
            return
        (item,) = typing.get_args(tp)
        for i, v in enumerate(value):
            _check_value(item, v, f"{where}[{i}]", out)
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            value = to_row(value)
        if not isinstance(value, Mapping):
            out.append(f"{where}: expected an object with {columns_of_class(tp)}, got {type(value).__name__}")
            return
        out.extend(check_values(tp, value, f"{where}."))
    elif value is None:
        return  # a missing required value is reported by the column checks
    elif tp is str:
        if not isinstance(value, str):
            out.append(f"{where}: expected a string, got {type(value).__name__} {value!r:.60}")
        elif m := _LONE_SURROGATE.search(value):
            out.append(
                f"{where}: lone surrogate {m.group()!r} at character {m.start()} (not valid Unicode; "
                "a UTF-8 file cannot hold it: was the text decoded with errors='surrogateescape', or "
                "cut inside a JSON \\u escape pair?)"
            )
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            out.append(f"{where}: expected an integer, got {type(value).__name__} {value!r:.60}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            out.append(f"{where}: expected a number, got {type(value).__name__} {value!r:.60}")
    elif tp is bool and not isinstance(value, bool):
        out.append(f"{where}: expected true or false, got {type(value).__name__} {value!r:.60}")


def columns_of_class(record_cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(record_cls)]


# ---------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------
@dataclass
class Problem:
    config: str
    row: int
    record_id: str
    message: str

    def __str__(self) -> str:
        where = f"{self.config}[{self.row}]"
        if self.record_id:
            where += f" ({self.record_id})"
        return f"{where}: {self.message}"


class ValidationError(InputError):
    """Rows that break the data contract. `problems` lists every one found."""

    def __init__(self, problems: list[Problem], limit: int = 20):
        self.problems = problems
        shown = "\n".join(f"  - {p}" for p in problems[:limit])
        more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
        super().__init__(f"{len(problems)} problem(s) in the data:\n{shown}{more}")


def _rows(rows: Iterable[Any]) -> list[dict[str, Any]]:
    return [r if isinstance(r, Mapping) else to_row(r) for r in rows]


def check_configs(configs: Mapping[str, Iterable[Any]], taxonomy: Any = None) -> list[Problem]:
    """Every problem in a set of configs: missing columns, duplicate ids, dangling references,
    bad span offsets, unknown polarities, choices or reason ids.

    `configs` maps config names to rows (dicts or record dataclasses). References are checked against
    the configs given; pass the configs a row refers to (e.g. responses with annotations) to check them.
    `taxonomy` (a `spanpref.taxonomy.Taxonomy`) enables reason-id checks.
    """
    problems: list[Problem] = []
    data = {name: _rows(rows) for name, rows in configs.items()}
    ids: dict[str, set[str]] = {}

    for name, rows in data.items():
        cls, id_col = CONFIGS.get(name, (None, None))
        if cls is None:
            problems.append(Problem(name, -1, "", f"unknown config; choose from {sorted(CONFIGS)}"))
            continue
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        for i, row in enumerate(rows):
            missing = [c for c in required if c not in row]
            if missing:
                problems.append(Problem(name, i, str(row.get(id_col, "")), f"missing column(s) {missing}"))
            problems.extend(Problem(name, i, str(row.get(id_col, "")), m) for m in check_values(cls, row))
        if id_col:
            first: dict[str, int] = {}
            for i, row in enumerate(rows):
                rid = str(row.get(id_col))
                if not row.get(id_col):
                    problems.append(Problem(name, i, "", f"empty {id_col}"))
                elif rid in first:
                    problems.append(Problem(name, i, rid, f"duplicate {id_col} {rid!r} (first at row {first[rid]})"))
                else:
                    first[rid] = i
            ids[name] = set(first)

    def ref(name: str, i: int, rid: str, column: str, target: str, value: Any) -> None:
        if target in ids and value not in ids[target]:
            problems.append(Problem(name, i, rid, f"{column} {value!r} is not in {target}"))

    for i, r in enumerate(data.get(QUERIES, [])):
        ref(QUERIES, i, r.get("query_id", ""), "doc_id", DOCUMENTS, r.get("doc_id"))
    for i, r in enumerate(data.get(RESPONSES, [])):
        ref(RESPONSES, i, r.get("response_id", ""), "query_id", QUERIES, r.get("query_id"))
    for i, r in enumerate(data.get(REFERENCES, [])):
        ref(REFERENCES, i, r.get("reference_id", ""), "query_id", QUERIES, r.get("query_id"))
    for i, r in enumerate(data.get(CHAINS, [])):
        ref(CHAINS, i, r.get("chain_id", ""), "annotation_id", ANNOTATIONS, r.get("annotation_id"))

    texts = {r["response_id"]: r.get("text") for r in data.get(RESPONSES, []) if "response_id" in r}
    for i, r in enumerate(data.get(COMPARISONS, [])):
        cid = r.get("comparison_id", "")
        for column in ("response_a", "response_b"):
            ref(COMPARISONS, i, cid, column, RESPONSES, r.get(column))
        if r.get("response_a") is not None and r.get("response_a") == r.get("response_b"):
            problems.append(Problem(COMPARISONS, i, cid, "response_a and response_b are the same response"))
        if r.get("choice") not in CHOICES:
            problems.append(Problem(COMPARISONS, i, cid, f"choice {r.get('choice')!r} is not one of {list(CHOICES)}"))

    for i, r in enumerate(data.get(ANNOTATIONS, [])):
        aid = r.get("annotation_id", "")
        ref(ANNOTATIONS, i, aid, "response_id", RESPONSES, r.get("response_id"))
        text = texts.get(r.get("response_id"))
        problems.extend(Problem(ANNOTATIONS, i, aid, m) for m in check_spans(r.get("spans") or [], text, taxonomy))
        for rr in r.get("response_reasons") or []:
            rr = rr if isinstance(rr, Mapping) else to_row(rr)
            if taxonomy is not None and not taxonomy.has_reason(rr.get("reason")):
                problems.append(
                    Problem(
                        ANNOTATIONS,
                        i,
                        aid,
                        f"response-level reason {rr.get('reason')!r} is not in taxonomy {taxonomy.key}",
                    )
                )
    return problems


def check_spans(spans: Iterable[Any], text: str | None, taxonomy: Any = None) -> list[str]:
    """Problems with one annotation's spans (offsets checked when the response `text` is known)."""
    out = []
    seen: Counter = Counter()
    for s in spans:
        s = s if isinstance(s, Mapping) else to_row(s)
        sid, start, end, pol = s.get("span_id"), s.get("start"), s.get("end"), s.get("polarity")
        seen[sid] += 1
        label = f"span {sid}"
        # bool is a subclass of int in Python: `start: false` must not read as offset 0
        if type(start) is not int or type(end) is not int:
            out.append(f"{label}: start and end must be integers, got {start!r}, {end!r}")
            continue
        if start < 0 or start >= end:
            out.append(f"{label}: needs 0 <= start < end, got start={start}, end={end}")
        elif text is not None and end > len(text):
            out.append(f"{label}: end {end} is past the end of the response ({len(text)} characters)")
        if pol not in POLARITIES:
            out.append(f"{label}: polarity {pol!r} is not one of {list(POLARITIES)}")
        elif taxonomy is not None:
            for reason in s.get("reasons") or []:
                if not taxonomy.has_reason(reason, pol):
                    out.append(f"{label}: reason {reason!r} is not a {pol} reason of taxonomy {taxonomy.key}")
            if taxonomy.other_id(pol) in (s.get("reasons") or []) and not (s.get("note") or "").strip():
                out.append(f"{label}: reason {taxonomy.other_id(pol)!r} needs a note saying why")
    out.extend(f"span {sid}: span_id used {n} times" for sid, n in seen.items() if n > 1)
    return out


def validate_configs(configs: Mapping[str, Iterable[Any]], taxonomy: Any = None) -> None:
    """Raise `ValidationError` naming every problem `check_configs` finds."""
    problems = check_configs(configs, taxonomy)
    if problems:
        raise ValidationError(problems)
