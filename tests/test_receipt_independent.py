"""An RFC 9942 (COSE Receipts) verifier for the RFC9162_SHA256 profile (vds 1), written
here from the specification text with cbor2 and cryptography only (no laminate code),
checks the receipts the registry issues, alone and embedded in a transparent statement.

From RFC 9942: a receipt is a COSE_Sign1 whose protected header holds alg (1) and vds
(395) = 1, whose unprotected header holds vdp (396), a map whose key -1 holds inclusion
proofs, each `bstr .cbor [tree-size: uint, leaf-index: uint, inclusion-path: [+ bstr]]`,
and whose payload is detached (nil): the verifier recomputes the Merkle root from the
entry and the proof, and that root is the payload the signature covers
(Sig_structure = ["Signature1", protected, h'', root], RFC 9052 section 4.4).
From RFC 9162 section 2.1: leaf hash = SHA-256(0x00 || entry), node =
SHA-256(0x01 || left || right), and section 2.1.3.2 gives the root-from-path algorithm.
The entry a laminate log holds for a card is the card's statement: the COSE_Sign1 with
its unprotected header emptied (cards/FORMAT.md).
"""
import base64
import hashlib

import cbor2
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from cardkit import make_card
from registry.config import ServiceConfig
from registry.service import Service
from service_helpers import card_variant, combined_policy


class Refused(Exception):
    pass


def _leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def spec_root(leaf_index: int, tree_size: int, entry_hash: bytes, path: list) -> bytes:
    """RFC 9162 section 2.1.3.2, step by step."""
    if leaf_index >= tree_size:
        raise Refused("leaf_index is not below tree_size")
    fn, sn, r = leaf_index, tree_size - 1, entry_hash
    for p in path:
        if not isinstance(p, bytes) or len(p) != 32:
            raise Refused("a path element is not a 32-byte hash")
        if sn == 0:
            raise Refused("the path is longer than the tree allows")
        if fn & 1 or fn == sn:
            r = _node(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise Refused("the path is shorter than the tree needs")
    return r


def _verify_signature(alg: int, public_key, message: bytes, signature: bytes) -> None:
    try:
        if alg in (-8, -19):                       # EdDSA, Ed25519
            assert isinstance(public_key, ed25519.Ed25519PublicKey)
            public_key.verify(signature, message)
        elif alg in (-7, -9):                      # ES256, ESP256: raw r || s
            assert isinstance(public_key, ec.EllipticCurvePublicKey)
            r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            public_key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
        else:
            raise Refused(f"algorithm {alg} not handled")
    except (InvalidSignature, AssertionError, ValueError):
        raise Refused("the signature does not verify over the recomputed root") from None


def spec_verify_receipt(receipt: bytes, entry: bytes, public_key) -> tuple[int, int, bytes]:
    """(tree size, leaf index, root) when ``receipt`` proves ``entry`` is in the log."""
    item = cbor2.loads(receipt)
    if isinstance(item, cbor2.CBORTag):
        if item.tag != 18:
            raise Refused("not a COSE_Sign1")
        item = item.value
    protected_bytes, unprotected, payload, signature = item
    protected = cbor2.loads(protected_bytes)
    if protected.get(395) != 1:
        raise Refused("vds is not RFC9162_SHA256")
    if payload is not None:
        raise Refused("the payload of an inclusion receipt is detached")
    proofs = unprotected[396][-1]
    for encoded in proofs:
        tree_size, leaf_index, path = cbor2.loads(encoded)
        root = spec_root(leaf_index, tree_size, _leaf_hash(entry), path)
        to_be_signed = cbor2.dumps(["Signature1", protected_bytes, b"", root])
        _verify_signature(protected[1], public_key, to_be_signed, signature)
        return tree_size, leaf_index, root
    raise Refused("no inclusion proof")


def spec_statement(card: bytes) -> bytes:
    """The card with its unprotected header emptied (the receipts taken off)."""
    item = cbor2.loads(card)
    protected, _unprotected, payload, signature = item.value
    return cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, signature]), canonical=True)


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    base = tmp_path_factory.mktemp("independent")
    kit = make_card(base / "kit")
    service = Service(ServiceConfig(database_url=f"sqlite:///{base / 's.sqlite'}",
                                    policy_path=str(combined_policy(base / "p.yaml", [kit])),
                                    key_path=str(base / "service.pem")))
    bodies = []
    for i in range(5):      # several leaves, so paths of several shapes are checked
        card = card_variant(kit, i)     # the quote is signed afresh each call
        status, body = service.register_card(card)
        assert status == 201, body
        bodies.append((card, body))
    pem = serialization.load_pem_public_key(
        service.public_key.public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo))
    final = service.proof_bundle(bodies[0][1]["leaf_index"])
    yield {"service": service, "bodies": bodies, "key": pem, "final": final, "kit": kit}
    service.close()


