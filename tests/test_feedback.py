"""AI span feedback: quotes to offsets, reply parsing, the annotate stage (rows, provenance, problems, A/B choices),
resuming after a real kill, chains restricted to one annotator, the reward-model annotator on a trained tiny
model, and the llm annotator against a real llama.cpp server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from spanpref import schema
from spanpref.backends import Backend, Completion, Usage
from spanpref.errors import InputError, UsageError
from spanpref.feedback.annotate import AIAnnotatorConfig, annotate_with_ai
from spanpref.feedback.annotators import (
    annotation_schema,
    annotator_needs_backend,
    load_annotator_settings,
    parse_annotation_reply,
)
from spanpref.feedback.quotes import locate_quote
from spanpref.repo import open_repo
from spanpref.taxonomy import load_taxonomy

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
ANSWER_START, ANSWER_END = "## Answer\n", "\n\nReply with the JSON object."


def answer_of(messages: list[dict]) -> str:
    user = messages[-1]["content"]
    return user.split(ANSWER_START, 1)[1].rsplit(ANSWER_END, 1)[0]


def first_sentence(text: str) -> str:
    return text.split(". ", 1)[0]


class QuotingBackend(Backend):
    """Stands in for a model: dislikes the first sentence of every answer (and quotes a passage that is not there),
    prefers answer A; replies with broken JSON for the answers listed in `broken`. Deterministic, so a resumed run
    must give the rows an uninterrupted one gives."""

    def __init__(self, delay: float = 0.0, broken: tuple[str, ...] = ()):
        self.usage = Usage()
        self.delay = delay
        self.broken = broken
        self.calls: list[str] = []

    @property
    def model_id(self) -> str:
        return "stand-in/quoting"

    def iter_generate(self, requests, config, response_format=None):
        for i, messages in enumerate(requests):
            time.sleep(self.delay)
            if "## Answer A" in messages[-1]["content"]:
                self.calls.append("compare")
                yield i, [Completion(json.dumps({"rationale": "A is on topic.", "choice": "a"}), 50, 10, "stop")]
                continue
            answer = answer_of(messages)
            self.calls.append(answer)
            if any(answer.startswith(b) for b in self.broken):
                yield i, [Completion('{"spans": [{"quote": "unfinished', 50, 512, "length")]
                continue
            reply = {
                "spans": [
                    {"quote": first_sentence(answer), "polarity": "dislike", "reasons": ["dislike.off_topic"]},
                    {"quote": "a passage nobody wrote", "polarity": "dislike", "reasons": ["dislike.verbose"]},
                ],
                "response_reasons": ["dislike.shallow"],
            }
            yield i, [Completion(json.dumps(reply), 100, 40, "stop")]


# ---------------------------------------------------------------------------------------------------
# quotes and replies
# ---------------------------------------------------------------------------------------------------
def test_quotes_are_placed_only_where_they_occur_exactly_once():
    text = "I \u2764\ufe0f \U0001f40d snakes. \U0001f40d bites. The end, the end."
    # code points: I, space, heart, variation selector, space, snake, space -> "snakes" starts at 7
    m = locate_quote(text, "snakes")
    assert (m.status, m.start, m.end) == ("ok", 7, 13) and text[7:13] == "snakes"
    m = locate_quote(text, "\U0001f40d bites")
    assert m.ok and (m.start, m.end) == (15, 22) and text[m.start : m.end] == "\U0001f40d bites"
    assert locate_quote(text, "  snakes.  ").ok  # surrounding whitespace is not part of the passage
    snake = locate_quote(text, "\U0001f40d")
    assert (snake.status, snake.occurrences, snake.start) == ("ambiguous", 2, -1)
    assert locate_quote(text, "the end").ok and locate_quote(text, "end").status == "ambiguous"
    assert locate_quote("aaa", "aa").status == "ambiguous"  # overlapping occurrences count
    assert locate_quote(text, "serpents").status == "missing"
    assert locate_quote(text, "Snakes").status == "missing"  # exact: no case folding
    assert locate_quote(text, "   ").status == "empty"


def test_reply_parsing_records_what_it_cannot_use():
    tax = load_taxonomy()
    text = "Paris is in Italy. It is big. It is big. Trains run often."
    reply = {
        "spans": [
            {"quote": "Paris is in Italy.", "polarity": "dislike", "reasons": ["dislike.factually_wrong", "made.up"]},
            {"quote": "It is big.", "polarity": "dislike", "reasons": ["dislike.repetitive"]},  # twice in the text
            {"quote": "Rome is in France.", "polarity": "dislike", "reasons": ["dislike.factually_wrong"]},
            {"quote": "Paris is in Italy.", "polarity": "dislike", "reasons": ["dislike.confusing"], "note": "hm"},
            {"quote": "Trains run often.", "polarity": "like", "reasons": ["like.useful_fact", "dislike.verbose"]},
            {"quote": "Trains", "polarity": "meh", "reasons": []},
            "not an object",
        ],
        "response_reasons": ["dislike.shallow", "nonsense"],
    }
    parsed = parse_annotation_reply(json.dumps(reply), text, tax)
    assert [(s.span_id, text[s.start : s.end], s.polarity) for s in parsed.spans] == [
        (1, "Paris is in Italy.", "dislike"),
        (2, "Trains run often.", "like"),
    ]
    # the passage quoted twice is one span with both sets of reasons; the unknown reason becomes `other` + a note
    assert parsed.spans[0].reasons == ["dislike.factually_wrong", "dislike.other", "dislike.confusing"]
    assert "made.up" in parsed.spans[0].note and "hm" in parsed.spans[0].note
    assert parsed.spans[1].reasons == ["like.useful_fact", "like.other"]  # a dislike reason is not a like reason
    kinds = [p["kind"] for p in parsed.problems]
    assert sorted(kinds) == sorted(
        [
            "unknown_reason",
            "ambiguous_quote",
            "missing_quote",
            "unknown_reason",
            "malformed_span",
            "malformed_span",
            "unknown_reason",
        ]
    )
    ambiguous = next(p for p in parsed.problems if p["kind"] == "ambiguous_quote")
    assert (ambiguous["quote"], ambiguous["occurrences"]) == ("It is big.", 2)
    assert [r.reason for r in parsed.response_reasons] == ["dislike.shallow", "dislike.other"]
    # what was placed passes the data contract
    assert schema.check_spans([schema.to_row(s) for s in parsed.spans], text, tax) == []
    with pytest.raises(InputError, match="not JSON"):
        parse_annotation_reply('{"spans": [', text, tax)
    with pytest.raises(InputError, match="'spans'"):
        parse_annotation_reply('{"answer": 1}', text, tax)


def test_the_reply_schema_lists_the_taxonomy():
    tax = load_taxonomy()
    settings, _ = load_annotator_settings("llm")
    body = annotation_schema(tax, settings)["json_schema"]["schema"]
    dislike, like = body["properties"]["spans"]["items"]["anyOf"]
    assert dislike["properties"]["polarity"]["const"] == "dislike"
    assert dislike["properties"]["reasons"]["items"]["enum"] == [r.id for r in tax.reasons("dislike")]
    assert like["properties"]["reasons"]["items"]["enum"] == [r.id for r in tax.reasons("like")]
    assert body["properties"]["spans"]["maxItems"] == settings.max_spans
    assert annotator_needs_backend("llm") and not annotator_needs_backend("reward-models")
    free, _ = load_annotator_settings("llm", constrain_reasons=False)
    item = annotation_schema(tax, free)["json_schema"]["schema"]["properties"]["spans"]["items"]
    assert item["properties"]["reasons"]["items"] == {"type": "string"}


# ---------------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qaf(tmp_path_factory) -> Path:
    from spanpref.importers.qa_feedback import import_qa_feedback

    folder = tmp_path_factory.mktemp("qaf") / "repo"
    import_qa_feedback("bundled", folder, limit=6)
    return folder


@pytest.fixture
def repo_copy(qaf, tmp_path) -> Path:
    folder = tmp_path / "repo"
    shutil.copytree(qaf, folder)
    return folder


def test_the_stage_writes_ai_rows_beside_the_human_ones(repo_copy):
    repo = open_repo(repo_copy)
    humans = repo.read(schema.ANNOTATIONS)
    responses = {r["response_id"]: r for r in repo.read(schema.RESPONSES)}
    broken = responses[humans[2]["response_id"]]["text"][:40]
    backend = QuotingBackend(broken=(broken,))
    report = annotate_with_ai(str(repo_copy), AIAnnotatorConfig(chunk_size=4, progress=False), backend)

    rows = repo.read(schema.ANNOTATIONS)
    assert rows[: len(humans)] == humans  # the people's rows are untouched
    ai = [r for r in rows if r["annotator"] == "ai:llm"]
    # default: the responses a person annotated (6), one of which never gave JSON (2 attempts)
    assert sorted(r["response_id"] for r in ai) == sorted(h["response_id"] for h in humans if h is not humans[2])
    for r in ai:
        text = responses[r["response_id"]]["text"]
        assert r["annotation_id"] == f"{r['response_id']}-ai-llm" and r["taxonomy"] == "spanpref-default@1"
        [s] = r["spans"]
        assert text[s["start"] : s["end"]] == first_sentence(text).strip()
        assert (s["polarity"], s["reasons"]) == ("dislike", ["dislike.off_topic"])
        assert [x["reason"] for x in r["response_reasons"]] == ["dislike.shallow"]
    assert (report.selected, report.annotated, report.failed, report.skipped) == (6, 5, 1, 0)
    assert report.format_errors == 2 and report.problems["missing_quote"] == 5 and report.problems["failed"] == 1
    assert report.spans == {"dislike": 5, "like": 0} and report.response_reasons == 5
    assert (report.prompt_tokens, report.completion_tokens) == (5 * 100 + 2 * 50, 5 * 40 + 2 * 512)
    assert "format errors (reply not the JSON asked for): 2" in report.summary()

    run = yaml.safe_load((repo_copy / "ai_annotators" / "llm.yaml").read_text())
    assert run["model"] == "stand-in/quoting" and run["annotator"] == "ai:llm" and run["kind"] == "llm"
    assert run["prompt"].startswith("annotators/llm@") and run["settings"]["temperature"] == 0.0
    logged = [json.loads(line) for line in (repo_copy / "logs" / "annotate-ai-llm_problems.jsonl").open()]
    assert {p["kind"] for p in logged if p["response_id"] == humans[2]["response_id"]} == {"format_error", "failed"}
    assert "cut off at the token limit" in next(p["error"] for p in logged if p["kind"] == "format_error")

    # a rerun with the same settings has nothing left to do; other settings under the same name are refused
    again = QuotingBackend(broken=(broken,))
    report2 = annotate_with_ai(str(repo_copy), AIAnnotatorConfig(progress=False), again)
    assert report2.skipped == 5 and again.calls == [responses[humans[2]["response_id"]]["text"]] * 2
    with pytest.raises(UsageError, match="other settings"):
        annotate_with_ai(str(repo_copy), AIAnnotatorConfig(temperature=0.5, progress=False), QuotingBackend())
    annotate_with_ai(
        str(repo_copy), AIAnnotatorConfig(temperature=0.5, overwrite=True, progress=False), QuotingBackend()
    )
    ai = [r for r in repo.read(schema.ANNOTATIONS) if r["annotator"] == "ai:llm"]
    assert len(ai) == 6 and len({r["annotation_id"] for r in ai}) == 6


def test_all_responses_and_ab_choices(repo_copy):
    repo = open_repo(repo_copy)
    cfg = AIAnnotatorConfig(name="judge", responses="all", limit=8, compare=True, progress=False)
    report = annotate_with_ai(str(repo_copy), cfg, QuotingBackend())
    ai = [r for r in repo.read(schema.ANNOTATIONS) if r["annotator"] == "ai:judge"]
    assert report.selected == 8 and len(ai) == 8  # responses without a human annotation too
    query_of = {r["response_id"]: r["query_id"] for r in repo.read(schema.RESPONSES)}
    queries = {query_of[a["response_id"]] for a in ai}
    human = [c for c in repo.read(schema.COMPARISONS) if c["annotator"] != "ai:judge"]
    pairs = {(c["response_a"], c["response_b"]): c for c in human if query_of[c["response_a"]] in queries}
    mine = [c for c in repo.read(schema.COMPARISONS) if c["annotator"] == "ai:judge"]
    assert len(mine) == min(len(pairs), 8) and all(c["choice"] == "a" and c["rationale"] for c in mine)
    assert {(c["response_a"], c["response_b"]) for c in mine} <= set(pairs)
    humans_choice = [pairs[(c["response_a"], c["response_b"])]["choice"] for c in mine]
    assert report.choice_agreement == pytest.approx(humans_choice.count("a") / len(humans_choice))
    assert (report.prompt_tokens, report.completion_tokens) == (8 * 100 + 8 * 50, 8 * 40 + 8 * 10)
    with pytest.raises(UsageError, match="needs a generation backend"):
        annotate_with_ai(str(repo_copy), AIAnnotatorConfig(name="x", progress=False), None)


def test_chains_can_be_restricted_to_one_annotator(repo_copy):
    from spanpref.chains.build import load_contexts

    annotate_with_ai(str(repo_copy), AIAnnotatorConfig(progress=False), QuotingBackend())
    repo = open_repo(repo_copy)
    ai = {c.annotation_id for c in load_contexts(repo, "local", "m", annotator="ai:llm")}
    human = {c.annotation_id for c in load_contexts(repo, "local", "m", annotator="human")}
    every = {c.annotation_id for c in load_contexts(repo, "local", "m")}
    assert ai == {a["annotation_id"] for a in repo.read(schema.ANNOTATIONS) if a["annotator"] == "ai:llm"}
    assert len(ai) == 6 and human and not ai & human and every == ai | human
    assert all(c.annotator == "ai:llm" for c in load_contexts(repo, "local", "m", annotator="ai:llm"))


def test_a_journal_left_after_the_merge_adds_nothing_twice(repo_copy, monkeypatch):
    from spanpref.journal import Journal

    # a kill between the merge and clearing the journal: the journal's rows are in the config already
    monkeypatch.setattr(Journal, "clear", lambda self: self.close())
    annotate_with_ai(str(repo_copy), AIAnnotatorConfig(progress=False), QuotingBackend())
    assert (repo_copy.parent / ".repo.journal" / "annotate-ai-llm.jsonl").is_file()
    monkeypatch.undo()
    backend = QuotingBackend()
    report = annotate_with_ai(str(repo_copy), AIAnnotatorConfig(progress=False), backend)
    assert backend.calls == [] and report.skipped == 6
    ai = [a for a in open_repo(repo_copy).read(schema.ANNOTATIONS) if a["annotator"] == "ai:llm"]
    assert len(ai) == len({a["annotation_id"] for a in ai}) == 6
    logged = (repo_copy / "logs" / "annotate-ai-llm_problems.jsonl").read_text().splitlines()
    assert len(logged) == len(set(logged)) == 6  # one missing quote per response, once


KILL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_feedback import QuotingBackend
from spanpref.feedback.annotate import AIAnnotatorConfig, annotate_with_ai
annotate_with_ai({folder!r}, AIAnnotatorConfig(responses="all", limit=10, chunk_size=1, progress=False),
                 QuotingBackend(delay={delay}))
"""


