"""Grouped against pairwise preference training on the same pairs, model, seed and settings, in one process.

    python benchmarks/grouped_training.py --folder outputs/qaf --config pairs_stepwise [--model default|PATH]
        [--prompts N] [--repeats R] [--loss apo_down] [--json OUT]

Takes the first N prompt groups of the train split (all their pairs). Exactness first: both trainers start from the
same LoRA weights, nudged by the same seeded noise so the policy differs from the reference, and the loss of every
group and every parameter's gradient over all the pairs are compared. Then speed: after an untimed warm-up of each,
one epoch over those pairs per repeat, pairwise and grouped taking turns (so a load on the machine hits both), and
the median epoch of each. Tokens are the real (unpadded) tokens one epoch feeds the policy; without precomputed
reference log-probs the reference sees the same sequences again, so its count equals the policy's.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch


def load_groups(folder: str, config: str, prompts: int):
    """The train pairs of the first `prompts` distinct prompts, and how many prompts that is."""
    import datasets

    rows = datasets.load_dataset(folder, config, split="train")
    keys = [json.dumps(p, sort_keys=True) for p in rows["prompt"]]
    chosen = list(dict.fromkeys(keys))[:prompts]
    wanted = set(chosen)
    return rows.select([i for i, k in enumerate(keys) if k in wanted]), len(chosen)


def make_trainer(mode: str, model: str, pairs, args_ns, output: Path):
    from trl import ModelConfig, get_peft_config

    from spanpref.models import resolve_model
    from spanpref.training.trainer import GroupedDPOTrainer, SpanprefDPOConfig, SpanprefDPOTrainer

    args = SpanprefDPOConfig(
        output_dir=str(output / mode),
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        report_to=[],
        loss_type=[args_ns.loss],
        beta=0.1,
        learning_rate=5e-5,
        lr_scheduler_type="constant",
        num_train_epochs=1,
        # a batch: pairs (pairwise) or prompt groups (grouped), as the recipes set them
        per_device_train_batch_size=args_ns.pairwise_batch if mode == "pairwise" else args_ns.grouped_batch,
        gradient_accumulation_steps=1,
        max_length=args_ns.max_length,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=10**6,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
        training_mode=mode,
        share_prefixes=args_ns.share_prefixes,
    )
    peft = get_peft_config(
        ModelConfig(
            use_peft=True,
            lora_r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"],
        )
    )
    cls = GroupedDPOTrainer if mode == "grouped" else SpanprefDPOTrainer
    return cls(model=resolve_model(model), args=args, train_dataset=pairs, peft_config=peft)


def nudge(*models, scale: float = 1e-3) -> None:
    gen = torch.Generator().manual_seed(0)
    named = [dict(m.named_parameters()) for m in models]
    for name, param in named[0].items():
        if param.requires_grad:
            noise = torch.randn(param.shape, generator=gen) * scale
            with torch.no_grad():
                for params in named:
                    params[name].add_(noise.to(params[name].device))


def compare(pairwise, grouped) -> tuple[float, float]:
    """(largest |loss difference| over the groups, largest relative gradient difference over the parameters).

    One group at a time, with each group's mean loss weighted by its share of the pairs, so that the gradients add
    up to those of the mean loss over all pairs on both sides without holding every pair's activations at once."""
    total = len(pairwise.train_dataset)
    pw_rows = pairwise.train_dataset
    prompt_key = [tuple(p) for p in pw_rows["prompt_ids"]]
    worst_loss = 0.0
    for g in range(len(grouped.train_dataset)):
        example = grouped.train_dataset[g]
        members = [i for i, k in enumerate(prompt_key) if k == tuple(example["prompt_ids"])]
        weight = len(example["chosen_index"]) / total
        g_loss = grouped.compute_loss(grouped.model, grouped._prepare_inputs(grouped.data_collator([example])))
        (g_loss * weight).backward()
        p_losses = []
        for i in members:
            batch = pairwise._prepare_inputs(pairwise.data_collator([pw_rows[i]]))
            loss = pairwise.compute_loss(pairwise.model, batch)
            (loss / total).backward()
            p_losses.append(loss.item())
        worst_loss = max(worst_loss, abs(g_loss.item() - sum(p_losses) / len(p_losses)))
    theirs = dict(pairwise.model.named_parameters())
    worst_grad = 0.0
    for name, param in grouped.model.named_parameters():
        if param.requires_grad and param.grad is not None:
            ref = theirs[name].grad
            worst_grad = max(
                worst_grad,
                (torch.linalg.vector_norm(param.grad - ref) / torch.linalg.vector_norm(ref).clamp(min=1e-30)).item(),
            )
    for model in (pairwise.model, grouped.model):
        model.zero_grad(set_to_none=True)
    return worst_loss, worst_grad


