"""`evaluate` modules of spanpref: each subfolder loads with `evaluate.load("<this folder>/<name>")`."""

from pathlib import Path

METRICS_DIR = Path(__file__).parent


def metric_path(name: str) -> str:
    """The folder to give `evaluate.load`, e.g. `evaluate.load(metric_path("span_agreement"))`."""
    return str(METRICS_DIR / name)
