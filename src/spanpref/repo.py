"""Dataset repos: a folder in Hub layout (README.md card listing `configs:`; parquet under data/<config>/).

Every stage reads configs from a repo and writes configs to one. Writes are atomic for the whole folder:
the new state is built in a sibling temp folder (unchanged files hard-linked, not copied) and swapped in,
so a failed or killed stage leaves the previous state intact and a reader never sees half a dataset.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from spanpref import schema

logger = logging.getLogger(__name__)

CARD = "README.md"
DATA = "data"
# One parquet file per split, named by a hash of its content: `datasets` keys its cache on the card's
# data_files (not on file contents), so a rewritten config must change its file name or a later
# `load_dataset` would return the old rows from the cache.
_SHARD_GLOB = "*.parquet"
_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n?", re.S)


class RepoError(ValueError):
    pass


class HubAuthError(RuntimeError):
    pass


Rows = Iterable[Mapping[str, Any] | Any]
ConfigData = Rows | Mapping[str, Rows]  # rows (one "train" split) or {split: rows}


def _as_splits(data: ConfigData) -> dict[str, list[dict[str, Any]]]:
    if isinstance(data, Mapping):
        return {split: schema._rows(rows) for split, rows in data.items()}
    return {"train": schema._rows(data)}


def _table(config: str, rows: list[dict[str, Any]]) -> pa.Table:
    """Rows as an arrow table with the config's exact schema; unknown or missing columns are errors."""
    features = schema.features_of(config)
    columns = list(features)
    for i, row in enumerate(rows):
        extra = set(row) - set(columns)
        if extra:
            raise RepoError(f"{config}[{i}]: unknown column(s) {sorted(extra)}; {config} has {columns}")
    cls = schema.record_class(config)
    filled = []
    for i, row in enumerate(rows):
        try:  # through the dataclass, so nested defaults (e.g. a span's note) are filled in too
            filled.append(schema.to_row(schema.from_row(cls, row)))
        except TypeError as e:
            raise RepoError(f"{config}[{i}]: {e}") from e
    try:
        return pa.Table.from_pylist(filled, schema=features.arrow_schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        # find the row so the error names it
        for i, row in enumerate(filled):
            try:
                pa.Table.from_pylist([row], schema=features.arrow_schema)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as row_error:
                raise RepoError(f"{config}[{i}]: {row_error}") from e
        raise RepoError(f"{config}: {e}") from e


@dataclass
class DatasetRepo:
    """A dataset-repo folder. Reading needs no cache; `load_dataset(path, config)` also works on it."""

    path: Path

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._recover()

    # -- reading -------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.path / CARD).is_file()

    def card_metadata(self) -> dict[str, Any]:
        if not self.exists():
            return {}
        m = _FRONT_MATTER.match((self.path / CARD).read_text(encoding="utf-8"))
        return yaml.safe_load(m.group(1)) or {} if m else {}

    def config_names(self) -> list[str]:
        """Configs listed in the card, in card order."""
        return [c["config_name"] for c in self.card_metadata().get("configs", [])]

    def shards(self, config: str) -> dict[str, Path]:
        """split -> its parquet file."""
        folder = self.path / DATA / config
        if not folder.is_dir():
            return {}
        return {p.name.rsplit("-", 1)[0]: p for p in sorted(folder.glob(_SHARD_GLOB))}

    def splits(self, config: str) -> list[str]:
        order = {s: i for i, s in enumerate(schema.SPLITS)}
        return sorted(self.shards(config), key=lambda s: (order.get(s, len(order)), s))

    def has(self, config: str) -> bool:
        return bool(self.splits(config))

    def read_table(self, config: str, split: str | None = None) -> pa.Table:
        if not self.has(config):
            raise RepoError(f"{self.path} has no config {config!r}; it has {self.config_names()}")
        shards = self.shards(config)
        if split is not None and split not in shards:
            raise RepoError(f"{self.path}: config {config!r} has no split {split!r}; it has {self.splits(config)}")
        files = [shards[split]] if split else [shards[s] for s in self.splits(config)]
        return pa.concat_tables([pq.read_table(f) for f in files])

    def read(self, config: str, split: str | None = None) -> list[dict[str, Any]]:
        """Rows of a config (all splits, in split order, unless one is named)."""
        return self.read_table(config, split).to_pylist()

    def read_records(self, config: str, split: str | None = None) -> list[Any]:
        cls = schema.record_class(config)
        return [schema.from_row(cls, r) for r in self.read(config, split)]

    def read_split_map(self, config: str) -> dict[str, list[dict[str, Any]]]:
        return {s: self.read(config, s) for s in self.splits(config)}

    def count(self, config: str) -> int:
        return sum(pq.ParquetFile(f).metadata.num_rows for f in self.shards(config).values())

    # -- writing -------------------------------------------------------------------------------------
    def write(
        self,
        configs: Mapping[str, ConfigData],
        *,
        validate: bool = True,
        taxonomy: Any = None,
        extra_files: Mapping[str, str | bytes] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        """Write (or replace) whole configs, atomically; other configs and files are kept.

        With `validate`, rows are checked against the data contract together with the existing configs
        they refer to, and nothing is written if any problem is found.
        """
        new = {name: _as_splits(data) for name, data in configs.items()}
        for name, splits in new.items():
            # `datasets` cannot load an empty parquet split, so an empty split is not written at all
            for split in [s for s, rows in splits.items() if not rows]:
                logger.warning("%s: split %r is empty and is not written", name, split)
                del splits[split]
            if not splits:
                raise RepoError(f"{name}: no rows to write (a config needs at least one row to be loadable)")
        for name in new:
            schema.record_class(name)  # unknown config -> ValueError naming the choices
        if validate:
            self._validate(new, taxonomy)
        tables = {name: {split: _table(name, rows) for split, rows in splits.items()} for name, splits in new.items()}

        def populate(tmp: Path) -> None:
            for name, splits in tables.items():
                folder = tmp / DATA / name
                folder.mkdir(parents=True, exist_ok=True)
                for split, table in splits.items():
                    staged = folder / f".{split}.parquet"
                    pq.write_table(table, staged)
                    digest = hashlib.sha256(staged.read_bytes()).hexdigest()[:12]
                    staged.rename(folder / f"{split}-{digest}.parquet")
            for rel, content in (extra_files or {}).items():
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.exists():
                    target.unlink()  # a hard link to the old version: replace, never write through it
                target.write_bytes(content.encode() if isinstance(content, str) else content)

        self._rewrite(skip=set(new), populate=populate, names=self.config_names() + list(new), meta=meta)
        logger.info("wrote %s to %s", ", ".join(f"{n} ({sum(t.num_rows for t in s.values())} rows)"
                                                for n, s in tables.items()), self.path)  # fmt: skip

    def remove(self, configs: Iterable[str]) -> None:
        """Drop configs (data and card entry), atomically."""
        gone = set(configs)
        self._rewrite(skip=gone, populate=lambda tmp: None, names=[n for n in self.config_names() if n not in gone])

    def refresh_card(self) -> None:
        """Re-render the card from the data (e.g. after a taxonomy or template change)."""
        self._rewrite(skip=set(), populate=lambda tmp: None, names=self.config_names())

    def _rewrite(self, skip: set[str], populate: Any, names: list[str], meta: Mapping[str, Any] | None = None) -> None:
        """Build the next state in a sibling temp folder (kept files hard-linked), then swap it in."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.parent / f".{self.path.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            if self.path.exists():
                self._link_tree(self.path, tmp, skip={Path(CARD)} | {Path(DATA, n) for n in skip})
            populate(tmp)
            from spanpref.cards import render_dataset_card

            staged = DatasetRepo.__new__(DatasetRepo)
            staged.path = tmp
            text = render_dataset_card(staged, _config_order(names, tmp), previous_meta={**self.card_metadata(), **(meta or {})},
                                       title=self.path.name)  # fmt: skip
            (tmp / CARD).write_text(text, encoding="utf-8")
            self._swap_in(tmp)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _validate(self, new: dict[str, dict[str, list[dict]]], taxonomy: Any) -> None:
        flat = {name: [r for rows in splits.values() for r in rows] for name, splits in new.items()}
        # bring in the existing configs that the new rows refer to, so references are checked
        wants = {schema.QUERIES: [schema.DOCUMENTS], schema.RESPONSES: [schema.QUERIES],
                 schema.REFERENCES: [schema.QUERIES], schema.ANNOTATIONS: [schema.RESPONSES],
                 schema.COMPARISONS: [schema.RESPONSES], schema.CHAINS: [schema.ANNOTATIONS]}  # fmt: skip
        for name in list(flat):
            for target in wants.get(name, []):
                if target not in flat and self.has(target):
                    flat[target] = self.read(target)
        if taxonomy is None and schema.ANNOTATIONS in new:
            from spanpref.taxonomy import load_taxonomy

            keys = {r.get("taxonomy") for r in flat[schema.ANNOTATIONS]}
            default = load_taxonomy()
            if keys <= {default.key, "", None}:
                taxonomy = default
        schema.validate_configs(flat, taxonomy)

    @staticmethod
    def _link_tree(src: Path, dst: Path, skip: set[Path]) -> None:
        for root, dirs, files in os.walk(src):
            rel = Path(root).relative_to(src)
            dirs[:] = [d for d in dirs if rel / d not in skip]
            (dst / rel).mkdir(parents=True, exist_ok=True)
            for f in files:
                if rel / f in skip:
                    continue
                try:
                    os.link(Path(root) / f, dst / rel / f)
                except OSError:  # another filesystem or no hard links: copy
                    shutil.copy2(Path(root) / f, dst / rel / f)

    def _backup(self) -> Path:
        return self.path.parent / f".{self.path.name}.old"

    def _swap_in(self, tmp: Path) -> None:
        backup = self._backup()
        if backup.exists():
            shutil.rmtree(backup)
        if self.path.exists():
            os.rename(self.path, backup)
        os.rename(tmp, self.path)
        shutil.rmtree(backup, ignore_errors=True)

    def _recover(self) -> None:
        """A crash between the two renames of a swap leaves only the backup: put it back."""
        backup = self._backup()
        if backup.exists() and not self.path.exists():
            logger.warning("restoring %s from an interrupted write", self.path)
            os.rename(backup, self.path)


def _config_order(names: list[str], folder: Path) -> list[str]:
    """Configs in pipeline order (the order of schema.CONFIGS), then any others."""
    known = list(schema.CONFIGS)
    present = [n for n in dict.fromkeys(names) if (folder / DATA / n).is_dir()]
    return sorted(present, key=lambda n: (known.index(n) if n in known else len(known), n))


def open_repo(path: str | os.PathLike, *, must_exist: bool = True) -> DatasetRepo:
    repo = DatasetRepo(path)
    if must_exist and not repo.exists():
        raise RepoError(f"{path} is not a dataset repo (no {CARD} with a `configs:` list); "
                        "create one with `spanpref import ...`")  # fmt: skip
    return repo


def load_rows(source: str | os.PathLike, config: str, split: str | None = None) -> list[dict[str, Any]]:
    """Rows of a config from a local repo folder, or from a Hub dataset id (needs the network)."""
    if Path(source).exists():
        return open_repo(source).read(config, split)
    import datasets

    ds = datasets.load_dataset(str(source), config)
    splits = [split] if split else list(ds)
    return [row for s in splits for row in ds[s]]


def push_repo(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    api: Any = None,
) -> str:
    """Upload a repo folder unchanged to the Hub as a dataset repo; returns the commit URL."""
    repo = open_repo(folder)
    return push_folder(repo.path, repo_id, repo_type="dataset", private=private, token=token, revision=revision,
                       commit_message=commit_message or f"spanpref: upload {', '.join(repo.config_names())}",
                       api=api)  # fmt: skip


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    repo_type: str,
    private: bool = False,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = "spanpref: upload",
    api: Any = None,
) -> str:
    """Create the Hub repo if needed and upload `folder` (hidden files left out); returns the commit URL."""
    from huggingface_hub import HfApi, get_token

    token = token or get_token()
    if not token:
        raise HubAuthError(
            "no Hugging Face token: run `hf auth login` (or set HF_TOKEN) with a token that has write access "
            "(https://huggingface.co/settings/tokens), then run the push again"
        )
    api = api or HfApi(token=token)
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, token=token)
    info = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type=repo_type,
        revision=revision,
        token=token,
        commit_message=commit_message,
        ignore_patterns=[".*", "**/.*"],
    )
    return str(getattr(info, "commit_url", info))
