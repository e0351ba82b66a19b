"""`gemma-mtp serve` in a real process on 127.0.0.1, driven by the official `openai` client
(and raw HTTP where a client would hide what is sent). Tiny fixture pair, CPU, float32."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from conftest import FIXTURES, engine

from gemma_mtp_mlx.request import Request

E2B = FIXTURES / "e2b_tiny"
READY = re.compile(r"http://127\.0\.0\.1:(\d+)/v1")


class Server:
    """A `gemma-mtp serve` process on a free port, its stderr collected line by line, with a
    cache folder of its own (what auto learned in other tests, kept with the calibration,
    would otherwise decide whether it drafts at all)."""

    def __init__(self, *args: str):
        cmd = [sys.executable, "-m", "gemma_mtp_mlx", "serve", "-m", str(E2B), "--dtype",
               "float32", "--port", "0", *args]
        self.cache = tempfile.mkdtemp(prefix="gemma-mtp-serve-")
        # SIGINT as from a terminal: a suite started in the background (`make test &`, nohup)
        # inherits it ignored, and then Ctrl-C could not stop the server
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            env={**os.environ, "GEMMA_MTP_CACHE": self.cache})
        self.lines: list[str] = []
        deadline = time.monotonic() + 120
        while (line := self.proc.stderr.readline()) and time.monotonic() < deadline:
            self.lines.append(line)
            if m := READY.search(line):
                self.url = f"http://127.0.0.1:{m.group(1)}/v1"
                break
        else:
            self.proc.kill()
            raise AssertionError("server did not start:\n" + "".join(self.lines))
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stderr:
            self.lines.append(line)

    def client(self, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=kw.pop("api_key", "none"),
                             max_retries=0, timeout=60, **kw)

    def post(self, path: str, body, **kw) -> httpx.Response:
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return httpx.post(self.url + path, content=data, timeout=60, **kw)

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.cache, ignore_errors=True)
        return self.proc.returncode, "".join(self.lines)


@pytest.fixture(scope="module")
def server():
    s = Server("--max-context", "1024")
    yield s
    s.stop()


def expected(prompt: str, max_tokens: int, raw: bool = False) -> str:
    e = engine("e2b_tiny")
    return e.run(e.encode(prompt, raw=raw), Request(max_tokens=max_tokens, draft="off")).text


def chat(client, messages, **kw):
    return client.chat.completions.create(model="e2b", messages=messages, **kw)


def test_models_and_health(server):
    assert [m.id for m in server.client().models.list()] == [str(E2B)]
    assert httpx.get(server.url.replace("/v1", "/health")).json()["status"] == "ok"


def test_chat_and_text_completions_equal_generate(server):
    client = server.client()
    reply = chat(client, [{"role": "user", "content": "Hello there"}], max_tokens=12)
    assert reply.choices[0].message.content == expected("Hello there", 12)
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason in ("stop", "length")
    text = client.completions.create(model="e2b", prompt="Once upon", max_tokens=12)
    assert text.choices[0].text == expected("Once upon", 12, raw=True)
    u = reply.usage
    assert u.completion_tokens <= 12 and u.total_tokens == u.prompt_tokens + u.completion_tokens
    timings = reply.model_extra["timings"]
    for key in ("draft_n", "draft_n_accepted", "draft_rounds", "per_position_acceptance",
                "predicted_per_second", "prompt_per_second"):
        assert key in timings
    assert timings["draft_n"] > 0 and timings["draft_rounds"] > 0
    assert 0 <= timings["redone_rounds"] <= timings["draft_rounds"]
    assert timings["decode_width"] >= 1


def test_stats_counts_the_answers_and_shows_the_calibration(server):
    before = httpx.get(server.url.replace("/v1", "/stats"), timeout=60).json()
    reply = chat(server.client(), [{"role": "user", "content": "Count to ten"}], max_tokens=10)
    timings = reply.model_extra["timings"]
    after = httpx.get(server.url.replace("/v1", "/stats"), timeout=60).json()
    assert after["requests"] == before["requests"] + 1
    assert after["generated_tokens"] - before["generated_tokens"] == timings["predicted_n"]
    assert after["draft_rounds"] - before["draft_rounds"] == timings["draft_rounds"]
    assert after["redone_rounds"] - before["redone_rounds"] == timings["redone_rounds"]
    assert after["redo_rate"] == round(after["redone_rounds"] / after["draft_rounds"], 4)
    calibration = after["calibration"]  # measured at the first request (it drafts)
    assert calibration["decode_width"] == timings["decode_width"]
    assert calibration["margins"]["0"]  # the verify widths measured at the first context range


def test_streamed_equals_whole_with_usage(server):
    client = server.client()
    messages = [{"role": "user", "content": "Tell me a story"}]
    whole = chat(client, messages, max_tokens=16)
    pieces, usage, finish = [], None, None
    for chunk in chat(client, messages, max_tokens=16, stream=True,
                      stream_options={"include_usage": True}):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(pieces) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens


def test_raw_stream_ends_with_done(server):
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6, "stream": True}
    with httpx.stream("POST", server.url + "/chat/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)


def test_follow_up_turn_reuses_the_cache_and_answers_the_same(server):
    client = server.client()
    # Long enough for a whole prefill chunk (512 tokens): what the cache reuses exactly.
    notes = " ".join(f"note {i}: keys hash to buckets." for i in range(26))
    first = [{"role": "user", "content": f"{notes}\nWhat is a hash map?"}]
    a1 = chat(client, first, max_tokens=10).choices[0].message.content
    follow = first + [{"role": "assistant", "content": a1},
                      {"role": "user", "content": "And a tree?"}]
    a2 = chat(client, follow, max_tokens=10)
    assert a2.usage.prompt_tokens_details.cached_tokens == 512
    e = engine("e2b_tiny")
    role = e.model_role
    ids = e.encode_chat([dict(m, role=role if m["role"] == "assistant" else m["role"])
                         for m in follow])
    fresh = e.run(ids, Request(max_tokens=10, draft="off"))
    assert a2.choices[0].message.content == fresh.text
    assert a2.usage.prompt_tokens == len(ids)


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b"{not json", 400, "invalid JSON"),
        ({"messages": "hi"}, 400, "'messages' must be a non-empty list"),
        ({"messages": []}, 400, "'messages' must be a non-empty list"),
        ({"messages": [{"role": "user", "content": "  "}]}, 400, "no user message"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "role must be"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, 400, "number"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400, "at least 1"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "'n' must be 1"),
        ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
         400, "'tools' is not supported"),
        ({"messages": [{"role": "user", "content": "x"}], "logprobs": True}, 400, "logprobs"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
         "only text"),
        ({"messages": [{"role": "user", "content": "word " * 1100}]}, 400,
         "does not fit the context of 1024"),
        ([1, 2], 400, "JSON object"),
        (b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', 400,
         "NaN is not a JSON number"),
        (b"[" * 100000 + b"]" * 100000, 400, "nested too deeply"),
        ({"messages": [{"role": "user", "content": "x"}], "seed": -1}, 400, "seed"),
        ({"messages": [{"role": "user", "content": "x"}], "stop": ["a"] * 17}, 400,
         "at most 16 stop strings"),
        ({"messages": [{"role": "user", "content": "x"}], "stream": True,
          "stream_options": {"include_usage": "no"}}, 400, "must be booleans"),
    ],
)
def test_bad_requests_get_a_4xx_with_an_error_body(server, body, status, words):
    r = server.post("/chat/completions", body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert words in error["message"] and error["type"]


def test_more_bad_requests(server):
    big = server.post("/completions", b'{"prompt": "' + b"x" * (5 * 2**20) + b'"}')
    assert big.status_code == 413 and "body" in big.json()["error"]["message"]
    r = server.post("/completions", {"prompt": "hi", "echo": True})
    assert r.status_code == 400 and "echo" in r.json()["error"]["message"]
    r = server.post("/completions", {"prompt": ["a", "b"]})
    assert r.status_code == 400 and "one prompt" in r.json()["error"]["message"]
    r = server.post("/completions", b'{"prompt": "hi \\ud800"}')  # a lone surrogate
    assert r.status_code == 400 and "tokenize" in r.json()["error"]["message"]
    r = httpx.get(server.url + "/nothing")
    assert r.status_code == 404 and r.json()["error"]["message"]
    # accepted and harmless: fields that change nothing here
    r = server.post("/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                          "max_tokens": 2, "user": "me", "presence_penalty": 0,
                                          "stream_options": None, "model": "anything",
                                          "suffix": "", "top_logprobs": 0})
    assert r.status_code == 200, r.text
    returncode, log = server.proc.poll(), "".join(server.lines)
    assert returncode is None and "Traceback" not in log


def test_concurrent_streaming_clients_get_their_own_answers(server):
    prompts = ["Hello there", "Tell me a story", "What is MLX?", "Count to five"]

    def one(prompt):
        pieces = []
        for chunk in chat(server.client(), [{"role": "user", "content": prompt}],
                          max_tokens=10, stream=True):
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
        return "".join(pieces)

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(one, prompts))
    assert answers == [expected(p, 10) for p in prompts]


def test_a_client_that_disconnects_leaves_the_server_serving(server):
    body = {"prompt": "Once", "max_tokens": 100000, "stream": True}
    with httpx.stream("POST", server.url + "/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
    # the next request is answered: the abandoned one was cancelled, not run to 100000
    reply = chat(server.client(), [{"role": "user", "content": "Hello there"}], max_tokens=4)
    assert reply.choices[0].message.content == expected("Hello there", 4)
    deadline = time.monotonic() + 10
    while not any(" 499 " in line for line in server.lines) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert any("/v1/completions 499" in line for line in server.lines)


def test_api_key_is_enforced():
    s = Server("--api-key", "s3cret", "--max-queue", "0")
    try:
        with pytest.raises(openai.AuthenticationError):
            s.client(api_key="wrong").models.list()
        r = s.post("/chat/completions", {"messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        stats = s.url.replace("/v1", "/stats")
        assert httpx.get(stats, timeout=60).status_code == 401
        r = httpx.get(stats, headers={"Authorization": "Bearer s3cret"}, timeout=60)
        assert r.status_code == 200 and r.json()["requests"] == 0
        ok = chat(s.client(api_key="s3cret"), [{"role": "user", "content": "hi"}], max_tokens=3)
        assert ok.choices[0].message.content is not None

        # --max-queue 0: one request at a time; a second while one runs gets 429
        client = s.client(api_key="s3cret")
        long = client.completions.create(model="m", prompt="Once", max_tokens=100000,
                                         stream=True)
        next(iter(long))
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model="m", prompt="hi", max_tokens=2)
        long.close()
    finally:
        code, log = s.stop()
    # Ctrl-C stops it cleanly: the CLI's exit code for Ctrl-C, one last line, no traceback
    assert code == 130 and log.strip().splitlines()[-1] == "interrupted"
    assert "Traceback" not in log


def test_a_port_in_use_is_one_error_line(server):
    port = server.url.split(":")[2].split("/")[0]
    done = subprocess.run([sys.executable, "-m", "gemma_mtp_mlx", "serve", "-m", str(E2B),
                           "--port", port], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
