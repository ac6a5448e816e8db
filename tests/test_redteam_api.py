"""`laminate redteam --api`: user errors name the option, and a quick run judges real copies."""
import json
import shutil

import pytest

import serving_kit as sk
from laminate.api_redteam import VICTIM_FILES
from laminate.cli import main


def victim_folder(tmp_path):
    """The serving kit's digits victim laid out as `laminate quickstart --out DIR` does."""
    kit = sk.make_kit(tmp_path / "kit")
    folder = kit.tmp_path
    shutil.copy(kit.card_path, folder / "card.cbor")
    shutil.copy(folder / "release.key", folder / "release-ed25519.pem")
    assert all((folder / name).exists() for name in VICTIM_FILES)
    return folder


@pytest.mark.parametrize("argv, message", [
    (["--rates", "0.05"], "--victim: required with --api"),
    (["--victim", "{tmp}/nowhere"], "missing card.cbor"),
    (["--victim", "{victim}", "--rates", "0.05,x"], "--rates: 'x' is not a number"),
    (["--victim", "{victim}", "--rates", "0"], "--rates: 0 is not a flip rate above 0"),
    (["--victim", "{victim}", "--rates", "0.6"], "--rates: flip rate must be between 0 and 0.5"),
    (["--victim", "{victim}", "--rates", "0.01,0.02,0.03,0.04,0.05,0.06"], "expected 1 to 5 rates"),
    (["--victim", "{victim}", "--rates", "0.01,0.01"], "--rates: 0.01,0.01 names a rate twice"),
])
def test_bad_api_arguments_exit_2_naming_the_option(tmp_path, capsys, argv, message):
    victim = victim_folder(tmp_path) if "{victim}" in argv else None
    argv = [a.format(tmp=tmp_path, victim=victim) for a in argv]
    assert main(["redteam", "--api", "--out", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_used_output_folder_is_refused_before_deploying(tmp_path, capsys):
    victim = victim_folder(tmp_path)
    (tmp_path / "out" / "deployment-0.05").mkdir(parents=True)
    argv = ["redteam", "--api", "--victim", str(victim), "--rates", "0.05", "--out",
            str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "deployment-0.05 exists already" in err and "Traceback" not in err


def test_a_model_that_does_not_take_digits_is_refused(tmp_path, capsys):
    victim = victim_folder(tmp_path)
    net = sk.victim_model()
    import numpy as np

    wide = sk.Net(np.vstack([net.w1, net.w1]), net.b1, net.w2)    # 128 inputs
    from redteam.api import RandomFeatures

    RandomFeatures(wide.w1, wide.b1, wide.w2).export(victim / "model.onnx", [128])
    assert main(["redteam", "--api", "--victim", str(victim), "--out", str(tmp_path / "o")]) == 2
    assert "64 values, 10 classes" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_api_red_team_shows_the_copies_and_no_independent(tmp_path, capsys):
    victim = victim_folder(tmp_path)
    out = tmp_path / "out"
    assert main(["redteam", "--api", "--victim", str(victim), "--quick", "--rates", "0.05",
                 "--out", str(out)]) == 0
    doc = json.loads((out / "redteam-api.json").read_text())
    (rate,) = doc["rates"]
    copies = [t for t in rate["thieves"] if t["keeps_90pct"]]
    assert copies and all(t["shown"] and t["p_value"] <= 1e-6 for t in copies), copies
    assert rate["false_positives"] == 0 and rate["independent_tests"] == 12
    assert rate["honest_client_false_positives"] == 0
    assert 0.0 < rate["honest_accuracy_cost"] < 0.15
    assert (out / "redteam-api.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "rate 0.05: TPR 1.0" in capsys.readouterr().out


@pytest.mark.parametrize("shape", [[64], [1, 8, 8]])
def test_copies_export_to_onnx_that_answers_like_the_copy(tmp_path, shape):
    """A copy is judged through its ONNX file, fed inputs of the serving card's shape: the
    file must answer what the copy answers (a non-flat input is flattened first)."""
    import numpy as np

    from redteam import api
    from verifier.suspect import OnnxSuspect

    _, (x, y), _ = sk.split()
    for name, copy in (("rf", api.fit_arch("narrow", x, np.eye(10)[y], 0)),
                       ("knn", api.fit_arch("knn", x[:200], np.eye(10)[y[:200]], 0))):
        path = copy.export(tmp_path / f"{name}.onnx", shape)
        answers = OnnxSuspect(path).predict(x[:50].reshape(-1, *shape))
        assert (answers == copy.predict(x[:50])).all(), name
