"""Datasets: scaling of the named sets, CSV/NPZ loading, label checks naming the field,
and a split that is deterministic and disjoint."""
import numpy as np
import pytest
import yaml

from attest import datasets as ds
from attest.config import load_config
from cards.errors import LaminateError


def config_for(tmp_path, dataset: dict):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"dataset": dataset}))
    return load_config(path)


def test_digits_scaled_to_unit_range():
    data = ds.load_digits()
    assert data.x.shape == (1797, 1, 8, 8) and data.x.dtype == np.float32
    assert data.x.min() == 0.0 and data.x.max() == 1.0
    assert data.classes == 10 and data.y.dtype == np.int64


def test_mnist_5k_scaled_to_unit_range():
    data = ds.load_mnist_5k()
    assert data.x.shape == (5000, 1, 28, 28) and data.x.max() == 1.0
    assert sorted(set(data.y.tolist())) == list(range(10))


def test_csv_loads_features_and_infers_classes(tmp_path):
    (tmp_path / "t.csv").write_text("a,label,b\n0.5,2,1\n0.25,0,0\n1,1,0.5\n")
    data = ds.load_from_config(config_for(tmp_path, {"name": "t.csv"}))
    assert data.x.tolist() == [[0.5, 1.0], [0.25, 0.0], [1.0, 0.5]]
    assert data.y.tolist() == [2, 0, 1] and data.classes == 3 and data.name == "t.csv"


@pytest.mark.parametrize("text, dataset, needle", [
    ("a,label\n0.5,1\n0.2,7\n", {"classes": 3}, "dataset.classes"),
    ("a,label\n0.5,1\n0.2,-1\n", {}, "label -1 is negative"),
    ("a,label\n0.5,1\n0.2,1.5\n", {}, "is not an integer"),
    ("a,label\n0.5,1\nx,1\n", {}, "line 3: column 'a'"),
    ("a,y\n0.5,1\n", {}, "dataset.label_column"),
    ("a,label\n0.5,1\n0.2\n", {}, "line 3"),
    ("", {}, "empty CSV file"),
    ("a,label\n\n", {}, "no records"),
])
def test_csv_mistakes_are_named(tmp_path, text, dataset, needle):
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(LaminateError) as info:
        ds.load_from_config(config_for(tmp_path, {"name": "t.csv", **dataset}))
    assert needle in str(info.value), str(info.value)


def test_npz_roundtrip_and_label_range(tmp_path):
    x = np.random.default_rng(0).random((20, 3, 3))
    y = np.arange(20) % 4
    np.savez(tmp_path / "d.npz", x=x, y=y)
    data = ds.load_from_config(config_for(tmp_path, {"name": "d.npz"}))
    assert data.input_shape == (3, 3) and data.classes == 4
    assert np.array_equal(data.x, x.astype(np.float32))
    with pytest.raises(LaminateError, match="dataset.classes"):
        ds.load_from_config(config_for(tmp_path, {"name": "d.npz", "classes": 3}))
    np.savez(tmp_path / "bad.npz", features=x, y=y)
    with pytest.raises(LaminateError, match="missing array 'x'"):
        ds.load_from_config(config_for(tmp_path, {"name": "bad.npz"}))


def test_named_dataset_refuses_a_wrong_class_count(tmp_path):
    with pytest.raises(LaminateError, match="dataset.classes"):
        ds.load_from_config(config_for(tmp_path, {"name": "digits", "classes": 5}))


def test_split_is_deterministic_disjoint_and_complete():
    data = ds.load_digits()
    train, test = ds.split(data, 0.2, seed=7)
    again_train, _ = ds.split(data, 0.2, seed=7)
    other_train, _ = ds.split(data, 0.2, seed=8)
    assert len(test) == 359 and len(train) + len(test) == len(data)
    assert np.array_equal(train.x, again_train.x)
    assert not np.array_equal(train.y, other_train.y)
    rows = {r.tobytes() + bytes([label]) for r, label in zip(data.x, data.y)}
    assert {r.tobytes() + bytes([label]) for r, label in zip(np.concatenate([train.x, test.x]),
                                                            np.concatenate([train.y, test.y]))} == rows
    assert train.classes == test.classes == 10


def test_torch_dataset_is_materialised_as_given():
    import torch

    x = torch.rand(12, 5)
    y = torch.arange(12) % 3
    data = ds.as_array_data(torch.utils.data.TensorDataset(x, y), "tensors")
    assert np.array_equal(data.x, x.numpy()) and data.y.tolist() == y.tolist() and data.classes == 3
    records = list(data.records())
    assert len(records) == 12 and records[4][1] == 1
    with pytest.raises(LaminateError, match="not an \\(input, label\\) pair"):
        ds.as_array_data([torch.zeros(3)], "bare")
