"""Dataset measurement throughput: Merkle root over records vs one SHA-256 pass.

The floor is `hashlib.sha256` over exactly the bytes the Merkle leaves cover (all record
encodings back to back) in one call. The records are laid out in one buffer in record
encoding, and `dataset_claim` gets (feature view, label) pairs over it, the way a
dataset held in memory is iterated. Large records should cost within 1.5x of the floor
(the hashing is the work); small records show the per-record overhead.

    python bench/measure.py            # 1M small records and 1 GiB of large records
    python bench/measure.py --quick    # seconds
"""
import argparse
import hashlib
import json
import platform
import time
from pathlib import Path

import numpy as np

from attest.measure import dataset_claim, record_bytes
from cards import merkle

RESULTS = Path(__file__).resolve().parent / "results" / "measure.json"
CLASSES = 10
TARGET_LARGE_RATIO = 1.5


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


def run_case(name: str, records: int, features: int, repeat: int) -> dict:
    buf, feats, labels = build(records, features)
    total = buf.nbytes
    floor_s, _ = best_of(repeat, lambda: hashlib.sha256(buf).digest())
    ours_s, claim = best_of(repeat, lambda: dataset_claim(name, zip(feats, labels), CLASSES))
    if records <= 4096:  # cross-check against the reference tree where it is cheap
        leaves = [merkle.leaf_hash(row.tobytes()) for row in buf]
        assert claim["merkle_root"] == merkle.root_of(leaves).hex()
    case = {
        "records": records, "record_bytes": int(buf.shape[1]), "total_bytes": total,
        "merkle_s": ours_s, "merkle_MBps": total / ours_s / 1e6,
        "merkle_records_per_s": records / ours_s,
        "floor_sha256_s": floor_s, "floor_MBps": total / floor_s / 1e6,
        "ratio_vs_floor": ours_s / floor_s,
    }
    print(f"{name:>6}: {records:>9,} records x {buf.shape[1]:>9,} B = {total / 2**20:8.1f} MiB | "
          f"merkle {case['merkle_MBps']:8.1f} MB/s {case['merkle_records_per_s']:>12,.0f} rec/s | "
          f"floor sha256 {case['floor_MBps']:8.1f} MB/s | ratio {case['ratio_vs_floor']:.2f}x")
    return case


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, runs in seconds")
    parser.add_argument("--repeat", type=int, default=None, help="best of N runs (default 3, quick 1)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    small_n = 20_000 if args.quick else 1_000_000
    large_n = 32 if args.quick else 1024          # records of 1 MiB of features each
    cases = {
        "small": run_case("small", small_n, 64, repeat),         # 8x8 digits: 261-byte records
        "large": run_case("large", large_n, 1 << 18, repeat),    # 1 MiB + 5-byte records
    }
    ok = cases["large"]["ratio_vs_floor"] <= TARGET_LARGE_RATIO
    print(f"target: large records within {TARGET_LARGE_RATIO}x of the floor: "
          f"{'met' if ok else 'MISSED'} ({cases['large']['ratio_vs_floor']:.2f}x)")
    result = {"bench": "measure", "quick": args.quick, "repeat": repeat,
              "target_large_ratio": TARGET_LARGE_RATIO, "target_met": ok,
              "python": platform.python_version(), "machine": platform.machine(),
              "cases": cases}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
