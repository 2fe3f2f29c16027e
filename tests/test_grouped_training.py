"""Grouped preference training: the packed layout by hand, per-response log-probs against separate forward passes,
and the loss and every gradient against the pairwise trainer on the same pairs (each loss, LoRA and full
fine-tuning, eager and sdpa attention, Llama and Qwen2)."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
import torch

from spanpref.training.grouped import (
    IGNORE_INDEX,
    DataCollatorForGroups,
    build_row,
    group_pairs,
    response_logps,
    split_responses,
)
from spanpref.training.losses import LOSSES

X = IGNORE_INDEX


# ---------------------------------------------------------------------------------------------------
# The layout, by hand
# ---------------------------------------------------------------------------------------------------
def test_layout_of_a_small_group_by_hand():
    """Prompt [1, 2, 3], responses [4, 5] and [4, 6]. Without sharing the prompt's last token is repeated for the
    second response; with sharing the common first token 4 is repeated instead, one position further on."""
    row = build_row([1, 2, 3], [[4, 5], [4, 6]])
    assert row.input_ids == [1, 2, 3, 4, 5, 3, 4, 6]
    assert row.position_ids == [0, 1, 2, 3, 4, 2, 3, 4]
    assert row.labels == [X, X, 4, 5, X, 4, 6, X]
    assert row.predicts == [(), (), (0,), (0,), (), (1,), (1,), ()]
    assert row.end == [8, 8, 5, 5, 5, 8, 8, 8]

    shared = build_row([1, 2, 3], [[4, 5], [4, 6]], share_prefixes=True)
    assert shared.input_ids == [1, 2, 3, 4, 5, 4, 6]
    assert shared.position_ids == [0, 1, 2, 3, 4, 3, 4]
    assert shared.labels == [X, X, 4, 5, X, 6, X]
    assert shared.predicts == [(), (), (0, 1), (0,), (), (1,), ()]
    assert shared.end == [7, 7, 7, 5, 5, 7, 7]


def test_every_token_sees_exactly_its_own_prompt_and_response_prefix():
    """Reading the mask back (i sees j iff j <= i < end[j]): each response token's visible tokens, in order, are the
    prompt followed by the response up to itself, at positions 0, 1, 2, ... as in its own sequence."""
    prompt, responses = [7, 8, 9, 10], [[1, 2, 3], [1, 2, 4, 5], [6], [1, 2, 3, 9]]
    for share in (False, True):
        row = build_row(prompt, responses, share_prefixes=share)
        for i in range(len(row.input_ids)):
            seen = [j for j in range(len(row.input_ids)) if j <= i < row.end[j]]
            assert [row.position_ids[j] for j in seen] == list(range(len(seen)))
            context = [row.input_ids[j] for j in seen]
            assert context[: len(prompt)] == prompt[: len(context)]
            if row.labels[i] != X:  # the label continues every response the slot predicts
                for r in row.predicts[i]:
                    full = prompt + responses[r]
                    assert full[: len(context) + 1] == context + [row.labels[i]]
        # every response token is predicted exactly once
        counts = [sum(r in p for p in row.predicts) for r in range(len(responses))]
        assert counts == [len(r) for r in responses]


def test_a_long_group_is_split_into_rows_that_each_carry_the_prompt():
    prompt, responses = [1] * 10, [[2] * 5, [3] * 5, [4] * 5, [5] * 12]
    assert split_responses(prompt, responses, max_length=None) == [[0, 1, 2, 3]]
    # 10 + 5 + 5 + 1 = 21 fits in 22; the third response would make 27
    assert split_responses(prompt, responses, max_length=22) == [[0, 1], [2], [3]]
    rows, stats = group_pairs(
        [
            {"prompt_ids": prompt, "chosen_ids": a, "rejected_ids": b}
            for a, b in [(responses[0], responses[1]), (responses[1], responses[2]), (responses[2], responses[3])]
        ],
        max_length=21,
    )
    # [5] * 12 does not fit with the prompt (22 > 21): its pair is dropped and counted, the others stay
    assert (stats.pairs_in, stats.pairs, stats.dropped_pairs, stats.dropped_responses) == (3, 2, 1, 1)
    assert rows[0]["response_ids"] == responses[:3]
    assert (rows[0]["chosen_index"], rows[0]["rejected_index"]) == ([0, 1], [1, 2])
    assert stats.rows == 2 and stats.tokens_grouped == (10 + 5 + 5 + 1) + (10 + 5)
    assert stats.tokens_pairwise == 3 * 2 * 10 + 5 + 5 + 5 + 5 + 5 + 12


# ---------------------------------------------------------------------------------------------------
# Against separate forward passes and against the pairwise trainer
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from spanpref.training.tiny import ARCHITECTURES, build_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    return {arch: build_tiny_model(root / arch, architecture=arch) for arch in ARCHITECTURES}


def _pair(query: str, chosen: str, rejected: str) -> dict:
    return {
        "prompt": [{"role": "user", "content": query}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


FLOODS = "Why do rivers flood in spring? Answer from the passage about snow. " * 3
PAIRS = [
    # a chain a0 -> a1 -> a2 (stepwise) and its full rewrite: four pairs among three states
    _pair(FLOODS, "Snow melts and rain falls on frozen ground.", "Because it is spring."),
    _pair(
        FLOODS, "Snow melts and rain falls on wet, frozen ground. 🌊", "Snow melts and rain falls on frozen ground."
    ),
    _pair(FLOODS, "Snow melts and rain falls on wet, frozen ground. 🌊", "Because it is spring."),
    # an A/B set: three answers, two pairs
    _pair("What is a delta?", "Land at a river mouth, built of silt.", "A letter."),
    _pair("What is a delta?", "Land at a river mouth, built of silt.", "A Greek letter, or a river landform."),
    # one pair alone
    _pair("Name a river.", "The Nile.", "Water."),
]


def _trainer(model: Path, mode: str, loss: str, attn: str, lora: bool, **kwargs):
    # dpop_lambda 1, not 50: lambda multiplies the float32 rounding of TRL's pairwise log-prob sums (~1e-5 on sums of
    # a few hundred), and the comparison would measure that rounding instead of the layout
    from trl import ModelConfig, get_peft_config

    from spanpref.training.trainer import GroupedDPOTrainer, SpanprefDPOConfig, SpanprefDPOTrainer

    args = SpanprefDPOConfig(
        output_dir="unused",
        use_cpu=True,
        bf16=False,
        report_to=[],
        beta=0.1,
        per_device_train_batch_size=8,
        save_strategy="no",
        dataloader_num_workers=0,
        loss_type=[loss],
        training_mode=mode,
        dpop_lambda=1.0,
        model_init_kwargs={"attn_implementation": attn},
        **{"max_length": 4096, **kwargs},
    )
    peft = (
        get_peft_config(
            ModelConfig(use_peft=True, lora_r=4, lora_alpha=8, lora_target_modules=["q_proj", "v_proj", "up_proj"])
        )
        if lora
        else None
    )
    cls = GroupedDPOTrainer if mode == "grouped" else SpanprefDPOTrainer
    return cls(model=str(model), args=args, train_dataset=datasets.Dataset.from_list(PAIRS), peft_config=peft)


def _perturb(*models) -> None:
    """The same small random change to the trainable weights of each model, so the policy differs from the
    reference (a fresh LoRA adapter is exactly the base model) and every loss term is exercised."""
    gen = torch.Generator().manual_seed(0)
    named = [dict(m.named_parameters()) for m in models]
    for name, param in named[0].items():
        if param.requires_grad:
            noise = torch.randn(param.shape, generator=gen) * 0.02
            with torch.no_grad():
                for params in named:
                    params[name].add_(noise)


def _full_batch(trainer) -> dict:
    ds = trainer.train_dataset
    return trainer._prepare_inputs(trainer.data_collator([ds[i] for i in range(len(ds))]))


@pytest.mark.parametrize("share", [False, True], ids=["no-sharing", "shared-prefixes"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_per_response_log_probs_equal_separate_forward_passes(tiny_models, arch, attn, share):
    """Each response's summed log-prob from the packed rows equals a plain forward pass over prompt + response, also
    when max_length splits a group into several rows."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.utils import add_fused_lm_head

    tokenizer = AutoTokenizer.from_pretrained(tiny_models[arch])
    model = AutoModelForCausalLM.from_pretrained(tiny_models[arch], attn_implementation=attn, dtype=torch.float32)
    model.eval()
    tokenized = []
    for pair in PAIRS:

        def encode(messages, **kwargs):
            text = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        prompt = encode(pair["prompt"], add_generation_prompt=True)
        sides = {}
        for side in ("chosen", "rejected"):
            full = encode(pair["prompt"] + pair[side])
            assert full[: len(prompt)] == prompt
            sides[f"{side}_ids"] = full[len(prompt) :]
        tokenized.append({"prompt_ids": prompt, **sides})
    groups, stats = group_pairs(tokenized, max_length=None, share_prefixes=share)
    longest = max(len(g["prompt_ids"]) + max(len(r) for r in g["response_ids"]) for g in groups)
    # room for the longest response alone, so the biggest group needs more than one row
    max_length = longest + 2
    collate = DataCollatorForGroups(max_length=max_length, share_prefixes=share)
    batch = collate(groups)
    assert batch["input_ids"].shape[0] > len(groups), "no group was split: the test would not cover splitting"
    assert batch["input_ids"].shape[1] <= max_length

    with torch.no_grad():
        want = []
        for g in groups:
            for ids in g["response_ids"]:
                seq = torch.tensor([g["prompt_ids"] + ids])
                logits = model(input_ids=seq).logits[0, :-1]
                token_logps = logits.log_softmax(-1).gather(1, seq[0, 1:, None])[:, 0]
                want.append(token_logps[len(g["prompt_ids"]) - 1 :].sum())
        add_fused_lm_head(model)
        got = response_logps(model, batch, attn)
    assert len(got) == len(want) == stats.responses
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_loss_and_every_gradient_equal_the_pairwise_trainer(tiny_models, arch, attn, lora):
    for loss in LOSSES:
        pairwise = _trainer(tiny_models[arch], "pairwise", loss, attn, lora)
        grouped = _trainer(tiny_models[arch], "grouped", loss, attn, lora)
        assert grouped.grouping["train"]["pairs"] == len(PAIRS) == len(pairwise.train_dataset)
        assert grouped.grouping["train"]["groups"] == 3
        _perturb(pairwise.model, grouped.model)
        want = pairwise.compute_loss(pairwise.model, _full_batch(pairwise))
        got = grouped.compute_loss(grouped.model, _full_batch(grouped))
        want.backward()
        got.backward()
        assert got.item() == pytest.approx(want.item(), rel=1e-5), loss
        theirs = dict(pairwise.model.named_parameters())
        trainable = [(n, p) for n, p in grouped.model.named_parameters() if p.requires_grad]
        assert trainable and all(p.grad is not None for _, p in trainable)
        for name, param in trainable:
            reference = theirs[name].grad
            scale = torch.linalg.vector_norm(reference).item()
            assert scale > 0, f"{name} has no gradient in the pairwise trainer: nothing is compared"
            # relative to the tensor's gradient norm: float32 rounding differs between the two layouts
            assert torch.linalg.vector_norm(param.grad - reference).item() <= 1e-5 * scale, (loss, name)


