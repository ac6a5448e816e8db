"""The TPM clock rule at registration, with real quotes from a swtpm: two cards quoted
across a TPM reset, registered in the wrong order, are refused for resetCount going back
(registered in order, both are accepted)."""
import pytest

from swtpm import Swtpm, enrolled_backend, require_swtpm, trusting_policy

require_swtpm()

from registry.config import ServiceConfig  # noqa: E402
from registry.service import Service  # noqa: E402
from verifier.tpm_structs import parse_attest  # noqa: E402
from verifier.tpm_trust import Registrar  # noqa: E402


@pytest.fixture(scope="module")
def cards(tmp_path_factory):
    """Card A, then an orderly TPM restart (resetCount + 1), then card B."""
    import cardkit

    root = tmp_path_factory.mktemp("tpm-clock")
    tpm = Swtpm(root / "tpm")
    registrar = Registrar.create([tpm.root_pem])
    made = []
    try:
        for name in ("a", "b"):
            backend = enrolled_backend(tpm, registrar, root / "state")
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("LAMINATE_TPM_DIR", str(backend.state_dir))
                made.append(cardkit.make_card(root / name, backend="tpm", tcti=tpm.tcti))
            backend.close()
            tpm.stop()
            tpm.start()
    finally:
        tpm.stop()
    policy = trusting_policy(tpm, registrar,
                             trusted_release_keys=[k.release_public_pem_path.read_text()
                                                   for k in made],
                             reference_values={"code": sorted({k.code_sha256 for k in made})})
    return made, policy


def _service(tmp_path, policy):
    service = Service(ServiceConfig(database_url=f"sqlite:///{tmp_path / 's.sqlite'}",
                                    key_path=str(tmp_path / "key.pem")))
    service.policy = policy
    return service


def test_quotes_moved_forward_across_the_reset(cards):
    (a, b), _ = cards
    ca, cb = (parse_attest(k.evidence["quote"]) for k in (a, b))
    assert cb.reset_count == ca.reset_count + 1


def test_registered_in_order_both_are_accepted(cards, tmp_path):
    (a, b), policy = cards
    service = _service(tmp_path, policy)
    try:
        assert service.register_card(a.card_bytes)[0] == 201
        assert service.register_card(b.card_bytes)[0] == 201
    finally:
        service.close()


def test_an_older_quote_after_a_newer_one_is_refused(cards, tmp_path):
    (a, b), policy = cards
    service = _service(tmp_path, policy)
    try:
        assert service.register_card(b.card_bytes)[0] == 201
        size = service.log.size()
        status, body = service.register_card(a.card_bytes)
        assert status == 422 and "tpm_clock (tpm:" in body["detail"]
        assert "resetCount went back" in body["detail"]
        assert service.log.size() == size
    finally:
        service.close()
