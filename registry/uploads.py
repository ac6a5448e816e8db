"""Reading forms and uploaded model files."""
from __future__ import annotations

import hashlib
import os

from fastapi import UploadFile

from cards.errors import LaminateError


def save_upload(upload: UploadFile, directory: str) -> tuple[str, str]:
    """Copy an upload to a private temp file; returns (path, sha256 hex)."""
    path = os.path.join(directory, "model.onnx")
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        while True:
            chunk = upload.file.read(1 << 20)
            if not chunk:
                break
            digest.update(chunk)
            out.write(chunk)
    return path, digest.hexdigest()


VERIFY_FORM = {
    "type": "object", "required": ["card_id"],
    "properties": {
        "card_id": {"type": "string", "description": "SHA-256 hex of the registered card"},
        "model_sha256": {"type": "string", "description": "the model's SHA-256 hex, "
                                                          "instead of uploading it"},
        "model": {"type": "string", "format": "binary", "description": "the model file"},
    },
}


def form_text(form, name: str, *, required: bool = False) -> str | None:
    value = form.get(name)
    if value is None or value == "":
        if required:
            raise LaminateError(f"{name}: required form field is missing")
        return None
    if not isinstance(value, str):
        raise LaminateError(f"{name}: expected a text field, got a file upload")
    return value
