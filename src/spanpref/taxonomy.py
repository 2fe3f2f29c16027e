"""Like/dislike reason taxonomies, loaded from versioned YAML files.

The default taxonomy (`taxonomies/default.yaml`) follows the structure of appendix B of CH-Wang et al.
(2025). Other domains need their own reasons: `load_taxonomy(path)` reads any file of the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

import yaml

from spanpref.errors import UsageError
from spanpref.schema import DISLIKE, LIKE, POLARITIES

DEFAULT_TAXONOMY = "default"


class TaxonomyError(UsageError):
    pass


@dataclass(frozen=True)
class Reason:
    id: str
    label: str
    polarity: str
    group: str


@dataclass(frozen=True)
class Group:
    id: str
    label: str
    polarity: str
    reasons: tuple[Reason, ...]


@dataclass(frozen=True)
class Taxonomy:
    name: str
    version: int
    groups: tuple[Group, ...]
    others: dict[str, Reason] = field(default_factory=dict)  # polarity -> the free-text "other" reason

    @property
    def key(self) -> str:
        """`name@version`: stored on every annotation so reasons can be traced to their definitions."""
        return f"{self.name}@{self.version}"

    def reasons(self, polarity: str | None = None, *, include_other: bool = True) -> list[Reason]:
        out = [r for g in self.groups for r in g.reasons if polarity in (None, g.polarity)]
        if include_other:
            out += [r for p, r in self.others.items() if polarity in (None, p)]
        return out

    def groups_of(self, polarity: str) -> list[Group]:
        return [g for g in self.groups if g.polarity == polarity]

    def reason(self, reason_id: str) -> Reason:
        for r in self.reasons():
            if r.id == reason_id:
                return r
        raise TaxonomyError(f"unknown reason {reason_id!r} in taxonomy {self.key}")

    def has_reason(self, reason_id: str | None, polarity: str | None = None) -> bool:
        return any(r.id == reason_id for r in self.reasons(polarity))

    def other_id(self, polarity: str) -> str | None:
        other = self.others.get(polarity)
        return other.id if other else None

    def label(self, reason_id: str) -> str:
        return self.reason(reason_id).label


def _parse(data: dict, source: str) -> Taxonomy:
    def need(mapping: dict, key: str, where: str):
        if not isinstance(mapping, dict) or key not in mapping:
            raise TaxonomyError(f"{source}: {where} needs a {key!r} entry")
        return mapping[key]

    name = need(data, "name", "the file")
    version = need(data, "version", "the file")
    if not isinstance(version, int):
        raise TaxonomyError(f"{source}: version must be an integer, got {version!r}")
    groups: list[Group] = []
    seen: set[str] = set()

    def reason(entry: dict, polarity: str, group: str, where: str) -> Reason:
        rid, label = need(entry, "id", where), need(entry, "label", where)
        if rid in seen:
            raise TaxonomyError(f"{source}: reason id {rid!r} is used twice")
        seen.add(rid)
        return Reason(id=str(rid), label=str(label), polarity=polarity, group=group)

    for polarity in POLARITIES:
        for gi, g in enumerate(need(data, polarity, "the file") or []):
            gid = need(g, "group", f"{polarity} group {gi}")
            rs = tuple(
                reason(r, polarity, gid, f"{polarity} group {gid!r} reason {ri}")
                for ri, r in enumerate(need(g, "reasons", f"{polarity} group {gid!r}"))
            )
            if not rs:
                raise TaxonomyError(f"{source}: {polarity} group {gid!r} has no reasons")
            groups.append(Group(id=str(gid), label=str(g.get("label", gid)), polarity=polarity, reasons=rs))
    others = {p: reason(o, p, "other", f"other.{p}") for p, o in (data.get("other") or {}).items()}
    unknown = set(others) - set(POLARITIES)
    if unknown:
        raise TaxonomyError(f"{source}: 'other' has unknown polarities {sorted(unknown)}")
    return Taxonomy(name=str(name), version=version, groups=tuple(groups), others=others)


def load_taxonomy(name_or_path: str | Path = DEFAULT_TAXONOMY) -> Taxonomy:
    """A bundled taxonomy by name (`default`), or a custom one from a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise TaxonomyError(f"taxonomy file {path} does not exist")
        return _load_file(str(path.resolve()))
    return _load_bundled(str(name_or_path))


def _load_file(path: str) -> Taxonomy:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise TaxonomyError(f"{path}: not valid YAML: {e}") from e
    return _parse(data, path)


@cache
def _load_bundled(name: str) -> Taxonomy:
    files = resources.files("spanpref") / "taxonomies"
    bundled = sorted(p.name.removesuffix(".yaml") for p in files.iterdir() if p.name.endswith(".yaml"))
    target = files / f"{name}.yaml"
    if not target.is_file() or name.endswith("_map"):
        raise TaxonomyError(
            f"unknown taxonomy {name!r}: give a YAML file or one of {[b for b in bundled if not b.endswith('_map')]}"
        )
    return _parse(yaml.safe_load(target.read_text(encoding="utf-8")), f"spanpref/taxonomies/{name}.yaml")


@dataclass(frozen=True)
class QAFeedbackMapping:
    """qa-feedback error types -> reason ids (span errors and missing-information types)."""

    taxonomy: str
    span_errors: dict[str, list[str]]
    missing_info: dict[str, list[str]]


def load_qa_feedback_mapping(path: str | Path | None = None, taxonomy: Taxonomy | None = None) -> QAFeedbackMapping:
    """The mapping file (bundled by default), checked against the taxonomy it names."""
    if path is None:
        text = (resources.files("spanpref") / "taxonomies" / "qa_feedback_map.yaml").read_text(encoding="utf-8")
        source = "spanpref/taxonomies/qa_feedback_map.yaml"
    else:
        text, source = Path(path).read_text(encoding="utf-8"), str(path)
    data = yaml.safe_load(text)
    mapping = QAFeedbackMapping(
        taxonomy=data.get("taxonomy", ""), span_errors=data["span_errors"], missing_info=data["missing_info"]
    )
    taxonomy = taxonomy or load_taxonomy()
    for kind in (mapping.span_errors, mapping.missing_info):
        for error_type, ids in kind.items():
            for rid in ids:
                if not taxonomy.has_reason(rid, DISLIKE):
                    raise TaxonomyError(
                        f"{source}: {error_type} maps to {rid!r}, not a dislike reason of {taxonomy.key}"
                    )
    return mapping


__all__ = [
    "LIKE",
    "DISLIKE",
    "Reason",
    "Group",
    "Taxonomy",
    "TaxonomyError",
    "load_taxonomy",
    "load_qa_feedback_mapping",
    "QAFeedbackMapping",
]
