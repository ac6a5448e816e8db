"""Checks of `claims.training.distributed`: the ranks' shards tile the train split, their
range roots rebuild its Merkle root, and every rank fed exactly the shard it measured.

What these checks can see is what the ranks reported: a rank that changed its data
between measuring and training, or whose loader skipped or repeated records, is caught;
a rank running altered code that lies consistently is not (that needs each rank's own
quote; `distributed_code` only compares the code digests the ranks report).
"""
from __future__ import annotations

import math

from cards import merkle, shards
from verifier.result import AFFIRMING, CONTRAINDICATED, SKIPPED, Check

FIELD = "claims.training.distributed"
# Under DP-SGD an epoch's feed count is a sum of independent Poisson draws: counts
# outside Hoeffding's bound at this false-alarm rate are refused.
FEED_ALPHA = 1e-9


def checks(claims: dict) -> list[Check]:
    """The distributed checks, or none for a card one process trained."""
    dist = claims["training"].get("distributed")
    if dist is None:
        return []
    out = [check_shards(claims, dist)]
    if out[0].status != AFFIRMING:
        why = "not checked: the shards do not tile the train split"
        return out + [Check(name, SKIPPED, FIELD, why)
                      for name in ("distributed_root", "distributed_feed")] + [_code(claims, dist)]
    return out + [_root(claims, dist), _feed(claims, dist), _code(claims, dist)]


def check_shards(claims: dict, dist: dict) -> Check:
    n, world, ranks = claims["dataset"]["train"]["records"], dist["world_size"], dist["ranks"]
    if len(ranks) != world:
        return Check("distributed_shards", CONTRAINDICATED, f"{FIELD}.ranks",
                     f"{len(ranks)} rank reports for a world of {world}")
    for i, rank in enumerate(ranks):
        first, stop = shards.shard_bounds(n, world, i)
        where = f"{FIELD}.ranks[{i}]"
        if rank["rank"] != i:
            return Check("distributed_shards", CONTRAINDICATED, f"{where}.rank",
                         f"report {i} is for rank {rank['rank']}")
        if (rank["first"], rank["records"]) != (first, stop - first):
            return Check("distributed_shards", CONTRAINDICATED, f"{where}.first",
                         f"rank {i} measured records [{rank['first']}, "
                         f"{rank['first'] + rank['records']}), its shard is [{first}, {stop})")
    return Check("distributed_shards", AFFIRMING, f"{FIELD}.ranks",
                 f"{world} contiguous shards tile the {n} train records")


def _root(claims: dict, dist: dict) -> Check:
    train = claims["dataset"]["train"]
    ranks = dist["ranks"]
    try:
        root = merkle.root_of_ranges([[bytes.fromhex(h) for h in r["range_roots"]] for r in ranks],
                                     [r["records"] for r in ranks])
    except ValueError as exc:
        return Check("distributed_root", CONTRAINDICATED, f"{FIELD}.ranks", str(exc))
    if root.hex() != train["merkle_root"]:
        return Check("distributed_root", CONTRAINDICATED, "claims.dataset.train.merkle_root",
                     "the ranks' range roots rebuild a different root")
    classes = len(train["label_histogram"])
    totals = [0] * classes
    for i, rank in enumerate(ranks):
        if len(rank["label_histogram"]) != classes:
            return Check("distributed_root", CONTRAINDICATED, f"{FIELD}.ranks[{i}].label_histogram",
                         f"{len(rank['label_histogram'])} classes, the train split has {classes}")
        totals = [a + b for a, b in zip(totals, rank["label_histogram"])]
    if totals != train["label_histogram"]:
        return Check("distributed_root", CONTRAINDICATED, "claims.dataset.train.label_histogram",
                     "the ranks' label histograms do not add up to the train split's")
    return Check("distributed_root", AFFIRMING, "claims.dataset.train.merkle_root",
                 f"{len(ranks)} ranks' range roots rebuild the train root")


def _config_int(claims: dict, key: str) -> int | None:
    value = (claims["training"]["config"].get("training") or {}).get(key)
    return value if type(value) is int and value > 0 else None


