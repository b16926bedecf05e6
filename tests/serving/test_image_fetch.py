"""Operator-allow-listed image fetching: a neuron with ``image_fetch_hosts = ["127.0.0.1"]`` (plain http allowed,
1 s timeout, small byte cap) against a tiny local HTTP server: good image, redirect, 404, oversized, slow."""

from __future__ import annotations

import base64
import contextlib
import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from tests.serving.conftest import free_port, start_neuron, stop_neuron

MODEL = "qwen3.6-tiny"
NO_THINK = {"chat_template_kwargs": {"enable_thinking": False}}
MAX_IMAGE_BYTES = 200_000
TIMEOUT_S = 1.0


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (256, 256), (200, 30, 90)).save(buf, format="PNG")  # same image as test_openai_api
    return buf.getvalue()


PNG = _png()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path == "/cat.png":
            self._send(200, PNG, {"Content-Type": "image/png", "Content-Length": str(len(PNG))})
        elif self.path == "/redirect":
            self._send(302, b"", {"Location": "/cat.png", "Content-Length": "0"})
        elif self.path == "/big":  # no Content-Length: the cap must stop the stream itself
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            with contextlib.suppress(OSError):  # the neuron hangs up once over the cap
                for _ in range(64):
                    self.wfile.write(b"\0" * 65536)
        elif self.path == "/slow":
            time.sleep(TIMEOUT_S * 4)
            self._send(200, PNG, {"Content-Type": "image/png", "Content-Length": str(len(PNG))})
        else:
            self._send(404, b"not here", {"Content-Length": "8"})

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def images():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def fetching_neuron(tmp_path_factory):
    n = start_neuron(tmp_path_factory.mktemp("fetch"), {
        "image_fetch_hosts": ["127.0.0.1"], "image_fetch_allow_http": True, "image_fetch_timeout_s": TIMEOUT_S,
        "max_image_bytes": MAX_IMAGE_BYTES})
    try:
        yield n
    finally:
        stop_neuron(n)


def _chat(neuron, *urls: str):
    content = [{"type": "text", "text": "What is this?"}]
    content += [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    with neuron.client() as c:
        return c.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 1, **NO_THINK,
                                                     "messages": [{"role": "user", "content": content}]})


def _refused(r, needle: str, code: str = "image_fetch_failed", part: int = 1) -> dict:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == f"messages.0.content.{part}.image_url.url", err
    assert err["code"] == code and needle in err["message"], err
    return err


def test_allowed_host_counts_like_a_data_uri(fetching_neuron, images):
    fetched = _chat(fetching_neuron, f"http://127.0.0.1:{images}/cat.png")
    assert fetched.status_code == 200, fetched.text
    inline = _chat(fetching_neuron, "data:image/png;base64," + base64.b64encode(PNG).decode())
    assert inline.status_code == 200, inline.text
    assert fetched.json()["usage"]["prompt_tokens"] == inline.json()["usage"]["prompt_tokens"]
    text_only = _chat(fetching_neuron)
    assert fetched.json()["usage"]["prompt_tokens"] - text_only.json()["usage"]["prompt_tokens"] == 64 + 2


def test_failures_are_400_and_the_neuron_keeps_serving(fetching_neuron, images):
    base = f"http://127.0.0.1:{images}"
    _refused(_chat(fetching_neuron, f"http://localhost:{images}/cat.png"), "not allowed", "image_url_not_allowed")
    _refused(_chat(fetching_neuron, "https://example.com/cat.png"), "not allowed", "image_url_not_allowed")
    _refused(_chat(fetching_neuron, f"{base}/redirect"), f"{base}/redirect redirects (HTTP 302")
    _refused(_chat(fetching_neuron, f"{base}/missing"), "HTTP 404")
    _refused(_chat(fetching_neuron, f"{base}/big"), f"larger than the image limit of {MAX_IMAGE_BYTES}")
    _refused(_chat(fetching_neuron, f"{base}/cat.png", f"{base}/gone"), "HTTP 404", part=2)  # concurrent pair
    t0 = time.monotonic()
    _refused(_chat(fetching_neuron, f"{base}/slow"), "timed out after 1 s")
    assert time.monotonic() - t0 < TIMEOUT_S + 1.5
    port = free_port()  # nothing listens there
    _refused(_chat(fetching_neuron, f"http://127.0.0.1:{port}/cat.png"), "ConnectError")
    ok = _chat(fetching_neuron, f"{base}/cat.png")
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1, ok.text
