"""The card's CDDL (cards/card.cddl) as a validator for tests.

cddl-verifier is used because it implements the whole RFC 8610 grammar; pycddl 0.6
misreads this schema (it applies a `.cbor` array member to the next element, has no
float ranges, and refuses a map of maps under a `*` key), so valid cards fail there.
"""
import logging
from functools import lru_cache
from pathlib import Path

CDDL_PATH = Path(__file__).resolve().parents[1] / "cards" / "card.cddl"


@lru_cache(maxsize=1)
def validator():
    from cddl_verifier import Validator
    # It logs each failure at ERROR as well as returning it; the tests read the result.
    logging.getLogger("cddl_verifier").setLevel(logging.CRITICAL)
    return Validator(CDDL_PATH)


def cddl_errors(data, root: str = "card") -> list[str]:
    """'path: message' for each way ``data`` (CBOR bytes) breaks rule ``root``; [] if none."""
    result = validator().validate(data, root_type=root)
    return [] if result.valid else [f"{d.path_text}: {d.message}" for d in result.diagnostics]


def require_valid(card_bytes: bytes) -> None:
    """Raise AssertionError naming the CDDL's complaint about a card the code sealed."""
    errors = cddl_errors(card_bytes)
    assert not errors, "sealed card breaks cards/card.cddl: " + "; ".join(errors[:3])
