"""Dataset repos: a folder in Hub layout (README.md card listing `configs:`; data files under data/).

The card is the truth: a repo's configs, their splits and their files are what the card's `configs:` /
`data_files` say, resolved by `datasets`' own data-files code, so a folder written by `push_to_hub`, by hand or
by spanpref reads the same here as in `load_dataset`. Writing a config replaces only that config's files and
card entry; every other entry and file is kept as it was.

Writes are atomic for the whole folder: the new state is built in a sibling temp folder (unchanged files
hard-linked, not copied) and swapped in, so a failed or killed stage leaves the previous state intact and a
reader never sees half a dataset.
"""

from __future__ import annotations

import glob
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

from spanpref import schema
from spanpref.errors import InputError, SpanprefError

logger = logging.getLogger(__name__)

CARD = "README.md"
DATA = "data"
CONFIGS_FIELD = "configs"
# A new file per written split, named by a hash of its content: `datasets` keys its cache on the card's
# data_files (not on file contents), so a rewritten config must change its file name or a later
# `load_dataset` would return the old rows from the cache.
_STAGING = re.compile(r"^\.(?P<name>.+)\.tmp-(?:(?P<pid>\d+)-)?[0-9a-f]{8}$")
_CARD_ADVICE = (
    "A dataset repo's README.md starts with YAML front matter between two `---` lines, whose "
    "`configs:` list names each config and its `data_files` (as `push_to_hub` writes it)."
)
_SPLIT_NAME = re.compile(r"\w+(\.\w+)*")  # the split names `datasets` accepts


class RepoError(InputError):
    pass


class HubAuthError(SpanprefError, RuntimeError):
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
    _, id_col = schema.CONFIGS[config]
    for i, row in enumerate(rows):
        extra = set(row) - set(columns)
        if extra:
            raise RepoError(f"{config}[{i}]: unknown column(s) {sorted(extra)}; {config} has {columns}")
    cls = schema.record_class(config)
    filled = []
    for i, row in enumerate(rows):
        where = f"{config}[{i}]" + (f" ({row[id_col]})" if id_col and isinstance(row.get(id_col), str) else "")
        # before arrow sees the row: arrow reads True as 1 and fails on a lone surrogate without naming the row
        bad = schema.check_values(cls, row)
        if bad:
            raise RepoError(f"{where}: {'; '.join(bad)}")
        try:  # through the dataclass, so nested defaults (e.g. a span's note) are filled in too
            filled.append(schema.to_row(schema.from_row(cls, row)))
        except TypeError as e:
            raise RepoError(f"{where}: {e}") from e
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


def _split_order(splits: Iterable[str]) -> list[str]:
    order = {s: i for i, s in enumerate(schema.SPLITS)}
    return sorted(splits, key=lambda s: (order.get(s, len(order)), s))


