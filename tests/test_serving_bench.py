"""bench/dawn.py --quick runs end to end: 1,000-query copies are shown, independents not."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dawn_bench_quick(tmp_path):
    out = tmp_path / "dawn.json"
    run = subprocess.run([sys.executable, str(REPO / "bench" / "dawn.py"), "--quick",
                          "--out", str(out)], capture_output=True, text=True, timeout=600,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    (rate,) = json.loads(out.read_text())["rates"]
    assert rate["rate"] == 0.05
    copies = [t for t in rate["thieves"] if t["keeps_90pct"]]
    assert len(copies) == 4 and all(t["shown"] for t in copies)
    assert all(t["p_value"] <= 1e-6 for t in copies)
    assert rate["independent_tests"] == 48 and rate["false_positives"] == 0
    assert len(rate["honest_client_models"]) == 8 and rate["honest_client_false_positives"] == 0
    assert all(t["reason"].startswith("ownership:") for t in rate["thieves"] if not t["shown"])
    # the flips cost honest clients about the flip rate of their accuracy
    assert 0.0 < rate["honest_accuracy_cost"] < 0.1
