"""Dataset repos: Hub layout read by the real `datasets` loader, atomic writes, cards, push at the HfApi boundary."""

import os

import datasets
import pyarrow.parquet as pq
import pytest

from spanpref import schema
from spanpref.repo import DatasetRepo, HubAuthError, RepoError, open_repo, push_repo


def _docs(n, prefix="d"):
    return [
        {"doc_id": f"{prefix}{i}", "domain": "news" if i % 2 else "wiki", "title": f"T{i}", "text": f"text {i} ✓"}
        for i in range(n)
    ]


def _queries(n):
    return [{"query_id": f"q{i}", "doc_id": f"d{i}", "query": f"why {i}?"} for i in range(n)]


def test_write_then_load_with_datasets(tmp_path):
    repo = DatasetRepo(tmp_path / "r")
    repo.write({schema.DOCUMENTS: _docs(3), schema.QUERIES: {"train": _queries(2), "test": _queries(3)[2:]}})
    assert repo.config_names() == [schema.DOCUMENTS, schema.QUERIES]
    assert datasets.get_dataset_config_names(str(repo.path)) == [schema.DOCUMENTS, schema.QUERIES]
    ds = datasets.load_dataset(str(repo.path), schema.QUERIES)
    assert sorted(ds) == ["test", "train"]
    assert ds["train"]["query_id"] == ["q0", "q1"] and ds["test"]["query_id"] == ["q2"]
    docs = datasets.load_dataset(str(repo.path), schema.DOCUMENTS, split="train")
    assert docs.features == schema.features_of(schema.DOCUMENTS)
    assert docs[2]["text"] == "text 2 ✓" and docs[0]["source"] == ""  # default filled in
    assert repo.shards(schema.QUERIES)["test"].parent == repo.path / "data" / "queries"


def test_update_replaces_one_config_and_keeps_the_others(tmp_path):
    repo = DatasetRepo(tmp_path / "r")
    repo.write({schema.DOCUMENTS: _docs(3), schema.QUERIES: _queries(3)})
    repo.write({schema.DOCUMENTS: _docs(5)})
    assert repo.count(schema.DOCUMENTS) == 5 and repo.count(schema.QUERIES) == 3
    assert repo.config_names() == [schema.DOCUMENTS, schema.QUERIES]
    repo.remove([schema.QUERIES])
    assert repo.config_names() == [schema.DOCUMENTS]
    assert datasets.get_dataset_config_names(str(repo.path)) == [schema.DOCUMENTS]


def test_invalid_rows_write_nothing(tmp_path):
    repo = DatasetRepo(tmp_path / "r")
    repo.write({schema.DOCUMENTS: _docs(2)})
    before = (repo.path / "README.md").read_text()
    bad = _queries(3)  # q2 points at d2, which does not exist in the repo
    with pytest.raises(schema.ValidationError, match=r"queries\[2\] \(q2\): doc_id 'd2' is not in documents"):
        repo.write({schema.QUERIES: bad})
    assert not repo.has(schema.QUERIES)
    assert (repo.path / "README.md").read_text() == before


def test_wrong_types_and_unknown_columns_name_the_row(tmp_path):
    repo = DatasetRepo(tmp_path / "r")
    docs = _docs(3)
    docs[1]["title"] = 5
    with pytest.raises(RepoError, match=r"documents\[1\]"):
        repo.write({schema.DOCUMENTS: docs}, validate=False)
    docs = _docs(2)
    docs[1]["colour"] = "red"
    with pytest.raises(RepoError, match=r"documents\[1\]: unknown column\(s\) \['colour'\]"):
        repo.write({schema.DOCUMENTS: docs})
    assert not repo.path.exists()


def test_a_crash_mid_write_leaves_the_previous_state(tmp_path, monkeypatch):
    repo = DatasetRepo(tmp_path / "r")
    repo.write({schema.DOCUMENTS: _docs(3)})
    calls = []
    real = pq.write_table

    def failing(table, where, *a, **k):
        calls.append(where)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(table, where, *a, **k)

    monkeypatch.setattr(pq, "write_table", failing)
    with pytest.raises(OSError, match="disk full"):
        repo.write({schema.DOCUMENTS: _docs(7), schema.QUERIES: _queries(3)})
    monkeypatch.undo()
    assert repo.count(schema.DOCUMENTS) == 3 and not repo.has(schema.QUERIES)
    assert [p.name for p in tmp_path.iterdir()] == ["r"]  # no temp folder left behind
    assert datasets.load_dataset(str(repo.path), schema.DOCUMENTS, split="train").num_rows == 3


