"""The `openai` teacher against the real fake server, for both HTTP paths."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import pickle
import socket
import time

import pytest

from lamini.config import OpenAITeacherConfig
from lamini.engines import make_engine
from lamini.engines.abort import RunAborted
from lamini.engines.base import ChatRequest
from lamini.engines.openai_http import OpenAIEngine, TokenBucket, parse_retry_after
from lamini.testing.fake_openai import FakeOpenAIServer

KEY_ENV = "LAMINI_TEST_OPENAI_KEY"
SENTINEL = "sk-SENTINEL-3f9a1c77e2b04d8f"
CLIENTS = ["aiohttp", "openai"]
KIND_TO_ERROR = {
    "429": "http_429", "500": "http_500", "503": "http_503", "hang": "timeout",
    "malformed": "malformed_response", "empty_choices": "empty_choices", "disconnect": "connection",
}


@pytest.fixture(params=CLIENTS)
def http_client(request) -> str:
    return request.param


@pytest.fixture(autouse=True)
def _no_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)


def teacher(server: FakeOpenAIServer, http_client: str, **overrides) -> OpenAIEngine:
    share = overrides.pop("share", 1.0)
    # timeout_s: generous unless a test times out on purpose (hang faults set their own). At 0.5 s,
    # a full suite on 2 busy cores once timed out an attempt before it reached the server (the
    # client counted 3 attempts, the server 2), failing a test about which statuses are retried.
    fields = dict(model="fake-model", base_url=server.url, http_client=http_client, api_key_env=KEY_ENV,
                  backoff_base_s=0.01, backoff_max_s=0.1, timeout_s=5.0, max_retries=3)
    fields.update(overrides)
    return OpenAIEngine(OpenAITeacherConfig(**fields), share=share)


def req(prompt: str, max_tokens: int = 64, **kw) -> ChatRequest:
    return ChatRequest(messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": prompt}],
                       max_tokens=max_tokens, **kw)


def run(t: OpenAIEngine, requests: list[ChatRequest]):
    try:
        return t.generate(requests)
    finally:
        t.close()


def test_success_maps_text_finish_reason_usage(fake_openai, http_client):
    t = teacher(fake_openai, http_client, extra_body={"user": "lamini-test"})
    ok, cut = run(t, [req("list three colours", temperature=0.2, top_p=0.9, seed=11), req("one two three four", 3)])
    assert (ok.text, ok.finish_reason) == ("echo: list three colours", "stop")
    assert (ok.prompt_tokens, ok.completion_tokens) == (5, 4)
    assert ok.ok and ok.error is None and ok.attempts == 1 and ok.latency_s > 0
    assert (cut.text, cut.finish_reason, cut.completion_tokens) == ("echo: one two", "length", 3)
    stats = fake_openai.stats()
    assert stats["auth_headers_seen"] == 0  # loopback and no key set: no auth header at all
    assert stats["by_target"] == {"/v1/chat/completions": 2}
    sent = stats["last_body"]
    assert sent["model"] == "fake-model" and sent["user"] == "lamini-test"  # either request: they run concurrently


def test_sampling_params_are_sent(fake_openai, http_client):
    run(teacher(fake_openai, http_client), [req("x", 7, temperature=0.2, top_p=0.9, seed=11)])
    body = fake_openai.stats()["last_body"]
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["seed"]) == (0.2, 0.9, 7, 11)


def test_each_fault_kind_recovers_on_third_attempt(fake_openai, http_client):
    kinds = list(KIND_TO_ERROR)
    t = teacher(fake_openai, http_client, timeout_s=0.3)
    results = run(t, [req(f"q{i} [fault:{k}x2]") for i, k in enumerate(kinds)])
    for kind, r in zip(kinds, results):
        assert r.ok, (kind, r)
        assert r.attempts == 3, (kind, r)
        assert r.text.startswith("echo: q")
    assert results[kinds.index("hang")].latency_s >= 0.6  # two full timeouts
    by_prompt = fake_openai.stats()["by_prompt"]
    assert sorted(by_prompt.values()) == [3] * len(kinds)


def test_permanent_faults_end_as_one_recorded_error(fake_openai, http_client):
    kinds = list(KIND_TO_ERROR)
    t = teacher(fake_openai, http_client, timeout_s=0.2, max_retries=2)
    results = run(t, [req("fine")] + [req(f"p{i} [fault:{k}]") for i, k in enumerate(kinds)])
    assert results[0].ok and results[0].attempts == 1
    for kind, r in zip(kinds, results[1:]):
        assert not r.ok and r.text is None, (kind, r)
        assert r.error_kind == KIND_TO_ERROR[kind], (kind, r)
        assert r.attempts == 3 and r.error, (kind, r)
    assert all(n == 3 for p, n in fake_openai.stats()["by_prompt"].items() if p != "fine")


@pytest.mark.parametrize(
    "status,retried", [("400", False), ("401", False), ("404", False), ("408", True), ("409", True)]
)
def test_which_4xx_are_retried(fake_openai, http_client, status, retried):
    (r,) = run(teacher(fake_openai, http_client, max_retries=2), [req(f"c [fault:{status}]")])
    assert r.error_kind == f"http_{status}" and f"HTTP {status}" in r.error
    assert r.attempts == (3 if retried else 1)
    assert fake_openai.stats()["by_prompt"]["c [fault:" + status + "]"] == r.attempts


def test_retry_after_is_honoured(fake_openai, http_client):
    fake_openai.configure(retry_after_s=0.3)
    prompt = "wait [fault:429x1]"
    (r,) = run(teacher(fake_openai, http_client, backoff_max_s=5.0), [req(prompt)])
    assert r.ok and r.attempts == 2
    first, second = fake_openai.stats(detail=True)["times_by_prompt"][prompt]
    assert second - first >= 0.3
    assert r.latency_s >= 0.3


def test_without_retry_after_jittered_backoff_is_used(fake_openai, http_client):
    fake_openai.configure(retry_after_s=None)
    prompt = "nohdr [fault:429x1]"
    (r,) = run(teacher(fake_openai, http_client, backoff_base_s=0.01), [req(prompt)])
    assert r.ok and r.attempts == 2
    first, second = fake_openai.stats(detail=True)["times_by_prompt"][prompt]
    assert second - first < 0.5  # a jittered backoff of <= 0.01 s, not some default wait


def test_retry_after_is_capped_by_backoff_max(fake_openai, http_client):
    fake_openai.configure(retry_after_s=30)
    (r,) = run(teacher(fake_openai, http_client, backoff_max_s=0.05), [req("cap [fault:429x1]")])
    assert r.ok and r.latency_s < 5


def test_random_faults_every_request_ends_once(http_client):
    with FakeOpenAIServer(fault_rate=0.3, seed=1) as srv:
        t = teacher(srv, http_client, max_retries=6, backoff_max_s=0.02, max_in_flight=32)
        prompts = [f"row {i:03d}" for i in range(200)]
        results = run(t, [req(p) for p in prompts])
        stats = srv.stats(detail=True)
    assert len(results) == 200
    assert [r.text for r in results if r.ok] == [f"echo: {p}" for p, r in zip(prompts, results) if r.ok]
    assert sum(stats["by_prompt"].values()) > 200  # retries happened
    for p, r in zip(prompts, results):
        outcomes = stats["outcomes_by_prompt"][p]
        assert len(outcomes) == r.attempts == stats["by_prompt"][p]
        if r.ok:  # exactly one success, and nothing asked after it
            assert outcomes[-1] == "ok" and outcomes.count("ok") == 1
        else:
            assert "ok" not in outcomes and r.attempts == 7
    assert sum(r.ok for r in results) >= 195


def test_max_in_flight_bounds_concurrency(http_client):
    with FakeOpenAIServer(latency_s=0.05) as srv:
        t = teacher(srv, http_client, max_in_flight=4)

        async def many_calls():  # like a Ray async actor: several batches awaited at once on one loop
            batches = [[req(f"b{b} r{i}") for i in range(8)] for b in range(5)]
            return await asyncio.gather(*(t.agenerate(b) for b in batches))

        loop = asyncio.new_event_loop()
        try:
            out = loop.run_until_complete(many_calls())
            loop.run_until_complete(t.aclose())
        finally:
            loop.close()
        assert all(r.ok for batch in out for r in batch)
        assert [r.text for r in out[2]] == [f"echo: b2 r{i}" for i in range(8)]
        stats = srv.stats()
    assert 2 <= stats["max_concurrent"] <= 4
    assert stats["total_requests"] == 40


def test_rate_limiter_spaces_requests(fake_openai, http_client):
    # 1,200 rpm for the run, this actor's share 1/2 -> 10 requests/s here, burst 0.25 s.
    t = teacher(fake_openai, http_client, requests_per_minute=1200, share=0.5)
    t0 = time.monotonic()
    results = run(t, [req(f"rl {i}") for i in range(20)])
    assert all(r.ok for r in results)
    assert time.monotonic() - t0 >= 1.5
    times = sorted(ts for v in fake_openai.stats(detail=True)["times_by_prompt"].values() for ts in v)
    assert times[-1] - times[0] >= 1.5


def test_token_bucket_spaces_by_tokens():
    async def go():
        bucket = TokenBucket(rate=1000.0, burst=100.0)  # 1,000 tokens/s, 100 at once
        t0 = time.monotonic()
        await asyncio.gather(*(bucket.acquire(100) for _ in range(4)))  # 100 free, then 300 owed
        return time.monotonic() - t0

    assert asyncio.run(go()) >= 0.29


def test_sentinel_key_sent_but_never_shown(monkeypatch, caplog, http_client):
    monkeypatch.setenv(KEY_ENV, SENTINEL)
    caplog.set_level(logging.DEBUG)
    with FakeOpenAIServer(expected_api_key=SENTINEL) as srv:
        t = teacher(srv, http_client, max_retries=1)
        shown = [repr(t), str(t), json.dumps(t.describe()), repr(vars(t))]
        results = t.generate([req("hello"), req("again [fault:500x1]"), req("bad [fault:500]"), req("no [fault:400]")])
        shown.append(repr(vars(t)))
        t.close()
        stats = srv.stats()
    assert results[0].ok and results[1].ok and results[1].attempts == 2
    assert stats["auth_matched"] == stats["total_requests"] == 6 and stats["auth_mismatched"] == 0
    assert stats["auth_schemes"] == {"bearer": 6}
    assert t.describe()["api_key_env"] == KEY_ENV and t.describe()["api_key_set"] is True
    shown += [repr(r) for r in results] + [json.dumps(r.to_dict()) for r in results]
    shown.append(caplog.text)
    assert caplog.records  # the retries were logged: the check below is not vacuous
    for text in shown:
        assert SENTINEL not in text and "SENTINEL" not in text
    assert t._scrub(f"oops {SENTINEL} leaked") == "oops <redacted> leaked"
    # Pickled (as Ray ships objects) it carries the config only; the copy reads its own env.
    blob = pickle.dumps(t)
    assert SENTINEL.encode() not in blob
    assert pickle.loads(blob).describe() == t.describe()


def test_azure_hits_deployment_url_with_api_key_header(monkeypatch, http_client):
    monkeypatch.setenv(KEY_ENV, SENTINEL)
    with FakeOpenAIServer(expected_api_key=SENTINEL) as srv:
        t = teacher(srv, http_client, base_url=srv.root, api_type="azure", model="my-deploy", api_version="2024-06-01")
        (r,) = run(t, [req("azure hello")])
        stats = srv.stats()
    assert r.ok and r.text == "echo: azure hello"
    assert stats["by_target"] == {"/openai/deployments/my-deploy/chat/completions?api-version=2024-06-01": 1}
    assert stats["auth_schemes"] == {"api-key": 1} and stats["auth_matched"] == 1


def test_missing_key_is_an_error_for_remote_endpoints():
    cfg = OpenAITeacherConfig(model="m", base_url="https://api.example.com/v1", api_key_env=KEY_ENV)
    with pytest.raises(ValueError, match=KEY_ENV):
        OpenAIEngine(cfg)
    assert isinstance(make_engine(cfg.model_copy(update={"base_url": "http://localhost:1/v1"})), OpenAIEngine)


def test_generate_inside_a_running_loop_is_refused(fake_openai):
    t = teacher(fake_openai, "aiohttp")

    async def inside():
        with pytest.raises(RuntimeError, match="agenerate"):
            t.generate([req("x")])

    asyncio.run(inside())
    t.close()


def test_parse_retry_after():
    assert parse_retry_after({"retry-after": "0.3"}) == 0.3
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({}) is None and parse_retry_after({"retry-after": "soon"}) is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= parse_retry_after({"retry-after": later}) <= 30
    assert parse_retry_after({"retry-after": email.utils.formatdate(time.time() - 60, usegmt=True)}) == 0.0


# ------------------------------------------------------------------ fail fast


def refused_url() -> str:
    """A loopback port nothing listens on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_refused_endpoint_stops_the_run(http_client):
    cfg = OpenAITeacherConfig(model="m", base_url=refused_url(), http_client=http_client, api_key_env=KEY_ENV,
                              max_retries=6, backoff_base_s=0.01, backoff_max_s=0.05, fail_fast_after=3, max_in_flight=2)
    t = OpenAIEngine(cfg)
    with pytest.raises(RunAborted) as e:
        run(t, [req(f"r{i}") for i in range(50)])  # without the breaker: 50 rows x 7 attempts, then 50 errors
    msg = str(e.value)
    assert "3 requests in a row" in msg and "failed with connection" in msg and "is the server up" in msg
    assert cfg.base_url in msg


