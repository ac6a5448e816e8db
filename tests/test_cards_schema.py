"""The closed card schema and sealing/opening: every malformed card is refused with a
one-line reason naming the field; tampering is caught by the signature check."""
import copy
import hashlib
import random

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from cards import card, cbor, cose, keys, schema
from cards.errors import CardFormatError, LaminateError


def _hex(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def sample_claims(*, dp=True, watermark=True) -> dict:
    """A valid FORMAT.md claims section built by hand (no prover needed)."""
    config = {"model": "mlp", "epochs": 3, "lr": 0.1, "hidden": [64, 32], "seed": 7,
              "dp": {"enabled": dp}, "note": None}
    dataset = {"name": "digits", "records": 10,
               "schema": {"features": [64], "dtype": "float32", "classes": 3},
               "label_histogram": [3, 3, 4], "merkle_root": _hex("root")}
    return copy.deepcopy({
        "model": {"name": "digits-mlp", "format": "onnx", "sha256": _hex("model"),
                  "size": 1234, "parameters": 4321, "opset": 18,
                  "inputs": [{"name": "x", "shape": ["batch", 64], "dtype": "float32"}],
                  "outputs": [{"name": "logits", "shape": ["batch", 3], "dtype": "float32"}]},
        "dataset": {"train": dataset, "test": dict(copy.deepcopy(dataset), name="digits-test")},
        "start": {"kind": "random", "seed": _hex("seed"), "init": "reset_parameters",
                  "sha256": _hex("weights")},
        "training": {"config": config,
                     "config_sha256": hashlib.sha256(cbor.dumps(config)).hexdigest(),
                     "code": {"wrapper_sha256": _hex("wrapper"),
                              "wrapper_files": {"cards/card.py": _hex("a"),
                                                "attest/x.py": _hex("b")},
                              "entry_point": {"path": "train.py", "sha256": _hex("entry")},
                              "libraries": {"opacus": {"version": "1.6.0",
                                                       "record_sha256": _hex("record"),
                                                       "modified": []}}},
                     "framework": {"torch": "2.13.0", "laminate": "0.1.0"}},
        "defenses": {
            "dp": {"mechanism": "dp-sgd", "noise_multiplier": 1.1, "max_grad_norm": 1.0,
                   "sample_rate": 0.01, "steps": 300, "delta": 1e-5, "accountant": "rdp",
                   "epsilon": 2.9, "privacy_accounting": "tight", "non_dp_records": 0,
                   "note": ""} if dp else None,
            "watermark": {"scheme": "laminate-trigger-v1", "commitment": _hex("commit"),
                          "trigger_count": 100, "classes": 3, "schedule": "joint"}
            if watermark else None},
        "evaluation": {"accuracy": 0.95, "per_class_accuracy": [0.9, 1.0, 0.95],
                       "test_records": 10, "watermark_accuracy": 0.99 if watermark else None},
    })


def sample_evidence(claims: dict, backend: str = "sim") -> dict:
    log = [schema.make_event(spec.type, copy.deepcopy(spec.data(claims)))
           for spec in schema.expected_events(claims)]
    return {"backend": backend, "quote": b"\xa1quote", "signature": bytes(64),
            "cert_chain": [b"\x30ak-cert", b"\x30root-cert"], "event_log": log, "extra": {}}


def sample_payload(**kwargs) -> dict:
    claims = sample_claims(**kwargs)
    return {"schema_version": schema.SCHEMA_VERSION, "claims": claims,
            "evidence": sample_evidence(claims)}


def _leaves(value, path=()):
    """Every (path, value) of the nested maps, descending into maps only."""
    if isinstance(value, dict) and value:
        for key, element in value.items():
            yield from _leaves(element, path + (key,))
    else:
        yield path, value


def _get_parent(root, path):
    for key in path[:-1]:
        root = root[key]
    return root


def _dotted(path):
    """Fields joined by dots; a library name (a free-form key) in brackets."""
    out = []
    for i, part in enumerate(path):
        out.append(f"[{part!r}]" if i and path[i - 1] == "libraries" else
                   ("." if out else "") + part)
    return "".join(out)


CLOSED_FREE_FORM = ("config", "wrapper_files", "framework", "extra")


# --- schema --------------------------------------------------------------------------

@pytest.mark.parametrize("dp,watermark", [(True, True), (False, False), (True, False)])
def test_valid_payloads_pass(dp, watermark):
    schema.validate_payload(sample_payload(dp=dp, watermark=watermark))


def test_every_closed_field_is_required_and_named_when_missing():
    base = sample_payload()
    checked = 0
    for path, _ in _leaves(base):
        if any(part in CLOSED_FREE_FORM for part in path[:-1]) or path[-1] in ("data",):
            continue
        payload = copy.deepcopy(base)
        del _get_parent(payload, path)[path[-1]]
        with pytest.raises(CardFormatError) as info:
            schema.validate_payload(payload)
        assert str(info.value) == f"{_dotted(path)}: missing", path
        checked += 1
    assert checked > 50


def test_wrong_types_are_named():
    base = sample_payload()
    checked = 0
    for path, value in _leaves(base):
        if any(part in CLOSED_FREE_FORM for part in path[:-1]) or path[0] == "evidence" \
                and path[1] == "event_log":
            continue
        payload = copy.deepcopy(base)
        wrong = ["not", "this"] if not isinstance(value, list) else "a string"
        _get_parent(payload, path)[path[-1]] = wrong
        with pytest.raises(CardFormatError) as info:
            schema.validate_payload(payload)
        assert info.value.field == _dotted(path), (path, str(info.value))
        checked += 1
    assert checked > 50


@pytest.mark.parametrize("path,value,message", [
    (("claims", "evaluation", "accuracy"), "0.9", "expected a number, got str"),
    (("claims", "evaluation", "accuracy"), 1.5, "between 0.0 and 1.0"),
    (("claims", "evaluation", "accuracy"), float("nan"), "finite"),
    (("claims", "evaluation", "accuracy"), True, "expected a number, got bool"),
    (("claims", "model", "sha256"), "ABCD" * 16, "64 lowercase hex"),
    (("claims", "model", "sha256"), "ab" * 31, "64 lowercase hex"),
    (("claims", "model", "format"), "tflite", "expected one of 'onnx'"),
    (("claims", "model", "size"), -1, ">= 0"),
    (("claims", "model", "size"), 1.0, "expected an integer, got float"),
    (("claims", "defenses", "dp", "accountant"), "gdp", "expected one of 'rdp'"),
    (("claims", "defenses", "dp", "privacy_accounting"), "loose", "'tight', 'not tight'"),
    (("claims", "defenses", "watermark", "schedule"), "later", "'joint', 'split'"),
    (("claims", "defenses", "dp"), {}, "missing"),
    (("claims", "training", "config", "x"), b"bytes", "plain data"),
    (("claims", "training", "config", "x"), {1: 2}, "keys must be strings"),
    (("evidence", "backend"), "sgx", "expected one of 'sim', 'tpm'"),
    (("evidence", "quote"), "text", "expected a byte string, got str"),
    (("evidence", "cert_chain"), [], "at least 1"),
    (("evidence", "event_log"), [], "at least 1"),
    (("schema_version",), 2, "unsupported schema version 2"),
    (("schema_version",), "1", "unsupported schema version '1'"),
])
def test_specific_errors(path, value, message):
    payload = sample_payload()
    _get_parent(payload, path)[path[-1]] = value
    with pytest.raises(CardFormatError, match=message.replace("(", r"\(")) as info:
        schema.validate_payload(payload)
    assert "\n" not in str(info.value)


def test_event_fields_are_named_with_their_index():
    payload = sample_payload()
    payload["evidence"]["event_log"][2]["digest"] = b"short"
    with pytest.raises(CardFormatError, match=r"^evidence\.event_log\[2\]\.digest: expected 32"):
        schema.validate_payload(payload)
    payload = sample_payload()
    payload["evidence"]["event_log"][0]["register"] = 24
    with pytest.raises(CardFormatError, match=r"event_log\[0\]\.register: must be between 0 and 23"):
        schema.validate_payload(payload)


@pytest.mark.parametrize("where", [(), ("claims",), ("claims", "model"),
                                   ("claims", "training", "config"), ("evidence", "extra")])
def test_unknown_fields_and_critical_extensions_are_refused(where):
    payload = sample_payload()
    target = _get_parent(payload, where + ("x",))
    if where[-1:] not in (("config",), ("extra",)):
        target["surprise"] = 1
        with pytest.raises(CardFormatError, match="surprise: unknown field"):
            schema.validate_payload(payload)
        del target["surprise"]
    target["crit.new_rule"] = True
    with pytest.raises(CardFormatError, match="crit.new_rule.*unknown critical extension"):
        schema.validate_payload(payload)


def test_critical_extension_inside_event_data_is_refused():
    payload = sample_payload()
    payload["evidence"]["event_log"][0]["data"]["crit.x"] = 1
    with pytest.raises(CardFormatError, match=r"event_log\[0\]\.data.*critical"):
        schema.validate_payload(payload)


@pytest.mark.parametrize("hidden,field", [
    (cbor2.CBORTag(1234, {"crit.x": 1}), "evidence.extra['vendor']['crit.x']"),
    ({cbor2.frozendict({"crit.x": 1}): 1}, "evidence.extra['vendor'][frozendict({'crit.x': 1})]"),
    ({(cbor2.frozendict({"crit.x": 1}),): 1}, "evidence.extra['vendor'][(frozendict({'crit.x': 1}),)]"),
    ({b"raw": [{"crit.x": 1}]}, "evidence.extra['vendor'][b'raw'][0]['crit.x']"),
])
def test_critical_extension_hidden_in_tags_or_map_keys_is_refused(hidden, field):
    """FORMAT.md refuses an unknown `crit.` key anywhere, so also inside a tagged value
    or a map or array used as a map key, as decoded from the card's own bytes."""
    payload = sample_payload()
    payload["evidence"]["extra"]["vendor"] = hidden
    decoded = cbor.loads(cbor.dumps(payload))
    for value in (payload, decoded):
        with pytest.raises(CardFormatError) as err:
            schema.validate_payload(value)
        assert err.value.reason == "unknown critical extension"
        assert err.value.field.replace(" ", "") == field.replace(" ", "")


@pytest.mark.parametrize("vendor,field", [
    ({float("nan"): 1, float("nan"): 2}, "evidence.extra['vendor'][nan]"),
    ({"a": [{float("nan"): "x"}]}, "evidence.extra['vendor'].a[0][nan]"),
    ({cbor2.frozendict({float("nan"): 1}): 2}, "evidence.extra['vendor'][frozendict({nan: 1})]"),
])
def test_nan_map_keys_are_refused_in_open_data(vendor, field):
    """Two NaN keys encode as the same key twice (f9 7e00), which the decoder's duplicate
    check, comparing floats, lets through: the schema refuses NaN keys where data is open."""
    key = keys.generate_private_key("ed25519")
    payload = sample_payload()
    payload["evidence"]["extra"]["vendor"] = vendor
    data = cbor.dumps(payload)
    assert cbor.loads(data, deterministic=True)["evidence"]["extra"]["vendor"]  # decodes
    err = _open_fails(_resign(key, data), "NaN is not allowed as a map key")
    assert err.field.replace(" ", "") == field.replace(" ", "")
    payload["evidence"]["extra"]["vendor"] = {"nan value": float("nan")}  # values stay open
    assert card.open_card(_resign(key, cbor.dumps(payload))).evidence["extra"]["vendor"]


def test_not_a_map():
    for value in (None, [], "card", 1):
        with pytest.raises(CardFormatError, match="expected a map"):
            schema.validate_payload(value)


def test_event_claims_follow_the_format_table():
    assert list(schema.EVENT_CLAIMS) == ["code", "config", "dataset.train", "dataset.test",
                                         "start", "defense.dp", "defense.watermark", "distributed",
                                         "defense.adversarial", "defense.radioactive", "evaluation",
                                         "model"]
    assert schema.EVENT_CLAIMS["code"].register == 16
    assert {e.register for t, e in schema.EVENT_CLAIMS.items() if t != "code"} == {23}
    claims = sample_claims(dp=False)
    assert [e.type for e in schema.expected_events(claims)] == [
        "code", "config", "dataset.train", "dataset.test", "start", "defense.watermark",
        "evaluation", "model"]
    assert schema.claim_for_event(claims, "config") == {
        "config": claims["training"]["config"],
        "config_sha256": claims["training"]["config_sha256"]}
    assert schema.claim_for_event(claims, "model") is claims["model"]
    with pytest.raises(CardFormatError, match="unknown event type"):
        schema.claim_for_event(claims, "bogus")


def test_digests_are_sha256_of_deterministic_cbor():
    claims = sample_claims()
    data = claims["model"]
    assert schema.event_digest("model", data) == hashlib.sha256(
        cbor2.dumps({"type": "model", "data": data}, canonical=True)).digest()
    assert schema.claims_digest(claims) == hashlib.sha256(cbor.dumps(claims)).digest()
    reordered = dict(reversed(list(claims.items())))
    assert schema.claims_digest(reordered) == schema.claims_digest(claims)
    event = schema.make_event("model", data)
    assert event["register"] == 23 and event["digest"] == schema.event_digest("model", data)


# --- sealing and opening ------------------------------------------------------------

@pytest.fixture(params=keys.KINDS)
def release_key(request):
    return keys.generate_private_key(request.param)


def _seal(key, **kwargs):
    claims = sample_claims(**kwargs)
    return card.seal(claims, sample_evidence(claims), key)


def test_seal_open_round_trip(release_key):
    data = _seal(release_key)
    opened = card.open_card(data)
    assert opened.claims == sample_claims()
    assert opened.backend == "sim" and opened.simulated
    assert opened.kid == keys.key_id(release_key.public_key())
    assert opened.alg == cose.fully_specified_alg(release_key)
    assert card.release_key_matches(opened, release_key.public_key())
    assert card.release_key_matches(opened, keys.load_public_key(keys.public_pem(release_key)))
    assert card.seal(opened.claims, opened.evidence, release_key)[:40] == data[:40]


def test_sealing_is_deterministic_for_ed25519():
    key = keys.generate_private_key("ed25519")
    assert _seal(key) == _seal(key)


def test_tpm_backend_is_not_simulated(release_key):
    claims = sample_claims()
    opened = card.open_card(card.seal(claims, sample_evidence(claims, "tpm"), release_key))
    assert opened.backend == "tpm" and not opened.simulated


def test_seal_validates_first(release_key):
    claims = sample_claims()
    claims["evaluation"]["accuracy"] = "high"
    with pytest.raises(CardFormatError, match="claims.evaluation.accuracy: expected a number"):
        card.seal(claims, sample_evidence(sample_claims()), release_key)


def test_seal_signs_what_it_validated_and_refuses_other_key_types(release_key):
    claims = sample_claims()
    claims["model"]["inputs"] = tuple(claims["model"]["inputs"])  # encodes like an array
    opened = card.open_card(card.seal(claims, sample_evidence(sample_claims()), release_key))
    assert opened.claims["model"]["inputs"] == sample_claims()["model"]["inputs"]
    with pytest.raises(LaminateError, match="Ed25519 or P-256"):
        card.seal(sample_claims(), sample_evidence(sample_claims()),
                  ec.generate_private_key(ec.SECP384R1()))


def test_wrong_key_tampered_payload_and_wrong_kid_do_not_match(release_key):
    data = _seal(release_key)
    opened = card.open_card(data)
    other = keys.generate_private_key("ed25519")
    assert not card.release_key_matches(opened, other.public_key())
    other_kind = keys.generate_private_key("p256" if opened.alg == cose.ALG_ED25519 else "ed25519")
    assert not card.release_key_matches(opened, other_kind.public_key())
    # change one claim value, keep the encoding deterministic and the signature
    payload = cbor.loads(opened.sign1.payload)
    payload["claims"]["evaluation"]["accuracy"] = 0.96
    forged = cbor.dumps(cbor2.CBORTag(18, [opened.sign1.protected_bytes, {},
                                           cbor.dumps(payload), opened.sign1.signature]))
    forged_card = card.open_card(forged)
    assert not card.release_key_matches(forged_card, release_key.public_key())
    # a valid signature by the right key but a kid naming another key
    alg = cose.alg_for_key(release_key)  # an older card's header: alg and kid only
    protected = cbor.dumps({1: alg, 4: keys.key_id(other.public_key())})
    sig = cose.sign_bytes(release_key, alg,
                          cose.sig_structure(protected, opened.sign1.payload))
    lying = cbor.dumps(cbor2.CBORTag(18, [protected, {}, opened.sign1.payload, sig]))
    assert not card.release_key_matches(card.open_card(lying), release_key.public_key())


def _resign(key, payload_bytes, protected=None, unprotected=None):
    protected = protected if protected is not None else cbor.dumps(
        {1: cose.alg_for_key(key), 4: keys.key_id(key.public_key())})
    sig = cose.sign_bytes(key, cose.alg_for_key(key), cose.sig_structure(protected,
                                                                          payload_bytes))
    return cbor.dumps(cbor2.CBORTag(18, [protected, unprotected or {}, payload_bytes, sig]))


def _open_fails(data, match):
    with pytest.raises(CardFormatError, match=match) as info:
        card.open_card(data)
    assert "\n" not in str(info.value)
    return info.value


def test_garbage_truncated_and_oversized_inputs():
    key = keys.generate_private_key("ed25519")
    data = _seal(key)
    _open_fails(b"", "empty")
    _open_fails(b"\x00garbage", "card")
    for cut in (1, 10, len(data) // 2, len(data) - 1):
        _open_fails(data[:cut], "truncated|malformed|card")
    _open_fails(data + b"\x00", "trailing bytes")
    _open_fails(b"\xd2" + b"\x00" * (card.MAX_CARD_BYTES + 1), "exceeds")
    _open_fails("not bytes", "expected bytes")
    rng = random.Random(3)
    for _ in range(300):
        blob = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 300)))
        _open_fails(blob, ".")


