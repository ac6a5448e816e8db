"""`laminate quickstart` end to end, then the two commands it tells the user to run."""
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def laminate(*args, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "laminate", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart")
    started = time.perf_counter()
    run = laminate("quickstart", "--out", out)
    return out, run, time.perf_counter() - started


@pytest.mark.slow
def test_quickstart_runs_and_leaves_what_it_promises(quickstart):
    out, run, seconds = quickstart
    assert run.returncode == 0, run.stdout + run.stderr
    for name in ("model.onnx", "card.cbor", "card.yaml", "card.md", "watermark.opening",
                 "release-public.pem", "policy.yaml"):
        assert (out / name).is_file(), name
    assert stat.S_IMODE((out / "watermark.opening").stat().st_mode) == 0o600
    policy = (out / "policy.yaml").read_text()
    assert "allow_backends: [sim]" in policy and "simulator" in policy
    assert "OWNERSHIP SHOWN" in run.stdout and "ownership NOT shown" in run.stdout
    assert "not tight" in run.stdout
    assert "SIMULATED HARDWARE" in (out / "card.md").read_text().upper()
    # The quickstart's budget is 2 minutes on 2 cores; leave room for a busy test machine.
    assert seconds < 240, f"quickstart took {seconds:.0f} s"


@pytest.mark.slow
def test_verify_accepts_the_quickstart_card(quickstart):
    out, run, _ = quickstart
    assert run.returncode == 0, run.stdout + run.stderr
    verify = laminate("verify", out / "card.cbor", "--model", out / "model.onnx",
                      "--policy", out / "policy.yaml")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # The same card does not pass a policy that does not allow the simulator.
    strict = out / "strict.yaml"
    strict.write_text((out / "policy.yaml").read_text().replace("allow_backends: [sim]",
                                                                 "allow_backends: [tpm]"))
    verify = laminate("verify", out / "card.cbor", "--model", out / "model.onnx", "--policy", strict)
    assert verify.returncode == 1


@pytest.mark.slow
def test_ownership_is_shown_on_the_release_and_not_on_the_independent_model(quickstart):
    out, run, _ = quickstart
    assert run.returncode == 0, run.stdout + run.stderr
    owner = laminate("ownership", "--card", out / "card.cbor", "--opening",
                     out / "watermark.opening", "--suspect", out / "model.onnx", "--json")
    assert owner.returncode == 0, owner.stdout + owner.stderr
    result = json.loads(owner.stdout)
    assert result["verdict"] == "shown" and result["queries"] <= 20
    other = laminate("ownership", "--card", out / "card.cbor", "--opening",
                     out / "watermark.opening", "--suspect", out / "independent.onnx")
    assert other.returncode == 1, other.stdout + other.stderr


def test_quickstart_rejects_bad_epochs(tmp_path):
    run = laminate("quickstart", "--out", tmp_path, "--epochs", "0")
    assert run.returncode == 2 and "--epochs" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.slow
def test_ownership_survives_fine_tuning_of_the_released_model(quickstart, tmp_path):
    """A thief fine-tunes the stolen release on its own data; the claim must still hold."""
    out, run, _ = quickstart
    assert run.returncode == 0, run.stdout + run.stderr
    import numpy as np
    import onnx
    import torch
    from onnx import numpy_helper

    from attest.datasets import load_digits, split
    from attest.export import export_onnx
    from attest.models import mlp

    torch.set_num_threads(1)
    _, theirs = split(load_digits(), 0.2, 0)
    stolen = mlp(theirs.input_shape, theirs.classes, [64])
    weights = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy())
               for i in onnx.load(str(out / "model.onnx")).graph.initializer}
    stolen.load_state_dict({k: weights[k] for k in stolen.state_dict()})
    optimizer = torch.optim.SGD(stolen.parameters(), lr=0.05)
    x, y = torch.from_numpy(theirs.x), torch.from_numpy(theirs.y)
    for _ in range(3):
        for index in torch.randperm(len(y), generator=torch.Generator().manual_seed(0)).split(32):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(stolen(x[index]), y[index]).backward()
            optimizer.step()
    tuned = export_onnx(stolen.eval(), np.asarray(theirs.x[:2]), tmp_path / "tuned.onnx")
    result = laminate("ownership", "--card", out / "card.cbor", "--opening",
                      out / "watermark.opening", "--suspect", tuned, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["verdict"] == "shown"


def test_unusable_out_is_a_one_line_error(tmp_path, capsys):
    from laminate.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["quickstart", "--out", str(blocker / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("laminate: error: ") and "cannot create the output directory" in err
    assert "Traceback" not in err