def test_refusal_after_a_success_is_retried_not_fatal(http_client):
    """A server that answered once and then goes away is likely restarting: rows end as errors, the run goes on."""
    srv = FakeOpenAIServer().start()
    t = teacher(srv, http_client, fail_fast_after=1, max_error_rate=None, max_retries=1, max_in_flight=1)
    try:
        (first,) = t.generate([req("hello")])
        assert first.ok
        srv.stop()
        results = t.generate([req(f"gone {i}") for i in range(4)])
    finally:
        t.close()
        srv.stop()
    assert [r.error_kind for r in results] == ["connection"] * 4


def test_rejected_key_stops_after_k_requests_in_a_row(monkeypatch, http_client):
    monkeypatch.setenv(KEY_ENV, SENTINEL)
    with FakeOpenAIServer(expected_api_key="sk-the-right-one") as srv:
        t = teacher(srv, http_client, fail_fast_after=3, max_in_flight=1)
        with pytest.raises(RunAborted) as e:
            run(t, [req(f"k{i}") for i in range(40)])
        stats = srv.stats()
    # one request at a time: the third 401 stops it, and nothing more is sent
    assert stats["total_requests"] == 3 and stats["auth_mismatched"] == 3
    msg = str(e.value)
    assert "failed with http_401" in msg and f"${KEY_ENV}" in msg and SENTINEL not in msg


