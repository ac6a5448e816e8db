"""bench/service.py --quick runs end to end and writes its figures."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_service_bench_quick(tmp_path):
    out = tmp_path / "service.json"
    run = subprocess.run([sys.executable, str(REPO / "bench" / "service.py"), "--quick",
                          "--workers", "1", "--out", str(out)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [r["clients"] for r in report["http"]] == [1, 8, 32]
    for row in report["http"]:
        assert row["registrations_per_s"] > 0 and row["verifications_per_s"] > 0
        assert row["verification_ratio"] > 0
        assert len(row["verification_ratio_runs"]) == report["repeats"] == 2
        assert row["client_cpu_ms_per_verification"] > 0
        assert row["server_cpu_ms_per_verification"] > 0     # read from /proc on Linux
    assert report["in_process"]["verifications_per_s"] > 0
    assert "target" in run.stdout
