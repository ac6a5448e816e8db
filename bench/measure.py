"""Dataset measurement throughput: Merkle root over records vs one SHA-256 pass.

The floor is `hashlib.sha256` over exactly the bytes the Merkle leaves cover (all record
encodings back to back) in one call. The records are laid out in one buffer in record
encoding and handed to `DatasetMeasure` in batches of views over it, the way a streaming
loader delivers them. Targets: small (261-byte) records at >= 2 million records/s, large
(1 MiB) records within 1.2x of the floor, and a 10 GiB dataset generated on the fly and
streamed through the measurement in a child process whose peak resident memory stays
under 1 GB (its floor: the same stream through one `hashlib.sha256`).

    python bench/measure.py            # 1M small records, 1 GiB of large ones, 10 GiB streamed
    python bench/measure.py --quick    # seconds
"""
import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from attest import fasthash
from attest.measure import dataset_claim, dataset_claim_batches, record_bytes
from cards import merkle

RESULTS = Path(__file__).resolve().parent / "results" / "measure.json"
CLASSES = 10
TARGET_SMALL_RATE = 2_000_000
TARGET_LARGE_RATIO = 1.2
TARGET_STREAM_RSS = 1_000_000_000


def build(records: int, features: int, seed: int = 0):
    """One buffer of `records` record encodings, plus feature views and labels over it."""
    prefix = len(record_bytes(np.zeros(features, np.float32), 0)) - 4 * features
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, size=records)
    buf = np.empty((records, prefix + 4 * features), np.uint8)
    buf[:, :prefix] = np.frombuffer(record_bytes(np.zeros(features, np.float32), 0)[:prefix],
                                    np.uint8)
    buf[:, 1] = labels  # labels < 24 are the one-byte head right after the array head
    feats = buf[:, prefix:].view("<f4")
    chunk = max(1, (1 << 26) // (4 * features))
    for start in range(0, records, chunk):
        feats[start:start + chunk] = rng.random((min(chunk, records - start), features),
                                                dtype=np.float32)
    for i in (0, records - 1):
        assert buf[i].tobytes() == record_bytes(feats[i], int(labels[i]))
    return buf, feats, labels.tolist()


def best_of(repeat: int, fn):
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def batches(x: np.ndarray, y: np.ndarray, batch_bytes: int = 16 << 20):
    step = max(1, batch_bytes // (x.nbytes // len(x)))
    for start in range(0, len(x), step):
        yield x[start:start + step], y[start:start + step]


def run_case(name: str, records: int, features: int, repeat: int) -> dict:
    buf, feats, labels = build(records, features)
    total = buf.nbytes
    if records <= 4096:  # the reference tree, where it is cheap
        expected = merkle.root_of([merkle.leaf_hash(row.tobytes()) for row in buf]).hex()
    else:
        expected = None
    x, y = np.ascontiguousarray(feats), np.asarray(labels)   # as a loader delivers them
    del feats
    # Floor and measurement alternate, so drifting machine load hits both alike.
    floors, ours, claim = [], [], None
    for _ in range(repeat):
        floor_s, _ = best_of(1, lambda: hashlib.sha256(buf).digest())
        ours_s, claim = best_of(1, lambda: dataset_claim_batches(name, batches(x, y), CLASSES))
        floors.append(floor_s)
        ours.append(ours_s)
    floor_s, ours_s = min(floors), min(ours)
    assert expected is None or claim["merkle_root"] == expected
    case = {
        "records": records, "record_bytes": total // records, "total_bytes": total,
        "merkle_s": ours_s, "merkle_MBps": total / ours_s / 1e6,
        "merkle_records_per_s": records / ours_s,
        "floor_sha256_s": floor_s, "floor_MBps": total / floor_s / 1e6,
        "ratio_vs_floor": ours_s / floor_s,
    }
    if records >= 10_000:   # the per-record API (an iterator of pairs), for comparison
        n = min(records, 200_000)
        start = time.perf_counter()
        dataset_claim(name, zip(x[:n], y[:n].tolist()), CLASSES)
        case["per_record_api_records_per_s"] = n / (time.perf_counter() - start)
    print(f"{name:>6}: {records:>9,} records x {total // records:>9,} B = {total / 2**20:8.1f} MiB | "
          f"merkle {case['merkle_MBps']:8.1f} MB/s {case['merkle_records_per_s']:>12,.0f} rec/s | "
          f"floor sha256 {case['floor_MBps']:8.1f} MB/s | ratio {case['ratio_vs_floor']:.2f}x")
    return case


def stream_batches(total_bytes: int, record_features: int = 1 << 18, per_batch: int = 64):
    """`total_bytes` of distinct records made on the fly: one 64 MiB block whose first
    feature is rewritten per batch, so memory holds one batch whatever the total."""
    block = np.random.default_rng(1).random((per_batch, record_features), dtype=np.float32)
    labels = np.arange(per_batch) % CLASSES
    for k in range(max(1, total_bytes // block.nbytes)):
        block[:, 0] = np.arange(k * per_batch, (k + 1) * per_batch, dtype=np.float32)
        yield block, labels


def stream_child(total_bytes: int) -> dict:
    """Run in a fresh process: the floor, then the measurement, then the peak RSS (the
    kernel's high-water mark of this process's own memory, VmHWM)."""
    start = time.perf_counter()
    digest, streamed = hashlib.sha256(), 0
    for block, labels in stream_batches(total_bytes):
        for i, label in enumerate(labels):   # the same bytes the leaves cover
            digest.update(fasthash.record_prefix(int(label), block[i].nbytes))
            digest.update(block[i])
        streamed += block.nbytes
    floor_s = time.perf_counter() - start
    start = time.perf_counter()
    claim = dataset_claim_batches("stream", stream_batches(total_bytes), CLASSES)
    ours_s = time.perf_counter() - start
    status = Path("/proc/self/status").read_text()
    peak = int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("VmHWM:"))) * 1024
    return {"total_bytes": streamed, "records": claim["records"], "merkle_s": ours_s,
            "merkle_MBps": streamed / ours_s / 1e6, "floor_sha256_s": floor_s,
            "floor_MBps": streamed / floor_s / 1e6, "ratio_vs_floor": ours_s / floor_s,
            "peak_rss_bytes": peak}


def run_stream(total_bytes: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--stream-child", str(total_bytes)],
                         check=True, capture_output=True, text=True)
    case = json.loads(out.stdout)
    print(f"stream: {case['records']:>9,} records = {case['total_bytes'] / 2**30:6.2f} GiB | "
          f"merkle {case['merkle_MBps']:8.1f} MB/s | floor {case['floor_MBps']:8.1f} MB/s | "
          f"ratio {case['ratio_vs_floor']:.2f}x | peak RSS {case['peak_rss_bytes'] / 2**20:.0f} MiB")
    return case


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, runs in seconds")
    parser.add_argument("--repeat", type=int, default=None, help="best of N runs (default 3, quick 1)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--stream-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stream_child:
        print(json.dumps(stream_child(args.stream_child)))
        return 0
    repeat = args.repeat or (1 if args.quick else 3)
    small_n = 20_000 if args.quick else 1_000_000
    large_n = 32 if args.quick else 1024          # records of 1 MiB of features each
    cases = {
        "stream": run_stream((256 << 20) if args.quick else (10 << 30)),
        "small": run_case("small", small_n, 64, repeat),         # 8x8 digits: 261-byte records
        "large": run_case("large", large_n, 1 << 18, repeat),    # 1 MiB + 5-byte records
    }
    targets = {
        "small_records_per_s": [TARGET_SMALL_RATE, cases["small"]["merkle_records_per_s"] >= TARGET_SMALL_RATE],
        "large_ratio": [TARGET_LARGE_RATIO, cases["large"]["ratio_vs_floor"] <= TARGET_LARGE_RATIO],
        "stream_peak_rss_bytes": [TARGET_STREAM_RSS, cases["stream"]["peak_rss_bytes"] < TARGET_STREAM_RSS],
    }
    for key, (target, met) in targets.items():
        print(f"target {key} {target:,}: {'met' if met else 'MISSED'}")
    result = {"bench": "measure", "quick": args.quick, "repeat": repeat, "native": fasthash.NATIVE,
              "hash_threads": fasthash.THREADS, "cpus": os.cpu_count(),
              "load_average_at_end": os.getloadavg()[0],
              "targets": targets, "target_met": all(met for _, met in targets.values()),
              "python": platform.python_version(), "machine": platform.machine(),
              "cases": cases}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
