"""The TPM backend against a real swtpm: PCR handling, quotes, enrollment, and the
verifier's TPM checks, each attacked one change at a time."""
import hashlib

import pytest

from swtpm import Swtpm, enrolled_backend, require_swtpm, trusting_policy

require_swtpm()

from attest.tpm_backend import TpmBackend  # noqa: E402
from cards.errors import LaminateError  # noqa: E402
from verifier import tpm_evidence  # noqa: E402
from verifier import tpm_structs as ts
from verifier.policy import Policy  # noqa: E402
from verifier.tpm_trust import Registrar  # noqa: E402

NONCE = hashlib.sha256(b"claims").digest()


def H(*parts):
    return hashlib.sha256(b"".join(parts)).digest()


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    root = tmp_path_factory.mktemp("tpm")
    tpm = Swtpm(root / "a")
    registrar = Registrar.create([tpm.root_pem])
    backend = enrolled_backend(tpm, registrar, root / "state")
    yield tpm, registrar, backend
    backend.close()
    tpm.stop()


def measured_evidence(backend, nonce=NONCE):
    backend.start([16, 23])
    d1, d2, d3 = H(b"code"), H(b"config"), H(b"model")
    for reg, d in ((16, d1), (23, d2), (23, d3)):
        backend.extend({"register": reg, "type": "t", "digest": d, "data": None})
    return backend.quote(nonce), (H(bytes(32), d1), H(H(bytes(32), d2), d3))


def statuses(checks):
    return {c.check: c.status for c in checks}


def test_start_resets_and_extend_is_sha256_chaining(rig):
    _, _, backend = rig
    evidence, (pcr16, pcr23) = measured_evidence(backend)
    assert backend.read(16) == pcr16 and backend.read(23) == pcr23
    backend.start([16, 23])
    assert backend.read(16) == bytes(32) and backend.read(23) == bytes(32)


def test_quote_verifies_under_a_policy_trusting_ek_root_and_registrar(rig):
    tpm, registrar, backend = rig
    evidence, (pcr16, pcr23) = measured_evidence(backend)
    checks, quoted = tpm_evidence.check_evidence(evidence, trusting_policy(tpm, registrar))
    assert statuses(checks) == {"cert_chain": "affirming", "quote_signature": "affirming",
                                "pcr_selection": "affirming", "tpm_clock": "affirming"}
    assert quoted.registers == [16, 23]
    assert quoted.register_digest == H(pcr16, pcr23)
    assert quoted.qualifying_data == NONCE
    assert quoted.device.startswith("tpm:") and quoted.clock["safe"] == 1
    assert evidence["cert_chain"][0] == backend.ek_cert
    attest = ts.parse_attest(evidence["quote"])
    assert attest.magic == ts.TPM_GENERATED_VALUE and attest.type == ts.TPM_ST_ATTEST_QUOTE


def test_default_policy_rejects_untrusted_ek_root_and_registrar(rig):
    _, _, backend = rig
    evidence, _ = measured_evidence(backend)
    checks, quoted = tpm_evidence.check_evidence(evidence, Policy.default())
    by_name = {c.check: c for c in checks}
    assert by_name["cert_chain"].status == "contraindicated"
    assert "no trusted root" in by_name["cert_chain"].reason
    assert by_name["quote_signature"].status == "contraindicated"
    assert by_name["quote_signature"].field == "evidence.extra.binding.ak_certificate"
    assert quoted is None


def test_ek_root_alone_does_not_bind_the_ak(rig):
    tpm, registrar, backend = rig
    evidence, _ = measured_evidence(backend)
    policy = Policy.from_mapping({"trusted_roots": [tpm.root_pem.decode()]}, source="ek-only")
    checks, quoted = tpm_evidence.check_evidence(evidence, policy)
    by_name = {c.check: c for c in checks}
    assert by_name["cert_chain"].status == "affirming"
    assert by_name["quote_signature"].status == "contraindicated"
    assert "AK certificate" in by_name["quote_signature"].reason