@pytest.mark.parametrize("item,match", [
    ({"a": 1}, "missing COSE_Sign1 tag 18"),
    ([1, 2, 3], "missing COSE_Sign1 tag 18"),
    (cbor2.CBORTag(18, [b"", {}, b"", b""]), "alg: missing"),
    (cbor2.CBORTag(99, [b"", {}, b"", b""]), "tag 99"),
])
def test_valid_cbor_that_is_not_a_card(item, match):
    _open_fails(cbor.dumps(item), match)


def test_payload_that_is_not_a_card_payload():
    key = keys.generate_private_key("ed25519")
    _open_fails(_resign(key, cbor.dumps({"hello": "world"})), "schema_version: missing")
    _open_fails(_resign(key, b"\xff\xff"), "payload: malformed")
    _open_fails(_resign(key, cbor.dumps(["a"])), "payload: expected a map")


def test_card_with_duplicated_map_key_is_refused_even_when_signed():
    key = keys.generate_private_key("ed25519")
    good = cbor.dumps(sample_payload())
    # duplicate "schema_version": bump the map's item count and prepend a second copy
    assert good[0] == 0xA3
    dup = b"\xa4" + cbor.dumps("schema_version") + cbor.dumps(1) + good[1:]
    err = _open_fails(_resign(key, dup), "duplicate map key")
    assert err.field == "payload"
    # a duplicate in the protected header
    prot = bytes.fromhex("a3") + cbor.dumps(1) + cbor.dumps(-8) + cbor.dumps(1) + cbor.dumps(-8) \
        + cbor.dumps(4) + cbor.dumps(keys.key_id(key.public_key()))
    _open_fails(_resign(key, good, protected=prot), "duplicate map key")