def test_a_401_between_successes_is_one_rows_error(fake_openai, http_client):
    t = teacher(fake_openai, http_client, fail_fast_after=2, max_in_flight=1)
    prompts = [f"a{i} [fault:401]" if i % 2 else f"a{i}" for i in range(10)]
    results = run(t, [req(p) for p in prompts])
    assert [r.error_kind for r in results] == [("http_401" if i % 2 else None) for i in range(10)]


def test_unknown_model_stops_the_run(fake_openai, http_client):
    fake_openai.configure(known_models=["gpt-real"])
    t = teacher(fake_openai, http_client, model="gpt-typo", fail_fast_after=4, max_in_flight=1)
    with pytest.raises(RunAborted) as e:
        run(t, [req(f"m{i}") for i in range(40)])
    assert fake_openai.stats()["total_requests"] == 4
    assert "http_404" in str(e.value) and "'gpt-typo'" in str(e.value) and "does not exist" in str(e.value)


@pytest.mark.parametrize("bad, stops", [(6, True), (5, False)])
def test_error_rate_over_a_window_stops_the_run(fake_openai, http_client, bad, stops):
    """A 503 is one row's trouble, but when more than max_error_rate of the last error_rate_window
    rows end as errors the run stops; at the limit exactly it goes on. (No retries and one request
    at a time, so the rows finish in order.)"""
    t = teacher(fake_openai, http_client, max_retries=0, max_error_rate=0.5, error_rate_window=10, max_in_flight=1)
    prompts = [f"w{i}" for i in range(10 - bad)] + [f"w{i} [fault:503]" for i in range(10 - bad, 10)]
    prompts += [f"later {i}" for i in range(10)]
    if stops:
        with pytest.raises(RunAborted, match=r"6 of the last 10 rows ended as errors \(http_503: 6\)"):
            run(t, [req(p) for p in prompts])
        assert not any(p.startswith("later") for p in fake_openai.stats()["by_prompt"])
    else:
        results = run(t, [req(p) for p in prompts])
        assert sum(not r.ok for r in results) == bad


