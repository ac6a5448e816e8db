"""The public trigger generator: matches a plain-Python reading of FORMAT.md, is pinned
by known answers, is uniform, and its commitment/opening cannot be bent."""
import hashlib
import json
import math
import stat

import numpy as np
import pytest

from cards import cbor, watermark
from cards.errors import CardFormatError, LaminateError

SEED = bytes(range(32))
SALT = bytes(range(32, 64))


def _reference(seed, params):
    """FORMAT.md's generator, written as directly as possible, without numpy."""
    n, classes = params["trigger_count"], params["classes"]
    count = n * math.prod(params["input_shape"])
    low, high = params["value_range"]
    width = 1 if classes <= 256 else 2 if classes <= 65536 else 4
    limit = (256 ** width // classes) * classes
    stream = hashlib.shake_256(b"laminate-trigger-v1" + seed).digest(4 * count + 64 * n + 4096)
    xs = []
    for i in range(count):
        u = int.from_bytes(stream[4 * i:4 * i + 4], "little") >> 8
        xs.append(float(np.float32(low + (high - low) * (u / 2 ** 24))))
    ys, pos = [], 4 * count
    while len(ys) < n:
        v = int.from_bytes(stream[pos:pos + width], "little")
        pos += width
        if v < limit:
            ys.append(v % classes)
    return xs, ys


@pytest.mark.parametrize("n,classes,shape,span", [
    (50, 10, [8, 8], (0.0, 16.0)),
    (40, 3, [5], (-1.0, 1.0)),        # 255 is rejected for 3 classes
    (30, 300, [2, 3], (0.0, 1.0)),    # two-byte labels
    (7, 2, [1, 4, 4], (-0.5, 2.5)),
])
def test_generator_matches_plain_python_reading_of_the_format(n, classes, shape, span):
    params = watermark.make_parameters(n, classes, shape, span)
    x, y = watermark.generate_triggers(SEED, params)
    assert x.dtype == np.float32 and x.shape == (n, *shape)
    assert y.dtype == np.int64 and y.shape == (n,)
    xs, ys = _reference(SEED, params)
    assert x.ravel().tolist() == xs
    assert y.tolist() == ys


def test_known_answer_pins_the_generator_across_platforms():
    params = watermark.make_parameters(100, 10, [1, 28, 28], (0.0, 1.0))
    x, y = watermark.generate_triggers(SEED, params)
    digest = hashlib.sha256(x.astype("<f4").tobytes() + y.astype("<i8").tobytes()).hexdigest()
    assert digest == KNOWN_TRIGGER_DIGEST
    assert watermark.commit(SEED, SALT, params) == KNOWN_COMMITMENT


def test_rejection_sampling_rejects_the_biased_tail():
    # classes=3, one-byte draws: 255 must be skipped, never mapped to class 0
    params = watermark.make_parameters(2000, 3, [1], (0.0, 1.0))
    _, y = watermark.generate_triggers(SEED, params)
    stream = hashlib.shake_256(b"laminate-trigger-v1" + SEED).digest(4 * 2000 + 5000)
    draws = list(stream[4 * 2000:])
    assert 255 in draws[:2100]  # the case actually occurs in this stream
    assert y.tolist() == [v % 3 for v in draws if v < 255][:2000]


def test_labels_and_inputs_are_uniform():
    classes, n = 7, 21000
    params = watermark.make_parameters(n, classes, [4], (-2.0, 2.0))
    x, y = watermark.generate_triggers(b"\x07" * 32, params)
    counts = np.bincount(y, minlength=classes)
    expected = n / classes
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 22.5  # 6 degrees of freedom, p ~ 0.001
    assert x.min() >= -2.0 and x.max() <= 2.0
    bins, _ = np.histogram(x, bins=10, range=(-2.0, 2.0))
    chi2 = float(((bins - x.size / 10) ** 2 / (x.size / 10)).sum())
    assert chi2 < 27.9  # 9 degrees of freedom, p ~ 0.001


def test_different_seeds_give_different_triggers():
    params = watermark.make_parameters(20, 10, [3], (0.0, 1.0))
    a = watermark.generate_triggers(b"\x01" * 32, params)
    b = watermark.generate_triggers(b"\x02" * 32, params)
    assert not np.array_equal(a[0], b[0]) and not np.array_equal(a[1], b[1])


@pytest.mark.parametrize("args,field", [
    ((0, 10, [3], (0, 1)), "trigger_count"),
    ((5, 1, [3], (0, 1)), "classes"),
    ((5, 10, [], (0, 1)), "input_shape"),
    ((5, 10, [0], (0, 1)), "input_shape"),
    ((5, 10, [3], (1, 1)), "value_range"),
    ((5, 10, [3], (0, float("inf"))), "value_range"),
])
def test_bad_parameters_are_named(args, field):
    with pytest.raises(CardFormatError, match=field):
        watermark.make_parameters(*args)


def test_seed_must_be_32_bytes():
    params = watermark.make_parameters(5, 10, [3], (0, 1))
    with pytest.raises(CardFormatError, match="seed"):
        watermark.generate_triggers(b"short", params)


def test_commitment_binds_salt_seed_and_every_parameter():
    params = watermark.make_parameters(100, 10, [8, 8], (0.0, 16.0))
    value = watermark.commit(SEED, SALT, params)
    assert value == hashlib.sha256(SALT + SEED + cbor.dumps(params)).hexdigest()
    variants = [watermark.commit(SEED[::-1], SALT, params),
                watermark.commit(SEED, SALT[::-1], params)]
    for key, other in (("trigger_count", 101), ("classes", 9), ("input_shape", [64]),
                       ("value_range", [0.0, 15.0])):
        variants.append(watermark.commit(SEED, SALT, dict(params, **{key: other})))
    assert value not in variants and len(set(variants)) == len(variants)


def test_opening_round_trip_and_file_mode(tmp_path):
    params = watermark.make_parameters(100, 10, [8, 8], (0.0, 16.0))
    opening = watermark.Opening.create(SEED, params)
    assert len(opening.salt) == 32 and opening.matches(opening.commitment)
    path = opening.save(tmp_path / "opening.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = watermark.Opening.load(path)
    assert loaded == opening
    assert json.loads(path.read_text())["format"] == "laminate-watermark-opening/1"
    x, y = loaded.triggers()
    assert np.array_equal(x, watermark.generate_triggers(SEED, params)[0])
    assert not opening.matches("0" * 64) and not opening.matches(None)
    assert opening.matches(opening.commitment.upper())


def _tampered(opening, **changes):
    doc = json.loads(opening.to_json())
    doc.update(changes)
    return json.dumps(doc)


def test_tampered_openings_are_refused():
    params = watermark.make_parameters(100, 10, [8, 8], (0.0, 16.0))
    opening = watermark.Opening.create(SEED, params, salt=SALT)
    cases = {
        "commitment does not match": _tampered(opening, seed=bytes(32).hex()),
        "commitment does not match ": _tampered(opening, parameters=dict(params, classes=9)),
        "seed: expected 32 bytes": _tampered(opening, seed="zz"),
        "salt: expected 32 bytes": _tampered(opening, salt=SALT.hex()[:-2]),
        "format": _tampered(opening, format="other/1"),
        "unknown field": _tampered(opening, extra=1),
        "trigger_count": _tampered(opening, parameters=dict(params, trigger_count="100")),
        "not JSON": "{",
    }
    for message, text in cases.items():
        with pytest.raises(LaminateError, match=message.strip()):
            watermark.Opening.from_json(text)


def test_load_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(LaminateError, match="cannot read"):
        watermark.Opening.load(tmp_path / "absent.json")


KNOWN_TRIGGER_DIGEST = "e715483dd4e97fafce5436c457c131f5cd862390b4fb2ec5ee842e8dea232ebe"
KNOWN_COMMITMENT = "ffc8ab37311e9d9b93049031472dfbfbbe5f60461335533edf46f8354cdb32ce"
