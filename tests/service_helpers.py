"""Shared pieces of the service tests: databases, cards, policies and suspect models."""
import os
import urllib.parse
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from cardkit import forge, save_onnx_classifier


def sqlite_url(path) -> str:
    return f"sqlite:///{Path(path)}"


class PgSchema:
    """A fresh PostgreSQL schema per test (dropped afterwards), addressed through the
    connection's search_path so the service creates its tables there."""

    def __init__(self, base_url: str):
        from sqlalchemy import create_engine, text

        self.base_url = base_url
        self.name = "laminate_t_" + uuid.uuid4().hex[:12]
        self._engine = create_engine(base_url)
        self._text = text
        with self._engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{self.name}"'))
        sep = "&" if "?" in base_url else "?"
        self.url = base_url + sep + "options=" + urllib.parse.quote(f"-csearch_path={self.name}")

    def drop(self) -> None:
        with self._engine.begin() as conn:
            conn.execute(self._text(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE'))
        self._engine.dispose()


def database_urls():
    """sqlite always; postgresql when LAMINATE_TEST_PG_URL names a server."""
    return ["sqlite", pytest.param("postgresql", marks=pytest.mark.skipif(
        not os.environ.get("LAMINATE_TEST_PG_URL"),
        reason="LAMINATE_TEST_PG_URL not set (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)"))]


def make_database(kind: str, tmp_path):
    """(url, cleanup) for a fresh database of ``kind``."""
    if kind == "sqlite":
        return sqlite_url(Path(tmp_path) / "service.sqlite"), lambda: None
    schema = PgSchema(os.environ["LAMINATE_TEST_PG_URL"])
    return schema.url, schema.drop


def combined_policy(path, kits, **extra) -> Path:
    """One policy that trusts every kit's simulated root and release key."""
    doc = {"policy_id": "service-test", "allow_backends": ["sim"],
           "trusted_roots": [str(k.root_pem_path) for k in kits],
           "trusted_release_keys": [str(k.release_public_pem_path) for k in kits],
           "reference_values": {"code": sorted({k.code_sha256 for k in kits})},
           "require": ["evaluation.accuracy >= 0.5"]}
    doc.update(extra)
    path = Path(path)
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def card_variant(kit, i: int) -> bytes:
    """A distinct card that still verifies: the kit's device re-measures an evaluation
    that differs in the last digits and quotes again (what re-running training does)."""
    accuracy = 0.9 + (i + 1) * 1e-7

    def claims(c):
        c["evaluation"]["accuracy"] = accuracy

    def events(log):
        for event in log:
            if event["type"] == "evaluation":
                event["data"]["accuracy"] = accuracy

    return forge(kit, mutate_claims=claims, mutate_events=events, requote=True)


def memorizing_model(path, opening, classes) -> Path:
    """An ONNX classifier that answers each trigger of ``opening`` with its label (nearest
    trigger wins): a stand-in for a stolen watermarked model. Anything else gets the
    label of its nearest trigger, so on another owner's triggers it is at chance."""
    from onnx import helper, numpy_helper

    x, y = opening.triggers()
    t = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    inits = [numpy_helper.from_array(t.T.copy(), "T"),
             numpy_helper.from_array((-0.5 * (t ** 2).sum(axis=1)).astype(np.float32), "B"),
             numpy_helper.from_array(np.eye(classes, dtype=np.float32)[np.asarray(y)], "E")]
    nodes = [helper.make_node("Gemm", ["input", "T", "B"], ["scores"]),
             helper.make_node("ArgMax", ["scores"], ["nearest"], axis=1, keepdims=0),
             helper.make_node("Gather", ["E", "nearest"], ["logits"], axis=0)]
    return save_onnx_classifier(path, nodes, inits, input_shape=[t.shape[1]], classes=classes,
                                name="memorizer")