# ------------------------------------------------------------------ provider fit


def test_extra_headers_reach_the_server_and_env_values_stay_secret(monkeypatch, http_client):
    monkeypatch.setenv("LAMINI_TEST_HEADER_SECRET", SENTINEL)
    with FakeOpenAIServer() as srv:
        srv.configure(record_headers=["OpenAI-Organization", "X-Gateway-Key"])
        t = teacher(srv, http_client, extra_headers={"OpenAI-Organization": "org-lamini",
                                                     "X-Gateway-Key": "${LAMINI_TEST_HEADER_SECRET}"})
        shown = [repr(t), json.dumps(t.describe()), repr(vars(t))]
        (r,) = run(t, [req("with headers [fault:400]")])  # an error message, to check the scrubbing too
        recorded = srv.stats()["recorded_headers"]
    assert recorded == {"openai-organization": ["org-lamini"], "x-gateway-key": [SENTINEL]}
    assert all(SENTINEL not in x for x in shown + [repr(r)])
    assert t._scrub(f"echo {SENTINEL}") == "echo <redacted>"
    monkeypatch.delenv("LAMINI_TEST_HEADER_SECRET")
    with pytest.raises(ValueError, match="LAMINI_TEST_HEADER_SECRET"):
        teacher(srv, http_client, extra_headers={"X-Gateway-Key": "${LAMINI_TEST_HEADER_SECRET}"})


