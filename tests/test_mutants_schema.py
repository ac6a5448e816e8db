"""Reasons that quote a value are bounded: a hostile card cannot make an error message
(printed on one line, logged by the service) as long as the value it carries."""
import pytest

from cards import schema
from cards.errors import CardFormatError
from test_cards_schema import sample_payload

LONG = "x" * 10_000


@pytest.mark.parametrize("section, field, path", [
    (("claims", "model"), "format", "claims.model.format"),
    (("claims", "start"), "kind", "claims.start.kind"),
])
def test_a_long_value_is_quoted_in_at_most_200_characters(section, field, path):
    payload = sample_payload()
    target = payload
    for step in section:
        target = target[step]
    target[field] = LONG
    with pytest.raises(CardFormatError) as info:
        schema.validate_payload(payload)
    assert info.value.field == path
    assert info.value.reason.startswith("expected one of ")
    assert len(info.value.reason) == 200 and info.value.reason.endswith("x" * 50)
