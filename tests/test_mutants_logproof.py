"""The pure log proof checks, each refusal with its own message.

Tree heads are signed here with the service key over payloads an attacker who stole
nothing could not make but a buggy or hostile log could: a negative or non-integer
size, a short root, extra fields. The signature verifies; the fields must not.
"""
import base64
import time

import pytest

from cards import cbor, cose, keys, merkle
from verifier import logproof
from verifier.logproof import LogProofError

LEAVES = [merkle.leaf_hash(bytes([i])) for i in range(6)]
ROOT = merkle.root_of(LEAVES)
KEY = keys.generate_private_key("ed25519")


def _signed(**changes):
    payload = {"type": logproof.TREE_HEAD_TYPE, "tree_size": 6, "root_hash": ROOT,
               "timestamp_ms": 1}
    payload.update(changes)
    payload = {k: v for k, v in payload.items() if v is not None}
    return cose.sign1(cbor.dumps(payload), KEY, kid=keys.key_id(KEY.public_key()))


def test_tree_head_fields_round_trip():
    before = int(time.time() * 1000)
    head = logproof.sign_tree_head(6, ROOT, KEY)
    after = int(time.time() * 1000)
    assert before <= head.timestamp_ms <= after
    got = logproof.verify_tree_head(head.signed, KEY.public_key())
    assert (got.tree_size, got.root_hash, got.timestamp_ms) == (6, ROOT, head.timestamp_ms)
    assert head.to_dict()["root_hash"] == ROOT.hex()


@pytest.mark.parametrize("changes, message", [
    ({"tree_size": -1}, "tree head tree_size: expected a non-negative integer, got -1"),
    ({"tree_size": "6"}, "tree head tree_size: expected a non-negative integer, got '6'"),
    ({"tree_size": True}, "tree head tree_size: expected a non-negative integer, got True"),
    ({"tree_size": 6.0}, "tree head tree_size: expected a non-negative integer, got 6.0"),
    ({"root_hash": ROOT[:31]}, "tree head root_hash: expected a 32-byte SHA-256 digest"),
    ({"root_hash": ROOT.hex()}, "tree head root_hash: expected a 32-byte SHA-256 digest"),
    ({"timestamp_ms": -5}, "timestamp_ms: expected a non-negative integer, got -5"),
    ({"type": "other/1"}, "tree head: payload is not a laminate-tree-head/1 statement"),
    ({"extra": 1}, "tree head: payload is not a laminate-tree-head/1 statement"),
    ({"timestamp_ms": None}, "tree head: payload is not a laminate-tree-head/1 statement"),
])
def test_signed_tree_head_with_a_bad_field(changes, message):
    with pytest.raises(LogProofError) as err:
        logproof.verify_tree_head(_signed(**changes), KEY.public_key())
    assert str(err.value) == message


def test_tree_head_that_is_not_a_map_or_not_cose():
    signed = cose.sign1(cbor.dumps([6]), KEY, kid=b"k")
    with pytest.raises(LogProofError, match="^tree head: payload is not a laminate-tree-head/1"):
        logproof.verify_tree_head(signed, KEY.public_key())
    with pytest.raises(LogProofError, match="^tree head: not a COSE_Sign1"):
        logproof.verify_tree_head(b"\x01", KEY.public_key())


