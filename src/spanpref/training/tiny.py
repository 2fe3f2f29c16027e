"""A tiny random Llama built from a config, for CI and quick checks of the training recipes.

`model_name_or_path: tiny` in a recipe resolves here (see `spanpref.models.resolve_model`). The model
is 2 layers of width 64 with a 1,000-token byte-level BPE trained on the bundled qa-feedback text, and a ChatML chat
template like SmolLM2's: a training step takes milliseconds, and everything around the step (data loading, chat
template, collation, LoRA, two-process gloo training, checkpoints, model cards) is the real code path.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

TINY_MODEL_ID = "tiny"
TINY_MODEL_VERSION = 1  # bump when the recipe below changes, so cached folders get rebuilt
VOCAB_SIZE = 1000
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE):
    """A byte-level BPE (every string is encodable) with a ChatML template; deterministic for the same texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    out = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    out.chat_template = CHATML_TEMPLATE
    return out


def _corpus() -> list[str]:
    from spanpref.importers.qa_feedback import BUNDLED, load_qa_feedback_records

    _, records = load_qa_feedback_records(BUNDLED)
    texts = []
    for rec in records:
        texts.append(rec["question"])
        texts.extend(" ".join(p) for p in rec["passages"])
        texts.extend(rec[f"prediction {k}"] for k in range(1, 5))
    return texts


# Architectures the builder makes. Masks, position ids and attention are handled per architecture in transformers, so
# code that builds its own masks (grouped training) is checked on more than one.
ARCHITECTURES = ("llama", "qwen2")


def build_tiny_model(out_dir: str | os.PathLike, *, seed: int = 0, architecture: str = "llama") -> Path:
    """Write the tiny model (`architecture`: llama or qwen2) and its tokenizer to `out_dir` (created); returns it."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown tiny architecture {architecture!r}; choose from {list(ARCHITECTURES)}")
    out_dir = Path(out_dir)
    tokenizer = build_tiny_tokenizer(_corpus())
    config_class = {"llama": LlamaConfig, "qwen2": Qwen2Config}[architecture]
    config = config_class(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "spanpref_model.json").write_text(json.dumps({"model": TINY_MODEL_ID, "version": TINY_MODEL_VERSION}))
    return out_dir


def prepare_tiny_model(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached tiny model folder, built on first use. Safe when several processes ask at once (accelerate
    launch): each builds into a temporary folder and the first rename wins."""
    from spanpref.models import default_cache_root

    root = Path(cache_dir) if cache_dir else default_cache_root() / "models"
    target = root / f"tiny-llama-v{TINY_MODEL_VERSION}"
    if (target / "spanpref_model.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=root))
    try:
        build_tiny_model(tmp / "model")
        try:
            os.rename(tmp / "model", target)
        except OSError:
            if not (target / "spanpref_model.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("tiny model ready at %s", target)
    return target
