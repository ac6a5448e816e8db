"""A real 2-rank gloo job on CPU: its card verifies and its train root is the root one
process measures; a rank whose loader feeds other records, or skips some, is caught."""
import os

import numpy as np
import pytest
import torch.multiprocessing as mp
import yaml

from cards import card as cardlib

pytestmark = pytest.mark.timeout(1200)   # one module fixture runs five 2-rank jobs
LIARS = ("honest", "swaps", "skips", "dp", "dp-swaps")


def _swaps(shard, index):
    """A loader whose data changed after measuring: one record of each batch differs."""
    x = shard.x[index].copy()
    x[0] += 0.5
    return index, x, shard.y[index]


def _skips(shard, index):
    """A loader that drops the first record of each batch and says so."""
    return index[1:], shard.x[index[1:]], shard.y[index[1:]]


def _rank(rank, world, init_file, config_path, out):
    import torch
    import torch.distributed as dist

    from attest import distributed
    from attest.config import load_config

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        config = load_config(config_path)
        for job in LIARS:
            feed = {"swaps": _swaps, "skips": _skips, "dp-swaps": _swaps}.get(job) if rank else None
            run = config.with_overrides(**{"dp.enabled": True, "dp.noise_multiplier": 1.0}) \
                if job.startswith("dp") else config
            distributed.train(run, os.path.join(out, job), feed=feed, progress=lambda _: None)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def cards(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    rng = np.random.default_rng(0)
    x = rng.random((203, 8), dtype=np.float32)
    np.savez(root / "data.npz", x=x, y=(x[:, 0] * 3).astype(np.int64))
    config = {"name": "ddp", "dataset": {"name": "data.npz", "classes": 3},
              "model": {"arch": "mlp", "hidden": [8]},
              "training": {"epochs": 2, "batch_size": 16, "lr": 0.1},
              "attestation": {"backend": "sim", "sim_dir": str(root / "sim")},
              "release_key": None}
    (root / "run.yaml").write_text(yaml.safe_dump(config))
    mp_env = pytest.MonkeyPatch()
    mp_env.setenv("LAMINATE_HOME", str(root / "home"))
    try:
        mp.spawn(_rank, args=(2, str(root / "init"), str(root / "run.yaml"), str(root / "out")),
                 nprocs=2, join=True)
    finally:
        mp_env.undo()
    return root


def _appraise(root, job):
    from enclave_sim.device import SimDevice
    from verifier.appraise import appraise
    from verifier.policy import Policy

    out = root / "out" / job
    data = (out / "card.cbor").read_bytes()
    claims = cardlib.open_card(data).claims
    policy = Policy.from_mapping({
        "policy_id": "ddp", "allow_backends": ["sim"],
        "trusted_roots": [SimDevice(root / "sim").root_certificate_pem().decode()],
        "trusted_release_keys": [(out / "release-public.pem").read_text()],
        "reference_values": {"code": [claims["training"]["code"]["wrapper_sha256"]]}})
    return appraise(data, policy=policy, model_path=out / "model.onnx"), claims


@pytest.mark.slow
def test_two_rank_card_verifies_with_the_single_process_root(cards):
    from attest import datasets
    from attest.config import load_config
    from attest.measure import dataset_claim

    result, claims = _appraise(cards, "honest")
    assert result.exit_code == 0, result.to_table()
    for name in ("distributed_shards", "distributed_root", "distributed_feed", "distributed_code"):
        assert result.get(name).status == "affirming", name
    full = datasets.load_from_config(load_config(cards / "run.yaml"))
    train, _ = datasets.split(full, 0.2, 0)
    assert claims["dataset"]["train"]["merkle_root"] == \
        dataset_claim("t", train.records(), 3)["merkle_root"]
    ranks = claims["training"]["distributed"]["ranks"]
    assert [(r["first"], r["records"]) for r in ranks] == [(0, 81), (81, 81)]


@pytest.mark.slow
def test_rank_feeding_other_records_than_it_measured_is_caught(cards):
    result, _ = _appraise(cards, "swaps")
    check = result.get("distributed_feed")
    assert check.status == "contraindicated" and check.field.endswith("ranks[1].fed[0].shard_digest")
    assert "rank 1 fed records in epoch 1 that differ from the shard it measured" in check.reason


@pytest.mark.slow
def test_rank_skipping_records_is_caught(cards):
    result, _ = _appraise(cards, "skips")
    check = result.get("distributed_feed")
    assert check.status == "contraindicated" and check.field.endswith("ranks[1].fed[0].records")
    assert "rank 1 fed 75 of its 81 records in epoch 1" in check.reason


@pytest.mark.slow
def test_dp_sgd_across_ranks_is_accounted_once_and_verifies(cards):
    from verifier.dp_check import expected_schedule

    result, claims = _appraise(cards, "dp")
    assert result.exit_code == 0, result.to_table()
    dp = claims["defenses"]["dp"]
    # One accountant for the job: the schedule one process would have over the whole split.
    assert (dp["sample_rate"], dp["steps"]) == expected_schedule(162, 16, 2)
    assert dp["privacy_accounting"] == "tight" and "2 ranks" in dp["note"]
    for name in ("dp_config", "dp_epsilon", "distributed_feed"):
        assert result.get(name).status == "affirming", result.get(name)


@pytest.mark.slow
def test_dp_rank_feeding_other_records_is_caught(cards):
    result, _ = _appraise(cards, "dp-swaps")
    check = result.get("distributed_feed")
    assert check.status == "contraindicated" and check.field.endswith("shard_digest"), check


@pytest.mark.parametrize("extra,reason", [
    (["--nproc", "2"], "run.yaml: watermark.enabled: the watermark under distributed training "
                       "is not supported yet"),
    (["--nproc", "0"], "--nproc: expected a positive number of processes, got 0"),
])
def test_launch_refuses_before_starting_any_rank(tmp_path, capsys, extra, reason):
    from laminate.cli import main

    (tmp_path / "run.yaml").write_text("dataset: {name: digits}\nwatermark: {enabled: true}\n")
    assert main(["train", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err
    assert reason in err and "Traceback" not in err and not (tmp_path / "o").exists()