def test_non_deterministic_payload_is_refused_even_when_signed():
    key = keys.generate_private_key("ed25519")
    good = cbor.dumps(sample_payload())
    loose = b"\xb9\x00\x03" + good[1:]      # same map, length in three bytes
    assert cbor.loads(loose) == sample_payload()
    _open_fails(_resign(key, loose), "payload: CBOR is not deterministically encoded")


def test_envelope_must_be_exactly_alg_and_kid():
    key = keys.generate_private_key("ed25519")
    good = cbor.dumps(sample_payload())
    kid = keys.key_id(key.public_key())
    _open_fails(_resign(key, good, protected=cbor.dumps({1: -8, 3: 0, 4: kid})),
                "exactly the alg")
    _open_fails(_resign(key, good, protected=cbor.dumps({1: -8, 4: kid[:5]})), "32 bytes")
    _open_fails(_resign(key, good, unprotected={5: b"x"}), "unprotected: must be empty")
    p384 = ec.generate_private_key(ec.SECP384R1())
    _open_fails(_resign(p384, good, protected=cbor.dumps({1: -35, 4: kid})),
                "not EdDSA \\(-8\\) or ES256")
    untagged = cbor.dumps(cbor.loads(_resign(key, good)).value)
    _open_fails(untagged, "missing COSE_Sign1 tag 18")


