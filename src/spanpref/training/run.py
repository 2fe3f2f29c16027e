"""The one training body behind `scripts/sft.py` and `scripts/dpo.py`.

A stage is a TRL trainer plus its config class; everything else is shared: loading the pair or SFT config of a
dataset repo (a local folder written by `spanpref pairs`, or a Hub id), resolving the model (the bundled default, the
tiny test model, or any id/path), LoRA from TRL's `ModelConfig`, resuming from the last checkpoint, validation
metrics before and after, the resolved config saved beside the model, a model card, and the push.

Run it as `accelerate launch [--config_file recipes/accelerate_configs/ddp.yaml] scripts/dpo.py --config RECIPE`
(or `python -m spanpref.training.run dpo --config RECIPE`); flags override the recipe, unknown keys are errors.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spanpref.errors import MissingInputError, UsageError
from spanpref.io import RESULTS_FILE, save_resolved_config, write_json

logger = logging.getLogger(__name__)

STAGES = ("sft", "dpo")


@dataclass
class ScriptArguments:
    """Which data to train on; the rest comes from TRL's training config and ModelConfig."""

    dataset_name: str = field(
        default="outputs/demo",
        metadata={"help": "dataset repo: a folder written by `spanpref pairs` or a Hub dataset id"},
    )
    dataset_config: str | None = field(
        default=None,
        metadata={
            "help": "config to train on, e.g. pairs_stepwise, pairs_ab, pairs_full_rewrite (dpo) or "
            "sft_full_rewrite (sft); default: pairs_stepwise for dpo, sft_full_rewrite for sft"
        },
    )
    dataset_revision: str | None = field(default=None, metadata={"help": "Hub revision of the dataset repo"})
    dataset_train_split: str = field(default="train", metadata={"help": "split to train on"})
    dataset_test_split: str = field(
        default="validation", metadata={"help": "split for validation metrics (skipped when the repo lacks it)"}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "train on the first N examples only"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "validate on the first N examples only"})
    eval_before_training: bool = field(
        default=True, metadata={"help": "also compute the validation metrics of the starting model"}
    )
    merge_adapters: bool = field(
        default=False,
        metadata={
            "help": "with use_peft: save the base model with the LoRA weights merged in (a plain model "
            "folder that any stage can load); the adapter alone goes to <output_dir>/adapter"
        },
    )


# what the bundled default model is, for model cards (it is converted from this model's GGUF)
DEFAULT_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_CONFIG = {"sft": "sft_full_rewrite", "dpo": "pairs_stepwise"}


@contextmanager
def quiet_training() -> Iterator[None]:
    """In-process training runs (the demo, the reproduction) show one progress bar per stage: the datasets
    library's bars (TRL's tokenizing passes) and transformers' notices about its own renamed arguments are not
    the user's to act on."""
    import datasets

    bars = datasets.utils.logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r".*gradient_checkpointing.* is deprecated", FutureWarning)
            yield
    finally:
        if bars:
            datasets.enable_progress_bars()


def stage_classes(stage: str) -> tuple[type, type]:
    """(config class, trainer class) of a stage."""
    if stage == "sft":
        from trl import SFTConfig, SFTTrainer

        return SFTConfig, SFTTrainer
    if stage == "dpo":
        from spanpref.training.trainer import SpanprefDPOConfig, SpanprefDPOTrainer

        return SpanprefDPOConfig, SpanprefDPOTrainer
    raise ValueError(f"unknown training stage {stage!r}; choose from {list(STAGES)}")


def make_parser(stage: str):
    from trl import ModelConfig, TrlParser

    config_class, _ = stage_classes(stage)
    return TrlParser((ScriptArguments, config_class, ModelConfig), prog=f"{stage}.py")


def override_flags(pairs: list[str]) -> list[str]:
    """`key=value` recipe overrides as flags: `--key value`. The value is split like a shell would, so a list field
    takes several words (`'reward_weights=0.3 1.0 0.3'`) and quotes keep one with spaces whole."""
    flags = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"override {pair!r} should look like key=value, e.g. max_steps=20")
        flags += [f"--{key}", *(shlex.split(value) or [""])]
    return flags


