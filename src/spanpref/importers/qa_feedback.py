"""Import the Fine-Grained RLHF qa-feedback format (Wu et al., 2023) into a spanpref dataset repo.

Each example becomes: one document (its Wikipedia passages), one query, four responses, one annotation
on prediction 1 (every error span -> a dislike span; missing information -> response-level reasons; the
human-corrected answer kept as a reference rewrite), six comparisons (0 -> tie) and one gold reference.
Nothing is dropped silently: a record that cannot be converted stops the import with its file, index and
reason, or with `skip_invalid` goes to a rejects file that is reported.
"""

from __future__ import annotations

import gzip
import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from spanpref import schema
from spanpref.errors import InputError
from spanpref.repo import DatasetRepo, RepoError
from spanpref.taxonomy import QAFeedbackMapping, Taxonomy, load_qa_feedback_mapping, load_taxonomy

logger = logging.getLogger(__name__)

BUNDLED = "bundled"
SOURCE = "qa-feedback (Fine-Grained RLHF, Wu et al. 2023; Apache-2.0): ASQA questions, Wikipedia passages"
ANNOTATOR = "qa-feedback"
MODEL = "qa-feedback-policy"  # the released data does not name the sampling model per prediction
DOMAIN = "wikipedia"
N_PREDICTIONS = 4
# the six preferences are listed in this order; 1 = first preferred, 2 = second preferred, 0 = none
PREFERENCE_PAIRS = [(1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4)]
PREFERENCE_CHOICE = {1: schema.CHOICE_A, 2: schema.CHOICE_B, 0: schema.CHOICE_TIE}
CONFIGS = (
    schema.DOCUMENTS,
    schema.QUERIES,
    schema.RESPONSES,
    schema.ANNOTATIONS,
    schema.COMPARISONS,
    schema.REFERENCES,
)


class InvalidRecordError(InputError):
    """A qa-feedback record that cannot be converted; the message names the file, the index and why."""


@dataclass
class ImportReport:
    source: str
    output: str
    records_in: int = 0
    records_out: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)  # {"index", "reason"}
    rejects_path: str | None = None
    rows: dict[str, int] = field(default_factory=dict)  # config -> rows written
    dislike_spans: int = 0
    ties: int = 0

    def summary(self) -> str:
        lines = [
            f"read {self.records_in} record(s) from {self.source}",
            f"converted {self.records_out}, rejected {len(self.rejected)}",
        ]
        if self.rejected:
            lines.append(f"rejects written to {self.rejects_path}")
        lines += [f"  {name}: {n} row(s)" for name, n in self.rows.items()]
        lines.append(f"  dislike spans: {self.dislike_spans}; comparison ties: {self.ties}")
        lines.append(f"wrote {self.output}")
        return "\n".join(lines)


def _read_json(path: Path) -> Any:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        if path.name.removesuffix(".gz").endswith(".jsonl"):
            return [json.loads(line) for line in f if line.strip()]
        return json.load(f)


def find_qa_feedback_file(path: str | Path) -> Path:
    """`bundled`, a .json/.json.gz/.jsonl file, or a folder holding exactly one such file."""
    if str(path) == BUNDLED:
        return Path(str(resources.files("spanpref") / "data" / "qa_feedback_dev300.json.gz"))
    p = Path(path)
    if p.is_dir():
        found = sorted(f for pattern in ("*.json", "*.json.gz", "*.jsonl") for f in p.glob(pattern))
        if len(found) != 1:
            raise InvalidRecordError(f"{p}: expected one .json/.json.gz/.jsonl file, found {[f.name for f in found]}")
        return found[0]
    if not p.is_file():
        raise InvalidRecordError(f"{p}: no such file or folder")
    return p


def load_qa_feedback_records(path: str | Path) -> tuple[Path, list[dict[str, Any]]]:
    file = find_qa_feedback_file(path)
    try:
        data = _read_json(file)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise InvalidRecordError(f"{file}: cannot be read as JSON: {e}") from e
    if not isinstance(data, list):
        raise InvalidRecordError(f"{file}: expected a JSON list of examples, got {type(data).__name__}")
    return file, data


def _need(rec: Any, key: str, kind: type | tuple[type, ...], where: str = "") -> Any:
    if not isinstance(rec, dict) or key not in rec:
        raise InvalidRecordError(f"missing {where}{key!r}")
    value = rec[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # JSON true/false arrive as Python bools, which isinstance() counts as ints: an offset of `false` is no offset
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in kinds):
        names = "/".join(k.__name__ for k in kinds)
        raise InvalidRecordError(f"{where}{key!r} should be {names}, got {type(value).__name__}")
    return value