@pytest.mark.parametrize("adapt", [True, False])
def test_x_ratelimit_headers_pause_sending_until_the_reset(http_client, adapt):
    """The server allows 4 requests per 2 s window and says so in its headers: a teacher that
    reads them waits for the reset and never collects a 429; one that does not, does."""
    with FakeOpenAIServer() as srv:
        srv.configure(ratelimit_requests=4, ratelimit_window_s=2.0)
        t = teacher(srv, http_client, max_in_flight=1, max_retries=0, adapt_to_rate_limit_headers=adapt)
        results = run(t, [req(f"rl {i}") for i in range(10)])
        stats = srv.stats()
    if adapt:
        assert all(r.ok for r in results) and stats["faults"] == {} and stats["total_requests"] == 10
    else:  # the fifth request of the window is refused (no retries here, so it ends as the row's error)
        assert stats["faults"].get("ratelimit", 0) >= 1 and any(r.error_kind == "http_429" for r in results)


def test_output_token_bucket_reserves_max_tokens_and_refunds_the_rest():
    async def go():
        b = TokenBucket(rate=1.0, burst=100.0)  # slow refill: the level is what we took and gave back
        await b.acquire(100)  # reserve max_tokens
        b.refund(90)  # only 10 were written
        return b.level

    assert 90 <= asyncio.run(go()) <= 91