@dataclass
class DatasetRepo:
    """A dataset-repo folder. Reading needs no cache; `load_dataset(path, config)` also works on it."""

    path: Path

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._recover()

    # -- the card ------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.path / CARD).is_file()

    def card_metadata(self) -> dict[str, Any]:
        """The card's YAML front matter ({} without a card or without front matter)."""
        if not self.exists():
            return {}
        import yaml
        from huggingface_hub import DatasetCard

        card = self.path / CARD
        try:
            return DatasetCard(card.read_text(encoding="utf-8"), ignore_metadata_errors=False).data.to_dict()
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            # the front matter starts on the card's second line
            where = f" at line {mark.line + 2}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise RepoError(
                f"{card}: the YAML front matter does not parse ({problem}{where}); fix the YAML "
                f"between the two `---` lines at the top. {_CARD_ADVICE}"
            ) from None
        except (ValueError, TypeError) as e:
            raise RepoError(f"{card}: the front matter is not a valid dataset card ({e}). {_CARD_ADVICE}") from None

    def config_entries(self) -> dict[str, dict[str, Any]]:
        """config name -> its card entry, exactly as the card has it (data_files, data_dir, default, ...)."""
        from datasets.utils.metadata import MetadataConfigs

        meta = self.card_metadata()
        entries = meta.get(CONFIGS_FIELD) or []
        for entry in entries if isinstance(entries, list) else []:
            files = entry.get("data_files") if isinstance(entry, dict) else None
            for item in files if isinstance(files, list) else []:
                split = item.get("split") if isinstance(item, dict) else None
                if isinstance(split, str) and not _SPLIT_NAME.fullmatch(split):
                    raise RepoError(
                        f"{self.path / CARD}: config {entry.get('config_name')!r} has split {split!r}, "
                        "a name `datasets` cannot load (letters, digits, underscores and dots only; no "
                        "dashes): rename the split in `configs:`"
                    )
        try:  # datasets' own checks: config_name present, data_files shape, split names
            MetadataConfigs.from_dataset_card_data(meta)
        except ValueError as e:
            raise RepoError(
                f"{self.path / CARD}: its `configs:` list is not one `datasets` can load: "
                f"{str(e).strip().splitlines()[0]}"
            ) from None
        out: dict[str, dict[str, Any]] = {}
        for entry in entries:
            name = str(entry["config_name"])
            if name in out:
                raise RepoError(f"{self.path / CARD}: config {name!r} is listed twice in `configs:`")
            out[name] = dict(entry)
        return out

    def config_names(self) -> list[str]:
        """Configs listed in the card, in card order."""
        return list(self.config_entries())

    # -- reading -------------------------------------------------------------------------------------
    def data_files(self, config: str) -> dict[str, list[Path]]:
        """split -> its data files, resolved from the card entry the way `load_dataset` resolves them."""
        entries = self.config_entries()
        if config not in entries:
            raise RepoError(f"{self.path} has no config {config!r}; it has {list(entries)}")
        return self._resolve(config, entries[config])

    def _resolve(self, config: str, entry: Mapping[str, Any]) -> dict[str, list[Path]]:
        from datasets.data_files import DataFilesDict, EmptyDatasetError, get_data_patterns, sanitize_patterns

        base = self.path / entry["data_dir"] if entry.get("data_dir") else self.path
        try:
            if entry.get("data_files") is not None:
                patterns = sanitize_patterns(entry["data_files"])
            else:  # no data_files: the Hub infers the splits from the file names under data_dir
                patterns = get_data_patterns(str(base))
            resolved = DataFilesDict.from_patterns(patterns, base_path=str(base))
        except (FileNotFoundError, EmptyDatasetError) as e:
            raise RepoError(
                f"{self.path / CARD}: config {config!r} lists data files that are not in the folder ({e})"
            ) from None
        out = {}
        root = self.path.absolute()
        for split in _split_order(resolved):
            # `datasets` answers with absolute paths; give them back in the form the repo was opened with, so
            # that `relative_to(repo.path)` works for a relative folder too
            files = [
                self.path / Path(f).relative_to(root) if Path(f).is_relative_to(root) else Path(f)
                for f in resolved[split]
            ]
            if not files:
                raise RepoError(
                    f"{self.path / CARD}: config {config!r}, split {split!r}: the pattern(s) "
                    f"{patterns[split]} match no file in {base}"
                )
            out[split] = files
        return out

    def shards(self, config: str) -> dict[str, Path]:
        """split -> its one data file (spanpref writes one file per split; see `data_files` for any layout)."""
        out = {}
        for split, files in self.data_files(config).items():
            if len(files) != 1:
                raise RepoError(f"{config}/{split} is stored in {len(files)} files; use data_files()")
            out[split] = files[0]
        return out

    def splits(self, config: str) -> list[str]:
        return list(self.data_files(config))

    def has(self, config: str) -> bool:
        return config in self.config_entries()

    def _read_file(self, config: str, split: str, file: Path, metadata_only: bool = False) -> Any:
        if file.suffix != ".parquet":
            raise RepoError(
                f"{file}: config {config!r}, split {split!r}: spanpref reads parquet data files; "
                "convert it (e.g. `datasets.load_dataset(...).to_parquet(...)`) or list parquet files "
                "in the card"
            )
        try:
            return pq.ParquetFile(file).metadata if metadata_only else pq.read_table(file)
        except (pa.ArrowException, OSError) as e:
            raise RepoError(
                f"{file}: config {config!r}, split {split!r}: not a readable parquet file ({e}); "
                "restore it or write the config again"
            ) from None

    def read_table(self, config: str, split: str | None = None) -> pa.Table:
        files = self.data_files(config)
        if split is not None and split not in files:
            raise RepoError(f"{self.path}: config {config!r} has no split {split!r}; it has {list(files)}")
        tables = [self._read_file(config, s, f) for s in ([split] if split else files) for f in files[s]]
        try:
            return pa.concat_tables(tables, promote_options="default")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise RepoError(
                f"{self.path}: the data files of config {config!r} do not share one schema ({e})"
            ) from None

    def read(self, config: str, split: str | None = None) -> list[dict[str, Any]]:
        """Rows of a config (all splits, in split order, unless one is named)."""
        return self.read_table(config, split).to_pylist()

    def read_records(self, config: str, split: str | None = None) -> list[Any]:
        cls = schema.record_class(config)
        return [schema.from_row(cls, r) for r in self.read(config, split)]

    def read_split_map(self, config: str) -> dict[str, list[dict[str, Any]]]:
        return {s: self.read(config, s) for s in self.splits(config)}

    def count(self, config: str, split: str | None = None) -> int:
        """Rows of a config (or of one split), from the files' metadata."""
        total = 0
        for s, files in self.data_files(config).items():
            if split is not None and s != split:
                continue
            total += sum(self._read_file(config, s, f, metadata_only=True).num_rows for f in files)
        return total

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
        """Write (or replace) whole configs, atomically; other configs, their card entries and files are kept.

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
            for split in splits:
                if not _SPLIT_NAME.fullmatch(split):
                    raise RepoError(
                        f"{name}: split name {split!r} is not one `datasets` accepts (letters, digits, "
                        "underscores, dots)"
                    )
        for name in new:
            schema.record_class(name)  # unknown config -> ValueError naming the choices
        entries = self._entries_for_writing()
        if validate:
            self._validate(new, taxonomy)
        tables = {name: {split: _table(name, rows) for split, rows in splits.items()} for name, splits in new.items()}
        written: dict[str, dict[str, Any]] = {}

        def populate(tmp: Path) -> None:
            for name, splits in tables.items():
                folder = tmp / DATA / name
                folder.mkdir(parents=True, exist_ok=True)
                files = []
                for split, table in splits.items():
                    staged = folder / f".{split}.parquet"
                    pq.write_table(table, staged)
                    digest = hashlib.sha256(staged.read_bytes()).hexdigest()[:12]
                    target = folder / f"{split}-{digest}.parquet"
                    staged.rename(target)
                    files.append({"split": split, "path": target.relative_to(tmp).as_posix()})
                written[name] = {"config_name": name, "data_files": files}
            for rel, content in (extra_files or {}).items():
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.exists():
                    target.unlink()  # a hard link to the old version: replace, never write through it
                target.write_bytes(content.encode() if isinstance(content, str) else content)

        self._rewrite(entries, replaced=set(new), populate=populate, written=written, meta=meta)
        logger.info(
            "wrote %s to %s",
            ", ".join(f"{n} ({sum(t.num_rows for t in s.values())} rows)" for n, s in tables.items()),
            self.path,
        )

    def remove(self, configs: Iterable[str]) -> None:
        """Drop configs (data files and card entry), atomically."""
        self._rewrite(self._entries_for_writing(), replaced=set(configs), populate=lambda tmp: None, written={})

    def refresh_card(self) -> None:
        """Re-render the card from the data (e.g. after a taxonomy or template change)."""
        self._rewrite(self._entries_for_writing(), replaced=set(), populate=lambda tmp: None, written={})

    def _entries_for_writing(self) -> dict[str, dict[str, Any]]:
        """The card entries a write starts from; refuses a folder whose data the card would hide."""
        if not self.path.exists():
            return {}
        entries = self.config_entries()  # a card that does not parse stops the write here, before anything changes
        if not entries and self._data_files_on_disk():
            found = ", ".join(sorted({p.parent.relative_to(self.path).as_posix() for p in self._data_files_on_disk()}))
            reason = "has no README.md" if not self.exists() else "has a README.md without a `configs:` list"
            raise RepoError(
                f"{self.path} {reason} but holds data files ({found}); writing would leave them out "
                f"of the card. {_CARD_ADVICE} Add the card first, then run this again."
            )
        for name, entry in entries.items():
            self._resolve(name, entry)  # every entry must resolve: a write must not carry a broken card forward
        return entries

    def _data_files_on_disk(self) -> list[Path]:
        return [
            p
            for p in self.path.rglob("*")
            if p.is_file()
            and p.suffix in (".parquet", ".arrow", ".jsonl", ".csv")
            and not any(part.startswith(".") for part in p.relative_to(self.path).parts)
        ]

    def _rewrite(
        self,
        entries: dict[str, dict[str, Any]],
        replaced: set[str],
        populate: Any,
        written: dict[str, dict[str, Any]],
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        """Build the next state in a sibling temp folder (kept files hard-linked), then swap it in."""
        kept = {n: e for n, e in entries.items() if n not in replaced}
        kept_files = {f for n, e in kept.items() for fs in self._resolve(n, e).values() for f in fs}
        # the files of replaced configs go, unless a kept config's entry still lists them
        gone = {f for n, e in entries.items() if n in replaced for fs in self._resolve(n, e).values() for f in fs}
        skip = {Path(CARD)} | {f.relative_to(self.path) for f in gone - kept_files}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.parent / f".{self.path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            if self.path.exists():
                self._link_tree(self.path, tmp, skip=skip)
            populate(tmp)
            from huggingface_hub import DatasetCard

            from spanpref.cards import render_card_text, render_dataset_card

            order = _config_order([*entries, *written])
            card_entries = [written.get(n) or kept[n] for n in order if n in written or n in kept]
            previous = self.card_metadata() if self.exists() else {}
            previous = {**previous, **(meta or {})}
            previous["dataset_info"] = _drop_infos(previous.get("dataset_info"), set(replaced) | set(written))
            staged = DatasetRepo.__new__(DatasetRepo)
            staged.path = tmp
            # the card lists the files, so it goes first: the statistics below read the staged data through it
            (tmp / CARD).write_text(render_card_text(DatasetCard, {CONFIGS_FIELD: card_entries}), encoding="utf-8")
            text = render_dataset_card(
                staged,
                [e["config_name"] for e in card_entries],
                previous_meta=previous,
                title=self.path.name,
                config_entries=card_entries,
            )
            (tmp / CARD).write_text(text, encoding="utf-8")
            for name, entry in kept.items():  # a new file must not slip into another config's glob
                if _rebased(staged._resolve(name, entry), tmp, self.path) != self._resolve(name, entry):
                    raise RepoError(
                        f"{self.path}: writing {sorted(written)} would change what config {name!r} "
                        f"reads (its data_files {entry.get('data_files')!r} match the new files)"
                    )
            self._swap_in(tmp)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _validate(self, new: dict[str, dict[str, list[dict]]], taxonomy: Any) -> None:
        flat = {name: [r for rows in splits.values() for r in rows] for name, splits in new.items()}
        # bring in the existing configs that the new rows refer to, so references are checked
        wants = {
            schema.QUERIES: [schema.DOCUMENTS],
            schema.RESPONSES: [schema.QUERIES],
            schema.REFERENCES: [schema.QUERIES],
            schema.ANNOTATIONS: [schema.RESPONSES],
            schema.COMPARISONS: [schema.RESPONSES],
            schema.CHAINS: [schema.ANNOTATIONS],
        }
        for name in list(flat):
            for target in wants.get(name, []):
                if target not in flat and self.exists() and self.has(target):
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
        """Undo what a killed write left behind: a swap cut between its two renames leaves only the backup (put
        it back); a swap cut after them leaves a stale backup; a write cut while staging leaves its temp folder."""
        backup = self._backup()
        if backup.exists():
            if not self.path.exists():
                logger.warning("restoring %s from an interrupted write", self.path)
                os.rename(backup, self.path)
            else:
                shutil.rmtree(backup, ignore_errors=True)
        parent = self.path.parent
        if not parent.is_dir():
            return
        for staging in parent.glob(f".{glob.escape(self.path.name)}.tmp-*"):
            m = _STAGING.match(staging.name)
            if not m or m["name"] != self.path.name or not staging.is_dir():
                continue
            if m["pid"] and _alive(int(m["pid"])):
                continue  # another process is writing right now; its folder is not ours to take
            logger.warning("removing %s, left by a write that was killed", staging)
            shutil.rmtree(staging, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _drop_infos(infos: Any, names: set[str]) -> Any:
    """`dataset_info` without the entries of configs being rewritten (their sizes and features would be stale)."""
    if not infos:
        return None
    if isinstance(infos, Mapping):
        return None if infos.get("config_name", "default") in names else infos
    kept = [i for i in infos if not (isinstance(i, Mapping) and i.get("config_name", "default") in names)]
    return kept or None


def _rebased(files: dict[str, list[Path]], src: Path, dst: Path) -> dict[str, list[Path]]:
    return {s: [dst / f.relative_to(src) for f in fs] for s, fs in files.items()}


def _config_order(names: list[str]) -> list[str]:
    """Configs in pipeline order (the order of schema.CONFIGS), then any others in card order."""
    known = list(schema.CONFIGS)
    names = list(dict.fromkeys(names))
    return sorted(names, key=lambda n: (known.index(n) if n in known else len(known), names.index(n)))


def open_repo(path: str | os.PathLike, *, must_exist: bool = True) -> DatasetRepo:
    repo = DatasetRepo(path)
    if must_exist:
        if not repo.exists():
            raise RepoError(
                f"{path} is not a dataset repo (no {CARD} with a `configs:` list); "
                "create one with `spanpref import ...`"
            )
        if not repo.config_entries():  # a card that does not parse raises here, naming the line
            raise RepoError(
                f"{repo.path / CARD} lists no configs. {_CARD_ADVICE} Add the list (e.g. "
                "`configs: [{config_name: documents, data_files: data/documents/*.parquet}]`), or "
                "create the repo with `spanpref import ...`"
            )
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
    return push_folder(
        repo.path,
        repo_id,
        repo_type="dataset",
        private=private,
        token=token,
        revision=revision,
        commit_message=commit_message or f"spanpref: upload {', '.join(repo.config_names())}",
        api=api,
    )


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
