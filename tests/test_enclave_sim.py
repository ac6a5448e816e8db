"""The simulated attestation device: identity, registers, quotes, persistence."""
import hashlib
import multiprocessing
import os
import stat
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from enclave_sim.device import ROOT_COMMON_NAME, SimDevice, SimDeviceError, default_state_dir

ZERO = bytes(32)


def verify_quote(quote, signature, chain):
    ak = x509.load_der_x509_certificate(chain[0])
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    ak.public_key().verify(encode_dss_signature(r, s), quote, ec.ECDSA(hashes.SHA256()))


def test_state_dir_created_private_and_identity_reused(tmp_path):
    state = tmp_path / "sim"
    first = SimDevice(state)
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(state / "ak-key.pem").st_mode) == 0o600
    again = SimDevice(state)
    assert again.device_id == first.device_id
    assert again.certificate_chain() == first.certificate_chain()


def test_two_devices_never_share_keys(tmp_path):
    a, b = SimDevice(tmp_path / "a"), SimDevice(tmp_path / "b")
    assert a.device_id != b.device_id
    assert set(a.certificate_chain()).isdisjoint(b.certificate_chain())
    quote, sig = a.quote([16], ZERO)
    with pytest.raises(InvalidSignature):
        verify_quote(quote, sig, b.certificate_chain())


def test_chain_is_simulated_root_certifying_the_ak(tmp_path):
    dev = SimDevice(tmp_path)
    ak_der, root_der = dev.certificate_chain()
    ak, root = x509.load_der_x509_certificate(ak_der), x509.load_der_x509_certificate(root_der)
    root_cn = root.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value
    assert root_cn == ROOT_COMMON_NAME and "SIMULATED" in root_cn
    ak.verify_directly_issued_by(root)
    root.verify_directly_issued_by(root)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not ak.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert x509.load_pem_x509_certificate(dev.root_certificate_pem()) == root


def test_extend_semantics_and_log(tmp_path):
    dev = SimDevice(tmp_path)
    d1, d2 = hashlib.sha256(b"one").digest(), hashlib.sha256(b"two").digest()
    assert dev.read(23) == ZERO
    v1 = dev.extend(23, d1)
    assert v1 == hashlib.sha256(ZERO + d1).digest() == dev.read(23)
    assert dev.extend(23, d2) == hashlib.sha256(v1 + d2).digest()
    assert dev.read(16) == ZERO
    assert dev.event_log() == [{"register": 23, "digest": d1}, {"register": 23, "digest": d2}]
    dev.event_log().clear()
    assert len(dev.event_log()) == 2


@pytest.mark.parametrize("register,digest", [(24, bytes(32)), (-1, bytes(32)), ("1", bytes(32)),
                                             (True, bytes(32)), (3, bytes(31)), (3, "x" * 32)])
def test_extend_refuses_bad_input(tmp_path, register, digest):
    with pytest.raises(SimDeviceError):
        SimDevice(tmp_path).extend(register, digest)


def test_quote_format_signature_and_counter(tmp_path):
    dev = SimDevice(tmp_path)
    dev.extend(16, hashlib.sha256(b"code").digest())
    dev.extend(23, hashlib.sha256(b"data").digest())
    nonce = hashlib.sha256(b"claims").digest()
    quote, sig = dev.quote([23, 16], nonce)
    assert len(sig) == 64
    verify_quote(quote, sig, dev.certificate_chain())
    info = cbor2.loads(quote)
    assert cbor2.dumps(info, canonical=True) == quote
    assert set(info) == {"version", "backend", "device_id", "registers", "register_digest",
                         "qualifying_data", "counter", "reset_count", "clock_ms"}
    assert info["version"] == 1 and info["backend"] == "sim"
    assert info["device_id"] == dev.device_id
    assert info["registers"] == [16, 23]
    assert info["register_digest"] == hashlib.sha256(dev.read(16) + dev.read(23)).digest()
    assert info["qualifying_data"] == nonce
    second = cbor2.loads(SimDevice(tmp_path).quote([16], b"")[0])
    assert second["counter"] == info["counter"] + 1
    assert second["clock_ms"] >= info["clock_ms"]


def test_tampered_quote_fails_signature(tmp_path):
    dev = SimDevice(tmp_path)
    quote, sig = dev.quote([16], ZERO)
    forged = bytearray(quote)
    forged[-1] ^= 1
    with pytest.raises(InvalidSignature):
        verify_quote(bytes(forged), sig, dev.certificate_chain())


