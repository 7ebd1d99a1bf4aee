"""A chat-completions server on 127.0.0.1 for the judge tests: deterministic replies, faults on demand.

The reply to a prompt is `... Rating: [[n]]` with n fixed by a hash of the messages; with logprobs
asked for, the rating position carries p(n) = 0.6, p(n % 5 + 1) = 0.3 and 0.1 on a non-digit.
`fault(key, attempt)` picks what happens to a request: None (answer), "429", "500", "slow" (no
reply before `slow_s`), "malformed" (200 with broken JSON), "drop" (connection closed, no reply)
or "norating" (a reply without a rating). `content(messages)`, when given, writes every reply. `paid` counts complete replies per prompt.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def prompt_key(messages: list[dict]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()


def rating_for(messages: list[dict]) -> int:
    return int(prompt_key(messages)[:8], 16) % 5 + 1


def expected_for(messages: list[dict]) -> float:
    n = rating_for(messages)
    return (0.6 * n + 0.3 * (n % 5 + 1)) / 0.9


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default backlog of 5 drops connections under concurrency


class FakeOpenAI:
    def __init__(
        self,
        fault: Callable[[str, int], str | None] | None = None,
        *,
        slow_s: float = 3.0,
        retry_after: dict[str, str] | None = None,
        delay_s: float = 0.0,
        hold_after: int | None = None,
        content: Callable[[list[dict]], str] | None = None,
    ):
        self.content = content
        self.fault = fault or (lambda key, attempt: None)
        self.slow_s, self.delay_s = slow_s, delay_s
        self.retry_after = retry_after if retry_after is not None else {"retry-after-ms": "20"}
        self.hold_after = hold_after
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.requests = 0
        self.attempts: Counter[str] = Counter()
        self.times: dict[str, list[float]] = defaultdict(list)
        self.paid: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.auth: set[str] = set()
        self.messages: dict[str, list[dict]] = {}
        self.bodies: dict[str, dict] = {}  # the last request body per prompt
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.gate.set()
        self._server.shutdown()
        self._server.server_close()

    def _reply(self, messages: list[dict], body: dict, rating: bool) -> dict:
        if self.content is not None:
            text = self.content(messages)
            return {
                "choices": [
                    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                ]
            }
        n = rating_for(messages)
        tokens = ["The answer shows the facets clearly.", "\n", "Rating", ":", " [["]
        tokens += [str(n), "]]"] if rating else ["none", "]]"]
        choice: dict = {
            "index": 0,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": "".join(tokens)},
        }
        if body.get("logprobs"):
            content = []
            for t in tokens:
                top = []
                if t == str(n):
                    top = [
                        {"token": str(n), "logprob": math.log(0.6)},
                        {"token": str(n % 5 + 1), "logprob": math.log(0.3)},
                        {"token": "The", "logprob": math.log(0.1)},
                    ]
                content.append(
                    {"token": t, "logprob": top[0]["logprob"] if top else 0.0, "top_logprobs": top}
                )
            choice["logprobs"] = {"content": content}
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model"),
            "choices": [choice],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)
                self.wfile.flush()

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                messages = body["messages"]
                key = prompt_key(messages)
                with srv.lock:
                    srv.requests += 1
                    attempt = srv.attempts[key]
                    srv.attempts[key] += 1
                    srv.times[key].append(time.monotonic())
                    srv.messages[key] = messages
                    srv.bodies[key] = body
                    srv.in_flight += 1
                    srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
                    srv.auth.add(self.headers.get("Authorization", ""))
                    held = srv.hold_after is not None and sum(srv.paid.values()) >= srv.hold_after
                try:
                    if held:
                        srv.gate.wait()
                        return  # released after the client was killed: nobody to answer
                    if srv.delay_s:
                        time.sleep(srv.delay_s)
                    fault = srv.fault(key, attempt)
                    if fault == "429":
                        self._send(429, b'{"error": {"message": "rate limited"}}', srv.retry_after)
                    elif fault == "500":
                        self._send(500, b'{"error": {"message": "server error"}}')
                    elif fault == "slow":
                        time.sleep(srv.slow_s)
                    elif fault == "malformed":
                        self._send(200, b'{"choices": [{"message": ')
                    elif fault == "drop":
                        self.close_connection = True
                    else:
                        payload = json.dumps(srv._reply(messages, body, rating=fault != "norating")).encode()
                        self._send(200, payload)
                        with srv.lock:
                            srv.paid[key] += 1
                finally:
                    with srv.lock:
                        srv.in_flight -= 1

        return Handler