@pytest.mark.parametrize("args, message", [
    ((LEAVES[0], 0, 6, "not a list", ROOT), "inclusion_proof: expected a list of digests"),
    ((LEAVES[0], 0, 6, [b"short"], ROOT), "inclusion_proof[0]: expected a 32-byte SHA-256 digest"),
    ((LEAVES[0][:31], 0, 6, [], ROOT), "leaf_hash: expected a 32-byte SHA-256 digest"),
    ((LEAVES[0], -1, 6, [], ROOT), "leaf_index: expected a non-negative integer, got -1"),
    ((LEAVES[0], True, 6, [], ROOT), "leaf_index: expected a non-negative integer, got True"),
    ((LEAVES[0], 0, "6", [], ROOT), "tree_size: expected a non-negative integer, got '6'"),
    ((LEAVES[0], 6, 6, [], ROOT), "leaf_index 6 is not below tree_size 6"),
    ((LEAVES[0], 0, 6, [], ROOT[:31]), "root_hash: expected a 32-byte SHA-256 digest"),
    ((LEAVES[0], 0, 6, [LEAVES[1]], ROOT),
     "inclusion proof of 1 nodes does not fit a tree of size 6"),
])
def test_inclusion_inputs_refused(args, message):
    with pytest.raises(LogProofError) as err:
        logproof.check_inclusion(*args)
    assert str(err.value) == message


def test_inclusion_with_no_proof_for_a_single_leaf():
    logproof.check_inclusion(LEAVES[0], 0, 1, None, LEAVES[0])
    assert logproof.root_from_inclusion(LEAVES[0], 0, 1, None) == LEAVES[0]


@pytest.mark.parametrize("args, message", [
    ((3, 2, [], ROOT, ROOT), "first tree size 3 is larger than second 2"),
    ((0, 2, [], ROOT, ROOT), "a consistency proof from the empty tree proves nothing"),
    ((-1, 2, [], ROOT, ROOT), "first: expected a non-negative integer, got -1"),
    ((2, "x", [], ROOT, ROOT), "second: expected a non-negative integer, got 'x'"),
    ((2, 2, [ROOT], ROOT, ROOT), "equal tree sizes need an empty consistency proof"),
    ((2, 2, [], ROOT, LEAVES[0]), "two different roots for the same tree size 2"),
    ((2, 6, [], ROOT[:5], ROOT), "first root: expected a 32-byte SHA-256 digest"),
    ((2, 6, [], ROOT, b""), "second root: expected a 32-byte SHA-256 digest"),
    ((2, 6, {"a": 1}, ROOT, ROOT), "consistency_proof: expected a list of digests"),
    ((2, 6, [], ROOT, ROOT), "consistency proof from size 2 to 6 does not verify: "
                             "the log was not extended append-only"),
])
def test_consistency_inputs_refused(args, message):
    with pytest.raises(LogProofError) as err:
        logproof.check_consistency(*args)
    assert str(err.value) == message


def test_equal_sizes_and_a_real_proof_pass():
    logproof.check_consistency(6, 6, None, ROOT, ROOT)
    proof = merkle.consistency_proof(LEAVES, 2, 6)
    logproof.check_consistency(2, 6, tuple(proof), merkle.root_of(LEAVES[:2]), ROOT)


@pytest.mark.parametrize("name", ["", "log key", "log+key", "tab\tkey", "x" * 257])
def test_note_key_names_that_cannot_be_named_in_a_note(name):
    """A signature line is '— <name> <base64>' and a verifier key '<name>+<hash>+<key>':
    a space or '+' in the name would make either mean something else."""
    with pytest.raises(LogProofError, match=r"^note key name .*: must be non-empty, without"):
        logproof.verifier_key(name, KEY.public_key())
    with pytest.raises(LogProofError, match=r"^note key name "):
        logproof.sign_checkpoint("example.test/log", 6, ROOT, name, KEY)


def test_the_longest_note_key_name_is_accepted():
    assert logproof.verifier_key("x" * 256, KEY.public_key()).startswith("x" * 256 + "+")


@pytest.mark.parametrize("origin", ["", "two\nlines"])
def test_checkpoint_origin_must_be_one_line(origin):
    with pytest.raises(LogProofError, match=r"^checkpoint origin .*: must be one non-empty line$"):
        logproof.checkpoint_body(origin, 6, ROOT)
    with pytest.raises(LogProofError, match=r"^checkpoint origin "):
        logproof.sign_checkpoint(origin, 6, ROOT, "log", KEY)


