"""A differential corpus for the card reader: a few thousand cards and every decision
the reader and the appraisal make on them.

The cards derive, deterministically, from a few stored base cards sealed by cardkit with
release and attestation keys derived from fixed seeds (so a forger here holds the very
keys the bases were made with, and nothing secret is stored). Each case changes one
thing the way an attacker could: non-deterministic encodings of every item kind at
seeded positions, schema edits, event-log and quote forgeries, envelope and header
edits, and payloads laid out to mislead a reader that takes shortcuts. The decision of
a card is what `open_card` says (ok, or the error's field and reason) and what
`appraise` reports (status, and each check's name, status, field and reason).

    python tests/reader_corpus.py            # record decisions for the stored bases
    python tests/reader_corpus.py --bases    # seal new bases first (changes every card)

tests/test_reader_corpus.py regenerates the cards and compares every decision.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import math
import random
import struct
import sys
import tempfile
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import cbor2  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519  # noqa: E402

import cardkit  # noqa: E402
from cards import cbor, cose, keys, schema  # noqa: E402
from cards.card import open_card  # noqa: E402
from cards.errors import CardFormatError  # noqa: E402
from enclave_sim import device as simdevice  # noqa: E402
from verifier.appraise import appraise  # noqa: E402
from verifier.policy import Policy  # noqa: E402

CORPUS = HERE / "corpus" / "reader.json"
# name -> (release key kind, make_card keywords)
BASES = {"ed": ("ed25519", {}), "p256": ("p256", {}),
         "bare": ("ed25519", {"dp": None, "watermark_claim": None}),
         "dp-only": ("p256", {"watermark_claim": None})}


# --- seeded keys ------------------------------------------------------------------------

def _seed(label: str) -> bytes:
    return hashlib.sha256(b"laminate reader corpus\0" + label.encode()).digest()


def _p256(label: str):
    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    return ec.derive_private_key(int.from_bytes(_seed(label), "big") % (n - 1) + 1, ec.SECP256R1())


def release_key(base: str):
    kind = BASES[base][0]
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.from_private_bytes(_seed(base + "/release"))
    return _p256(base + "/release")


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def seeded_device(base: str, card_bytes: bytes, workdir: Path):
    """A simulator holding the base's attestation key, so a forger can quote again."""
    state = workdir / f"sim-{base}"
    state.mkdir(parents=True, exist_ok=True)
    evidence = _payload(card_bytes)["evidence"]
    ak_der, root_der = evidence["cert_chain"]
    files = {
        simdevice._AK_KEY: _pem(_p256(base + "/ak")),
        simdevice._AK_CERT: x509.load_der_x509_certificate(ak_der).public_bytes(
            serialization.Encoding.PEM),
        simdevice._ROOT_CERT: x509.load_der_x509_certificate(root_der).public_bytes(
            serialization.Encoding.PEM),
        simdevice._STATE: b'{"counter": 100, "reset_count": 100, "clock_ms": 0}',
        simdevice._IDENTITY: json.dumps({"device_id": cbor2.loads(evidence["quote"])["device_id"],
                                         "created_ms": 0}).encode()}
    for name, data in files.items():
        (state / name).write_bytes(data)
    return simdevice.SimDevice(state)


@contextlib.contextmanager
def _seeded_keys(base: str):
    """While sealing a base: the release key and the simulator's keys come from seeds."""
    ak_keys = iter([_p256(base + "/root"), _p256(base + "/ak")])
    real_generate, real_ec = keys.generate_private_key, simdevice.ec
    shim = types.SimpleNamespace(**{name: getattr(ec, name) for name in dir(ec)
                                    if not name.startswith("__")})
    shim.generate_private_key = lambda curve: next(ak_keys)
    keys.generate_private_key = lambda kind: release_key(base)
    simdevice.ec = shim
    try:
        yield
    finally:
        keys.generate_private_key, simdevice.ec = real_generate, real_ec


def make_bases(workdir: Path) -> dict:
    bases = {}
    for base, (kind, options) in BASES.items():
        with _seeded_keys(base):
            kit = cardkit.make_card(workdir / base, key_kind=kind, **options)
        bases[base] = kit.card_bytes
    return bases


# --- cards from a base ------------------------------------------------------------------

def _payload(card_bytes: bytes) -> dict:
    return cbor2.loads(cbor2.loads(card_bytes).value[2])


