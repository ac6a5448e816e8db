"""Tamper matrix of the distributed checks: a real card with a 2-rank section, changed one
thing at a time (claims and their event together, re-quoted as an attacker with the
device could), and the check that catches it by name and field."""
import pytest

import cardkit
from verifier.appraise import appraise
from verifier.policy import Policy
from verifier.result import AFFIRMING, CONTRAINDICATED, SKIPPED

NAMES = ("distributed_shards", "distributed_root", "distributed_feed", "distributed_code")


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    config = {**cardkit.CONFIG, "dp": {"enabled": False}}
    return cardkit.make_card(tmp_path_factory.mktemp("ddp"), dp=None, config=config,
                             distributed=2)


@pytest.fixture(scope="module")
def policy(kit):
    return Policy.load(kit.policy_path)


def _forged(kit, edit):
    """Apply `edit` to the distributed section in the claims and in its event alike."""
    def claims(c):
        edit(c["training"]["distributed"])

    def events(log):
        edit(next(e for e in log if e["type"] == "distributed")["data"])
    return cardkit.forge(kit, mutate_claims=claims, mutate_events=events, requote=True)


def test_honest_distributed_card_passes_every_check(kit, policy):
    result = appraise(kit.card_bytes, policy=policy, model_path=kit.model_path)
    assert result.exit_code == 0, result.to_table()
    assert [result.get(n).status for n in NAMES] == [AFFIRMING] * 4
    assert result.get("claims_in_log").status == AFFIRMING


def test_single_process_cards_have_no_distributed_checks(tmp_path):
    plain = cardkit.make_card(tmp_path)
    result = appraise(plain.card_bytes, policy=Policy.load(plain.policy_path))
    assert "training" in plain.claims and "distributed" not in plain.claims["training"]
    assert not [c for c in result.checks if c.check.startswith("distributed")]


def _fails(kit, policy, edit, name, field_end, reason_part):
    result = appraise(_forged(kit, edit), policy=policy, model_path=kit.model_path)
    check = result.get(name)
    assert check.status == CONTRAINDICATED, result.to_table()
    assert check.field.endswith(field_end), check
    assert reason_part in check.reason, check
    assert result.get("claims_in_log").status == AFFIRMING     # forged consistently
    return result


def test_shard_that_does_not_sit_where_the_assignment_puts_it(kit, policy):
    def edit(d):
        d["ranks"][1]["first"] -= 1
    result = _fails(kit, policy, edit, "distributed_shards", "ranks[1].first",
                    "rank 1 measured records [29, 59), its shard is [30, 60)")
    assert result.get("distributed_root").status == SKIPPED


def test_a_rank_report_missing(kit, policy):
    def edit(d):
        d["ranks"].pop()
    _fails(kit, policy, edit, "distributed_shards", "distributed.ranks",
           "1 rank reports for a world of 2")


def test_range_roots_that_do_not_rebuild_the_train_root(kit, policy):
    def edit(d):
        d["ranks"][1]["range_roots"][0] = "00" * 32
    _fails(kit, policy, edit, "distributed_root", "claims.dataset.train.merkle_root",
           "rebuild a different root")


def test_range_roots_of_the_wrong_count(kit, policy):
    def edit(d):
        d["ranks"][0]["range_roots"].append("00" * 32)
    _fails(kit, policy, edit, "distributed_root", "distributed.ranks", "subtree roots, got")


def test_rank_histograms_that_do_not_add_up(kit, policy):
    def edit(d):
        hist = d["ranks"][0]["label_histogram"]
        hist[0], hist[1] = hist[0] - 1, hist[1] + 1
    _fails(kit, policy, edit, "distributed_root", "claims.dataset.train.label_histogram",
           "do not add up")


def test_a_rank_that_fed_other_records_than_it_measured(kit, policy):
    def edit(d):
        d["ranks"][1]["fed"][2]["shard_digest"] = "ab" * 32
    _fails(kit, policy, edit, "distributed_feed", "ranks[1].fed[2].shard_digest",
           "rank 1 fed records in epoch 3 that differ from the shard it measured")


def test_a_rank_that_skipped_records(kit, policy):
    def edit(d):
        d["ranks"][0]["fed"][0]["records"] -= 1
    _fails(kit, policy, edit, "distributed_feed", "ranks[0].fed[0].records",
           "rank 0 fed 29 of its 30 records in epoch 1")


def test_a_rank_that_repeated_records(kit, policy):
    def edit(d):
        d["ranks"][0]["fed"][0]["fed"] += 1
    _fails(kit, policy, edit, "distributed_feed", "ranks[0].fed[0].fed",
           "rank 0 fed 31 records in epoch 1, 30 expected")


def test_a_rank_that_reports_fewer_epochs_than_trained(kit, policy):
    def edit(d):
        d["ranks"][1]["fed"].pop()
    _fails(kit, policy, edit, "distributed_feed", "ranks[1].fed", "training ran 16")


def test_a_rank_that_ran_other_wrapper_code(kit, policy):
    def edit(d):
        d["ranks"][1]["wrapper_sha256"] = "cd" * 32
    _fails(kit, policy, edit, "distributed_code", "ranks[1].wrapper_sha256",
           "rank 1 reports other wrapper code")


def test_unknown_field_in_the_section_is_a_format_error(kit, policy):
    def edit(d):
        d["ranks"][0]["extra"] = 1
    result = appraise(_forged(kit, edit), policy=policy)
    check = result.get("card_format")
    assert check.status == CONTRAINDICATED and check.field.endswith("ranks[0].extra")


@pytest.fixture(scope="module")
def dp_kit(tmp_path_factory):
    return cardkit.make_card(tmp_path_factory.mktemp("ddp-dp"), distributed=2)


def test_dp_feed_counts_far_from_poisson_sampling_are_caught(dp_kit):
    policy = Policy.load(dp_kit.policy_path)
    assert appraise(dp_kit.card_bytes, policy=policy).get("distributed_feed").status == AFFIRMING

    def edit(d):
        d["ranks"][1]["fed"][0]["fed"] = 300     # 30 records x 60 steps at rate 1/60: 30 +- 139
    _fails(dp_kit, policy, edit, "distributed_feed", "ranks[1].fed[0].fed",
           "rank 1 in epoch 1: fed 300 records, Poisson sampling gives 30 +- 139")


def test_dp_feed_with_more_distinct_records_than_fed_is_caught(dp_kit):
    def edit(d):
        d["ranks"][0]["fed"][3]["fed"] = 20
    _fails(dp_kit, Policy.load(dp_kit.policy_path), edit, "distributed_feed",
           "ranks[0].fed[3].fed", "30 distinct records fed, 20 in all, of 30")
