"""Atomic writes and run records (spanpref.io)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from spanpref.io import RESOLVED_CONFIG_FILE, atomic_write_bytes, atomic_write_text, save_resolved_config, write_json


def test_a_write_replaces_the_file_and_leaves_nothing_beside_it(tmp_path):
    path = tmp_path / "report.md"
    path.write_text("old")
    assert atomic_write_text(path, "new → text") == path
    assert path.read_text(encoding="utf-8") == "new → text"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_staging_file(tmp_path):
    path = tmp_path / "cache.npz"
    path.write_bytes(b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.npz"]


def test_json_takes_what_json_has_no_type_for_as_text(tmp_path):
    write_json(tmp_path / "r.json", {"dir": Path("out/a"), "n": 1})
    assert json.loads((tmp_path / "r.json").read_text()) == {"dir": "out/a", "n": 1}


@dataclass
class _Script:
    dataset_name: str = "outputs/demo"
    output: Path = Path("out")


class _Training:
    """Stands for transformers' TrainingArguments, whose to_dict() redacts the Hub token."""

    hub_token = "secret"

    def to_dict(self):
        return {"learning_rate": 0.001, "hub_token": "<HUB_TOKEN>"}


def test_resolved_config_lists_stage_command_and_sections_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["scripts/dpo.py", "--config", "r.yaml"])
    path = save_resolved_config(tmp_path / "run", stage="dpo", script=_Script(), training=_Training(), rl={"k": 1})
    assert path == tmp_path / "run" / RESOLVED_CONFIG_FILE
    resolved = yaml.safe_load(path.read_text())
    assert list(resolved) == ["stage", "command", "script", "training", "rl"]
    assert resolved["command"] == "scripts/dpo.py --config r.yaml"
    assert resolved["script"] == {"dataset_name": "outputs/demo", "output": "out"}
    assert resolved["training"]["hub_token"] == "<HUB_TOKEN>"
    assert "stage" not in yaml.safe_load(save_resolved_config(tmp_path / "rm", script=_Script()).read_text())
