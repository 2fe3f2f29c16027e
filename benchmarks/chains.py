"""The rewriters and their levers on the same qa-feedback annotations with the same backend: valid share,
rejection reasons, steps, output tokens per valid chain, ROUGE-L of a* to the annotator's corrected answer, and
wall time. Each variant builds its chains in its own copy of the data, so no variant reuses another's chains.

    python benchmarks/chains.py --examples 40                 # local and paper on the bundled GGUF (llama.cpp)
    python benchmarks/chains.py --examples 24 --variants local local+structured local+candidates3 local+prefill \\
        paper paper+structured human                          # each lever on its own
    python benchmarks/chains.py --backend transformers --examples 8

Variants are `<rewriter>[+lever...]`; levers: `structured` (JSON through response_format), `candidates<N>`
(local: N replies per step, the validator keeps the best valid one), `prefill` (local: the reply starts with the
unchanged text before the span). `human` needs no model. `local` and `paper` alone are the recipes as shipped;
`--max-attempts` and `--max-document-chars` apply to every model variant alike.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from spanpref import schema
from spanpref.backends import build_backend
from spanpref.chains.build import build_chains
from spanpref.chains.rewriters import needs_backend
from spanpref.importers.qa_feedback import import_qa_feedback
from spanpref.repo import DatasetRepo

LEVER = re.compile(r"^(structured|prefill|candidates(\d+))$")


def parse_variant(variant: str) -> tuple[str, dict[str, Any]]:
    """("local", {"structured": True, "candidates": 3}) from "local+structured+candidates3"."""
    rewriter, *levers = variant.split("+")
    overrides: dict[str, Any] = {}
    for lever in levers:
        m = LEVER.match(lever)
        if not m:
            raise SystemExit(f"unknown lever {lever!r} in {variant!r}: use structured, prefill or candidates<N>")
        if m.group(2):
            overrides["candidates"] = int(m.group(2))
        else:
            overrides[lever] = True
    return rewriter, overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=40, help="qa-feedback examples (annotations) to rewrite")
    parser.add_argument("--variants", nargs="+", default=["local", "paper"], help="rewriter[+lever...] to run")
    parser.add_argument(
        "--backend",
        choices=["server", "transformers"],
        default="server",
        help="server: the bundled GGUF on a local llama.cpp server; transformers: in-process",
    )
    parser.add_argument("--parallel", type=int, default=2, help="server slots and client concurrency")
    parser.add_argument("--threads", type=int, default=2, help="server decoding threads")
    parser.add_argument("--max-attempts", type=int, default=None, help="tries per step/chain (default: recipe)")
    parser.add_argument("--max-document-chars", type=int, default=None, help="cut documents (default: recipe)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    variants = [(v, *parse_variant(v)) for v in args.variants]

    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        source = root / "source"
        import_qa_feedback("bundled", source, limit=args.examples)
        backend = None
        if any(needs_backend(rw) for _, rw, _ in variants):
            if args.backend == "server":
                from spanpref.llama_server import LlamaServer

                server = stack.enter_context(
                    LlamaServer(n_ctx=8192 * args.parallel, n_parallel=args.parallel, n_threads=args.threads)
                )
                backend = build_backend(
                    "openai", base_url=server.base_url, max_concurrency=args.parallel, progress=False
                )
            else:
                backend = build_backend("transformers", progress=False)
        results: dict[str, dict[str, Any]] = {}
        for name, rewriter, overrides in variants:
            folder = root / re.sub(r"\W", "_", name)
            shutil.copytree(source, folder)
            if needs_backend(rewriter):
                overrides = {
                    "max_attempts": args.max_attempts,
                    "max_document_chars": args.max_document_chars,
                    **overrides,
                }
            start = time.perf_counter()
            report = build_chains(
                str(folder),
                rewriter,
                backend if needs_backend(rewriter) else None,
                seed=args.seed,
                progress=False,
                **overrides,
            )
            seconds = time.perf_counter() - start
            stats = report.stats[rewriter]
            rows = DatasetRepo(folder).read(schema.CHAINS)
            results[name] = {
                **stats,
                "seconds": seconds,
                "overrides": overrides,
                "prompt_tokens": sum(c["prompt_tokens"] for c in rows),
            }
            # as each variant ends, so a long run that is stopped keeps what it measured
            print(
                f"{name}: {stats['valid']}/{stats['chains']} valid in {seconds:.0f} s; {stats['reject_reasons']}",
                file=sys.stderr,
                flush=True,
            )
            if args.json:
                args.json.write_text(json.dumps(results, indent=2, default=str))

    model = backend.model_id if backend is not None else "no model"
    print(f"{args.examples} qa-feedback examples, backend {args.backend} ({model}), seed {args.seed}")
    print(
        "| variant | valid | rejection reasons | steps | out tok / valid chain | ROUGE-L a* / a0 to human a* "
        "| s / valid chain |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        reasons = ", ".join(f"{k} {v}" for k, v in list(r["reject_reasons"].items())[:4]) or "-"
        sim = r.get("similarity") or {}
        rouge = f"{sim['rouge_l']:.3f} / {sim['rouge_l_a0']:.3f} ({sim['chains']})" if sim.get("chains") else "-"
        per_tok = r["tokens"]["completion_per_valid_chain"]
        steps = f"{r['mean_steps']:.2f}" if r["mean_steps"] is not None else "-"
        per_s = r["seconds"] / r["valid"] if r["valid"] else float("nan")
        print(
            f"| {name} | {r['valid']}/{r['chains']} ({r['validity_rate']:.0%}) | {reasons} | {steps} | "
            f"{'-' if per_tok is None else round(per_tok)} | {rouge} | {per_s:.1f} |"
        )
    if "local" in results and "paper" in results:
        per = {
            k: (
                results[k]["tokens"]["completion"] / max(results[k]["valid"], 1),
                results[k]["seconds"] / max(results[k]["valid"], 1),
            )
            for k in ("local", "paper")
        }
        print(
            f"local / paper: output tokens per valid chain {per['local'][0] / per['paper'][0]:.3f}x, wall time per "
            f"valid chain {per['local'][1] / per['paper'][1]:.3f}x (a rewriter with no valid chain is charged "
            "its whole cost for one)"
        )


if __name__ == "__main__":
    main()
