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


def _nested(kind: str, levels: int):
    value: object = 1
    for _ in range(levels):
        value = [value] if kind == "array" else {"k": value}
    return value


@pytest.mark.parametrize("kind", ["array", "map"])
def test_config_nests_exactly_max_plain_depth_levels(kind):
    """A config value inside 32 arrays or maps is plain data; inside 33 it is refused,
    naming the path to it: the walk over open data is bounded (MAX_PLAIN_DEPTH)."""
    payload = sample_payload()
    config = payload["claims"]["training"]["config"]
    config["deep"] = _nested(kind, schema.MAX_PLAIN_DEPTH)
    assert schema.MAX_PLAIN_DEPTH == 32
    schema.validate_payload(payload)
    config["deep"] = _nested(kind, schema.MAX_PLAIN_DEPTH + 1)
    with pytest.raises(CardFormatError) as info:
        schema.validate_payload(payload)
    assert info.value.reason == "nested too deeply"
    step = "[0]" if kind == "array" else ".k"
    assert info.value.field == "claims.training.config['deep']" + step * 33
