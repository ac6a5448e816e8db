"""Would region-keyed DAWN flips reach the copies per-input flips miss?

Per-input DAWN flips isolated inputs; a smooth, low-capacity copy (the 1,024-unit
random-feature "narrow" copy of bench/dawn.py, 10,000 queries) keeps 95% accuracy yet
repeats almost none of them. This measures the alternative: the keyed flip decision and
the wrong label are functions of a coarse cell of input space, so every query in a
flipped cell gets the same wrong label, and one trial is counted per cell (its first
query), which keeps the null at 1/(C-1) exactly. A cell is (the victim's label, the sign
pattern of BITS keyed random projections) of either the pixels (centred at 0.5) or the
victim's centred logits. Reported per setting: the cells the thief's queries fall in, the
flipped cells (= trials), the fraction of its queries answered wrongly (the honest cost),
the copy's match rate on the trials, an independent model's on the same trials, and the
copy's accuracy. The flips are simulated here with the same rule a server would apply;
no server, card or log is involved (this decides whether the scheme is worth building).

    python bench/dawn_regions.py    # writes bench/results/dawn_regions.json
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

KEY = hashlib.sha256(b"dawn-regions bench key").digest()


def prf(tag: bytes, data: bytes) -> float:
    """A keyed fraction in [0, 1) (HMAC-SHA256's first 8 bytes)."""
    import hmac

    return int.from_bytes(hmac.digest(KEY, tag + data, "sha256")[:8], "big") / 2.0 ** 64


def cells(victim, x, labels, space: str, bits: int) -> list[bytes]:
    rng = np.random.default_rng(int.from_bytes(KEY[:8], "big"))
    if space == "pixels":
        z = x - 0.5
    else:
        z = np.maximum(x @ victim.w1 + victim.b1, 0) @ victim.w2
        z = z - z.mean(axis=1, keepdims=True)
    signs = (z @ rng.normal(size=(z.shape[1], bits))) > 0
    return [bytes([int(y)]) + np.packbits(s).tobytes() for y, s in zip(labels, signs)]


def trial(space, bits, rate, count, arch, kind, seed):
    import serving_kit as sk
    from redteam.api import ARCHS, fit_targets, queries

    victim = sk.victim_model()
    _, (xt, yt), (xq, yq) = sk.split()
    x = queries(xq, kind, count, seed)
    labels = victim.predict(x)
    region = cells(victim, x, labels, space, bits)
    served, first = labels.copy(), {}
    for i, r in enumerate(region):
        if prf(b"flip", r) < rate:
            pick = int(prf(b"label", r) * 9)           # uniform among the 9 others
            served[i] = pick if pick < labels[i] else pick + 1
            first.setdefault(r, i)
    hidden, scale, ridge = ARCHS[arch]
    copy = fit_targets(x, np.eye(10)[served], hidden=hidden, seed=100 + seed, ridge=ridge,
                       scale=scale)
    independent = fit_targets(xq, np.eye(10)[yq], hidden=hidden, seed=999, ridge=ridge,
                              scale=scale)
    idx = np.fromiter(first.values(), dtype=int)
    match = float((copy.predict(x[idx]) == served[idx]).mean()) if len(idx) else None
    chance = float((independent.predict(x[idx]) == served[idx]).mean()) if len(idx) else None
    return {"space": space, "bits": bits, "rate": rate, "queries": count, "copy": arch,
            "inputs": kind, "cells": len(set(region)), "trials": len(idx),
            "wrong_answers": round(float((served != labels).mean()), 4),
            "copy_match_rate": match, "independent_match_rate": chance,
            "copy_accuracy": round(float((copy.predict(xt) == yt).mean()), 4)}


def main() -> int:
    started, rows = time.perf_counter(), []
    for space, bit_counts in (("pixels", (16, 10, 6)), ("logits", (8, 5, 3))):
        for bits in bit_counts:
            for rate in (0.05, 0.01):
                for count, arch, kind in ((1000, "same", "in-distribution"),
                                          (10000, "narrow", "in-distribution"),
                                          (10000, "narrow", "random")):
                    rows.append(trial(space, bits, rate, count, arch, kind, seed=0))
                    print(json.dumps(rows[-1]), flush=True)
    out = REPO / "bench" / "results" / "dawn_regions.json"
    out.write_text(json.dumps({"what": __doc__.split("\n\n")[1].replace("\n", " "),
                               "seconds": round(time.perf_counter() - started),
                               "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
