"""`eaglex serve` end to end: a live server on 127.0.0.1 (a random free port), driven by the official
`openai` client and raw HTTP. Greedy answers under load equal each prompt decoded alone; streaming, stop
strings (also split across tokens), usage, every error status, a full queue, and disconnects that cancel."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from eaglex.runtime.engine import Engine  # noqa: E402
from eaglex.runtime.scheduler import BatchEngine  # noqa: E402
from eaglex.runtime.tokenizer import Tokenizer  # noqa: E402
from eaglex.server.app import _events, _pieces, create_app  # noqa: E402
from eaglex.server.protocol import Job  # noqa: E402
from eaglex.server.stops import StopCutter  # noqa: E402

MODEL = "tiny"


@pytest.fixture(scope="module")
def engine(tiny_model, tmp_path_factory) -> Engine:
    from eaglex.exporter.checkpoints import write_random_drafter
    from eaglex.exporter.export import export_artifact

    model = tiny_model("llama")
    tmp = tmp_path_factory.mktemp("serve")
    drafter = write_random_drafter(model, tmp / "drafter", draft_vocab_size=64)
    artifact = export_artifact(model, tmp / "artifact", drafter, max_context=512, progress=lambda _: None)
    engine = Engine.load(artifact, threads=1)
    engine.stop_tokens.clear()  # a random model emits its EOS by chance: long answers stay long
    return engine


@contextlib.contextmanager
def live_server(engine: Engine, pass_seconds: float = 0.0, **options) -> Iterator[str]:
    """Serves `engine` from a thread of this process on a free loopback port; yields the /v1 base URL.
    pass_seconds: a pause added to every target pass, so the tiny model's requests last long enough to
    be watched (its 400 tokens otherwise take a few milliseconds)."""
    batch = BatchEngine(engine, **{"max_batch": 8, "rows_per_pass": 32, "prefill_chunk": 32, **options})
    if pass_seconds:
        target_pass = batch.step_runner.target_pass
        batch.step_runner.target_pass = lambda *a: time.sleep(pass_seconds) or target_pass(*a)
    server = uvicorn.Server(uvicorn.Config(create_app(batch, MODEL, 64), log_level="warning"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)


def prompts(count: int) -> list[str]:
    rng = np.random.default_rng(count)
    return [" ".join(f"w{t}" for t in rng.integers(3, 128, rng.integers(1, 60))) for _ in range(count)]


def alone(engine: Engine, text: str, chat: bool, max_tokens: int, **sampling) -> str:
    config = engine.default_config(max_new_tokens=max_tokens, **{"temperature": 0.0, **sampling})
    return engine.tokenizer.decode([t for c in engine.generate(engine.encode(text, chat), config) for t in c])


def ask(api: openai.OpenAI, text: str, chat: bool, stream: bool, **settings) -> tuple[str, object]:
    """(answer text, finish reason or usage) through the official client."""
    settings = {"model": MODEL, "temperature": 0, "max_tokens": 24, **settings}
    if chat:
        messages = [{"role": "user", "content": text}]
        if not stream:
            out = api.chat.completions.create(messages=messages, **settings)
            return out.choices[0].message.content, out.usage
        chunks = list(api.chat.completions.create(messages=messages, stream=True, **settings))
        assert chunks[0].choices[0].delta.role == "assistant"
        return "".join(c.choices[0].delta.content or "" for c in chunks), chunks[-1].choices[0].finish_reason
    if not stream:
        out = api.completions.create(prompt=text, **settings)
        return out.choices[0].text, out.usage
    chunks = list(api.completions.create(prompt=text, stream=True, **settings))
    return "".join(c.choices[0].text for c in chunks), chunks[-1].choices[0].finish_reason


@pytest.mark.parametrize("clients", [1, 4, 16])
def test_greedy_answers_under_load_equal_each_prompt_alone(engine, clients):
    texts = prompts(clients)
    kinds = [(i % 2 == 0, i % 4 < 2) for i in range(clients)]  # chat or text, streamed or not
    expected = [alone(engine, text, chat, 24) for text, (chat, _) in zip(texts, kinds, strict=True)]
    with live_server(engine) as url:
        api = client(url)
        answers: list[str] = [""] * clients

        def one(i: int) -> None:
            answers[i] = ask(api, texts[i], *kinds[i])[0]

        threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        metrics = httpx.get(url.removesuffix("/v1") + "/metrics").text
    assert answers == expected
    assert f"eaglex_requests_finished_total {clients}" in metrics


def test_streaming_usage_stop_strings_and_seeds(engine):
    text = prompts(3)[0]
    full = alone(engine, text, False, 24)
    words = full.split(" ")
    split_stop = f"{words[3][-1:]} {words[4][:2]}"  # the end of one token, a space, the start of the next
    seeded = alone(engine, text, False, 24, temperature=0.9, seed=7)
    with live_server(engine) as url:
        api = client(url)
        streamed, finish = ask(api, text, False, True)
        assert (streamed, finish) == (full, "length")
        _, usage = ask(api, text, False, False)
        assert usage.prompt_tokens == len(engine.encode(text)) and usage.completion_tokens == 24
        assert usage.total_tokens == usage.prompt_tokens + 24
        for stream in (False, True):
            cut, _ = ask(api, text, False, stream, stop=["zzz", split_stop])
            assert cut == full[: full.index(split_stop)] and split_stop not in cut
        _, finish = ask(api, text, False, True, stop=split_stop)
        assert finish == "stop"
        chunks = list(
            api.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": text}], max_tokens=5, stream=True,
                stream_options={"include_usage": True},
            )
        )  # fmt: skip
        assert chunks[-1].usage.completion_tokens == 5 and chunks[-1].choices == []
        # A seeded sampled request gives the same answer as alone, every time.
        for _ in range(2):
            assert ask(api, text, False, False, temperature=0.9, seed=7)[0] == seeded
        assert ask(api, text, False, False, temperature=0.9, seed=8)[0] != seeded
        assert [m.id for m in api.models.list()] == [MODEL]


def test_errors_have_openai_shapes_and_statuses(engine):
    with live_server(engine) as url:
        api = client(url)
        cases = [
            ({"model": "gpt-4"}, openai.NotFoundError, 404),
            ({"temperature": 3}, openai.BadRequestError, 400),
            ({"n": 2}, openai.BadRequestError, 400),
            ({"stop": ["a", "b", "c", "d", "e"]}, openai.BadRequestError, 400),
            ({"max_tokens": 0}, openai.BadRequestError, 400),
            ({"max_tokens": 10_000}, openai.BadRequestError, 400),
            ({"prompt": "w5 " * 600}, openai.BadRequestError, 400),  # over the context
        ]
        for settings, error, status in cases:
            with pytest.raises(error) as caught:
                api.completions.create(**{"model": MODEL, "prompt": "w5 w6", "max_tokens": 4, **settings})
            assert caught.value.status_code == status
            assert caught.value.body["message"] and caught.value.body["type"]
        bad_json = httpx.post(f"{url}/chat/completions", content=b"{not json", timeout=10)
        assert bad_json.status_code == 400 and "error" in bad_json.json()
        assert httpx.get(url.removesuffix("/v1") + "/health").json()["status"] == "ok"


def test_a_full_queue_answers_503_and_a_disconnect_frees_the_slot(engine):
    text = prompts(2)[1]
    expected = alone(engine, text, False, 24)
    with live_server(engine, pass_seconds=0.01, max_batch=1, max_queue=1) as url:
        base = url.removesuffix("/v1")
        body = {"model": MODEL, "prompt": "w9 w10", "max_tokens": 400, "temperature": 0, "stream": True}
        with httpx.Client(timeout=30) as http:
            with http.stream("POST", f"{url}/completions", json=body) as running:
                lines = running.iter_lines()  # kept: dropping the iterator would close the stream
                next(lines)
                until(lambda: httpx.get(f"{base}/health").json()["active"] == 1)  # it holds the only slot
                waiting = threading.Thread(
                    target=lambda: httpx.post(
                        f"{url}/completions", json={**body, "max_tokens": 40}, timeout=60
                    )
                )
                waiting.start()
                until(lambda: httpx.get(f"{base}/health").json()["queued"] == 1)
                full = httpx.post(f"{url}/completions", json=body, timeout=10)
                assert full.status_code == 503 and full.json()["error"]["code"] == "server_overloaded"
            # Leaving the stream closes the connection: the server cancels that request.
            until(lambda: "eaglex_requests_cancelled_total 1" in httpx.get(f"{base}/metrics").text)
            waiting.join()  # the queued request got the slot and ran to its end
        # A client of a non-streamed request that gives up (times out) cancels it too.
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{url}/completions", json={**body, "stream": False}, timeout=0.5)
        until(lambda: "eaglex_requests_cancelled_total 2" in httpx.get(f"{base}/metrics").text)
        until(lambda: httpx.get(f"{base}/health").json()["active"] == 0)
        assert ask(client(url), text, False, False)[0] == expected  # it keeps serving, exactly


def until(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_stop_cutter_holds_back_partial_stop_strings():
    cutter = StopCutter(["END", "xyz"])
    assert cutter.push("hello E") == ("hello ", False)
    assert cutter.push("N") == ("", False)
    assert cutter.push("Dgame") == ("", True)
    cutter = StopCutter(["END"])
    assert cutter.push("a EN") == ("a ", False)
    assert cutter.push("Xb") == ("ENXb", False)
    assert cutter.push("E") == ("", False) and cutter.flush() == "E"


def test_multibyte_characters_stream_intact(tmp_path):
    """A byte-level tokenizer puts every byte of 'é', '你' and '🙂' in its own token: the stream never
    splits a character, and its pieces add up to the text."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    hf = HFTokenizer(models.BPE({c: i for i, c in enumerate(sorted(alphabet))}, []))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.save(str(tmp_path / "tokenizer.json"))
    tokenizer = Tokenizer(tmp_path)
    text = "café 你好 🙂 ok END tail"
    ids = tokenizer.encode(text)
    assert len(ids) == len(text.encode())  # one token per byte

    class Batch:
        engine = type("E", (), {"tokenizer": tokenizer})

    async def tokens():
        for i in ids:
            yield [i]

    async def events() -> list[dict]:
        job = Job(False, MODEL, [1], None, ["END"], True, False)  # type: ignore[arg-type]
        stats = type("S", (), {"new_tokens": 0, "stop_reason": ""})()
        events = [e async for e in _events(job, _pieces(Batch, job, tokens(), stats), stats)]
        return [json.loads(e.removeprefix("data: ")) for e in events if e != "data: [DONE]\n\n"]

    pieces = [e["choices"][0]["text"] for e in asyncio.run(events())]
    assert "".join(pieces) == "café 你好 🙂 ok "
    assert all("\ufffd" not in p for p in pieces) and len([p for p in pieces if p]) > 5


@pytest.mark.smollm2
def test_smollm2_lossless_under_load_through_the_cli(smollm2_artifact):
    """`eaglex serve` as a user starts it, four clients at once, prompts of different lengths."""
    texts = [
        "Hi",
        "Write a haiku about the sea.",
        "What is the difference between a list and a tuple in Python? Answer briefly.",
        "Summarize in one sentence: " + "The quick brown fox jumps over the lazy dog. " * 12,
    ]
    engine = Engine.load(smollm2_artifact, threads=2)
    expected = [alone(engine, text, True, 20) for text in texts]
    del engine
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "eaglex.cli", "serve", str(smollm2_artifact), "--port", str(port)]
    server = subprocess.Popen([*command, "--model-name", MODEL], stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        until(lambda: _up(url), 120)
        api = client(url)
        answers: list[str] = [""] * len(texts)

        def one(i: int) -> None:
            answers[i] = ask(api, texts[i], True, i % 2 == 0, max_tokens=20)[0]

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(texts))]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert answers == expected
    finally:
        server.terminate()
        server.wait(30)


def _up(url: str) -> bool:
    try:
        return httpx.get(url.removesuffix("/v1") + "/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