def test_a_note_is_bounded_and_text():
    """A checkpoint comes from the network: past 65,536 characters (NOTE_MAX) it is
    refused whole, before anything splits or decodes it."""
    note = logproof.sign_checkpoint("example.test/log", 6, ROOT, "log", KEY)
    assert logproof.split_note(note)[0].startswith("example.test/log\n6\n")
    longest = note.replace("example.test/log", "e" * (65_536 - len(note) + 16))
    assert len(longest) == 65_536 and logproof.split_note(longest)[1][0][0] == "log"
    for bad in (longest + "\n", note.encode()):
        with pytest.raises(LogProofError,
                           match=r"^checkpoint: not a note of at most 65536 characters$"):
            logproof.split_note(bad)


def test_signature_lines_need_the_dash_and_a_key_hash_with_a_signature():
    note = logproof.sign_checkpoint("example.test/log", 6, ROOT, "log", KEY)
    body, sig_line = note.rsplit("\n\n", 1)
    no_dash = sig_line.removeprefix("\u2014 ")
    short = "\u2014 log " + base64.b64encode(b"1234").decode() + "\n"
    for line in (no_dash, short):
        with pytest.raises(LogProofError, match=r"^checkpoint: malformed signature line"):
            logproof.split_note(f"{body}\n\n{line}")


def test_a_cosignature_without_a_time_given_says_now():
    witness = keys.generate_private_key("ed25519")
    note = logproof.sign_checkpoint("example.test/log", 6, ROOT, "log", KEY)
    before = int(time.time())
    cosigned = logproof.cosign_checkpoint(note, "witness", witness)
    after = int(time.time())
    blob = logproof.split_note(cosigned)[1][-1][1]
    assert before <= int.from_bytes(blob[4:12], "big") <= after
    assert logproof.check_cosignatures(cosigned, {"witness": witness.public_key()}, 1) == \
        ["witness"]


def test_a_cosignature_time_is_all_eight_bytes():
    """The cosigned time is a 64-bit big-endian integer: its high byte is signed too."""
    witness = keys.generate_private_key("ed25519")
    note = logproof.sign_checkpoint("example.test/log", 6, ROOT, "log", KEY)
    cosigned = logproof.cosign_checkpoint(note, "witness", witness, timestamp=2**63 + 5)
    assert logproof.split_note(cosigned)[1][-1][1][4:12] == (2**63 + 5).to_bytes(8, "big")
    assert logproof.check_cosignatures(cosigned, {"witness": witness.public_key()}, 1) == \
        ["witness"]


def test_the_shortest_signature_line_and_the_longest_tree_size():
    """A signature line needs at least a 4-byte key hash and one byte; a tree size at most
    20 digits (2**64 - 1 has 20)."""
    note = logproof.sign_checkpoint("example.test/log", 6, ROOT, "log", KEY)
    body = note.rsplit("\n\n", 1)[0]
    five = "\u2014 log " + base64.b64encode(b"12345").decode() + "\n"
    assert logproof.split_note(f"{body}\n\n{five}")[1] == [("log", b"12345")]
    root_line = base64.b64encode(ROOT).decode()
    biggest = logproof.parse_checkpoint(f"o\n{2**64 - 1}\n{root_line}\n")
    assert biggest.tree_size == 2**64 - 1
    with pytest.raises(LogProofError, match=r"^checkpoint tree_size '1{21}': not a decimal"):
        logproof.parse_checkpoint(f"o\n{'1' * 21}\n{root_line}\n")


def test_a_foreign_origin_is_quoted_in_80_characters():
    note = logproof.sign_checkpoint("o" * 500, 6, ROOT, "log", KEY)
    with pytest.raises(LogProofError) as info:
        logproof.verify_checkpoint(note, "example.test/log", "log", KEY.public_key())
    assert str(info.value) == f"checkpoint origin {'o' * 80!r} is not 'example.test/log'"


