"""PPO with dense, per-token rewards from fine-grained reward models (Fine-Grained RLHF, Wu et al., 2023).

TRL 1.16 has no PPO any more, and its GRPO/RLOO trainers compute one scalar reward per completion inside one long
method (`_generate_and_score_completions`), with no hook for per-token rewards; so this is a compact loop of its
own: the policy with a value head on its last hidden state, a frozen reference copy for the KL penalty, rewards

    r_t = sum over reward models of the segment rewards placed on token t  -  kl_coef * (log pi(y_t) - log ref(y_t))

then GAE over r_t, and the clipped PPO policy and value losses. Distribution and mixed precision come from
`accelerate` (`accelerate launch --config_file recipes/accelerate_configs/ddp.yaml -m spanpref.rewards.ppo
--config RECIPE`); each process samples its own prompts and the gradients are averaged.

The pure pieces (`compute_gae`, `whiten`, `ppo_losses`, `logprobs_of`) are plain functions of tensors, tested
against hand-computed values.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spanpref.io import RESULTS_FILE, save_resolved_config, write_json

logger = logging.getLogger(__name__)

HISTORY_FILE = "rl_history.jsonl"
PLOT_FILE = "reward_curve.png"
VALUE_HEAD_FILE = "value_head.safetensors"


@dataclass
class RLArguments:
    """A dense-reward PPO run: policy, prompts, reward models and their weights, PPO settings."""

    model_name_or_path: str = field(
        default="default",
        metadata={
            "help": "policy to train: `default` (bundled SmolLM2-135M-Instruct), `tiny`, or any "
            "causal LM id/path; the frozen reference is a copy of it"
        },
    )
    dataset_name: str = field(
        default="outputs/qa_feedback", metadata={"help": "dataset repo whose queries config gives the prompts"}
    )
    prompt: str = field(
        default="query",
        metadata={
            "help": "`query`: the question alone as the user message; or a prompt name/file under "
            "recipes/prompts with {{query}} and {{text}} (the document) slots"
        },
    )
    max_document_chars: int = field(
        default=2000, metadata={"help": "cut documents in prompts to this many characters"}
    )
    max_prompt_length: int = field(default=256, metadata={"help": "longest prompt in tokens (cut from the left)"})
    max_prompts: int | None = field(default=None, metadata={"help": "use only the first N queries as prompts"})
    reward_models: list[str] = field(
        default_factory=list,
        metadata={"help": "reward model folders or Hub ids written by `spanpref rewards train` (one per group)"},
    )
    reward_weights: list[float] | None = field(
        default=None,
        metadata={
            "help": "one weight per reward model, in order (default: each model's group weight, e.g. 0.3 "
            "relevance, 0.5 factuality, 0.3 completeness)"
        },
    )
    pattern: str | None = field(
        default=None,
        metadata={
            "help": "also reward words matching this regular expression (a toy reward model; see "
            "spanpref.rewards.dense.PatternScorer)"
        },
    )
    pattern_weight: float = field(default=1.0, metadata={"help": "weight of the pattern reward"})
    pattern_level: str = field(default="sub_sentence", metadata={"help": "segment level of the pattern reward"})
    reward_mode: str = field(
        default="sign",
        metadata={"help": "sign: +w/-w per segment by P(error) < 0.5 (Fine-Grained RLHF); prob: w * (1 - 2 P(error))"},
    )
    steps: int = field(default=20, metadata={"help": "PPO steps (one batch of rollouts each)"})
    batch_size: int = field(default=8, metadata={"help": "prompts per step per process"})
    mini_batch_size: int = field(default=8, metadata={"help": "rollouts per gradient step"})
    ppo_epochs: int = field(default=2, metadata={"help": "passes over each batch of rollouts"})
    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate (policy and value head)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    max_new_tokens: int = field(default=48, metadata={"help": "longest response in tokens"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (log-probs use the same)"})
    top_k: int = field(default=0, metadata={"help": "sample from the top k tokens only (0: all; PPO assumes all)"})
    kl_coef: float = field(default=0.05, metadata={"help": "per-token KL penalty to the reference policy"})
    gamma: float = field(default=1.0, metadata={"help": "discount"})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda"})
    cliprange: float = field(default=0.2, metadata={"help": "PPO policy ratio clip"})
    cliprange_value: float = field(default=0.2, metadata={"help": "value clip around the rollout values"})
    vf_coef: float = field(default=0.5, metadata={"help": "weight of the value loss"})
    whiten_advantages: bool = field(default=True, metadata={"help": "normalise advantages over each batch"})
    seed: int = field(default=0, metadata={"help": "seed of prompt sampling, generation and initialisation"})
    use_cpu: bool = field(default=False, metadata={"help": "train on the CPU even when a GPU is present"})
    output_dir: str = field(default="outputs/rl", metadata={"help": "where the policy, history and plot go"})
    save_model: bool = field(default=True, metadata={"help": "save the trained policy and value head at the end"})
    plot: bool = field(default=True, metadata={"help": "write the mean-reward curve to reward_curve.png"})
    log_samples: int = field(default=1, metadata={"help": "responses per step written to the history"})


# ---------------------------------------------------------------------------------------------------
# Pure PPO math
# ---------------------------------------------------------------------------------------------------
def masked_mean(x, mask, dim=None):
    return (x * mask).sum(dim) / mask.sum(dim).clamp_min(1)


def whiten(x, mask, shift_mean: bool = True):
    """Normalise the masked entries of x to mean 0 (unless not `shift_mean`) and variance 1."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * (var + 1e-8).rsqrt()
    if not shift_mean:
        out = out + mean
    return out * mask