@pytest.mark.parametrize("registers,data", [([], ZERO), ([24], ZERO), ([16], "text"),
                                            ([16], bytes(65))])
def test_quote_refuses_bad_input(tmp_path, registers, data):
    with pytest.raises(SimDeviceError):
        SimDevice(tmp_path).quote(registers, data)


def test_reset_clears_registers_not_identity(tmp_path):
    dev = SimDevice(tmp_path)
    identity = (dev.device_id, dev.certificate_chain())
    dev.extend(16, bytes(range(32)))
    dev.extend(23, bytes(range(32)))
    before = cbor2.loads(dev.quote([16], ZERO)[0])["reset_count"]
    dev.reset_registers([16])
    assert dev.read(16) == ZERO and dev.read(23) != ZERO
    dev.reset_registers()
    assert all(dev.read(r) == ZERO for r in range(24))
    assert (dev.device_id, dev.certificate_chain()) == identity
    assert cbor2.loads(SimDevice(tmp_path).quote([16], ZERO)[0])["reset_count"] == before + 2
    assert dev.event_log()[-1] == {"reset": list(range(24))}


def test_damaged_state_is_a_clear_error(tmp_path):
    SimDevice(tmp_path)
    (tmp_path / "ak-key.pem").write_text("not a key")
    with pytest.raises(SimDeviceError, match="damaged"):
        SimDevice(tmp_path)
    file_path = tmp_path / "file"
    file_path.write_text("x")
    with pytest.raises(SimDeviceError, match="not a directory"):
        SimDevice(file_path)


def test_default_state_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LAMINATE_SIM_DIR", str(tmp_path / "here"))
    assert default_state_dir() == tmp_path / "here"
    monkeypatch.delenv("LAMINATE_SIM_DIR")
    assert default_state_dir() == Path.home() / ".local" / "share" / "laminate" / "sim"


def _open_and_quote(state_dir, queue):
    dev = SimDevice(state_dir)
    counters = [cbor2.loads(dev.quote([16], ZERO)[0])["counter"] for _ in range(5)]
    queue.put((dev.device_id, counters))


def test_concurrent_processes_share_one_identity_and_unique_counters(tmp_path):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_open_and_quote, args=(tmp_path / "shared", queue))
             for _ in range(3)]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    assert len({device_id for device_id, _ in results}) == 1
    counters = [c for _, cs in results for c in cs]
    assert sorted(counters) == list(range(1, 16))


def test_random_is_fresh(tmp_path):
    dev = SimDevice(tmp_path)
    assert len(dev.random(32)) == 32 and dev.random(32) != dev.random(32)
    with pytest.raises(SimDeviceError):
        dev.random(-1)


def test_default_random_differs_between_devices(tmp_path):
    a, b = SimDevice(tmp_path / "a"), SimDevice(tmp_path / "a")
    assert a.random(32) != b.random(32)


def test_seeded_random_is_a_reproducible_stream(tmp_path):
    """Same state dir or not, the same random_seed replays the same draws; any other
    seed gives other bytes; the stream never repeats a draw."""
    a = SimDevice(tmp_path / "a", random_seed=b"experiment-1")
    b = SimDevice(tmp_path / "b", random_seed=b"experiment-1")
    other = SimDevice(tmp_path / "a", random_seed=b"experiment-2")
    draws = [a.random(32), a.random(32), a.random(7), a.random(0)]
    assert draws == [b.random(32), b.random(32), b.random(7), b.random(0)]
    assert draws[0] != draws[1] and draws[3] == b""
    assert other.random(32) not in draws[:2]
    assert a.random(32) != SimDevice(tmp_path / "a").random(32)   # unseeded is still fresh
    with pytest.raises(SimDeviceError):
        a.random(-1)


@pytest.mark.parametrize("seed", [b"", "text", 7])
def test_seeded_random_refuses_bad_seed(tmp_path, seed):
    with pytest.raises(SimDeviceError, match="random_seed"):
        SimDevice(tmp_path, random_seed=seed)


def test_backend_passes_the_seed_to_the_simulator_only(tmp_path):
    from attest.backend import open_backend
    from cards.errors import LaminateError

    one = open_backend("sim", sim_dir=tmp_path, sim_random_seed=b"s")
    two = open_backend("sim", sim_dir=tmp_path, sim_random_seed=b"s")
    assert one.random(64) == two.random(64)
    assert open_backend("sim", sim_dir=tmp_path).random(64) != one.random(64)
    with pytest.raises(LaminateError, match="simulator only"):
        open_backend("tpm", sim_random_seed=b"s")
