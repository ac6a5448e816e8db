"""bench/verify.py runs end to end and writes, for each card, the appraisal, the reader
and each step of the two on its own."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import verify  # noqa: E402


def test_verify_bench_writes_every_step(tmp_path):
    out = tmp_path / "verify.json"
    run = subprocess.run([sys.executable, str(REPO / "bench" / "verify.py"),
                          "--iterations", "20", "--out", str(out)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["iterations"] == 20
    assert list(report["cards"]) == ["ed25519", "p256"]
    for kind, card in report["cards"].items():
        assert card["checks"] > 0, f"{kind}: the bench card was not appraised"
        assert set(card["steps"]) == {*verify.STEPS, verify.UNSORTED}, f"{kind}: steps"
        for name, figures in card["steps"].items():
            assert figures["median_ms"] > 0 and figures["cpu_median_ms"] > 0, f"{kind}.{name}"
        # the other checks are what is left of the appraisal's CPU time
        steps_cpu = sum(card["steps"][name]["cpu_median_ms"] for name in verify.STEPS)
        assert abs(card["other_checks_cpu_ms"]
                   - (card["appraisal"]["cpu_median_ms"] - steps_cpu)) < 1e-9, kind
    worst = max(card["appraisal"]["median_ms"] for card in report["cards"].values())
    assert report["worst_median_ms"] == worst
    assert report["meets_target"] == (worst <= report["target_median_ms"])
    for name in verify.STEPS:
        assert name in run.stdout, f"the printed table lacks step {name}"
