"""Transparency log at scale: batched appends of synthetic leaves to the tiled log on
SQLite and PostgreSQL, and proof times as the log grows, beside the former linear
design (proofs recomputed from every leaf hash held in memory) at the sizes it reaches.

    PYTHONPATH=. python bench/log_scale.py --max 300000 [--pg-url postgresql+psycopg://...]

Writes bench/results/log_scale.json.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path

from cards import keys, merkle
from registry import db as dbmod
from registry.tlog import TransparencyLog

OUT = Path(__file__).resolve().parent / "results" / "log_scale.json"


def _median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(times), 3)


def _checkpoints(limit: int) -> list[int]:
    out, n = [], 1000
    while n <= limit:
        out.append(n)
        n *= 10
    if out[-1] != limit:
        out.append(limit)
    return out


def run_tiled(url: str, total: int, batch: int, runs: int, rng: random.Random) -> dict:
    db = dbmod.open_database(url)
    log = TransparencyLog(db, keys.generate_private_key("ed25519"))
    marks, rows, size, append_s = _checkpoints(total), [], 0, 0.0
    for mark in marks:
        while size < mark:
            n = min(batch, mark - size)
            items = [("bench", "r", b"synthetic leaf %d " % i + bytes(48))
                     for i in range(size, size + n)]
            t = time.perf_counter()
            with db.write() as (session, head):
                log.append_many(session, head, items)
            append_s += time.perf_counter() - t
            size += n
        log._cache.clear()                     # the first proof at each size reads cold
        cold = _median_ms(lambda m=mark: log.inclusion_proof(rng.randrange(m), m), 1)
        rows.append({
            "size": mark,
            "inclusion_ms": _median_ms(lambda m=mark: log.inclusion_proof(rng.randrange(m), m),
                                       runs),
            "inclusion_cold_ms": cold,
            "consistency_ms": _median_ms(
                lambda m=mark: log.consistency_proof(rng.randint(1, m), m), runs),
            "appends_per_s": round(size / append_s),
        })
        print(f"  {db.writer.dialect.name:10s} size {mark:>9,}: " + ", ".join(
            f"{k} {v}" for k, v in rows[-1].items() if k != "size"), flush=True)
    db.dispose()
    return {"batch": batch, "rows": rows}


def run_linear(limit: int, runs: int, rng: random.Random) -> list[dict]:
    """The former design: every leaf hash in memory, each proof from all of them."""
    hashes, rows = [], []
    for mark in _checkpoints(limit):
        while len(hashes) < mark:
            hashes.append(merkle.leaf_hash(b"synthetic leaf %d " % len(hashes) + bytes(48)))
        rows.append({
            "size": mark,
            "inclusion_ms": _median_ms(
                lambda m=mark: merkle.inclusion_proof(hashes, rng.randrange(m)), runs),
            "consistency_ms": _median_ms(
                lambda m=mark: merkle.consistency_proof(hashes, rng.randint(1, m), m), runs),
        })
        print(f"  linear     size {mark:>9,}: inclusion_ms {rows[-1]['inclusion_ms']}, "
              f"consistency_ms {rows[-1]['consistency_ms']}", flush=True)
    return rows


def _pg_schema_url(base: str):
    from sqlalchemy import create_engine, text

    name = "laminate_bench_" + uuid.uuid4().hex[:8]
    engine = create_engine(base)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{name}"'))
    sep = "&" if "?" in base else "?"

    def drop():
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        engine.dispose()
    return base + sep + "options=" + urllib.parse.quote(f"-csearch_path={name}"), drop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max", type=int, default=100_000, help="leaves appended per database")
    ap.add_argument("--linear-max", type=int, default=100_000,
                    help="largest size for the former linear design")
    ap.add_argument("--batch", type=int, default=4096, help="leaves per append transaction")
    ap.add_argument("--runs", type=int, default=50, help="proofs timed per size")
    ap.add_argument("--pg-url", help="PostgreSQL URL (a throw-away schema is used)")
    args = ap.parse_args()
    rng = random.Random(16)
    result = {"max": args.max, "runs": args.runs, "tiled": {}}
    with tempfile.TemporaryDirectory() as tmp:
        print("tiled log, SQLite:")
        result["tiled"]["sqlite"] = run_tiled(f"sqlite:///{tmp}/bench.sqlite", args.max,
                                              args.batch, args.runs, rng)
    if args.pg_url:
        url, drop = _pg_schema_url(args.pg_url)
        try:
            print("tiled log, PostgreSQL:")
            result["tiled"]["postgresql"] = run_tiled(url, args.max, args.batch, args.runs, rng)
        finally:
            drop()
    print("linear design (all leaf hashes in memory):")
    result["linear"] = run_linear(args.linear_max, max(3, args.runs // 10), rng)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
