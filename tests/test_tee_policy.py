"""Policy keys for TEE evidence: each mistake is one line naming the key and the reason."""
import datetime as dt

import pytest

from cards.errors import LaminateError
from verifier.policy import Policy


def load(**doc):
    return Policy.from_mapping(doc, source="p.yaml")


def test_tee_keys_load():
    p = load(verification_time="2025-07-01T00:00:00Z",
             reference_values={"tdx": {"mrtd": ["AB" * 48], "rtmr": {2: ["cd" * 48]}},
                               "snp": {"measurement": ["ef" * 48], "min_tcb": {"snp": 8}}},
             tee={"allowed_tcb_status": ["UpToDate"], "max_collateral_age_days": 30})
    assert p.verification_time == dt.datetime(2025, 7, 1, tzinfo=dt.timezone.utc)
    assert p.reference_values.tdx.mrtd == ("ab" * 48,)
    assert p.reference_values.tdx.rtmr == {2: ("cd" * 48,)}
    assert p.reference_values.snp.min_tcb == {"snp": 8}
    assert p.tee.allowed_tcb_status == ("UpToDate",) and p.tee.max_collateral_age_days == 30


def test_defaults_pin_nothing_and_use_the_clock():
    p = Policy.default()
    assert p.verification_time is None and p.reference_values.snp.measurement == ()
    assert "OutOfDate" not in p.tee.allowed_tcb_status and "tdx" not in p.allow_backends


@pytest.mark.parametrize("doc,message", [
    ({"verification_time": "soon"}, "p.yaml: verification_time: expected an ISO 8601 time"),
    ({"reference_values": {"tdx": {"mrtd": ["ab" * 32]}}},
     "p.yaml: reference_values.tdx.mrtd[0]: expected 96 hex digits"),
    ({"reference_values": {"tdx": {"rtmr": {4: ["ab" * 48]}}}},
     "p.yaml: reference_values.tdx.rtmr: expected a mapping from RTMR index 0-3"),
    ({"reference_values": {"snp": {"measurment": []}}},
     "p.yaml: reference_values.snp.measurment: unknown policy key"),
    ({"reference_values": {"snp": {"min_tcb": {"snp": 300}}}},
     "p.yaml: reference_values.snp.min_tcb: expected {part: SVN 0-255}"),
    ({"tee": {"allowed_tcb_status": ["Revoked"]}},
     "p.yaml: tee.allowed_tcb_status: Revoked means a known-vulnerable platform"),
    ({"tee": {"allowed_tcb_status": ["Fine"]}}, "p.yaml: tee.allowed_tcb_status: unknown TCB status 'Fine'"),
    ({"tee": {"max_collateral_age_days": 0}}, "p.yaml: tee.max_collateral_age_days: expected a positive"),
    ({"allow_backends": ["sgx"]}, "p.yaml: allow_backends: unknown backend 'sgx'"),
])
def test_mistakes_name_the_key(doc, message):
    with pytest.raises(LaminateError) as err:
        load(**doc)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)
