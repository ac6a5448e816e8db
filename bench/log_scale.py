"""Transparency log at scale: batched appends of synthetic leaves to the tiled log on
SQLite and PostgreSQL, and proof times as the log grows, beside the former linear
design (proofs recomputed from every leaf hash held in memory) at the sizes it reaches.

    PYTHONPATH=. python bench/log_scale.py --max 10000000 [--db sqlite|postgresql|both]
        [--pg-url postgresql+psycopg://...] [--quick]

Writes bench/results/log_scale.json.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import statistics
import tempfile
import time
import urllib.parse
from pathlib import Path

from cards import keys, merkle
from registry import db as dbmod
from registry.tlog import TransparencyLog

OUT = Path(__file__).resolve().parent / "results" / "log_scale.json"


def _median_ms(fn, runs: int, cpu: list | None = None) -> float:
    """Median wall time; with ``cpu``, the median of this process's CPU time is appended
    to it (on a shared machine the wall time also counts other processes' turns)."""
    times, cpus = [], []
    for _ in range(runs):
        t, c = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - t) * 1000)
        cpus.append((time.process_time() - c) * 1000)
    if cpu is not None:
        cpu.append(round(statistics.median(cpus), 3))
    return round(statistics.median(times), 3)


def _checkpoints(limit: int) -> list[int]:
    out, n = [], 1000
    while n <= limit:
        out.append(n)
        n *= 10
    if limit and (not out or out[-1] != limit):
        out.append(limit)
    return out


def _leaf(i: int) -> bytes:
    return b"synthetic leaf %d " % i + bytes(48)


def append_to(url: str, target: int, batch: int, interval: float, seg_log: list,
              save=lambda: None) -> int:
    """Grow the log at ``url`` to ``target`` leaves through the batched path (the
    integrator the service's registrations use), resuming from its current size;
    each stretch of appends is recorded in ``seg_log`` as it goes, so an interrupted
    run keeps its timings and a rerun carries on."""
    from registry.batching import Integrator

    db = dbmod.open_database(url)
    log = TransparencyLog(db, keys.generate_private_key("ed25519"))
    size = log.size()
    integ = Integrator(log, interval=interval, max_batch=batch)
    try:
        while size < target:
            chunk = min(target - size, 25 * batch)
            t, cpu, pending = time.perf_counter(), time.process_time(), collections.deque()
            for i in range(size, size + chunk):
                pending.append(integ.submit(("bench", "r", _leaf(i)), isolated=False))
                if len(pending) > 4 * batch:        # bound what is queued
                    pending.popleft().result(600)
            for future in pending:
                future.result(600)
            seg_log.append({"from": size, "to": size + chunk,
                            "seconds": round(time.perf_counter() - t, 3),
                            "cpu_seconds": round(time.process_time() - cpu, 3)})
            save()
            size += chunk
            done = sum(s["to"] - s["from"] for s in seg_log)
            secs = sum(s["seconds"] for s in seg_log)
            print(f"  {db.writer.dialect.name:10s} appended to {size:>11,} "
                  f"({done / secs:,.0f} entries/s so far, {integ.batches} batches)", flush=True)
    finally:
        integ.close()
        db.dispose()
    return size


def measure_proofs(url: str, runs: int, rng: random.Random, warmup: int = 0) -> list[dict]:
    """Proof times at 10^3, 10^4, ... up to the log's size: a proof at an older tree
    size reads the same tile rows as then (prefixes), so one big log serves every size."""
    from sqlalchemy import event

    db = dbmod.open_database(url)
    log = TransparencyLog(db, keys.generate_private_key("ed25519"))
    statements = [0]

    def count(*_args):
        statements[0] += 1
    engines = {db.reader, db.writer, db.tile_reader or db.reader}
    for engine in engines:
        event.listen(engine, "before_cursor_execute", count)
    rows = []
    for mark in _checkpoints(log.size()):
        log.clear_cache()                        # the first proof at each size reads cold
        statements[0], log.fetches = 0, 0
        cold = _median_ms(lambda m=mark: log.inclusion_proof(rng.randrange(m), m), 1)
        cold_statements = statements[0] + log.fetches
        for _ in range(warmup):                  # a running service's caches are warm
            log.inclusion_proof(rng.randrange(mark), mark)
        statements[0], log.fetches = 0, 0
        cpu: list[float] = []
        rows.append({
            "size": mark,
            "inclusion_ms": _median_ms(lambda m=mark: log.inclusion_proof(rng.randrange(m), m),
                                       runs, cpu),
            "inclusion_cold_ms": cold,
            "consistency_ms": _median_ms(
                lambda m=mark: log.consistency_proof(rng.randint(1, m), m), runs, cpu),
        })
        rows[-1]["inclusion_cpu_ms"], rows[-1]["consistency_cpu_ms"] = cpu
        # load-independent: SQL statements sent per proof (one per round trip)
        rows[-1]["statements_cold_inclusion"] = cold_statements
        rows[-1]["statements_per_proof"] = round((statements[0] + log.fetches) / (2 * runs), 2)
        print(f"  {db.writer.dialect.name:10s} size {mark:>11,}: " + ", ".join(
            f"{k} {v}" for k, v in rows[-1].items() if k != "size"), flush=True)
    db.dispose()
    return rows


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


