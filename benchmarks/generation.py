"""Generation throughput: in-process transformers vs. a local llama.cpp server, same prompts, same model.

Both backends generate greedily (or with the same seeds) from the bundled SmolLM2-135M-Instruct: transformers runs
the dequantized fp32 conversion, llama.cpp the Q4_1 GGUF itself. Load/start-up time is reported apart from
generation time; tokens/second counts completion tokens as each backend reports them.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/generation.py --n-prompts 8 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from spanpref.backends import GenerationConfig, OpenAIBackend, build_backend
from spanpref.llama_server import LlamaServer
from spanpref.models import default_gguf_path, prepare_default_model

PROMPTS = [
    "Explain in two sentences why the sky looks blue during the day.",
    "Give three tips for keeping a houseplant alive while on holiday.",
    "Write a short, friendly note asking a neighbour to water my tomatoes.",
    "What is the difference between a list and a tuple in Python?",
    "Summarise the plot of a heist story set in a bakery, in three sentences.",
    "List four things to check before a long bicycle ride.",
    "Describe the taste of a lemon to someone who has never had one.",
    "Suggest a name for a cat that likes to sleep in shoe boxes, and say why.",
]


def build_requests(n_prompts: int) -> list[list[dict]]:
    return [[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}] for i in range(n_prompts)]


def time_generation(backend, requests, config) -> dict:
    started = time.perf_counter()
    results = backend.generate(requests, config)
    seconds = time.perf_counter() - started
    tokens = sum(c.completion_tokens for completions in results for c in completions)
    return {"seconds": seconds, "completion_tokens": tokens, "tokens_per_s": tokens / seconds, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-prompts", type=int, default=8, help="Chat prompts to generate for (cycled from 8)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="Tokens generated per prompt at most")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; otherwise seeded sampling")
    parser.add_argument("--seed", type=int, default=0, help="Seed for sampling (both backends)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch and for llama.cpp alike")
    parser.add_argument("--batch-size", type=int, default=8, help="transformers: prompts decoded together")
    parser.add_argument("--n-parallel", type=int, default=4, help="llama.cpp: slots decoded together")
    parser.add_argument("--concurrency", type=int, default=None, help="HTTP requests in flight (default: n-parallel)")
    parser.add_argument("--repeats", type=int, default=1, help="Runs per backend, alternating; the best is reported")
    parser.add_argument("--progress", action="store_true", help="Show progress bars")
    parser.add_argument("--json", default=None, help="Also write the numbers to this JSON file")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)  # same CPU budget as the llama.cpp server gets
    requests = build_requests(args.n_prompts)
    config = GenerationConfig(temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed)
    model_dir = prepare_default_model()

    started = time.perf_counter()
    hf = build_backend("transformers", model=str(model_dir), batch_size=args.batch_size, progress=args.progress)
    hf_load = time.perf_counter() - started

    runs: dict[str, list[dict]] = {"transformers": [], "llama.cpp": []}
    started = time.perf_counter()
    with LlamaServer(default_gguf_path(), n_threads=args.threads, n_parallel=args.n_parallel) as server:
        server_start = time.perf_counter() - started
        client = OpenAIBackend(
            server.base_url, max_concurrency=args.concurrency or args.n_parallel, progress=args.progress
        )
        client.generate(requests[:1], GenerationConfig(max_new_tokens=4))  # warm-up: first-request allocations
        # Alternate the two so that a burst of load from other processes does not land on one backend only.
        for _ in range(args.repeats):
            runs["transformers"].append(time_generation(hf, requests, config))
            runs["llama.cpp"].append(time_generation(client, requests, config))

    outputs = {name: [c[0].text for c in r[-1].pop("results")] for name, r in runs.items()}
    for r in runs["transformers"] + runs["llama.cpp"]:
        r.pop("results", None)
    best = {name: max(r, key=lambda run: run["tokens_per_s"]) for name, r in runs.items()}
    same = sum(a == b for a, b in zip(outputs["transformers"], outputs["llama.cpp"], strict=True))
    ratio = best["llama.cpp"]["tokens_per_s"] / best["transformers"]["tokens_per_s"]

    print(
        f"{args.n_prompts} prompts, max_new_tokens={args.max_new_tokens}, temperature={args.temperature}, "
        f"threads={args.threads}, best of {args.repeats}, torch {torch.__version__}"
    )
    print(f"{'backend':<34} {'setup s':>8} {'gen s':>8} {'tokens':>7} {'tokens/s':>9}  all runs tokens/s")
    labels = {
        "transformers": (f"transformers (fp32, batch {args.batch_size})", hf_load),
        "llama.cpp": (f"llama.cpp server (Q4_1, {args.n_parallel} slots)", server_start),
    }
    for name, (label, setup) in labels.items():
        b = best[name]
        every = " ".join(f"{r['tokens_per_s']:.1f}" for r in runs[name])
        print(
            f"{label:<34} {setup:8.2f} {b['seconds']:8.2f} {b['completion_tokens']:7d} {b['tokens_per_s']:9.1f}  {every}"
        )
    print(f"llama.cpp / transformers tokens/s: {ratio:.1f}x")
    print(f"identical outputs: {same}/{args.n_prompts} (the two run differently quantized weights)")
    if args.json:
        summary = {"args": vars(args), "setup_s": {k: v[1] for k, v in labels.items()}, "runs": runs, "ratio": ratio}
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
