"""`spanpref rewards ...`: train span reward models, score responses with them, run dense-reward PPO.

Training and RL take a recipe (`--recipe`, parsed by TRL's `TrlParser` like the training scripts) plus `--set
key=value` overrides; the dataset repo folder is the positional argument. Nothing heavy is imported until a
command runs. Imported at the end of `spanpref.cli` and registering itself there, like `spanpref eval`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from spanpref import cli
from spanpref.cli import Command, _arg, override_flags


@dataclass(kw_only=True)
class RewardsTrainArgs:
    folder: str = _arg("dataset repo (folder or Hub id) with annotations, responses and queries", positional=True)
    recipe: str = _arg("reward-model recipe (YAML)", default="recipes/rewards/reward_model/config_smollm2_cpu.yaml")
    output_dir: str | None = _arg(
        "where the reward models go, one folder per group (default: the recipe's)", default=None
    )
    set: list[str] | None = _arg(
        "recipe overrides as key=value, e.g. group_names=relevance num_train_epochs=5", default=None
    )


def run_rewards_train(args: RewardsTrainArgs) -> None:
    from spanpref.rewards.reward_model import format_results, parse_args, train_reward_models

    argv = ["--config", args.recipe, "--dataset_name", args.folder, *override_flags(args.set or [])]
    if args.output_dir:
        argv += ["--output_dir", args.output_dir]
    results = train_reward_models(*parse_args(argv))
    print(format_results(results))
    print("(validation, segment level; majority-class baseline in brackets)")


@dataclass(kw_only=True)
class RewardsScoreArgs:
    folder: str = _arg("dataset repo with responses (and queries) to score", positional=True)
    reward_models: list[str] = _arg("reward model folders or Hub ids", default_factory=list)
    weights: list[float] | None = _arg(
        "one weight per reward model (default: each model's group weight)", default=None
    )
    mode: str = _arg("sign (+w/-w per segment, Fine-Grained RLHF) or prob (w * (1 - 2 P(error)))", default="sign")
    limit: int | None = _arg("score only the first N responses", default=None)
    output: str | None = _arg("write one JSON line per response here (default: print them)", default=None)


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
    folder: str = _arg("dataset repo whose queries are the prompts", positional=True)
    recipe: str = _arg("RL recipe (YAML)", default="recipes/rewards/rl/config_tiny_cpu.yaml")
    output_dir: str | None = _arg(
        "where the policy, history and reward curve go (default: the recipe's)", default=None
    )
    set: list[str] | None = _arg(
        "recipe overrides as key=value, e.g. steps=10 'reward_weights=0.3 1.0 0.3'", default=None
    )


def run_rewards_rl(args: RewardsRLArgs) -> None:
    from spanpref.rewards.ppo import parse_args, train_rl

    argv = ["--config", args.recipe, "--dataset_name", args.folder, *override_flags(args.set or [])]
    if args.output_dir:
        argv += ["--output_dir", args.output_dir]
    results = train_rl(parse_args(argv))
    for h in results["history"]:
        print(f"step {h['step']:4d}  reward {h['reward']:+.3f}  kl {h['kl']:.3f}  tokens {h['response_tokens']:.1f}")
    if results.get("plot"):
        print(f"reward curve: {results['plot']}")


REWARDS_COMMANDS = {
    "train": Command("train", "train one span reward model per category group (Fine-Grained RLHF)", RewardsTrainArgs,
                     run_rewards_train),
    "score": Command("score", "score the segments of responses with span reward models", RewardsScoreArgs,
                     run_rewards_score),
    "rl": Command("rl", "PPO with dense per-segment rewards from span reward models", RewardsRLArgs, run_rewards_rl),
}  # fmt: skip
for _name, _command in REWARDS_COMMANDS.items():
    cli.register(("rewards", _name), _command)