def test_a_malformed_signature_line_is_quoted_in_80_characters():
    note = logproof.sign_checkpoint("example.test/log", 6, ROOT, "log", KEY)
    body = note.rsplit("\n\n", 1)[0]
    line = "x" * 500
    with pytest.raises(LogProofError) as info:
        logproof.split_note(f"{body}\n\n{line}\n")
    assert str(info.value) == f"checkpoint: malformed signature line {'x' * 80!r}"


def test_an_overlong_tree_size_is_quoted_in_30_characters():
    root_line = base64.b64encode(ROOT).decode()
    with pytest.raises(LogProofError) as info:
        logproof.parse_checkpoint(f"o\n{'1' * 500}\n{root_line}\n")
    assert str(info.value) == f"checkpoint tree_size {'1' * 30!r}: not a decimal integer"


@pytest.mark.parametrize("text, message", [
    ("witness-a", "verifier key 'witness-a': expected <name>+<key hash>+<key>"),
    ("witness-a+0011aabb", "verifier key 'witness-a+0011aabb': expected <name>+<key hash>+<key>"),
    (None, "verifier key 'None': expected <name>+<key hash>+<key>"),
    ("witness-a+0011aabb+not base64!", "verifier key witness-a: not an Ed25519 (type 1) or "
     "cosignature/v1 (type 4) key"),
])
def test_verifier_key_of_the_wrong_shape(text, message):
    with pytest.raises(LogProofError) as err:
        logproof.parse_verifier_key(text)
    assert str(err.value) == message


def test_verifier_key_of_another_signature_type_is_refused_even_with_its_hash():
    """Type 2 with a key hash computed for type 2: the hash matches, the type is what is
    refused (only Ed25519 notes and cosignature/v1 are verified here)."""
    from cryptography.hazmat.primitives.asymmetric import ed25519
    text = logproof.verifier_key("witness-a", ed25519.Ed25519PrivateKey.generate().public_key(),
                                 sig_type=2)
    with pytest.raises(LogProofError) as err:
        logproof.parse_verifier_key(text)
    assert str(err.value) == \
        "verifier key witness-a: not an Ed25519 (type 1) or cosignature/v1 (type 4) key"


def test_verifier_key_with_the_hash_of_another_key_is_refused():
    from cryptography.hazmat.primitives.asymmetric import ed25519
    def parts():  # the base64 key may hold '+' itself
        key = ed25519.Ed25519PrivateKey.generate().public_key()
        return logproof.verifier_key("witness-a", key).split("+", 2)
    name, _, b64 = parts()
    other_hash = parts()[1]
    with pytest.raises(LogProofError) as err:
        logproof.parse_verifier_key(f"{name}+{other_hash}+{b64}")
    assert str(err.value) == f"verifier key witness-a: key hash {other_hash} does not match its key"


def _witnessed_setup():
    from cryptography.hazmat.primitives.asymmetric import ed25519
    log = ed25519.Ed25519PrivateKey.generate()
    note = logproof.sign_checkpoint("example.org/log", 3, bytes(32), "example.org/log", log)
    return log, note


def test_checkpoint_pinned_to_a_log_key_that_is_not_a_note_key_is_refused():
    """The log's own key given as a cosignature/v1 key: the note verifies under it, yet a
    checkpoint is only trusted under an Ed25519 note key (type 1)."""
    log, note = _witnessed_setup()
    as_cosigner = logproof.parse_verifier_key(
        logproof.verifier_key("example.org/log", log.public_key(), logproof.SIG_COSIGN))
    with pytest.raises(LogProofError) as err:
        logproof.check_witnessed(note, as_cosigner, [], 0)
    assert str(err.value) == "log key example.org/log: must be an Ed25519 note key (type 1)"
    as_log = logproof.parse_verifier_key(logproof.verifier_key("example.org/log", log.public_key()))
    assert logproof.check_witnessed(note, as_log, [], 0).tree_size == 3