def test_independent_verifier_accepts_every_registry_receipt(registered):
    for card, body in registered["bodies"]:
        size, index, root = spec_verify_receipt(base64.b64decode(body["receipt"]), card,
                                                registered["key"])
        assert (size, index, root.hex()) == (body["tree_size"], body["leaf_index"],
                                             body["root_hash"])
    size, index, root = spec_verify_receipt(base64.b64decode(registered["final"]["receipt"]),
                                            registered["bodies"][0][0], registered["key"])
    assert size == registered["service"].log.size() and index == registered["final"]["leaf_index"]


def test_independent_verifier_checks_the_receipt_embedded_in_a_transparent_statement(registered):
    from cards.card import with_receipts  # laminate makes the statement; the check is ours
    card, body = registered["bodies"][2]
    statement = with_receipts(card, [base64.b64decode(body["receipt"])])
    embedded = cbor2.loads(statement).value[1][394]
    assert len(embedded) == 1
    assert spec_statement(statement) == card
    spec_verify_receipt(embedded[0], spec_statement(statement), registered["key"])


def test_independent_verifier_refuses_what_it_should(registered):
    """The verifier written here is not a rubber stamp: another card, an altered path,
    a moved leaf and another key are all refused."""
    (card, body), (other, _) = registered["bodies"][1], registered["bodies"][3]
    receipt = base64.b64decode(body["receipt"])
    with pytest.raises(Refused, match="signature"):
        spec_verify_receipt(receipt, other, registered["key"])
    protected, unprotected, payload, signature = cbor2.loads(receipt).value
    size, index, path = cbor2.loads(unprotected[396][-1][0])
    bent = [bytes(32)] + path[1:]
    altered = cbor2.dumps(cbor2.CBORTag(18, [protected, {396: {-1: [cbor2.dumps(
        [size, index, bent])]}}, payload, signature]))
    with pytest.raises(Refused, match="signature"):
        spec_verify_receipt(altered, card, registered["key"])
    moved = cbor2.dumps(cbor2.CBORTag(18, [protected, {396: {-1: [cbor2.dumps(
        [size, index ^ 1, path])]}}, payload, signature]))
    with pytest.raises(Refused):
        spec_verify_receipt(moved, card, registered["key"])
    with pytest.raises(Refused, match="signature"):
        spec_verify_receipt(receipt, card, ed25519.Ed25519PrivateKey.generate().public_key())


def test_spec_root_against_a_tree_built_by_hand():
    """The RFC 9162 algorithm above, checked on a 7-leaf tree built from the definition."""
    entries = [bytes([i]) * 3 for i in range(7)]
    leaves = [_leaf_hash(e) for e in entries]

    def mth(hs):
        if len(hs) == 1:
            return hs[0]
        k = 1
        while k * 2 < len(hs):
            k *= 2
        return _node(mth(hs[:k]), mth(hs[k:]))

    def proof(m, hs):
        if len(hs) == 1:
            return []
        k = 1
        while k * 2 < len(hs):
            k *= 2
        return proof(m, hs[:k]) + [mth(hs[k:])] if m < k else proof(m - k, hs[k:]) + [mth(hs[:k])]

    for size in range(1, 8):
        for m in range(size):
            assert spec_root(m, size, leaves[m], proof(m, leaves[:size])) == mth(leaves[:size])