def _run_stage(folder: Path, delay: float) -> subprocess.Popen:
    script = KILL_SCRIPT.format(tests=str(TESTS), folder=str(folder), delay=delay)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_killed_run_resumes_without_duplicates_or_losses(qaf, tmp_path):
    folder, reference = tmp_path / "killed", tmp_path / "whole"
    shutil.copytree(qaf, folder)
    shutil.copytree(qaf, reference)
    annotate_with_ai(str(reference), AIAnnotatorConfig(responses="all", limit=10, progress=False), QuotingBackend())
    journal = tmp_path / ".killed.journal" / "annotate-ai-llm.jsonl"

    proc = _run_stage(folder, delay=0.4)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.is_file() and len(journal.read_text().splitlines()) >= 4:  # the run line + 3 responses
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = [json.loads(line) for line in journal.read_text().splitlines()[1:]]
    assert 3 <= len(done) < 10
    # killed before the merge: the config still has only the people's rows
    assert all(a["annotator"] == "qa-feedback" for a in open_repo(folder).read(schema.ANNOTATIONS))

    backend = QuotingBackend()
    report = annotate_with_ai(str(folder), AIAnnotatorConfig(responses="all", limit=10, progress=False), backend)
    assert report.skipped == len(done) and report.annotated == 10
    assert len(backend.calls) == 10 - len(done)  # only what the killed run had not finished
    assert not journal.exists()
    got = [a for a in open_repo(folder).read(schema.ANNOTATIONS) if a["annotator"] == "ai:llm"]
    want = [a for a in open_repo(reference).read(schema.ANNOTATIONS) if a["annotator"] == "ai:llm"]
    assert len({a["annotation_id"] for a in got}) == len(got) == 10
    assert sorted(got, key=lambda a: a["annotation_id"]) == sorted(want, key=lambda a: a["annotation_id"])