ENVELOPE_KEY = keys.generate_private_key("ed25519")


def _envelope(tag=b"\xd2", array=b"\x84", unprotected=b"\xa0", wide=None):
    """A card's COSE_Sign1 bytes written by hand, ``wide`` naming a byte string whose
    length is written one size wider than it needs."""
    payload = cbor.dumps(sample_payload())
    protected = cbor.dumps({1: -8, 4: keys.key_id(ENVELOPE_KEY.public_key())})
    parts = {"protected": protected, "payload": payload,
             "signature": cose.sign_bytes(ENVELOPE_KEY, -8, cose.sig_structure(protected, payload))}

    def bstr(name):
        n = len(parts[name])
        shortest = len(cbor.dumps(bytes(n))) - n - 1  # bytes of the length: 0, 1, 2 or 4
        if name != wide:
            return cbor.dumps(parts[name])
        size = {0: 1, 1: 2, 2: 4, 4: 8}[shortest]
        return bytes([0x57 + size.bit_length()]) + n.to_bytes(size, "big") + parts[name]
    return tag + array + bstr("protected") + unprotected + bstr("payload") + bstr("signature")


def test_envelope_in_deterministic_form_opens():
    assert card.open_card(_envelope()).claims == sample_claims()


@pytest.mark.parametrize("bent", [dict(tag=b"\xd8\x12"), dict(array=b"\x98\x04"),
                                  dict(unprotected=b"\xb8\x00"), dict(wide="protected"),
                                  dict(wide="payload"), dict(wide="signature")])
