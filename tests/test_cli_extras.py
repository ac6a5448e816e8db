"""A command whose optional dependency group is missing names the extra to install."""
import subprocess
import sys

import pytest

PROBE = """
import sys
sys.modules[{module!r}] = None  # as if the package were not installed
from laminate.cli import main
sys.exit(main({argv!r}))
"""


@pytest.mark.parametrize("module, argv, extra", [
    ("anyio", ["serve", "--port", "0"], "service"),
    ("sqlalchemy", ["serve", "--port", "0"], "service"),
    ("torch", ["quickstart", "--out", "unused"], "train"),
])
def test_missing_extra_is_a_one_line_usage_error(tmp_path, module, argv, extra):
    run = subprocess.run([sys.executable, "-c", PROBE.format(module=module, argv=argv)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert f"needs the {extra} extra" in run.stderr and module in run.stderr
    assert f"pip install -e '.[{extra}]'" in run.stderr


def test_offline_log_verify_needs_no_service_extra(tmp_path):
    """`laminate log verify` checks receipts with the pure proof code: without fastapi,
    uvicorn or sqlalchemy it gets as far as reading its input (here: a missing card)."""
    probe = PROBE.replace("sys.modules[{module!r}] = None  # as if the package were not installed",
                          "for name in ('fastapi', 'uvicorn', 'sqlalchemy', 'anyio', 'starlette'):\n"
                          "    sys.modules[name] = None")
    argv = ["log", "verify", "c", "--receipt", "r", "--service-key", "k"]
    run = subprocess.run([sys.executable, "-c", probe.format(argv=argv)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 2, run.stderr
    assert "extra" not in run.stderr and "Traceback" not in run.stderr
    assert "c: cannot read card" in run.stderr
