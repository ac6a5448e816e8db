"""Real service processes for tests and benchmarks: uvicorn on 127.0.0.1 and a free port.

Tests talk to the service over loopback exactly as clients do, so what they check is the
deployed stack (uvicorn, FastAPI, SQLAlchemy, the database), not an in-process shortcut.
"""
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, proc, url, log_path):
        self.proc = proc
        self.url = url
        self.log_path = log_path

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """kill -9: no shutdown handler runs, in-flight requests die mid-way."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def start_server(workdir, *, database_url, policy_path=None, tokens=("test-token",),
                 key_path=None, max_upload_mb=None, allow_prediction_urls=False,
                 via_cli=False, workers=1, timeout=90.0) -> Server:
    """Start the service in a subprocess and wait until /healthz answers."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = dict(os.environ)
    env.update({
        "LAMINATE_DATABASE_URL": database_url,
        "LAMINATE_POLICY": str(policy_path or ""),
        "LAMINATE_API_TOKEN": ",".join(tokens),
        "LAMINATE_SERVICE_KEY": str(key_path or ""),
        "LAMINATE_ALLOW_PREDICTION_URLS": "1" if allow_prediction_urls else "",
        "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
    })
    if max_upload_mb is not None:
        env["LAMINATE_MAX_UPLOAD_MB"] = str(max_upload_mb)
    if via_cli or workers > 1:   # `laminate serve` runs its own Nagle-free workers
        cmd = [sys.executable, "-m", "laminate", "serve", "--host", "127.0.0.1",
               "--port", str(port), "--workers", str(workers)]
    else:
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "registry.app:app_from_env",
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    log_path = workdir / f"server-{port}-{uuid.uuid4().hex[:6]}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log_file,
                                stderr=subprocess.STDOUT)
    server = Server(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode}:\n{server.log()}")
        try:
            with urllib.request.urlopen(server.url + "/healthz", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"service did not answer /healthz within {timeout:.0f}s:\n{server.log()}")
