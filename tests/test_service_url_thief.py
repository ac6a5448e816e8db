"""The red team's URL thief: a genuine card of its own, its own trigger labels served at
a prediction URL, and the victim's registered model digest named as the suspect. The
dispute rule judges the URL as its own suspect, so the thief can at most own its URL."""
import hashlib

import pytest

from cardkit import make_card
from service_helpers import combined_policy

acc = pytest.importorskip("redteam.accusers")     # the red team needs the train extra


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_url_thief_never_owns_the_victims_model(tmp_path):
    from verifier.policy import Policy

    owner, thief = make_card(tmp_path / "owner"), make_card(tmp_path / "thief")
    policy = Policy.load(combined_policy(tmp_path / "policy.yaml", [owner, thief]))
    log = acc.DisputeLog()
    victim_sha = _sha(owner.model_path)
    log.register_card(owner.claims["defenses"]["watermark"]["commitment"], victim_sha)
    log.register_card(thief.claims["defenses"]["watermark"]["commitment"], _sha(thief.model_path))
    victim_index = log.first("model", victim_sha)

    claim = acc.url_thief(thief.card_bytes, thief.opening, victim_sha)
    judged = acc.judge(claim, owner.model_path, victim_sha, log, policy, alpha=1e-6)
    # Everything the thief controls passes: its card, its commitment before the URL's
    # first sighting, its opening, its own labels at its own URL...
    assert all(judged.checks[c][0] for c in ("card", "order", "opening", "ownership")), \
        judged.checks
    assert judged.alone.verdict == "shown"
    # ...but the suspect judged is the URL, never the victim's model digest.
    assert judged.verdict == "not shown" and judged.stopped_by == "identity"
    assert log.first("model", victim_sha) == victim_index
    assert log.first("endpoint", claim.url) is not None
