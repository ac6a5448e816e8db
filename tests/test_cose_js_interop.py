"""A card's envelope checked by cose-js through node, a second independent COSE
implementation (tests/js pins it; `npm ci --prefix tests/js` installs it).

cose-js 0.9.0 knows the ECDSA algorithms by their polymorphic identifiers only (ES256,
-7), not EdDSA (-8) nor the fully specified Ed25519 (-19) and ESP256 (-9) that new cards
use; the test checks that it verifies an ES256 card, refuses that card once a payload
byte is flipped, and records what it says of the others.
"""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from cardkit import forge, make_card
from cards import cose

JS = Path(__file__).resolve().parent / "js"
NODE = shutil.which("node")

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not installed: cose-js cannot run"),
    pytest.mark.skipif(not (JS / "node_modules" / "cose-js").is_dir(),
                       reason="cose-js is not installed: run `npm ci --prefix tests/js`"),
]


def _cose_js(card_bytes: bytes, kit, tmp_path) -> dict:
    card = tmp_path / "card.cbor"
    card.write_bytes(card_bytes)
    run = subprocess.run([NODE, str(JS / "verify.js"), str(card),
                          str(kit.release_public_pem_path)],
                         capture_output=True, text=True, timeout=60, cwd=JS)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.fixture(scope="module")
def p256(tmp_path_factory):
    return make_card(tmp_path_factory.mktemp("p256"), key_kind="p256")


def test_cose_js_verifies_an_es256_card_and_refuses_a_flipped_byte(p256, tmp_path):
    es256 = forge(p256)                    # the envelope older cards have: ES256, alg and kid
    assert cose.parse_sign1(es256).alg == cose.ALG_ES256
    result = _cose_js(es256, p256, tmp_path)
    assert result == {"alg": -7, "verified": True, "error": None}
    tampered = bytearray(es256)
    tampered[-80] ^= 1                     # a payload byte: the signature no longer covers it
    result = _cose_js(bytes(tampered), p256, tmp_path)
    assert result["verified"] is False and "missmatch" in result["error"]


def test_cose_js_on_the_fully_specified_algorithms(p256, tmp_path):
    """What cose-js 0.9.0 says of new cards: it does not know ESP256 (-9) or Ed25519
    (-19). If a later cose-js learns them, this test fails and should then require
    verification."""
    esp256 = _cose_js(p256.card_bytes, p256, tmp_path)
    assert esp256 == {"alg": -9, "verified": False, "error": "Unknown algorithm, -9"}
    ed = make_card(tmp_path / "ed")
    assert _cose_js(ed.card_bytes, ed, tmp_path) == {
        "alg": -19, "verified": False, "error": "Unknown algorithm, -19"}
    assert _cose_js(forge(ed), ed, tmp_path) == {
        "alg": -8, "verified": False, "error": "Unknown algorithm, -8"}
