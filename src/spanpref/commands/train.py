"""`spanpref train sft | dpo` (the same as `scripts/sft.py` / `scripts/dpo.py`: a TRL recipe plus flags) and
`spanpref sweep` (one run per learning rate, the best chosen on validation)."""

from __future__ import annotations

from dataclasses import dataclass

from spanpref.commands.base import command, option

_RECIPE_HELP = (
    "--config RECIPE.yaml [--key value ...]: a training recipe (recipes/*/{stage}/); flags override its "
    "keys; `spanpref train {stage} --help` lists every option"
)


@command(
    "train sft", "supervised fine-tuning on an SFT config (" + _RECIPE_HELP.format(stage="sft") + ")", passthrough=True
)
def train_sft(argv: list[str]) -> None:
    from spanpref.training.run import parse_args, train

    train("sft", *parse_args("sft", argv))


@command(
    "train dpo",
    "preference tuning (DPO, DPO-Positive, APO-zero, APO-down) on a pair config ("
    + _RECIPE_HELP.format(stage="dpo")
    + ")",
    passthrough=True,
)
def train_dpo(argv: list[str]) -> None:
    from spanpref.training.run import parse_args, train

    train("dpo", *parse_args("dpo", argv))


@dataclass(kw_only=True)
class SweepOptions:
    recipe: str = option("training recipe (YAML) whose learning rate is swept", positional=True)
    stage: str = option("sft or dpo: which script the recipe belongs to", default="dpo")
    learning_rates: list[float] | None = option(
        "rates to try (default: the paper's 5e-6 2e-6 1e-6 5e-7 2e-7)", default=None
    )
    output_dir: str | None = option(
        "sweep folder (default: outputs/sweeps/<recipe name>); one run per rate inside", default=None
    )
    launcher: str = option(
        "how to start each run, e.g. 'accelerate launch --config_file recipes/accelerate_configs/ddp.yaml'",
        default="python",
    )
    metric: str = option("validation metric to maximise", default="eval_rewards/accuracies")
    tie_break: str = option("validation metric that breaks ties", default="eval_rewards/margins")
    set: list[str] | None = option(
        "recipe overrides for every run, as key=value (e.g. max_steps=20 dataset_name=outputs/demo)", default=None
    )


@command("sweep", "train one run per learning rate and pick the best by a validation metric", SweepOptions)
def sweep(args: SweepOptions) -> None:
    from spanpref.training.sweep import run_sweep

    result = run_sweep(
        args.recipe,
        stage=args.stage,
        learning_rates=args.learning_rates,
        output_dir=args.output_dir,
        launcher=args.launcher,
        metric=args.metric,
        tie_break=args.tie_break,
        overrides=args.set,
    )
    print(result.table())
    if result.best:
        print(f"chosen: learning rate {result.best.learning_rate:g} -> {result.best.output_dir}")


COMMANDS = [train_sft, train_dpo, sweep]
