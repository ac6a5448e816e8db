"""Signed-note checkpoints and witness cosignatures: each check is broken on purpose."""
import base64
import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from verifier.logproof import (
    LogProofError,
    check_cosignatures,
    cosign_checkpoint,
    parse_checkpoint,
    sign_checkpoint,
    split_note,
    verifier_key,
    verify_checkpoint,
)

ORIGIN = "example.test/laminate"
ROOT = hashlib.sha256(b"root").digest()
LOG = ed25519.Ed25519PrivateKey.generate()
W1, W2 = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()


def raw(key):
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_checkpoint_layout_matches_the_signed_note_text():
    note = sign_checkpoint(ORIGIN, 42, ROOT, "log.test", LOG)
    body, sig_lines = note.split("\n\n")
    assert body.split("\n") == [ORIGIN, "42", base64.b64encode(ROOT).decode()]
    dash, name, b64 = sig_lines.rstrip("\n").split(" ")
    assert (dash, name) == ("\u2014", "log.test")
    blob = base64.b64decode(b64)
    pub = raw(LOG.public_key())
    assert blob[:4] == hashlib.sha256(b"log.test\n\x01" + pub).digest()[:4]
    LOG.public_key().verify(blob[4:], (body + "\n").encode())
    key = verifier_key("log.test", LOG.public_key())
    encoded = base64.b64encode(b"\x01" + pub).decode()
    assert key == f"log.test+{blob[:4].hex()}+{encoded}"
    cp = verify_checkpoint(note, ORIGIN, "log.test", LOG.public_key())
    assert (cp.origin, cp.tree_size, cp.root_hash) == (ORIGIN, 42, ROOT)


@pytest.mark.parametrize("tamper,why", [
    (lambda n: n.replace("\n42\n", "\n43\n"), "signature by log.test does not verify"),
    (lambda n: n.replace(ORIGIN, "evil.test/x"), "origin 'evil.test/x' is not"),
    (lambda n: n.replace("\u2014 log.test", "\u2014 other"), "no signature by log key log.test"),
    (lambda n: n.replace("\n\n", "\n"), "no blank line"),
    (lambda n: n.replace("\n42\n", "\n042\n"), "tree_size '042': not a decimal"),
    (lambda n: n.replace(base64.b64encode(ROOT).decode(), "AAAA"), "root_hash: expected a 32"),
    (lambda n: n.replace("\u2014 ", "- "), "malformed signature line"),
])
def test_tampered_checkpoint_is_refused(tamper, why):
    note = sign_checkpoint(ORIGIN, 42, ROOT, "log.test", LOG)
    with pytest.raises(LogProofError, match=why):
        verify_checkpoint(tamper(note), ORIGIN, "log.test", LOG.public_key())


def test_wrong_log_key_is_refused():
    note = sign_checkpoint(ORIGIN, 42, ROOT, "log.test", LOG)
    with pytest.raises(LogProofError, match="no signature by log key"):
        verify_checkpoint(note, ORIGIN, "log.test", W1.public_key())


def test_k_of_n_cosignatures():
    note = sign_checkpoint(ORIGIN, 42, ROOT, "log.test", LOG)
    signed = cosign_checkpoint(cosign_checkpoint(note, "w1", W1, 1700000000), "w2", W2)
    body, sigs = split_note(signed)
    stamp, sig = sigs[1][1][4:12], sigs[1][1][12:]
    assert sigs[1][1][:4] == hashlib.sha256(b"w1\n\x04" + raw(W1.public_key())).digest()[:4]
    assert int.from_bytes(stamp, "big") == 1700000000
    W1.public_key().verify(sig, b"cosignature/v1\ntime 1700000000\n" + body.encode())
    wits = {"w1": W1.public_key(), "w2": W2.public_key()}
    assert check_cosignatures(signed, wits, 2) == ["w1", "w2"]
    # the log's own signature line is no cosignature, and a witness counts once
    with pytest.raises(LogProofError, match="1 valid witness cosignatures, 2 required"):
        check_cosignatures(cosign_checkpoint(cosign_checkpoint(note, "w1", W1), "w1", W1),
                           wits, 2)
    # a cosignature over another size does not count for this one
    other = cosign_checkpoint(sign_checkpoint(ORIGIN, 43, ROOT, "log.test", LOG), "w2", W2)
    moved = cosign_checkpoint(note, "w1", W1) + other.splitlines()[-1] + "\n"
    with pytest.raises(LogProofError, match="1 valid witness cosignatures, 2 required"):
        check_cosignatures(moved, wits, 2)


def test_checkpoint_body_needs_three_lines():
    with pytest.raises(LogProofError, match="origin, size, root"):
        parse_checkpoint(f"{ORIGIN}\n42\n")