def test_grouped_mode_rejects_losses_it_does_not_implement(tiny_models):
    with pytest.raises(ValueError, match="set training_mode: pairwise"):
        _trainer(tiny_models["llama"], "grouped", "ipo", "sdpa", lora=True)


def test_unknown_training_mode_lists_the_choices():
    from spanpref.training.trainer import SpanprefDPOConfig

    with pytest.raises(ValueError, match=r"unknown training_mode 'packed'; choose from \['grouped', 'pairwise'\]"):
        SpanprefDPOConfig(output_dir="unused", use_cpu=True, bf16=False, training_mode="packed")


def test_precomputed_reference_log_probs_are_kept_per_response_across_runs(tiny_models, tmp_path):
    """With precompute_ref_log_probs the reference runs once over the groups; a second trainer (another loss, as in
    a sweep) reads them from the cache and gets bit-identical values, and they equal the on-the-fly reference."""
    from spanpref.training.grouped import REF_COLUMN

    cache = str(tmp_path / "cache")
    kwargs = {"precompute_ref_log_probs": True, "ref_logps_cache": cache}
    first = _trainer(tiny_models["llama"], "grouped", "apo_down", "sdpa", True, **kwargs)
    files = list(Path(cache).glob("*.npz"))
    assert len(files) == 1
    second = _trainer(tiny_models["llama"], "grouped", "sigmoid", "sdpa", True, **kwargs)
    assert list(Path(cache).glob("*.npz")) == files
    assert first.train_dataset[REF_COLUMN] == second.train_dataset[REF_COLUMN]
    live = _trainer(tiny_models["llama"], "grouped", "apo_down", "sdpa", True)
    with torch.no_grad():
        on_the_fly = live._reference_forward(_full_batch(live))
    precomputed = torch.tensor([v for row in first.train_dataset[REF_COLUMN] for v in row])
    torch.testing.assert_close(precomputed, on_the_fly, rtol=1e-5, atol=1e-5)
    # another layout of the same pairs is another key
    _trainer(tiny_models["llama"], "grouped", "apo_down", "sdpa", True, share_prefixes=True, **kwargs)
    assert len(list(Path(cache).glob("*.npz"))) == 2