def test_interrupted_swap_is_recovered(tmp_path):
    repo = DatasetRepo(tmp_path / "r")
    repo.write({schema.DOCUMENTS: _docs(2)})
    # a kill between the two renames of a swap leaves only the backup folder
    os.rename(repo.path, tmp_path / ".r.old")
    again = DatasetRepo(tmp_path / "r")
    assert again.count(schema.DOCUMENTS) == 2


def test_unchanged_files_are_hard_linked_not_copied(tmp_path):
    repo = DatasetRepo(tmp_path / "r")
    repo.write({schema.DOCUMENTS: _docs(2), schema.QUERIES: _queries(2)})
    f = repo.shards(schema.DOCUMENTS)["train"]
    inode = f.stat().st_ino
    repo.write({schema.QUERIES: _queries(1)})
    assert f.stat().st_ino == inode


def test_card_lists_configs_and_keeps_user_metadata(tmp_path):
    repo = DatasetRepo(tmp_path / "r")
    repo.write({schema.DOCUMENTS: _docs(4)}, meta={"pretty_name": "My feedback", "license": "mit"})
    repo.write({schema.QUERIES: _queries(4)})
    meta = repo.card_metadata()
    assert meta["pretty_name"] == "My feedback" and meta["license"] == "mit"
    assert [c["config_name"] for c in meta["configs"]] == ["documents", "queries"]
    card = (repo.path / "README.md").read_text()
    assert "# My feedback" in card
    assert "| `documents` | train (4) |" in card and "| `queries` | train (4) |" in card
    assert "2 document(s), domain `news`" in card and "2 document(s), domain `wiki`" in card


def test_open_repo_errors(tmp_path):
    with pytest.raises(RepoError, match="is not a dataset repo"):
        open_repo(tmp_path)
    repo = DatasetRepo(tmp_path / "r")
    repo.write({schema.DOCUMENTS: _docs(1)})
    with pytest.raises(RepoError, match=r"has no config 'queries'; it has \['documents'\]"):
        repo.read(schema.QUERIES)


def test_push_uploads_the_folder_unchanged(tmp_path, hub_api):
    repo = DatasetRepo(tmp_path / "r")
    repo.write({schema.DOCUMENTS: _docs(1)})
    api = hub_api
    url = push_repo(repo.path, "org/feedback", private=True, token="hf_test", api=api)
    assert url == "https://hub.local/commit/1"
    (c_name, c_id, c_kw), (u_name, u_id, u_kw) = api.calls
    assert (c_name, c_id) == ("create_repo", "org/feedback")
    assert c_kw == {"repo_type": "dataset", "private": True, "exist_ok": True, "token": "hf_test"}
    assert (u_name, u_id) == ("upload_folder", "org/feedback")
    assert u_kw["folder_path"] == str(repo.path) and u_kw["repo_type"] == "dataset" and u_kw["token"] == "hf_test"
    assert u_kw["ignore_patterns"] == [".*", "**/.*"]
    assert "documents" in u_kw["commit_message"]


def test_push_without_token_says_what_to_do(tmp_path, monkeypatch, hub_api):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no saved token either
    repo = DatasetRepo(tmp_path / "r")
    repo.write({schema.DOCUMENTS: _docs(1)})
    with pytest.raises(HubAuthError, match=r"no Hugging Face token: run `hf auth login` \(or set HF_TOKEN\)"):
        push_repo(repo.path, "org/feedback", api=hub_api)


def test_empty_splits_are_not_written_and_empty_configs_refused(tmp_path):
    repo = DatasetRepo(tmp_path / "r")
    repo.write({schema.DOCUMENTS: {"train": _docs(2), "test": []}})
    assert repo.splits(schema.DOCUMENTS) == ["train"]
    assert datasets.load_dataset(str(repo.path), schema.DOCUMENTS)["train"].num_rows == 2
    with pytest.raises(RepoError, match=r"queries: no rows to write"):
        repo.write({schema.QUERIES: []})


def test_load_dataset_sees_a_rewritten_config(tmp_path):
    """`datasets` caches by the card's data_files, not by content: a rewrite must never be read stale."""
    repo = DatasetRepo(tmp_path / "r")
    repo.write({schema.DOCUMENTS: _docs(3)})
    assert datasets.load_dataset(str(repo.path), schema.DOCUMENTS, split="train").num_rows == 3
    repo.write({schema.DOCUMENTS: _docs(5)})
    assert datasets.load_dataset(str(repo.path), schema.DOCUMENTS, split="train").num_rows == 5
    other = DatasetRepo(tmp_path / "elsewhere" / "r")  # same folder name, other content
    other.write({schema.DOCUMENTS: _docs(2)})
    assert datasets.load_dataset(str(other.path), schema.DOCUMENTS, split="train").num_rows == 2