def _feed(claims: dict, dist: dict) -> Check:
    epochs, batch = _config_int(claims, "epochs"), _config_int(claims, "batch_size")
    if epochs is None or batch is None:
        return Check("distributed_feed", CONTRAINDICATED, "claims.training.config.training",
                     "the config names no positive epochs and batch_size to check the feeds by")
    n, world = claims["dataset"]["train"]["records"], dist["world_size"]
    steps = shards.steps_per_epoch(n, world, batch)
    dp = claims["defenses"]["dp"]
    for i, rank in enumerate(dist["ranks"]):
        where = f"{FIELD}.ranks[{i}].fed"
        if [f["epoch"] for f in rank["fed"]] != list(range(1, epochs + 1)):
            return Check("distributed_feed", CONTRAINDICATED, where,
                         f"rank {i} reports epochs {[f['epoch'] for f in rank['fed']][:8]}, "
                         f"training ran {epochs}")
        measured = shards.shard_digest(bytes.fromhex(h) for h in rank["range_roots"]).hex()
        want = shards.expected_fed(rank["records"], steps, batch)
        for f in rank["fed"]:
            at = f"{where}[{f['epoch'] - 1}]"
            if dp is not None:
                bad = _poisson_feed(dp, epochs, rank["records"], f)
                if bad:
                    return Check("distributed_feed", CONTRAINDICATED, f"{at}.fed",
                                 f"rank {i} in epoch {f['epoch']}: {bad}")
            elif f["records"] != rank["records"]:
                return Check("distributed_feed", CONTRAINDICATED, f"{at}.records",
                             f"rank {i} fed {f['records']} of its {rank['records']} records "
                             f"in epoch {f['epoch']}")
            elif f["fed"] != want:
                return Check("distributed_feed", CONTRAINDICATED, f"{at}.fed",
                             f"rank {i} fed {f['fed']} records in epoch {f['epoch']}, "
                             f"{want} expected")
            if f["shard_digest"] != measured:
                return Check("distributed_feed", CONTRAINDICATED, f"{at}.shard_digest",
                             f"rank {i} fed records in epoch {f['epoch']} that differ from "
                             "the shard it measured")
    fed = ("exactly its measured shard" if dp is None else
           "only records of its measured shard, as many as Poisson sampling gives,")
    return Check("distributed_feed", AFFIRMING, FIELD, f"every rank fed {fed} in each of "
                 f"{epochs} epochs")


def _poisson_feed(dp: dict, epochs: int, records: int, fed: dict) -> str | None:
    """Why a DP epoch's feed counts are impossible, or None: at most every record, each
    distinct one fed at least once, and the count within Hoeffding's bound of
    records x steps x rate (steps and rate from the DP claim, which dp_config checks)."""
    per_epoch = dp["steps"] // epochs if epochs else 0
    draws = records * per_epoch
    slack = math.sqrt(draws * math.log(2 / FEED_ALPHA) / 2)
    mean = draws * dp["sample_rate"]
    if not fed["records"] <= min(records, fed["fed"]):
        return f"{fed['records']} distinct records fed, {fed['fed']} in all, of {records}"
    if abs(fed["fed"] - mean) > slack:
        return (f"fed {fed['fed']} records, Poisson sampling gives {mean:.0f} +- {slack:.0f} "
                f"(Hoeffding, alpha {FEED_ALPHA:g})")
    return None


def _code(claims: dict, dist: dict) -> Check:
    ours = claims["training"]["code"]["wrapper_sha256"]
    for i, rank in enumerate(dist["ranks"]):
        if rank["wrapper_sha256"] != ours:
            return Check("distributed_code", CONTRAINDICATED, f"{FIELD}.ranks[{i}].wrapper_sha256",
                         f"rank {i} reports other wrapper code than the card's code identity")
    return Check("distributed_code", AFFIRMING, f"{FIELD}.ranks",
                 "every rank reports the card's wrapper code (self-reported: no per-rank quote)")
