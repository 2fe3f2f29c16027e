"""TRL's DPOTrainer with DPO-Positive, and the loss computed from `spanpref.training.losses`.

TRL 1.16 computes every DPO-family loss inside one long `DPOTrainer._compute_loss` with no hook, and it has no
DPO-Positive. For the losses spanpref uses (`sigmoid`, `dpo_positive`, `apo_zero`, `apo_down`) this trainer
replaces that method with a short one: the same forward passes (policy; reference model, precomputed reference
log-probs or the adapter-disabled PEFT model), then the pure loss functions. Any other loss type, or an option this
path does not implement (f-divergences, WPO weighting, LD-DPO, MoE aux loss), goes to TRL's method unchanged.

What the override relies on in TRL (tests/test_training.py fails if an upgrade changes any of it): the collated
batch is [chosen; rejected] with `input_ids`, `attention_mask`, `completion_mask` and optional `ref_chosen_logps` /
`ref_rejected_logps`; TRL-patched models accept `fused_lm_head=True` with `labels` and return per-token
`log_probs`; `self._metrics[mode]` collects logged means. trl is pinned exactly in setup.cfg for this reason.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import is_peft_model
from trl import DPOConfig, DPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import use_adapter

from spanpref.io import atomic_write_bytes
from spanpref.training.losses import LOSSES, PreferenceLogps, compute_dpop_penalty

TRAINING_MODES = ("grouped", "pairwise")
TRL_VERSION = "1.16.0"  # the version whose DPOTrainer internals the override was checked against
logger = logging.getLogger(__name__)


@dataclass
class SpanprefDPOConfig(DPOConfig):
    """TRL's DPOConfig plus DPO-Positive. `loss_type: dpo_positive` selects it."""

    dpop_lambda: float = field(
        default=50.0,
        metadata={
            "help": "DPO-Positive penalty weight lambda (Pal et al. 2024 use 50): how hard a drop of the chosen "
            "answer's likelihood below the reference is punished. Only used with loss_type dpo_positive."
        },
    )
    training_mode: str = field(
        default="grouped",
        metadata={
            "help": "grouped: all pairs of a prompt are scored from one packed sequence (the prompt once, each "
            "distinct response once; exact, and several times fewer tokens on chains and A/B sets); "
            "pairwise: TRL's layout, two sequences per pair",
            "choices": ["grouped", "pairwise"],
        },
    )
    share_prefixes: bool = field(
        default=False,
        metadata={
            "help": "grouped mode: responses of a group that begin with the same tokens share them (a trie); "
            "pays when responses share long prefixes, as consecutive chain states do"
        },
    )
    ref_logps_cache: str | None = field(
        default=None,
        metadata={
            "help": "with precompute_ref_log_probs: folder of reference log-probs kept across runs, keyed by a "
            "hash of the reference weights, the tokenized pairs and the settings that change them, so runs "
            "that share a reference and data (a learning-rate sweep, the four losses on one pair set, a "
            "rerun) compute them once. Default: <spanpref cache>/ref_logps; 'none' turns it off."
        },
    )

    def __post_init__(self):
        if self.training_mode not in TRAINING_MODES:
            raise ValueError(f"unknown training_mode {self.training_mode!r}; choose from {list(TRAINING_MODES)}")
        super().__post_init__()


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """The reference log-prob cache, written atomically: another run may read the same file while this one writes."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def _hash_dataset(h, dataset) -> None:
    """Feed what the model sees of a tokenized dataset (its `*_ids` and `*_mask` columns, in row order) to hash `h`.

    Values, not Arrow buffers: the same rows can be laid out in different chunks in two processes."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if dataset._indices is not None:
        dataset = dataset.flatten_indices()
    table = dataset.data.table
    names = sorted(n for n in table.column_names if n.endswith(("_ids", "_mask", "_index")))
    if not names:
        raise ValueError(f"no token columns to key reference log-probs on (columns: {table.column_names})")
    for name in names:
        column = table.column(name).combine_chunks()
        h.update(name.encode())
        while pa.types.is_list(column.type) or pa.types.is_large_list(column.type):  # nested: every level's lengths
            h.update(pc.list_value_length(column).to_numpy(zero_copy_only=False).astype("int64").tobytes())
            column = pc.list_flatten(column)
        h.update(column.to_numpy(zero_copy_only=False).astype("int64").tobytes())


