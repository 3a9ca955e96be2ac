"""The llm strategy: the local SmolLM2 policy in-process, and an OpenAI-compatible endpoint over HTTP.

No vLLM server can run here, so the endpoint test serves chat completions from a small stdlib HTTP
server on loopback: what is under test is the service's client (prompt, parse, fallback, 503).
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.test_app import assert_problem


def test_local_policy_writes_subqueries_that_are_resolved(settings, index_copy, policy_artifacts):
    from training.fanout.policy import DEFAULT_POLICY

    # SmolLM2 writing 5 sub-queries on a busy 2-core box can pass the 10 s default deadline; speed is not under test
    local = settings.model_copy(update={"index_dir": index_copy, "artifacts_dir": policy_artifacts,
                                        "llm_policy": policy_artifacts / "policy" / DEFAULT_POLICY,
                                        "request_timeout_ms": 120_000.0, "llm_timeout_s": 120.0})
    with TestClient(create_app(local)) as client:
        assert client.get("/info").json()["strategies"] == ["single", "diffusion", "llm"]
        response = client.post("/fanout", json={"query": "boho summer festival outfit", "strategy": "llm",
                                                "k": 5, "limit": 8, "seed": 0})
        assert response.status_code == 200, response.text
        body = response.json()
        subqueries = body["subqueries"]
        assert 1 <= len(subqueries) <= 5 and all(isinstance(q, str) and q for q in subqueries)
        assert len(body["items"]) == 8
        assert {v for it in body["items"] for v, _ in it["found_by"]} <= set(range(len(subqueries)))
        assert {"sample", "queue", "encode", "resolve", "total"} == set(body["timings"])


class ChatServer(ThreadingHTTPServer):
    """Answers /v1/chat/completions with `answer` (or HTTP 500 when it is None); records requests."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), ChatHandler)
        self.answer: str | None = '<queries>\n["white linen dress", "fringe suede boots", "flower crown"]\n</queries>'
        self.requests: list[dict] = []
        self.hold = threading.Event()  # cleared: every answer waits until it is set
        self.hold.set()


class ChatHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.server.requests.append({"path": self.path, "auth": self.headers.get("authorization"), **body})
        self.server.hold.wait(30)
        if self.server.answer is None:
            self.send_response(500)
            self.end_headers()
            return
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": self.server.answer}}]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def chat_server():
    server = ChatServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_openai_endpoint_backs_the_llm_strategy(settings, index_copy, chat_server):
    url = f"http://127.0.0.1:{chat_server.server_address[1]}/v1"
    remote = settings.model_copy(update={"index_dir": index_copy, "llm_url": url, "llm_model": "qwen3-4b",
                                         "llm_api_key": "secret"})
    with TestClient(create_app(remote)) as client:
        body = client.post("/fanout", json={"query": "boho summer festival outfit", "strategy": "llm",
                                            "k": 10, "limit": 6, "seed": 3}).json()
        assert body["subqueries"] == ["white linen dress", "fringe suede boots", "flower crown"]
        sent = chat_server.requests[-1]
        assert sent["path"] == "/v1/chat/completions" and sent["model"] == "qwen3-4b" and sent["seed"] == 3
        assert sent["auth"] == "Bearer secret" and "boho summer festival outfit" in sent["messages"][0]["content"]

        chat_server.answer = "I cannot help with that."  # malformed: fall back to the broad query
        body = client.post("/fanout", json={"query": "office chic", "strategy": "llm"}).json()
        assert body["subqueries"] == ["office chic"] and body["items"]

        chat_server.answer = '["camel wool coat", "silk scarf", "velvet blazer"]'  # the prompt's example is no fan-out
        body = client.post("/fanout", json={"query": "office chic", "strategy": "llm"}).json()
        assert body["subqueries"] == ["velvet blazer"]

        chat_server.answer = None  # the endpoint fails: 503, not 500, without its URL; other strategies serve on
        down = assert_problem(client.post("/fanout", json={"query": "office chic", "strategy": "llm"}), 503)
        assert "127.0.0.1" not in str(down) and "v1" not in str(down)
        assert client.post("/fanout", json={"query": "office chic", "strategy": "single"}).status_code == 200
        assert client.get("/readyz").status_code == 200


def test_a_full_llm_queue_answers_429_with_retry_after_and_drains(settings, index_copy, chat_server):
    url = f"http://127.0.0.1:{chat_server.server_address[1]}/v1"
    tight = settings.model_copy(update={"index_dir": index_copy, "llm_url": url, "max_llm_queue": 2})
    chat_server.hold.clear()  # the endpoint stalls: calls pile up in the service's LLM pool
    with TestClient(create_app(tight)) as client, ThreadPoolExecutor(2) as pool:
        ask = lambda q: client.post("/fanout", json={"query": q, "strategy": "llm", "limit": 4})  # noqa: E731
        waiting = [pool.submit(ask, q) for q in ("office chic", "beach wedding")]
        while len(chat_server.requests) < 2:  # both reach the stalled endpoint; neither may be answered first
            assert not any(f.done() for f in waiting), [f.result().text for f in waiting if f.done()]
            time.sleep(0.01)
        refused = client.post("/fanout", json={"query": "late night drive", "strategy": "llm"})
        assert_problem(refused, 429)
        assert refused.headers["retry-after"].isdigit() and "llm queue is full" in refused.json()["detail"]
        assert client.post("/fanout", json={"query": "late night drive", "strategy": "single"}).status_code == 200
        chat_server.hold.set()
        assert [f.result(timeout=30).status_code for f in waiting] == [200, 200]
        assert client.post("/fanout", json={"query": "late night drive", "strategy": "llm"}).status_code == 200
        assert client.app.state.runtime.llm_gate.count == 0

