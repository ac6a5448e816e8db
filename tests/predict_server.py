"""A real HTTP prediction endpoint on 127.0.0.1 serving an ONNX model (labels only), for
tests and benchmarks of ownership tests against a deployed model.

``mode`` switches it into the failures an arbiter meets in practice; ``batches`` records
the size of every query batch it answered.
"""
import http.server
import json
import threading

import numpy as np

from verifier.suspect import OnnxSuspect


class PredictEndpoint:
    def __init__(self, model_path):
        self.model = OnnxSuspect(model_path)
        self.mode = "ok"
        self.closed = threading.Event()
        self.batches = []
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                x = np.asarray(body["inputs"], np.float32)
                endpoint.batches.append(len(x))
                labels = endpoint.model.predict(x).tolist()
                status, payload = 200, json.dumps({"labels": labels}).encode()
                if endpoint.mode == "500":
                    status, payload = 500, b"boom"
                elif endpoint.mode == "html":
                    payload = b"<html>hello</html>"
                elif endpoint.mode == "short":
                    payload = json.dumps({"labels": labels[:-1]}).encode()
                elif endpoint.mode == "strings":
                    payload = json.dumps({"labels": [str(v) for v in labels]}).encode()
                elif endpoint.mode == "huge":
                    payload = b'{"labels": [' + b"0, " * (1 << 19) + b"0]}"
                elif endpoint.mode == "nested":
                    payload = b"[" * 100_000 + b"]" * 100_000
                elif endpoint.mode == "hugeint":
                    payload = json.dumps({"labels": [10**30] * len(labels)}).encode()
                elif endpoint.mode == "drip":      # one byte a second, each read on time
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    for byte in payload:
                        if endpoint.closed.wait(1.0):
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    return
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/predict"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.closed.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
