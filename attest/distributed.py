"""Distributed data parallel training through the wrapper (torch.distributed, one process
per rank, started by torchrun; gloo, on CPU: the wrapper trains on CPU throughout).

Each rank measures its own contiguous shard of the train split (FORMAT.md, "Distributed
training": rank r holds records [r*n//W, (r+1)*n//W)) as the roots of the aligned
subtrees that tile it, and sends them to rank 0. Rank 0, the only rank with an attested
session, recombines them into the card's train root (the very root one process would
have measured) and records every rank's shard in `training.distributed`. While training,
each rank hashes the records it actually feeds, placed at their shard positions; at the
end of each epoch those leaves give a shard digest that must equal the measured one, so a
rank whose loader fed different records, skipped or repeated some, shows in the card.

What the card cannot show without a TPM or TEE per rank: a rank running altered code
can report any digest it likes. The ranks' reports are only as good as the code that
makes them; each rank's own quote over its report and code identity is what would bind
them (`wrapper_sha256` is a self-report until then).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from attest import datasets as ds
from attest import fasthash
from cards import merkle, shards
from cards.errors import LaminateError


def _default_feed(shard: ds.ArrayData, index: np.ndarray):
    return index, shard.x[index], shard.y[index]


class FeedLog:
    """The leaves of the records a rank fed in one epoch, at their shard positions."""

    def __init__(self, first: int, records: int, baseline: np.ndarray | None = None):
        """`baseline`: the measured leaves, under Poisson sampling (DP-SGD), where an epoch
        need not read every record; positions fed replace them."""
        self.first, self.records = first, records
        self.leaves = (np.zeros((records, 32), np.uint8) if baseline is None
                       else baseline.copy())
        self.seen = np.zeros(records, bool)
        self.fed = 0

    def add(self, index: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
        self.leaves[index] = fasthash.leaf_hashes(x, y)
        self.seen[index] = True
        self.fed += len(index)

    def report(self, epoch: int) -> dict:
        roots = fasthash.range_roots(self.leaves, self.first)
        return {"epoch": epoch, "records": int(self.seen.sum()), "fed": self.fed,
                "shard_digest": shards.shard_digest(roots).hex()}


def measure_shard(shard: ds.ArrayData, first: int, classes: int, leaves=None) -> dict:
    """A rank's report on its shard before training: where it sits, the roots that tile
    it, its label histogram."""
    leaves = fasthash.leaf_hashes(shard.x, shard.y) if leaves is None else leaves
    return {"first": first, "records": len(shard),
            "range_roots": [r.hex() for r in fasthash.range_roots(leaves, first)],
            "label_histogram": np.bincount(shard.y, minlength=classes).astype(int).tolist()}


def combine(name: str, reports: list[dict], classes: int, features: list[int]) -> dict:
    """The train split's DatasetClaim from the ranks' shard reports (no record re-read)."""
    ranges = [[bytes.fromhex(h) for h in r["range_roots"]] for r in reports]
    try:
        root = merkle.root_of_ranges(ranges, [r["records"] for r in reports])
    except ValueError as exc:
        raise LaminateError(f"distributed: rank reports do not tile the dataset: {exc}") from None
    return {"name": name, "records": sum(r["records"] for r in reports),
            "schema": {"features": features, "dtype": "float32", "classes": classes},
            "label_histogram": np.sum([r["label_histogram"] for r in reports], axis=0)
            .astype(int).tolist(),
            "merkle_root": root.hex()}


def check_config(config) -> None:
    """Refuse what distributed training does not support yet, naming the field."""
    if config["watermark"]["enabled"]:
        raise LaminateError("watermark.enabled: the watermark under distributed training is "
                            "not supported yet; train with one process")


def train(config, out_dir, *, feed=None, progress=None, release_key=None, backend=None):
    """Run this process's rank of a distributed job (torch.distributed initialised from
    the environment torchrun sets). Rank 0 seals the card in `out_dir` and returns the
    TrainResult; the other ranks return None. `feed(shard, index) -> (x, y)` reads the
    records a batch trains on and returns (positions read, x, y) (default: the shard's
    arrays at `index`); a loader that changes, skips or repeats records shows in the card."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from attest import start as start_mod
    from attest import train as single
    from attest.measure import code_claim, config_claim, dataset_claim, main_script, model_claim
    from attest.models import build
    from attest.session import AttestedSession, make_out_dir

    check_config(config)
    feed = feed or _default_feed
    progress = progress or single._print
    rank, world = dist.get_rank(), dist.get_world_size()
    started = time.monotonic()
    full = ds.load_from_config(config)
    train_set, test_set = ds.split(full, config["dataset"]["test_fraction"],
                                   config["dataset"]["split_seed"])
    classes, name = full.classes, config["dataset"]["name"]
    first, stop = shards.shard_bounds(len(train_set), world, rank)
    shard = train_set.subset(f"{train_set.name}[{first}:{stop}]", np.arange(first, stop))
    leaves = fasthash.leaf_hashes(shard.x, shard.y)
    report = measure_shard(shard, first, classes, leaves)
    report["wrapper_sha256"] = code_claim(None)["wrapper_sha256"]
    reports: list = [None] * world
    dist.all_gather_object(reports, report)

    torch.manual_seed(config["training"]["seed"])
    model = build(config["model"]["arch"], full.input_shape, classes, config["model"]["hidden"])
    session = owned = None
    if rank == 0:
        signing_key = single._release_key(release_key, config)
        out_dir = make_out_dir(out_dir)
        if backend is None:
            from attest.backend import open_backend

            att = config["attestation"]
            backend = owned = open_backend(att["backend"], sim_dir=att["sim_dir"],
                                           tcti=att["tpm"], pcrs=att["tpm_pcrs"])
        session = AttestedSession(backend, signing_key)
        session.measure_code(code_claim(main_script()))
        session.measure_config(config_claim(config.measured()))
        session.measure_dataset("train", combine(f"{name}:train", reports, classes,
                                                 list(full.input_shape)))
        session.measure_dataset("test", dataset_claim(f"{name}:test", test_set.records(), classes))
        start_claim = start_mod.measure(session, model, kind="random", parent_card=None,
                                        example=test_set.x, work_dir=out_dir)
        session.measure_start(start_claim)
        progress(f"measured: {world} ranks' shards of the train split ({len(train_set)} records), "
                 f"test split ({len(test_set)} records) on the {backend.name} backend")
    try:
        dp = None
        if config["dp"]["enabled"]:
            from attest.distributed_dp import DistributedDP

            dp = DistributedDP(model, config["training"], config["dp"], records=len(train_set),
                               epochs=config["training"]["epochs"], world=world)
            ddp = dp.model
        else:
            ddp = DistributedDataParallel(model)      # broadcasts rank 0's (measured) start
        fed = _train(ddp, shard, first, feed, config, len(train_set), world, rank, progress,
                     dp=dp, baseline=leaves)
        fed_reports: list = [None] * world
        dist.all_gather_object(fed_reports, fed)
        if rank != 0:
            return None
        claim = {"world_size": world, "backend": dist.get_backend(), "assignment": shards.ASSIGNMENT,
                 "shard_digest": shards.SHARD_DIGEST,
                 "ranks": [{"rank": i, **reports[i], "fed": fed_reports[i]} for i in range(world)]}
        session.measure_dp(_dp_claim(dp, world) if dp else None)
        session.measure_watermark(None)
        session.measure_distributed(claim)
        model_path = out_dir / single.MODEL_NAME
        module = dp.release_model() if dp else ddp.module
        diff = single.export.export_checked(module, test_set.x, model_path)
        evaluation = single.evaluate(single._onnx_predictor(model_path), test_set, None)
        session.measure_evaluation(evaluation)
        session.measure_model({**model_claim(model_path, config["name"]),
                               "preprocessing": ds.preprocessing_claim(test_set)})
        card_bytes = session.seal()
        paths = session.write(out_dir, card_bytes)
    finally:
        if owned is not None:
            owned.close()
    from cards import keys
    from cards.files import write_atomic

    write_atomic(out_dir / single.PUBLIC_KEY_NAME, keys.public_pem(signing_key))
    progress(f"test accuracy {evaluation['accuracy']:.3f}; onnx matches torch within "
             f"{diff:.1e}; {world} ranks; sealed in {time.monotonic() - started:.1f} s")
    return single.TrainResult(out_dir=out_dir, card_path=paths.cbor, model_path=model_path,
                              opening_path=None, card_bytes=card_bytes, claims=session.claims)


