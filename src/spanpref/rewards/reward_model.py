"""Fine-grained span reward models: one token-classification model per reward group (Fine-Grained RLHF).

The input is the query (optionally the document) followed by the response; the label sits on the last token of
every segment of the group's level (sub-sentence, sentence, whole response): 1 where the annotation marks an error
of the group in that segment, 0 where it does not; every other token is ignored. Any Hugging Face backbone with a
`...ForTokenClassification` head works (Llama-family decoders included: a causal model's last segment token sees
exactly the text up to the end of the segment, which is also what a policy has written when the dense reward is
given).

Two ways to train, both with the transformers `Trainer`:
- full fine-tuning (or LoRA through TRL's `ModelConfig`), the usual choice on a GPU;
- `freeze_backbone`: the backbone's hidden states are computed once for every example and only the classification
  head is trained on them (a linear probe). On a CPU this makes the bundled SmolLM2 usable in minutes; the saved
  model is still a plain `AutoModelForTokenClassification` folder.

Validation metrics are segment-level accuracy and F1 against the majority-class baseline (the train split's most
frequent label predicted for every validation segment). Each group's model folder gets a model card and
`spanpref_reward.json` (group, level, reasons, weight, input format), which `SpanRewardModel` reads back to score.

Run it as `spanpref rewards train FOLDER --recipe recipes/rewards/reward_model/config_<...>.yaml` or
`python -m spanpref.rewards.reward_model --config RECIPE`; flags override the recipe, unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spanpref import schema
from spanpref.io import RESULTS_FILE, save_resolved_config, write_json
from spanpref.rewards.groups import RewardGroup, label_segments, load_groups
from spanpref.rewards.segment import Segment, split_segments

logger = logging.getLogger(__name__)

REWARD_META_FILE = "spanpref_reward.json"
ID2LABEL = {0: "ok", 1: "error"}
IGNORE = -100
CONTEXTS = ("none", "query", "query_document")


@dataclass
class RewardModelArguments:
    """What to train on; optimisation settings come from `transformers.TrainingArguments`, the backbone from TRL's
    `ModelConfig` (`model_name_or_path`, `dtype`, LoRA)."""

    dataset_name: str = field(
        default="outputs/qa_feedback",
        metadata={
            "help": "dataset repo with annotations, responses and queries (documents too for "
            "context=query_document): a folder or a Hub dataset id"
        },
    )
    groups: str = field(
        default="default",
        metadata={"help": "reward group config: a bundled name (recipes/rewards/groups/<name>.yaml) or a YAML file"},
    )
    group_names: list[str] | None = field(
        default=None, metadata={"help": "train only these groups (default: every group of the config)"}
    )
    taxonomy: str = field(default="default", metadata={"help": "taxonomy name or YAML file the reason ids belong to"})
    context: str = field(
        default="query",
        metadata={"help": "what precedes the response in the input: none, query, or query_document"},
    )
    max_document_chars: int = field(
        default=2000, metadata={"help": "cut documents to this many characters (context=query_document)"}
    )
    max_length: int = field(
        default=512, metadata={"help": "longest input in tokens; longer inputs lose tokens from the left (context)"}
    )
    validation_fraction: float = field(
        default=0.2, metadata={"help": "share of queries held out for validation (split by query, never by segment)"}
    )
    split_seed: int = field(default=0, metadata={"help": "seed of the train/validation split of the queries"})
    max_train_examples: int | None = field(
        default=None, metadata={"help": "use only the first N training annotations (after the split)"}
    )
    freeze_backbone: bool = field(
        default=False,
        metadata={
            "help": "train only the classification head on hidden states computed once (fast on CPU); "
            "false: fine-tune the whole model (or its LoRA adapters)"
        },
    )
    backbone_layers: int | None = field(
        default=None,
        metadata={
            "help": "keep only the first N transformer layers of the backbone (smaller, faster reward model; "
            "middle layers often carry the most useful features); default: all"
        },
    )
    feature_batch_size: int = field(
        default=8, metadata={"help": "examples per forward pass when computing hidden states (freeze_backbone)"}
    )
    class_weighting: bool = field(
        default=True, metadata={"help": "weight the loss by inverse label frequency (the labels are imbalanced)"}
    )


# ---------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------
@dataclass
class RewardExample:
    """One annotated response, cut into the segments of one group's level, with one label per segment."""

    annotation_id: str
    query_id: str
    query: str
    response: str
    segments: list[Segment]
    labels: list[int]
    document: str = ""