def test_parse_reset_reads_openai_durations():
    from lamini.engines.http_guards import parse_reset

    assert parse_reset("12ms") == 0.012 and parse_reset("1s") == 1.0 and parse_reset("6m0s") == 360.0
    assert parse_reset("1h2m3.5s") == 3723.5 and parse_reset("0.25") == 0.25
    assert parse_reset(None) is None and parse_reset("soon") is None


def test_input_and_output_token_limits_take_the_prompt_and_keep_only_the_written_tokens(fake_openai, http_client):
    """Per request the input bucket pays the prompt estimate, the output bucket max_tokens, of
    which what the answer did not write comes back (the level is only refilled at the next acquire,
    so after one request it is exactly the burst less what was kept)."""
    t = teacher(fake_openai, http_client, input_tokens_per_minute=60, output_tokens_per_minute=60, rate_limit_burst_s=100)
    (r,) = run(t, [req("hi", max_tokens=64)])  # "echo: hi": 2 completion tokens
    assert r.ok and r.completion_tokens == 2
    prompt_estimate = (len("be brief") + len("hi")) / 4
    assert t._itpm.level == 100 - prompt_estimate
    assert t._otpm.level == 100 - 2


# ----------------------------------------------------------------------------- structured outputs

SCHEMA = ('{"additionalProperties":false,"properties":{"instructions":{"items":{"maxLength":50,"type":"string"},'
          '"maxItems":2,"type":"array"}},"required":["instructions"],"type":"object"}')
GEN_PROMPT = "<example>Name a planet.</example>\nGenerate 5 diverse examples that are similar to the provided examples."


def test_response_format_is_sent_and_honoured(fake_openai, http_client):
    """A request carrying a schema goes out with response_format (strict json_schema, without the
    length bounds strict endpoints refuse); the fake endpoint, like a real structured-output one,
    answers with JSON of that schema."""
    out = run(teacher(fake_openai, http_client), [req(GEN_PROMPT, 400, response_schema=SCHEMA)])[0]
    body = fake_openai.stats()["last_body"]
    portable = {"additionalProperties": False, "properties": {"instructions": {"items": {"type": "string"}, "type": "array"}},
                "required": ["instructions"], "type": "object"}  # fmt: skip
    assert body["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "generated_instructions", "schema": portable, "strict": True}
    }  # fmt: skip
    assert out.ok and len(json.loads(out.text)["instructions"]) == 5  # the prompt's "Generate 5"
    run(teacher(fake_openai, http_client), [req("plain question")])
    assert "response_format" not in fake_openai.stats()["last_body"]  # no schema, no response_format


def test_refused_response_format_falls_back_to_the_prompt_alone(fake_openai, http_client):
    """An endpoint without structured outputs answers 400 to response_format: the engine sends the
    request again without it, and leaves it off for the rest of its requests."""
    fake_openai.configure(structured_outputs=False)
    t = teacher(fake_openai, http_client)
    try:
        # 8 at once: one probes, the others wait for its answer instead of each being refused
        first = t.generate([req(GEN_PROMPT + f" #{i}", 400, response_schema=SCHEMA) for i in range(8)])
        assert all(r.ok and r.text.startswith("<example>") for r in first)  # the paper's tags: the prompt's own format
        assert fake_openai.stats()["faults"] == {"response_format": 1} and fake_openai.stats()["requests"] == 9
        fake_openai.reset_stats()
        more = t.generate([req(GEN_PROMPT + f" {i}", 400, response_schema=SCHEMA) for i in range(3)])
        assert all(r.ok for r in more)
        assert fake_openai.stats()["requests"] == 3 and fake_openai.stats()["faults"] == {}  # not tried again
    finally:
        t.close()
    # any other 400 is still a final error, not a reason to drop the format
    t = teacher(fake_openai, http_client)
    bad = run(t, [req("[fault:400] x", response_schema=SCHEMA)])[0]
    assert bad.error_kind == "http_400" and t._response_format_ok is not False