def kit_for(base: str, card_bytes: bytes, workdir: Path) -> cardkit.CardKit:
    payload = _payload(card_bytes)
    return cardkit.CardKit(
        tmp_path=workdir, card_bytes=card_bytes, card_path=workdir / "card.cbor",
        model_path=workdir / "model.onnx", release_public_pem_path=workdir / "release.pub.pem",
        root_pem_path=workdir / "root.pem",
        code_sha256=payload["claims"]["training"]["code"]["wrapper_sha256"], policy_path=workdir,
        device=seeded_device(base, card_bytes, workdir), private_key=release_key(base),
        claims=payload["claims"], evidence=payload["evidence"], opening=None,
        opening_path=workdir)


def policy_for(base: str, card_bytes: bytes) -> Policy:
    payload = _payload(card_bytes)
    root_der = payload["evidence"]["cert_chain"][1]
    return Policy.from_mapping({
        "policy_id": "corpus", "allow_backends": ["sim"],
        "trusted_roots": [x509.load_der_x509_certificate(root_der).public_bytes(
            serialization.Encoding.PEM).decode()],
        "trusted_release_keys": [keys.public_pem(release_key(base)).decode()],
        "reference_values": {"code": [payload["claims"]["training"]["code"]["wrapper_sha256"]]},
        "require": ["evaluation.accuracy >= 0.5", "defenses.dp.epsilon <= 10",
                    "dataset.train.records >= 10"]}, source="corpus")


def sign(key, payload_bytes: bytes, *, protected=None, unprotected=None, tag=18) -> bytes:
    """A COSE_Sign1 over ``payload_bytes`` with a valid signature, headers as given."""
    if protected is None:
        protected = cbor.dumps({1: cose.alg_for_key(key), 4: keys.key_id(key.public_key())})
    signature = cose.sign_bytes(key, cose.alg_for_key(key),
                                cose.sig_structure(protected, payload_bytes))
    body = [protected, {} if unprotected is None else unprotected, payload_bytes, signature]
    return cbor2.dumps(cbor2.CBORTag(tag, body) if tag is not None else body, canonical=True)


# --- CBOR items of an encoding ----------------------------------------------------------

def items(data: bytes):
    """(offset, major, additional info, argument, head length, end) of every item."""
    found = []

    def walk(at: int) -> int:
        initial = data[at]
        major, info = initial >> 5, initial & 31
        if info < 24:
            arg, size = info, 0
        else:
            size = 1 << (info - 24)
            arg = int.from_bytes(data[at + 1:at + 1 + size], "big")
        head = 1 + size
        entry = [at, major, info, arg, head, None]
        found.append(entry)
        end = at + head
        if major in (2, 3):
            end += arg
        elif major == 4:
            for _ in range(arg):
                end = walk(end)
        elif major == 5:
            for _ in range(2 * arg):
                end = walk(end)
        elif major == 6:
            end = walk(end)
        entry[5] = end
        return end
    walk(0)
    return [tuple(entry) for entry in found]


def _head(major: int, arg: int, size: int) -> bytes:
    """A head with the argument written in ``size`` bytes (0: in the initial byte)."""
    if size == 0:
        return bytes([major << 5 | arg])
    return bytes([major << 5 | (23 + size.bit_length())]) + arg.to_bytes(size, "big")


def _shortest_head(major: int, n: int) -> bytes:
    size = 0 if n < 24 else 1 if n < 1 << 8 else 2 if n < 1 << 16 else 4 if n < 1 << 32 else 8
    return _head(major, n, size)


def _children(data, entry, index):
    """The direct children of a container item, as (start, end)."""
    at, head, end = entry[0], entry[4], entry[5]
    kids, cursor = [], at + head
    while cursor < end:
        child = index[cursor]
        kids.append((cursor, child[5]))
        cursor = child[5]
    return kids


