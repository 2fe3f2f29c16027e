"""Training: the losses against hand-computed values and TRL, every recipe parsed by its script's parser, real
two-process `accelerate launch` runs on pairs from the chains stage, LoRA, resume, model card and push."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from spanpref.training.losses import LOSSES, PreferenceLogps, get_loss

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


def logps(chosen, rejected, ref_chosen, ref_rejected) -> PreferenceLogps:
    t = lambda v: torch.tensor([float(v)], dtype=torch.float64)  # noqa: E731
    return PreferenceLogps(t(chosen), t(rejected), t(ref_chosen), t(ref_rejected))


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# ---------------------------------------------------------------------------------------------------
# Losses: pure functions of log-probabilities
# ---------------------------------------------------------------------------------------------------
def test_dpo_positive_matches_hand_computed_values():
    beta = 0.1
    # the policy dropped the chosen answer 1 nat below the reference: r_w = -1, r_l = -3, penalty = 1
    lp = logps(chosen=-10, rejected=-14, ref_chosen=-9, ref_rejected=-11)
    # margin = r_w - r_l - lambda * penalty = -1 + 3 - 50 = -48; loss = log(1 + exp(-beta * margin)) = log(1 + e^4.8)
    assert get_loss("dpo_positive")(lp, beta=beta, dpop_lambda=50.0).item() == pytest.approx(math.log1p(math.exp(4.8)))
    # with lambda = 0 it is DPO: log(1 + e^-0.2)
    assert get_loss("dpo_positive")(lp, beta=beta, dpop_lambda=0.0).item() == pytest.approx(math.log1p(math.exp(-0.2)))
    assert get_loss("sigmoid")(lp, beta=beta).item() == pytest.approx(math.log1p(math.exp(-0.2)))
    # the chosen answer became more likely than under the reference: no penalty, DPOP equals DPO
    up = logps(chosen=-8, rejected=-14, ref_chosen=-9, ref_rejected=-11)  # r_w = +1, r_l = -3
    assert get_loss("dpo_positive")(up, beta=beta, dpop_lambda=50.0).item() == pytest.approx(
        math.log1p(math.exp(-0.4))
    )


def test_apo_losses_match_hand_computed_values():
    lp = logps(chosen=-10, rejected=-14, ref_chosen=-9, ref_rejected=-11)  # r_w = -1, r_l = -3
    beta = 0.5
    assert get_loss("apo_zero")(lp, beta=beta).item() == pytest.approx((1 - sig(-0.5)) + sig(-1.5))
    assert get_loss("apo_down")(lp, beta=beta).item() == pytest.approx(sig(-0.5) + (1 - sig(0.5 * 2)))


def test_unknown_loss_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown loss type 'dpop'; choose from \['apo_down', 'apo_zero'"):
        get_loss("dpop")


# ---------------------------------------------------------------------------------------------------
# The trainer override against TRL's own DPOTrainer on the same batch
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model() -> Path:
    from spanpref.models import resolve_model

    return Path(resolve_model("tiny"))


@pytest.fixture(scope="module")
def pairs_repo(tmp_path_factory) -> Path:
    """Hand-made chains (test_pairs.make_repo) cut into pairs: fast, for the in-process tests."""
    from test_pairs import make_repo

    from spanpref.pairs import PairConfig, build_pairs

    folder = make_repo(tmp_path_factory.mktemp("train") / "repo")
    build_pairs(str(folder), PairConfig(splits={"train": 0.7, "validation": 0.3}))
    return folder


def _trainer(cls, config_cls, model: Path, folder: Path, out: Path, **kwargs):
    import datasets

    train = datasets.load_dataset(str(folder), "pairs_stepwise", split="train")
    args = config_cls(
        output_dir=str(out),
        use_cpu=True,
        bf16=False,
        report_to=[],
        max_length=1024,
        beta=0.1,
        per_device_train_batch_size=4,
        save_strategy="no",
        dataloader_num_workers=0,
        **kwargs,
    )
    return cls(model=str(model), args=args, train_dataset=train)


def test_trl_internals_the_override_relies_on_are_unchanged(tiny_model, pairs_repo, tmp_path):
    """On one real collated batch, our loss equals TRL's own for every loss both implement, and DPO-Positive with
    lambda = 0 equals TRL's DPO. If a TRL upgrade changes the batch layout, the fused log-prob forward or a loss,
    this fails: re-check spanpref.training.trainer before moving the pin."""
    import trl
    from trl import DPOConfig, DPOTrainer

    from spanpref.training.trainer import TRL_VERSION, SpanprefDPOConfig, SpanprefDPOTrainer

    assert trl.__version__ == TRL_VERSION, (
        "trl moved: re-check SpanprefDPOTrainer._compute_loss, then bump TRL_VERSION"
    )
    for ours_type, trl_type in [
        ("sigmoid", "sigmoid"),
        ("apo_zero", "apo_zero"),
        ("apo_down", "apo_down"),
        ("dpo_positive", "sigmoid"),
    ]:
        torch.manual_seed(0)
        ours = _trainer(
            SpanprefDPOTrainer,
            SpanprefDPOConfig,
            tiny_model,
            pairs_repo,
            tmp_path / "a",
            loss_type=[ours_type],
            dpop_lambda=0.0,
        )
        theirs = _trainer(DPOTrainer, DPOConfig, tiny_model, pairs_repo, tmp_path / "b", loss_type=[trl_type])
        batch = ours._prepare_inputs(next(iter(ours.get_train_dataloader())))
        with torch.no_grad():
            got = ours.compute_loss(ours.model, batch).item()
            want = theirs.compute_loss(theirs.model, batch).item()
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6), ours_type
        mode = "train" if ours.model.training else "eval"
        for name in ("rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"):
            assert ours._metrics[mode][name][-1] == pytest.approx(theirs._metrics[mode][name][-1], rel=1e-5), name


def test_reference_log_probs_are_computed_once_across_runs(tiny_model, pairs_repo, tmp_path, monkeypatch):
    """Two trainers on the same pairs and reference (another loss, as in a sweep) share the reference log-probs:
    the second computes none and gets exactly the first's. Another precompute batch size misses the cache."""
    from trl import DPOTrainer

    from spanpref.training.trainer import SpanprefDPOConfig, SpanprefDPOTrainer

    calls = []
    original = DPOTrainer._precompute_ref_logps

    def counting(self, dataset, name, batch_size):
        calls.append(name)
        return original(self, dataset, name, batch_size)

    monkeypatch.setattr(DPOTrainer, "_precompute_ref_logps", counting)
    cache = tmp_path / "cache"

    def trainer(out, **kwargs):
        kwargs.setdefault("ref_logps_cache", str(cache))
        return _trainer(
            SpanprefDPOTrainer,
            SpanprefDPOConfig,
            tiny_model,
            pairs_repo,
            tmp_path / out,
            precompute_ref_log_probs=True,
            **kwargs,
        )

    first = trainer("a", loss_type=["apo_down"])
    assert calls == ["train"] and len(list(cache.glob("*.npz"))) == 1
    second = trainer("b", loss_type=["sigmoid"])
    assert calls == ["train"]  # nothing computed again
    for column in ("ref_chosen_logps", "ref_rejected_logps"):
        assert second.train_dataset[column] == first.train_dataset[column]
        assert any(v != 0 for v in first.train_dataset[column])
    trainer("c", loss_type=["sigmoid"], precompute_ref_batch_size=3)  # other padding: not bit-identical, so a miss
    assert calls == ["train", "train"] and len(list(cache.glob("*.npz"))) == 2
    trainer("d", loss_type=["sigmoid"], ref_logps_cache="none")
    assert calls == ["train", "train", "train"] and len(list(cache.glob("*.npz"))) == 2


