"""Datasets by path: every format and shard split of the same records gives one root."""
import io
import json
import tarfile
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from attest import datasets, formats, measure
from attest.config import from_dict
from cards import merkle
from cards.errors import LaminateError

CLASSES = 3


def _images(mode="L", per_class=4, size=(5, 6)):
    """Deterministic small images, class by class, and their PNG bytes."""
    rng = np.random.default_rng(0)
    shape = size[::-1] + ((3,) if mode == "RGB" else ())
    out = []
    for label in range(CLASSES):
        for _ in range(per_class):
            pixels = rng.integers(0, 256, shape, dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels, mode).save(buf, format="PNG")
            out.append((pixels, label, buf.getvalue()))
    return out


def _expected_root(samples):
    leaves = []
    for pixels, label, _ in samples:
        x = datasets.scale(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1),
                           0.0, 255.0)
        leaves.append(merkle.leaf_hash(measure.record_bytes(x, label)))
    return merkle.root_of(leaves).hex()


def _root(path, classes=CLASSES, **kw):
    return measure.dataset_claim_batches("d", formats.batches(path, **kw), classes)["merkle_root"]


def _image_folder(root, samples):
    for i, (_, label, png) in enumerate(samples):
        folder = root / f"class-{label}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img-{i:03d}.png").write_bytes(png)
    return root


