"""`spanpref eval generate | judge | elo | report` end to end through the command line."""

from __future__ import annotations

import logging

import pytest

from spanpref import schema
from spanpref.cli import main
from spanpref.evaluation.elo import compute_elo
from spanpref.evaluation.generate import parse_model_specs, select_queries
from spanpref.importers.qa_feedback import import_qa_feedback
from spanpref.repo import DatasetRepo


def test_model_specs():
    assert parse_model_specs("base=HuggingFaceTB/SmolLM2, outputs/dpo") == [
        ("base", "HuggingFaceTB/SmolLM2"),
        ("outputs/dpo", "outputs/dpo"),
    ]
    with pytest.raises(ValueError, match=r"model name\(s\) \['a'\] given twice"):
        parse_model_specs(["a=x", "a=y"])
    with pytest.raises(ValueError, match="bad model spec '=x'"):
        parse_model_specs("=x")


def qa_feedback_judgments(folder) -> DatasetRepo:
    """qa-feedback's human preferences as judgments by "human" among four models (the answer slots)."""
    import_qa_feedback("bundled", folder, limit=60)
    repo = DatasetRepo(folder)
    responses = {r["response_id"]: r for r in repo.read(schema.RESPONSES)}
    rows = []
    for c in repo.read(schema.COMPARISONS):
        a, b = responses[c["response_a"]], responses[c["response_b"]]
        rows.append(
            {
                "judgment_id": c["comparison_id"],
                "judge": "human",
                "query_id": a["query_id"],
                "model_a": a["prompt_version"].split(":")[1],
                "model_b": b["prompt_version"].split(":")[1],
                "winner": {"a": "model_a", "b": "model_b", "tie": "tie"}[c["choice"]],
            }
        )
    outputs = [
        {
            "output_id": r["response_id"],
            "model": r["prompt_version"].split(":")[1],
            "query_id": r["query_id"],
            "text": r["text"],
        }
        for r in responses.values()
    ]
    repo.write({schema.JUDGMENTS: rows, schema.EVAL_OUTPUTS: outputs})
    return repo


def test_elo_judge_and_report_commands(tmp_path, capsys):
    repo = qa_feedback_judgments(tmp_path / "r")
    assert main(["eval", "elo", str(repo.path), "--judge", "human", "--rounds", "200", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "judge human: 360 judgment(s), 0 unparsable" in out and "prediction 1" in out
    ratings = repo.read(schema.RATINGS)
    expected = compute_elo(repo.read(schema.JUDGMENTS))
    assert {r["model"]: r["rating"] for r in ratings} == pytest.approx(expected, abs=1e-6)
    best = max(ratings, key=lambda r: r["rating"])
    assert best["ci_low"] == best["ci_high"] == 0 and all(r["rounds"] == 200 for r in ratings)
    assert all(r["ci_low"] <= r["diff"] <= r["ci_high"] for r in ratings)

    # a machine judge on the same outputs, then ratings for every judge and the report
    assert main(["eval", "judge", str(repo.path), "--judge", "reference", "--limit", "30"]) == 0
    assert "judge reference: 180 pair(s): 0 already judged, 180 judged now (0 unparsable)" in capsys.readouterr().out
    assert main(["eval", "elo", str(repo.path), "--rounds", "100"]) == 0
    assert {r["judge"] for r in repo.read(schema.RATINGS)} == {"human", "reference"}
    assert main(["eval", "elo", str(repo.path), "--judge", "human", "--rounds", "0"]) == 0  # replaces human only
    ratings = repo.read(schema.RATINGS)
    assert {r["judge"] for r in ratings} == {"human", "reference"}
    assert all(r["ci_low"] is None for r in ratings if r["judge"] == "human")
    capsys.readouterr()
    assert main(["eval", "report", str(repo.path), "--rounds", "100", "--output", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| Method | Elo (humans: human) | Elo (machine: reference) |" in text
    assert "| human | reference | 180 |" in text  # agreement on the 180 pairs both judged
    assert (tmp_path / "out" / "ratings.png").stat().st_size > 5000


def test_elo_command_errors_are_clear(tmp_path, capsys):
    import_qa_feedback("bundled", tmp_path / "r", limit=2)
    assert main(["eval", "elo", str(tmp_path / "r")]) == 2
    assert "has no judgments config; run `spanpref eval judge` first" in capsys.readouterr().err
    repo = DatasetRepo(tmp_path / "r")
    repo.write(
        {
            schema.JUDGMENTS: [
                {
                    "judgment_id": "j",
                    "judge": "x",
                    "query_id": "q",
                    "model_a": "m1",
                    "model_b": "m2",
                    "winner": "model_a",
                }
            ]
        }
    )
    assert main(["eval", "elo", str(tmp_path / "r"), "--rounds", "10"]) == 2
    assert "judge x: ['m1'] never lost to or tied with ['m2']" in capsys.readouterr().err
    assert main(["eval", "generate", str(tmp_path / "r"), "--models", "a=x"]) == 2
    assert "no test split" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.server
def test_generate_on_the_test_split_through_a_server_and_resume(tmp_path, llama_server, capsys, caplog):
    folder = tmp_path / "r"
    import_qa_feedback("bundled", folder, limit=20)
    assert main(["pairs", str(folder), "--constructions", "ab", "--seed", "0"]) == 0
    test_queries = select_queries(str(folder))
    repo = DatasetRepo(folder)
    assert test_queries == sorted({p["query_id"] for p in repo.read(schema.PAIRS_AB, "test")}) and test_queries
    args = [
        "eval",
        "generate",
        str(folder),
        "--models",
        "smol=a,smol-again=b",
        "--backend",
        "openai",
        "--base-url",
        llama_server.base_url,
        "--max-new-tokens",
        "12",
        "--max-document-chars",
        "300",
        "--seed",
        "7",
    ]
    with caplog.at_level(logging.INFO, logger="spanpref.generate"):
        assert main(args) == 0
    # each model's work is journaled under its own name, so that a killed run resumes model by model
    assert "eval_outputs_smol: attempt 1" in caplog.text and "eval_outputs_smol-again: attempt 1" in caplog.text
    rows = repo.read(schema.EVAL_OUTPUTS)
    assert sorted((r["model"], r["query_id"]) for r in rows) == sorted(
        (m, q) for m in ("smol", "smol-again") for q in test_queries
    )
    assert {(r["temperature"], r["top_p"], r["seed"]) for r in rows} == {(0.8, 0.95, 7)}
    assert all(r["text"].strip() for r in rows)
    capsys.readouterr()
    assert main(args) == 0  # nothing left to do
    assert "0 completed" in capsys.readouterr().out and repo.count(schema.EVAL_OUTPUTS) == len(rows)
    assert main(["eval", "generate", str(folder), "--models", "a", "--model", "x"]) == 2
    assert "--models" in capsys.readouterr().err
