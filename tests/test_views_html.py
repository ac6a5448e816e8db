"""The standalone HTML view: who signed, the verification result, and the highlights a
reader must not miss (accounting that is not tight, classes far below the average)."""
import html

from cardkit import make_card
from cards import views
from laminate.cli import main


def test_html_show_names_the_signer_and_the_verification(tmp_path, capsys):
    kit = make_card(tmp_path)
    assert main(["show", str(kit.card_path), "--format", "html",
                 "--policy", str(kit.policy_path)]) == 0
    page = capsys.readouterr().out
    from cards import keys
    assert f"release key id {keys.key_id(kit.private_key.public_key()).hex()}" in page
    assert "(Ed25519)" in page and "the verification below" in page
    assert "<h2>Verification:" in page and "release_signature" in page


def test_not_tight_accounting_and_a_weak_class_are_highlighted(tmp_path):
    kit = make_card(tmp_path, dp={"privacy_accounting": "not tight", "non_dp_records": 60,
                                  "note": "a non-DP phase followed"},
                    evaluation={"per_class_accuracy": [0.9, 0.95, 0.92, 0.94, 0.91, 0.96,
                                                       0.93, 0.6, 0.94, 0.95]})
    page = views.to_html(kit.payload)
    flags = [html.unescape(line) for line in page.split('<li class="flag">')[1:]]
    assert len(flags) == 2, flags
    assert "NOT TIGHT" in flags[0] and "a non-DP phase followed" in flags[0]
    assert flags[1].startswith("Class 7: accuracy 0.6, 0.33 below the overall 0.93")
    assert "not checked here" not in page  # no signer given, no signer line


def test_a_card_with_nothing_to_flag_has_no_highlights(tmp_path):
    kit = make_card(tmp_path)  # tight DP, every class within 0.10 of the overall accuracy
    assert views.highlights(kit.payload) == []
    assert 'class="flag"' not in views.to_html(kit.payload)


def test_a_class_exactly_at_the_gap_is_flagged_and_just_inside_is_not():
    payload = {"claims": {"evaluation": {"accuracy": 0.9,
                                         "per_class_accuracy": [0.8, 0.8000001]}}}
    flagged = views.highlights(payload)
    assert len(flagged) == 1 and flagged[0].startswith("Class 0:")