class SpanprefDPOTrainer(DPOTrainer):
    def _ref_logps_cache_file(self, dataset, batch_size: int) -> Path | None:
        """Where the reference log-probs of `dataset` are kept across runs (None: not kept). Rank 0 decides."""
        from accelerate.utils import broadcast_object_list

        from spanpref.models import default_cache_root

        folder = getattr(self.args, "ref_logps_cache", None)
        if folder is not None and folder.lower() == "none":
            return None
        h = hashlib.sha256()
        model = self.ref_model or self.model
        settings = {
            name: str(getattr(self.args, name, None))
            for name in (
                "max_length",
                "truncation_mode",
                "padding_free",
                "pad_to_multiple_of",
                "use_logits_to_keep",
                "bf16",
                "fp16",
                "training_mode",
                "share_prefixes",
            )
        }
        settings.update(
            model_hash=self._precompute_model_hash,
            dtype=str(getattr(model, "dtype", "")),
            batch_size=batch_size,
            trl=TRL_VERSION,
            torch=torch.__version__,
        )
        h.update(json.dumps(settings, sort_keys=True).encode())
        _hash_dataset(h, dataset)
        key = [h.hexdigest()[:32]]
        broadcast_object_list(key, from_process=0)
        return Path(folder or default_cache_root() / "ref_logps") / f"{key[0]}.npz"

    def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
        """TRL's precompute, but kept on disk across runs (`ref_logps_cache`): TRL's own cache is keyed by the
        datasets fingerprint of the tokenized pairs, which is not the same in two processes."""
        from datasets import Dataset, concatenate_datasets

        path = self._ref_logps_cache_file(dataset, batch_size)
        if path is not None and path.is_file():
            with np.load(path) as cached:
                columns = {k: cached[k] for k in ("ref_chosen_logps", "ref_rejected_logps")}
            if len(columns["ref_chosen_logps"]) == len(dataset):
                logger.info("reference log-probs of the %s dataset from %s", name, path)
                return concatenate_datasets([dataset, Dataset.from_dict(columns)], axis=1)
        result = super()._precompute_ref_logps(dataset, name, batch_size)
        if path is not None and self.accelerator.is_main_process:
            path.parent.mkdir(parents=True, exist_ok=True)
            _save_npz(
                path,
                ref_chosen_logps=np.asarray(result["ref_chosen_logps"], dtype=np.float32),
                ref_rejected_logps=np.asarray(result["ref_rejected_logps"], dtype=np.float32),
            )
            logger.info("reference log-probs of the %s dataset kept in %s", name, path)
        return result

    def _uses_own_loss(self) -> bool:
        own = set(self.loss_types) <= set(LOSSES)
        exotic = (
            self.f_divergence_type != "reverse_kl"
            or self.use_weighting
            or self.ld_alpha is not None
            or self.aux_loss_enabled
            or len(self.loss_types) != 1
        )
        if "dpo_positive" in self.loss_types and (not own or exotic):
            raise ValueError(
                "loss_type dpo_positive cannot be combined with other loss types, f_divergence_type, use_weighting, "
                "ld_alpha or MoE aux losses; use it alone"
            )
        return own and not exotic

    def _sequence_logps(self, model, model_kwargs: dict, labels: torch.Tensor, seq_len: int) -> torch.Tensor:
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        return outputs.log_probs[:, -seq_len:].sum(dim=1)

    def _reference_logps(self, inputs: dict, model_kwargs: dict, labels: torch.Tensor, seq_len: int):
        if self.precompute_ref_logps:
            return inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            if is_peft_model(self.model) and self.ref_model is None:
                # a fresh adapter: the base model is the reference; a re-trained adapter keeps its copy as "ref"
                unwrapped = self.accelerator.unwrap_model(self.model)
                with use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None):
                    ref = self._sequence_logps(self.model, model_kwargs, labels, seq_len)
            else:
                ref = self._sequence_logps(self.ref_model, model_kwargs, labels, seq_len)
        return ref.chunk(2, dim=0)

    def _compute_loss(self, model, inputs, return_outputs):
        if return_outputs or not self._uses_own_loss():
            return super()._compute_loss(model, inputs, return_outputs)
        mode = "train" if self.model.training else "eval"
        model_kwargs = {
            k: v for k, v in inputs.items() if k not in {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}
        }
        model_kwargs["use_cache"] = False
        completion_mask = inputs["completion_mask"]
        seq_len = completion_mask.size(1) - 1  # log-probs are of the shifted sequence
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)

        chosen, rejected = self._sequence_logps(model, model_kwargs, labels, seq_len).chunk(2, dim=0)
        ref_chosen, ref_rejected = self._reference_logps(inputs, model_kwargs, labels, seq_len)
        logps = PreferenceLogps(chosen, rejected, ref_chosen, ref_rejected)
        (loss_type,) = self.loss_types
        per_pair = LOSSES[loss_type](logps, beta=self.beta, dpop_lambda=getattr(self.args, "dpop_lambda", 0.0))
        loss = per_pair.mean() * self.loss_weights[0]

        self._log_preference_metrics(mode, logps)
        return loss

    def _log_preference_metrics(self, mode: str, logps: PreferenceLogps) -> None:
        gather = self.accelerator.gather_for_metrics
        for name, value in self._preference_metrics(logps).items():
            self._metrics[mode][name].append(gather(value).float().mean().item())

    def _preference_metrics(self, logps: PreferenceLogps) -> dict[str, torch.Tensor]:
        """Per-pair values of the logged metrics."""
        chosen_rewards = (self.beta * logps.chosen_logratios).detach()
        rejected_rewards = (self.beta * logps.rejected_logratios).detach()
        return {
            "rewards/chosen": chosen_rewards,
            "rewards/rejected": rejected_rewards,
            # the preference accuracy of the paper's validation metric: the implicit reward ranks the pair right
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
            "rewards/margins": chosen_rewards - rejected_rewards,
            "logps/chosen": logps.chosen.detach(),
            "logps/rejected": logps.rejected.detach(),
            # the policy alone (no reference) gives the chosen answer the higher likelihood: meaningful before
            # training too, when every implicit reward is zero
            "logps/accuracies": (logps.chosen > logps.rejected).float().detach(),
            "dpop/penalty": compute_dpop_penalty(logps).detach(),
        }