def format_prefix(context: str, query: str = "", document: str = "", max_document_chars: int = 2000) -> str:
    """The text before the response; the response follows it directly, so its offsets shift by `len(prefix)`."""
    if context == "none":
        return ""
    if context == "query":
        return f"Question: {query}\nAnswer: "
    if context == "query_document":
        from spanpref.prompts import truncate_text

        return f"Document: {truncate_text(document, max_document_chars)}\n\nQuestion: {query}\nAnswer: "
    raise ValueError(f"unknown context {context!r}; choose from {list(CONTEXTS)}")


def load_annotated_responses(source: str, *, with_documents: bool = False) -> list[dict[str, Any]]:
    """Every annotation joined with its response text, query and (optionally) document; dangling ids are errors."""
    from spanpref.repo import load_rows

    annotations = load_rows(source, schema.ANNOTATIONS)
    responses = {r["response_id"]: r for r in load_rows(source, schema.RESPONSES)}
    queries = {q["query_id"]: q for q in load_rows(source, schema.QUERIES)}
    documents = {d["doc_id"]: d for d in load_rows(source, schema.DOCUMENTS)} if with_documents else {}
    out = []
    for i, a in enumerate(annotations):
        where = f"{source}: annotations[{i}] ({a['annotation_id']})"
        response = responses.get(a["response_id"])
        if response is None:
            raise ValueError(f"{where}: response {a['response_id']!r} is not in the responses config")
        query = queries.get(response["query_id"])
        if query is None:
            raise ValueError(f"{where}: query {response['query_id']!r} is not in the queries config")
        document = ""
        if with_documents:
            if query["doc_id"] not in documents:
                raise ValueError(f"{where}: document {query['doc_id']!r} is not in the documents config")
            document = documents[query["doc_id"]]["text"]
        out.append(
            {
                "annotation": a,
                "response": response["text"],
                "query_id": query["query_id"],
                "query": query["query"],
                "document": document,
            }
        )
    return out


def build_reward_examples(
    joined: list[dict[str, Any]], group: RewardGroup, taxonomy_key: str = ""
) -> list[RewardExample]:
    """Segment-labelled examples of one group (responses without any segment are skipped)."""
    out = []
    for row in joined:
        a = row["annotation"]
        if taxonomy_key and a.get("taxonomy") and a["taxonomy"] != taxonomy_key:
            raise ValueError(
                f"annotation {a['annotation_id']}: reasons come from taxonomy {a['taxonomy']}, the reward "
                f"groups from {taxonomy_key}; give a group config written for {a['taxonomy']}"
            )
        segments = split_segments(row["response"], group.level)
        if not segments:
            continue
        out.append(
            RewardExample(
                annotation_id=a["annotation_id"],
                query_id=row["query_id"],
                query=row["query"],
                response=row["response"],
                segments=segments,
                labels=label_segments(row["response"], a, group, segments),
                document=row["document"],
            )
        )
    return out


