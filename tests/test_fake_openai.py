"""The fake OpenAI server itself, driven over real sockets (no teacher involved)."""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest

from lamini.testing.fake_openai import FakeOpenAIServer


def _post(server, body: dict, path: str = "/v1/chat/completions", headers: dict | None = None):
    """One request on a fresh connection -> (status, headers, decoded body or raw bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        raw = resp.read()
        try:
            data = json.loads(raw)
        except ValueError:
            data = raw
        return resp.status, dict(resp.headers), data
    finally:
        conn.close()


def _chat(prompt: str, max_tokens: int = 100, system: str | None = "be brief") -> dict:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return {"model": "fake-model", "messages": messages, "max_tokens": max_tokens}


def test_completion_echoes_and_counts_words(fake_openai):
    status, _, data = _post(fake_openai, _chat("name three colours"))
    assert status == 200
    assert data["object"] == "chat.completion"
    choice = data["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "echo: name three colours"}
    assert choice["finish_reason"] == "stop"
    assert data["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}

    status, _, data = _post(fake_openai, _chat("one two three four five", max_tokens=3))
    assert data["choices"][0]["message"]["content"] == "echo: one two"
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 3


def test_azure_route_and_stats(fake_openai):
    path = "/openai/deployments/my-dep/chat/completions?api-version=2024-06-01"
    status, _, data = _post(fake_openai, {"messages": [{"role": "user", "content": "hi"}]}, path, {"api-key": "k"})
    assert status == 200 and data["model"] == "fake"
    stats = fake_openai.stats()
    assert stats["by_target"] == {path: 1}
    assert stats["auth_headers_seen"] == 1 and stats["auth_schemes"] == {"api-key": 1}
    assert stats["by_prompt"] == {"hi": 1}
    fake_openai.reset_stats()
    assert fake_openai.stats()["total_requests"] == 0


def test_unknown_route_and_bad_body(fake_openai):
    assert _post(fake_openai, _chat("x"), path="/v1/nothing")[0] == 404
    assert _post(fake_openai, {"not": "chat"})[0] == 400
    assert fake_openai.stats()["total_requests"] == 0  # neither counts as a chat request


def test_marker_fails_first_n_attempts_then_succeeds(fake_openai):
    prompt = "tell me [fault:503x2]"
    assert [_post(fake_openai, _chat(prompt))[0] for _ in range(3)] == [503, 503, 200]
    assert [_post(fake_openai, _chat("always [fault:500]"))[0] for _ in range(3)] == [500, 500, 500]
    assert _post(fake_openai, _chat("bad [fault:400]"))[0] == 400
    stats = fake_openai.stats(detail=True)
    assert stats["by_prompt"][prompt] == 3
    assert stats["outcomes_by_prompt"][prompt] == ["503", "503", "ok"]
    assert stats["faults"] == {"503": 2, "500": 3, "400": 1}
    assert stats["ok"] == 1


def test_429_retry_after_configurable(fake_openai):
    status, headers, data = _post(fake_openai, _chat("a [fault:429]"))
    assert status == 429 and float(headers["Retry-After"]) == 0.05
    assert data["error"]["type"] == "rate_limit_exceeded"
    fake_openai.configure(retry_after_s=0.3)
    assert float(_post(fake_openai, _chat("b [fault:429]"))[1]["Retry-After"]) == 0.3
    fake_openai.configure(retry_after_s=None)
    assert "Retry-After" not in _post(fake_openai, _chat("c [fault:429]"))[1]


def test_malformed_and_empty_choices(fake_openai):
    status, _, raw = _post(fake_openai, _chat("m [fault:malformed]"))
    assert status == 200 and isinstance(raw, bytes)  # not JSON
    status, _, data = _post(fake_openai, _chat("e [fault:empty_choices]"))
    assert status == 200 and data["choices"] == [] and data["object"] == "chat.completion"


def _raw_request(server, prompt: str) -> bytes:
    body = json.dumps(_chat(prompt)).encode()
    return b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def test_disconnect_and_hang(fake_openai):
    with socket.create_connection(("127.0.0.1", fake_openai.port), timeout=5) as s:
        s.sendall(_raw_request(fake_openai, "d [fault:disconnect]"))
        assert s.recv(1024) == b""  # closed without an answer
    with socket.create_connection(("127.0.0.1", fake_openai.port), timeout=0.3) as s:
        s.sendall(_raw_request(fake_openai, "h [fault:hang]"))
        with pytest.raises(socket.timeout):
            s.recv(1024)
        assert fake_openai.stats()["in_flight"] == 1
    deadline = time.monotonic() + 5
    while fake_openai.stats()["in_flight"] and time.monotonic() < deadline:  # released when the client hangs up
        time.sleep(0.02)
    assert fake_openai.stats()["in_flight"] == 0


def test_keep_alive_split_packets_and_pipelining(fake_openai):
    """Several requests on one connection; head and body in separate packets; two requests in one packet."""
    with socket.create_connection(("127.0.0.1", fake_openai.port), timeout=5) as s:
        req = _raw_request(fake_openai, "split")
        head_end = req.index(b"\r\n\r\n") + 4
        s.sendall(req[:head_end])
        time.sleep(0.05)
        s.sendall(req[head_end:])
        s.sendall(_raw_request(fake_openai, "p1") + _raw_request(fake_openai, "p2"))
        got = b""
        while got.count(b"HTTP/1.1 200") < 3 or not got.endswith(b"}"):
            got += s.recv(65536)
    assert got.count(b"HTTP/1.1 200 OK") == 3
    assert got.index(b"echo: split") < got.index(b"echo: p1") < got.index(b"echo: p2")
    assert fake_openai.stats()["connections"] == 2  # ours and the stats call's own


def test_random_faults_are_seeded():
    kinds = ("500", "503")
    outcomes = []
    for _ in range(2):
        with FakeOpenAIServer(seed=7, fault_rate=0.5, fault_kinds=kinds) as srv:
            outcomes.append([_post(srv, _chat(f"r{i}"))[0] for i in range(30)])
    assert outcomes[0] == outcomes[1]
    assert {200, 500, 503} == set(outcomes[0])


def test_expected_key_rejects_others():
    with FakeOpenAIServer(expected_api_key="sk-right") as srv:
        assert _post(srv, _chat("a"), headers={"Authorization": "Bearer sk-right"})[0] == 200
        assert _post(srv, _chat("b"), headers={"Authorization": "Bearer sk-wrong"})[0] == 401
        assert _post(srv, _chat("c"))[0] == 401
        stats = srv.stats()
        assert (stats["auth_matched"], stats["auth_mismatched"], stats["auth_headers_seen"]) == (1, 2, 2)
        assert "sk-right" not in json.dumps(stats)  # the server never echoes the key


def test_known_models_answer_others_with_openais_404(fake_openai):
    fake_openai.configure(known_models=["gpt-real"])
    assert _post(fake_openai, {**_chat("a"), "model": "gpt-real"})[0] == 200
    status, _, body = _post(fake_openai, _chat("b"))  # model "fake-model"
    assert status == 404 and body["error"]["code"] == "model_not_found" and "fake-model" in body["error"]["message"]
    assert fake_openai.stats()["faults"] == {"unknown_model": 1}
    fake_openai.configure(known_models=None)
    assert _post(fake_openai, _chat("c"))[0] == 200


def test_latency_overlaps_and_max_concurrent():
    with FakeOpenAIServer(latency_s=0.3) as srv:
        socks = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(5)]
        t0 = time.monotonic()
        for i, s in enumerate(socks):
            s.sendall(_raw_request(srv, f"slow {i}"))
        for s in socks:
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
            s.close()
        assert time.monotonic() - t0 < 1.0  # five 0.3 s answers overlap
        assert srv.stats()["max_concurrent"] == 5


def test_configure_rejects_unknown_settings(fake_openai):
    with pytest.raises(Exception, match="400"):
        fake_openai.configure(latency=1)
    with pytest.raises(Exception, match="400"):
        fake_openai.configure(fault_kinds=["bogus"])
    assert fake_openai.configure(latency_s=0.01)["latency_s"] == 0.01


def test_stop_ends_the_process_even_with_a_hung_request():
    srv = FakeOpenAIServer().start()
    proc = srv._proc
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(_raw_request(srv, "h [fault:hang]"))
        time.sleep(0.05)
        t0 = time.monotonic()
        srv.stop()
        assert proc.poll() is not None and time.monotonic() - t0 < 2


def test_response_format_free_text_and_refusal(fake_openai):
    """Structured outputs on the fake: a json_schema response_format gets the schema's JSON (at most
    maxItems); free_text_rate answers unconstrained generation prompts in tagless prose; with
    structured_outputs off, a response_format is refused with a 400 that names it."""
    import urllib.error
    import urllib.request

    prompt = "<example>Name a planet.</example>\nGenerate 6 diverse examples that are similar to the provided examples."
    schema = {"type": "object", "properties": {"instructions": {"type": "array", "maxItems": 4}}}

    def post(body: dict):
        r = urllib.request.Request(fake_openai.url + "/chat/completions", data=json.dumps(body).encode(),
                                   headers={"Content-Type": "application/json"}, method="POST")  # fmt: skip
        with urllib.request.urlopen(r, timeout=10) as resp:
            return json.loads(resp.read())["choices"][0]["message"]["content"]

    base = {"model": "m", "messages": [{"role": "user", "content": prompt}], "max_tokens": 500}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    items = json.loads(post({**base, "response_format": fmt}))["instructions"]
    assert len(items) == 4 and all(set(i) == {"instruction", "input"} for i in items)
    assert post(base).count("<example>") == 6
    fake_openai.configure(free_text_rate=1.0)
    assert "<example>" not in post(base)
    assert json.loads(post({**base, "response_format": fmt}))["instructions"]  # the schema still wins
    fake_openai.configure(structured_outputs=False)
    with pytest.raises(urllib.error.HTTPError) as e:
        post({**base, "response_format": fmt})
    assert e.value.code == 400 and "response_format" in e.value.read().decode()
