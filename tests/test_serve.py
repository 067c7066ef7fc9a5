"""`textrnn serve`: the completions API with the official openai client, hostile input, batching, draining."""

import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from textrnn.cli import cli  # noqa: E402
from textrnn.lm.sample import beam_search  # noqa: E402
from textrnn.serve.app import bind, load_server, make_server  # noqa: E402
from textrnn.serve.engine import Engine  # noqa: E402
from textrnn.serve.request import ApiError, Limits, parse_request  # noqa: E402

from conftest import TINY_CLI, TINY_TEXT  # noqa: E402

LIMITS = Limits(max_tokens=5000, max_prompt_chars=300, max_n=4, max_beam=4, max_queue=64, max_body_bytes=20_000)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny trained run (hidden size 8) with its metrics."""
    root = tmp_path_factory.mktemp("serve")
    corpus = root / "tiny.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    out = root / "tiny-run"
    args = ["train", "--corpus", corpus, *TINY_CLI, "--max-steps", "6", "--eval-every", "3", "--max-seconds", "0"]
    result = CliRunner().invoke(cli, [str(a) for a in [*args, "--out", out, "--json"]])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def server(run_dir):
    """The app served by uvicorn in a thread on a free port of 127.0.0.1."""
    torch.set_num_threads(1)
    app, engine, info = load_server(run_dir, limits=LIMITS)
    sock = bind("127.0.0.1", 0)
    # A small receive buffer, as over a network: on loopback the kernel would take a 5 MB body whole, hiding a
    # server that answers before reading it (the client, still sending, would see the connection reset).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 14)
    uvicorn_server = make_server(app, drain_seconds=5)
    thread = threading.Thread(target=uvicorn_server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not uvicorn_server.started and time.time() < deadline:
        time.sleep(0.02)
    assert uvicorn_server.started
    port = sock.getsockname()[1]
    yield {"url": f"http://127.0.0.1:{port}", "port": port, "engine": engine, "name": info["id"]}
    uvicorn_server.should_exit = True
    thread.join(10)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key="unused", max_retries=0, timeout=30)


def test_openai_client_plain_completions(client, server):
    first = client.completions.create(model=server["name"], prompt="the time", max_tokens=40, seed=3)
    assert first.object == "text_completion" and first.model == server["name"] and first.id.startswith("cmpl-")
    assert len(first.choices) == 1 and first.choices[0].index == 0 and first.choices[0].finish_reason == "length"
    assert len(first.choices[0].text) == 40 and not first.choices[0].text.startswith("the time")
    assert first.usage.completion_tokens == 40 and first.usage.prompt_tokens == len("the time")
    again = client.completions.create(model=server["name"], prompt="the time", max_tokens=40, seed=3)
    assert again.choices[0].text == first.choices[0].text  # a seed gives the same text
    several = client.completions.create(model=server["name"], prompt=["the time", "his grey"], max_tokens=10, n=2)
    assert [c.index for c in several.choices] == [0, 1, 2, 3] and all(len(c.text) == 10 for c in several.choices)


def test_openai_client_streaming_gives_the_same_text(client, server):
    plain = client.completions.create(model=server["name"], prompt="the time", max_tokens=300, seed=5, n=2)
    stream = client.completions.create(
        model=server["name"], prompt="the time", max_tokens=300, seed=5, n=2, stream=True
    )
    texts, reasons, chunks = ["", ""], [None, None], 0
    for chunk in stream:
        chunks += 1
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            reasons[choice.index] = choice.finish_reason or reasons[choice.index]
    assert texts == [choice.text for choice in plain.choices] and reasons == ["length", "length"]
    assert chunks >= 2


def test_stop_strings_end_the_text_before_them(client, server):
    full = client.completions.create(model=server["name"], prompt="the time", max_tokens=200, seed=8).choices[0].text
    stop = full[30:32]
    cut = full.find(stop)
    for stream in (False, True):
        answer = client.completions.create(
            model=server["name"], prompt="the time", max_tokens=200, seed=8, stop=[stop, "zzz"], stream=stream
        )
        chunks = list(answer) if stream else [answer]
        text = "".join(choice.text for chunk in chunks for choice in chunk.choices)
        assert text == full[:cut] and chunks[-1].choices[0].finish_reason == "stop"


def test_extra_fields_greedy_top_k_and_beam(client, server, run_dir):
    def text(**options):
        extra = {key: options.pop(key) for key in ("top_k", "greedy", "beam") if key in options}
        answer = client.completions.create(model=server["name"], prompt="the time", extra_body=extra, **options)
        return [choice.text for choice in answer.choices]

    greedy = text(max_tokens=30, greedy=True)
    assert text(max_tokens=30, top_k=1, seed=1) == greedy == text(max_tokens=30, temperature=0)
    import textrnn

    model = textrnn.load_checkpoint(run_dir)
    expected = [result[0] for result in beam_search(model, "the time", length=30, beam=3, num_samples=2)]
    assert text(max_tokens=30, beam=3, n=2) == expected


def test_models_and_health(client, server):
    models = client.models.list()
    assert [model.id for model in models.data] == [server["name"]]
    info = httpx.get(server["url"] + "/v1/models").json()["data"][0]
    assert info["textrnn"]["model"]["hidden_size"] == 8
    assert info["textrnn"]["validation"]["val_perplexity"] > 1
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="the time", max_tokens=5)
    answer = httpx.post(server["url"] + "/v1/completions", json={"model": "gpt-4", "prompt": "a"})
    assert answer.status_code == 404 and answer.json()["error"]["type"] == "not_found_error"
    assert httpx.get(server["url"] + "/health").json()["status"] == "ok"
    page = httpx.get(server["url"] + "/")
    assert page.status_code == 200 and "textrnn playground" in page.text


HOSTILE = [
    b"{not json",
    b"",
    b"\xff\xfe\x00",
    b"[1, 2]",
    b'"prompt"',
    b"null",
    b"[" * 100_000 + b"]" * 100_000,
    b'{"prompt": "the", "max_tokens": NaN}',
    b'{"prompt": "the", "temperature": Infinity}',
    b'{"prompt": "the", "max_tokens": 1e400}',
]
HOSTILE_FIELDS = [
    {},
    {"prompt": 5},
    {"prompt": None},
    {"prompt": [1, 2, 3]},
    {"prompt": [[1, 2]]},
    {"prompt": {"text": "the"}},
    {"prompt": ""},
    {"prompt": [""]},
    {"prompt": []},
    {"prompt": ["the"] * 1000},
    {"prompt": "q" * 10},  # a character the model never saw
    {"prompt": "the quiz"},
    {"prompt": "the" * 1000},  # longer than the limit
    {"prompt": "the", "max_tokens": "5"},
    {"prompt": "the", "max_tokens": True},
    {"prompt": "the", "max_tokens": 2.5},
    {"prompt": "the", "max_tokens": -1},
    {"prompt": "the", "max_tokens": 0},
    {"prompt": "the", "max_tokens": 10**30},
    {"prompt": "the", "temperature": "hot"},
    {"prompt": "the", "temperature": -1},
    {"prompt": "the", "temperature": 1e308},
    {"prompt": "the", "temperature": 1e-9},
    {"prompt": "the", "top_p": 0},
    {"prompt": "the", "top_p": 2},
    {"prompt": "the", "top_k": 0},
    {"prompt": "the", "top_k": 10**40},
    {"prompt": "the", "top_k": "all"},
    {"prompt": "the", "greedy": "yes"},
    {"prompt": "the", "n": 0},
    {"prompt": "the", "n": 10**6},
    {"prompt": "the", "n": 1.0},
    {"prompt": ["the", "a"], "n": 3},
    {"prompt": "the", "stop": 5},
    {"prompt": "the", "stop": [""]},
    {"prompt": "the", "stop": ["a", "b", "c", "d", "e"]},
    {"prompt": "the", "stop": "x" * 1000},
    {"prompt": "the", "seed": -1},
    {"prompt": "the", "seed": 2**70},
    {"prompt": "the", "seed": "1"},
    {"prompt": "the", "stream": "yes"},
    {"prompt": "the", "stream_options": {"include_usage": "yes"}},
    {"prompt": "the", "stream_options": [1]},
    {"prompt": "the", "beam": 100},
    {"prompt": "the", "beam": 2, "temperature": 0.5},
    {"prompt": "the", "beam": 2, "n": 3},
    {"prompt": "the", "echo": True},
    {"prompt": "the", "logprobs": 5},
    {"prompt": "the", "presence_penalty": 1.0},
    {"prompt": "the", "logit_bias": {"5": 100}},
    {"prompt": "the", "best_of": 3},
    {"prompt": "the", "model": ["x"]},
    {"prompt": "the", "file": "/etc/passwd"},
    {"prompt": "the", "checkpoint": "../../secret"},
    {"prompt": "the", "user": 5},
]


def _assert_error(answer):
    assert 400 <= answer.status_code < 500, answer.text
    error = answer.json()["error"]
    assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str)


def test_hostile_bodies_get_a_4xx_error_object(server):
    with httpx.Client(base_url=server["url"], timeout=30) as http:
        for body in HOSTILE:
            _assert_error(http.post("/v1/completions", content=body))
        for fields in HOSTILE_FIELDS:
            _assert_error(http.post("/v1/completions", json=fields))
        _assert_error(http.post("/v1/completions", content=b"{" + b" " * 30_000 + b"}"))  # too large: 413
        _assert_error(http.get("/v1/completions"))  # 405
        _assert_error(http.get("/v1/nothing"))  # 404
        _assert_error(http.get("/v1/models/../../etc/passwd"))
        answer = http.post("/v1/completions", json={"prompt": "the quiz"})
        assert "'qz'" in answer.json()["error"]["message"] or "qz" in answer.json()["error"]["message"]
        # Still serving, and the well-formed neutral OpenAI fields are accepted.
        fine = {"prompt": "the time ", "max_tokens": 5, "echo": False, "logprobs": None, "presence_penalty": 0}
        assert http.post("/v1/completions", json=fine).status_code == 200
        assert http.get("/health").json()["status"] == "ok"


BIG_PROMPT = "the " * 1_250_000  # 5 MB: far over the test server's limit of 20,000 bytes
TOO_LARGE = {"message": "the body is larger than 20,000 bytes", "type": "invalid_request_error", "param": None}


def _refused_by_urllib(url: str, data) -> urllib.error.HTTPError:
    request = urllib.request.Request(url + "/v1/completions", data=data, headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    return refused.value


def test_a_5_mb_prompt_gets_a_413_that_clients_can_read(client, server):
    body = json.dumps({"model": server["name"], "prompt": BIG_PROMPT, "max_tokens": 5}).encode()
    refused = _refused_by_urllib(server["url"], body)  # urllib sends the whole body before it reads the answer
    assert refused.code == 413 and json.loads(refused.read()) == {"error": {**TOO_LARGE, "code": 413}}
    chunks = (body[start : start + 65536] for start in range(0, len(body), 65536))
    refused = _refused_by_urllib(server["url"], chunks)  # no Content-Length: Transfer-Encoding chunked
    assert refused.code == 413 and json.loads(refused.read()) == {"error": {**TOO_LARGE, "code": 413}}
    with pytest.raises(openai.APIStatusError) as refused:
        client.completions.create(model=server["name"], prompt=BIG_PROMPT, max_tokens=5)
    assert refused.value.status_code == 413 and refused.value.message == "Error code: 413 - " + TOO_LARGE["message"]
    assert client.completions.create(model=server["name"], prompt="the", max_tokens=3).choices[0].text


def test_a_client_waiting_for_100_continue_gets_the_413_before_sending_the_body(server):
    head = (
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5000000\r\nExpect: 100-continue\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=10) as connection:
        connection.sendall(head)
        answer = http.client.HTTPResponse(connection)  # a server waiting for the body would time out here
        answer.begin()
        assert answer.status == 413 and json.loads(answer.read()) == {"error": {**TOO_LARGE, "code": 413}}


def test_connections_closed_mid_stream_free_their_rows(server):
    body = json.dumps({"prompt": "the time", "max_tokens": 5000, "stream": True}).encode()
    request = (
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    for _ in range(10):
        with socket.create_connection(("127.0.0.1", server["port"])) as connection:
            connection.sendall(request)
            received = b""
            while b"data: " not in received:  # headers first, then the first events
                received += connection.recv(4096)
    for _ in range(5):  # and some that leave before any answer, or in the middle of the request
        with socket.create_connection(("127.0.0.1", server["port"])) as connection:
            connection.sendall(request[: len(request) // 2])
    deadline = time.time() + 10
    while server["engine"].status()["active_rows"] and time.time() < deadline:
        time.sleep(0.05)
    assert server["engine"].status()["active_rows"] == 0
    assert httpx.post(server["url"] + "/v1/completions", json={"prompt": "the", "max_tokens": 3}).status_code == 200


def test_concurrent_requests_share_steps_and_keep_their_seeds(client, server):
    alone = client.completions.create(model=server["name"], prompt="his grey", max_tokens=200, seed=11).choices[0].text
    engine = server["engine"]
    results = {}
    steps_before = engine.steps

    def ask(index):
        answer = client.completions.create(model=server["name"], prompt="his grey", max_tokens=200, seed=11 + index)
        results[index] = answer.choices[0].text

    threads = [threading.Thread(target=ask, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results[0] == alone  # the other streams in the batch change nothing
    assert len(set(results.values())) == 8
    assert engine.steps - steps_before < 8 * 200  # streams advanced together


def test_a_full_queue_is_refused_with_503(run_dir):
    import textrnn

    model = textrnn.load_checkpoint(run_dir)
    engine = Engine(model, model.tokenizer, Limits(max_queue=3))  # not started: nothing leaves the queue
    request = parse_request(b'{"prompt": "the", "n": 2}', "tiny", model.tokenizer, Limits())
    engine.submit(request)
    with pytest.raises(ApiError) as refused:
        engine.submit(request)
    assert refused.value.status == 503 and refused.value.body()["error"]["type"] == "server_busy"


def test_sigterm_drains_open_streams_then_stops(run_dir):
    command = [sys.executable, "-m", "textrnn", "serve", "--checkpoint", str(run_dir), "--port", "0"]
    process = subprocess.Popen(
        [*command, "--max-tokens", "100000", "--threads", "1"], stderr=subprocess.PIPE, text=True
    )
    try:
        line = process.stderr.readline()
        port = int(re.search(r"127\.0\.0\.1:(\d+)/", line).group(1))
        received = []

        def read_stream():
            body = {"prompt": "the time", "max_tokens": 10000, "stream": True}
            with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=60) as answer:
                received.extend(line for line in answer.iter_lines() if line)

        reader = threading.Thread(target=read_stream)
        reader.start()
        deadline = time.time() + 20
        while not received and time.time() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        reader.join(60)
        events = [json.loads(line[6:]) for line in received if line.startswith("data: {")]
        assert received[-1] == "data: [DONE]"
        assert sum(len(event["choices"][0]["text"]) for event in events) == 10000
        assert events[-1]["choices"][0]["finish_reason"] == "length"
        # uvicorn ends by raising the signal it caught again, once everything has drained.
        assert process.wait(60) in (0, -signal.SIGTERM)
        assert "Traceback" not in process.stderr.read()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/health")
    finally:
        process.kill()
        process.wait()


def test_serve_refuses_a_bad_port(run_dir):
    result = CliRunner().invoke(cli, ["serve", "--checkpoint", str(run_dir), "--port", "70000"])
    assert result.exit_code == 1 and "--port must be in [0, 65535]" in result.output


def _complete(engine, body: dict) -> list[str]:
    """Texts of one request run by a started engine (no event loop: the outbox is read when done)."""
    handle = engine.submit(parse_request(json.dumps(body).encode(), "tiny", engine.tokenizer, engine.limits))
    deadline = time.time() + 30
    while not handle.done and time.time() < deadline:
        time.sleep(0.005)
    texts = [""] * handle.choices
    for index, text, _ in handle.outbox:
        texts[index] += text
    return texts


def test_long_prompts_are_read_in_chunks_with_the_same_result(run_dir, monkeypatch):
    import textrnn
    from textrnn.serve import engine as serve

    model = textrnn.load_checkpoint(run_dir)
    engine = Engine(model, model.tokenizer, LIMITS)
    engine.start()
    prompt = (TINY_TEXT * 2)[:250]
    body = {"prompt": prompt, "max_tokens": 60, "greedy": True}
    try:
        monkeypatch.setattr(serve, "PIGGYBACK_TOKENS", 1000)
        read_in_steps = _complete(engine, {**body, "n": 2})  # one prompt token a step, inside the batch
        monkeypatch.setattr(serve, "PIGGYBACK_TOKENS", 8)
        monkeypatch.setattr(serve, "PREFILL_CHUNK", 16)
        assert _complete(engine, {**body, "n": 2}) == read_in_steps  # 16 chunks, then the batch
        assert _complete(engine, {"prompt": "t", "max_tokens": 5, "seed": 1})[0]  # one token: nothing to read
    finally:
        engine.close()
    expected = textrnn.generate(model, prompt, length=60, greedy=True)[0][len(prompt) :]
    assert read_in_steps == [expected, expected]
