"""Importing the real qa-feedback data: counts checked against the source file, and every bad input named."""

import copy
import gzip
import json
from pathlib import Path

import datasets
import pytest

from spanpref import schema
from spanpref.importers.qa_feedback import InvalidRecordError, find_qa_feedback_file, import_qa_feedback
from spanpref.repo import DatasetRepo, RepoError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "qa_feedback"
SOURCE = SHARED if SHARED.is_dir() else "bundled"


def _raw():
    with gzip.open(find_qa_feedback_file("bundled"), "rt", encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    out = tmp_path_factory.mktemp("qaf") / "repo"
    report = import_qa_feedback(SOURCE, out)
    return out, report


def test_bundled_copy_equals_the_shared_file():
    if not SHARED.is_dir():
        pytest.skip("../shared is not beside this checkout")
    assert _raw() == json.loads((SHARED / "qa_feedback_dev300.json").read_text(encoding="utf-8"))


def test_every_config_loads_with_datasets(imported):
    out, report = imported
    names = datasets.get_dataset_config_names(str(out))
    assert names == ["documents", "queries", "responses", "annotations", "comparisons", "references"]
    sizes = {n: datasets.load_dataset(str(out), n, split="train").num_rows for n in names}
    assert sizes == {
        "documents": 300,
        "queries": 300,
        "responses": 1200,
        "annotations": 300,
        "comparisons": 1800,
        "references": 300,
    }
    assert report.records_in == report.records_out == 300 and report.rejected == []


def test_spans_match_the_source_file(imported):
    out, _ = imported
    raw = _raw()
    repo = DatasetRepo(out)
    texts = {r["response_id"]: r["text"] for r in repo.read(schema.RESPONSES)}
    annotations = datasets.load_dataset(str(out), schema.ANNOTATIONS, split="train")
    assert annotations.num_rows == 300
    n_spans = 0
    for i, (ann, rec) in enumerate(zip(annotations, raw, strict=True)):
        pred = rec["prediction 1"]
        assert texts[ann["response_id"]] == pred
        got = sorted((s["start"], s["end"], s["note"].split(";")[0]) for s in ann["spans"])
        want = sorted((e["start"], e["end"], f"qa-feedback: {e['error type']}") for e in rec["feedback"]["errors"])
        assert got == want, i
        for s in ann["spans"]:
            assert s["polarity"] == "dislike" and s["reasons"]
            assert pred[s["start"] : s["end"]] == texts[ann["response_id"]][s["start"] : s["end"]]
        # span ids follow position, left to right
        ordered = sorted(ann["spans"], key=lambda s: (s["start"], s["end"]))
        assert [s["span_id"] for s in ordered] == list(range(1, len(ordered) + 1))
        assert len(ann["response_reasons"]) == len(rec["feedback"]["missing-info"])
        assert ann["reference_rewrite"] == (rec["feedback"]["corrected-prediction"] or None)
        n_spans += len(ann["spans"])
    assert n_spans == 836


def test_comparisons_follow_the_preference_order(imported):
    out, report = imported
    raw = _raw()
    comps = DatasetRepo(out).read(schema.COMPARISONS)
    assert len(comps) == 1800 and report.ties == 222
    assert sum(c["choice"] == "tie" for c in comps) == 222
    pairs = [(1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4)]
    for k, c in enumerate(comps):
        rec, (i, j) = raw[k // 6], pairs[k % 6]
        assert c["response_a"].endswith(f"-r{i}") and c["response_b"].endswith(f"-r{j}")
        assert c["choice"] == {0: "tie", 1: "a", 2: "b"}[rec["preference"][k % 6]]


def test_missing_info_notes_quote_the_passage(imported):
    out, _ = imported
    ann = DatasetRepo(out).read(schema.ANNOTATIONS)[1]  # record 1: Drag Me to Hell
    raw = _raw()[1]["feedback"]["missing-info"]
    answer = next(m for m in raw if m["error type"] == "Missing-Answer")
    note = next(r["note"] for r in ann["response_reasons"] if r["note"].startswith("Missing-Answer"))
    # passage ids count from 1; sentence ids index the passage list (entry 0 is the title)
    assert note.startswith(f"Missing-Answer: passage {answer['passage_id']}, sentence(s) {answer['sentence_id']}: ")
    assert note.endswith(
        "In present-day Los Angeles, bank loan officer Christine is in competition for a promotion with Stu Rubin."
    )
    assert [r["reason"] for r in ann["response_reasons"]] == ["dislike.shallow", "dislike.generic_or_incomplete"]


def test_gold_answers_become_references(imported):
    out, _ = imported
    refs = DatasetRepo(out).read(schema.REFERENCES)
    assert [r["text"] for r in refs] == [r["gold"] for r in _raw()]


def test_existing_output_needs_overwrite(imported, tmp_path):
    out, _ = imported
    with pytest.raises(RepoError, match="pass --overwrite to replace them"):
        import_qa_feedback(SOURCE, out)


def _write(tmp_path, records):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(records))
    return f


def _break(path, value):
    def mutate(rec):
        target = rec
        for key in path[:-1]:
            target = target[key]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    return mutate


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_break(["question"], KeyError), r"missing 'question'"),
        (_break(["prediction 3"], 7), r"'prediction 3' should be str, got int"),
        (
            _break(["feedback", "errors", 0, "end"], 10_000),
            r"feedback.errors\[0\]: span \[\d+, 10000\) is not inside "
            r"prediction 1 \(\d+ characters\)",
        ),
        (_break(["feedback", "errors", 0, "start"], 999), r"feedback.errors\[0\]: span \[999, \d+\)"),
        (_break(["feedback", "errors", 0, "error type"], "Rude"), r"feedback.errors\[0\]: unknown error type 'Rude'"),
        (
            _break(["feedback", "missing-info"], [{"error type": "Missing-Everything"}]),
            r"feedback.missing-info\[0\]: unknown type 'Missing-Every",
        ),
        (_break(["preference"], [1, 2, 3, 0, 0, 0]), r"preference should be 6 values in \{0, 1, 2\}"),
        (_break(["preference"], [1, 2]), r"preference should be 6 values"),
        (_break(["passages"], [["only a title", 5]]), r"passages\[0\] should be a non-empty list of strings"),
        (_break(["feedback"], KeyError), r"missing 'feedback'"),
    ],
    ids=[
        "no-question",
        "prediction-type",
        "span-past-end",
        "span-start-after-end",
        "error-type",
        "missing-type",
        "preference-value",
        "preference-length",
        "passages",
        "no-feedback",
    ],
)
def test_bad_records_stop_the_import_with_file_index_and_reason(tmp_path, mutate, message):
    records = copy.deepcopy(_raw()[:3])
    mutate(records[2])
    f = _write(tmp_path, records)
    out = tmp_path / "out"
    with pytest.raises(InvalidRecordError, match=rf"{f}: record 2: {message}"):
        import_qa_feedback(f, out)
    assert not out.exists()  # never half a dataset


