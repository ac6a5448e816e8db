"""A card's envelope checked by an independent COSE implementation, as a new user's
tools would: pycose, installed from the package registry into a venv of its own (no
laminate code and none of our site-packages on its path).

pycose 1.1 knows EdDSA (-8) and ES256 (-7), not the fully specified Ed25519 (-19) and
ESP256 (-9) new cards use; for those the venv checks the signature over the
Sig_structure it builds itself (its own cbor2 and cryptography), and the test records
that pycose refuses the identifiers as unknown.
"""
import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from cardkit import forge, make_card
from cards import cose

pytestmark = pytest.mark.slow  # builds a venv and installs pycose (tens of seconds)

CHECK = r'''
import json, sys
import cbor2
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

card, pem = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()
tagged = cbor2.loads(card)
protected, unprotected, payload, signature = tagged.value
header = cbor2.loads(protected)
out = {"tag": tagged.tag, "alg": header[1], "typ": header.get(16), "cwt": header.get(15)}
from pycose.messages import Sign1Message
from pycose.keys import CoseKey
public = serialization.load_pem_public_key(pem)
try:
    msg = Sign1Message.decode(card)
    msg.key = CoseKey._from_cryptography_key(public)
    out["pycose"] = msg.verify_signature()
except Exception as exc:
    out["pycose"] = f"refused: {exc}"
to_be_signed = cbor2.dumps(["Signature1", protected, b"", payload])
if isinstance(public, ec.EllipticCurvePublicKey):
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    der = utils.encode_dss_signature(r, s)
    verify = lambda data: public.verify(der, data, ec.ECDSA(hashes.SHA256()))
else:
    verify = lambda data: public.verify(signature, data)
try:
    verify(to_be_signed)
    out["signature"] = True
except Exception:
    out["signature"] = False
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def pycose_python(tmp_path_factory):
    """A plain venv (no system site-packages) with pycose from the registry."""
    root = tmp_path_factory.mktemp("pycose-venv")
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(root)
    python = root / "bin" / "python"
    # pycose 1.1 expects cbor2 5's lists (cbor2 6 decodes arrays as tuples, which
    # pycose refuses as "cannot be decoded as COSE message").
    installed = subprocess.run([str(python), "-m", "pip", "install", "-q", "pycose",
                                "cbor2<6"],
                               capture_output=True, text=True, timeout=600)
    if installed.returncode != 0:
        pytest.skip("pip cannot install pycose from the package registry: "
                    + (installed.stderr.strip().splitlines() or ["no output"])[-1])
    return python


def _kid(kit) -> str:
    from cards import keys
    return keys.key_id(kit.private_key.public_key()).hex()


def _check(python, kit, card_bytes, tmp_path):
    card = tmp_path / "card.cbor"
    card.write_bytes(card_bytes)
    script = tmp_path / "check.py"
    script.write_text(CHECK)
    run = subprocess.run([str(python), "-I", str(script), str(card),
                          str(kit.release_public_pem_path)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.mark.parametrize("kind, new_alg, old_alg", [("ed25519", -19, -8), ("p256", -9, -7)])
def test_an_independent_cose_implementation_verifies_cards(pycose_python, tmp_path, kind,
                                                           new_alg, old_alg):
    kit = make_card(tmp_path / "kit", key_kind=kind)
    new = _check(pycose_python, kit, kit.card_bytes, tmp_path)
    assert new["tag"] == 18 and new["alg"] == new_alg and new["signature"] is True
    assert new["typ"] == "application/laminate-card+cbor"
    assert new["cwt"] == {"1": f"laminate-release-key:sha256:{kit.private_key and _kid(kit)}",
                          "2": f"sha-256:{kit.claims['model']['sha256']}"}
    assert str(new["pycose"]).startswith("refused")  # pycose 1.1: unknown algorithm
    # An older card (polymorphic algorithm, alg and kid only) verifies in pycose itself.
    old = forge(kit)
    assert cose.parse_sign1(old).alg == old_alg
    legacy = _check(pycose_python, kit, old, tmp_path)
    assert legacy["pycose"] is True and legacy["signature"] is True
    # ... and a flipped payload byte is refused by both.
    tampered = bytearray(old)
    tampered[-80] ^= 1
    broken = _check(pycose_python, kit, bytes(tampered), tmp_path)
    assert broken["signature"] is False and broken["pycose"] is not True


def test_the_venv_does_not_see_our_packages(pycose_python):
    probe = subprocess.run([str(pycose_python), "-I", "-c", "import cards"],
                           capture_output=True, text=True, timeout=60, cwd="/")
    assert probe.returncode != 0 and "No module named 'cards'" in probe.stderr
    assert Path(sys.prefix) not in Path(pycose_python).parents