def pairwise_tokens(trainer, max_length: int | None) -> int:
    ds = trainer.train_dataset
    cap = max_length or 10**9
    return sum(
        min(len(p) + len(c), cap) + min(len(p) + len(r), cap)
        for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"], strict=True)
    )


def epoch_seconds(trainer) -> float:
    started = time.perf_counter()
    trainer.train()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", required=True, help="dataset repo with pair configs (spanpref pairs)")
    parser.add_argument("--config", default="pairs_stepwise", help="pair config, e.g. pairs_stepwise, pairs_ab")
    parser.add_argument("--model", default="default", help="default (bundled SmolLM2-135M-Instruct) or a path/id")
    parser.add_argument("--prompts", type=int, default=4, help="first N prompt groups of the train split")
    parser.add_argument("--repeats", type=int, default=1, help="timed epochs of each (the median is reported)")
    parser.add_argument("--loss", default="apo_down", help="sigmoid, dpo_positive, apo_zero or apo_down")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--pairwise-batch", type=int, default=2, help="pairs per batch, pairwise")
    parser.add_argument("--grouped-batch", type=int, default=1, help="prompt groups per batch, grouped")
    parser.add_argument("--share-prefixes", action="store_true", help="grouped: responses share common prefixes")
    parser.add_argument("--json", help="write the result object here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)

    pairs, n_prompts = load_groups(args.folder, args.config, args.prompts)
    out = Path("outputs/bench-grouped")
    pairwise = make_trainer("pairwise", args.model, pairs, args, out)
    grouped = make_trainer("grouped", args.model, pairs, args, out)
    stats = grouped.grouping["train"]
    nudge(pairwise.model, grouped.model)
    max_loss, max_grad = compare(pairwise, grouped)

    pairwise_seconds, grouped_seconds = [], []
    for trainer in (pairwise, grouped):  # warm-up, untimed: first-call allocations and kernel selection
        trainer.args.max_steps = 1
        trainer.train()
        trainer.args.max_steps = -1
    for _ in range(args.repeats):
        pairwise_seconds.append(epoch_seconds(pairwise))
        grouped_seconds.append(epoch_seconds(grouped))

    tokens_pw = pairwise_tokens(pairwise, args.max_length)
    result = {
        "folder": args.folder,
        "config": args.config,
        "model": args.model,
        "loss": args.loss,
        "prompts": n_prompts,
        "pairs": len(pairs),
        "groups": stats["groups"],
        "pairs_trained": stats["pairs"],
        "pairs_trained_pairwise": len(pairwise.train_dataset),
        "tokens_pairwise": tokens_pw,
        "tokens_grouped": stats["tokens_grouped"],
        "ref_tokens_pairwise": tokens_pw,
        "ref_tokens_grouped": stats["tokens_grouped"],
        "seconds_pairwise": statistics.median(pairwise_seconds),
        "seconds_grouped": statistics.median(grouped_seconds),
        "seconds_pairwise_all": pairwise_seconds,
        "seconds_grouped_all": grouped_seconds,
        "max_abs_loss_diff": max_loss,
        "max_rel_grad_diff": max_grad,
        "share_prefixes": args.share_prefixes,
        "repeats": args.repeats,
        "max_length": args.max_length,
        "threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    token_ratio = result["tokens_pairwise"] / max(result["tokens_grouped"], 1)
    time_ratio = result["seconds_pairwise"] / max(result["seconds_grouped"], 1e-9)
    print(
        f"\n{args.config}: {result['pairs']} pairs over {n_prompts} prompts ({result['groups']} groups), "
        f"model {args.model}, loss {args.loss}, {result['device']}"
    )
    print("| | pairwise (TRL layout) | grouped | pairwise / grouped |")
    print("|---|---|---|---|")
    print(f"| policy tokens per epoch | {tokens_pw:,} | {stats['tokens_grouped']:,} | {token_ratio:.2f}x |")
    print(
        f"| seconds per epoch (median of {args.repeats}) | {result['seconds_pairwise']:.1f} | "
        f"{result['seconds_grouped']:.1f} | {time_ratio:.2f}x |"
    )
    print(f"| max loss difference (per group) | | {max_loss:.2e} | |")
    print(f"| max relative gradient difference | | {max_grad:.2e} | |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
