"""The one import direction of the layout (README, Layout), checked on the source
(every import, lazy ones too)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {"attest", "cards", "verifier", "enclave_sim", "registry", "redteam", "serving", "laminate"}
ALLOWED = {
    "cards": set(),
    "enclave_sim": set(),
    "attest": {"cards", "enclave_sim"},
    "verifier": {"cards"},
    "registry": {"cards", "verifier"},
    "redteam": {"attest", "cards", "enclave_sim", "verifier"},
    "serving": {"attest", "cards", "enclave_sim", "verifier"},
}
NEVER_IN_VERIFIER = {"torch", "opacus", "onnx", "onnxscript", "tpm2_pytss"}


def imported_modules(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], node.lineno


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_the_design_allows(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for top, line in imported_modules(path):
            if top in PROJECT and top != package and top not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {top}")
            if package == "verifier" and top in NEVER_IN_VERIFIER:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {top}")
    assert not bad, "\n".join(bad)