def compute_gae(rewards, values, mask, gamma: float, lam: float):
    """(advantages, returns) by generalised advantage estimation over the masked response tokens.

    rewards, values, mask: [batch, T]; a token after the last masked one contributes no value (episode end)."""
    import torch

    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] * mask[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last * (mask[:, t + 1] if t + 1 < T else 0)) * mask[:, t]
        adv[:, t] = last
    return adv, (adv + values) * mask


def ppo_losses(
    new_logprobs,
    old_logprobs,
    advantages,
    new_values,
    old_values,
    returns,
    mask,
    cliprange: float,
    cliprange_value: float,
) -> dict[str, Any]:
    """Clipped PPO policy loss and clipped value loss (token means over the mask), with diagnostics."""
    import torch

    ratio = torch.exp(new_logprobs - old_logprobs)
    pg = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - cliprange, 1 + cliprange))
    v_clipped = old_values + (new_values - old_values).clamp(-cliprange_value, cliprange_value)
    vf = 0.5 * torch.max((new_values - returns) ** 2, (v_clipped - returns) ** 2)
    return {
        "policy_loss": masked_mean(pg, mask),
        "value_loss": masked_mean(vf, mask),
        "clipfrac": masked_mean((torch.abs(ratio - 1) > cliprange).float(), mask),
        "approx_kl": masked_mean(0.5 * (new_logprobs - old_logprobs) ** 2, mask),
    }


def logprobs_of(logits, tokens, temperature: float = 1.0):
    """log p(tokens) under logits/temperature; logits[:, t] predicts tokens[:, t]."""
    import torch

    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def response_mask(response_ids, eos_ids: Sequence[int]):
    """1 for response tokens up to and including the first stop token, 0 after it."""
    import torch

    is_stop = torch.zeros_like(response_ids, dtype=torch.bool)
    for e in eos_ids:
        is_stop |= response_ids == e
    # stops strictly before position t
    before = torch.cumsum(is_stop.long(), dim=1) - is_stop.long()
    return (before == 0).long()


# ---------------------------------------------------------------------------------------------------
# Policy with a value head
# ---------------------------------------------------------------------------------------------------
def build_policy_with_value(policy):
    """A module whose forward gives (logits, values) from one pass of the policy (value head on the last hidden
    state, initialised to zero so the first values do not disturb the first advantages)."""
    import torch
    from torch import nn

    class PolicyWithValue(nn.Module):
        def __init__(self, policy):
            super().__init__()
            self.policy = policy
            hidden = policy.config.get_text_config().hidden_size
            self.value_head = nn.Linear(hidden, 1)
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)

        def forward(self, input_ids, attention_mask):
            position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
            out = self.policy(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                output_hidden_states=True,
                use_cache=False,
            )
            values = self.value_head(out.hidden_states[-1].to(self.value_head.weight.dtype)).squeeze(-1)
            return out.logits, values

    model = PolicyWithValue(policy)
    model.value_head.to(dtype=torch.float32)
    return model