def _webdataset(path, samples, shards):
    path.mkdir()
    cuts = np.array_split(np.arange(len(samples)), shards)
    for s, idx in enumerate(cuts):
        with tarfile.open(path / f"shard-{s:06d}.tar", "w") as tar:
            for i in idx:
                for ext, data in ((".png", samples[i][2]), (".cls", str(samples[i][1]).encode())):
                    info = tarfile.TarInfo(f"sample{i:05d}{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return path


def _image_table(samples):
    return pa.table({"image": [{"bytes": png, "path": None} for _, _, png in samples],
                     "label": pa.array([label for _, label, _ in samples], pa.int64())})


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_image_folder_parquet_webdataset_and_huggingface_give_one_root(tmp_path, mode):
    samples = _images(mode)
    expected = _expected_root(samples)
    roots = {"imagefolder": _root(_image_folder(tmp_path / "folder", samples))}
    table = _image_table(samples)
    pq.write_table(table, tmp_path / "one.parquet")
    roots["parquet"] = _root(tmp_path / "one.parquet")
    (tmp_path / "pq").mkdir()
    pq.write_table(table.slice(0, 5), tmp_path / "pq" / "part-0.parquet", row_group_size=2)
    pq.write_table(table.slice(5), tmp_path / "pq" / "part-1.parquet", row_group_size=3)
    roots["parquet, 2 files"] = _root(tmp_path / "pq")
    roots["webdataset"] = _root(_webdataset(tmp_path / "wds1", samples, 1))
    roots["webdataset, 3 shards"] = _root(_webdataset(tmp_path / "wds3", samples, 3))
    hf = tmp_path / "hf"    # the layout Dataset.save_to_disk writes
    hf.mkdir()
    for n, part in enumerate((table.slice(0, 7), table.slice(7))):
        with pa.ipc.new_stream(hf / f"data-{n:05d}-of-00002.arrow", table.schema) as writer:
            writer.write_table(part)
    (hf / "state.json").write_text(json.dumps({"_data_files": [
        {"filename": "data-00000-of-00002.arrow"}, {"filename": "data-00001-of-00002.arrow"}]}))
    (hf / "dataset_info.json").write_text(json.dumps({"features": {
        "image": {"_type": "Image"},
        "label": {"_type": "ClassLabel", "names": [f"c{i}" for i in range(CLASSES)]}}}))
    roots["huggingface"] = _root(hf)
    assert roots == dict.fromkeys(roots, expected)
    assert formats.class_count(hf) == formats.class_count(tmp_path / "folder") == CLASSES


def test_numbers_as_lists_csv_and_npz_give_the_image_root(tmp_path):
    samples = _images("L")
    expected = _expected_root(samples)
    x = np.stack([datasets.scale(p, 0.0, 255.0) for p, _, _ in samples]).reshape(len(samples), -1)
    y = np.array([label for _, label, _ in samples])
    pq.write_table(pa.table({"pixels": pa.array(list(x), pa.list_(pa.float32())), "label": y}),
                   tmp_path / "lists.parquet")
    lines = ["label," + ",".join(f"p{i}" for i in range(x.shape[1]))]
    lines += [f"{label}," + ",".join(repr(float(v)) for v in row) for row, label in zip(x, y)]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    np.savez(tmp_path / "d.npz", x=x, y=y)
    roots = {name: _root(tmp_path / name) for name in ("lists.parquet", "d.csv", "d.npz")}
    assert roots == dict.fromkeys(roots, expected)


def test_another_record_order_or_a_changed_pixel_changes_the_root(tmp_path):
    samples = _images("L")
    base = _root(_webdataset(tmp_path / "a", samples, 2))
    assert _root(_webdataset(tmp_path / "b", samples[::-1], 2)) != base
    pixels, label, _ = samples[3]
    changed = pixels.copy()
    changed[0, 0] ^= 1
    buf = io.BytesIO()
    Image.fromarray(changed, "L").save(buf, format="PNG")
    assert _root(_webdataset(tmp_path / "c", [*samples[:3], (changed, label, buf.getvalue()),
                                               *samples[4:]], 2)) != base


def test_webdataset_is_streamed_a_batch_at_a_time(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "w").mkdir()
    with tarfile.open(tmp_path / "w" / "big.tar", "w") as tar:
        for i in range(1500):
            buf = io.BytesIO()
            np.save(buf, rng.random(512, dtype=np.float32))   # 2 KiB per record: 3 MiB in all
            for ext, data in ((".npy", buf.getvalue()), (".cls", b"1")):
                info = tarfile.TarInfo(f"s{i:05d}{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    tracemalloc.start()
    try:
        claim = measure.dataset_claim_batches("w", formats.batches(tmp_path / "w", batch=64), 2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert claim["records"] == 1500
    assert peak < 1 << 20, f"peak {peak} bytes: the 3 MiB dataset was held whole"


def test_config_trains_on_an_image_folder_by_path(tmp_path):
    _image_folder(tmp_path / "imgs", _images("L"))
    config = from_dict({"dataset": {"name": "imgs"}}, source=tmp_path / "run.yaml")
    data = datasets.load_from_config(config)
    assert data.classes == CLASSES and data.input_shape == (1, 6, 5) and len(data) == 12
    claim = datasets.preprocessing_claim(data)
    assert claim["divide"] == 255.0 and claim["class_names"] == ["class-0", "class-1", "class-2"]


@pytest.mark.parametrize("build,reason", [
    (lambda p: p.joinpath("d.txt").write_text("x"), "unknown format .txt"),
    (lambda p: p.joinpath("e").mkdir(), "no class folders, .parquet, .tar or state.json"),
    (lambda p: p.joinpath("f", "c0").mkdir(parents=True), "class folder without images"),
])
def test_unreadable_dataset_paths_name_the_path_and_reason(tmp_path, build, reason):
    build(tmp_path)
    target = next(tmp_path.iterdir())
    with pytest.raises(LaminateError, match=reason):
        list(formats.batches(target))


def test_config_refuses_a_path_no_reader_fits(tmp_path):
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(LaminateError, match=r"run.yaml: dataset.name: .*d.txt: unknown format"):
        from_dict({"dataset": {"name": "d.txt"}}, source=tmp_path / "run.yaml")


def test_bad_webdataset_samples_and_images_name_shard_and_sample(tmp_path):
    (tmp_path / "w").mkdir()
    with tarfile.open(tmp_path / "w" / "a.tar", "w") as tar:
        for name, data in (("k1.png", b"not a png"), ("k1.cls", b"0"), ("k2.cls", b"1")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(LaminateError, match=r"a.tar: sample k1: not a readable image"):
        list(formats.batches(tmp_path / "w"))
    with tarfile.open(tmp_path / "w" / "a.tar", "w") as tar:
        info = tarfile.TarInfo("k2.cls")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"1"))
    with pytest.raises(LaminateError, match=r"sample k2: needs one of .png"):
        list(formats.batches(tmp_path / "w"))


def test_streamed_csv_names_the_line_and_column_of_a_bad_value(tmp_path):
    """The streaming reader and the in-memory loader are one CSV reader: same message."""
    (tmp_path / "t.csv").write_text("a,b,label\n0.5,1,1\n0.2,oops,1\n")
    with pytest.raises(LaminateError) as streamed:
        list(formats.batches(tmp_path / "t.csv"))
    with pytest.raises(LaminateError) as loaded:
        datasets.load_csv(tmp_path / "t.csv", "label", None)
    assert "line 3: column 'b': 'oops' is not a number" in str(streamed.value)
    assert str(streamed.value) == str(loaded.value)
