"""Learning-rate sweeps: one training run per rate, then the choice by a validation metric.

Each run is the recipe with `--learning_rate` and `--output_dir` overridden, launched as its own process (plain
`python` or any `accelerate launch ...` line), so a sweep on a GPU fleet is the same command as on a laptop. Runs
that already finished are not repeated, and an interrupted run resumes from its last checkpoint. Every run and the
choice go to `sweep.json` and `sweep.md` in the sweep folder.
"""

from __future__ import annotations

import json
import logging
import math
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spanpref.training.run import RESULTS_FILE, STAGES, override_flags

logger = logging.getLogger(__name__)

# The paper's grid (appendix D): 5e-6 ... 2e-7.
PAPER_LEARNING_RATES = [5e-6, 2e-6, 1e-6, 5e-7, 2e-7]


@dataclass
class SweepRun:
    learning_rate: float
    output_dir: str
    status: str  # "ok", "failed" or "reused" (finished by an earlier sweep)
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""


@dataclass
class SweepResult:
    recipe: str
    metric: str
    tie_break: str
    runs: list[SweepRun]
    best: SweepRun | None

    def table(self) -> str:
        lines = [f"| learning rate | status | {self.metric} | {self.tie_break} | run |", "|---|---|---|---|---|"]
        for r in self.runs:
            mark = " **(chosen)**" if self.best is r else ""
            lines.append(
                f"| {r.learning_rate:g}{mark} | {r.status} | {_fmt(r.metrics.get(self.metric))} | "
                f"{_fmt(r.metrics.get(self.tie_break))} | {r.output_dir} |"
            )
        return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def select_best(runs: list[SweepRun], metric: str, tie_break: str) -> SweepRun | None:
    """The finished run with the highest metric, ties broken by the second metric, then by the smaller rate (the
    safer choice when two rates look the same)."""
    scored = [r for r in runs if r.status != "failed" and not math.isnan(r.metrics.get(metric, math.nan))]
    if not scored:
        return None
    return max(scored, key=lambda r: (r.metrics[metric], r.metrics.get(tie_break, -math.inf), -r.learning_rate))


def _after_metrics(run_dir: Path) -> dict[str, float] | None:
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        return None
    results = json.loads(path.read_text())
    return {k: v for k, v in (results.get("after") or {}).items() if isinstance(v, int | float)}


def run_sweep(
    recipe: str,
    *,
    stage: str = "dpo",
    learning_rates: list[float] | None = None,
    output_dir: str | None = None,
    launcher: str = "python",
    metric: str = "eval_rewards/accuracies",
    tie_break: str = "eval_rewards/margins",
    overrides: list[str] | None = None,
) -> SweepResult:
    if stage not in STAGES:
        raise ValueError(f"unknown training stage {stage!r}; choose from {list(STAGES)}")
    if not Path(recipe).is_file():
        raise FileNotFoundError(f"recipe {recipe} not found")
    rates = learning_rates or PAPER_LEARNING_RATES
    root = Path(output_dir or Path("outputs") / "sweeps" / Path(recipe).stem)
    root.mkdir(parents=True, exist_ok=True)
    extra = override_flags(overrides or [])
    if stage == "dpo" and "--precompute_ref_log_probs" not in extra:
        # every rate has the same reference and data: its log-probs are computed by the first run and read from the
        # cache (`ref_logps_cache`) by the others; `--set precompute_ref_log_probs=false` turns this off
        extra += ["--precompute_ref_log_probs", "true"]
    launch = shlex.split(launcher)
    if launch == ["python"]:
        launch = [sys.executable]
    runs = []
    for lr in rates:
        run_dir = root / f"lr-{lr:g}"
        metrics = _after_metrics(run_dir)
        if metrics is not None:
            logger.info("lr %g: finished earlier, reusing %s", lr, run_dir)
            runs.append(SweepRun(lr, str(run_dir), "reused", metrics))
            continue
        cmd = [
            *launch,
            "-m",
            "spanpref.training.run",
            stage,
            "--config",
            recipe,
            *extra,
            "--learning_rate",
            str(lr),
            "--output_dir",
            str(run_dir),
        ]
        logger.info("lr %g: %s", lr, shlex.join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        (root / f"lr-{lr:g}.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
        metrics = _after_metrics(run_dir)
        if proc.returncode != 0 or metrics is None:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
            logger.error("lr %g failed (exit %d): %s; log in %s", lr, proc.returncode, tail[0], root)
            runs.append(SweepRun(lr, str(run_dir), "failed", error=f"exit {proc.returncode}: {tail[0]}"))
            continue
        runs.append(SweepRun(lr, str(run_dir), "ok", metrics))
    best = select_best(runs, metric, tie_break)
    result = SweepResult(recipe, metric, tie_break, runs, best)
    record: dict[str, Any] = {
        "recipe": recipe,
        "stage": stage,
        "metric": metric,
        "tie_break": tie_break,
        "launcher": launcher,
        "overrides": overrides or [],
        "runs": [asdict(r) for r in runs],
        "best": asdict(best) if best else None,
    }
    (root / "sweep.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    choice = f"Chosen: learning rate {best.learning_rate:g} ({best.output_dir})." if best else "No run finished."
    (root / "sweep.md").write_text(
        f"# Sweep of {recipe}\n\nSelected by `{metric}` on the validation split, ties "
        f"by `{tie_break}`.\n\n{result.table()}\n\n{choice}\n",
        encoding="utf-8",
    )
    if best is None:
        raise RuntimeError(f"no run of the sweep finished with `{metric}`; logs in {root}")
    return result