def item_variants(data: bytes, entry, index):
    """(kind, bytes) of ``data`` with the item ``entry`` encoded or changed otherwise."""
    at, major, info, arg, head, end = entry
    body = data[at + head:end]
    out = []
    if major <= 6 and info < 27:
        size = 0 if info < 24 else 1 << (info - 24)
        wider = {0: 1, 1: 2, 2: 4, 4: 8}[size]
        out.append(("widen", _head(major, arg, wider) + body))
    if major in (2, 3):
        out.append(("indefinite", bytes([major << 5 | 31]) + data[at:end] + b"\xff"))
        if arg:
            flipped = bytearray(body)
            flipped[len(flipped) // 2] ^= 0x01
            out.append(("flip", data[at:at + head] + bytes(flipped)))
            out.append(("shorten", cbor.dumps(
                body[:-1].decode("utf-8", "replace") if major == 3 else body[:-1])))
    if major in (4, 5):
        out.append(("indefinite", bytes([major << 5 | 31]) + body + b"\xff"))
        kids = _children(data, entry, index)
        if major == 5 and len(kids) >= 4:
            k0, v0, k1, v1 = (data[s:e] for s, e in kids[:4])
            rest = b"".join(data[s:e] for s, e in kids[4:])
            out.append(("swap", data[at:at + head] + k1 + v1 + k0 + v0 + rest))
            out.append(("duplicate", data[at:at + head] + k0 + v0 + k0 + v1 + rest))
        if kids:
            out.append(("drop-last", _shortest_head(major, arg - 1)
                        + b"".join(data[s:e] for s, e in
                                   (kids[:-2] if major == 5 else kids[:-1]))))
    if major == 7 and info in (25, 26, 27):
        value = struct.unpack({25: ">e", 26: ">f", 27: ">d"}[info], data[at + 1:end])[0]
        if info < 27:
            out.append(("float-wider", b"\xfb" + struct.pack(">d", value)))
        out.append(("nan", b"\xf9\x7e\x00"))
        out.append(("nan-wide", b"\xfb\x7f\xf8\x00\x00\x00\x00\x00\x01"))
        if math.isfinite(value) and value == int(value):
            out.append(("as-int", cbor.dumps(int(value))))
    if major in (0, 1):
        out.append(("as-float", cbor.dumps(float(arg if major == 0 else -1 - arg))))
        out.append(("as-bool", b"\xf5"))
    out.append(("tag-unknown", b"\xd9\x04\xd2" + data[at:end]))
    out.append(("tag-date", b"\xc1" + data[at:end]))
    out.append(("null", b"\xf6"))
    out.append(("undefined", b"\xf7"))
    return [(kind, data[:at] + new + data[end:]) for kind, new in out]


# --- the cases --------------------------------------------------------------------------

def _config_edit(key, value):
    def edit(claims):
        training = claims["training"]
        training["config"][key] = value
        training["config_sha256"] = hashlib.sha256(cbor.dumps(training["config"])).hexdigest()
    return edit


def _consistent(kit, edit, **extra):
    """A card whose claims are edited and whose log measures the edited claims, quoted
    again: valid wherever the edit keeps the schema."""
    def events(log):
        claims = holder["claims"]
        return [schema.make_event(spec.type, schema.claim_for_event(claims, spec.type))
                for spec in schema.expected_events(claims)]
    holder = {}

    def claims_edit(claims):
        result = edit(claims)
        holder["claims"] = claims if result is None else result
        return holder["claims"]
    return cardkit.forge(kit, mutate_claims=claims_edit, mutate_events=events,
                         requote=True, **extra)


def _leaves(value, path=()):
    if isinstance(value, dict):
        for key, element in value.items():
            yield path + (key,), element
            yield from _leaves(element, path + (key,))
    elif isinstance(value, list):
        for i, element in enumerate(value):
            yield path + (i,), element
            yield from _leaves(element, path + (i,))


def _at(root, path):
    for step in path:
        root = root[step]
    return root


WRONG = {"str": "x", "int": 7, "neg": -3, "float": 0.5, "bool": True, "null": None,
         "bytes": b"\x00", "list": [1], "map": {"k": 1}, "tag": cbor2.CBORTag(1234, 1),
         "inf": float("inf"), "bigint": 2 ** 64 - 1, "empty-str": "", "upper-hex": "A" * 64}


def schema_cases(base, kit, rng):
    """Every field of the payload deleted, retyped or joined by an unknown sibling."""
    payload = _payload(kit.card_bytes)
    paths = [path for path, _ in _leaves(payload)]
    shallow = [path for path in paths if len(path) <= 3]  # every section and field of one
    deep = [path for path in paths if len(path) > 3]
    for path in shallow + rng.sample(deep, min(60, len(deep))):
        parent_path, last = path[:-1], path[-1]
        for label in ["delete", "sibling", "crit"] + rng.sample(sorted(WRONG), 2):
            edited = cbor2.loads(cbor2.dumps(payload))
            parent = _at(edited, parent_path)
            if label == "delete":
                if isinstance(parent, list):
                    parent.pop(last)
                else:
                    del parent[last]
            elif label == "sibling":
                if isinstance(parent, list):
                    parent.append(parent[last])
                else:
                    parent["zz_surprise"] = 1
            elif label == "crit":
                if isinstance(parent, list):
                    parent[last] = {"crit.rule": 1}
                else:
                    parent["crit.rule"] = True
            else:
                parent[last] = WRONG[label]
            name = f"schema/{base}/{'.'.join(map(str, path))}/{label}"
            yield name, sign(kit.private_key, cbor.dumps(edited))


def encoding_cases(base, kit, rng, count):
    """Seeded items of the payload encoded otherwise, each card signed validly."""
    data = _payload_bytes(kit.card_bytes)
    entries = items(data)
    index = {entry[0]: entry for entry in entries}
    chosen = sorted(rng.sample(range(len(entries)), min(count, len(entries))))
    for i in chosen:
        entry = entries[i]
        for kind, variant in item_variants(data, entry, index):
            yield f"encoding/{base}/@{entry[0]}/{kind}", sign(kit.private_key, variant)
    for kind, variant in (("trailing", data + b"\x00"), ("truncated", data[:-1]),
                          ("empty", b""), ("wrapped", cbor.dumps([cbor2.loads(data)])),
                          ("bstr-wrapped", cbor.dumps(data))):
        yield f"encoding/{base}/{kind}", sign(kit.private_key, variant)


def _payload_bytes(card_bytes):
    return cbor2.loads(card_bytes).value[2]


def envelope_cases(base, kit):
    key = kit.private_key
    data = _payload_bytes(kit.card_bytes)
    alg = cose.alg_for_key(key)
    kid = keys.key_id(key.public_key())
    good = cbor2.loads(kit.card_bytes).value
    protected_cases = {
        "extra-header": {1: alg, 4: kid, 3: 0}, "no-kid": {1: alg}, "no-alg": {4: kid},
        "kid-short": {1: alg, 4: kid[:31]}, "kid-long": {1: alg, 4: kid + b"\x00"},
        "kid-int": {1: alg, 4: 7}, "kid-text": {1: alg, 4: kid.hex()},
        "kid-array": {1: alg, 4: [kid]}, "kid-map": {1: alg, 4: {1: kid}},
        "kid-null": {1: alg, 4: None}, "kid-bool": {1: alg, 4: True},
        "kid-float": {1: alg, 4: 1.5}, "kid-tag": {1: alg, 4: cbor2.CBORTag(1234, kid)},
        "alg-es384": {1: -35, 4: kid}, "alg-other": {1: -8 if alg == -7 else -7, 4: kid},
        "alg-text": {1: "EdDSA", 4: kid}, "alg-unknown": {1: -999, 4: kid},
        "alg-bytes": {1: b"\x27", 4: kid},
        "crit-protected": {1: alg, 2: [4], 4: kid},
        "crit-unknown": {1: alg, 2: [99], 4: kid}, "crit-empty": {1: alg, 2: [], 4: kid},
        "text-label": {1: alg, 4: kid, "x": 1}, "empty-map": {},
    }
    for label, header in protected_cases.items():
        yield f"envelope/{base}/protected/{label}", sign(key, data, protected=cbor2.dumps(
            header, canonical=True))
    raw_headers = {
        "not-map": cbor.dumps([1, alg]), "wide-alg": b"\xa2\x01" + _wide_int(alg) + b"\x04"
        + cbor.dumps(kid), "reordered": b"\xa2\x04" + cbor.dumps(kid) + b"\x01" + cbor.dumps(alg),
        "duplicate": b"\xa3\x01" + cbor.dumps(alg) + b"\x01" + cbor.dumps(alg) + b"\x04"
        + cbor.dumps(kid), "trailing": cbor.dumps({1: alg, 4: kid}) + b"\x00",
        "indefinite": b"\xbf\x01" + cbor.dumps(alg) + b"\x04" + cbor.dumps(kid) + b"\xff",
        "empty-bstr": b"", "garbage": b"\xff\xfe",
    }
    for label, header in raw_headers.items():
        yield f"envelope/{base}/protected-raw/{label}", sign(key, data, protected=header)
    unprotected_cases = {
        "iv": {5: b"x"}, "kid": {4: kid}, "crit": {2: [4]}, "crit-alone": {2: [1]},
        "alg": {1: alg}, "text": {"x": 1}, "content-type": {3: 0},
        "kid-int": {4: 7}, "nan-key": {float("nan"): 1},
    }
    for label, header in unprotected_cases.items():
        yield f"envelope/{base}/unprotected/{label}", sign(key, data, unprotected=header)
    yield f"envelope/{base}/untagged", sign(key, data, tag=None)
    yield f"envelope/{base}/tag-99", sign(key, data, tag=99)
    yield f"envelope/{base}/tag-98", sign(key, data, tag=98)
    protected, _, _, signature = good
    shapes = {
        "three": [protected, {}, data], "five": [protected, {}, data, signature, b""],
        "protected-map": [{1: alg, 4: kid}, {}, data, signature],
        "unprotected-list": [protected, [], data, signature],
        "payload-null": [protected, {}, None, signature],
        "payload-text": [protected, {}, "text", signature],
        "signature-text": [protected, {}, data, "sig"],
        "signature-empty": [protected, {}, data, b""],
        "signature-65": [protected, {}, data, signature + b"\x00"],
        "signature-63": [protected, {}, data, signature[:-1]],
        "signature-flip": [protected, {}, data, bytes([signature[0] ^ 1]) + signature[1:]],
        "signature-zero": [protected, {}, data, bytes(len(signature))],
        "not-array": {"a": 1},
    }
    for label, body in shapes.items():
        yield f"envelope/{base}/shape/{label}", cbor2.dumps(cbor2.CBORTag(18, body), canonical=True)
    # the envelope's own heads written wider than they need
    card = kit.card_bytes
    for label, variant in (
            ("tag-wide", b"\xd8\x12" + card[1:]), ("array-wide", card[:1] + b"\x98\x04" + card[2:]),
            ("array-indefinite", card[:1] + b"\x9f" + card[2:] + b"\xff"),
            ("trailing", card + b"\x00"), ("truncated", card[:-1]), ("doubled", card + card),
            ("unprotected-wide", card.replace(b"\xa0", b"\xb8\x00", 1))):
        yield f"envelope/{base}/bytes/{label}", variant
    entries = items(card)
    index = {entry[0]: entry for entry in entries}
    for entry in entries:
        if entry[1] == 2:  # the protected header, payload and signature strings
            for kind, variant in item_variants(card, entry, index):
                if kind in ("widen", "indefinite"):
                    yield f"envelope/{base}/bstr@{entry[0]}/{kind}", variant
    # signed by another key, a stale signature, another key under the card's kid
    other = ed25519.Ed25519PrivateKey.from_private_bytes(_seed("other"))
    yield f"envelope/{base}/other-key", sign(other, data)
    yield f"envelope/{base}/other-key-own-kid", sign(other, data, protected=protected)
    yield f"envelope/{base}/stale-signature", cbor2.dumps(
        cbor2.CBORTag(18, [protected, {}, cbor.dumps(_edit_accuracy(data)), signature]),
        canonical=True)


def _wide_int(value: int) -> bytes:
    major, arg = (0, value) if value >= 0 else (1, -1 - value)
    return _head(major, arg, 1)


def _edit_accuracy(data):
    payload = cbor2.loads(data)
    payload["claims"]["evaluation"]["accuracy"] = 0.51
    return payload


def log_cases(base, kit):
    """The event log, the quote and the evidence forged one thing at a time."""
    def swap(i, j):
        def edit(log):
            log[i], log[j] = log[j], log[i]
        return edit

    def set_event(i, key, value):
        def edit(log):
            log[i][key] = value
        return edit

    def data_edit(i, change):
        def edit(log):
            change(log[i]["data"])
        return edit
    n = len(kit.evidence["event_log"])
    event_edits = {
        "swap-0-1": swap(0, 1), "swap-last": swap(n - 2, n - 1),
        "drop-first": lambda log: log[1:], "drop-last": lambda log: log[:-1],
        "drop-middle": lambda log: log[:2] + log[3:], "repeat-last": lambda log: log + log[-1:],
        "reverse": lambda log: log[::-1],
        "register-0-16": set_event(0, "register", 23), "register-1-16": set_event(1, "register", 16),
        "register-unquoted": set_event(n - 1, "register", 5),
        "type-unknown": set_event(2, "type", "bogus"), "type-empty": set_event(2, "type", ""),
        "type-model-first": set_event(0, "type", "model"),
        "data-model-size": data_edit(n - 1, lambda d: d.__setitem__("size", d["size"] + 1)),
        "data-model-size-float": data_edit(n - 1, lambda d: d.__setitem__("size", float(d["size"]))),
        "data-code-extra": data_edit(0, lambda d: d.__setitem__("zz", 1)),
        "data-config-sha": data_edit(1, lambda d: d.__setitem__("config_sha256", "0" * 64)),
        "data-null": set_event(2, "data", None),
        "data-crit": set_event(2, "data", {"crit.x": 1}),
        "data-nan-key": set_event(2, "data", {float("nan"): 1}),
        "data-tag": set_event(2, "data", cbor2.CBORTag(1234, [1, 2])),
        "data-nested-crit": set_event(2, "data", [{"a": {"crit.y": 2}}]),
        "data-bytes-crit": set_event(2, "data", b"crit.x"),
    }
    for label, edit in event_edits.items():
        for redigest in (True, False):
            for requote in (True, False):
                name = f"log/{base}/{label}/{'redigest' if redigest else 'stale-digest'}/" \
                       f"{'requote' if requote else 'old-quote'}"
                yield name, cardkit.forge(kit, mutate_events=edit, redigest=redigest,
                                          requote=requote)
    claim_edits = {
        "accuracy": lambda c: c["evaluation"].__setitem__("accuracy", 0.99),
        "epsilon": lambda c: c["defenses"]["dp"] and c["defenses"]["dp"].__setitem__("epsilon", 0.1),
        "model-sha": lambda c: c["model"].__setitem__("sha256", "1" * 64),
        "model-size": lambda c: c["model"].__setitem__("size", 1),
        "wrapper": lambda c: c["training"]["code"].__setitem__("wrapper_sha256", "2" * 64),
        "config": _config_edit("lr", 0.5),
        "config-sha-only": lambda c: c["training"].__setitem__("config_sha256", "3" * 64),
        "records": lambda c: c["dataset"]["train"].__setitem__("records", 5),
        "drop-dp": lambda c: c["defenses"].__setitem__("dp", None),
        "drop-watermark": lambda c: c["defenses"].__setitem__("watermark", None),
    }
    for label, edit in claim_edits.items():
        yield f"claims/{base}/{label}/old-quote", cardkit.forge(kit, mutate_claims=edit)
        yield f"claims/{base}/{label}/requote", cardkit.forge(kit, mutate_claims=edit, requote=True)
        yield f"claims/{base}/{label}/consistent", _consistent(kit, edit)
    evidence_edits = {
        "quote-flip": lambda e: e.__setitem__("quote", _flip(e["quote"], 5)),
        "quote-trailing": lambda e: e.__setitem__("quote", e["quote"] + b"\x00"),
        "quote-garbage": lambda e: e.__setitem__("quote", b"\xff" * 8),
        "quote-not-map": lambda e: e.__setitem__("quote", cbor.dumps([1, 2])),
        "signature-flip": lambda e: e.__setitem__("signature", _flip(e["signature"], 3)),
        "signature-65": lambda e: e.__setitem__("signature", e["signature"] + b"\x00"),
        "signature-zero": lambda e: e.__setitem__("signature", bytes(64)),
        "chain-swap": lambda e: e.__setitem__("cert_chain", e["cert_chain"][::-1]),
        "chain-leaf-only": lambda e: e.__setitem__("cert_chain", e["cert_chain"][:1]),
        "chain-garbage": lambda e: e.__setitem__("cert_chain", [b"\x30\x00", e["cert_chain"][1]]),
        "chain-root-flip": lambda e: e["cert_chain"].__setitem__(1, _flip(e["cert_chain"][1], 40)),
        "backend-tpm": lambda e: e.__setitem__("backend", "tpm"),
        "extra-vendor": lambda e: e.__setitem__("extra", {"vendor": {"a": [1, 2.5, None]}}),
        "extra-crit": lambda e: e.__setitem__("extra", {"vendor": {"crit.v": 1}}),
        "extra-nan-key": lambda e: e.__setitem__("extra", {"v": {float("nan"): 1}}),
        "extra-nan-value": lambda e: e.__setitem__("extra", {"v": float("nan")}),
        "extra-int-keys": lambda e: e.__setitem__("extra", {"v": {1000: 1, "a": 2, -1: 3}}),
        "extra-tag-crit": lambda e: e.__setitem__("extra", {"v": cbor2.CBORTag(99, {"crit.z": 1})}),
        "extra-frozen-key": lambda e: e.__setitem__("extra", {"v": {cbor2.frozendict({"crit.k": 1}): 1}}),
        "extra-bytes-crit": lambda e: e.__setitem__("extra", {"v": b"crit.\xf9\x7e\x00"}),
        "extra-text-crit": lambda e: e.__setitem__("extra", {"v": "crit.value"}),
        "extra-crit-key": lambda e: e.__setitem__("extra", {"crit.top": 1}),
    }
    for label, edit in evidence_edits.items():
        yield f"evidence/{base}/{label}", cardkit.forge(kit, mutate_evidence=edit)
    other = _p256("other-device")
    fake_quote = cbor2.dumps({"version": 1}, canonical=True)
    yield f"evidence/{base}/quote-other-key", cardkit.forge(
        kit, mutate_evidence=lambda e: e.__setitem__("signature", _raw_sign(other, fake_quote)))


def _flip(data: bytes, at: int) -> bytes:
    at = min(at, len(data) - 1)
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


def _raw_sign(key, data):
    return cose.sign_bytes(key, cose.ALG_ES256, data)


def layout_cases(base, kit):
    """Valid payloads whose bytes could mislead a reader that reads along a layout or
    proves determinism by length, and repeats encoded in other bytes."""
    claims = kit.claims
    model = cbor.dumps(claims["model"])
    valid = {
        "narrow-floats": lambda c: [_config_edit(k, v)(c) for k, v in
                                    (("lr", 0.5), ("momentum", -0.0), ("clip", 65504.0))] and None,
        "infinity": _config_edit("limit", float("inf")),
        "neg-infinity": _config_edit("floor", float("-inf")),
        "nested": _config_edit("schedule", {"warmup": [1, 2.5, {"x": None}]}),
        "long-keys": _config_edit("k" * 300, "v" * 300),
        "unicode-keys": _config_edit("é", {"ü": 1, "z": 2, "aa": 3}),
        "wide-float": _config_edit("pi", 3.141592653589793),
        "float32": _config_edit("f32", 0.10000000149011612),
        "big-int": _config_edit("big", 2 ** 63),
        "neg-int": _config_edit("neg", -(2 ** 40)),
        "empty-containers": _config_edit("e", {"m": {}, "a": []}),
        "equal-sections": lambda c: c["dataset"].__setitem__("test", c["dataset"]["train"]),
        "config-crit-text": _config_edit("note", "crit.not-a-key"),
    }
    for label, edit in valid.items():
        yield f"layout/{base}/{label}", _consistent(kit, edit)
    extras = {
        "event-head-and-section": {"a": b"\xa4\x64data" + model},
        "map-of-four-led-by-data": {"data": claims["model"], "other": 1, "third": 2, "fourth": 3},
        "section-copy": {"m": claims["model"], "c": claims["training"]["code"]},
        "schema-tail": {"t": cbor.dumps("schema_version") + b"\x01"},
        "claims-head": {"h": b"\xa3" + cbor.dumps("claims")},
        "nan-bytes": {"n": b"\xf9\x7e\x00"},
        "nan-value": {"n": [float("nan")]},
        "infinity": {"i": float("inf")},
        "half-float": {"h": 1.5},
        "mixed-keys": {"m": {1000: "a", "b": 2}},
        "bytes-keys": {"m": {b"k": 1}},
        "deep": {"d": [[[[[[[[[[1]]]]]]]]]]},
    }
    for label, extra in extras.items():
        yield f"layout/{base}/extra/{label}", cardkit.forge(
            kit, mutate_evidence=lambda e, extra=extra: e.__setitem__("extra", extra))
    # an event's data equal to its section in other bytes (one head widened)
    payload_bytes = cbor.dumps(kit.payload)
    at = payload_bytes.rindex(model)
    for label, new in (("model-int-wide", _widen_first_int(model)),
                       ("model-keys-swapped", _swap_first(model))):
        data = payload_bytes[:at] + new + payload_bytes[at + len(model):]
        yield f"layout/{base}/repeat/{label}", sign(kit.private_key, data)
        claims_at = payload_bytes.index(model)
        data = payload_bytes[:claims_at] + new + payload_bytes[claims_at + len(model):]
        yield f"layout/{base}/claims/{label}", sign(kit.private_key, data)


def _widen_first_int(encoded: bytes) -> bytes:
    for at, major, info, arg, _head_bytes, end in items(encoded):
        if major == 0 and 24 <= info < 27:
            return encoded[:at] + _head(0, arg, 1 << (info - 23)) + encoded[end:]
    raise AssertionError("no integer to widen")


def _swap_first(encoded: bytes) -> bytes:
    entries = items(encoded)
    index = {entry[0]: entry for entry in entries}
    return dict(item_variants(encoded, entries[0], index))["swap"]


def noise_cases(base, kit, rng, count):
    card = kit.card_bytes
    for i in range(count):
        at = rng.randrange(len(card))
        yield f"noise/{base}/{i}/flip@{at}", card[:at] + bytes([card[at] ^ (1 << rng.randrange(8))]) \
            + card[at + 1:]
    for i in range(count // 4):
        cut = rng.randrange(len(card))
        yield f"noise/{base}/{i}/cut@{cut}", card[:cut]


def cases(bases: dict, workdir: Path):
    """Every (name, card bytes, base) of the corpus, in order."""
    for base, card_bytes in bases.items():
        rng = random.Random(f"reader-corpus/{base}")
        kit = kit_for(base, card_bytes, workdir / base)
        yield f"valid/{base}", card_bytes, base
        for generator in (schema_cases(base, kit, rng), encoding_cases(base, kit, rng, 70),
                          envelope_cases(base, kit), log_cases(base, kit),
                          layout_cases(base, kit), noise_cases(base, kit, rng, 60)):
            for name, data in generator:
                yield name, data, base


# --- decisions --------------------------------------------------------------------------

def decide(data: bytes, policy, model_sha256: str) -> list:
    """[open_card's verdict, appraise's status, [[check, status, field, reason], ...]]."""
    try:
        open_card(data)
        opened = "ok"
    except CardFormatError as exc:
        opened = [exc.field, exc.reason]
    except Exception as exc:  # a bug: recorded, so that it shows as a difference
        opened = ["escaped", type(exc).__name__]
    try:
        result = appraise(data, policy=policy, model_sha256=model_sha256)
    except Exception as exc:
        return [opened, "escaped", type(exc).__name__]
    return [opened, result.status, [list(check[:4]) for check in result.checks]]


def run(bases: dict) -> dict:
    """{case name: decision} for every case, with distinct appraisals stored once."""
    decisions = {}
    with tempfile.TemporaryDirectory() as tmp:
        context = {base: (policy_for(base, data), _payload(data)["claims"]["model"]["sha256"])
                   for base, data in bases.items()}
        for name, data, base in cases(bases, Path(tmp)):
            assert name not in decisions, name
            decisions[name] = decide(data, *context[base])
    return decisions


def compact(decisions: dict) -> dict:
    """Each distinct check and each distinct appraisal stored once, cases by index."""
    checks, appraisals, seen, rows = [], [], {}, {}

    def number(table, value):
        key = json.dumps(value, ensure_ascii=False)
        if key not in seen:
            seen[key] = len(table)
            table.append(value)
        return seen[key]
    for name, (opened, status, found) in decisions.items():
        if status == "escaped":
            rows[name] = [opened, ["escaped", found]]
            continue
        appraisal = [status, [number(checks, check) for check in found]]
        rows[name] = [opened, number(appraisals, appraisal)]
    return {"checks": checks, "appraisals": appraisals, "cases": rows}


def expand(stored: dict) -> dict:
    """{case name: decision} from ``compact``'s form."""
    checks, appraisals = stored["checks"], stored["appraisals"]
    decisions = {}
    for name, (opened, i) in stored["cases"].items():
        if isinstance(i, list):
            decisions[name] = [opened, *i]
        else:
            status, found = appraisals[i]
            decisions[name] = [opened, status, [checks[j] for j in found]]
    return decisions


def _lines_map(mapping) -> str:
    return ",\n".join(f"{json.dumps(key, ensure_ascii=False)}:"
                       f"{json.dumps(value, ensure_ascii=False, separators=(',', ':'))}"
                       for key, value in mapping.items())


def _lines(values) -> str:
    return ",\n".join(json.dumps(value, ensure_ascii=False, separators=(",", ":"))
                       for value in values)


def load_bases() -> dict:
    stored = json.loads(CORPUS.read_text(encoding="utf-8"))
    return {name: base64.b64decode(data) for name, data in stored["bases"].items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", action="store_true", help="seal new base cards first")
    args = parser.parse_args(argv)
    if args.bases:
        with tempfile.TemporaryDirectory() as tmp:
            bases = make_bases(Path(tmp))
    else:
        bases = load_bases()
    decisions = run(bases)
    CORPUS.parent.mkdir(exist_ok=True)
    document = compact(decisions)
    bases_json = {name: base64.b64encode(data).decode() for name, data in bases.items()}
    CORPUS.write_text(
        '{"about": "tests/reader_corpus.py: base cards and the decisions on every case",\n'
        f'"bases": {json.dumps(bases_json, indent=0)},\n'
        f'"checks": [\n{_lines(document["checks"])}],\n'
        f'"appraisals": [\n{_lines(document["appraisals"])}],\n'
        f'"cases": {{\n{_lines_map(document["cases"])}}}}}\n', encoding="utf-8")
    assert expand(json.loads(CORPUS.read_text(encoding="utf-8"))) == decisions
    print(f"{len(decisions)} cases, {len(document['appraisals'])} distinct appraisals, "
          f"{CORPUS.stat().st_size} bytes in {CORPUS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