def split_query_ids(query_ids: Sequence[str], validation_fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """(train, validation) query ids: a seeded permutation of the sorted unique ids, the first share held out."""
    unique = sorted(set(query_ids))
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    order = np.random.default_rng(seed).permutation(len(unique))
    n_val = int(round(validation_fraction * len(unique)))
    if validation_fraction > 0 and len(unique) >= 2:
        n_val = min(max(n_val, 1), len(unique) - 1)
    val = {unique[i] for i in order[:n_val]}
    return set(unique) - val, val


def segment_end_tokens(offsets: Sequence[tuple[int, int]], ends: Sequence[int]) -> list[int]:
    """For each character offset `end` (exclusive), the index of the token holding character `end - 1`."""
    out = []
    for end in ends:
        idx = None
        for t, (s, e) in enumerate(offsets):
            if s < e and s <= end - 1 < e:
                idx = t
                break
        if idx is None:  # a character no token claims (rare byte-level cases): the last token starting before it
            idx = max((t for t, (s, e) in enumerate(offsets) if e > s and s < end), default=None)
        if idx is None:
            raise ValueError(f"no token covers character {end - 1}")
        out.append(idx)
    return out


def encode_for_scoring(
    tokenizer, prefix: str, response: str, segments: Sequence[Segment], max_length: int
) -> tuple[list[int], list[int]]:
    """(input ids, position of each segment's last token), truncated from the left to `max_length` tokens."""
    enc = tokenizer(prefix + response, return_offsets_mapping=True, add_special_tokens=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    positions = segment_end_tokens(offsets, [len(prefix) + s.end for s in segments])
    cut = max(0, len(ids) - max_length)
    if cut and positions and positions[0] < cut:
        raise ValueError(f"response too long for max_length={max_length}: its first segment would be cut off")
    return ids[cut:], [p - cut for p in positions]


def encode_example(tokenizer, example: RewardExample, args: RewardModelArguments) -> dict[str, list[int]]:
    prefix = format_prefix(args.context, example.query, example.document, args.max_document_chars)
    try:
        ids, positions = encode_for_scoring(tokenizer, prefix, example.response, example.segments, args.max_length)
    except ValueError as e:
        raise ValueError(f"annotation {example.annotation_id}: {e}; raise max_length") from e
    labels = [IGNORE] * len(ids)
    for p, label in zip(positions, example.labels, strict=True):
        labels[p] = label
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


# ---------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------
def compute_segment_metrics(predictions: Sequence[int], labels: Sequence[int]) -> dict[str, float]:
    """Accuracy, F1 of the error class, and macro F1 (mean of both classes' F1) over segments."""
    pred, gold = np.asarray(predictions, dtype=int), np.asarray(labels, dtype=int)
    if pred.shape != gold.shape:
        raise ValueError(f"{pred.shape} predictions for {gold.shape} labels")

    def f1(cls: int) -> float:
        tp = int(((pred == cls) & (gold == cls)).sum())
        fp, fn = int(((pred == cls) & (gold != cls)).sum()), int(((pred != cls) & (gold == cls)).sum())
        return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)

    return {
        "accuracy": float((pred == gold).mean()) if len(gold) else 0.0,
        "f1_error": f1(1),
        "macro_f1": (f1(0) + f1(1)) / 2,
        "segments": int(len(gold)),
        "error_rate": float(gold.mean()) if len(gold) else 0.0,
    }


def majority_baseline(train_labels: Sequence[int], eval_labels: Sequence[int]) -> dict[str, float]:
    """Metrics of predicting the train split's most frequent label for every evaluation segment."""
    counts = Counter(train_labels)
    majority = max(sorted(counts), key=lambda k: counts[k]) if counts else 0
    return {**compute_segment_metrics([majority] * len(eval_labels), eval_labels), "label": ID2LABEL[majority]}


def _metrics_from_eval(eval_pred) -> dict[str, float]:
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    flat_labels = np.asarray(labels).reshape(-1)
    flat_pred = np.asarray(logits).reshape(-1, np.asarray(logits).shape[-1]).argmax(-1)
    keep = flat_labels != IGNORE
    out = compute_segment_metrics(flat_pred[keep], flat_labels[keep])
    out.pop("segments")
    out.pop("error_rate")
    return out


# ---------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------
def _class_weights(labels: Sequence[int]):
    import torch

    counts = np.bincount(np.asarray(labels, dtype=int), minlength=2).astype(float)
    weights = np.where(counts > 0, counts.sum() / (2 * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def _loss_func(weights):
    import torch.nn.functional as F

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"]
        w = None if weights is None else weights.to(logits.device)
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), weight=w, ignore_index=IGNORE
        )

    return loss


def load_token_classifier(model_path: str, args: RewardModelArguments, model_args: Any):
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=getattr(model_args, "model_revision", None))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    kwargs: dict[str, Any] = {"num_labels": 2, "id2label": ID2LABEL, "label2id": {v: k for k, v in ID2LABEL.items()}}
    if args.backbone_layers:
        kwargs["num_hidden_layers"] = args.backbone_layers
    dtype = getattr(model_args, "dtype", None)
    if dtype and dtype != "auto":
        kwargs["dtype"] = getattr(torch, dtype)
    model = AutoModelForTokenClassification.from_pretrained(
        model_path, revision=getattr(model_args, "model_revision", None), **kwargs
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model


class _Head:
    """Built lazily (torch import): the classification head alone, trained on cached hidden states."""

    @staticmethod
    def build(score):
        import copy

        from torch import nn

        class Head(nn.Module):
            def __init__(self):
                super().__init__()
                self.score = copy.deepcopy(score)

            def forward(self, features, labels=None):
                return {"logits": self.score(features)}

        return Head()


def compute_hidden_states(
    model, encoded: list[dict[str, list[int]]], batch_size: int, pad_id: int
) -> list[np.ndarray]:
    """The backbone's last hidden state at the labelled tokens of each example (in order), one forward pass each."""
    import torch

    backbone = getattr(model, model.base_model_prefix)
    device = next(model.parameters()).device
    out: list[np.ndarray | None] = [None] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    backbone.eval()
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            width = max(len(encoded[i]["input_ids"]) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                n = len(encoded[i]["input_ids"])
                ids[row, :n] = torch.tensor(encoded[i]["input_ids"])
                mask[row, :n] = 1
            hidden = backbone(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state.float().cpu()
            for row, i in enumerate(idx):
                positions = [p for p, label in enumerate(encoded[i]["labels"]) if label != IGNORE]
                out[i] = hidden[row, positions].numpy()
            logger.info("hidden states: %d/%d examples", min(b + batch_size, len(order)), len(order))
    return out  # type: ignore[return-value]


def _flat_features(encoded, features) -> dict[str, Any]:
    rows = [f for f in features if len(f)]
    labels = [label for e in encoded for label in e["labels"] if label != IGNORE]
    return {
        "features": np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, 1), np.float32),
        "labels": np.asarray(labels, dtype=np.int64),
    }


def _train_group(
    group: RewardGroup, train_ex, val_ex, args, training_args, model_args, model_path: str, cache: dict
) -> tuple[Any, Any, dict[str, Any]]:
    """Train one group's model; returns (model, tokenizer, results)."""
    import datasets
    import torch
    from transformers import DataCollatorForTokenClassification, Trainer

    tokenizer, model = load_token_classifier(model_path, args, model_args)
    enc_train = [encode_example(tokenizer, e, args) for e in train_ex]
    enc_val = [encode_example(tokenizer, e, args) for e in val_ex]
    train_labels = [lab for e in train_ex for lab in e.labels]
    val_labels = [lab for e in val_ex for lab in e.labels]
    weights = _class_weights(train_labels) if args.class_weighting else None
    results: dict[str, Any] = {
        "group": group.to_dict(),
        "train_examples": len(train_ex),
        "eval_examples": len(val_ex),
        "train_segments": len(train_labels),
        "eval_segments": len(val_labels),
        "train_error_rate": float(np.mean(train_labels)) if train_labels else 0.0,
    }
    if val_labels:
        results["baseline"] = majority_baseline(train_labels, val_labels)

    group_args = dataclasses.replace(
        training_args,
        output_dir=str(Path(training_args.output_dir) / group.name),
        push_to_hub=False,
        save_strategy="no",
        eval_strategy="no" if not val_ex else training_args.eval_strategy,
    )
    started = time.perf_counter()
    if args.freeze_backbone:
        # the backbone is the same for every group: its hidden states are computed once per run
        key = "hidden"
        if key not in cache:
            cache[key] = {}
        feats = cache[key]
        missing = [e for e in train_ex + val_ex if e.annotation_id not in feats]
        if missing:
            enc_all = [encode_example(tokenizer, e, dataclasses.replace(args)) for e in missing]
            # every token may be a segment end of some level: keep all tokens' states, select per group below
            enc_all = [{**x, "labels": [0] * len(x["input_ids"])} for x in enc_all]
            for e, h in zip(
                missing,
                compute_hidden_states(model, enc_all, args.feature_batch_size, tokenizer.pad_token_id),
                strict=True,
            ):
                feats[e.annotation_id] = h

        def select(examples, encoded):
            out = []
            for e, x in zip(examples, encoded, strict=True):
                positions = [p for p, label in enumerate(x["labels"]) if label != IGNORE]
                # the cached states cover the full (left-truncated) input; positions index into the same tokens
                out.append(feats[e.annotation_id][positions])
            return out

        train_ds = datasets.Dataset.from_dict(_flat_features(enc_train, select(train_ex, enc_train)))
        val_ds = datasets.Dataset.from_dict(_flat_features(enc_val, select(val_ex, enc_val))) if val_ex else None
        head = _Head.build(model.score)
        trainer = Trainer(
            model=head,
            args=group_args,
            train_dataset=train_ds.with_format("torch"),
            eval_dataset=val_ds.with_format("torch") if val_ds is not None else None,
            compute_loss_func=_loss_func(weights),
            compute_metrics=_metrics_from_eval,
        )
        train_result = trainer.train()
        with torch.no_grad():
            model.score.load_state_dict(head.score.state_dict())
    else:
        from trl import get_peft_config

        peft_config = get_peft_config(model_args)
        if peft_config is not None:
            from peft import get_peft_model

            peft_config.task_type = "TOKEN_CLS"
            peft_config.modules_to_save = list({*(peft_config.modules_to_save or []), "score"})
            model = get_peft_model(model, peft_config)
        train_ds = datasets.Dataset.from_list(enc_train)
        val_ds = datasets.Dataset.from_list(enc_val) if enc_val else None
        trainer = Trainer(
            model=model,
            args=group_args,
            train_dataset=train_ds,
            eval_dataset=val_ds,
            data_collator=DataCollatorForTokenClassification(tokenizer),
            compute_loss_func=_loss_func(weights),
            compute_metrics=_metrics_from_eval,
        )
        train_result = trainer.train()
        if peft_config is not None:
            model = model.merge_and_unload()
    results["train"] = train_result.metrics
    results["seconds"] = time.perf_counter() - started
    if val_ex:
        results["eval"] = trainer.evaluate()
        results["eval"] = {k.removeprefix("eval_"): v for k, v in results["eval"].items()}
    return model, tokenizer, results


def train_reward_models(args: RewardModelArguments, training_args, model_args, *, api: Any = None) -> dict[str, Any]:
    """Train one reward model per selected group into `<output_dir>/<group>/`; returns the results of all groups
    (also written to `<output_dir>/spanpref_results.json`). With `push_to_hub`, each group's folder is pushed to
    `<hub_model_id or output_dir name>-<group>`."""
    from spanpref.models import DEFAULT_MODEL_ALIASES, resolve_model
    from spanpref.training.run import DEFAULT_BASE_MODEL

    if args.context not in CONTEXTS:
        raise ValueError(f"unknown context {args.context!r}; choose from {list(CONTEXTS)}")
    requested = model_args.model_name_or_path
    base_model = DEFAULT_BASE_MODEL if requested in DEFAULT_MODEL_ALIASES else requested
    model_path = resolve_model(requested)
    group_config = load_groups(args.groups, args.taxonomy)
    groups = group_config.select(args.group_names)
    joined = load_annotated_responses(args.dataset_name, with_documents=args.context == "query_document")
    if not joined:
        raise ValueError(f"{args.dataset_name}: the annotations config is empty")
    train_q, val_q = split_query_ids([r["query_id"] for r in joined], args.validation_fraction, args.split_seed)

    from accelerate import PartialState

    main_process = PartialState().is_main_process
    out_dir = Path(training_args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if main_process:
        save_resolved_config(out_dir, script=args, model=model_args, training=training_args)
    results: dict[str, Any] = {"base_model": base_model, "dataset": args.dataset_name, "groups": {}}
    cache: dict[str, Any] = {}
    for group in groups:
        examples = build_reward_examples(joined, group, group_config.taxonomy)
        train_ex = [e for e in examples if e.query_id in train_q][: args.max_train_examples]
        val_ex = [e for e in examples if e.query_id in val_q]
        logger.info("group %s: %d train / %d validation responses", group.name, len(train_ex), len(val_ex))
        model, tokenizer, res = _train_group(
            group, train_ex, val_ex, args, training_args, model_args, model_path, cache
        )
        results["groups"][group.name] = res
        if main_process:  # under `accelerate launch` every rank trained; one writes and pushes
            _save_group(
                out_dir / group.name,
                model,
                tokenizer,
                group,
                res,
                args,
                training_args,
                base_model,
                group_config.taxonomy,
                api,
            )
    if main_process:
        write_json(out_dir / RESULTS_FILE, results)
    return results


def _save_group(
    folder: Path,
    model,
    tokenizer,
    group: RewardGroup,
    res: dict[str, Any],
    args,
    training_args,
    base_model: str,
    taxonomy: str,
    api: Any,
) -> None:
    """A group's model folder: weights, tokenizer, `spanpref_reward.json`, model card; pushed if asked."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    meta = {
        "group": group.to_dict(),
        "taxonomy": taxonomy,
        "context": args.context,
        "max_document_chars": args.max_document_chars,
        "max_length": args.max_length,
        "base_model": base_model,
        "id2label": ID2LABEL,
    }
    (folder / REWARD_META_FILE).write_text(json.dumps(meta, indent=2))
    card = render_reward_model_card(group, res, args, training_args, base_model, taxonomy)
    (folder / "README.md").write_text(card, encoding="utf-8")
    if training_args.push_to_hub:
        from spanpref.repo import push_folder

        repo_id = f"{training_args.hub_model_id or folder.parent.name}-{group.name}"
        res["pushed"] = push_folder(
            folder,
            repo_id,
            repo_type="model",
            token=training_args.hub_token,
            private=bool(training_args.hub_private_repo),
            api=api,
            commit_message=f"spanpref: {group.name} reward model",
        )
        logger.info("pushed %s to %s", folder, res["pushed"])


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else "-" if v is None else str(v)


def render_reward_model_card(
    group: RewardGroup, res: dict[str, Any], args: RewardModelArguments, training_args, base_model: str, taxonomy: str
) -> str:
    """A model card: what the model predicts, the data, the validation metrics against the majority baseline."""
    import transformers

    from spanpref import __version__

    meta = {
        "library_name": "transformers",
        "pipeline_tag": "token-classification",
        "base_model": base_model,
        "datasets": [args.dataset_name],
        "tags": ["spanpref", "reward-model", "fine-grained-rlhf", group.name],
    }
    ev, base = res.get("eval") or {}, res.get("baseline") or {}
    rows = "\n".join(
        f"| {m} | {_fmt(ev.get(m))} | {_fmt(base.get(m))} |" for m in ("accuracy", "f1_error", "macro_f1")
    )
    method = "classification head trained on frozen backbone states" if args.freeze_backbone else "full fine-tuning"
    layers = f", first {args.backbone_layers} layers" if args.backbone_layers else ""
    from huggingface_hub import ModelCard

    from spanpref.cards import render_card_text

    return render_card_text(
        ModelCard,
        meta,
        f"""# {group.name} span reward model

A fine-grained reward model in the style of Fine-Grained RLHF (Wu et al., 2023), trained with
[spanpref](https://github.com/) on span-level human feedback. It reads the input below and predicts, at the
**last token of every {group.level.replace("_", "-")}** of the response, whether that segment has an error of this
group: `error` (label 1) or `ok` (label 0). {group.description}

- Reasons counted as errors ({taxonomy}): {", ".join(f"`{r}`" for r in group.reasons)}
- Segment level: `{group.level}`; dense-reward weight: ±{group.weight:g}
- Input: `{format_prefix(args.context, "<query>", "<document>", args.max_document_chars)!r}` followed by the
  response (max {args.max_length} tokens, truncated from the left)
- Backbone: `{base_model}`{layers}; method: {method}

## Data

`{args.dataset_name}`: {res["train_examples"]} annotated responses ({res["train_segments"]} segments,
{100 * res["train_error_rate"]:.1f}% errors) for training, {res["eval_examples"]} ({res["eval_segments"]} segments)
for validation, split by query (seed {args.split_seed}).

## Validation (segment level)

| metric | this model | majority baseline (`{base.get("label", "-")}`) |
|---|---|---|
{rows}

## Training

learning rate {training_args.learning_rate}, epochs {training_args.num_train_epochs}, batch
{training_args.per_device_train_batch_size}, class-weighted loss: {args.class_weighting}, seed {training_args.seed};
{_fmt(res.get("seconds"))} s. spanpref {__version__}, transformers {transformers.__version__}.

## Use

```python
from spanpref.rewards.reward_model import SpanRewardModel
rm = SpanRewardModel("path/or/hub-id")
rm.error_probs(["<query>"], ["<response>"])  # one P(error) per segment
```
""",
    )


# ---------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------
class SpanRewardModel:
    """A trained reward model folder (or Hub id) that scores segments: P(error) at each segment's last token."""

    def __init__(self, path: str | Path, *, device: str | None = None, dtype: Any = None):
        import torch
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        folder = Path(path)
        if folder.is_dir():
            meta_file = folder / REWARD_META_FILE
            if not meta_file.is_file():
                raise FileNotFoundError(f"{folder} has no {REWARD_META_FILE}: not a spanpref reward model folder")
            meta = json.loads(meta_file.read_text())
        else:
            from huggingface_hub import hf_hub_download

            meta = json.loads(Path(hf_hub_download(str(path), REWARD_META_FILE)).read_text())
        g = meta["group"]
        self.group = RewardGroup(
            name=g["name"],
            level=g["level"],
            reasons=tuple(g["reasons"]),
            weight=g["weight"],
            description=g.get("description", ""),
        )
        self.name, self.level, self.meta = self.group.name, self.group.level, meta
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForTokenClassification.from_pretrained(str(path), **({"dtype": dtype} if dtype else {}))
        self.model.eval().requires_grad_(False)
        self.device = torch.device(device) if device else torch.device("cpu")
        self.model.to(self.device)

    def to(self, device) -> SpanRewardModel:
        self.model.to(device)
        self.device = next(self.model.parameters()).device
        return self

    def error_probs(
        self,
        queries: Sequence[str],
        responses: Sequence[str],
        segments: Sequence[Sequence[Segment]] | None = None,
        documents: Sequence[str] | None = None,
    ) -> list[list[float]]:
        """P(error) for every segment of every response (segments default to the model's level)."""
        import torch

        segments = [split_segments(r, self.level) for r in responses] if segments is None else segments
        documents = documents or [""] * len(responses)
        encoded = []
        for q, r, segs, d in zip(queries, responses, segments, documents, strict=True):
            prefix = format_prefix(self.meta["context"], q, d, self.meta["max_document_chars"])
            encoded.append(
                encode_for_scoring(self.tokenizer, prefix, r, segs, self.meta["max_length"]) if segs else ([], [])
            )
        todo = [i for i, (ids, _) in enumerate(encoded) if ids]
        out: list[list[float]] = [[] for _ in responses]
        if not todo:
            return out
        width = max(len(encoded[i][0]) for i in todo)
        ids = torch.full((len(todo), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(todo), width), dtype=torch.long)
        for row, i in enumerate(todo):
            n = len(encoded[i][0])
            ids[row, :n] = torch.tensor(encoded[i][0])
            mask[row, :n] = 1
        with torch.inference_mode():
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits.float()
        probs = logits.softmax(-1)[..., 1].cpu()
        for row, i in enumerate(todo):
            out[i] = [float(probs[row, p]) for p in encoded[i][1]]
        return out


# ---------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------
def make_parser():
    from transformers import TrainingArguments
    from trl import ModelConfig, TrlParser

    return TrlParser((RewardModelArguments, TrainingArguments, ModelConfig), prog="reward_model.py")


def load_recipe(recipe: str | Path, **overrides: Any) -> tuple[Any, Any, Any]:
    """(reward-model, training, model) arguments of a recipe with `overrides`, for `train_reward_models`."""
    from spanpref.training.run import parse_recipe

    return parse_recipe(make_parser(), recipe, overrides)


def parse_args(argv: list[str] | None = None):
    """`--config RECIPE` plus flag overrides; unknown keys in the recipe or the flags are errors."""
    return make_parser().parse_args_and_config(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    results = train_reward_models(*parse_args(argv))
    logger.info("%s", format_results(results))
    return results


def format_results(results: dict[str, Any]) -> str:
    """A table of the validation metrics of every group against its majority baseline."""
    lines = ["group         level         segs  acc (base)     F1 error (base)  macro F1 (base)"]
    for name, res in results["groups"].items():
        ev, base = res.get("eval") or {}, res.get("baseline") or {}
        cells = "  ".join(f"{_fmt(ev.get(m))} ({_fmt(base.get(m))})" for m in ("accuracy", "f1_error", "macro_f1"))
        lines.append(f"{name:13s} {res['group']['level']:12s} {res['eval_segments']:5d}  {cells}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
