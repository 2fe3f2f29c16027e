"""Load on the annotation app: N simulated annotators save spans concurrently for a while, through the same HTTP
route the page's JavaScript uses (`POST /spanpref/call/save_span`, one call per saved span). Prints save latency
percentiles, where the time of a save goes (from the app's Server-Timing header: time in the app, in the handler,
waiting for the store's write lock, writing, committing; the rest is HTTP and the client), how much CPU the server
and the load generator used, and checks that every acknowledged save is in the SQLite store and in the exported annotations config
exactly once (and that nothing else is).

    python benchmarks/annotate_load.py                         # 50 annotators, 60 s, bundled qa-feedback items
    python benchmarks/annotate_load.py --annotators 20 --seconds 15
    python benchmarks/annotate_load.py --seconds 30 --py-spy server.txt   # also profile the server (py-spy)

The app runs in its own process (`spanpref annotate`), as it would for real annotators; the load generator uses
one thread and one keep-alive HTTP connection per annotator. Each annotator saves spans back to back (no think
time), so this is far more load than 50 people produce, and every tenth save also submits the item and fetches
the next one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from spanpref.importers.qa_feedback import import_qa_feedback


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def utf16(text: str, offset: int) -> int:
    return offset + sum(1 for ch in text[:offset] if ord(ch) > 0xFFFF)


class Page:
    """What one annotator's page does, over HTTP."""

    def __init__(self, url: str):
        self.url = url
        self.http = requests.Session()

    def call(self, fn: str, *args):
        r = self.http.post(self.url + "spanpref/call/" + fn, timeout=60, json=list(args))
        r.raise_for_status()
        out = r.json()
        if not out.get("ok"):
            raise RuntimeError(f"{fn}: {out.get('error')}")
        self.last_timing = server_timing(r.headers.get("server-timing", ""))
        return out


def server_timing(header: str) -> dict[str, float]:
    """Seconds per phase from a `Server-Timing: app;dur=1.2, handler;dur=0.8` header (durations in ms)."""
    out = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        if name and dur:
            out[name] = float(dur) / 1000
    return out


def annotator(k: int, url: str, stop_at: float, seed: int, out: dict) -> None:
    rng = random.Random(seed * 1000 + k)
    page = Page(url)
    latencies, phases, acked, errors = [], [], [], []
    try:
        token = page.call("login", f"annotator{k:02d}", f"password-{k}")["token"]
        item = page.call("get_item", token)["item"]
        n = 0
        while item is not None and time.time() < stop_at:
            j = rng.randrange(2)
            resp = item["responses"][j]
            text = resp["text"]
            start = rng.randrange(len(text) - 1)
            end = min(len(text), start + rng.randint(1, 40))
            span = {
                "start": utf16(text, start),
                "end": utf16(text, end),
                "polarity": rng.choice(["like", "dislike"]),
                "reasons": [],
                "note": f"load {k}-{n}",
                "key": f"{k}-{n}",
            }
            t0 = time.perf_counter()
            try:
                saved = page.call("save_span", token, item["item_id"], resp["response_id"], span, 1.0)["span"]
            except Exception as e:  # counted, and the run goes on
                errors.append(repr(e)[:200])
                continue
            finally:
                n += 1
            latencies.append(time.perf_counter() - t0)
            phases.append(page.last_timing)
            acked.append((f"annotator{k:02d}", resp["response_id"], saved["span_id"], start, end))
            if n % 10 == 0:
                page.call(
                    "save_item", token, item["item_id"], {"choice": "a", "rationale": "load", "submit": True}, 1.0
                )
                item = page.call("get_item", token)["item"]
    except Exception as e:
        errors.append(repr(e)[:200])
    out[k] = {"latencies": latencies, "phases": phases, "acked": acked, "errors": errors}


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


