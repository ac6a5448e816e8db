"""Bench: distributed data parallel training through the wrapper vs plain DDP.

`python bench/train_overhead.py --ddp 2` runs this. Both paths start the same N gloo
ranks on this machine, load the same data, take the same contiguous shards and run the
same loop (`attest.distributed._train`); the wrapper adds each rank's shard measurement,
the per-epoch hashing of the records fed, rank 0's attested session (code, config, test
split, start), the ONNX check and evaluation, and sealing; the plain path exports ONNX
too. The clock runs on rank 0 from a barrier after process start to a barrier at the end,
so process start and imports (the same for both) are outside it.
"""
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def _rank(rank, world, init_file, config_path, out, mode, result_path):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from attest import distributed
        from attest.config import load_config

        config = load_config(config_path)
        dist.barrier()
        start = time.perf_counter()
        if mode == "wrapper":
            result = distributed.train(config, out, progress=lambda _: None)
            accuracy = result.claims["evaluation"]["accuracy"] if result else None
        else:
            accuracy = _plain(config, rank, world, out)
        dist.barrier()
        if rank == 0:
            Path(result_path).write_text(json.dumps(
                {"seconds": time.perf_counter() - start, "test_accuracy": accuracy}))
    finally:
        dist.destroy_process_group()


def _plain(config, rank, world, out):
    import numpy as np
    import torch
    from torch.nn.parallel import DistributedDataParallel

    from attest import datasets as ds
    from attest import distributed
    from attest.export import export_onnx
    from attest.models import build
    from attest.train import predict_labels
    from cards import shards

    full = ds.load_from_config(config)
    train, test = ds.split(full, config["dataset"]["test_fraction"], config["dataset"]["split_seed"])
    first, stop = shards.shard_bounds(len(train), world, rank)
    shard = train.subset("shard", np.arange(first, stop))
    torch.manual_seed(config["training"]["seed"])
    model = build(config["model"]["arch"], full.input_shape, full.classes, config["model"]["hidden"])
    ddp = DistributedDataParallel(model)
    distributed._train(ddp, shard, first, distributed._default_feed, config, len(train), world,
                       rank, lambda _: None, measure_feed=False)
    if rank != 0:
        return None
    Path(out).mkdir(parents=True, exist_ok=True)
    export_onnx(ddp.module, test.x, Path(out) / "model.onnx")
    return float((predict_labels(ddp.module, test.x) == test.y).mean())


def run(world: int, quick: bool, epochs: int | None, repeats: int, out_path: Path) -> int:
    import torch.multiprocessing as mp
    import yaml

    from cards import keys

    dataset, arch, default_epochs = ("digits", "mlp", 3) if quick else ("mnist-5k", "cnn", 10)
    epochs = epochs or default_epochs
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        keys.save_private_key(keys.generate_private_key("ed25519"), tmp / "release.pem")
        raw = {"name": "bench-ddp", "dataset": {"name": dataset},
               "model": {"arch": arch, "hidden": [64]},
               "training": {"epochs": epochs, "batch_size": 64, "lr": 0.05, "seed": 0},
               "attestation": {"backend": "sim", "sim_dir": str(tmp / "sim")},
               "release_key": str(tmp / "release.pem")}
        (tmp / "run.yaml").write_text(yaml.safe_dump(raw))
        from attest.backend import open_backend

        open_backend("sim", sim_dir=str(tmp / "sim")).close()   # the device exists before timing
        runs = {"plain": [], "wrapper": []}
        for i in range(repeats):          # alternate, so drifting load hits both alike
            for mode in ("plain", "wrapper"):
                result = tmp / f"{mode}{i}.json"
                os.environ.setdefault("LAMINATE_HOME", str(tmp / "home"))
                mp.spawn(_rank, args=(world, str(tmp / f"init-{mode}{i}"), str(tmp / "run.yaml"),
                                      str(tmp / f"out-{mode}{i}"), mode, str(result)),
                         nprocs=world, join=True)
                runs[mode].append(json.loads(result.read_text()))
            print(f"pair {i + 1}/{repeats}: plain {runs['plain'][-1]['seconds']:.1f} s, "
                  f"wrapper {runs['wrapper'][-1]['seconds']:.1f} s", flush=True)
    plain_s = statistics.median(r["seconds"] for r in runs["plain"])
    wrapper_s = statistics.median(r["seconds"] for r in runs["wrapper"])
    ratio = wrapper_s / plain_s
    print(f"\n{dataset} {arch}, {epochs} epochs, {world} gloo ranks, sim backend")
    print(f"overhead: ratio {ratio:.3f} ({(ratio - 1) * 100:+.1f}%), {wrapper_s - plain_s:+.2f} s "
          f"added (target <= 5%)")
    figures = {"ddp": world, "quick": quick, "dataset": dataset, "arch": arch, "epochs": epochs,
               "repeats": repeats, "plain_runs_s": [r["seconds"] for r in runs["plain"]],
               "wrapper_runs_s": [r["seconds"] for r in runs["wrapper"]],
               "plain_seconds": plain_s, "wrapper_seconds": wrapper_s, "ratio": ratio,
               "overhead_percent": (ratio - 1) * 100, "target_ratio": 1.05,
               "target_met": ratio <= 1.05,
               "plain_test_accuracy": runs["plain"][0]["test_accuracy"],
               "wrapper_test_accuracy": runs["wrapper"][0]["test_accuracy"],
               "load_average_at_end": os.getloadavg()[0], "cpus": os.cpu_count()}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {out_path}")
    return 0
