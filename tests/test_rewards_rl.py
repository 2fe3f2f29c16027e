"""Dense-reward PPO on the tiny random Llama: every parameter moves, the outputs are written, raising a reward
model's weight steers the policy toward what it rewards, the recipes parse, and the `spanpref rewards` commands run
end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from spanpref.rewards.dense import PatternScorer, RewardComponent
from spanpref.rewards.ppo import RLArguments, pattern_frequency, train_rl

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "rewards"
PROMPTS = [
    {"query": f"question {i}", "document": "", "messages": [{"role": "user", "content": f"Question {i}?"}]}
    for i in range(8)
]
CAPITALS = "[A-Z]"  # the toy pattern: words with a capital letter (~20% of the tiny model's random words)


def tiny_args(tmp_path: Path, **kw) -> RLArguments:
    defaults = {
        "model_name_or_path": "tiny",
        "steps": 12,
        "batch_size": 16,
        "mini_batch_size": 16,
        "ppo_epochs": 2,
        "learning_rate": 5e-3,
        "max_new_tokens": 12,
        "kl_coef": 0.05,
        "use_cpu": True,
        "output_dir": str(tmp_path),
        "pattern": CAPITALS,
        "seed": 0,
    }
    return RLArguments(**{**defaults, **kw})


def sample_frequency(model, tokenizer, n: int = 48, seed: int = 123) -> float:
    """Pattern frequency in fresh samples of a policy (same prompts and seed for every policy compared)."""
    ids = tokenizer.apply_chat_template(
        PROMPTS[0]["messages"], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids.repeat(n, 1),
            attention_mask=torch.ones_like(ids).repeat(n, 1),
            do_sample=True,
            top_k=0,
            max_new_tokens=12,
            pad_token_id=tokenizer.pad_token_id,
        )
    return pattern_frequency(tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True), CAPITALS)


def test_one_ppo_step_moves_every_parameter_and_writes_its_outputs(tmp_path):
    from spanpref.models import resolve_model

    comp = [RewardComponent(PatternScorer(CAPITALS, "response"), 1.0, "prob")]
    res = train_rl(tiny_args(tmp_path, steps=2, ppo_epochs=1), components=comp, prompts=PROMPTS)
    base = load_file(str(Path(resolve_model("tiny")) / "model.safetensors"))
    trained = load_file(str(tmp_path / "policy" / "model.safetensors"))
    assert [k for k in base if torch.equal(base[k], trained[k])] == []
    head = load_file(str(tmp_path / "policy" / "value_head.safetensors"))
    assert head["weight"].abs().sum() > 0  # initialised to zero, so it was trained
    lines = [json.loads(x) for x in (tmp_path / "rl_history.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2] and lines == json.loads(json.dumps(res["history"]))
    assert {"reward", "kl", "reward/pattern", "policy_loss", "value_loss", "pattern_frequency"} <= set(lines[0])
    assert lines[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # the first rollout comes from the reference itself
    assert (tmp_path / "reward_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "spanpref_results.json").read_text())["steps"] == 2


def test_raising_a_reward_weight_steers_the_policy_toward_its_pattern(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spanpref.models import resolve_model

    path = resolve_model("tiny")
    tokenizer = AutoTokenizer.from_pretrained(path)
    start = sample_frequency(AutoModelForCausalLM.from_pretrained(path), tokenizer)
    freq, reward = {}, {}
    for weight in (0.0, 2.0):  # same seed, same prompts: only the weight of the pattern reward differs
        comp = [RewardComponent(PatternScorer(CAPITALS, "response"), weight, "prob")]
        res = train_rl(
            tiny_args(tmp_path / str(weight), save_model=False, plot=False), components=comp, prompts=PROMPTS
        )
        freq[weight] = sample_frequency(res["model"].policy.eval(), tokenizer)
        reward[weight] = [h["reward"] for h in res["history"]]
    assert reward[0.0] == [0.0] * 12  # weight 0: the pattern gives no reward at all
    assert freq[2.0] > freq[0.0] + 0.1 and freq[2.0] > start + 0.1, (start, freq)
    # the rewarded run's mean reward rises: last third above the first third
    assert sum(reward[2.0][-4:]) / 4 > sum(reward[2.0][:4]) / 4 + 0.2


def recipe_paths(kind: str) -> list[Path]:
    return sorted((RECIPES / kind).glob("*.yaml"))


def _bf16_off(path: Path) -> list[str]:
    # GPU recipes ask for bf16, which TrainingArguments refuses without a GPU; override it as a user would
    return (
        ["--bf16", "false"] if not torch.cuda.is_available() and yaml.safe_load(path.read_text()).get("bf16") else []
    )


@pytest.mark.parametrize("path", recipe_paths("reward_model"), ids=lambda p: p.name)
def test_reward_model_recipes_parse(path):
    from spanpref.rewards.groups import load_groups
    from spanpref.rewards.reward_model import parse_args

    args, training_args, model_args = parse_args(["--config", str(path), *_bf16_off(path)])
    assert model_args.model_name_or_path and load_groups(args.groups).names


@pytest.mark.parametrize("path", recipe_paths("rl"), ids=lambda p: p.name)
def test_rl_recipes_parse(path):
    from spanpref.rewards.ppo import parse_args

    args = parse_args(["--config", str(path)])
    assert len(args.reward_models) == 3 and args.reward_mode in ("sign", "prob")
    assert args.reward_weights is None or len(args.reward_weights) == 3


def test_there_are_cpu_and_gpu_recipes_and_unknown_keys_fail(tmp_path):
    from spanpref.rewards.ppo import parse_args

    assert {p.name for p in recipe_paths("rl")} >= {
        "config_tiny_cpu.yaml",
        "config_smollm2_cpu.yaml",
        "config_gpu.yaml",
    }
    assert {p.name for p in recipe_paths("reward_model")} >= {"config_smollm2_cpu.yaml", "config_smollm2_gpu.yaml"}
    bad = tmp_path / "bad.yaml"
    bad.write_text((RECIPES / "rl/config_tiny_cpu.yaml").read_text() + "kl_coeff: 0.1\n")
    with pytest.raises(ValueError, match="kl_coeff"):
        parse_args(["--config", str(bad)])


def test_rewards_commands_train_score_and_rl(tmp_path, capsys):
    from spanpref.cli import main
    from spanpref.importers.qa_feedback import import_qa_feedback

    repo = tmp_path / "qaf"
    import_qa_feedback("bundled", repo, limit=8)
    rms = tmp_path / "rms"
    assert (
        main(
            [
                "rewards",
                "train",
                str(repo),
                "--recipe",
                str(RECIPES / "reward_model/config_tiny.yaml"),
                "--output-dir",
                str(rms),
                "--set",
                "max_steps=1",
                "group_names=relevance factuality",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "relevance" in out and "factuality" in out and "majority-class baseline" in out
    assert sorted(p.name for p in rms.iterdir() if p.is_dir()) == ["factuality", "relevance"]

    scored = tmp_path / "scored.jsonl"
    assert (
        main(
            [
                "rewards",
                "score",
                str(repo),
                "--reward-models",
                str(rms / "relevance"),
                str(rms / "factuality"),
                "--weights",
                "0.3",
                "0.5",
                "--limit",
                "3",
                "--output",
                str(scored),
            ]
        )
        == 0
    )
    rows = [json.loads(x) for x in scored.read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert {s["model"] for s in row["segments"]} == {"relevance", "factuality"}
        assert all(abs(s["reward"]) in (0.3, 0.5) for s in row["segments"])
        assert row["total"] == pytest.approx(sum(s["reward"] for s in row["segments"]))

    rl = tmp_path / "rl"
    assert (
        main(
            [
                "rewards",
                "rl",
                str(repo),
                "--recipe",
                str(RECIPES / "rl/config_tiny_cpu.yaml"),
                "--output-dir",
                str(rl),
                "--set",
                "steps=2",
                "batch_size=4",
                "mini_batch_size=4",
                "max_new_tokens=8",
                f"reward_models={rms / 'relevance'} {rms / 'factuality'}",
                "reward_weights=0.3 0.5",
            ]
        )
        == 0
    )
    assert "step    2" in capsys.readouterr().out and (rl / "reward_curve.png").is_file()
    assert {"reward/relevance", "reward/factuality"} <= set(
        json.loads((rl / "rl_history.jsonl").read_text().split("\n")[0])
    )


def test_two_process_accelerate_launch(tmp_path):
    """The GPU recipes' path: `accelerate launch -m spanpref.rewards.ppo`, here as two gloo processes on the CPU;
    the logged reward is the mean over both processes' rollouts."""
    import os
    import subprocess
    import sys

    from spanpref.importers.qa_feedback import import_qa_feedback

    import_qa_feedback("bundled", tmp_path / "qaf", limit=4)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": "tiny",
                "dataset_name": str(tmp_path / "qaf"),
                "reward_models": [],
                "pattern": CAPITALS,
                "steps": 2,
                "batch_size": 4,
                "mini_batch_size": 2,
                "max_new_tokens": 8,
                "learning_rate": 1e-3,
                "use_cpu": True,
                "output_dir": str(tmp_path / "out"),
            }
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    # `--cpu --num_processes 2` starts one process in accelerate 1.15 (see test_training.accelerate_launch);
    # `--multi_gpu` with the recipe's use_cpu gives two gloo ranks
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "spanpref.rewards.ppo",
            "--config",
            str(recipe),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = [json.loads(x) for x in (tmp_path / "out/rl_history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2]  # written once, by the main process
    assert [h["rollouts"] for h in history] == [8, 8]  # 4 prompts on each of the 2 processes, gathered
    assert json.loads((tmp_path / "out/spanpref_results.json").read_text())["processes"] == 2
    assert (tmp_path / "out/policy/model.safetensors").is_file()