def test_dpo_positive_cannot_be_mixed_with_other_losses(tiny_model, pairs_repo, tmp_path):
    from spanpref.training.trainer import SpanprefDPOConfig, SpanprefDPOTrainer

    trainer = _trainer(
        SpanprefDPOTrainer,
        SpanprefDPOConfig,
        tiny_model,
        pairs_repo,
        tmp_path,
        loss_type=["dpo_positive", "sft"],
        loss_weights=[1.0, 1.0],
    )
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    with pytest.raises(ValueError, match="dpo_positive cannot be combined"):
        trainer.compute_loss(trainer.model, batch)


# ---------------------------------------------------------------------------------------------------
# Recipes
# ---------------------------------------------------------------------------------------------------
def recipe_files() -> list[Path]:
    return sorted(p for p in RECIPES.glob("*/*/*.yaml") if p.parent.name in ("sft", "dpo"))


def test_there_are_recipes_for_every_pair_construction_and_loss():
    names = {p.relative_to(RECIPES).as_posix() for p in recipe_files()}
    for pairs in ("ab", "first_edit", "full_rewrite", "stepwise", "stepwise_ds", "human_rewrite"):
        for loss in LOSSES:
            assert f"smollm2-135m-instruct/dpo/config_{pairs}_{loss}.yaml" in names
    assert "smollm2-135m-instruct/sft/config_full_rewrite.yaml" in names
    assert any(n.startswith("llama-3.1-8b-instruct/dpo/") for n in names)
    assert {p.name for p in (RECIPES / "accelerate_configs").glob("*.yaml")} >= {
        "ddp.yaml",
        "fsdp.yaml",
        "deepspeed_zero3.yaml",
    }


