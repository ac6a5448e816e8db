"""cards/card.cddl: real RFC 8610 CDDL that every card satisfies, that refuses what the
reader refuses, and that agrees with the closed schema in code (cards/schema.py)."""
import copy
import hashlib

import cbor2
import pytest

pytest.importorskip("cddl_verifier")

import conftest
from cardkit import make_card
from cards import cbor, schema
from cards.errors import CardFormatError
from cddlkit import cddl_errors

H = hashlib.sha256(b"x").hexdigest()
STARTS = {
    "random": None,
    "parent": {"kind": "parent", "card_sha256": H, "model_sha256": H, "sha256": H},
    "external": {"kind": "external", "model_sha256": H, "sha256": H},
}


@pytest.mark.parametrize("kind", [
    {},
    {"dp": None}, {"watermark_claim": None}, {"dp": None, "watermark_claim": None},
    {"dp": {"privacy_accounting": "not tight", "non_dp_records": 60, "note": "split"}},
    {"watermark_claim": {"schedule": "split"}},
    {"start": STARTS["parent"]}, {"start": STARTS["external"]},
    {"entry_point": None}, {"key_kind": "p256"},
    {"radioactive": {}}, {"radioactive": {"cosines": [-1, 0.0, 1, -0.5, 0.2, 0, 0, 0, 0, 0.1],
                                          "p_value": 0.4, "loss_difference": -0.3}},
], ids=lambda kind: ",".join(f"{k}={'set' if isinstance(v, dict) else v}"
                              for k, v in kind.items()) or "default")
def test_every_kind_of_card_satisfies_the_cddl(tmp_path, kind):
    before = len(conftest.SEALED)
    kit = make_card(tmp_path, **kind)
    assert cddl_errors(kit.card_bytes) == []
    assert len(conftest.SEALED) == before + 1  # the suite-wide hook checked it as sealed


def test_a_tpm_shaped_card_satisfies_the_cddl(tmp_path):
    """TPM evidence differs in its bytes and `extra`, not in shape: the schema admits it."""
    kit = make_card(tmp_path, mutate_evidence=lambda ev: {
        **ev, "backend": "tpm", "extra": {"ak_public": b"\x00\x01", "binding": {"nonce": b"n"}}})
    assert cddl_errors(kit.card_bytes) == []


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return make_card(tmp_path_factory.mktemp("cddl"))


def _envelope(kit, payload=None, protected=None, unprotected=None, tagged=True):
    original = cbor2.loads(kit.card_bytes).value
    parts = [original[0] if protected is None else cbor2.dumps(protected),
             {} if unprotected is None else unprotected,
             original[2] if payload is None else cbor.dumps(payload), original[3]]
    return cbor2.dumps(cbor2.CBORTag(18, parts) if tagged else parts)


@pytest.mark.parametrize("where", [(), ("claims",), ("claims", "start"),
                                   ("claims", "defenses", "dp"), ("claims", "model", "inputs", 0),
                                   ("evidence",), ("evidence", "event_log", 0)])
def test_an_extra_key_is_refused_where_it_stands(kit, where):
    payload = cbor2.loads(cbor2.dumps(kit.payload))
    target = payload
    for step in where:
        target = target[step]
    target["extra_key"] = 1
    errors = cddl_errors(_envelope(kit, payload))
    path = "/".join(["/2", *map(str, where), "extra_key"])
    # The error stands at the key, or at the choice (start's kinds) that holds it.
    assert errors and path.startswith(errors[0].split(":")[0]) and "extra_key" in errors[0]


@pytest.mark.parametrize("case, change, path", [
    ("kid header extra", {"protected": {1: -8, 4: bytes(32), 99: 1}}, "/0"),
    ("new alg on an old header", {"protected": {1: -19, 4: bytes(32)}}, "/0"),
    ("unknown alg", {"protected": {1: -35, 4: bytes(32)}}, "/0"),
    ("short kid", {"protected": {1: -8, 4: bytes(16)}}, "/0"),
    ("unprotected header", {"unprotected": {4: b"kid"}}, "/1"),
    ("receipts not bytes", {"unprotected": {394: ["r"]}}, "/1"),
    ("untagged", {"tagged": False}, ""),
])
def test_the_envelope_is_closed(kit, case, change, path):
    errors = cddl_errors(_envelope(kit, **change))
    assert errors and errors[0].split(":")[0].startswith(path), errors


# --- the CDDL and the code agree --------------------------------------------------------

def _wrong_type(value):
    """A value of another CBOR type than ``value``'s."""
    if isinstance(value, (str, type(None), bool)) or type(value) in (int, float):
        return [] if isinstance(value, str) else "x"
    if isinstance(value, bytes):
        return "x"
    return "x" if isinstance(value, (list, dict)) else None