def _pg_schema_url(base: str, name: str) -> str:
    """A schema of its own (kept between runs, so a long append can resume)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(base)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{name}"'))
    engine.dispose()
    sep = "&" if "?" in base else "?"
    return base + sep + "options=" + urllib.parse.quote(f"-csearch_path={name}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="The logs are kept in --workdir (SQLite) and --pg-schema (PostgreSQL), and "
               "every stretch of appends is recorded in <workdir>/state.json, so an "
               "interrupted run resumes where it stopped; --fresh starts again.")
    ap.add_argument("--max", type=int, default=100_000, help="leaves in each log")
    ap.add_argument("--linear-max", type=int, default=100_000,
                    help="largest size for the former linear design")
    ap.add_argument("--batch", type=int, default=4096, help="integrator batch size bound")
    ap.add_argument("--interval", type=float, default=0.05,
                    help="integrator interval, seconds")
    ap.add_argument("--runs", type=int, default=50, help="proofs timed per size")
    ap.add_argument("--warmup", type=int, default=300,
                    help="untimed proofs per size first (after one cold, timed proof)")
    ap.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    ap.add_argument("--pg-url", help="PostgreSQL URL")
    ap.add_argument("--pg-schema", default="laminate_bench_scale",
                    help="PostgreSQL schema holding the benchmark log")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "laminate-log-scale"))
    ap.add_argument("--appends-only", action="store_true", help="skip the proof timings")
    ap.add_argument("--proofs-only", action="store_true",
                    help="time proofs on the logs as they are, appending nothing")
    ap.add_argument("--fresh", action="store_true", help="drop the kept logs first")
    ap.add_argument("--quick", action="store_true", help="a small run for development")
    ap.add_argument("--out", type=Path, default=OUT,
                    help="results file (merged into; default bench/results/log_scale.json)")
    args = ap.parse_args()
    if args.quick:
        args.max, args.linear_max, args.runs = 20_000, 10_000, 10
        args.workdir += "-quick"
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / "state.json"
    urls = {}
    if args.db in ("sqlite", "both"):
        urls["sqlite"] = f"sqlite:///{work / 'bench.sqlite'}"
    if args.db in ("postgresql", "both") and args.pg_url:
        urls["postgresql"] = _pg_schema_url(args.pg_url, args.pg_schema)
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    if args.fresh:
        for kind in urls:
            state.pop(kind, None)
        if "sqlite" in urls:
            for p in work.glob("bench.sqlite*"):
                p.unlink()
        if "postgresql" in urls:
            from sqlalchemy import create_engine, text
            engine = create_engine(args.pg_url)
            with engine.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{args.pg_schema}" CASCADE'))
            engine.dispose()
            urls["postgresql"] = _pg_schema_url(args.pg_url, args.pg_schema)
    result: dict = {"tiled": {}}
    rng = random.Random(16)
    for kind, url in urls.items():
        print(f"tiled log, {kind}:")
        segs = state.setdefault(kind, [])
        if args.proofs_only:
            db = dbmod.open_database(url)
            size = TransparencyLog(db, None).size()
            db.dispose()
        else:
            size = append_to(url, args.max, args.batch, args.interval, segs,
                             lambda: state_path.write_text(json.dumps(state, indent=1) + "\n"))
        done = sum(s["to"] - s["from"] for s in segs)
        secs = sum(s["seconds"] for s in segs)
        timed = [s for s in segs if "cpu_seconds" in s]
        cpu = sum(s["cpu_seconds"] for s in timed)
        entry = {"size": size, "batch": args.batch, "interval_s": args.interval,
                 "appended_by_bench": done, "append_seconds": round(secs, 1),
                 "appends_per_s": round(done / secs) if secs else None,
                 # wall time on a shared machine counts other work; this counts only
                 # the bench process's own CPU (not the PostgreSQL server's)
                 "appends_per_cpu_s": round(sum(s["to"] - s["from"] for s in timed) / cpu)
                 if cpu else None,
                 "append_segments": segs}
        if not args.appends_only:
            entry["runs"] = args.runs
            entry["load_average_1m"] = round(os.getloadavg()[0], 1)   # 2 cores, shared
            entry["warmup_proofs"] = args.warmup
            entry["rows"] = measure_proofs(url, args.runs, rng, args.warmup)
        result["tiled"][kind] = entry
    if not args.appends_only and args.linear_max > 0:
        print("linear design (all leaf hashes in memory):")
        result["linear"] = run_linear(args.linear_max, max(3, args.runs // 10), rng)
    result["target"] = {"appends_per_s": 5000, "proof_median_ms": 2.0}
    out = work / "log_scale.json" if args.quick else args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    # Merged into the file as it is now: runs per database may overlap in time.
    merged = json.loads(out.read_text()) if out.exists() else {}
    merged.setdefault("tiled", {}).update(result.pop("tiled"))
    merged.update(result)
    out.write_text(json.dumps(merged, indent=2) + "\n")
    print(f"wrote {out}")
    plot(merged, out.with_suffix(".png"))


def plot(result: dict, path: Path) -> None:
    """Median proof time against log size, per database and for the linear design."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no matplotlib: no plot (it comes with the train extra)")
        return
    fig, ax = plt.subplots(figsize=(6.4, 4))
    series = [(f"tiled, {k}", v.get("rows", [])) for k, v in result["tiled"].items()]
    series.append(("former linear design", result.get("linear", [])))
    for label, rows in series:
        if rows:
            for key, style in (("inclusion_ms", "-o"), ("consistency_ms", "--s")):
                ax.plot([r["size"] for r in rows], [r[key] for r in rows], style,
                        label=f"{label}: {key.split('_')[0]}")
    ax.axhline(2.0, color="grey", linewidth=0.8, label="2 ms target")
    ax.set(xscale="log", yscale="log", xlabel="log size (entries)",
           ylabel="median proof time (ms)", title="Transparency log proofs")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
