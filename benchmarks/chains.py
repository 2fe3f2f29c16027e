"""Cost of the two rewriters on the same annotations with the same backend: output tokens and wall time per
valid chain, `local` vs `paper`, printed as ratios.

    python benchmarks/chains.py --examples 40                 # bundled SmolLM2 GGUF on a local llama.cpp server
    python benchmarks/chains.py --backend transformers --examples 8
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from spanpref import schema
from spanpref.backends import build_backend
from spanpref.chains.build import build_chains
from spanpref.importers.qa_feedback import import_qa_feedback
from spanpref.repo import DatasetRepo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=40, help="qa-feedback examples (annotations) to rewrite")
    parser.add_argument("--backend", choices=["server", "transformers"], default="server",
                        help="server: the bundled GGUF on a local llama.cpp server; transformers: in-process")  # fmt: skip
    parser.add_argument("--parallel", type=int, default=2, help="server slots and client concurrency")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "bench"
        import_qa_feedback("bundled", folder, limit=args.examples)
        if args.backend == "server":
            from spanpref.llama_server import LlamaServer

            server = stack.enter_context(LlamaServer(n_ctx=8192 * args.parallel, n_parallel=args.parallel))
            backend = build_backend("openai", base_url=server.base_url, max_concurrency=args.parallel, progress=False)
        else:
            backend = build_backend("transformers", progress=False)
        results = {}
        for rewriter in ("local", "paper"):
            start = time.perf_counter()
            build_chains(str(folder), rewriter, backend, seed=args.seed, progress=False)
            seconds = time.perf_counter() - start
            rows = [c for c in DatasetRepo(folder).read(schema.CHAINS) if c["rewriter"] == rewriter]
            valid = sum(c["status"] == "ok" for c in rows)
            results[rewriter] = {
                "chains": len(rows), "valid": valid, "seconds": seconds,
                "completion_tokens": sum(c["completion_tokens"] for c in rows),
                "prompt_tokens": sum(c["prompt_tokens"] for c in rows),
            }  # fmt: skip

    print(f"{args.examples} qa-feedback annotations, backend {args.backend} ({backend.model_id})")
    print(f"{'rewriter':8s} {'valid':>9s} {'out tok':>9s} {'out tok/valid':>14s} {'s/valid':>9s}")
    per = {}
    for name, r in results.items():
        v = max(r["valid"], 1)  # a rewriter with no valid chain is charged its whole cost for one
        per[name] = (r["completion_tokens"] / v, r["seconds"] / v)
        print(f"{name:8s} {r['valid']:>4d}/{r['chains']:<4d} {r['completion_tokens']:>9d} {per[name][0]:>14.1f} "
              f"{per[name][1]:>9.2f}")  # fmt: skip
    tok_ratio = per["local"][0] / per["paper"][0] if per["paper"][0] else float("nan")
    time_ratio = per["local"][1] / per["paper"][1] if per["paper"][1] else float("nan")
    print(
        f"local / paper: output tokens per valid chain {tok_ratio:.3f}x, wall time per valid chain {time_ratio:.3f}x"
    )
    if args.json:
        args.json.write_text(json.dumps({"results": results, "ratio_tokens": tok_ratio, "ratio_time": time_ratio},
                                        indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
