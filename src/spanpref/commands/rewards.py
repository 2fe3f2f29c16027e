"""`spanpref rewards train | score | rl`: span reward models per category group, dense rewards, PPO.

Training and RL take a recipe (`--recipe`, the keys of `recipes/rewards/*/config_*.yaml`) plus `--set key=value`
overrides; the dataset repo is the positional argument.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from spanpref.commands.base import command, option
from spanpref.errors import UsageError

_RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "rewards"


@dataclass(kw_only=True)
class RewardsTrainOptions:
    folder: str = option("dataset repo (folder or Hub id) with annotations, responses and queries", positional=True)
    recipe: str = option(
        "reward-model recipe (YAML; default: the bundled CPU recipe)",
        default=str(_RECIPES / "reward_model" / "config_smollm2_cpu.yaml"),
    )
    output_dir: str | None = option(
        "where the reward models go, one folder per group (default: the recipe's)", default=None
    )
    set: list[str] | None = option(
        "recipe overrides as key=value, e.g. group_names=relevance num_train_epochs=5", default=None
    )


def _recipe_args(parser, recipe: str, folder: str, output_dir: str | None, overrides: list[str] | None) -> tuple:
    """The recipe's dataclasses with the user's `key=value` strings typed by the recipe's own parser."""
    from spanpref.training.run import override_flags

    argv = ["--config", recipe, "--dataset_name", folder, *override_flags(overrides or [])]
    if output_dir:
        argv += ["--output_dir", output_dir]
    if not Path(recipe).is_file():
        raise UsageError(f"recipe {recipe} not found")
    return tuple(parser.parse_args_and_config(argv))


@command("rewards train", "train one span reward model per category group (Fine-Grained RLHF)", RewardsTrainOptions)
def train(args: RewardsTrainOptions) -> None:
    from spanpref.rewards.reward_model import format_results, make_parser, train_reward_models

    results = train_reward_models(*_recipe_args(make_parser(), args.recipe, args.folder, args.output_dir, args.set))
    print(format_results(results))
    print("(validation, segment level; majority-class baseline in brackets)")


@dataclass(kw_only=True)
class RewardsScoreOptions:
    folder: str = option("dataset repo with responses (and queries) to score", positional=True)
    reward_models: list[str] = option("reward model folders or Hub ids", default_factory=list)
    weights: list[float] | None = option(
        "one weight per reward model (default: each model's group weight)", default=None
    )
    mode: str = option("sign (+w/-w per segment, Fine-Grained RLHF) or prob (w * (1 - 2 P(error)))", default="sign")
    limit: int | None = option("score only the first N responses", default=None)
    output: str | None = option("write one JSON line per response here (default: print them)", default=None)


@command("rewards score", "score the segments of responses with span reward models", RewardsScoreOptions)
def score(args: RewardsScoreOptions) -> None:
    from spanpref.rewards.dense import score_responses

    lines = [
        json.dumps(r, ensure_ascii=False)
        for r in score_responses(
            args.folder, args.reward_models, weights=args.weights, mode=args.mode, limit=args.limit
        )
    ]
    if args.output:
        Path(args.output).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        print(f"wrote {len(lines)} scored responses to {args.output}")
    else:
        print("\n".join(lines))


@dataclass(kw_only=True)
class RewardsRLOptions:
    folder: str = option("dataset repo whose queries are the prompts", positional=True)
    recipe: str = option(
        "RL recipe (YAML; default: the bundled tiny CPU recipe)", default=str(_RECIPES / "rl" / "config_tiny_cpu.yaml")
    )
    output_dir: str | None = option(
        "where the policy, history and reward curve go (default: the recipe's)", default=None
    )
    set: list[str] | None = option(
        "recipe overrides as key=value, e.g. steps=10 'reward_weights=0.3 1.0 0.3'", default=None
    )


@command("rewards rl", "PPO with dense per-segment rewards from span reward models", RewardsRLOptions)
def rl(args: RewardsRLOptions) -> None:
    from spanpref.rewards.ppo import make_parser, train_rl

    (rl_args,) = _recipe_args(make_parser(), args.recipe, args.folder, args.output_dir, args.set)
    results = train_rl(rl_args)
    for h in results["history"]:
        print(f"step {h['step']:4d}  reward {h['reward']:+.3f}  kl {h['kl']:.3f}  tokens {h['response_tokens']:.1f}")
    if results.get("plot"):
        print(f"reward curve: {results['plot']}")


COMMANDS = [train, score, rl]
