"""Suite-wide hooks."""
import importlib.util

import pytest

from cddlkit import require_valid

SEALED = []  # cards sealed in this process, each checked against cards/card.cddl


@pytest.fixture(autouse=True)
def _cards_follow_the_cddl(monkeypatch):
    """Every card the code seals during a test must also satisfy cards/card.cddl, so the
    schema in code and the CDDL cannot drift apart on any card the suite makes."""
    if importlib.util.find_spec("cddl_verifier") is None:
        return
    from cards import card

    seal = card.seal

    def checked_seal(*args, **kwargs):
        data = seal(*args, **kwargs)
        require_valid(data)
        SEALED.append(len(data))
        return data
    monkeypatch.setattr(card, "seal", checked_seal)
