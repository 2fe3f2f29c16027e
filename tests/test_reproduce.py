"""`spanpref reproduce`: the Table-2 protocol end to end on the tiny model, the selection rule and the reward-model
judge's verdicts."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import pytest
import yaml

from spanpref import schema
from spanpref.cli import main
from spanpref.errors import UsageError
from spanpref.evaluation.judges import (
    FIRST,
    SECOND,
    TIE,
    JudgeConfig,
    PairTask,
    RewardModelJudge,
    flagged_fraction,
    reward_model_verdict,
)
from spanpref.io import RESOLVED_CONFIG_FILE, RESULTS_FILE
from spanpref.reproduce import (
    CONSTRUCTIONS,
    LABELS,
    LOSSES,
    STAGES,
    ReproduceConfig,
    Reproduction,
    TrainingRun,
    load_profile,
    run_reproduction,
    select_runs,
)

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "recipes" / "reproduce"


def _best_by_hand(runs: list[tuple[str, float, dict]]) -> tuple[str, float]:
    """(loss, rate) of the highest accuracy, then margin, then the smaller rate; the first loss listed wins a tie."""
    best = None
    for loss, lr, after in runs:
        key = (after["eval_rewards/accuracies"], after["eval_rewards/margins"], -lr)
        if best is None or key > best[0]:
            best = (key, loss, lr)
    return best[1], best[2]


@pytest.mark.slow
def test_tiny_reproduction_end_to_end_then_a_rerun_skips_everything(tmp_path, monkeypatch):
    cfg = replace(load_profile(PROFILES / "tiny.yaml"), output=str(tmp_path / "run"))
    state = run_reproduction(cfg)
    assert list(state.done) == list(STAGES)
    run = Reproduction(cfg)

    # every method has a finite rating and interval under every judge, in the JSON and the table
    results = json.loads((run.report / "table2.json").read_text())
    assert results["judges"] == ["reference", "reward_models"]
    assert list(results["methods"]) == ["base", "sft", *CONSTRUCTIONS]
    for row in results["methods"].values():
        for judge in results["judges"]:
            for key in ("elo", "ci_low", "ci_high"):
                assert math.isfinite(row[key][judge]), (row["label"], judge, key)
            assert row["ci_low"][judge] <= row["diff"][judge] + 1e-9 or row["diff"][judge] == 0
    table = (run.report / "table2.md").read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    for key, label in LABELS.items():
        cells = rows[label].strip("| ").split(" | ")
        assert len(cells) == 1 + len(results["judges"]) + 4, rows[label]
        if key in CONSTRUCTIONS:
            row = results["methods"][key]
            assert cells[-4:] == [
                row["loss"],
                f"{row['learning_rate']:g}",
                str(row["train_pairs"]),
                str(row["pairs_seen"]),
            ]
    assert (run.report / "ratings.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    facts = results["run"]
    assert facts["settings"]["output"] == cfg.output and facts["versions"]["torch"]
    assert set(facts["stage_seconds"]) == set(STAGES) - {"elo"} and len(facts["run_seconds"]) == len(run.plan())
    assert facts["total_seconds"] == pytest.approx(sum(state.done[s] for s in STAGES if s != "elo"))
    assert "## How it was run" in table and f"{facts['total_seconds'] / 3600:.2f} h" in table
    ratings = run.data / "data" / schema.RATINGS
    assert ratings.is_dir()

    # the selection is the best validation run of each construction, read back from the runs' own results files
    sft_dir = str(run.models / "sft")
    from spanpref.models import resolve_model

    base = resolve_model("tiny")
    for construction in CONSTRUCTIONS:
        found = []
        for loss in LOSSES:
            for lr in cfg.learning_rates:
                out = run.models / construction / f"{loss}-lr{lr:g}"
                after = json.loads((out / RESULTS_FILE).read_text())["after"]
                found.append((loss, lr, after))
                resolved = yaml.safe_load((out / RESOLVED_CONFIG_FILE).read_text())
                assert resolved["script"]["dataset_config"] == CONSTRUCTIONS[construction]
                assert resolved["training"]["loss_type"] == [loss]
                start = resolved["model"]["model_name_or_path"]
                assert start == (base if construction == "ab" else sft_dir), (construction, start)
        row = results["methods"][construction]
        assert (row["loss"], row["learning_rate"]) == _best_by_hand(found), construction
        assert (
            0 < row["pairs_seen"] <= row["train_pairs"]
            and Path(row["model"]).name == f"{row['loss']}-lr{row['learning_rate']:g}"
        )
        # only the chosen run of a construction keeps its weights
        for loss, lr, _ in found:
            out = run.models / construction / f"{loss}-lr{lr:g}"
            assert (out / "model.safetensors").is_file() == (str(out) == row["model"]), out
    assert results["methods"]["sft"]["train_pairs"] > 0 and results["methods"]["base"]["train_pairs"] is None
    sft_seen = json.loads((run.models / "sft" / RESULTS_FILE).read_text())["train_examples_seen"]
    assert results["methods"]["sft"]["pairs_seen"] == sft_seen > 0

    # a rerun finds every stage done: no training, no change to the state
    from spanpref.training import run as training_run

    def no_training(*args, **kwargs):
        raise AssertionError("a finished reproduction trained again")

    monkeypatch.setattr(training_run, "train", no_training)
    assert run_reproduction(cfg) == state
    assert json.loads(run.state_path.read_text()) == json.loads(json.dumps(state.__dict__))

    # an interrupted preference stage: only the run without results trains again
    monkeypatch.undo()
    calls = []
    real_train = training_run.train

    def counting(stage, *args):
        calls.append(stage)
        return real_train(stage, *args)

    monkeypatch.setattr(training_run, "train", counting)
    (run.models / "stepwise" / f"apo_down-lr{cfg.learning_rates[0]:g}" / RESULTS_FILE).unlink()
    after_training = STAGES[STAGES.index("preference") :]
    partial = {k: v for k, v in state.done.items() if k not in after_training}
    run.state_path.write_text(json.dumps({**state.__dict__, "done": partial}))
    again = run_reproduction(cfg)
    assert calls == ["dpo"] and list(again.done) == list(STAGES)


def _fake_run(tmp_path: Path, loss: str, lr: float, acc: float, margin: float) -> TrainingRun:
    out = tmp_path / "ab" / f"{loss}-lr{lr:g}"
    out.mkdir(parents=True)
    after = {"eval_rewards/accuracies": acc, "eval_rewards/margins": margin, "eval_loss": 0.5}
    (out / RESULTS_FILE).write_text(json.dumps({"after": after, "train_examples": 7}))
    return TrainingRun("ab", loss, lr, str(out), "base", "recipe.yaml")


def test_the_selection_takes_accuracy_then_margin_then_the_smaller_rate(tmp_path):
    runs = [
        _fake_run(tmp_path, "sigmoid", 1e-3, 0.50, 0.9),
        _fake_run(tmp_path, "sigmoid", 1e-2, 0.75, 0.2),
        _fake_run(tmp_path, "apo_down", 1e-3, 0.75, 0.3),
        _fake_run(tmp_path, "apo_down", 1e-2, 0.75, 0.3),
    ]
    chosen = select_runs(runs)["ab"]["chosen"]
    assert (chosen["loss"], chosen["learning_rate"], chosen["train_pairs"]) == ("apo_down", 1e-3, 7)
    assert chosen["metrics"] == {"eval_rewards/accuracies": 0.75, "eval_rewards/margins": 0.3}
    # a higher accuracy beats any margin
    runs.append(_fake_run(tmp_path, "apo_zero", 1e-2, 0.80, -1.0))
    assert select_runs(runs)["ab"]["chosen"]["loss"] == "apo_zero"


def test_the_flagged_share_and_the_reward_model_verdict_by_hand():
    # two models: 1 of 2 sub-sentences and 1 of 1 response segment flagged -> 2 of 3
    assert flagged_fraction([[0.9, 0.1], [0.5]], 0.5) == Fraction(2, 3)
    assert flagged_fraction([[0.49], []], 0.5) == 0
    assert flagged_fraction([[], []], 0.5) == 0
    # equal shares tie however long the outputs are; the smaller share wins
    assert reward_model_verdict(Fraction(1, 3), Fraction(2, 6)) == TIE
    assert reward_model_verdict(Fraction(1, 4), Fraction(1, 3)) == FIRST
    assert reward_model_verdict(Fraction(2, 3), Fraction(1, 3)) == SECOND
    assert reward_model_verdict(Fraction(1, 4), Fraction(1, 3), tie_tolerance=0.1) == TIE


class _FakeRewardModel:
    """P(error) per segment, looked up by the response text."""

    def __init__(self, probs: dict[str, list[float]]):
        self.probs = probs

    def error_probs(self, queries, responses, segments=None, documents=None):
        return [self.probs[r] for r in responses]


def test_the_reward_model_judge_maps_its_verdict_back_through_the_shown_order():
    config = JudgeConfig(kind="reward_models", reward_models=["unused"], tie_tolerance=0.0, batch_size=1)
    judge = RewardModelJudge(config)
    # "clean": 1 of 3 segments flagged; "flawed": 2 of 2; "same": 1 of 3, like "clean"
    judge._models = [_FakeRewardModel({"clean": [0.9, 0.2, 0.1], "flawed": [0.6, 0.7], "same": [0.1, 0.8, 0.3]})]
    tasks = [
        PairTask("j1", "q", "query", "doc", None, "a", "b", "clean", "flawed", swapped=False),
        PairTask("j2", "q", "query", "doc", None, "a", "b", "clean", "flawed", swapped=True),
        PairTask("j3", "q", "query", "doc", None, "a", "b", "clean", "same", swapped=False),
    ]
    verdicts = {}
    judge.judge(tasks, lambda i, v: verdicts.__setitem__(i, v))
    assert [verdicts[i].verdict for i in range(3)] == [FIRST, SECOND, TIE]
    assert [t.winner(verdicts[i].verdict) for i, t in enumerate(tasks)] == [
        schema.WINNER_A,
        schema.WINNER_A,
        schema.WINNER_TIE,
    ]
    assert json.loads(verdicts[1].raw_output) == {
        "flagged_first": 2,
        "segments_first": 2,
        "flagged_second": 1,
        "segments_second": 3,
    }


def test_a_reward_model_judge_without_models_is_a_usage_error():
    with pytest.raises(UsageError, match="reward_models"):
        RewardModelJudge(JudgeConfig(kind="reward_models"))


@pytest.mark.parametrize("name", ["cpu", "gpu", "tiny"])
def test_every_profile_loads_and_plans_the_whole_grid(name):
    cfg = load_profile(name)
    runs = Reproduction(cfg).plan()
    assert len(runs) == len(CONSTRUCTIONS) * len(LOSSES) * len(cfg.learning_rates) and len(cfg.learning_rates) >= 2
    assert {r.construction for r in runs} == set(CONSTRUCTIONS) and {r.loss for r in runs} == set(LOSSES)
    for r in runs:
        assert r.start == (cfg.model if r.construction == "ab" else str(Reproduction(cfg).sft_dir))


def test_bad_settings_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="losses"):
        ReproduceConfig(losses=["hinge"])
    with pytest.raises(UsageError, match="learning_rates"):
        ReproduceConfig(learning_rates=[])
    with pytest.raises(UsageError, match="key=value"):
        ReproduceConfig(train_overrides=["bf16"])
    bad = tmp_path / "profile.yaml"
    bad.write_text("examples: 3\ncolour: blue\n")
    with pytest.raises(UsageError, match="colour"):
        load_profile(bad)


def test_the_command_plans_from_a_profile(capsys):
    assert main(["reproduce", "--config", str(PROFILES / "tiny.yaml"), "--learning-rates", "0.1", "--plan"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("20 preference runs") and "stepwise/apo_down-lr0.1" in out
    assert "judges: reference, reward_models" in out
