"""`spanpref rewards ...`: train span reward models, score responses with them, run dense-reward PPO.

Training and RL take a recipe (`--recipe`, parsed by TRL's `TrlParser` like the training scripts) plus `--set
key=value` overrides; the dataset repo folder is the positional argument. Nothing heavy is imported until a
command runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


def _f(help: str, default: Any = None, *, positional: bool = False, factory: Any = None) -> Any:
    metadata = {"help": help, "positional": positional}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    if positional and default is None:  # a required positional argument
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)


def _overrides(pairs: list[str] | None) -> list[str]:
    """`key=value` pairs as recipe flags (`--key value`; a list value is given as space-separated words)."""
    argv = []
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        argv += [f"--{key}", *value.split()]
    return argv


@dataclass(kw_only=True)
class RewardsTrainArgs:
    folder: str = _f("dataset repo (folder or Hub id) with annotations, responses and queries", positional=True)
    recipe: str = _f("reward-model recipe (YAML)", "recipes/rewards/reward_model/config_smollm2_cpu.yaml")
    output_dir: str | None = _f("where the reward models go, one folder per group (default: the recipe's)")
    set: list[str] | None = _f("recipe overrides as key=value, e.g. group_names=relevance num_train_epochs=5")


def run_rewards_train(args: RewardsTrainArgs) -> None:
    from spanpref.rewards.reward_model import format_results, parse_args, train_reward_models

    argv = ["--config", args.recipe, "--dataset_name", args.folder, *_overrides(args.set)]
    if args.output_dir:
        argv += ["--output_dir", args.output_dir]
    results = train_reward_models(*parse_args(argv))
    print(format_results(results))
    print("(validation, segment level; majority-class baseline in brackets)")


@dataclass(kw_only=True)
class RewardsScoreArgs:
    folder: str = _f("dataset repo with responses (and queries) to score", positional=True)
    reward_models: list[str] = _f("reward model folders or Hub ids", factory=list)
    weights: list[float] | None = _f("one weight per reward model (default: each model's group weight)")
    mode: str = _f("sign (+w/-w per segment, Fine-Grained RLHF) or prob (w * (1 - 2 P(error)))", "sign")
    limit: int | None = _f("score only the first N responses")
    output: str | None = _f("write one JSON line per response here (default: print them)")


def run_rewards_score(args: RewardsScoreArgs) -> None:
    from spanpref import schema
    from spanpref.repo import load_rows
    from spanpref.rewards.dense import RewardComponent, compute_segment_rewards
    from spanpref.rewards.reward_model import SpanRewardModel

    if not args.reward_models:
        raise ValueError("give --reward-models (folders written by `spanpref rewards train`)")
    if args.weights is not None and len(args.weights) != len(args.reward_models):
        raise ValueError(f"{len(args.weights)} weights for {len(args.reward_models)} reward models")
    components = []
    for i, path in enumerate(args.reward_models):
        rm = SpanRewardModel(path)
        components.append(RewardComponent(rm, args.weights[i] if args.weights else rm.group.weight, args.mode))
    responses = load_rows(args.folder, schema.RESPONSES)[: args.limit]
    queries = {q["query_id"]: q["query"] for q in load_rows(args.folder, schema.QUERIES)}
    lines = []
    for start in range(0, len(responses), 8):
        batch = responses[start : start + 8]
        texts = [r["text"] for r in batch]
        rewards = compute_segment_rewards(components, [queries.get(r["query_id"], "") for r in batch], texts)
        for r, text, seg_rewards in zip(batch, texts, rewards, strict=True):
            lines.append(json.dumps({"response_id": r["response_id"], "total": sum(s.reward for s in seg_rewards),
                                     "segments": [{"model": s.component, "text": text[s.start : s.end],
                                                   "reward": s.reward} for s in seg_rewards]},
                                    ensure_ascii=False))  # fmt: skip
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
        print(f"wrote {len(lines)} scored responses to {args.output}")
    else:
        print("\n".join(lines))


@dataclass(kw_only=True)
class RewardsRLArgs:
    folder: str = _f("dataset repo whose queries are the prompts", positional=True)
    recipe: str = _f("RL recipe (YAML)", "recipes/rewards/rl/config_tiny_cpu.yaml")
    output_dir: str | None = _f("where the policy, history and reward curve go (default: the recipe's)")
    set: list[str] | None = _f("recipe overrides as key=value, e.g. steps=10 'reward_weights=0.3 1.0 0.3'")


def run_rewards_rl(args: RewardsRLArgs) -> None:
    from spanpref.rewards.ppo import parse_args, train_rl

    argv = ["--config", args.recipe, "--dataset_name", args.folder, *_overrides(args.set)]
    if args.output_dir:
        argv += ["--output_dir", args.output_dir]
    results = train_rl(parse_args(argv))
    for h in results["history"]:
        print(f"step {h['step']:4d}  reward {h['reward']:+.3f}  kl {h['kl']:.3f}  tokens {h['response_tokens']:.1f}")
    if results.get("plot"):
        print(f"reward curve: {results['plot']}")
