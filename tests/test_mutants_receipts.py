"""COSE Receipts broken one part at a time: each refusal names the part at fault.

The receipts below are signed by the service key over the root their path leads to, so
the signature verifies and only the structural check under test can refuse them.
"""
import cbor2
import pytest

from cards import cbor, cose, keys, merkle
from verifier import receipts
from verifier.logproof import LogProofError

STATEMENTS = [f"statement {i}".encode() for i in range(6)]
LEAVES = [merkle.leaf_hash(s) for s in STATEMENTS]
SIZE, INDEX = 6, 4
PATH = merkle.inclusion_proof(LEAVES, INDEX)
ROOT = merkle.root_of(LEAVES)
KEY = keys.generate_private_key("ed25519")
KID = keys.key_id(KEY.public_key())
ALG = cose.alg_for_key(KEY)


def _protected(**changes):
    header = {cose.HDR_ALG: ALG, receipts.HDR_VDS: 1, cose.HDR_KID: KID,
              receipts.HDR_POSITION: [SIZE, INDEX]}
    names = {"alg": cose.HDR_ALG, "vds": receipts.HDR_VDS, "kid": cose.HDR_KID,
             "position": receipts.HDR_POSITION}
    for name, value in changes.items():
        if value is None:
            header.pop(names[name])
        else:
            header[names[name]] = value
    return cbor.dumps(header)


def _proof(size=SIZE, index=INDEX, path=PATH):
    return cbor.dumps([size, index, path])


def _body(protected=None, unprotected=None, payload=None, signature=None):
    protected = _protected() if protected is None else protected
    unprotected = {receipts.HDR_VDP: {-1: [_proof()]}} if unprotected is None else unprotected
    if signature is None:  # a good signature over what the path leads to
        signature = cose.sign_bytes(KEY, ALG, cose.sig_structure(protected, ROOT))
    return [protected, unprotected, payload, signature]


def _receipt(**parts) -> bytes:
    return cbor.dumps(cbor2.CBORTag(cose.TAG_SIGN1, _body(**parts)))


def _refused(data, message):
    with pytest.raises(LogProofError, match=message):
        receipts.verify_receipt(data, STATEMENTS[INDEX], KEY.public_key())


def test_the_untouched_receipt_verifies_and_says_where():
    assert receipts.make_receipt(KEY, SIZE, INDEX, PATH, ROOT) == _receipt()
    check = receipts.verify_receipt(_receipt(), STATEMENTS[INDEX], KEY.public_key())
    assert (check.tree_size, check.leaf_index, check.root_hash) == (SIZE, INDEX, ROOT)
    parsed = receipts.parse_receipt(_receipt())
    assert (parsed.alg, parsed.kid, parsed.path) == (ALG, KID, PATH)


def test_a_receipt_without_kid_verifies_under_the_key_given():
    """The kid is optional: without one, the signature alone decides."""
    data = _receipt(protected=_protected(kid=None))
    assert receipts.parse_receipt(data).kid is None
    assert receipts.verify_receipt(data, STATEMENTS[INDEX], KEY.public_key()).leaf_index == INDEX
    stranger = keys.generate_private_key("ed25519").public_key()
    with pytest.raises(LogProofError, match=r"^receipt: the service signature does not cover"):
        receipts.verify_receipt(data, STATEMENTS[INDEX], stranger)


def test_a_signature_over_another_root_is_refused():
    other = cose.sign_bytes(KEY, ALG, cose.sig_structure(_protected(), bytes(32)))
    _refused(_receipt(signature=other), r"^receipt: the service signature does not cover")