def parse_recipe(path: Path, *overrides: str):
    """Parse a recipe with its script's parser. GPU recipes ask for bf16, which TrainingArguments refuses on a
    machine without a GPU; there the flag is overridden, as a user would on the command line."""
    from spanpref.training.run import parse_args

    cpu_only = not torch.cuda.is_available() and yaml.safe_load(path.read_text()).get("bf16")
    return parse_args(
        path.parent.name, ["--config", str(path), *overrides, *(["--bf16", "false"] if cpu_only else [])]
    )


@pytest.mark.parametrize("path", recipe_files(), ids=lambda p: p.relative_to(RECIPES).as_posix())
def test_every_recipe_parses_with_its_scripts_parser(path):
    stage = path.parent.name
    script_args, training_args, model_args = parse_recipe(path)
    assert model_args.model_name_or_path and script_args.dataset_name
    if stage == "dpo":
        assert set(training_args.loss_type) <= set(LOSSES)
        assert script_args.dataset_config.startswith("pairs_")
    else:
        assert script_args.dataset_config == "sft_full_rewrite"


def test_the_paper_settings_are_in_the_8b_recipes():
    dpo = RECIPES / "llama-3.1-8b-instruct" / "dpo"
    _, args, model_args = parse_recipe(dpo / "config_stepwise_apo_down.yaml")
    assert (args.learning_rate, args.beta, args.max_length, args.warmup_steps) == (5e-7, 0.1, 8192, 0)
    assert args.lr_scheduler_type == "cosine" and args.activation_checkpointing
    assert yaml.safe_load((dpo / "config_stepwise_apo_down.yaml").read_text())["bf16"] is True
    zero3 = yaml.safe_load((RECIPES / "accelerate_configs/deepspeed_zero3.yaml").read_text())
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps * zero3["num_processes"] == 4
    assert "sft" in model_args.model_name_or_path  # preference tuning starts from the a*-SFT model ...
    _, ab, ab_model = parse_recipe(dpo / "config_ab_apo_down.yaml")
    assert ab_model.model_name_or_path == "meta-llama/Llama-3.1-8B-Instruct"  # ... except A/B pairs
    _, sft, _ = parse_recipe(RECIPES / "llama-3.1-8b-instruct/sft/config_full_rewrite.yaml")
    assert sft.learning_rate == 5e-6