# ---------------------------------------------------------------------------------------------------
# Prompts and reward components
# ---------------------------------------------------------------------------------------------------
def load_prompts(args: RLArguments) -> list[dict[str, str]]:
    """One prompt per query: {query_id, query, document, messages}."""
    from spanpref import schema
    from spanpref.repo import load_rows

    queries = load_rows(args.dataset_name, schema.QUERIES)[: args.max_prompts]
    if not queries:
        raise ValueError(f"{args.dataset_name}: the queries config is empty; RL needs prompts")
    documents: dict[str, str] = {}
    template = None
    if args.prompt != "query":
        from spanpref.prompts import load_prompt, truncate_text

        template = load_prompt(args.prompt)
        documents = {
            d["doc_id"]: truncate_text(d["text"], args.max_document_chars)
            for d in load_rows(args.dataset_name, schema.DOCUMENTS)
        }
    out = []
    for q in queries:
        doc = documents.get(q["doc_id"], "")
        if template is not None:
            values = {"query": q["query"], "text": doc}
            messages = template.messages(**{k: v for k, v in values.items() if k in template.slots})
        else:
            messages = [{"role": "user", "content": q["query"]}]
        out.append({"query_id": q["query_id"], "query": q["query"], "document": doc, "messages": messages})
    return out


def build_components(args: RLArguments, device=None) -> list:
    from spanpref.rewards.dense import PatternScorer, RewardComponent
    from spanpref.rewards.reward_model import SpanRewardModel

    if args.reward_weights is not None and len(args.reward_weights) != len(args.reward_models):
        raise ValueError(f"{len(args.reward_weights)} reward_weights for {len(args.reward_models)} reward_models")
    components = []
    for i, path in enumerate(args.reward_models):
        rm = SpanRewardModel(path, device=device)
        weight = args.reward_weights[i] if args.reward_weights is not None else rm.group.weight
        components.append(RewardComponent(rm, weight, args.reward_mode))
    if args.pattern:
        components.append(
            RewardComponent(PatternScorer(args.pattern, args.pattern_level), args.pattern_weight, "prob")
        )
    if not components:
        raise ValueError("no reward: give reward_models (folders from `spanpref rewards train`) and/or a pattern")
    return components


def pattern_frequency(texts: Sequence[str], pattern: str) -> float:
    """Share of words in `texts` matching `pattern` (the steering measure)."""
    regex = re.compile(pattern)
    words = [w for t in texts for w in t.split()]
    return sum(bool(regex.search(w)) for w in words) / len(words) if words else 0.0


# ---------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------
def _left_pad(rows: list[list[int]], pad_id: int):
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return ids, mask


