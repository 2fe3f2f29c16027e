"""Dataset repos written by other tools: the card's `configs:` is the truth, in every layout `datasets` reads.

The repos here are laid out the way `Dataset.push_to_hub` lays them out (sharded files named
`<split>-00000-of-00002.parquet`, a card whose entries use globs, a `dataset_info` block), and the way a person
writes a card by hand (explicit lists of `train-0.parquet`, `train-1.parquet`). The real `spanpref` commands
run on them, and the real `datasets.load_dataset` must still load every config, every row, afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from datasets.info import DatasetInfo, DatasetInfosDict
from datasets.splits import SplitDict, SplitInfo
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData

from spanpref import schema
from spanpref.cli import main
from spanpref.importers.qa_feedback import import_qa_feedback
from spanpref.repo import DatasetRepo, RepoError, open_repo

BASE = (schema.DOCUMENTS, schema.QUERIES, schema.RESPONSES, schema.ANNOTATIONS, schema.COMPARISONS, schema.REFERENCES)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> dict[str, list[dict]]:
    """Rows of the six base configs: 30 real qa-feedback examples (120 responses, 180 comparisons)."""
    folder = tmp_path_factory.mktemp("src") / "r"
    import_qa_feedback("bundled", folder, limit=30)
    repo = DatasetRepo(folder)
    return {c: repo.read(c) for c in BASE}


def _push_to_hub_layout(folder: Path, rows: dict[str, list[dict]], shards: int = 2) -> None:
    """What `DatasetDict.push_to_hub(repo, config_name=c, data_dir=f"data/{c}")` writes for each config: `shards`
    parquet files per split with its file names, and a card built by `datasets`' own card helpers."""
    folder.mkdir(parents=True)
    configs, infos = MetadataConfigs(), DatasetInfosDict()
    for config, config_rows in rows.items():
        features = schema.features_of(config)
        ds = datasets.Dataset.from_list(config_rows, features=features)
        split_sizes = {"train": ds.num_rows - ds.num_rows // 4, "test": ds.num_rows // 4}
        start, split_dict = 0, SplitDict()
        for split, size in split_sizes.items():
            part = ds.select(range(start, start + size))
            start += size
            for i in range(shards):
                path = folder / "data" / config / f"{split}-{i:05d}-of-{shards:05d}.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
                part.shard(num_shards=shards, index=i, contiguous=True).to_parquet(str(path))
            split_dict.add(SplitInfo(name=split, num_examples=size, num_bytes=0))
        configs[config] = {"data_files": [{"split": s, "path": f"data/{config}/{s}-*"} for s in split_sizes]}
        infos[config] = DatasetInfo(features=features, splits=split_dict, config_name=config)
    card_data = DatasetCardData()
    configs.to_dataset_card_data(card_data)
    infos.to_dataset_card_data(card_data)
    card = DatasetCard.from_template(card_data, template_str="---\n{{ card_data }}\n---\n# pushed\n")
    card.save(folder / "README.md")


def _hand_written_layout(folder: Path, rows: dict[str, list[dict]]) -> None:
    """A card typed by a person: explicit lists of files, some named train-0/train-1, one config as a bare glob."""
    entries = []
    for config, config_rows in rows.items():
        table = pa.Table.from_pylist(config_rows, schema=schema.features_of(config).arrow_schema)
        half = table.num_rows // 2
        (folder / "data" / config).mkdir(parents=True)
        if config == schema.DOCUMENTS:  # a bare glob: everything is the train split
            pq.write_table(table.slice(0, half), folder / "data" / config / "part-a.parquet")
            pq.write_table(table.slice(half), folder / "data" / config / "part-b.parquet")
            entries.append({"config_name": config, "data_files": f"data/{config}/*.parquet"})
            continue
        names = ["train-0.parquet", "train-1.parquet"]
        for name, part in zip(names, (table.slice(0, half), table.slice(half)), strict=True):
            pq.write_table(part, folder / "data" / config / name)
        entries.append(
            {"config_name": config, "data_files": [{"split": "train", "path": [f"data/{config}/{n}" for n in names]}]}
        )
    card = "---\n" + yaml.safe_dump({"license": "apache-2.0", "configs": entries}, sort_keys=False) + "---\n# mine\n"
    (folder / "README.md").write_text(card, encoding="utf-8")


def _files(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_ino for p in folder.rglob("*.parquet")}


def _entries(folder: Path) -> dict[str, dict]:
    return {c["config_name"]: c for c in DatasetCard.load(folder / "README.md").data.to_dict()["configs"]}


def _load_everything(folder: Path) -> dict[str, int]:
    return {
        c: sum(datasets.load_dataset(str(folder), c).num_rows.values())
        for c in datasets.get_dataset_config_names(str(folder))
    }


@pytest.mark.parametrize("layout", [_push_to_hub_layout, _hand_written_layout], ids=["push_to_hub", "hand_written"])
def test_stats_validate_and_pairs_read_every_row_and_keep_the_repo_loadable(layout, source, tmp_path, capsys):
    folder = tmp_path / "r"
    layout(folder, source)
    n = {c: len(rows) for c, rows in source.items()}
    assert _load_everything(folder) == n  # the layout itself is one `datasets` reads
    files, entries = _files(folder), _entries(folder)

    repo = open_repo(folder)
    assert sorted(repo.config_names()) == sorted(BASE)
    assert {c: repo.count(c) for c in BASE} == n and {c: len(repo.read(c)) for c in BASE} == n
    ids = sorted(r["response_id"] for r in source[schema.RESPONSES])
    assert sorted(r["response_id"] for r in repo.read(schema.RESPONSES)) == ids

    assert main(["validate", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"0 problem(s) in {sum(n.values())} rows of 6 config(s)" in out

    assert main(["stats", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"{schema.RESPONSES} ({n[schema.RESPONSES]})" in out and "Annotation statistics (30 annotations" in out
    assert _files(folder) == files and _entries(folder) == entries  # nothing of the other tool's was touched

    assert main(["pairs", str(folder)]) == 0
    after = _entries(folder)
    assert {c: after[c] for c in BASE} == entries  # the base configs' entries, verbatim
    assert {k: v for k, v in _files(folder).items() if k in files} == files  # and their files, the same inodes
    pairs = DatasetRepo(folder)
    assert pairs.count(schema.PAIRS_AB) == sum(c["choice"] != "tie" for c in source[schema.COMPARISONS])
    assert pairs.count(schema.PAIRS_HUMAN_REWRITE) > 0
    loaded = _load_everything(folder)
    assert {c: loaded[c] for c in BASE} == n
    assert loaded[schema.PAIRS_AB] == pairs.count(schema.PAIRS_AB)
    for split in datasets.load_dataset(str(folder), schema.PAIRS_AB):
        assert split in schema.SPLITS
    if layout is _push_to_hub_layout:  # the other tool's dataset_info block survives for its configs
        meta = DatasetCard.load(folder / "README.md").data.to_dict()
        assert {i["config_name"] for i in meta["dataset_info"]} == set(BASE)


def test_rewriting_a_sharded_config_replaces_all_its_shards(source, tmp_path):
    folder = tmp_path / "r"
    _push_to_hub_layout(folder, {c: source[c] for c in (schema.DOCUMENTS, schema.QUERIES)})
    repo = DatasetRepo(folder)
    before = _entries(folder)[schema.QUERIES]
    repo.write({schema.DOCUMENTS: source[schema.DOCUMENTS][:10]}, validate=False)
    assert not list((folder / "data" / schema.DOCUMENTS).glob("*-of-*"))  # the old shards are gone
    assert repo.count(schema.DOCUMENTS) == 10 and repo.splits(schema.DOCUMENTS) == ["train"]
    assert _entries(folder)[schema.QUERIES] == before
    meta = DatasetCard.load(folder / "README.md").data.to_dict()
    # the rewritten config's stale sizes go; the other config keeps its block
    assert [i["config_name"] for i in meta["dataset_info"]] == [schema.QUERIES]
    assert datasets.load_dataset(str(folder), schema.DOCUMENTS, split="train").num_rows == 10
    assert datasets.load_dataset(str(folder), schema.QUERIES)["test"].num_rows == len(source[schema.QUERIES]) // 4


def test_a_card_without_configs_stops_validate_and_pairs(source, tmp_path, capsys):
    folder = tmp_path / "r"
    _hand_written_layout(folder, source)
    (folder / "README.md").write_text("# my feedback\n\nNo front matter here.\n", encoding="utf-8")
    files = _files(folder)
    assert main(["validate", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "README.md lists no configs" in err and "configs:" in err
    assert main(["pairs", str(folder)]) == 2
    assert "README.md lists no configs" in capsys.readouterr().err
    assert _files(folder) == files and (folder / "README.md").read_text().startswith("# my feedback")
    with pytest.raises(RepoError, match=r"has a README.md without a `configs:` list but holds data files"):
        DatasetRepo(folder).write({schema.DOCUMENTS: source[schema.DOCUMENTS]})
    assert _files(folder) == files


def test_validate_exits_non_zero_when_it_validated_nothing(tmp_path, capsys):
    folder = tmp_path / "r"
    (folder / "data" / "default").mkdir(parents=True)
    pq.write_table(pa.table({"x": [1, 2]}), folder / "data" / "default" / "train-0.parquet")
    (folder / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files: data/default/*\n---\n")
    assert main(["validate", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "nothing to validate" in out and "'default'" in out


def test_a_config_left_out_of_the_card_is_not_read(source, tmp_path):
    folder = tmp_path / "r"
    _hand_written_layout(folder, source)
    card = yaml.safe_load((folder / "README.md").read_text().split("---")[1])
    card["configs"] = [c for c in card["configs"] if c["config_name"] != schema.COMPARISONS]
    (folder / "README.md").write_text("---\n" + yaml.safe_dump(card) + "---\n")
    repo = DatasetRepo(folder)
    assert not repo.has(schema.COMPARISONS)
    with pytest.raises(RepoError, match=r"has no config 'comparisons'"):
        repo.read(schema.COMPARISONS)
    assert datasets.get_dataset_config_names(str(folder)) == repo.config_names()


def test_a_card_that_does_not_parse_names_the_line(tmp_path, capsys):
    folder = tmp_path / "r"
    DatasetRepo(folder).write({schema.DOCUMENTS: [{"doc_id": "d", "domain": "x", "title": "", "text": "t"}]})
    good = (folder / "README.md").read_text()
    broken = good.replace("configs:\n", "configs: [\n", 1)
    (folder / "README.md").write_text(broken)
    for argv in (["validate", str(folder)], ["stats", str(folder)], ["pairs", str(folder)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "README.md: the YAML front matter does not parse" in err and "at line" in err, err
        assert "Traceback" not in err and "ParserError" not in err
    with pytest.raises(RepoError, match="does not parse"):
        DatasetRepo(folder).write({schema.DOCUMENTS: [{"doc_id": "e", "domain": "x", "title": "", "text": "t"}]})
    assert (folder / "README.md").read_text() == broken  # nothing written over it


def test_a_truncated_parquet_file_is_named(tmp_path, capsys):
    folder = tmp_path / "r"
    repo = DatasetRepo(folder)
    repo.write(
        {schema.DOCUMENTS: [{"doc_id": f"d{i}", "domain": "x", "title": "", "text": "t" * 50} for i in range(50)]}
    )
    (shard,) = repo.data_files(schema.DOCUMENTS)["train"]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    assert main(["stats", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"{shard}: config 'documents', split 'train': not a readable parquet file" in err, err
    assert main(["validate", str(folder)]) == 2
    assert str(shard) in capsys.readouterr().err


def test_split_names_come_from_the_card_never_from_file_names(tmp_path):
    folder = tmp_path / "r"
    (folder / "data").mkdir(parents=True)
    rows = [{"doc_id": f"d{i}", "domain": "x", "title": "", "text": "t"} for i in range(4)]
    table = pa.Table.from_pylist(rows, schema=schema.features_of(schema.DOCUMENTS).arrow_schema)
    pq.write_table(table.slice(0, 2), folder / "data" / "dev-final-v2.parquet")
    pq.write_table(table.slice(2), folder / "data" / "held-out-00000-of-00001.parquet")
    (folder / "README.md").write_text(
        textwrap.dedent("""\
        ---
        configs:
        - config_name: documents
          data_files:
          - split: validation
            path: data/dev-final-v2.parquet
          - split: test
            path: data/held-out-*.parquet
        ---
        """)
    )
    repo = DatasetRepo(folder)
    assert repo.splits(schema.DOCUMENTS) == ["validation", "test"]
    repo.refresh_card()
    assert repo.splits(schema.DOCUMENTS) == ["validation", "test"]
    assert sorted(datasets.load_dataset(str(folder), schema.DOCUMENTS)) == ["test", "validation"]


# ---------------------------------------------------------------------------------------------------
# A write killed with SIGKILL
# ---------------------------------------------------------------------------------------------------
WRITER = """
import sys
from spanpref import schema
from spanpref.repo import DatasetRepo

repo = DatasetRepo(sys.argv[1])
rows = [{"doc_id": f"d{i}", "domain": "x", "title": "", "text": "word " * 40} for i in range(40_000)]
print("ready", flush=True)
while True:  # rewrite until killed
    repo.write({schema.DOCUMENTS: rows}, validate=False)
"""


def _kill_mid_staging(folder: Path) -> int:
    """Start a writer, SIGKILL it while its staging folder is being filled; its return code."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(folder)], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any((p / "data").is_dir() for p in folder.parent.glob(".r.tmp-*")):
                break
        proc.send_signal(signal.SIGKILL)
        return proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_write_killed_mid_staging_leaves_nothing_behind(tmp_path):
    folder = tmp_path / "r"
    DatasetRepo(folder).write({schema.DOCUMENTS: [{"doc_id": "d0", "domain": "x", "title": "", "text": "t"}]})
    for _ in range(10):  # the kill can land between two writes, with no staging folder: try again
        assert _kill_mid_staging(folder) == -signal.SIGKILL
        if any(p.name.startswith(".r.tmp-") for p in tmp_path.iterdir()):
            break
    assert any(p.name.startswith(".r.tmp-") for p in tmp_path.iterdir()), "never killed mid-staging"
    repo = DatasetRepo(folder)  # opening the repo cleans up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]
    assert repo.count(schema.DOCUMENTS) in (1, 40_000)  # the old state or a whole new one, never half
    assert datasets.load_dataset(str(folder), schema.DOCUMENTS, split="train").num_rows == repo.count(schema.DOCUMENTS)


def test_a_live_writers_staging_folder_is_left_alone(tmp_path):
    folder = tmp_path / "r"
    DatasetRepo(folder).write({schema.DOCUMENTS: [{"doc_id": "d0", "domain": "x", "title": "", "text": "t"}]})
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".r.tmp-{sleeper.pid}-0123abcd"
        live.mkdir()
        dead = tmp_path / ".r.tmp-0123abcd"  # no pid: an older spanpref's, or a dead process's
        dead.mkdir()
        DatasetRepo(folder)
        assert live.is_dir() and not dead.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    DatasetRepo(folder)
    assert not live.exists()


def test_a_card_with_a_split_name_datasets_cannot_load_says_so(tmp_path, capsys):
    folder = tmp_path / "r"
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.table({"x": [1]}), folder / "data" / "train-00000-of-00002.parquet")
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: documents\n  data_files:\n"
        "  - split: train-00000-of\n    path: data/train-00000-of-00002.parquet\n---\n"
    )
    assert main(["validate", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "config 'documents' has split 'train-00000-of', a name `datasets` cannot load" in err
    with pytest.raises(RepoError, match="split name 'train-00000-of' is not one `datasets` accepts"):
        DatasetRepo(tmp_path / "new").write(
            {schema.DOCUMENTS: {"train-00000-of": [{"doc_id": "d", "domain": "x", "title": "", "text": "t"}]}}
        )
    assert not (tmp_path / "new").exists()


def test_another_tools_config_and_card_keys_are_kept_beside_ours(tmp_path):
    folder = tmp_path / "r"
    (folder / "extra").mkdir(parents=True)
    pq.write_table(pa.table({"id": [1, 2], "note": ["hello", "world"]}), folder / "extra" / "notes-a.parquet")
    (folder / "README.md").write_text(
        "---\nlicense: cc-by-4.0\nannotations_creators: [expert-generated]\n"
        "configs:\n- config_name: notes\n  data_files:\n  - split: train\n"
        "    path: extra/notes-*.parquet\n---\n"
    )
    repo = DatasetRepo(folder)
    repo.write({schema.DOCUMENTS: [{"doc_id": "d", "domain": "x", "title": "", "text": "t"}]})
    assert repo.config_names() == [schema.DOCUMENTS, "notes"]
    notes = {"config_name": "notes", "data_files": [{"split": "train", "path": "extra/notes-*.parquet"}]}
    assert _entries(folder)["notes"] == notes
    data = DatasetCard.load(folder / "README.md").data
    assert data.license == "cc-by-4.0" and data.annotations_creators == ["expert-generated"]
    assert "| `notes` | train (2) | (not a spanpref config) |" in (folder / "README.md").read_text()
    assert _load_everything(folder) == {schema.DOCUMENTS: 1, "notes": 2}
    repo.remove([schema.DOCUMENTS])
    assert _entries(folder) == {"notes": notes} and (folder / "extra" / "notes-a.parquet").is_file()


def test_a_repo_opened_by_a_relative_path(source, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _push_to_hub_layout(Path("r"), {c: source[c] for c in BASE})
    assert main(["stats", "r"]) == 0 and main(["pairs", "r"]) == 0 and main(["validate", "r"]) == 0
    repo = DatasetRepo("r")
    assert all(not f.is_absolute() for fs in repo.data_files(schema.PAIRS_AB).values() for f in fs)
    assert repo.shards(schema.PAIRS_AB)["train"].relative_to(repo.path).parts[:2] == ("data", schema.PAIRS_AB)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]
    assert _load_everything(tmp_path / "r")[schema.RESPONSES] == len(source[schema.RESPONSES])


def test_a_config_given_by_data_dir_alone_gets_the_hubs_inferred_splits(tmp_path):
    folder = tmp_path / "r"
    rows = [{"doc_id": f"d{i}", "domain": "x", "title": "", "text": "t"} for i in range(5)]
    table = pa.Table.from_pylist(rows, schema=schema.features_of(schema.DOCUMENTS).arrow_schema)
    (folder / "docs").mkdir(parents=True)
    pq.write_table(table.slice(0, 3), folder / "docs" / "train-00000-of-00001.parquet")
    pq.write_table(table.slice(3), folder / "docs" / "validation-00000-of-00001.parquet")
    (folder / "README.md").write_text("---\nconfigs:\n- config_name: documents\n  data_dir: docs\n---\n")
    repo = DatasetRepo(folder)
    assert repo.splits(schema.DOCUMENTS) == ["train", "validation"] and repo.count(schema.DOCUMENTS) == 5
    ds = datasets.load_dataset(str(folder), schema.DOCUMENTS)
    assert {s: ds[s].num_rows for s in ds} == {"train": 3, "validation": 2}
