"""SIGTERM: the neuron stops admitting, lets in-flight streams finish, unloads, and exits 0."""

from __future__ import annotations

import json
import signal
import threading

import httpx

from tests.serving.conftest import start_neuron, stop_neuron


def test_sigterm_drains_in_flight_and_exits_zero(tmp_path):
    n = start_neuron(tmp_path)
    try:
        body = {"model": "qwen3.6-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 48,
                "stream": True, "ignore_eos": True, "chat_template_kwargs": {"enable_thinking": False}}
        refused: list[int] = []
        with httpx.Client(base_url=n.url, timeout=120) as c, c.stream("POST", "/v1/chat/completions",
                                                                       json=body) as s:
            lines = s.iter_lines()
            next(ln for ln in lines if ln.startswith("data:"))
            n.proc.send_signal(signal.SIGTERM)

            def late_request():  # arrives while draining: refused (503) or the listener is already gone
                try:
                    refused.append(httpx.post(f"{n.url}/v1/chat/completions", json={**body, "stream": False},
                                              timeout=30).status_code)
                except httpx.HTTPError:
                    refused.append(-1)

            n.wait_for(lambda: "signal received" in n.log(), 30, "drain start")
            t = threading.Thread(target=late_request)
            t.start()
            rest = [ln for ln in lines if ln.startswith("data:")]
            t.join(60)
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2][5:])["choices"][0]["finish_reason"] == "length"  # finished, not aborted
        assert refused and refused[0] in (503, -1)
        assert n.proc.wait(60) == 0
        assert "model unloaded" in n.log()
    finally:
        stop_neuron(n)
