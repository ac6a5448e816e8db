"""Human views: generated from the payload, simulated hardware always announced, and
hostile strings cannot break out of HTML or Markdown tables."""
import html.parser

import yaml

from cards import card, keys, views
from test_cards_schema import sample_claims, sample_evidence, sample_payload

HOSTILE = 'evil<script>alert("x")</script>|\n# heading & more'
VERIFICATION = {
    "status": "contraindicated", "tier": 96, "policy_id": "policy<1>", "backend": "sim",
    "simulated": True,
    "checks": [
        {"check": "release_signature", "status": "affirming", "field": "card", "reason": "ok"},
        {"check": "dp_epsilon", "status": "warning", "field": "claims.defenses.dp.epsilon",
         "reason": "privacy accounting is not tight"},
        {"check": "log_replay", "status": "contraindicated", "field": "evidence.event_log",
         "reason": "register 23 <b>differs</b>"},
        {"check": "odd", "status": "bogus\" onclick=\"x", "field": "", "reason": ""},
    ]}


def _tpm_payload():
    payload = sample_payload()
    payload["evidence"]["backend"] = "tpm"
    return payload


def test_yaml_view_is_the_payload_with_hex_bytes_and_a_banner():
    payload = sample_payload()
    text = views.to_yaml(payload)
    assert text.startswith("# laminate property card.")
    assert "SIMULATED HARDWARE" in text.splitlines()[1]
    back = yaml.safe_load(text)
    assert back["claims"] == payload["claims"]
    assert back["evidence"]["quote"] == payload["evidence"]["quote"].hex()
    assert back["evidence"]["event_log"][0]["digest"] == \
        payload["evidence"]["event_log"][0]["digest"].hex()
    assert "SIMULATED HARDWARE" not in views.to_yaml(_tpm_payload())


def test_markdown_view_has_banner_sections_and_verification():
    text = views.to_markdown(sample_payload(), VERIFICATION)
    assert text.splitlines()[2].startswith("> **SIMULATED HARDWARE")
    for heading in ("## Model", "## Dataset: train", "## Dataset: test", "## Training",
                    "## Differential privacy", "## Watermark", "## Evaluation", "## Evidence",
                    "## Event log", "## Verification: contraindicated"):
        assert heading in text
    assert "| dp_epsilon | warning | claims.defenses.dp.epsilon |" in text
    assert "| epsilon | 2.9 |" in text
    assert "SIMULATED HARDWARE" not in views.to_markdown(_tpm_payload())
    no_defenses = views.to_markdown(
        dict(sample_payload(dp=False, watermark=False)))
    assert no_defenses.count("| enabled | no |") == 2


def test_markdown_escapes_table_breakers():
    payload = sample_payload()
    payload["claims"]["model"]["name"] = HOSTILE
    text = views.to_markdown(payload)
    row = next(line for line in text.splitlines() if line.startswith("| name | evil"))
    assert row.count(" | ") == 1 and "\\|" in row and "\\<script\\>" in row
    assert not any(line.startswith("# heading") for line in text.splitlines())


class _Collector(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attrs, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)

    def handle_data(self, data):
        self.text.append(data)


def _parse(page):
    parser = _Collector()
    parser.feed(page)
    return parser


def test_html_view_escapes_everything_and_shows_per_check_status():
    payload = sample_payload()
    payload["claims"]["model"]["name"] = HOSTILE
    payload["claims"]["training"]["framework"]["<img src=x onerror=y>"] = "1"
    page = views.to_html(payload, VERIFICATION)
    parsed = _parse(page)
    assert "script" not in parsed.tags and "img" not in parsed.tags and "b" not in parsed.tags
    assert not any(name.startswith("on") for name, _ in parsed.attrs)
    text = "".join(parsed.text)
    assert 'evil<script>alert("x")</script>' in text
    assert 'register 23 <b>differs</b>' in text
    classes = [value for name, value in parsed.attrs if name == "class"]
    assert "status affirming" in classes and "status warning" in classes
    assert "status contraindicated" in classes and "status unknown" in classes
    assert "banner" in classes
    assert "SIMULATED HARDWARE" in text and "Verification:" in text


def test_html_banner_only_for_simulated_cards():
    assert "SIMULATED HARDWARE" not in views.to_html(_tpm_payload())
    assert 'class="banner"' in views.to_html(sample_payload())
    # a verification result that says simulated also raises the banner
    assert 'class="banner"' in views.to_html(_tpm_payload(), {"simulated": True, "checks": []})


def test_views_of_a_real_sealed_card():
    key = keys.generate_private_key("ed25519")
    claims = sample_claims()
    opened = card.open_card(card.seal(claims, sample_evidence(claims), key))
    for text in (views.to_yaml(opened.payload), views.to_markdown(opened.payload),
                 views.to_html(opened.payload)):
        assert "digits-mlp" in text and "SIMULATED HARDWARE" in text