def _edge_values(value) -> list:
    """Values at the edges of what a field of ``value``'s type may hold."""
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int):
        return [-2, -1, 0, 24]
    if isinstance(value, float):
        return [-0.5, 1.5, float("inf"), float("nan")]
    if isinstance(value, str):
        return ["", "A" * 64] if len(value) == 64 else [""]
    if isinstance(value, bytes):
        return [b"", bytes(31)]
    return [[]] if isinstance(value, list) and value else []


def _variants(node, path=()):
    """(path changed, description, mutate(payload)) for each key removed, each stray key added, each
    value given another type and each value at the edges of its type, at every map and
    array of the payload."""
    if isinstance(node, dict):
        yield path, f"{path} + stray key", lambda p, path=path: _at(p, path).__setitem__("stray", 1)
        items = [(key, value, (*path, key)) for key, value in node.items()]
        for key, _, here in items:
            yield path, f"{here} removed", lambda p, path=path, key=key: _at(p, path).pop(key)
    elif isinstance(node, list) and node:
        items = [(0, node[0], (*path, 0))]
    else:
        return
    for key, value, here in items:
        for new in [_wrong_type(value), *_edge_values(value)]:
            yield here, f"{here} = {new!r:.20}", lambda p, path=path, key=key, new=new: \
                _at(p, path).__setitem__(key, new)
        yield from _variants(value, here)


def _at(payload, path):
    for step in path:
        payload = payload[step]
    return payload


# The CDDL rule of each section: a change inside one is judged by that rule alone (the
# rest of the payload is unchanged and valid), which is much quicker than the whole.
RULES = {("claims",): "claims", ("evidence",): "evidence",
         ("claims", "model"): "model-claim", ("claims", "start"): "start-claim",
         ("claims", "dataset", "train"): "dataset-claim",
         ("claims", "dataset", "test"): "dataset-claim",
         ("claims", "training"): "training-claim", ("claims", "evaluation"): "evaluation-claim",
         ("claims", "defenses", "dp"): "dp-claim",
         ("claims", "defenses", "watermark"): "watermark-claim"}


def _smallest_rule(payload, changed):
    """(CBOR of the smallest section holding ``changed``, that section's rule)."""
    for length in range(len(changed), 0, -1):
        rule = RULES.get(tuple(changed[:length]))
        if rule is not None:
            return cbor.dumps(_at(payload, changed[:length])), rule
    return cbor.dumps(payload), "card-payload"


def _code_accepts(payload) -> bool:
    try:
        schema.validate_payload(payload)
    except CardFormatError:
        return False
    return True


def _cases(kit):
    payload = cbor2.loads(cbor2.dumps(kit.payload))
    # One of each free-form list is enough: the rest of a list repeats its first item.
    payload["claims"]["training"]["code"]["wrapper_files"] = dict(
        list(payload["claims"]["training"]["code"]["wrapper_files"].items())[:1])
    payload["evidence"]["event_log"] = payload["evidence"]["event_log"][:1]
    payload["evidence"]["event_log"][0]["data"] = {"any": [1]}  # free-form to both
    libraries = payload["claims"]["training"]["code"]["libraries"]
    payload["claims"]["training"]["code"]["libraries"] = dict(list(libraries.items())[:1])
    return payload


@pytest.mark.parametrize("variant, walk, least", [
    ({}, (), 300),
    ({"dp": None, "watermark_claim": None, "entry_point": None, "start": STARTS["external"]},
     (("claims", "start"), ("claims", "defenses"), ("claims", "training", "code")), 20),
], ids=["all sections", "optional sections null"])
def test_cddl_and_code_accept_and_refuse_the_same_payloads(tmp_path, variant, walk, least):
    """Each key removed, a stray key beside it, each value of another type or at the
    edge of its range: the CDDL and cards/schema.py must judge every such payload alike
    (a field known to one only, typed or bounded differently, shows up here). With the
    optional sections null, only the sections that differ are walked again."""
    base = _cases(make_card(tmp_path, **variant))
    assert _code_accepts(base) and cddl_errors(cbor.dumps(base), "card-payload") == []
    disagreements, tried = [], 0
    for changed, description, mutate in _variants(base):
        if walk and not any(description.startswith(str(prefix)[:-1]) for prefix in walk):
            continue
        payload = copy.deepcopy(base)
        mutate(payload)
        by_code = _code_accepts(payload)
        by_cddl = not cddl_errors(*_smallest_rule(payload, changed))
        tried += 1
        if by_code != by_cddl:
            disagreements.append(f"{description}: code {'accepts' if by_code else 'refuses'}, "
                                 f"CDDL {'accepts' if by_cddl else 'refuses'}")
    assert tried > least and not disagreements, "\n".join(disagreements)


@pytest.mark.parametrize("value, accepted", [
    (float("inf"), True), (float("nan"), False), (-0.5, False), (3, True)])
def test_cddl_and_code_agree_on_epsilon_bounds(kit, value, accepted):
    payload = _cases(kit)
    payload["claims"]["defenses"]["dp"]["epsilon"] = value
    assert _code_accepts(payload) is accepted
    assert (not cddl_errors(cbor.dumps(payload), "card-payload")) is accepted