def test_envelope_in_other_bytes_is_refused(bent):
    data = _envelope(**bent)
    assert cbor.loads(data) == cbor.loads(_envelope())
    _open_fails(data, "card: CBOR is not deterministically encoded")


def test_protected_headers_are_never_shared_between_readers():
    """Each parse decodes its own header: what one reader changes, another never sees."""
    key = keys.generate_private_key("ed25519")
    data = _seal(key)
    first = cose.parse_sign1(data, require_tag=True, deterministic=True)
    first.protected[99] = "changed by one reader"
    second = cose.parse_sign1(data, require_tag=True, deterministic=True)
    assert 99 not in second.protected
    assert second.protected[1] == -19 and second.protected[4] == keys.key_id(key.public_key())


def _with_headers(key, protected: dict, unprotected: dict | None = None) -> bytes:
    return _resign(key, cbor.dumps(sample_payload()), protected=cbor.dumps(protected),
                   unprotected=unprotected)


@pytest.mark.parametrize("kid", [7, -1, "0" * 32, None, True, 1.5, [b"\x00" * 32],
                                 {1: b"\x00" * 32}, cbor2.CBORTag(1234, b"\x00" * 32)])
def test_a_kid_that_is_not_a_byte_string_is_named(kid):
    """A COSE kid is a byte string: any other value, null included, is a clean format
    error naming the kid, never a Python exception from measuring its length."""
    key = keys.generate_private_key("ed25519")
    err = _open_fails(_with_headers(key, {1: -8, 4: kid}), "expected a byte string")
    assert (err.field, err.reason) == ("card.protected.kid", "expected a byte string")
    # in any COSE_Sign1, protected or unprotected
    for protected, unprotected in (({1: -8, 4: kid}, {}), ({1: -8}, {4: kid})):
        with pytest.raises(CardFormatError) as info:
            cose.parse_sign1(_with_headers(key, protected, unprotected))
        assert (info.value.field, info.value.reason) == ("cose.protected.kid",
                                                         "expected a byte string")