def parse_recipe(parser: Any, recipe: str | Path, overrides: dict[str, Any]) -> tuple[Any, ...]:
    """The dataclasses of a TRL-style `parser` from a recipe file with `overrides` (Python values) on top: how
    library code starts a run without building a command line. Unknown keys are errors naming the recipe."""
    from spanpref.configfile import read_yaml

    path = Path(recipe)
    if not path.is_file():
        raise MissingInputError(f"recipe {path} not found")
    data = {**(read_yaml(path) or {}), **overrides}
    for key, value in (data.pop("env", None) or {}).items():  # TRL recipes may set environment variables
        os.environ[key] = str(value)
    unknown = parser.set_defaults_with_config(**data)[::2]
    if unknown:
        raise UsageError(f"{path}: unknown key(s) {[k.removeprefix('--') for k in unknown]}")
    return tuple(parser.parse_args_into_dataclasses(args=[]))


def load_recipe(stage: str, recipe: str | Path, **overrides: Any) -> tuple[Any, Any, Any]:
    """(script, training, model) arguments of a `stage` recipe with `overrides`, ready for `train(stage, ...)`."""
    return parse_recipe(make_parser(stage), recipe, overrides)


def parse_args(stage: str, argv: list[str] | None = None) -> tuple[Any, Any, Any]:
    """Parse `--config RECIPE` plus flag overrides; unknown keys in the recipe or the flags are errors."""
    if not logging.getLogger().handlers:  # an entry point: show spanpref's progress lines
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return make_parser(stage).parse_args_and_config(argv)


def load_splits(script_args: ScriptArguments, stage: str):
    """(train, validation or None) of the configured dataset; a missing config or split names what exists."""
    import datasets

    config = script_args.dataset_config or DEFAULT_CONFIG[stage]
    try:
        ds = datasets.load_dataset(script_args.dataset_name, config, revision=script_args.dataset_revision)
    except ValueError as e:
        raise ValueError(f"{script_args.dataset_name}: cannot load config {config!r}: {e}") from e
    if script_args.dataset_train_split not in ds:
        raise ValueError(
            f"{script_args.dataset_name} [{config}] has no split {script_args.dataset_train_split!r} "
            f"(it has {sorted(ds)}); run `spanpref pairs` with more data or other split proportions"
        )
    train = ds[script_args.dataset_train_split]
    evaluation = ds.get(script_args.dataset_test_split)
    if script_args.max_train_samples is not None:
        train = train.select(range(min(script_args.max_train_samples, len(train))))
    if evaluation is not None and script_args.max_eval_samples is not None:
        evaluation = evaluation.select(range(min(script_args.max_eval_samples, len(evaluation))))
    if evaluation is None:
        logger.warning(
            "%s [%s] has no %r split: no validation metrics",
            script_args.dataset_name,
            config,
            script_args.dataset_test_split,
        )
    return train, evaluation


def dataset_fingerprint(script_args: ScriptArguments, stage: str) -> str:
    """What identifies the data: the Hub revision, or for a local folder its content-hashed shard names."""
    if script_args.dataset_revision:
        return script_args.dataset_revision
    folder = Path(script_args.dataset_name)
    config = script_args.dataset_config or DEFAULT_CONFIG[stage]
    shards = sorted(p.name for p in (folder / "data" / config).glob("*.parquet")) if folder.is_dir() else []
    return ", ".join(shards) or "main"


def _last_checkpoint(output_dir: str) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None


def save_merged(trainer, output_dir: str) -> None:
    """Replace the adapter files in `output_dir` with the merged model; keep the adapter in `adapter/`."""
    import shutil

    out = Path(output_dir)
    adapter_dir = out / "adapter"
    adapter_dir.mkdir(exist_ok=True)
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        if (out / name).exists():
            shutil.move(str(out / name), adapter_dir / name)
    model = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
    model.save_pretrained(out)
    trainer.processing_class.save_pretrained(out)
    logger.info("merged LoRA weights into %s (adapter kept in %s)", out, adapter_dir)


def describe_launch(accelerator) -> str:
    """How a run was launched, for its card: e.g. "FSDP, 4 processes on cuda" or "1 process on cpu"."""
    kind = getattr(accelerator.distributed_type, "value", str(accelerator.distributed_type))
    n = accelerator.num_processes
    processes = f"{n} process{'es' if n != 1 else ''} on {accelerator.device.type}"
    return processes if kind == "NO" else f"{kind}, {processes}"


def _first_evaluation_callback():
    """A trainer callback that keeps the metrics of a run's first evaluation (the one `eval_on_start` asks for)."""
    from transformers import TrainerCallback

    class FirstEvaluation(TrainerCallback):
        metrics: dict[str, float] | None = None

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if self.metrics is None and metrics is not None:
                self.metrics = dict(metrics)

    return FirstEvaluation()