def test_unknown_recipe_keys_are_errors(tmp_path):
    from spanpref.training.run import parse_args

    bad = tmp_path / "bad.yaml"
    bad.write_text((RECIPES / "tiny/dpo/config_stepwise_sigmoid.yaml").read_text() + "lerning_rate: 1.0e-5\n")
    with pytest.raises(ValueError, match="lerning_rate"):
        parse_args("dpo", ["--config", str(bad)])


# ---------------------------------------------------------------------------------------------------
# Real runs
# ---------------------------------------------------------------------------------------------------
def trainable_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def accelerate_launch(script: str, recipe: str, *overrides: str, processes: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    # `accelerate launch --cpu --num_processes 2` starts ONE process in accelerate 1.15 (huggingface/accelerate#2741;
    # the card below would say "x 1 processes"). `--multi_gpu` starts N processes through torch's elastic launcher,
    # and the recipes' `use_cpu: true` makes each of them a gloo rank (DistributedType.MULTI_CPU).
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(ROOT / "scripts" / script),
        "--config",
        str(RECIPES / recipe),
        *overrides,
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.parametrize("loss", list(LOSSES))
def test_two_process_training_on_chain_pairs_moves_every_parameter(loss, local_chains_repo, tiny_model, tmp_path):
    import datasets

    train = datasets.load_dataset(str(local_chains_repo), "pairs_stepwise", split="train")
    assert len(train) >= 2, "the chains stage made too few stepwise pairs to train on"
    out = tmp_path / "out"
    proc = accelerate_launch(
        "dpo.py",
        f"tiny/dpo/config_stepwise_{loss}.yaml",
        "--dataset_name",
        str(local_chains_repo),
        "--output_dir",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    before, after = trainable_weights(tiny_model), trainable_weights(out)
    assert before.keys() == after.keys()
    unmoved = [n for n in before if torch.equal(before[n], after[n])]
    assert not unmoved, f"parameters that did not move: {unmoved}"
    results = json.loads((out / "spanpref_results.json").read_text())
    assert results["train"]["train_loss"] > 0 and results["train_examples"] == len(train)
    card = (out / "README.md").read_text()
    assert "× 2 processes" in card and "config `pairs_stepwise`" in card and f"loss | {loss}" in card
    assert "| launch | MULTI_CPU, 2 processes on cpu |" in card
    # the bundled recipes train grouped: every pair of a chain from one packed sequence
    assert results["grouping"]["train"]["pairs"] == len(train) and "| batching | grouped:" in card


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the FSDP config does join the processes")
def test_processes_that_do_not_join_one_run_stop_with_advice(tiny_model, pairs_repo, tmp_path):
    # FSDP's config on a machine without GPUs (and without use_cpu): each process would train alone on all the data
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(RECIPES / "accelerate_configs" / "fsdp.yaml"),
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        str(ROOT / "scripts" / "dpo.py"),
        "--config",
        str(RECIPES / "tiny/dpo/config_stepwise_sigmoid.yaml"),
        "--dataset_name",
        str(pairs_repo),
        "--output_dir",
        str(tmp_path / "out"),
        "--use_cpu",
        "false",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "launched as 2 processes, but they did not join one distributed run" in proc.stderr + proc.stdout
    assert "--multi_gpu" in proc.stderr + proc.stdout
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.server
def test_two_process_sft_on_full_rewrites(local_chains_repo, tiny_model, tmp_path):
    out = tmp_path / "sft"
    proc = accelerate_launch(
        "sft.py",
        "tiny/sft/config_full_rewrite.yaml",
        "--dataset_name",
        str(local_chains_repo),
        "--output_dir",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    before, after = trainable_weights(tiny_model), trainable_weights(out)
    assert all(not torch.equal(before[n], after[n]) for n in before)


@pytest.mark.slow
def test_lora_moves_every_adapter_weight_and_leaves_the_base(tiny_model, pairs_repo, tmp_path):
    from spanpref.training.run import parse_args, train

    out = tmp_path / "lora"
    args = parse_args(
        "dpo",
        [
            "--config",
            str(RECIPES / "tiny/dpo/config_stepwise_apo_down.yaml"),
            "--dataset_name",
            str(pairs_repo),
            "--output_dir",
            str(out),
            "--use_peft",
            "--lora_r",
            "4",
            "--lora_alpha",
            "8",
            "--lora_target_modules",
            "q_proj",
            "v_proj",
        ],
    )
    train("dpo", *args)
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all("lora_" in n for n in adapter)
    lora_b = [t for n, t in adapter.items() if "lora_B" in n]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)  # lora_B starts at zero: nonzero means it moved
    assert "LoRA r = 4" in (out / "README.md").read_text()


@pytest.mark.slow
def test_merged_lora_model_is_a_plain_model_with_the_adapter_applied(tiny_model, pairs_repo, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from spanpref.training.run import parse_args, train

    out = tmp_path / "merged"
    args = parse_args(
        "dpo",
        [
            "--config",
            str(RECIPES / "tiny/dpo/config_stepwise_sigmoid.yaml"),
            "--dataset_name",
            str(pairs_repo),
            "--output_dir",
            str(out),
            "--use_peft",
            "--lora_r",
            "4",
            "--lora_target_modules",
            "q_proj",
            "v_proj",
            "--merge_adapters",
        ],
    )
    train("dpo", *args)
    assert not (out / "adapter_config.json").exists() and (out / "adapter" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out)
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), out / "adapter")
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, with_adapter(ids).logits, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(merged(ids).logits, AutoModelForCausalLM.from_pretrained(tiny_model)(ids).logits)


@pytest.mark.slow
def test_resume_from_the_last_checkpoint(tiny_model, pairs_repo, tmp_path):
    from spanpref.training.run import parse_args, train

    out = tmp_path / "resume"
    common = [
        "--config",
        str(RECIPES / "tiny/dpo/config_stepwise_sigmoid.yaml"),
        "--dataset_name",
        str(pairs_repo),
        "--output_dir",
        str(out),
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
    ]
    train("dpo", *parse_args("dpo", [*common, "--max_steps", "2"]))
    assert (out / "checkpoint-2").is_dir()
    results = train("dpo", *parse_args("dpo", [*common, "--max_steps", "4"]))
    assert "before" not in results  # a resumed run does not re-measure the starting model
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4]  # steps 1-2 come from run one