def test_crit_in_the_unprotected_header_is_refused():
    """crit must be protected: an unprotected one could be stripped or added by anyone
    without breaking the signature."""
    key = keys.generate_private_key("ed25519")
    kid = keys.key_id(key.public_key())
    data = _with_headers(key, {1: -8, 4: kid}, {2: [4]})
    err = _open_fails(data, "crit must be protected")
    assert (err.field, err.reason) == ("card.unprotected.crit", "crit must be protected")
    with pytest.raises(CardFormatError) as info:
        cose.parse_sign1(data)
    assert (info.value.field, info.value.reason) == ("cose.unprotected.crit",
                                                     "crit must be protected")
    # the same crit, protected, is understood and the message parses
    msg = cose.parse_sign1(_with_headers(key, {1: -8, 2: [4], 4: kid}))
    assert msg.protected[2] == [4] and msg.unprotected == {}


def test_a_deeply_nested_bad_value_is_named_in_one_pass():
    """The training config is open plain data: a bad value deep inside must be named
    with its full path, and finding it must cost one walk (a hostile card nests up to
    the decoder's depth limit)."""
    value = object()
    for _ in range(30):
        value = [value]
    payload = sample_payload()
    payload["claims"]["training"]["config"]["deep"] = value
    with pytest.raises(CardFormatError) as err:
        schema.validate_payload(payload)
    assert err.value.field == "claims.training.config['deep']" + "[0]" * 30
    assert "expected plain data" in err.value.reason
    for _ in range(30):
        value = [value]
    payload["claims"]["training"]["config"]["deep"] = value
    with pytest.raises(CardFormatError, match="nested too deeply"):
        schema.validate_payload(payload)


@pytest.mark.parametrize("divide, message", [
    (0.0, "must be > 0, got 0.0"), (-2.0, "must be > 0, got -2.0"), (0, "must be > 0, got 0"),
    (1e-9, None), (16.0, None)])
def test_preprocessing_divide_must_be_positive(divide, message):
    """The preprocessing rule divides by `divide`: zero or a negative value is refused
    where it is, naming the field; any positive value, however small, is accepted."""
    payload = sample_payload()
    payload["claims"]["model"]["preprocessing"] = {
        "source": "digits", "subtract": 0.0, "divide": divide, "input_shape": [64],
        "input_dtype": "float32", "class_names": ["a", "b", "c"]}
    if message is None:
        schema.validate_payload(payload)
        return
    with pytest.raises(CardFormatError, match=message) as info:
        schema.validate_payload(payload)
    assert info.value.field == "claims.model.preprocessing.divide"