def _count_truncated(dataset, max_length: int | None) -> int:
    """Pairs whose prompt + chosen or prompt + rejected is longer than max_length (TRL cuts them in the collator)."""
    if dataset is None or max_length is None or not hasattr(dataset, "column_names"):
        return 0
    if not {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(dataset.column_names):
        return 0
    return sum(
        len(p) + max(len(c), len(r)) > max_length
        for p, c, r in zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"], strict=True)
    )


def examples_seen(trainer) -> int:
    """Training examples (pairs, for preference training) the optimizer steps held, repeats included."""
    if hasattr(trainer, "pairs_seen"):
        return trainer.pairs_seen()
    args = trainer.args
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * trainer.accelerator.num_processes
    # the last batch of an epoch can be short: never more than the epochs started times the dataset
    epochs = math.ceil(trainer.state.epoch or 0)
    return min(trainer.state.global_step * per_step, epochs * len(trainer.train_dataset))


def count_training_rows(trainer, train_ds, eval_ds) -> dict[str, Any]:
    """What the trainer will really train and validate on, against what the repo holds: rows TRL dropped (a prompt
    that fills max_length) or that grouping could not fit are counted and logged, never lost in silence."""
    counts: dict[str, Any] = {}
    grouping = getattr(trainer, "grouping", None)
    for split, given, used in (("train", train_ds, trainer.train_dataset), ("eval", eval_ds, trainer.eval_dataset)):
        n = len(given) if given is not None else 0
        if grouping is not None:
            stats = grouping.get(split, {})
            kept, extra = stats.get("pairs", 0), {f"{split}_groups": stats.get("groups", 0)}
        else:
            kept, extra = (len(used) if used is not None else 0), {}
            truncated = _count_truncated(used, getattr(trainer.args, "max_length", None))
            if truncated:
                extra[f"{split}_examples_truncated"] = truncated
                logger.warning(
                    "%s: %d of %d examples are cut at max_length %s (their completions lose the end)",
                    split,
                    truncated,
                    kept,
                    trainer.args.max_length,
                )
        counts[f"{split}_examples"] = kept
        counts[f"{split}_examples_in_repo"] = n
        counts[f"{split}_examples_dropped"] = n - kept
        counts.update(extra)
        if n - kept:
            logger.warning(
                "%s: %d of %d examples cannot be trained on untruncated at max_length %s and were "
                "dropped (prompt alone fills it, or prompt + response does not fit)",
                split,
                n - kept,
                n,
                getattr(trainer.args, "max_length", None),
            )
    if grouping is not None:
        counts["grouping"] = grouping
    if counts["train_examples"] == 0:
        raise SystemExit(
            f"no training example is left of the {counts['train_examples_in_repo']} in the repo at "
            f"max_length {getattr(trainer.args, 'max_length', None)}: raise max_length or cut the "
            "documents shorter (`spanpref pairs --max-document-chars`)"
        )
    return counts


def train(stage: str, script_args: ScriptArguments, training_args, model_args) -> dict[str, Any]:
    """Train one stage; returns (and writes to `spanpref_results.json`) the metrics before and after."""
    import torch
    from trl import get_peft_config

    from spanpref.models import DEFAULT_MODEL_ALIASES, resolve_model

    config_class, trainer_class = stage_classes(stage)
    if not isinstance(training_args, config_class):
        raise TypeError(f"{stage} needs a {config_class.__name__}, got {type(training_args).__name__}")
    if getattr(training_args, "training_mode", None) == "grouped":
        from spanpref.training.trainer import GroupedDPOTrainer

        trainer_class = GroupedDPOTrainer
    requested = model_args.model_name_or_path
    base_model = DEFAULT_BASE_MODEL if requested in DEFAULT_MODEL_ALIASES else requested
    model_args.model_name_or_path = resolve_model(requested)
    push, training_args.push_to_hub = training_args.push_to_hub, False  # pushed once, with our card, at the end
    if training_args.dataloader_pin_memory and not torch.cuda.is_available():
        training_args.dataloader_pin_memory = False  # it only speeds copies to a GPU; without one torch warns per run
    training_args.model_init_kwargs = {
        **(training_args.model_init_kwargs or {}),
        **({"dtype": model_args.dtype} if model_args.dtype else {}),
        "revision": model_args.model_revision,
    }
    train_ds, eval_ds = load_splits(script_args, stage)
    if eval_ds is None and training_args.eval_strategy != "no":
        training_args.eval_strategy = "no"

    resume = training_args.resume_from_checkpoint or _last_checkpoint(training_args.output_dir)
    # The starting model is validated inside train() (eval_on_start), not by a separate evaluate() first: under
    # FSDP2 accelerate must prepare the model together with its optimizer, which an earlier evaluate() prevents.
    first_eval = _first_evaluation_callback()
    if not resume and eval_ds is not None and script_args.eval_before_training:
        training_args.eval_on_start = True
    trainer = trainer_class(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        peft_config=get_peft_config(model_args),
        callbacks=[first_eval],
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and trainer.accelerator.num_processes == 1:
        # e.g. an FSDP/DeepSpeed config on a machine without GPUs: every process would train alone, on all the data,
        # and they would overwrite each other's output
        raise SystemExit(
            f"launched as {launched} processes, but they did not join one distributed run "
            f"({trainer.accelerator.distributed_type}). Without GPUs, launch with `--multi_gpu` and "
            "`use_cpu: true` in the recipe (two gloo ranks); with GPUs, check the accelerate config."
        )
    main_process = trainer.is_world_process_zero()
    logger.info(
        "training on %d process(es) (%s)", trainer.accelerator.num_processes, trainer.accelerator.distributed_type
    )
    if main_process:
        save_resolved_config(
            training_args.output_dir, stage=stage, script=script_args, model=model_args, training=training_args
        )

    results: dict[str, Any] = {"stage": stage, **count_training_rows(trainer, train_ds, eval_ds)}
    if resume:
        logger.info("resuming from %s", resume)
    started = time.perf_counter()
    train_result = trainer.train(resume_from_checkpoint=resume)
    if training_args.eval_on_start and first_eval.metrics is not None:
        results["before"] = first_eval.metrics
    results["train"] = train_result.metrics
    # Training time proper: the starting model's validation ran inside train() and is not part of it.
    results["seconds"] = time.perf_counter() - started - results.get("before", {}).get("eval_runtime", 0.0)
    if trainer.state.global_step:
        results["seconds_per_step"] = results["seconds"] / trainer.state.global_step
    results["steps"], results["train_examples_seen"] = trainer.state.global_step, examples_seen(trainer)
    if trainer.eval_dataset is not None:
        results["after"] = trainer.evaluate()
    trainer.save_model(training_args.output_dir)
    if script_args.merge_adapters and model_args.use_peft and main_process:
        save_merged(trainer, training_args.output_dir)

    if main_process:
        from spanpref.cards import write_model_card

        write_json(Path(training_args.output_dir) / RESULTS_FILE, results)
        write_model_card(
            training_args.output_dir,
            stage=stage,
            base_model=base_model,
            script_args=script_args,
            training_args=training_args,
            model_args=model_args,
            results=results,
            world_size=trainer.accelerator.num_processes,
            launch=describe_launch(trainer.accelerator),
            dataset_revision=dataset_fingerprint(script_args, stage),
        )
        if push:
            from spanpref.repo import push_folder

            repo_id = training_args.hub_model_id or Path(training_args.output_dir).name
            url = push_folder(
                training_args.output_dir,
                repo_id,
                repo_type="model",
                token=training_args.hub_token,
                private=bool(training_args.hub_private_repo),
                commit_message=f"spanpref: {stage} on {script_args.dataset_name}",
            )
            logger.info("pushed to %s", url)
            results["pushed"] = url
    trainer.accelerator.wait_for_everyone()
    if hasattr(trainer, "end"):
        trainer.end()
    _release(trainer)
    return results


def _release(trainer) -> None:
    """Free the wrapped model and end the process group while every rank is still alive. Left to interpreter exit,
    the DDP reducer's gloo group was destroyed after the other rank had gone, and that destructor deadlocked (seen
    once in a two-process CPU run: rank 0 stuck in ~ProcessGroupGloo after its work was saved)."""
    import gc

    import torch.distributed as dist

    accelerator = trainer.accelerator
    accelerator.free_memory()
    trainer.model = trainer.model_wrapped = None
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in STAGES:
        raise SystemExit(f"usage: python -m spanpref.training.run {{{','.join(STAGES)}}} --config RECIPE [flags]")
    stage = argv[0]
    train(stage, *parse_args(stage, argv[1:]))


if __name__ == "__main__":
    main()
