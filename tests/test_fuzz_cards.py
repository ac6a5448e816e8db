"""Fuzzing the byte formats: cards, receipts, tree heads (hostile bytes end in
LaminateError or a contraindicated result, never another exception, never a hang)."""
import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

import cardkit
from cards import keys, merkle
from cards.card import open_card
from cards.errors import LaminateError
from fuzzing import FUZZ, FUZZ_SLOW, cbor_values, mutated
from verifier import logproof, receipts
from verifier.appraise import appraise
from verifier.policy import Policy

KEY = keys.generate_private_key("ed25519")
STATEMENTS = [f"statement {i}".encode() for i in range(7)]
HASHES = [merkle.leaf_hash(s) for s in STATEMENTS]
RECEIPT = receipts.make_receipt(KEY, 7, 5, merkle.inclusion_proof(HASHES, 5), merkle.root_of(HASHES))
HEAD = logproof.sign_tree_head(7, merkle.root_of(HASHES), KEY).signed


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    kit = cardkit.make_card(tmp_path_factory.mktemp("fuzz-kit"))
    return kit, Policy.load(kit.policy_path)


def test_mutated_cards_are_refused_cleanly(kit):
    card, policy = kit

    @FUZZ_SLOW
    @given(mutated(card.card_bytes))
    def check(data):
        try:
            open_card(data)
        except LaminateError:
            pass
        result = appraise(data, policy=policy)
        if data != card.card_bytes:
            assert result.status in ("contraindicated", "none", "affirming", "warning")
    check()


@FUZZ_SLOW
@given(st.binary(max_size=300) | cbor_values.map(lambda v: cbor2.dumps(v)))
def test_arbitrary_bytes_are_not_a_card(data):
    with pytest.raises(LaminateError):
        open_card(data)


@FUZZ
@given(mutated(RECEIPT) | cbor_values.map(lambda v: cbor2.dumps(cbor2.CBORTag(18, v))))
def test_receipts_verify_or_fail_with_a_log_proof_error(data):
    try:
        check = receipts.verify_receipt(data, STATEMENTS[5], KEY.public_key())
    except LaminateError:
        return
    assert (check.tree_size, check.leaf_index) == (7, 5)   # only the genuine position


@FUZZ
@given(mutated(HEAD) | cbor_values.map(cbor2.dumps))
def test_tree_heads_verify_or_fail_cleanly(data):
    try:
        head = logproof.verify_tree_head(data, KEY.public_key())
    except LaminateError:
        return
    assert head.tree_size == 7 and head.root_hash == merkle.root_of(HASHES)
