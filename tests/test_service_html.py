"""The card page a browser gets from the service renders in headless Chromium and shows
the key fields and the simulated-hardware banner."""
import os
import shutil
import subprocess

import httpx
import pytest

from cardkit import make_card
from servers import start_server
from service_helpers import combined_policy

TOKEN = "html-token"


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("chromium is required in CI for the card page test")
    pytest.skip("chromium not installed (apt-get install chromium)")


def _run(chromium, *args, cwd):
    return subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--hide-scrollbars", f"--user-data-dir={cwd / 'profile'}", *args],
        cwd=cwd, capture_output=True, timeout=120)


def test_card_page_renders_in_chromium(tmp_path):
    chromium = _chromium()
    kit = make_card(tmp_path / "kit")
    policy = combined_policy(tmp_path / "policy.yaml", [kit])
    server = start_server(tmp_path / "svc", database_url=f"sqlite:///{tmp_path / 's.sqlite'}",
                          policy_path=policy, tokens=(TOKEN,))
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            body = client.post("/v1/cards", content=kit.card_bytes,
                               headers={"Authorization": f"Bearer {TOKEN}",
                                        "Content-Type": "application/cbor"}).json()
            card_id = body["card_id"]
            page = client.get(f"/v1/cards/{card_id}", headers={"Accept": "text/html"}).text
        url = f"{server.url}/v1/cards/{card_id}?format=html"
        shot = tmp_path / "card.png"
        result = _run(chromium, f"--screenshot={shot}", "--window-size=1200,1600", url,
                      cwd=tmp_path)
        assert shot.is_file(), result.stderr.decode(errors="replace")[-2000:]
        png = shot.read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
        dom = _run(chromium, "--dump-dom", url, cwd=tmp_path).stdout.decode(errors="replace")
    finally:
        server.stop()
    for text in (page, dom):
        assert "SIMULATED HARDWARE" in text
        assert kit.claims["model"]["sha256"] in text
        assert kit.claims["model"]["name"] in text
        assert card_id in text
        assert "Transparency log" in text
        assert f"log index: {body['leaf_index']}" in text