@pytest.mark.slow
def test_model_card_and_push(tiny_model, pairs_repo, tmp_path, monkeypatch, hub_api):
    import huggingface_hub

    from spanpref.training.run import parse_args, train

    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: hub_api)
    out = tmp_path / "pushed"
    args = parse_args(
        "dpo",
        [
            "--config",
            str(RECIPES / "tiny/dpo/config_stepwise_dpo_positive.yaml"),
            "--dataset_name",
            str(pairs_repo),
            "--output_dir",
            str(out),
            "--push_to_hub",
            "--hub_model_id",
            "org/tiny-dpop",
            "--hub_token",
            "hf_test",
        ],
    )
    results = train("dpo", *args)
    (c_name, c_id, c_kw), (u_name, u_id, u_kw) = hub_api.calls
    assert (c_name, c_id, c_kw["repo_type"], c_kw["token"]) == ("create_repo", "org/tiny-dpop", "model", "hf_test")
    assert (u_name, u_id, u_kw["folder_path"], u_kw["repo_type"]) == (
        "upload_folder",
        "org/tiny-dpop",
        str(out),
        "model",
    )
    card = (out / "README.md").read_text()
    assert "base_model: tiny" in card
    assert f"`{pairs_repo}`, config `pairs_stepwise`" in card
    assert "dpo_positive, β = 0.1, λ = 50.0" in card and "| learning rate | 0.001" in card
    after = results["after"]["eval_rewards/accuracies"]
    assert f"| rewards/accuracies | 0 | {after:.4g} |" in card
    # "before" is the starting model, measured inside train() (eval_on_start): policy = reference, so no margin
    assert results["before"]["epoch"] == 0 and results["before"]["eval_rewards/margins"] == 0
    shards = sorted(p.name for p in (pairs_repo / "data" / "pairs_stepwise").glob("*.parquet"))
    assert ", ".join(shards) in card  # the exact data: content-hashed shard names
    assert (out / "spanpref_run.yaml").is_file()


