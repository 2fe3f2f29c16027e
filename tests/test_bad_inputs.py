"""Bad inputs stop with a message that names the file, the config, the record and what is wrong, and write nothing.

Each case is a real input file (qa-feedback JSON, documents JSONL) or a row handed to the repo, run through the
real `spanpref` command or library call.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from spanpref import schema
from spanpref.cli import main
from spanpref.importers.qa_feedback import import_qa_feedback, load_qa_feedback_records
from spanpref.repo import DatasetRepo, RepoError


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return load_qa_feedback_records("bundled")[1][:3]


def _write_json(path: Path, records: list[dict]) -> Path:
    # json.dumps escapes a lone surrogate as \ud800, exactly how it reaches us from other tools' files
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def _import(tmp_path: Path, records: list[dict], capsys, *extra: str) -> tuple[int, str]:
    source = _write_json(tmp_path / "feedback.json", records)
    code = main(["import", "qa-feedback", str(source), "--output", str(tmp_path / "out"), *extra])
    return code, capsys.readouterr().err


def test_a_boolean_offset_is_not_an_integer(records, tmp_path, capsys):
    bad = copy.deepcopy(records)
    bad[1]["feedback"]["errors"][0]["start"] = False
    code, err = _import(tmp_path, bad, capsys)
    assert code == 2
    assert f"{tmp_path / 'feedback.json'}: record 1: feedback.errors[0].'start' should be int, got bool" in err
    assert not (tmp_path / "out").exists()


def test_a_boolean_preference_is_not_a_choice(records, tmp_path, capsys):
    bad = copy.deepcopy(records)
    bad[2]["preference"] = [True, 0, 2, 1, 1, 2]
    code, err = _import(tmp_path, bad, capsys)
    assert code == 2
    assert (
        f"{tmp_path / 'feedback.json'}: record 2: preference should be 6 values in {{0, 1, 2}}, got "
        "[True, 0, 2, 1, 1, 2]"
    ) in err
    assert not (tmp_path / "out").exists()


def test_a_lone_surrogate_names_the_file_record_config_row_and_column(records, tmp_path, capsys):
    bad = copy.deepcopy(records)
    bad[1]["prediction 2"] = "The bridge \ud800 opened in 1932."
    code, err = _import(tmp_path, bad, capsys)
    assert code == 2
    assert (
        f"{tmp_path / 'feedback.json'}: record 1: responses[1] (qaf-00001-r2): text: lone surrogate '\\ud800' "
        "at character 11"
    ) in err
    assert "codec can't encode" not in err and not (tmp_path / "out").exists()


def test_skipping_a_record_with_a_lone_surrogate_keeps_it_in_the_rejects_file(records, tmp_path):
    bad = copy.deepcopy(records)
    bad[0]["question"] = "Who \udfff built it?"
    report = import_qa_feedback(_write_json(tmp_path / "f.json", bad), tmp_path / "out", skip_invalid=True)
    assert report.records_out == 2 and [r["index"] for r in report.rejected] == [0]
    (line,) = (tmp_path / "out" / "rejects" / "qa_feedback.jsonl").read_text(encoding="utf-8").splitlines()
    kept = json.loads(line)
    assert kept["record"]["question"] == "Who \udfff built it?"
    assert "queries[0] (qaf-00000-q): query: lone surrogate '\\udfff' at character 4" in kept["reason"]
    assert DatasetRepo(tmp_path / "out").count(schema.QUERIES) == 2


def test_documents_with_a_lone_surrogate_name_the_record(tmp_path, capsys):
    source = tmp_path / "docs.jsonl"
    source.write_text(
        "".join(
            json.dumps(d) + "\n"
            for d in [{"text": "fine", "domain": "news"}, {"text": "broken \ud83d here", "domain": "news"}]
        )
    )
    code = main(["import", "documents", str(source), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert (
        f"{source}: 1 record(s) cannot be imported, e.g. record 1: text: lone surrogate '\\ud83d' at character 7"
    ) in err
    assert not (tmp_path / "out").exists()


def test_rows_handed_to_the_repo_are_checked_even_without_validation(tmp_path):
    repo = DatasetRepo(tmp_path / "r")
    docs = [
        {"doc_id": "d0", "domain": "x", "title": "", "text": "ok"},
        {"doc_id": "d1", "domain": "x", "title": "", "text": "bad \ud800"},
    ]
    with pytest.raises(RepoError, match=r"documents\[1\] \(d1\): text: lone surrogate '\\ud800' at character 4"):
        repo.write({schema.DOCUMENTS: docs}, validate=False)
    repo.write({schema.DOCUMENTS: docs[:1]})
    responses = {
        schema.QUERIES: [{"query_id": "q", "doc_id": "d0", "query": "?"}],
        schema.RESPONSES: [{"response_id": "r", "query_id": "q", "model": "m", "text": "abc", "max_new_tokens": True}],
    }
    with pytest.raises(RepoError, match=r"responses\[0\] \(r\): max_new_tokens: expected an integer, got bool True"):
        repo.write(responses, validate=False)
    annotation = {
        "annotation_id": "a",
        "annotator": "x",
        "response_id": "r",
        "spans": [{"span_id": 1, "start": False, "end": 2, "polarity": "dislike"}],
    }
    with pytest.raises(schema.ValidationError) as e:
        repo.write(
            {
                **responses,
                schema.RESPONSES: [{**responses[schema.RESPONSES][0], "max_new_tokens": 5}],
                schema.ANNOTATIONS: [annotation],
            }
        )
    assert "annotations[0] (a): spans[0].start: expected an integer, got bool False" in str(e.value)
    assert "annotations[0] (a): span 1: start and end must be integers, got False, 2" in str(e.value)
    assert repo.config_names() == [schema.DOCUMENTS]  # nothing of the bad writes landed


def test_validate_names_bad_values_in_a_repo_written_by_another_tool(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "r"
    (folder / "data").mkdir(parents=True)
    # another tool stored the offsets as booleans; parquet keeps the type
    pq.write_table(
        pa.table({"response_id": ["r"], "query_id": ["q"], "model": ["m"], "text": ["abc"], "seed": [True]}),
        folder / "data" / "responses.parquet",
    )
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: responses\n  data_files: data/responses.parquet\n---\n"
    )
    assert main(["validate", str(folder)]) == 1
    assert "responses[0] (r): seed: expected an integer, got bool True" in capsys.readouterr().out
