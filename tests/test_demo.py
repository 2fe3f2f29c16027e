"""The main job, reduced: `spanpref demo` end to end on the bundled model and data (the README's first command)."""

from __future__ import annotations

import json

import datasets
import pytest

from spanpref import schema
from spanpref.cli import main
from spanpref.demo import STAGES, Demo, DemoConfig, DemoState
from spanpref.errors import SpanprefError
from spanpref.repo import open_repo


@pytest.mark.slow
@pytest.mark.server
def test_reduced_demo_end_to_end_then_resume(tmp_path, capsys):
    run = tmp_path / "demo"
    # Reduced: the rewriter is the bundled SmolLM2 on llama.cpp as in the full demo, but the tuned and evaluated
    # model is the tiny random Llama, so the three training runs and the generation take seconds, not minutes.
    # max_length 2048: the tiny 1,000-token tokenizer makes a prompt + answer ~1,000-1,400 tokens, and grouped
    # training drops (and counts) what does not fit instead of cutting it.
    argv = [
        "demo",
        "--output",
        str(run),
        "--examples",
        "12",
        "--train-steps",
        "2",
        "--sft-train-steps",
        "2",
        "--eval-prompts",
        "3",
        "--eval-max-new-tokens",
        "24",
        "--rounds",
        "200",
        "--max-length",
        "2048",
        "--model",
        "tiny",
    ]
    assert main(argv) == 0
    state = json.loads((run / "demo.json").read_text())
    assert list(state["done"]) == list(STAGES)

    data = run / "data"
    chains = datasets.load_dataset(str(data), "chains", split="train")
    assert len(chains) > 0 and {c["rewriter"] for c in chains} == {"human", "local"}
    # the model rewriter runs on a few annotations beside the human chains; training uses the human ones
    rewriter_of = {c["chain_id"]: c["rewriter"] for c in chains}
    assert sum(r == "local" for r in rewriter_of.values()) <= 6
    stepwise = datasets.load_dataset(str(data), schema.PAIRS_STEPWISE, split="train")
    assert len(stepwise) > 0 and {rewriter_of[p["chain_id"]] for p in stepwise} == {"human"}
    outputs = datasets.load_dataset(str(data), "eval_outputs", split="train")
    models = {o["model"] for o in outputs}
    assert "base" in models and len(models) >= 2, state["notes"]
    per_model = {m: sum(o["model"] == m for o in outputs) for m in models}
    assert len(set(per_model.values())) == 1  # every model answered the same prompts
    judgments = datasets.load_dataset(str(data), "judgments", split="train")
    n_prompts = next(iter(per_model.values()))
    assert len(judgments) == n_prompts * len(models) * (len(models) - 1) // 2  # every pair on every prompt
    ratings = datasets.load_dataset(str(data), "ratings", split="train")
    assert {r["model"] for r in ratings} == models
    assert sum(r["rating"] for r in ratings) / len(ratings) == pytest.approx(1500, abs=1e-6)

    report = (run / "report" / "report.md").read_text()
    assert "| base |" in report or "| base " in report
    assert (run / "report" / "ratings.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("sft", "apo-down", "dpo-ab"):
        card = run / "models" / name / "README.md"
        if card.exists():
            assert "## How it was made" in card.read_text()
    results = json.loads((run / "models" / "apo-down" / "spanpref_results.json").read_text())
    assert results["steps"] == 2 and 2 <= results["train_examples_seen"] <= results["train_examples"]
    assert f"2 steps trained on {results['train_examples_seen']} of the" in state["notes"]["apo_down"]
    out = capsys.readouterr().out
    assert "Where things are:" in out and "spanpref push" in out

    # a rerun finds every stage done and changes nothing
    assert main(argv) == 0
    assert json.loads((run / "demo.json").read_text()) == state


def test_a_failing_stage_stops_the_demo_and_is_not_recorded_done(tmp_path):
    demo = Demo(DemoConfig(output=str(tmp_path / "run")))
    demo.run.mkdir(parents=True)
    earlier = STAGES[: STAGES.index("elo")]
    DemoState(done=dict.fromkeys(earlier, 1.0), notes=dict.fromkeys(earlier, "")).save(demo.state_path)
    # judgments by another judge only: the elo stage rates the `reference` judge and has nothing to rate
    rows = [schema.Judgment(f"j{i}", "other", f"q{i}", "base", "sft", "model_a") for i in range(3)]
    open_repo(demo.data, must_exist=False).write({schema.JUDGMENTS: rows})
    with pytest.raises(SpanprefError, match="reference"):
        demo.run_all()
    state = DemoState.load(demo.state_path)
    assert "elo" not in state.done and list(state.done) == list(earlier)
    assert not (demo.report / "report.md").exists()