def test_push_without_token_says_what_to_do(tiny_model, pairs_repo, tmp_path, monkeypatch):
    from spanpref.repo import HubAuthError, push_folder

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(HubAuthError, match="hf auth login"):
        push_folder(tmp_path, "org/m", repo_type="model")


def test_tiny_model_is_deterministic(tmp_path):
    from spanpref.training.tiny import build_tiny_model

    a, b = build_tiny_model(tmp_path / "a"), build_tiny_model(tmp_path / "b")
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all(torch.equal(wa[n], wb[n]) for n in wa)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    shutil.rmtree(tmp_path)


@pytest.mark.slow
def test_sweep_runs_every_rate_records_them_and_picks_by_the_validation_metric(tiny_model, pairs_repo, tmp_path):
    from spanpref.cli import main

    out = tmp_path / "sweep"
    argv = [
        "sweep",
        str(RECIPES / "tiny/dpo/config_stepwise_sigmoid.yaml"),
        "--learning-rates",
        "1e-3",
        "1e-7",
        "--output-dir",
        str(out),
        "--set",
        f"dataset_name={pairs_repo}",
        "max_steps=2",
        f"ref_logps_cache={tmp_path / 'ref'}",
    ]
    assert main(argv) == 0
    # the reference log-probs are computed by the first rate and read by the second
    assert "reference log-probs of the train dataset kept in" in (out / "lr-0.001.log").read_text()
    assert "reference log-probs of the train dataset from" in (out / "lr-1e-07.log").read_text()
    record = json.loads((out / "sweep.json").read_text())
    assert [r["learning_rate"] for r in record["runs"]] == [1e-3, 1e-7]
    assert all(r["status"] == "ok" for r in record["runs"])
    # the choice, recomputed from each run's own results file
    after = {
        lr: json.loads((out / f"lr-{lr:g}" / "spanpref_results.json").read_text())["after"] for lr in (1e-3, 1e-7)
    }
    for lr, run in zip((1e-3, 1e-7), record["runs"], strict=True):
        assert run["metrics"]["eval_rewards/accuracies"] == after[lr]["eval_rewards/accuracies"]
    best = max(
        (1e-3, 1e-7), key=lambda lr: (after[lr]["eval_rewards/accuracies"], after[lr]["eval_rewards/margins"], -lr)
    )
    assert record["best"]["learning_rate"] == best
    assert "(chosen)" in (out / "sweep.md").read_text()
    # a second sweep reuses the finished runs instead of training again
    assert main(argv) == 0
    assert [r["status"] for r in json.loads((out / "sweep.json").read_text())["runs"]] == ["reused", "reused"]


def test_sweep_overrides_must_be_key_value(tmp_path):
    from spanpref.training.sweep import run_sweep

    with pytest.raises(ValueError, match="key=value"):
        run_sweep(str(RECIPES / "tiny/dpo/config_stepwise_sigmoid.yaml"), output_dir=str(tmp_path), overrides=["20"])


def test_override_flags_split_values_like_a_shell():
    from spanpref.training.run import override_flags

    assert override_flags(["max_steps=20", "reward_weights=0.3 1.0 0.3", "run_name='a b'", "hub_model_id="]) == [
        "--max_steps",
        "20",
        "--reward_weights",
        "0.3",
        "1.0",
        "0.3",
        "--run_name",
        "a b",
        "--hub_model_id",
        "",
    ]
    for bad in ("20", "=3"):
        with pytest.raises(ValueError, match="key=value"):
            override_flags([bad])
