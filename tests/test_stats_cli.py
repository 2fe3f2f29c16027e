"""Table 1 statistics against hand-computed numbers, and the `spanpref` command end to end."""

import subprocess
import sys

import pytest

from spanpref import schema
from spanpref.cli import main
from spanpref.repo import DatasetRepo
from spanpref.stats import compute_annotation_stats, format_table1


def _small_repo(path):
    repo = DatasetRepo(path)
    repo.write(
        {
            schema.DOCUMENTS: [
                {"doc_id": "d1", "domain": "news", "title": "", "text": "x"},
                {"doc_id": "d2", "domain": "wiki", "title": "", "text": "y"},
            ],
            schema.QUERIES: [
                {"query_id": "q1", "doc_id": "d1", "query": "?"},
                {"query_id": "q2", "doc_id": "d2", "query": "?"},
            ],
            schema.RESPONSES: [
                {"response_id": "r1", "query_id": "q1", "model": "m", "text": "one two three four five"},
                {"response_id": "r2", "query_id": "q2", "model": "m", "text": "alpha beta\ngamma"},
            ],
            schema.ANNOTATIONS: [
                # two annotators on r1: N counts r1 once
                {
                    "annotation_id": "a1",
                    "annotator": "ann1",
                    "response_id": "r1",
                    "spans": [
                        {
                            "span_id": 1,
                            "start": 0,
                            "end": 7,
                            "polarity": "like",
                            "reasons": ["like.useful_fact", "like.recap"],
                        },  # "one two": 2 words
                        {"span_id": 2, "start": 4, "end": 13, "polarity": "dislike", "reasons": ["dislike.verbose"]},
                    ],  # "two three": 2 words
                    "response_reasons": [{"reason": "dislike.shallow"}],
                },
                {
                    "annotation_id": "a2",
                    "annotator": "ann2",
                    "response_id": "r1",
                    "spans": [
                        {"span_id": 1, "start": 8, "end": 23, "polarity": "dislike", "reasons": ["dislike.verbose"]}
                    ],
                },  # "three four five": 3 words
                {
                    "annotation_id": "a3",
                    "annotator": "ann1",
                    "response_id": "r2",
                    "spans": [{"span_id": 1, "start": 6, "end": 16, "polarity": "like", "reasons": []}],
                },  # "beta\ngamma": 2
            ],
        }
    )
    return repo


def test_table1_matches_hand_counts(tmp_path):
    repo = _small_repo(tmp_path / "r")
    stats = compute_annotation_stats(
        *(repo.read(c) for c in (schema.ANNOTATIONS, schema.RESPONSES, schema.QUERIES, schema.DOCUMENTS))
    )
    news, wiki = stats.domains
    assert (news.domain, news.responses, news.likes, news.dislikes, news.reasons, news.words) == (
        "news",
        1,
        1,
        2,
        5,
        7,
    )
    assert (wiki.domain, wiki.responses, wiki.likes, wiki.dislikes, wiki.reasons, wiki.words) == (
        "wiki",
        1,
        1,
        0,
        0,
        2,
    )
    t = stats.total
    assert (t.responses, t.likes, t.dislikes, t.reasons, t.words) == (2, 2, 2, 5, 9)
    assert stats.span_reasons[("dislike", "dislike.verbose")] == 2 and stats.response_reasons["dislike.shallow"] == 1
    assert stats.annotators == 2 and stats.annotations == 3
    assert "| **Total** | 2 | 2 | 2 | 5 | 9 |" in format_table1(stats)


def test_stats_command_prints_and_writes_the_card(tmp_path, capsys):
    repo = _small_repo(tmp_path / "r")
    assert main(["stats", str(repo.path)]) == 0
    out = capsys.readouterr().out
    assert "| news | 1 | 1 | 2 | 5 | 7 |" in out
    assert "| like | `like.useful_fact` | Useful fact | 1 | 0 |" in out
    assert "| news | 1 | 1 | 2 | 5 | 7 |" in (repo.path / "README.md").read_text()


def test_cli_import_stats_validate_in_a_subprocess(tmp_path):
    out = tmp_path / "qaf"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "spanpref.cli",
            "import",
            "qa-feedback",
            "bundled",
            "--output",
            str(out),
            "--limit",
            "20",
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "converted 20, rejected 0" in run.stdout and "annotations: 20 row(s)" in run.stdout
    run = subprocess.run([sys.executable, "-m", "spanpref.cli", "validate", str(out)], capture_output=True, text=True)
    assert run.returncode == 0 and "0 problem(s)" in run.stdout
    # a second import without --overwrite fails with a one-line error and exit code 2
    run = subprocess.run(
        [sys.executable, "-m", "spanpref.cli", "import", "qa-feedback", "--output", str(out)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and run.stderr.startswith("error: ") and "--overwrite" in run.stderr
    assert "Traceback" not in run.stderr


def test_validate_reports_broken_rows(tmp_path, capsys):
    repo = _small_repo(tmp_path / "r")
    rows = repo.read(schema.ANNOTATIONS)
    rows[0]["spans"][0]["reasons"] = ["like.invented"]
    repo.write({schema.ANNOTATIONS: rows}, validate=False)
    assert main(["validate", str(repo.path)]) == 1
    out = capsys.readouterr().out
    assert "annotations[0] (a1): span 1: reason 'like.invented' is not a like reason" in out


def test_config_file_sets_defaults_and_flags_override(tmp_path, capsys):
    cfg = tmp_path / "import.yaml"
    cfg.write_text(f"output: {tmp_path / 'from-yaml'}\nlimit: 3\n")
    assert main(["import", "qa-feedback", "--config", str(cfg), "--limit", "4"]) == 0
    assert DatasetRepo(tmp_path / "from-yaml").count(schema.ANNOTATIONS) == 4
    cfg.write_text("output: x\nlimitt: 3\n")
    assert main(["import", "qa-feedback", "--config", str(cfg)]) == 2
    assert "unknown key(s) ['limitt']" in capsys.readouterr().err


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in ("import", "stats", "validate", "push", "taxonomy"):
        assert name in out