def test_more_cosignatures_required_than_witness_keys_given_is_refused():
    log, note = _witnessed_setup()
    as_log = logproof.parse_verifier_key(logproof.verifier_key("example.org/log", log.public_key()))
    with pytest.raises(LogProofError) as err:
        logproof.check_witnessed(note, as_log, [], 1)
    assert str(err.value) == "witness_cosignatures: 1 required but only 0 witness keys given"


def test_witness_key_that_is_not_a_cosignature_key_is_refused():
    from cryptography.hazmat.primitives.asymmetric import ed25519
    log, note = _witnessed_setup()
    as_log = logproof.parse_verifier_key(logproof.verifier_key("example.org/log", log.public_key()))
    witness = logproof.parse_verifier_key(
        logproof.verifier_key("witness-a", ed25519.Ed25519PrivateKey.generate().public_key()))
    with pytest.raises(LogProofError) as err:
        logproof.check_witnessed(note, as_log, [witness], 0)
    assert str(err.value) == "witness key witness-a: must be a cosignature/v1 key (type 4)"


def test_a_cosignature_repeated_counts_once():
    """One witness's line twice (at two times) is one cosignature, not two of the k."""
    from cryptography.hazmat.primitives.asymmetric import ed25519
    _, note = _witnessed_setup()
    w1, w2 = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    twice = logproof.cosign_checkpoint(logproof.cosign_checkpoint(note, "w1", w1, 1), "w1", w1, 2)
    pinned = {"w1": w1.public_key(), "w2": w2.public_key()}
    assert logproof.check_cosignatures(twice, pinned, 1) == ["w1"]
    with pytest.raises(LogProofError) as err:
        logproof.check_cosignatures(twice, pinned, 2)
    assert str(err.value) == ("witness_cosignatures: 1 valid witness cosignatures, 2 required "
                              "(w2: no cosignature)")


def test_merging_skips_copies_of_another_checkpoint():
    from cryptography.hazmat.primitives.asymmetric import ed25519
    log, note = _witnessed_setup()
    w1 = ed25519.Ed25519PrivateKey.generate()
    other = logproof.sign_checkpoint("example.org/log", 4, bytes(32), "example.org/log", log)
    assert logproof.merge_cosignatures(note, [logproof.cosign_checkpoint(other, "w1", w1, 1)]) \
        == note
    same = logproof.cosign_checkpoint(note, "w1", w1, 1)
    assert logproof.merge_cosignatures(note, [same]) == same


def test_a_cosignature_by_another_key_is_named_as_such():
    """Same witness name, another key: refused on the key hash, before any signature."""
    from cryptography.hazmat.primitives.asymmetric import ed25519
    _, note = _witnessed_setup()
    pinned, impostor = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(LogProofError) as err:
        logproof.check_cosignatures(logproof.cosign_checkpoint(note, "w1", impostor, 1),
                                    {"w1": pinned.public_key()}, 1)
    assert str(err.value) == ("witness_cosignatures: 0 valid witness cosignatures, 1 required "
                              "(w1: a cosignature by another key than the pinned one)")


def test_verifier_key_text_is_bounded_and_quoted_short():
    """Key text of 1024 characters or more is refused before it is parsed (even a valid
    key padded with spaces), and the message quotes its first 80 characters only."""
    from cryptography.hazmat.primitives.asymmetric import ed25519
    key = logproof.verifier_key("witness-a", ed25519.Ed25519PrivateKey.generate().public_key())
    assert logproof.parse_verifier_key(key.ljust(1023)).name == "witness-a"
    with pytest.raises(LogProofError) as err:
        logproof.parse_verifier_key(key.ljust(1024))
    assert str(err.value) == \
        f"verifier key {key.ljust(1024)[:80]!r}: expected <name>+<key hash>+<key>"