def train_rl(
    args: RLArguments, *, components: list | None = None, prompts: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    """Run PPO; returns {history: [per-step metrics], ...} (also written under `output_dir`).

    `components` and `prompts` replace the ones built from `args` (for toy setups and tests)."""
    import copy

    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spanpref.models import resolve_model
    from spanpref.rewards.dense import compute_dense_rewards

    accelerator = Accelerator(cpu=args.use_cpu)
    set_seed(args.seed)
    out_dir = Path(args.output_dir)
    if accelerator.is_main_process:
        save_resolved_config(out_dir, rl=args)

    path = resolve_model(args.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    model = build_policy_with_value(policy)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, eps=1e-5)
    model, optimizer = accelerator.prepare(model, optimizer)
    ref.to(accelerator.device)
    components = components if components is not None else build_components(args, accelerator.device)
    prompts = prompts if prompts is not None else load_prompts(args)
    encoded = []
    for p in prompts:
        ids = tokenizer.apply_chat_template(
            p["messages"], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        ids = list(ids["input_ids"] if isinstance(ids, dict) else ids)
        encoded.append(ids[-args.max_prompt_length :])

    eos_ids = sorted(
        {
            i
            for i in [tokenizer.eos_token_id, getattr(policy.generation_config, "eos_token_id", None)]
            for i in (i if isinstance(i, list) else [i])
            if i is not None
        }
    )
    rng = np.random.default_rng(args.seed + 1000 * accelerator.process_index)
    history: list[dict[str, Any]] = []
    hist_file = out_dir / HISTORY_FILE
    if accelerator.is_main_process:
        hist_file.write_text("")
    started = time.perf_counter()
    for step in range(args.steps):
        t0 = time.perf_counter()
        batch_idx = rng.choice(len(prompts), size=args.batch_size, replace=len(prompts) < args.batch_size)
        prompt_ids, prompt_mask = _left_pad([encoded[i] for i in batch_idx], tokenizer.pad_token_id)
        prompt_ids, prompt_mask = prompt_ids.to(accelerator.device), prompt_mask.to(accelerator.device)
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.eval()
        with torch.no_grad():
            torch.manual_seed(args.seed * 100_003 + step * 1009 + accelerator.process_index)
            gen = unwrapped.policy.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                do_sample=True,
                max_new_tokens=args.max_new_tokens,
                temperature=args.temperature,
                top_k=args.top_k,
                top_p=1.0,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=eos_ids,
            )
        P = prompt_ids.shape[1]
        response = gen[:, P:]
        if response.shape[1] == 0:
            raise RuntimeError("the policy generated no tokens")
        mask = response_mask(response, eos_ids).to(accelerator.device)
        # the reward text is the response without its stop token
        content = [
            [int(t) for t, m in zip(row, mrow, strict=True) if m and int(t) not in eos_ids]
            for row, mrow in zip(response.tolist(), mask.tolist(), strict=True)
        ]
        queries = [prompts[i]["query"] for i in batch_idx]
        documents = [prompts[i]["document"] for i in batch_idx]
        dense, seg_rewards, texts = compute_dense_rewards(components, tokenizer, queries, content, documents)
        scores = torch.zeros(response.shape, dtype=torch.float32)
        for b, d in enumerate(dense):
            # content tokens are the masked tokens minus the stop token, in order
            positions = [
                t
                for t, (tok, m) in enumerate(zip(response[b].tolist(), mask[b].tolist(), strict=True))
                if m and tok not in eos_ids
            ]
            for pos, r in zip(positions, d, strict=True):
                scores[b, pos] = float(r)
        scores = scores.to(accelerator.device)

        full_ids = torch.cat([prompt_ids, response], dim=1)
        full_mask = torch.cat([prompt_mask, mask], dim=1)
        mask_f = mask.float()
        with torch.no_grad():
            logits, values = model(full_ids, full_mask)
            old_logprobs = logprobs_of(logits[:, P - 1 : -1], response, args.temperature)
            old_values = values[:, P - 1 : -1].float()
            ref_pos = (full_mask.cumsum(-1) - 1).clamp_min(0)
            ref_logits = ref(input_ids=full_ids, attention_mask=full_mask, position_ids=ref_pos).logits
            ref_logprobs = logprobs_of(ref_logits[:, P - 1 : -1], response, args.temperature)
            kl = (old_logprobs - ref_logprobs) * mask_f
            rewards = (scores - args.kl_coef * kl) * mask_f
            advantages, returns = compute_gae(rewards, old_values * mask_f, mask_f, args.gamma, args.lam)
            if args.whiten_advantages:
                advantages = whiten(advantages, mask_f)

        model.train()
        stats: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "clipfrac": [], "approx_kl": []}
        for _ in range(args.ppo_epochs):
            order = rng.permutation(args.batch_size)
            for s in range(0, args.batch_size, args.mini_batch_size):
                mb = torch.as_tensor(order[s : s + args.mini_batch_size], device=accelerator.device)
                with accelerator.accumulate(model):
                    logits, values = model(full_ids[mb], full_mask[mb])
                    new_logprobs = logprobs_of(logits[:, P - 1 : -1], response[mb], args.temperature)
                    losses = ppo_losses(
                        new_logprobs,
                        old_logprobs[mb],
                        advantages[mb],
                        values[:, P - 1 : -1].float(),
                        old_values[mb],
                        returns[mb],
                        mask_f[mb],
                        args.cliprange,
                        args.cliprange_value,
                    )
                    loss = losses["policy_loss"] + args.vf_coef * losses["value_loss"]
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad()
                for k in stats:
                    stats[k].append(float(losses[k].detach()))

        # per-response sums, gathered over processes
        per_resp = torch.stack([scores.sum(1), kl.sum(1), mask_f.sum(1)], dim=1)
        comp_names = [c.scorer.name for c in components]
        per_comp = torch.tensor(
            [[sum(r.reward for r in sr if r.component == n) for n in comp_names] for sr in seg_rewards],
            dtype=torch.float32,
            device=accelerator.device,
        )
        gathered = accelerator.gather(per_resp).cpu().numpy()
        gathered_comp = accelerator.gather(per_comp).cpu().numpy()
        record = {
            "step": step + 1,
            "rollouts": int(gathered.shape[0]),
            "reward": float(gathered[:, 0].mean()),
            "reward_std": float(gathered[:, 0].std()),
            "kl": float(gathered[:, 1].mean()),
            "response_tokens": float(gathered[:, 2].mean()),
            **{f"reward/{n}": float(gathered_comp[:, j].mean()) for j, n in enumerate(comp_names)},
            **{k: float(np.mean(v)) for k, v in stats.items()},
            "seconds": time.perf_counter() - t0,
        }
        if args.pattern:
            record["pattern_frequency"] = pattern_frequency(texts, args.pattern)
        record["samples"] = [{"query": q, "response": t} for q, t in zip(queries, texts, strict=True)][
            : args.log_samples
        ]
        history.append(record)
        if accelerator.is_main_process:
            with hist_file.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            logger.info(
                "step %d: reward %.3f  kl %.3f  tokens %.1f  (%.1f s)",
                record["step"],
                record["reward"],
                record["kl"],
                record["response_tokens"],
                record["seconds"],
            )

    results = {
        "steps": args.steps,
        "processes": accelerator.num_processes,
        "seconds": time.perf_counter() - started,
        "history": history,
        "reward_first": history[0]["reward"] if history else None,
        "reward_last": history[-1]["reward"] if history else None,
    }
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if args.save_model:
            from safetensors.torch import save_file

            unwrapped.policy.save_pretrained(out_dir / "policy")
            tokenizer.save_pretrained(out_dir / "policy")
            save_file(
                {k: v.contiguous() for k, v in unwrapped.value_head.state_dict().items()},
                str(out_dir / "policy" / VALUE_HEAD_FILE),
            )
        if args.plot and history:
            results["plot"] = str(plot_reward_curve(history, out_dir / PLOT_FILE))
        summary = {k: v for k, v in results.items() if k != "history"}
        write_json(out_dir / RESULTS_FILE, summary)
    results["model"] = accelerator.unwrap_model(model)
    results["tokenizer"] = tokenizer
    return results


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what exists so far)."""
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        out.append(float(np.mean(chunk)))
    return out


def plot_reward_curve(history: Sequence[dict[str, Any]], path: str | Path, window: int = 5) -> Path:
    """Mean reward per step (and each reward model's part, and the KL) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, (ax, ax_kl) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, height_ratios=[3, 1])
    ax.plot(steps, [h["reward"] for h in history], color="0.7", lw=1, label="mean reward (per step)")
    ax.plot(steps, smooth([h["reward"] for h in history], window), color="C0", lw=2, label=f"moving mean ({window})")
    for name in [k for k in history[0] if k.startswith("reward/")]:
        ax.plot(steps, smooth([h[name] for h in history], window), lw=1, ls="--", label=name)
    ax.set_ylabel("reward per response")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax_kl.plot(steps, [h["kl"] for h in history], color="C3")
    ax_kl.set_ylabel("KL to reference")
    ax_kl.set_xlabel("PPO step")
    ax_kl.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def make_parser():
    from trl import TrlParser

    return TrlParser((RLArguments,), prog="ppo.py")


def load_recipe(recipe: str | Path, **overrides: Any) -> RLArguments:
    """The RL arguments of a recipe with `overrides`, for `train_rl`."""
    from spanpref.training.run import parse_recipe

    (args,) = parse_recipe(make_parser(), recipe, overrides)
    return args


def parse_args(argv: list[str] | None = None) -> RLArguments:
    """`--config RECIPE` plus flag overrides; unknown keys in the recipe or the flags are errors."""
    (args,) = make_parser().parse_args_and_config(argv)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return train_rl(parse_args(argv))


if __name__ == "__main__":
    main()
