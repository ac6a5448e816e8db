"""Attestation cost per backend: PCR/register extend and quote, simulator vs swtpm.

The simulator is the baseline (in-process SHA-256 and ECDSA); the TPM numbers are a
software TPM over a loopback socket, so they show the protocol and TPM-side cost a real
TPM adds (a discrete TPM is slower still: tens of ms per ECDSA quote). A training run
makes about eight extends and one quote, so either backend adds well under a second.

    python bench/attest_backends.py                   # 500 extends, 50 quotes each
    python bench/attest_backends.py --quick           # seconds
    python bench/attest_backends.py --tcti swtpm:host=127.0.0.1,port=2321   # your TPM
Without --tcti a temporary swtpm is manufactured and started (needs swtpm installed).
"""
import argparse
import hashlib
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "attest_backends.json"
REGISTERS = [16, 23]


def timed(n: int, fn) -> dict:
    times = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    times.sort()
    return {"n": n, "median_ms": 1e3 * statistics.median(times),
            "p95_ms": 1e3 * times[min(n - 1, int(0.95 * n))], "total_s": sum(times)}


def measure(backend, extends: int, quotes: int) -> dict:
    backend.start(REGISTERS)
    digests = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(extends)]
    ext = timed(extends, lambda i: backend.extend(
        {"register": REGISTERS[i % 2], "type": "bench", "digest": digests[i], "data": None}))
    nonce = hashlib.sha256(b"claims").digest()
    quo = timed(quotes, lambda i: backend.quote(nonce))
    return {"extend": ext, "quote": quo}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run (seconds)")
    parser.add_argument("--tcti", help="use this TPM instead of a temporary swtpm")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    extends, quotes = (40, 5) if args.quick else (500, 50)

    from attest.sim_backend import SimBackend
    from attest.tpm_backend import TpmBackend

    with tempfile.TemporaryDirectory() as tmp:
        sim = SimBackend(Path(tmp) / "sim")
        results = {"sim": measure(sim, extends, quotes)}
        sim.close()
        swtpm = None
        if args.tcti is None:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from swtpm import Swtpm, missing_reason
            reason = missing_reason()
            if reason:
                print(f"cannot benchmark the TPM backend: {reason}", file=sys.stderr)
                return 2
            swtpm = Swtpm(Path(tmp) / "swtpm")
        try:
            tpm = TpmBackend(args.tcti or swtpm.tcti, state_dir=Path(tmp) / "tpm",
                             require_enrollment=False)
            results["tpm"] = measure(tpm, extends, quotes)
            results["tpm"]["ak"] = "ECC P-256" if tpm.ak_public[2:4] == b"\x00\x23" else "RSA 2048"
            tpm.close()
        finally:
            if swtpm is not None:
                swtpm.stop()

    print(f"{'operation':<10}{'sim median':>14}{'tpm median':>14}{'tpm p95':>12}{'tpm/sim':>10}")
    ratios = {}
    for op in ("extend", "quote"):
        s, t = results["sim"][op]["median_ms"], results["tpm"][op]["median_ms"]
        ratios[op] = t / s if s else float("inf")
        print(f"{op:<10}{s:>11.3f} ms{t:>11.3f} ms{results['tpm'][op]['p95_ms']:>9.3f} ms"
              f"{ratios[op]:>9.1f}x")
    target = "swtpm (temporary, loopback)" if args.tcti is None else args.tcti
    print(f"tpm = {target}, AK {results['tpm']['ak']}; {extends} extends, {quotes} quotes each")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "attest_backends", "quick": args.quick, "tpm_target": target,
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "results": results, "ratio_tpm_over_sim": ratios}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