# ---------------------------------------------------------------------------------------------------
# Through the training entry point
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pairs_folder(tmp_path_factory) -> Path:
    from test_pairs import make_repo

    from spanpref.pairs import PairConfig, build_pairs

    folder = make_repo(tmp_path_factory.mktemp("grouped") / "repo")
    build_pairs(str(folder), PairConfig(splits={"train": 0.7, "validation": 0.3}))
    return folder


def _lengths(folder: Path, model: str) -> tuple[int, list[int]]:
    """(prompt length, prompt + response length of every response) of the train pairs, as TRL tokenizes them."""
    from transformers import AutoTokenizer

    from spanpref.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(model))
    rows = datasets.load_dataset(str(folder), "pairs_stepwise", split="train")
    encode = lambda m, **k: tokenizer(tokenizer.apply_chat_template(m, tokenize=False, **k), add_special_tokens=False)  # noqa: E731
    prompts = {len(encode(r["prompt"], add_generation_prompt=True)["input_ids"]) for r in rows}
    full = sorted({len(encode(r["prompt"] + r[s])["input_ids"]) for r in rows for s in ("chosen", "rejected")})
    return max(prompts), full


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["grouped", "pairwise"])
def test_one_epoch_counts_every_training_pair_once(pairs_folder, tmp_path, mode):
    """A step is a prompt group of any size in grouped mode, so the results and the card say how many pairs the
    steps held: one epoch holds every pair once. Logging every 3rd step leaves pairs after the last log, which
    count too."""
    from spanpref.training.run import parse_args, train

    recipe = Path(__file__).resolve().parents[1] / "recipes/tiny/dpo/config_stepwise_sigmoid.yaml"
    argv = ["--config", str(recipe), "--dataset_name", str(pairs_folder), "--output_dir", str(tmp_path / mode)]
    argv += ["--training_mode", mode, "--max_steps", "-1", "--num_train_epochs", "1", "--logging_steps", "3"]
    argv += ["--per_device_train_batch_size", "1", "--max_length", "4096"]
    results = train("dpo", *parse_args("dpo", argv))
    n = len(datasets.load_dataset(str(pairs_folder), "pairs_stepwise", split="train"))
    assert results["train_examples"] == n and results["train_examples_seen"] == n
    steps = results["grouping"]["train"]["groups"] if mode == "grouped" else n
    assert results["steps"] == steps and (mode == "pairwise" or steps < n)
    card = (tmp_path / mode / "README.md").read_text()
    assert f"| trained on | {steps} optimizer steps holding {n} preference pairs (repeats counted) |" in card


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["grouped", "pairwise"])
def test_pairs_that_do_not_fit_are_counted_in_results_card_and_log(pairs_folder, tmp_path, mode, caplog):
    """A max_length between the shortest and the longest prompt + response: what cannot be trained on untruncated is
    counted (results file, model card, log) in grouped mode; the pairwise path reports what TRL dropped."""
    import json

    from spanpref.training.run import RESULTS_FILE, parse_args, train

    prompt_len, full = _lengths(pairs_folder, "tiny")
    max_length = full[len(full) // 2] if mode == "grouped" else prompt_len
    recipe = Path(__file__).resolve().parents[1] / "recipes/tiny/dpo/config_stepwise_sigmoid.yaml"
    out = tmp_path / mode
    argv = [
        "--config",
        str(recipe),
        "--dataset_name",
        str(pairs_folder),
        "--output_dir",
        str(out),
        "--max_length",
        str(max_length),
        "--training_mode",
        mode,
        "--max_steps",
        "1",
    ]
    with caplog.at_level("WARNING"):
        results = train("dpo", *parse_args("dpo", argv))
    n = len(datasets.load_dataset(str(pairs_folder), "pairs_stepwise", split="train"))
    assert results["train_examples_in_repo"] == n
    dropped = results["train_examples_dropped"]
    assert 0 < dropped < n and results["train_examples"] == n - dropped
    assert json.loads((out / RESULTS_FILE).read_text())["train_examples_dropped"] == dropped
    card = (out / "README.md").read_text()
    assert f"| not trained on | {dropped} of {n} examples" in card
    assert f"{dropped} of {n} examples cannot be trained on untruncated" in caplog.text
    if mode == "grouped":
        assert results["grouping"]["train"]["dropped_pairs"] == dropped
        assert "| batching | grouped:" in card
    else:  # TRL keeps the pairs whose prompt is shorter than max_length and cuts their completions
        truncated = results["train_examples_truncated"]
        assert 0 < truncated <= n - dropped
        assert f"| cut at max length | {truncated} of {n - dropped} trained examples" in card


@pytest.mark.slow
def test_a_split_with_nothing_that_fits_stops_with_advice(pairs_folder, tmp_path):
    from spanpref.training.run import parse_args, train

    recipe = Path(__file__).resolve().parents[1] / "recipes/tiny/dpo/config_stepwise_sigmoid.yaml"
    argv = [
        "--config",
        str(recipe),
        "--dataset_name",
        str(pairs_folder),
        "--output_dir",
        str(tmp_path / "x"),
        "--max_length",
        "8",
    ]
    with pytest.raises(ValueError, match="none of the .* pairs fits max_length 8 .* raise max_length"):
        train("dpo", *parse_args("dpo", argv))
    with pytest.raises(SystemExit, match="no training example is left .* raise max_length"):
        train("dpo", *parse_args("dpo", [*argv, "--training_mode", "pairwise"]))


@pytest.mark.slow
def test_two_process_grouped_run_with_accumulation_and_precomputed_reference_moves_every_parameter(
    pairs_folder, tmp_path
):
    """Two gloo ranks share the reference precompute (each scores its share of the groups, then they exchange),
    accumulate gradients over two batches of groups, and move every weight of the tiny model."""
    import json

    from test_training import accelerate_launch, trainable_weights

    from spanpref.models import resolve_model

    out = tmp_path / "out"
    proc = accelerate_launch(
        "dpo.py",
        "tiny/dpo/config_stepwise_apo_zero.yaml",
        "--dataset_name",
        str(pairs_folder),
        "--output_dir",
        str(out),
        "--precompute_ref_log_probs",
        "true",
        "--ref_logps_cache",
        str(tmp_path / "cache"),
        "--gradient_accumulation_steps",
        "2",
        "--per_device_train_batch_size",
        "1",
        "--max_steps",
        "2",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "reference log-probs of the train dataset kept in" in proc.stderr + proc.stdout
    before, after = trainable_weights(Path(resolve_model("tiny"))), trainable_weights(out)
    unmoved = [n for n in before if torch.equal(before[n], after[n])]
    assert not unmoved, f"parameters that did not move: {unmoved}"
    results = json.loads((out / "spanpref_results.json").read_text())
    n = len(datasets.load_dataset(str(pairs_folder), "pairs_stepwise", split="train"))
    assert results["grouping"]["train"]["pairs"] == results["train_examples"] == n
    assert results["train"]["train_loss"] > 0
    card = (out / "README.md").read_text()
    assert "| launch | MULTI_CPU, 2 processes on cpu |" in card and "| batching | grouped:" in card


def test_a_validation_split_with_nothing_that_fits_leaves_training_without_validation(tiny_models):
    from spanpref.training.trainer import GroupedDPOTrainer, SpanprefDPOConfig

    args = SpanprefDPOConfig(
        output_dir="unused",
        use_cpu=True,
        bf16=False,
        report_to=[],
        max_length=512,
        per_device_train_batch_size=2,
        save_strategy="no",
        eval_strategy="steps",
        eval_steps=1,
        eval_on_start=True,
        loss_type=["apo_down"],
    )
    too_long = _pair("What is a delta?", "Land at a river mouth. " * 200, "A letter.")
    trainer = GroupedDPOTrainer(
        model=str(tiny_models["llama"]),
        args=args,
        train_dataset=datasets.Dataset.from_list(PAIRS),
        eval_dataset=datasets.Dataset.from_list([too_long]),
    )
    assert trainer.grouping["eval"]["dropped_pairs"] == 1 and trainer.grouping["train"]["pairs"] == len(PAIRS)
    assert trainer.eval_dataset is None and args.eval_strategy == "no" and not args.eval_on_start