@pytest.mark.parametrize("tamper, field, words", [
    (lambda ev: ev.__setitem__("signature", ev["signature"][:-1] + bytes([ev["signature"][-1] ^ 1])),
     "evidence.signature", "does not verify"),
    (lambda ev: ev.__setitem__("quote", ev["quote"].replace(NONCE, H(b"other claims"))),
     "evidence.signature", "does not verify"),
    (lambda ev: ev["extra"]["binding"].__setitem__("method", "none"),
     "evidence.extra.binding", "credential activation"),
    (lambda ev: ev["extra"].__setitem__("ak_name", b"\x00\x0b" + bytes(32)),
     "evidence.extra.ak_name", "does not match"),
    (lambda ev: ev.__setitem__("quote", ev["quote"] + b"\x00"),
     "evidence.quote", "trailing"),
])
def test_each_tamper_is_rejected_for_its_reason(rig, tamper, field, words):
    tpm, registrar, backend = rig
    evidence, _ = measured_evidence(backend)
    tamper(evidence)
    checks, quoted = tpm_evidence.check_evidence(evidence, trusting_policy(tpm, registrar))
    bad = [c for c in checks if c.status == "contraindicated"]
    assert [c.check for c in bad] == ["quote_signature"] and quoted is None
    assert bad[0].field == field and words in bad[0].reason


def test_pcr_map_that_does_not_match_the_quoted_selection_is_rejected(rig):
    tpm, registrar, backend = rig
    evidence, _ = measured_evidence(backend)
    evidence["extra"]["pcr_map"] = [[16, 16], [23, 22]]
    checks, quoted = tpm_evidence.check_evidence(evidence, trusting_policy(tpm, registrar))
    bad = [c for c in checks if c.status == "contraindicated"]
    assert [c.check for c in bad] == ["pcr_selection"] and quoted is None


def test_ak_certificate_for_another_tpm_is_rejected(rig, tmp_path):
    tpm, registrar, backend = rig
    with Swtpm(tmp_path / "b", ca_dir=tpm.ca_dir) as other:
        second = enrolled_backend(other, registrar, tmp_path / "state")
        theirs, _ = measured_evidence(second)
        second.close()
    evidence, _ = measured_evidence(backend)
    evidence["extra"]["binding"] = theirs["extra"]["binding"]
    checks, _ = tpm_evidence.check_evidence(evidence, trusting_policy(tpm, registrar))
    bad = {c.check: c for c in checks if c.status == "contraindicated"}
    assert list(bad) == ["quote_signature"]
    assert "another key" in bad["quote_signature"].reason


def test_unenrolled_ak_is_refused_before_measuring(rig, tmp_path):
    tpm, _, _ = rig
    backend = TpmBackend(tpm.tcti, state_dir=tmp_path / "empty")
    try:
        with pytest.raises(LaminateError, match="not enrolled"):
            backend.start([16, 23])
    finally:
        backend.close()


def test_pcr_mapping_must_keep_order_and_be_resettable(rig, tmp_path):
    tpm, _, _ = rig
    with pytest.raises(LaminateError, match="tpm_pcrs"):
        TpmBackend(tpm.tcti, pcrs={16: 23, 23: 16}, state_dir=tmp_path)
    backend = TpmBackend(tpm.tcti, pcrs={16: 0, 23: 23}, state_dir=tmp_path,
                         require_enrollment=False)
    try:
        with pytest.raises(LaminateError, match="cannot reset PCR 0"):
            backend.start([16, 23])
    finally:
        backend.close()


def test_reset_count_going_back_is_caught_across_quotes(rig, tmp_path):
    tpm, registrar, _ = rig
    policy = trusting_policy(tpm, registrar)
    quotes = []
    with Swtpm(tmp_path / "b", ca_dir=tpm.ca_dir) as other:
        for _ in range(2):
            backend = enrolled_backend(other, registrar, tmp_path / "state")
            quotes.append(tpm_evidence.check_evidence(measured_evidence(backend)[0], policy)[1])
            backend.close()
            other.stop()                 # orderly power-off, then a TPM reset
            other.start()
    q1, q2 = quotes
    assert q2.clock["resetCount"] == q1.clock["resetCount"] + 1 and q2.clock["safe"] == 1
    assert [c.status for c in tpm_evidence.check_clock_sequence([q1, q2])] == ["affirming"]
    back = tpm_evidence.check_clock_sequence([q2, q1])
    assert back[0].status == "contraindicated" and "resetCount went back" in back[0].reason


def test_power_loss_makes_the_clock_unsafe_and_the_quote_rejected(rig, tmp_path):
    tpm, registrar, _ = rig
    with Swtpm(tmp_path / "b", ca_dir=tpm.ca_dir) as other:
        backend = enrolled_backend(other, registrar, tmp_path / "state")
        backend.close()
        other.stop(orderly=False)        # pulled plug: no TPM2_Shutdown
        other.start()
        backend = enrolled_backend(other, registrar, tmp_path / "state")
        evidence, _ = measured_evidence(backend)
        backend.close()
    checks, _ = tpm_evidence.check_evidence(evidence, trusting_policy(tpm, registrar))
    clock = next(c for c in checks if c.check == "tpm_clock")
    assert clock.status == "contraindicated" and "safe = 0" in clock.reason