PHASES = {
    "client": "the whole save, as the annotator's page sees it",
    "outside_app": "client minus app: HTTP on both sides, the server's event loop, the client's own threads",
    "app": "from the request's arrival in the app to its response",
    "handler": "the server function (session check, validation, the write)",
    "lock_wait": "waiting for the store's write lock",
    "write": "the write transaction, holding the lock (BEGIN .. COMMIT)",
    "commit": "the COMMIT alone (WAL append + fsync)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotators", type=int, default=50, help="simulated annotators saving at once")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long they keep saving")
    parser.add_argument("--examples", type=int, default=300, help="qa-feedback examples to build items from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument(
        "--export-every", type=float, default=10.0, help="the app's seconds between background exports"
    )
    parser.add_argument("--py-spy", type=Path, help="record the server with py-spy (raw stacks) into this file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "repo"
        db = Path(tmp) / "annotate.sqlite"
        import_qa_feedback("bundled", folder, limit=args.examples)
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
        server = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from spanpref.cli import main; raise SystemExit(main())",
                "annotate",
                str(folder),
                "--port",
                str(port),
                "--db",
                str(db),
                "--overlap",
                "5",
                "--export-every",
                str(args.export_every),
                "--server-timing",
            ],
            env=env,
        )
        try:
            deadline = time.time() + 120
            while True:
                try:
                    requests.get(url + "config", timeout=5).raise_for_status()
                    break
                except requests.RequestException:
                    if time.time() > deadline or server.poll() is not None:
                        raise SystemExit("the app did not start") from None
                    time.sleep(0.5)
            results: dict[int, dict] = {}
            stop_at = time.time() + args.seconds
            spy = None
            if args.py_spy:
                spy = subprocess.Popen(
                    [
                        "py-spy",
                        "record",
                        "--pid",
                        str(server.pid),
                        "--rate",
                        "200",
                        "--format",
                        "raw",
                        "--duration",
                        str(int(args.seconds)),
                        "--output",
                        str(args.py_spy),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            cpu0 = (cpu_seconds(server.pid), time.process_time())
            threads = [
                threading.Thread(target=annotator, args=(k, url, stop_at, args.seed, results))
                for k in range(args.annotators)
            ]
            t0 = time.time()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.time() - t0
            server_cpu, client_cpu = cpu_seconds(server.pid) - cpu0[0], time.process_time() - cpu0[1]
            if spy is not None:
                try:
                    spy.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    spy.kill()
        finally:
            server.send_signal(signal.SIGINT)  # the app exports once more on the way out
            try:
                server.wait(timeout=120)
            except subprocess.TimeoutExpired:
                server.kill()

        latencies = [x for r in results.values() for x in r["latencies"]]
        timings = [t for r in results.values() for t in r["phases"]]
        breakdown = {
            name: [t.get(name, 0.0) for t in timings] for name in PHASES if name not in ("client", "outside_app")
        }
        breakdown = {
            "client": latencies,
            "outside_app": [c - t.get("app", 0.0) for c, t in zip(latencies, timings, strict=True)],
            **breakdown,
        }
        acked = [a for r in results.values() for a in r["acked"]]
        errors = [e for r in results.values() for e in r["errors"]]

        # every acknowledged save is in the store exactly once, with its offsets, and nothing else is
        con = sqlite3.connect(db)
        stored = con.execute('SELECT annotator, response_id, span_id, start, "end" FROM spans').fetchall()
        con.close()
        acked_set, stored_set = set(acked), set(stored)
        lost_store = len(acked_set - stored_set)
        extra_store = len(stored) - len(acked_set & stored_set)
        dup_acks = len(acked) - len(acked_set)

        import datasets

        rows = datasets.load_dataset(str(folder), "annotations")["train"]
        exported = [
            (r["annotator"], r["response_id"], s["span_id"], s["start"], s["end"])
            for r in rows
            if r["annotation_id"].startswith("ui-")
            for s in r["spans"]
        ]
        lost_export = len(acked_set - set(exported))
        extra_export = len(exported) - len(acked_set & set(exported))

    numbers = {
        "annotators": args.annotators,
        "seconds": args.seconds,
        "wall_s": round(wall, 1),
        "saves_acked": len(acked),
        "saves_per_s": round(len(acked) / wall, 1),
        "errors": len(errors),
        "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "p95_ms": round(1000 * percentile(latencies, 0.95), 1) if latencies else None,
        "p99_ms": round(1000 * percentile(latencies, 0.99), 1) if latencies else None,
        "max_ms": round(1000 * max(latencies), 1) if latencies else None,
        "lost_in_store": lost_store,
        "unexpected_in_store": extra_store,
        "duplicate_acks": dup_acks,
        "lost_in_export": lost_export,
        "unexpected_in_export": extra_export,
        "cpus": os.cpu_count(),
        "server_cpu_s": round(server_cpu, 1),
        "client_cpu_s": round(client_cpu, 1),
        "phases_ms": {
            name: {
                q: round(1000 * percentile(v, f), 2)
                for q, f in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))
            }
            for name, v in breakdown.items()
            if v
        },
    }
    print(json.dumps(numbers, indent=2))
    print(
        f"where a save's time goes ({len(latencies)} saves; ms; server CPU {server_cpu:.1f} s, load generator CPU "
        f"{client_cpu:.1f} s in {wall:.1f} s on {os.cpu_count()} cores):"
    )
    for name, q in numbers["phases_ms"].items():
        print(
            f"  {name:<12} p50 {q['p50']:8.2f}  p95 {q['p95']:8.2f}  p99 {q['p99']:8.2f}  max {q['max']:8.2f}  "
            f"{PHASES[name]}"
        )
    if errors:
        print("first errors:", *errors[:5], sep="\n  ")
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2))
    ok = not (lost_store or extra_store or dup_acks or lost_export or extra_export)
    print("OK: no lost or duplicated annotations" if ok else "FAILED: lost or duplicated annotations")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
