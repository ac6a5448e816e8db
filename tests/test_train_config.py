"""Training config: defaults resolved, and every user mistake named by file and field
before any data is loaded or any training starts."""
from pathlib import Path

import pytest
import yaml

from attest.config import default_release_key_path, from_dict, load_config
from cards.errors import LaminateError

EXAMPLE = Path(__file__).resolve().parents[1] / "attest" / "examples" / "digits.yaml"


def write(tmp_path, data, name="run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def error_of(tmp_path, data) -> str:
    path = write(tmp_path, data)
    with pytest.raises(LaminateError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message, message
    return message


def test_minimal_config_gets_every_default(tmp_path):
    config = load_config(write(tmp_path, {"dataset": {"name": "digits"}}))
    assert config["training"] == {"epochs": 10, "batch_size": 64, "lr": 0.05, "optimizer": "sgd", "seed": 0}
    assert config["model"] == {"arch": "mlp", "hidden": [64], "weights": None, "parent_card": None}
    assert config.start() == {"kind": "random", "weights": None, "parent_card": None}
    assert config["dp"]["enabled"] is False and config["dp"]["delta"] == 1e-5
    assert config["watermark"]["trigger_count"] == 100 and config["watermark"]["schedule"] == "joint"
    assert config["attestation"]["backend"] == "sim"
    assert config.dataset_path() is None


def test_measured_config_is_resolved_and_drops_host_local_paths(tmp_path):
    key = tmp_path / "k.pem"
    key.write_text("placeholder")
    config = load_config(write(tmp_path, {
        "dataset": {"name": "digits"}, "model": {"hidden": 32}, "training": {"lr": 1},
        "attestation": {"sim_dir": "/somewhere"}, "release_key": str(key)}))
    measured = config.measured()
    assert "release_key" not in measured
    assert measured["attestation"] == {"backend": "sim"}
    assert measured["model"]["hidden"] == [32]
    assert measured["training"]["lr"] == 1.0 and isinstance(measured["training"]["lr"], float)
    assert config.release_key_path() == key


def test_example_config_is_valid_and_documents_every_key():
    config = load_config(EXAMPLE)
    text = EXAMPLE.read_text()
    for section, values in config.data.items():
        assert f"{section}:" in text
        if isinstance(values, dict):
            for key in values:
                assert f"  {key}:" in text, f"{section}.{key} missing from the example"


@pytest.mark.parametrize("data, field", [
    ({"dataset": {"name": "digits"}, "trainig": {}}, "trainig"),
    ({"dataset": {"name": "digits", "colour": 1}}, "dataset.colour"),
    ({"dataset": {"name": "digits"}, "training": {"epochs": "ten"}}, "training.epochs"),
    ({"dataset": {"name": "digits"}, "training": {"epochs": 2.5}}, "training.epochs"),
    ({"dataset": {"name": "digits"}, "training": {"epochs": True}}, "training.epochs"),
    ({"dataset": {"name": "digits"}, "training": {"lr": "fast"}}, "training.lr"),
    ({"dataset": {"name": "digits"}, "training": {"optimizer": "rmsprop"}}, "training.optimizer"),
    ({"dataset": {"name": "digits"}, "dp": {"enabled": "yes"}}, "dp.enabled"),
    ({"dataset": {"name": "digits"}, "dp": {"enabled": True}}, "dp.target_epsilon"),
    ({"dataset": {"name": "digits"}, "dp": {"enabled": True, "target_epsilon": 3,
                                            "noise_multiplier": 1.0}}, "dp.target_epsilon"),
    ({"dataset": {"name": "digits"}, "dp": {"enabled": True, "noise_multiplier": -1}}, "dp.noise_multiplier"),
    ({"dataset": {"name": "digits"}, "dp": {"enabled": True, "noise_multiplier": 1, "delta": 2}}, "dp.delta"),
    ({"dataset": {"name": "digits"}, "watermark": {"enabled": True, "schedule": "later"}}, "watermark.schedule"),
    ({"dataset": {"name": "digits"}, "watermark": {"enabled": True, "weight": 1.5}}, "watermark.weight"),
    ({"dataset": {"name": "digits"}, "model": {"hidden": [64, 0]}}, "model.hidden"),
    ({"dataset": {"name": "digits"}, "model": {"arch": "transformer"}}, "model.arch"),
    ({"dataset": {"name": "digits", "test_fraction": 1.0}}, "dataset.test_fraction"),
    ({"dataset": {"name": "digits"}, "attestation": {"backend": "tpm"}}, "attestation.tpm"),
    ({"dataset": {"name": "digits"}, "attestation": {"backend": "sgx"}}, "attestation.backend"),
    ({"dataset": {}}, "dataset.name"),
    ({"dataset": "digits"}, "dataset"),
    ({"dataset": {"name": "digits"}, "release_key": "missing.pem"}, "release_key"),
    ({"dataset": {"name": "nope.csv"}}, "dataset.name"),
    ({"dataset": {"name": "table.parquet"}}, "dataset.name"),
])
def test_mistakes_name_the_file_and_the_field(tmp_path, data, field):
    message = error_of(tmp_path, data)
    assert f"{field}:" in message, message


def test_not_yaml_and_not_a_mapping(tmp_path):
    assert "not valid YAML" in error_of(tmp_path, "dataset: [unclosed")
    assert "expected a mapping" in error_of(tmp_path, "- just\n- a list\n")
    with pytest.raises(LaminateError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml")


def test_dataset_path_is_relative_to_the_config_file(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "t.csv").write_text("a,label\n0.5,1\n")
    config = load_config(write(tmp_path, {"dataset": {"name": "data/t.csv"}}))
    assert config.dataset_path() == tmp_path / "data" / "t.csv"


def test_overrides_are_revalidated(tmp_path):
    config = load_config(write(tmp_path, {"dataset": {"name": "digits"}}))
    assert config.with_overrides(**{"training.epochs": 3})["training"]["epochs"] == 3
    with pytest.raises(LaminateError, match="training.epochs"):
        config.with_overrides(**{"training.epochs": 0})


def test_default_release_key_honours_laminate_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LAMINATE_HOME", str(tmp_path))
    assert default_release_key_path() == tmp_path / "release-ed25519.pem"
    assert from_dict({"dataset": {"name": "digits"}}).release_key_path() == tmp_path / "release-ed25519.pem"


def test_unusable_out_dir_is_named_before_training(tmp_path, monkeypatch):
    from attest.train import train_from_config

    monkeypatch.setenv("LAMINATE_HOME", str(tmp_path / "home"))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = write(tmp_path, {"dataset": {"name": "digits"}, "training": {"epochs": 1},
                              "attestation": {"sim_dir": str(tmp_path / "sim")}})
    with pytest.raises(LaminateError, match="a-file/out: cannot create the output directory"):
        train_from_config(config, blocker / "out", progress=lambda line: pytest.fail(line))


def test_start_files_are_named_when_missing_or_alone(tmp_path):
    message = error_of(tmp_path, {"dataset": {"name": "digits"}, "model": {"weights": "nope.pt"}})
    assert "model.weights: file not found" in message
    message = error_of(tmp_path, {"dataset": {"name": "digits"}, "model": {"parent_card": "card.cbor"}})
    assert "model.parent_card: a parent card needs model.weights" in message


def test_weights_and_parent_card_are_host_local_and_choose_the_start(tmp_path):
    (tmp_path / "w.pt").write_bytes(b"x")
    (tmp_path / "card.cbor").write_bytes(b"x")
    config = load_config(write(tmp_path, {"dataset": {"name": "digits"},
                                          "model": {"weights": "w.pt"}}))
    assert config.start()["kind"] == "external" and config.start()["weights"] == tmp_path / "w.pt"
    assert "weights" not in config.measured()["model"]
    config = load_config(write(tmp_path, {"dataset": {"name": "digits"},
                                          "model": {"weights": "w.pt", "parent_card": "card.cbor"}}))
    assert config.start()["kind"] == "parent" and "parent_card" not in config.measured()["model"]


def test_a_weights_file_that_is_not_a_state_dict_is_one_line_exit_2(tmp_path, capsys):
    pytest.importorskip("torch")
    from laminate.cli import main

    (tmp_path / "w.pt").write_bytes(b"not a torch file")
    path = write(tmp_path, {"dataset": {"name": "digits"}, "model": {"weights": "w.pt"},
                            "training": {"epochs": 1}})
    assert main(["train", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "model.weights: not a state_dict for this model (UnpicklingError" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_a_weights_file_far_larger_than_the_model_is_refused_unread(tmp_path, capsys):
    """The size bound comes before torch reads anything: a 4 GiB (sparse) file is refused
    at once, naming the field and both sizes."""
    pytest.importorskip("torch")
    from laminate.cli import main

    with open(tmp_path / "w.pt", "wb") as f:
        f.truncate(4 << 30)
    path = write(tmp_path, {"dataset": {"name": "digits"}, "model": {"weights": "w.pt"},
                            "training": {"epochs": 1}})
    assert main(["train", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"model.weights: {4 << 30} bytes, more than twice this model's" in err, err
    assert "Traceback" not in err and len(err.splitlines()) == 1
