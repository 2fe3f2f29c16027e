"""A measurement: both rewriters on all 300 bundled qa-feedback examples with the bundled model.

    spanpref import qa-feedback bundled --output outputs/qaf300
    python scripts/chains_qa_feedback300.py outputs/qaf300 [--threads 2] [--rewriters local paper]

Starts llama.cpp on the bundled GGUF, builds the chains of each rewriter into the folder's chains config (both kept
side by side) and prints each rewriter's statistics. Resumable: chains are journaled, a rerun skips built ones.
"""

import argparse
import logging
import time

from spanpref.backends import build_backend
from spanpref.chains.build import build_chains
from spanpref.llama_server import LlamaServer

# (max attempts, chains per journal write): `paper` writes whole responses per call, so its chunks are larger
SETTINGS = {"local": (2, 2), "paper": (1, 16)}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument(
        "--threads", type=int, default=2, help="llama.cpp threads (1 when other work runs on the cores)"
    )
    parser.add_argument("--rewriters", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--max-document-chars", type=int, default=2000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with LlamaServer(n_ctx=8192, n_parallel=2, n_threads=args.threads) as server:
        backend = build_backend("openai", base_url=server.base_url, max_concurrency=2, progress=False)
        for rewriter in args.rewriters:
            attempts, chunk = SETTINGS[rewriter]
            started = time.perf_counter()
            report = build_chains(
                args.folder,
                rewriter,
                backend,
                chunk_size=chunk,
                max_attempts=attempts,
                max_document_chars=args.max_document_chars,
            )
            print(report.summary(), f"\nwall {time.perf_counter() - started:.0f} s", flush=True)