def test_random_comes_from_the_tpm(rig):
    _, _, backend = rig
    a, b = backend.random(48), backend.random(48)
    assert len(a) == 48 and a != b


# -- whole cards on the TPM backend, appraised end to end ------------------------------

@pytest.fixture(scope="module")
def kit(rig, tmp_path_factory):
    import cardkit
    tpm, registrar, backend = rig
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAMINATE_TPM_DIR", str(backend.state_dir))
        made = cardkit.make_card(tmp_path_factory.mktemp("tpmcard"), backend="tpm", tcti=tpm.tcti)
    policy = trusting_policy(tpm, registrar,
                             trusted_release_keys=[made.release_public_pem_path.read_text()],
                             reference_values={"code": [made.code_sha256]})
    return made, policy


def appraised(card_bytes, kit):
    from verifier.appraise import appraise
    made, policy = kit
    return appraise(card_bytes, policy=policy, model_path=made.model_path)


def requoted(backend, events, nonce, extra_digest=None):
    """Replay `events` into `backend`'s PCRs (as an attacker on the host can), optionally
    extend once more, and quote `nonce`."""
    backend.start([16, 23])
    for event in events:
        backend.extend(event)
    if extra_digest is not None:
        backend.extend({"register": 23, "type": "late", "digest": extra_digest, "data": None})
    return backend.quote(nonce)


def with_quote(quote_evidence):
    def mutate(evidence):
        evidence["quote"], evidence["signature"] = quote_evidence["quote"], quote_evidence["signature"]
    return mutate


def failed(result):
    return {c.check: c for c in result.failed()}


def test_tpm_card_is_affirmed_and_default_policy_rejects_it(kit):
    from verifier.appraise import appraise
    made, _ = kit
    assert appraised(made.card_bytes, kit).status == "affirming"
    default = appraise(made.card_bytes, policy=Policy.default(), model_path=made.model_path)
    assert "release_signature" in failed(default)      # the appraisal stops there
    # Trusting the release key but none of the TPM roots: the evidence is refused.
    no_roots = Policy.from_mapping({"trusted_release_keys": [str(made.release_public_pem_path)]})
    untrusted = appraise(made.card_bytes, policy=no_roots, model_path=made.model_path)
    assert {"cert_chain", "quote_signature"} <= set(failed(untrusted))


def test_replayed_quote_with_other_qualifying_data_is_rejected(rig, kit):
    import cardkit
    _, _, backend = rig
    made, _ = kit
    other = requoted(backend, made.evidence["event_log"], H(b"claims of another card"))
    bad = failed(appraised(cardkit.forge(made, mutate_evidence=with_quote(other)), kit))
    assert list(bad) == ["qualifying_data"]


def test_quote_from_a_second_swtpm_is_rejected(rig, kit, tmp_path):
    import cardkit
    from cards import schema
    tpm, registrar, _ = rig
    made, _ = kit
    with Swtpm(tmp_path / "b", ca_dir=tpm.ca_dir) as other_tpm:
        other = enrolled_backend(other_tpm, registrar, tmp_path / "state")
        theirs = requoted(other, made.evidence["event_log"], schema.claims_digest(made.claims))
        other.close()
    bad = failed(appraised(cardkit.forge(made, mutate_evidence=with_quote(theirs)), kit))
    assert list(bad) == ["quote_signature"] and "does not verify" in bad["quote_signature"].reason


def test_pcr_changed_after_quoting_is_rejected(rig, kit):
    import cardkit
    from cards import schema
    _, _, backend = rig
    made, _ = kit
    later = requoted(backend, made.evidence["event_log"], schema.claims_digest(made.claims),
                     extra_digest=H(b"measured after the quote"))
    bad = failed(appraised(cardkit.forge(made, mutate_evidence=with_quote(later)), kit))
    assert list(bad) == ["log_replay"]


def test_malformed_ak_public_key_is_a_check_not_an_exception(rig):
    """The AK certificate is genuine, the AK public area's key bytes are not a key."""
    tpm, registrar, backend = rig
    evidence, _ = measured_evidence(backend)
    ak_public = evidence["extra"]["ak_public"]
    evidence["extra"]["ak_public"] = ak_public[:-1] + bytes([ak_public[-1] ^ 1])
    evidence["extra"].pop("ak_name", None)
    checks, quoted = tpm_evidence.check_evidence(evidence, trusting_policy(tpm, registrar))
    bad = [c for c in checks if c.status == "contraindicated"]
    assert [c.check for c in bad] == ["quote_signature"] and quoted is None
    assert bad[0].field == "evidence.extra.ak_public.unique"