# ---------------------------------------------------------------------------------------------------
# reward models and a real server
# ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_reward_model_annotator_marks_what_the_models_predict(tmp_path):
    from spanpref.importers.qa_feedback import import_qa_feedback
    from spanpref.rewards.reward_model import SpanRewardModel, parse_args, train_reward_models
    from spanpref.rewards.segment import split_segments

    folder = tmp_path / "repo"
    import_qa_feedback("bundled", folder, limit=12)
    out = tmp_path / "rm"
    recipe = ROOT / "recipes/rewards/reward_model/config_tiny.yaml"
    train_reward_models(
        *parse_args(
            [
                "--config",
                str(recipe),
                "--dataset_name",
                str(folder),
                "--output_dir",
                str(out),
                "--group_names",
                "relevance",
                "completeness",
            ]
        )
    )
    models = [str(out / "relevance"), str(out / "completeness")]
    repo = open_repo(folder)
    responses = {r["response_id"]: r for r in repo.read(schema.RESPONSES)}
    queries = {q["query_id"]: q["query"] for q in repo.read(schema.QUERIES)}
    targets = [responses[a["response_id"]] for a in repo.read(schema.ANNOTATIONS)][:5]
    rel, comp = SpanRewardModel(models[0]), SpanRewardModel(models[1])
    probs = rel.error_probs([queries[r["query_id"]] for r in targets], [r["text"] for r in targets])
    # a threshold inside the spread of a random tiny model's probabilities, so some segments are marked, some not
    flat = sorted(p for ps in probs for p in ps)
    threshold = flat[len(flat) // 2]

    cfg = AIAnnotatorConfig(
        annotator="reward-models", reward_models=models, threshold=threshold, limit=5, progress=False
    )
    report = annotate_with_ai(str(folder), cfg)
    rows = {a["response_id"]: a for a in repo.read(schema.ANNOTATIONS) if a["annotator"] == "ai:reward-models"}
    assert report.annotated == 5 and len(rows) == 5
    reasons = list(rel.group.reasons)
    for r, ps in zip(targets, probs, strict=True):
        segments = split_segments(r["text"], "sub_sentence")
        want = [(s.start, s.end) for s, p in zip(segments, ps, strict=True) if p >= threshold]
        got = rows[r["response_id"]]["spans"]
        assert [(s["start"], s["end"]) for s in got] == want
        assert all(
            s["reasons"] == reasons and s["note"].startswith("relevance reward model: P(error) = ") for s in got
        )
        p_whole = comp.error_probs([queries[r["query_id"]]], [r["text"]])[0][0]
        whole = rows[r["response_id"]]["response_reasons"]
        assert [x["reason"] for x in whole] == (list(comp.group.reasons) if p_whole >= threshold else [])
    assert 0 < report.spans["dislike"] < sum(len(ps) for ps in probs)
    run = yaml.safe_load((folder / "ai_annotators" / "reward-models.yaml").read_text())
    assert run["model"] == ", ".join(models) and run["settings"]["threshold"] == threshold


@pytest.mark.slow
@pytest.mark.server
def test_llm_annotator_against_a_real_llama_server(qaf, tmp_path, llama_server):
    from spanpref.backends import build_backend

    folder = tmp_path / "repo"
    shutil.copytree(qaf, folder)
    backend = build_backend("openai", base_url=llama_server.base_url, max_concurrency=2, progress=False)
    # the fixture's server has 2048 tokens of context per slot: a shorter document leaves room for the reply
    cfg = AIAnnotatorConfig(limit=2, max_document_chars=1500, progress=False)
    report = annotate_with_ai(str(folder), cfg, backend)
    assert report.selected == 2 and report.annotated + report.failed == 2
    # the server enforces the JSON schema while decoding: only a reply cut at the token limit can break it
    assert report.annotated >= 1
    assert report.completion_tokens > 0 and report.model
    repo = open_repo(folder)
    texts = {r["response_id"]: r["text"] for r in repo.read(schema.RESPONSES)}
    tax = load_taxonomy()
    for a in repo.read(schema.ANNOTATIONS):
        if a["annotator"] == "ai:llm":
            assert schema.check_spans(a["spans"], texts[a["response_id"]], tax) == []
    placed = report.spans["dislike"] + report.spans["like"]
    unplaced = sum(report.problems.get(k, 0) for k in ("missing_quote", "ambiguous_quote", "empty_quote"))
    assert unplaced == 0 or (folder / "logs" / "annotate-ai-llm_problems.jsonl").is_file()
    assert placed == sum(len(a["spans"]) for a in repo.read(schema.ANNOTATIONS) if a["annotator"] == "ai:llm")