@pytest.mark.parametrize("data, message", [
    (b"\xff", r"^receipt: malformed CBOR"),
    (cbor.dumps(_body()), r"^receipt: not a tagged COSE_Sign1 \(tag 18\)$"),
    (cbor.dumps(cbor2.CBORTag(17, _body())), r"^receipt: not a tagged COSE_Sign1 \(tag 18\)$"),
    (cbor.dumps(cbor2.CBORTag(18, _body()[:3])), r"^receipt: COSE_Sign1 must be an array of 4"),
    (cbor.dumps(cbor2.CBORTag(18, _body() + [None])),
     r"^receipt: COSE_Sign1 must be an array of 4"),
    (cbor.dumps(cbor2.CBORTag(18, {1: 2, 3: 4, 5: 6, 7: 8})),
     r"^receipt: COSE_Sign1 must be an array of 4"),
], ids=["not-cbor", "untagged", "tag-17", "three-items", "five-items", "a-map"])
def test_envelope(data, message):
    _refused(data, message)


def test_protected_header_not_a_byte_string():
    body = _body()
    body[0] = cbor2.loads(body[0])  # the map itself, not its serialization
    _refused(cbor.dumps(cbor2.CBORTag(18, body)), r"^receipt: malformed COSE_Sign1 headers")


def test_signature_not_a_byte_string():
    _refused(_receipt(signature="sig"), r"^receipt: malformed COSE_Sign1 headers")


def test_unprotected_header_not_a_map():
    _refused(_receipt(unprotected=[1]), r"^receipt: malformed COSE_Sign1 headers")


def test_protected_header_not_cbor():
    _refused(_receipt(protected=b"\xff"), r"^receipt.protected: malformed CBOR")


def test_protected_header_not_a_map():
    _refused(_receipt(protected=cbor.dumps([1, 2])),
             r"^receipt.protected: expected a serialized map$")


@pytest.mark.parametrize("vds", [2, None, "1"])
def test_vds_other_than_rfc9162(vds):
    _refused(_receipt(protected=_protected(vds=vds)), r"^receipt.protected.vds: expected 1")


@pytest.mark.parametrize("alg", ["-8", 1, -257, None])
def test_unsupported_algorithm(alg):
    _refused(_receipt(protected=_protected(alg=alg)), r"^receipt.protected.alg: unsupported")


def test_kid_not_a_byte_string():
    _refused(_receipt(protected=_protected(kid=KID.hex())),
             r"^receipt.protected.kid: expected a byte string$")


def test_kid_of_another_key():
    other = keys.key_id(keys.generate_private_key("ed25519").public_key())
    _refused(_receipt(protected=_protected(kid=other)),
             r"^receipt.protected.kid: signed by a different key")


def test_unprotected_repeats_a_protected_header():
    unprotected = {receipts.HDR_VDP: {-1: [_proof()]}, cose.HDR_KID: KID}
    _refused(_receipt(unprotected=unprotected), r"^receipt.unprotected: repeats a protected")


@pytest.mark.parametrize("vdp", [[_proof()], {-1: [_proof()], -2: [_proof()]}, {-2: [_proof()]}],
                         ids=["array", "consistency-too", "no-inclusion"])
def test_vdp_other_than_one_inclusion_map(vdp):
    _refused(_receipt(unprotected={receipts.HDR_VDP: vdp}),
             r"^receipt.unprotected.vdp: expected a map holding only inclusion")


def test_vdp_missing():
    _refused(_receipt(unprotected={}), r"^receipt.unprotected.vdp: expected a map")


@pytest.mark.parametrize("proofs", [_proof(), [], [_proof(), _proof()], [[SIZE, INDEX, PATH]]],
                         ids=["bare", "none", "two", "not-bytes"])
def test_not_exactly_one_inclusion_proof(proofs):
    _refused(_receipt(unprotected={receipts.HDR_VDP: {-1: proofs}}),
             r"^receipt.unprotected.vdp.-1: expected exactly one inclusion proof")