def test_skip_invalid_sets_records_aside_and_reports_them(tmp_path):
    records = copy.deepcopy(_raw()[:5])
    records[1]["preference"] = [9] * 6
    records[3]["feedback"]["errors"][0]["end"] = 10_000
    out = tmp_path / "out"
    report = import_qa_feedback(_write(tmp_path, records), out, skip_invalid=True)
    assert (report.records_in, report.records_out) == (5, 3)
    assert [r["index"] for r in report.rejected] == [1, 3]
    rejects = [json.loads(line) for line in (out / "rejects" / "qa_feedback.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rejects] == [1, 3]
    assert rejects[0]["record"] == records[1]  # the whole record is kept, nothing lost
    assert "rejected 2" in report.summary() and "rejects written to" in report.summary()
    assert DatasetRepo(out).count(schema.ANNOTATIONS) == 3


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", r"cannot be read as JSON"), ('{"a": 1}', r"expected a JSON list of examples, got dict")],
)
def test_unreadable_files(tmp_path, content, message):
    f = tmp_path / "x.json"
    f.write_text(content)
    with pytest.raises(InvalidRecordError, match=message):
        import_qa_feedback(f, tmp_path / "out")


def test_folder_with_several_files_is_ambiguous(tmp_path):
    (tmp_path / "a.json").write_text("[]")
    (tmp_path / "b.json").write_text("[]")
    with pytest.raises(
        InvalidRecordError, match=r"expected one .json/.json.gz/.jsonl file, found \['a.json', 'b.json'\]"
    ):
        import_qa_feedback(tmp_path, tmp_path / "out")