def _dp_claim(dp, world: int) -> dict:
    import opacus

    from attest.defenses.dp import dp_note
    from attest.distributed_dp import note

    return dp.claim(tight=True, note=note(dp_note(opacus_version=opacus.__version__,
                                                  watermark=None), world))


def _train(ddp, shard, first, feed, config, records, world, rank, progress, *,
           measure_feed: bool = True, dp=None, baseline=None) -> list:
    """The DDP loop; `measure_feed=False` is the plain loop benchmarks compare against.
    Under `dp` (attest.distributed_dp) batches are Poisson samples of the shard."""
    import torch
    from torch import nn

    from attest import train as single

    training = config["training"]
    batch = training["batch_size"]
    if dp is None:
        optimizer = single._make_optimizer(ddp.parameters(), training)
        step_fn, steps = optimizer.step, shards.steps_per_epoch(records, world, batch)
    else:
        optimizer, step_fn, steps = dp.optimizer, dp.step, dp.steps_per_epoch
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    fed = []
    for epoch in range(1, training["epochs"] + 1):
        log = FeedLog(first, len(shard), baseline if dp else None)
        rng = np.random.default_rng([training["seed"], epoch, rank])
        order = rng.permutation(len(shard))
        losses = []
        for step in range(steps):
            if dp is not None:
                index = np.flatnonzero(rng.random(len(shard)) < dp.sample_rate)
            else:
                index = order[step * batch:(step + 1) * batch]
                if not len(index):
                    index = order[:1]
            index, x, y = feed(shard, index)   # the positions the loader says it read
            if measure_feed:
                log.add(index, x, y)
            optimizer.zero_grad(set_to_none=True)
            # A mean that stays finite on an empty Poisson batch.
            loss = loss_fn(ddp(torch.from_numpy(np.ascontiguousarray(x, np.float32))),
                           torch.from_numpy(np.asarray(y, np.int64))) / max(len(y), 1)
            loss.backward()
            step_fn()
            losses.append(float(loss.detach()))
        if measure_feed:
            fed.append(log.report(epoch))
        if rank == 0:
            spent = f"  epsilon {dp.epsilon():.2f}" if dp else ""
            progress(f"[ddp x{world}] epoch {epoch}/{training['epochs']}  "
                     f"loss {np.mean(losses):.4f}{spent}")
    return fed


def run_from_config(config_path, out_dir, *, progress=None, **overrides):
    """`laminate train` under torchrun: join the job the environment describes."""
    import torch.distributed as dist

    from attest.config import load_config

    passthrough = {k: overrides.pop(k) for k in ("backend", "release_key") if k in overrides}
    config = load_config(config_path)
    if overrides:
        config = config.with_overrides(**overrides)
    check_config(config)
    dist.init_process_group("gloo")      # the wrapper trains on CPU (no nccl path yet)
    try:
        return train(config, out_dir, progress=progress, **passthrough)
    finally:
        dist.destroy_process_group()


def in_job() -> bool:
    """Whether this process was started as one rank of a torchrun job."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def launch(config_path, out_dir, nproc: int, extra_args: list[str]) -> int:
    """Start `nproc` ranks of `laminate train` on this machine through torchrun."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "laminate", "train", str(config_path),
               "--out", str(Path(out_dir)), *extra_args]
    return subprocess.run(command, check=False).returncode
