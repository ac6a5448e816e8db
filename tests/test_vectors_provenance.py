"""The public vectors in tests/vectors/ carry their provenance, and tests read them
from there only: a plain clone must run every conformance test."""
import re
from pathlib import Path

import pytest

VECTORS = Path(__file__).resolve().parent / "vectors"
SOURCES = ("cose", "merkle", "tee")


@pytest.mark.parametrize("source", SOURCES)
def test_each_source_names_origin_version_and_license(source):
    folder = VECTORS / source
    readme = (folder / "README.md").read_text()
    assert re.search(r"https://github\.com/[\w.-]+/[\w.-]+", readme), f"{source}: no source URL"
    assert re.search(r"\b[0-9a-f]{8,40}\b", readme), f"{source}: no commit"
    assert "license" in readme.lower(), f"{source}: no license named"
    licenses = [folder / "LICENSE"] if source != "tee" else sorted((folder / "LICENSES").iterdir())
    assert licenses and all(p.is_file() and p.stat().st_size > 500 for p in licenses), \
        f"{source}: license text missing"


def test_the_index_lists_every_source():
    index = (VECTORS / "README.md").read_text()
    for source in SOURCES:
        assert f"`{source}/`" in index, f"tests/vectors/README.md does not list {source}/"


def test_no_test_reads_vectors_from_outside_the_repository():
    outside = re.compile(r"parents\[2\]|testvectors|\.\./shared")
    offenders = [p.name for p in Path(__file__).parent.glob("*.py")
                 if p.name != Path(__file__).name and outside.search(p.read_text())]
    assert not offenders, f"tests reading vectors outside tests/vectors/: {offenders}"