@pytest.mark.parametrize("proof, message", [
    (b"\xff", r"^receipt inclusion proof: malformed CBOR"),
    (cbor.dumps({1: 2}), r"^receipt inclusion proof: expected \[tree-size, leaf-index"),
    (cbor.dumps([SIZE, INDEX]), r"^receipt inclusion proof: expected \[tree-size, leaf-index"),
    (cbor.dumps([SIZE, INDEX, PATH, 0]),
     r"^receipt inclusion proof: expected \[tree-size, leaf-index"),
    (cbor.dumps([SIZE, INDEX, PATH[0]]),
     r"^receipt inclusion proof: expected \[tree-size, leaf-index"),
    (cbor.dumps([SIZE, INDEX, []]), r"^receipt inclusion proof: the inclusion path must not"),
], ids=["not-cbor", "a-map", "two-items", "four-items", "path-not-array", "empty-path"])
def test_inclusion_proof_shape(proof, message):
    _refused(_receipt(unprotected={receipts.HDR_VDP: {-1: [proof]}}), message)


@pytest.mark.parametrize("position", [[SIZE, INDEX - 1], [SIZE + 1, INDEX], None],
                         ids=["other-leaf", "other-size", "missing"])
def test_signed_position_differs_from_the_proof(position):
    _refused(_receipt(protected=_protected(position=position)),
             r"^receipt.protected.position: the signed position does not match")


def test_card_without_receipts_under_a_log_key_says_how_to_add_one():
    """With a log key but no receipt the check fails on the missing receipt itself (and
    says how to add one), not on receipts that are all of other logs."""
    from types import SimpleNamespace
    card = SimpleNamespace(sign1=SimpleNamespace(unprotected={}))
    check = receipts.check_embedded(card, KEY.public_key())
    assert (check.status, check.field, check.reason) == (
        "contraindicated", "card.unprotected.394", f"no receipt embedded, so nothing shows the "
        f"card is in log {KID.hex()[:16]}... (add one with `laminate log attach`)")
    assert receipts.check_embedded(card, None) is None


def _card_with(receipt_list):
    from types import SimpleNamespace
    return SimpleNamespace(sign1=SimpleNamespace(
        unprotected={cose.HDR_RECEIPTS: receipt_list}, protected_bytes=cbor.dumps({}),
        payload=b"card", signature=b"sig"))


def test_card_whose_receipts_are_all_of_other_logs_is_refused():
    other = keys.generate_private_key("ed25519")
    foreign = receipts.make_receipt(other, SIZE, INDEX, PATH, ROOT)
    check = receipts.check_embedded(_card_with([foreign]), KEY.public_key())
    assert (check.status, check.field, check.reason) == (
        "contraindicated", "card.unprotected.394",
        f"none of the 1 receipt(s) is signed by log key {KID.hex()[:16]}...")


def test_card_with_a_broken_receipt_reports_that_receipt():
    """A receipt of this log that does not verify is reported with its index and why,
    rather than as 'none is signed by this key'."""
    check = receipts.check_embedded(_card_with([b"\x00"]), KEY.public_key())
    assert (check.status, check.field) == ("contraindicated", "card.unprotected.394[0]")
    with pytest.raises(LogProofError) as err:
        receipts.parse_receipt(b"\x00")
    assert check.reason == str(err.value)


def test_card_with_a_receipt_of_this_log_says_where_it_is():
    """After a receipt of another log, one of this log proving the card's statement: the
    check affirms and names the leaf, the tree size and 16 hex digits of the root."""
    from cards.card import statement_of
    card = _card_with([])
    leaves = LEAVES[:3] + [merkle.leaf_hash(statement_of(card))]
    root = merkle.root_of(leaves)
    ours = receipts.make_receipt(KEY, 4, 3, merkle.inclusion_proof(leaves, 3), root)
    foreign = receipts.make_receipt(keys.generate_private_key("ed25519"), 4, 3,
                                    merkle.inclusion_proof(leaves, 3), root)
    card.sign1.unprotected[cose.HDR_RECEIPTS] = [foreign, ours]
    check = receipts.check_embedded(card, KEY.public_key())
    assert (check.status, check.field, check.reason) == (
        "affirming", "card.unprotected.394[1]", f"the card is leaf 3 of log "
        f"{KID.hex()[:16]}...'s tree of size 4, root {root.hex()[:16]}..., signed by the log key")
