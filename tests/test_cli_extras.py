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
    ("sqlalchemy", ["log", "verify", "c", "--receipt", "r", "--service-key", "k"], "service"),
    ("torch", ["quickstart", "--out", "unused"], "train"),
])
def test_missing_extra_is_a_one_line_usage_error(tmp_path, module, argv, extra):
    run = subprocess.run([sys.executable, "-c", PROBE.format(module=module, argv=argv)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert f"needs the {extra} extra" in run.stderr and module in run.stderr
    assert f"pip install -e '.[{extra}]'" in run.stderr