class GroupedDPOTrainer(SpanprefDPOTrainer):
    """The same losses on grouped batches (`training_mode: grouped`, see `spanpref.training.grouped`).

    A training example is a prompt with all its pairs; a batch is `per_device_train_batch_size` such groups, and its
    loss is the mean over the pairs it holds. Per-response log-probs come from one forward pass over the packed rows,
    for the policy and for the reference (or once, before training, with `precompute_ref_log_probs`)."""

    def __init__(self, *args, **kwargs):
        from spanpref.training.grouped import DataCollatorForGroups

        training_args = kwargs.get("args")
        if training_args is None:
            raise ValueError("grouped training needs its SpanprefDPOConfig passed as args=")
        self.grouping: dict[str, dict[str, int]] = {}
        self._pairs_since_log = 0
        init = dict(training_args.model_init_kwargs or {})
        if (
            isinstance(kwargs.get("model", args[0] if args else None), str)
            and "attn_implementation" not in init
            and torch.cuda.is_available()
            and not training_args.use_cpu
        ):
            # on a GPU a block mask (FlexAttention) skips the masked tiles instead of materialising a dense
            # (rows, 1, L, L) mask for every layer; on CPU the dense mask is the fast path
            init["attn_implementation"] = "flex_attention"
            training_args.model_init_kwargs = init
        if kwargs.get("data_collator") is None:
            kwargs["data_collator"] = DataCollatorForGroups(
                max_length=training_args.max_length,
                share_prefixes=training_args.share_prefixes,
                pad_to_multiple_of=training_args.pad_to_multiple_of,
            )
        super().__init__(*args, **kwargs)
        if self.eval_dataset is not None and not isinstance(self.eval_dataset, dict) and len(self.eval_dataset) == 0:
            # every validation pair was too long: train without validation rather than fail on an empty split
            self.eval_dataset = None
            self.args.eval_strategy = "no"
            self.args.eval_on_start = False
        if not self._uses_own_loss():
            raise ValueError(
                f"grouped training implements the losses {sorted(LOSSES)} without f_divergence_type, "
                f"use_weighting, ld_alpha or MoE aux losses (got loss_type {self.loss_types}); set "
                "training_mode: pairwise for the others"
            )
        self._attn_implementation(self.model)

    def _attn_implementation(self, model) -> str:
        from spanpref.training.grouped import build_tree_mask

        config = self.accelerator.unwrap_model(model).config
        impl = getattr(config, "_attn_implementation", None) or "eager"
        build_tree_mask(torch.ones((1, 1), dtype=torch.long), impl)  # raises for an implementation without masks
        return impl

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        from datasets import Dataset

        from spanpref.training.grouped import group_pairs

        if not isinstance(dataset, Dataset):
            raise ValueError(
                "grouped training needs a map-style Dataset (pairs are grouped by prompt up front); "
                "set training_mode: pairwise for an IterableDataset"
            )
        # TRL drops pairs whose prompt fills max_length without a word; grouping counts what it cannot fit instead
        max_length, args.max_length = args.max_length, None
        try:
            tokenized = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        finally:
            args.max_length = max_length
        rows, stats = group_pairs(
            tokenized.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]),
            max_length=max_length,
            share_prefixes=args.share_prefixes,
        )
        self.grouping[dataset_name] = stats.to_dict()
        logger.info(
            "%s: %d pairs in %d groups (%d packed rows, %d tokens per epoch instead of %d pairwise)",
            dataset_name,
            stats.pairs,
            stats.groups,
            stats.rows,
            stats.tokens_grouped,
            stats.tokens_pairwise,
        )
        if stats.dropped_pairs:
            logger.warning(
                "%s: %d of %d pairs dropped: %d response(s) do not fit max_length %s even alone with "
                "their prompt; raise max_length or shorten the documents (max_document_chars)",
                dataset_name,
                stats.dropped_pairs,
                stats.pairs_in,
                stats.dropped_responses,
                max_length,
            )
        if not rows and dataset_name == "train":
            raise ValueError(
                f"{dataset_name}: none of the {stats.pairs_in} pairs fits max_length {max_length} "
                "(prompt + response); raise max_length or shorten the documents (max_document_chars)"
            )
        if not rows:
            logger.warning(
                "%s: none of the %d pairs fits max_length %s: no validation metrics",
                dataset_name,
                stats.pairs_in,
                max_length,
            )
        if not rows:
            features = _group_features()
            return Dataset.from_dict({name: [] for name in features}, features=features)
        return Dataset.from_list(rows)

    def _set_signature_columns_if_needed(self):
        from spanpref.training.grouped import GROUP_COLUMNS, REF_COLUMN

        if self._signature_columns is None:
            self._signature_columns = [*GROUP_COLUMNS, REF_COLUMN]

    def _reference_forward(self, inputs: dict) -> torch.Tensor:
        import contextlib

        from spanpref.training.grouped import response_logps

        model, adapter = self.ref_model, contextlib.nullcontext()
        if model is None:
            model = self.model
            if self.is_deepspeed_enabled and not self.model_wrapped_by_trainer():
                # before train() a ZeRO-sharded policy cannot be called directly: score through an inference engine,
                # as TRL's own precompute does
                if getattr(self, "_precompute_engine", None) is None:
                    from trl.models import prepare_deepspeed

                    self._precompute_engine = prepare_deepspeed(self.model, self.accelerator)
                model = self._precompute_engine
            if is_peft_model(self.model):
                # a fresh adapter: the base model is the reference; a re-trained adapter keeps its copy as "ref"
                unwrapped = self.accelerator.unwrap_model(self.model)
                adapter = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
        with (
            torch.no_grad(),
            disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
            adapter,
            self.accelerator.autocast(),
        ):
            return response_logps(model, inputs, self._attn_implementation(model))

    def model_wrapped_by_trainer(self) -> bool:
        """Whether train() has prepared the model (before it, a DeepSpeed policy cannot be called directly)."""
        return self.model_wrapped is not self.model

    def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
        """Reference log-probs of every response of every group, computed once (ranks share the work) and kept on
        disk across runs like the pairwise ones (`ref_logps_cache`)."""
        from accelerate.utils import gather_object

        from spanpref.training.grouped import REF_COLUMN

        path = self._ref_logps_cache_file(dataset, batch_size)
        lengths = [len(r) for r in dataset["response_ids"]]
        if path is not None and path.is_file():
            with np.load(path) as cached:
                values, cached_lengths = cached["values"], cached["lengths"]
            if cached_lengths.tolist() == lengths:
                logger.info("reference log-probs of the %s dataset from %s (per response)", name, path)
                return dataset.add_column(REF_COLUMN, _unflatten(values, lengths))
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        mine = list(range(rank, len(dataset), world))
        results = []
        from tqdm.auto import tqdm

        for start in tqdm(
            range(0, len(mine), batch_size),
            desc=f"Computing reference log probs for {name} groups",
            disable=not self.accelerator.is_local_main_process,
        ):
            indices = mine[start : start + batch_size]
            examples = [dataset[i] for i in indices]
            batch = self._prepare_inputs(self.data_collator(examples))
            flat = self._reference_forward(batch).float().cpu().tolist()
            for i, n in zip(indices, (len(e["response_ids"]) for e in examples), strict=True):
                results.append((i, flat[:n]))
                flat = flat[n:]
        merged = dict(gather_object(results)) if world > 1 else dict(results)
        column = [merged[i] for i in range(len(dataset))]
        if path is not None and self.accelerator.is_main_process:
            path.parent.mkdir(parents=True, exist_ok=True)
            _save_npz(
                path,
                values=np.asarray([v for c in column for v in c], dtype=np.float32),
                lengths=np.asarray(lengths, dtype=np.int64),
            )
            logger.info("reference log-probs of the %s dataset kept in %s (per response)", name, path)
        self.accelerator.wait_for_everyone()
        # float32, as stored: a run that reads the cache gets bit-identical values to the one that wrote it
        return dataset.add_column(
            REF_COLUMN, _unflatten(np.asarray([v for c in column for v in c], np.float32), lengths)
        )

    def _compute_loss(self, model, inputs, return_outputs):
        from spanpref.training.grouped import REF_COLUMN, response_logps

        mode = "train" if self.model.training else "eval"
        policy = response_logps(model, inputs, self._attn_implementation(model))
        ref = inputs[REF_COLUMN].to(policy.dtype) if self.precompute_ref_logps else self._reference_forward(inputs)
        chosen, rejected = inputs["chosen_index"], inputs["rejected_index"]
        logps = PreferenceLogps(policy[chosen], policy[rejected], ref[chosen].detach(), ref[rejected].detach())
        (loss_type,) = self.loss_types
        per_pair = LOSSES[loss_type](logps, beta=self.beta, dpop_lambda=getattr(self.args, "dpop_lambda", 0.0))
        loss = per_pair.mean() * self.loss_weights[0]
        self._log_preference_metrics(mode, logps)
        return (loss, None) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def _log_preference_metrics(self, mode: str, logps: PreferenceLogps) -> None:
        # Ranks hold different numbers of pairs: gather sums and counts, not the per-pair tensors.
        metrics = self._preference_metrics(logps)
        count = torch.tensor(float(len(logps.chosen)), device=logps.chosen.device)
        sums = torch.stack([v.float().sum() for v in metrics.values()] + [count])
        sums = self.accelerator.reduce(sums, reduction="sum") if self.accelerator.num_processes > 1 else sums
        if mode == "train":
            self._pairs_since_log += int(sums[-1].item())
        count = max(sums[-1].item(), 1.0)
        for name, total in zip(metrics, sums[:-1].tolist(), strict=True):
            self._metrics[mode][name].append(total / count)

    def pairs_seen(self) -> int:
        """Training pairs the steps so far held (every rank's, across a resume)."""
        logged = max((h.get("pairs_seen", 0) for h in self.state.log_history), default=0)
        return logged + self._pairs_since_log

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            # A step is a prompt group of any size, so the steps alone do not say how many pairs were trained on.
            # The running total lives in log_history, which a checkpoint keeps: a resumed run counts on from it.
            logs["pairs_seen"], self._pairs_since_log = self.pairs_seen(), 0
        super().log(logs, start_time)


def _group_features():
    from datasets import Features, Sequence, Value

    return Features(
        {
            "prompt_ids": Sequence(Value("int64")),
            "response_ids": Sequence(Sequence(Value("int64"))),
            "chosen_index": Sequence(Value("int64")),
            "rejected_index": Sequence(Value("int64")),
        }
    )


def _unflatten(values, lengths: list[int]) -> list[list[float]]:
    out, start = [], 0
    for n in lengths:
        out.append([float(v) for v in values[start : start + n]])
        start += n
    return out
