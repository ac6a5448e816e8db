"""Secrets and cards are written whole or not at all, and secrets only ever owner-readable."""
import os
import stat

import pytest

from cards import keys
from cards.errors import LaminateError
from cards.files import write_atomic


def test_replacing_a_key_never_exposes_it_and_keeps_no_temporary(tmp_path):
    path = tmp_path / "release.pem"
    path.write_bytes(b"old")
    os.chmod(path, 0o644)
    keys.save_private_key(keys.generate_private_key("ed25519"), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys.load_private_key(path) is not None
    assert [p.name for p in tmp_path.iterdir()] == ["release.pem"]


def test_a_stale_temporary_file_does_not_lend_its_mode(tmp_path):
    path = tmp_path / "watermark.opening"
    stale = tmp_path / f".watermark.opening.{os.getpid()}.tmp"
    stale.write_bytes(b"junk")
    os.chmod(stale, 0o666)
    write_atomic(path, b"secret", mode=0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_bytes() == b"secret"
    assert not stale.exists()


def test_a_failed_write_keeps_the_previous_file_and_names_it(tmp_path):
    path = tmp_path / "card.cbor"
    path.write_bytes(b"previous card")
    (tmp_path / f".card.cbor.{os.getpid()}.tmp").mkdir()  # the temporary file cannot be opened
    with pytest.raises(LaminateError, match="card.cbor: cannot write"):
        write_atomic(path, b"new card")
    assert path.read_bytes() == b"previous card"
