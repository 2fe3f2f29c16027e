"""Reward-model groups: which taxonomy reasons one fine-grained reward model learns, at which segment level.

A group file (`recipes/rewards/groups/default.yaml` for the default taxonomy) maps reason ids to groups, so the
reward models follow the taxonomy rather than qa-feedback's error types, and another taxonomy only needs another
file. `label_segments` turns one annotation into per-segment error labels for a group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from spanpref.configfile import read_yaml
from spanpref.errors import UsageError
from spanpref.rewards.segment import LEVELS, RESPONSE, Segment, split_segments
from spanpref.schema import DISLIKE
from spanpref.taxonomy import Taxonomy, load_taxonomy

DEFAULT_GROUPS = "default"


class GroupConfigError(UsageError):
    pass


@dataclass(frozen=True)
class RewardGroup:
    name: str
    level: str  # sub_sentence | sentence | response
    reasons: tuple[str, ...]
    weight: float = 1.0
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "level": self.level,
            "reasons": list(self.reasons),
            "weight": self.weight,
            "description": self.description,
        }


@dataclass(frozen=True)
class GroupConfig:
    taxonomy: str  # "<name>@<version>" the reason ids belong to
    groups: tuple[RewardGroup, ...]
    source: str = ""

    def get(self, name: str) -> RewardGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise GroupConfigError(f"{self.source}: no reward group {name!r}; groups: {self.names}")

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    def select(self, names: Sequence[str] | None) -> list[RewardGroup]:
        return list(self.groups) if not names else [self.get(n) for n in names]


def _groups_path(name_or_path: str | Path) -> tuple[str, str]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise GroupConfigError(f"reward group file {path} does not exist")
        return path.read_text(encoding="utf-8"), str(path)
    folder = resources.files("spanpref") / "recipes" / "rewards" / "groups"
    target = folder / f"{name_or_path}.yaml"
    if not target.is_file():
        names = sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))
        raise GroupConfigError(
            f"unknown reward group config {str(name_or_path)!r}; give a YAML file or one of {names}"
        )
    return target.read_text(encoding="utf-8"), f"recipes/rewards/groups/{name_or_path}.yaml"


def parse_groups(data: Any, source: str, taxonomy: Taxonomy | None = None) -> GroupConfig:
    """A group config from parsed YAML, checked against `taxonomy` (default: the one the file names, if bundled)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("groups"), Mapping) or not data["groups"]:
        raise GroupConfigError(f"{source}: needs a non-empty `groups:` mapping of group name -> settings")
    tax_key = str(data.get("taxonomy", ""))
    if taxonomy is None:
        taxonomy = load_taxonomy()
    if tax_key and tax_key != taxonomy.key:
        raise GroupConfigError(f"{source}: written for taxonomy {tax_key}, but checked against {taxonomy.key}")
    groups = []
    for name, g in data["groups"].items():
        where = f"{source}: group {name!r}"
        if not isinstance(g, Mapping):
            raise GroupConfigError(f"{where}: expected a mapping with level, reasons and weight")
        unknown = set(g) - {"level", "reasons", "weight", "description"}
        if unknown:
            raise GroupConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
        level = g.get("level")
        if level not in LEVELS:
            raise GroupConfigError(f"{where}: level {level!r} is not one of {list(LEVELS)}")
        reasons = g.get("reasons") or []
        if not isinstance(reasons, list) or not reasons:
            raise GroupConfigError(f"{where}: needs a non-empty list of reason ids")
        for rid in reasons:
            if not taxonomy.has_reason(rid, DISLIKE):
                raise GroupConfigError(f"{where}: {rid!r} is not a dislike reason of taxonomy {taxonomy.key}")
        weight = g.get("weight", 1.0)
        if not isinstance(weight, int | float) or isinstance(weight, bool):
            raise GroupConfigError(f"{where}: weight must be a number, got {weight!r}")
        groups.append(
            RewardGroup(
                name=str(name),
                level=level,
                reasons=tuple(reasons),
                weight=float(weight),
                description=str(g.get("description", "")),
            )
        )
    return GroupConfig(taxonomy=taxonomy.key, groups=tuple(groups), source=source)


def load_groups(name_or_path: str | Path = DEFAULT_GROUPS, taxonomy: str | Path | Taxonomy = "default") -> GroupConfig:
    """A bundled group config by name (`default`) or any group YAML file, checked against `taxonomy`."""
    text, source = _groups_path(name_or_path)
    data = read_yaml(source, text)
    tax = taxonomy if isinstance(taxonomy, Taxonomy) else load_taxonomy(taxonomy)
    return parse_groups(data, source, tax)


def _get(obj: Any, key: str) -> Any:
    return obj[key] if isinstance(obj, Mapping) else getattr(obj, key)


def label_segments(text: str, annotation: Any, group: RewardGroup, segments: list[Segment] | None = None) -> list[int]:
    """1 (error) or 0 (no error) for every segment of `text` at the group's level.

    A segment is an error when a dislike span with one of the group's reasons shares at least one non-space
    character with it; at level `response` a response-level reason of the group also makes it one.
    """
    segments = split_segments(text, group.level) if segments is None else segments
    wanted = set(group.reasons)
    bad = [
        (_get(s, "start"), _get(s, "end"))
        for s in _get(annotation, "spans")
        if _get(s, "polarity") == DISLIKE and wanted & set(_get(s, "reasons") or [])
    ]
    whole = group.level == RESPONSE and any(
        _get(r, "reason") in wanted for r in _get(annotation, "response_reasons") or []
    )
    labels = []
    for seg in segments:
        hit = whole or any(
            not text[max(s, seg.start) : min(e, seg.end)].isspace() and max(s, seg.start) < min(e, seg.end)
            for s, e in bad
        )
        labels.append(int(hit))
    return labels