def _document_text(passages: list[list[str]]) -> str:
    # one block per passage: its sentences as they appear (the first usually repeats the title)
    return "\n\n".join(" ".join(s.strip() for s in p[1:]) for p in passages)


def _missing_note(item: dict, passages: list[list[str]]) -> str:
    pid, sids = item.get("passage_id"), item.get("sentence_id") or []
    # passage_id counts from 1; sentence ids index the passage list, whose entry 0 is the title
    sentences = []
    if isinstance(pid, int) and 1 <= pid <= len(passages):
        sentences = [passages[pid - 1][s] for s in sids if isinstance(s, int) and 0 <= s < len(passages[pid - 1])]
    note = f"{item['error type']}: passage {pid}, sentence(s) {sids}"
    return note + (f": {' '.join(sentences)}" if sentences else "")


def convert_record(
    rec: Any, index: int, mapping: QAFeedbackMapping, taxonomy: Taxonomy, prefix: str = "qaf"
) -> dict[str, list[dict[str, Any]]]:
    """One qa-feedback example as rows of each config. Raises `InvalidRecordError(reason)`."""
    if not isinstance(rec, dict):
        raise InvalidRecordError(f"expected an object, got {type(rec).__name__}")
    question = _need(rec, "question", str)
    passages = _need(rec, "passages", list)
    for pi, p in enumerate(passages):
        if not isinstance(p, list) or not p or not all(isinstance(s, str) for s in p):
            raise InvalidRecordError(f"passages[{pi}] should be a non-empty list of strings [title, sentence, ...]")
    predictions = [_need(rec, f"prediction {k}", str) for k in range(1, N_PREDICTIONS + 1)]
    gold = _need(rec, "gold", str)
    feedback = _need(rec, "feedback", dict)
    errors = _need(feedback, "errors", list, "feedback.")
    missing = _need(feedback, "missing-info", list, "feedback.")
    corrected = feedback.get("corrected-prediction")
    preference = _need(rec, "preference", list)
    if len(preference) != len(PREFERENCE_PAIRS) or any(
        type(p) is not int or p not in PREFERENCE_CHOICE for p in preference
    ):
        raise InvalidRecordError(f"preference should be 6 values in {{0, 1, 2}}, got {preference!r}")

    key = f"{prefix}-{index:05d}"
    doc_id, query_id = f"{key}-doc", f"{key}-q"
    response_ids = [f"{key}-r{k}" for k in range(1, N_PREDICTIONS + 1)]
    text = predictions[0]

    spans = []
    for ei, e in enumerate(errors):
        where = f"feedback.errors[{ei}]."
        start, end = _need(e, "start", int, where), _need(e, "end", int, where)
        etype = _need(e, "error type", str, where)
        if not 0 <= start < end <= len(text):
            raise InvalidRecordError(
                f"{where[:-1]}: span [{start}, {end}) is not inside prediction 1 ({len(text)} characters)"
            )
        if etype not in mapping.span_errors:
            raise InvalidRecordError(
                f"{where[:-1]}: unknown error type {etype!r}; known: {sorted(mapping.span_errors)}"
            )
        explanation = (e.get("explanation") or "").strip()
        spans.append(
            {
                "start": start,
                "end": end,
                "polarity": schema.DISLIKE,
                "reasons": list(mapping.span_errors[etype]),
                "note": f"qa-feedback: {etype}" + (f"; {explanation}" if explanation else ""),
            }
        )
    # ids follow position, left to right: the order in which chains address the spans
    spans.sort(key=lambda s: (s["start"], s["end"]))
    for sid, s in enumerate(spans, start=1):
        s["span_id"] = sid

    response_reasons = []
    for mi, m in enumerate(missing):
        etype = _need(m, "error type", str, f"feedback.missing-info[{mi}].")
        if etype not in mapping.missing_info:
            raise InvalidRecordError(
                f"feedback.missing-info[{mi}]: unknown type {etype!r}; known: {sorted(mapping.missing_info)}"
            )
        note = _missing_note(m, passages)
        response_reasons += [{"reason": r, "note": note} for r in mapping.missing_info[etype]]

    title = "; ".join(dict.fromkeys(p[0] for p in passages)) if passages else ""
    rows: dict[str, list[dict[str, Any]]] = {
        schema.DOCUMENTS: [
            {"doc_id": doc_id, "domain": DOMAIN, "title": title, "text": _document_text(passages), "source": SOURCE}
        ],
        schema.QUERIES: [{"query_id": query_id, "doc_id": doc_id, "query": question, "source": ANNOTATOR}],
        schema.RESPONSES: [
            {
                "response_id": rid,
                "query_id": query_id,
                "model": MODEL,
                "text": t,
                "prompt_version": f"qa-feedback:prediction {k}",
            }
            for k, (rid, t) in enumerate(zip(response_ids, predictions, strict=True), start=1)
        ],
        schema.ANNOTATIONS: [
            {
                "annotation_id": f"{key}-ann",
                "annotator": ANNOTATOR,
                "response_id": response_ids[0],
                "spans": spans,
                "response_reasons": response_reasons,
                "seconds": None,
                "taxonomy": taxonomy.key,
                "reference_rewrite": corrected or None,
            }
        ],
        schema.COMPARISONS: [
            {
                "comparison_id": f"{key}-c{i}v{j}",
                "annotator": ANNOTATOR,
                "response_a": response_ids[i - 1],
                "response_b": response_ids[j - 1],
                "choice": PREFERENCE_CHOICE[p],
                "rationale": "",
            }
            for (i, j), p in zip(PREFERENCE_PAIRS, preference, strict=True)
        ],
        schema.REFERENCES: [
            {
                "reference_id": f"{key}-gold",
                "query_id": query_id,
                "text": gold,
                "kind": "gold",
                "source": "qa-feedback gold answer (ASQA)",
            }
        ],
    }
    problems = schema.check_configs(rows, taxonomy)
    if problems:
        raise InvalidRecordError("; ".join(str(p) for p in problems))
    return rows


