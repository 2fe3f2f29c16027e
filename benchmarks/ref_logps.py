"""Reference log-probs once for a whole grid: the four losses on one pair set, as the recipes grid and a sweep run
them, with the reference recomputed at every step and evaluation (TRL's default) vs. precomputed once and kept
across runs (`precompute_ref_log_probs: true` with spanpref's cache). Same model, data, steps and seed in both.

    HF_HUB_OFFLINE=1 python benchmarks/ref_logps.py --max-steps 8 --train-samples 32 --eval-samples 32

On a GPU this takes about two minutes; on 2 CPU cores one validation pass of 32 pairs takes minutes (the
human-rewrite prompts hold whole documents, so max_length must stay near 1024).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from spanpref.importers.qa_feedback import import_qa_feedback
from spanpref.pairs import build_pairs
from spanpref.training.run import parse_args, train

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "smollm2-135m-instruct" / "dpo"
LOSSES = ("sigmoid", "dpo_positive", "apo_zero", "apo_down")


def run_grid(
    folder: Path, out: Path, args: argparse.Namespace, precompute: bool, cache: Path, losses: tuple[str, ...] = LOSSES
) -> dict:
    runs = {}
    started = time.perf_counter()
    for loss in losses:
        argv = [
            "--config",
            str(RECIPE / f"config_human_rewrite_{loss}.yaml"),
            "--dataset_name",
            str(folder),
            "--output_dir",
            str(out / loss),
            "--max_steps",
            str(args.max_steps),
            "--max_train_samples",
            str(args.train_samples),
            "--max_eval_samples",
            str(args.eval_samples),
            "--max_length",
            str(args.max_length),
            "--eval_strategy",
            "no",
            "--save_strategy",
            "no",
            "--logging_steps",
            "1000",
            "--disable_tqdm",
            "true",
            "--precompute_ref_log_probs",
            str(precompute).lower(),
            "--ref_logps_cache",
            str(cache),
        ]
        t = time.perf_counter()
        results = train("dpo", *parse_args("dpo", argv))
        runs[loss] = {"seconds": time.perf_counter() - t, "before": results["before"], "after": results["after"]}
    return {"seconds": time.perf_counter() - started, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-steps", type=int, default=8, help="optimizer steps per run")
    parser.add_argument("--train-samples", type=int, default=32, help="training pairs per run")
    parser.add_argument("--eval-samples", type=int, default=32, help="validation pairs (scored before and after)")
    parser.add_argument("--max-length", type=int, default=1024, help="tokens per prompt + answer")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    logging.getLogger("spanpref").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "qaf"
        import_qa_feedback("bundled", folder)
        build_pairs(str(folder))  # A/B and human-rewrite pairs (no chains needed)
        # warm-up (first model load, allocator, kernels): not timed, so neither grid pays for it
        warm = argparse.Namespace(**{**vars(args), "max_steps": 1, "train_samples": 4, "eval_samples": 4})
        run_grid(folder, Path(tmp) / "warm-up", warm, False, Path(tmp) / "warm-up-cache", losses=LOSSES[:1])
        grids = {}
        for name, precompute in (("every step (TRL default)", False), ("precomputed + cached", True)):
            grids[name] = run_grid(folder, Path(tmp) / name.split()[0], args, precompute, Path(tmp) / "cache")

    base, cont = grids.values()
    print(
        f"4 losses x {args.max_steps} steps on {args.train_samples} human-rewrite pairs, {args.eval_samples} "
        f"validation pairs scored before and after, SmolLM2-135M + LoRA, max_length {args.max_length}"
    )
    print(f"{'reference log-probs':<26} {'grid s':>8}  " + "  ".join(f"{loss:>12}" for loss in LOSSES))
    for name, grid in grids.items():
        print(
            f"{name:<26} {grid['seconds']:8.1f}  " + "  ".join(f"{grid['runs'][x]['seconds']:12.1f}" for x in LOSSES)
        )
    print(f"precomputed + cached / every step, wall time of the grid: {cont['seconds'] / base['seconds']:.2f}x")
    worst = max(abs(cont["runs"][x]["after"]["eval_loss"] - base["runs"][x]["after"]["eval_loss"]) for x in LOSSES)
    print(f"largest difference of the validation loss after training between the two: {worst:.2e}")
    if args.json:
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": str(args.json)}, "grids": grids}, indent=2, default=str)
        )


if __name__ == "__main__":
    main()