def import_qa_feedback(
    path: str | Path,
    output: str | Path,
    *,
    skip_invalid: bool = False,
    overwrite: bool = False,
    limit: int | None = None,
    mapping_path: str | Path | None = None,
    taxonomy: str | Path = "default",
) -> ImportReport:
    """Convert a qa-feedback file into the six configs of a dataset repo, all or nothing."""
    file, records = load_qa_feedback_records(path)
    if limit is not None:
        records = records[:limit]
    tax = load_taxonomy(taxonomy)
    mapping = load_qa_feedback_mapping(mapping_path, tax)
    repo = DatasetRepo(output)
    present = [c for c in CONFIGS if repo.has(c)]
    if present and not overwrite:
        raise RepoError(f"{output} already has {present}; pass --overwrite to replace them")

    report = ImportReport(source=str(file), output=str(output), records_in=len(records))
    out: dict[str, list[dict[str, Any]]] = {c: [] for c in CONFIGS}
    for index, rec in enumerate(records):
        try:
            rows = convert_record(rec, index, mapping, tax)
        except InvalidRecordError as e:
            if not skip_invalid:
                raise InvalidRecordError(
                    f"{file}: record {index}: {e} (pass --skip-invalid to set such records "
                    "aside in a rejects file and import the rest)"
                ) from e
            report.rejected.append({"index": index, "reason": str(e), "record": rec})
            continue
        for config, config_rows in rows.items():
            out[config].extend(config_rows)
        report.records_out += 1

    extra = {}
    if report.rejected:
        report.rejects_path = str(Path(output) / "rejects" / "qa_feedback.jsonl")
        # ASCII escapes: a record rejected for a lone surrogate must still be writable as UTF-8
        extra["rejects/qa_feedback.jsonl"] = "".join(json.dumps(r) + "\n" for r in report.rejected)
        for r in report.rejected:
            logger.warning("rejected record %d: %s", r["index"], r["reason"])
    meta = {
        "pretty_name": "qa-feedback span feedback",
        "license": "apache-2.0",
        "language": ["en"],
        "description": "Human fine-grained feedback on long-form QA answers from the Fine-Grained RLHF project "
        "(Wu et al., 2023), converted to spanpref's data contract: error spans on prediction 1 became dislike "
        "spans, missing information became response-level reasons, and the six pairwise preferences among "
        "four predictions became comparisons.",
    }
    repo.write(out, taxonomy=tax, extra_files=extra, meta=meta)
    report.rows = {c: len(rows) for c, rows in out.items()}
    report.dislike_spans = sum(len(a["spans"]) for a in out[schema.ANNOTATIONS])
    report.ties = sum(c["choice"] == schema.CHOICE_TIE for c in out[schema.COMPARISONS])
    return report
