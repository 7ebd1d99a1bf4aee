"""OpenAI-compatible chat requests that are never lost and never paid for twice.

Every answered request goes, as soon as it is answered, into a ledger: a JSON-lines file keyed by
(model, messages, sampling parameters), appended line by line and fsynced. A rerun or a resumed run
sends only the requests the ledger lacks. Requests run with bounded concurrency and are retried
with exponential backoff and jitter on 429, 5xx, timeouts, dropped connections and unreadable
replies, honouring `Retry-After`. The API key is read from `OPENAI_API_KEY` and handed to the client
only; it is never stored or logged.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npti_lens.core.constants import RATING_DIGITS
from npti_lens.core.errors import UserError
from npti_lens.core.files import fingerprint, write_text_atomic

log = logging.getLogger(__name__)

API_KEY_ENV = "OPENAI_API_KEY"
TOP_LOGPROBS = 20  # the most the OpenAI API returns per position
MAX_WAIT = 120.0  # a longer Retry-After is cut to this (the retry then meets a 429 again, or not)


@dataclass
class ChatConfig:
    model: str = field(default="gpt-4o", metadata={"help": "model name on the OpenAI-compatible server"})
    base_url: str | None = field(
        default=None, metadata={"help": "OpenAI-compatible server, e.g. http://localhost:8000/v1 (vLLM)"}
    )
    concurrency: int = field(default=8, metadata={"help": "requests in flight at most"})
    timeout: float = field(default=60.0, metadata={"help": "seconds before a request counts as failed"})
    max_retries: int = field(default=6, metadata={"help": "retries per request before it is reported"})
    backoff: float = field(default=1.0, metadata={"help": "first retry delay in seconds (doubles, jittered)"})
    temperature: float = field(default=0.0, metadata={"help": "sampling temperature of the judge"})
    max_tokens: int = field(default=400, metadata={"help": "longest reply"})
    logprobs: bool = field(default=True, metadata={"help": "ask for top logprobs (expected rating)"})


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[tuple[str, str], ...]  # (role, content)

    def key(self, cfg: ChatConfig) -> str:
        return fingerprint(cfg.model, self.messages, cfg.temperature, cfg.max_tokens, cfg.logprobs)


@dataclass
class ChatRun:
    """What one call of `complete_all` did; `replies` maps request key -> ledger entry."""

    replies: dict[str, dict[str, Any]]
    sent: int = 0  # HTTP requests made, retries included
    retries: int = 0
    cached: int = 0  # requests answered from the ledger
    failed: dict[str, str] = field(default_factory=dict)  # key -> last error


class Ledger:
    """Append-only JSON-lines record of answered requests, one fsynced line per reply."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        text = self.path.read_text(encoding="utf-8")
        lines = text.split("\n")
        if lines and lines[-1] != "":
            # A kill mid-write leaves a last line without its newline: drop it (it was not
            # acknowledged as stored), so the next append starts on a clean line.
            log.warning("%s: dropping an unfinished last line", self.path)
            write_text_atomic(self.path, "\n".join(lines[:-1]) + ("\n" if len(lines) > 1 else ""))
            lines = lines[:-1]
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                self.entries[entry["key"]] = entry
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(
                    f"{self.path}:{lineno}: not a ledger line; restore the file or move it away "
                    "(moving it away means paying for those requests again)"
                ) from None

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def add(self, entry: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.entries[entry["key"]] = entry


def api_key(base_url: str | None) -> str:
    key = os.environ.get(API_KEY_ENV, "")
    if key:
        return key
    if base_url is None:
        raise UserError(f"{API_KEY_ENV} is not set; export it (it is read from the environment only)")
    return "EMPTY"  # local OpenAI-compatible servers (vLLM, llama.cpp) accept any key


def retry_after(headers: Any) -> float | None:
    """Seconds to wait from `retry-after-ms` / `Retry-After` (seconds or an HTTP date), if given."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / scale)
        except ValueError:
            when = email.utils.parsedate_to_datetime(value) if name == "retry-after" else None
            if when is not None:
                return max(0.0, when.timestamp() - time.time())
    return None


def rating_position(tokens: list[dict[str, Any]]) -> dict[str, float] | None:
    """Top logprobs at the rating digit: the last 1-5 token that follows `[[`."""
    text = ""
    found = None
    for t in tokens:
        tok = t.get("token", "")
        if tok.strip() in RATING_DIGITS and text.rstrip().endswith("[["):
            found = {a["token"]: a["logprob"] for a in t.get("top_logprobs") or []}
            found.setdefault(tok, t.get("logprob", 0.0))
        text += tok
    return found


def _entry(key: str, cfg: ChatConfig, body: dict[str, Any]) -> dict[str, Any]:
    try:
        choice = body["choices"][0]
        content = choice["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        raise ValueError("reply has no choices[0].message.content") from None
    logprobs = (choice.get("logprobs") or {}).get("content") or []
    return {
        "key": key,
        "model": cfg.model,
        "reply": content,
        "rating_logprobs": rating_position(logprobs) if logprobs else None,
        "usage": body.get("usage"),
    }


async def _complete_one(
    client: Any, req: ChatRequest, key: str, cfg: ChatConfig, sem: Any, run: ChatRun, ledger: Ledger, bar: Any
) -> None:
    try:
        await _attempts(client, req, key, cfg, sem, run, ledger, bar)
    finally:
        bar.update(1)
        bar.set_postfix_str(
            f"{run.retries} retries, {sum(1 for k in run.failed if k not in run.replies)} failing"
        )


async def _attempts(
    client: Any, req: ChatRequest, key: str, cfg: ChatConfig, sem: Any, run: ChatRun, ledger: Ledger, bar: Any
) -> None:
    import openai

    params: dict[str, Any] = {"temperature": cfg.temperature, "max_tokens": cfg.max_tokens}
    if cfg.logprobs:
        params.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
    messages = [{"role": r, "content": c} for r, c in req.messages]
    for attempt in range(cfg.max_retries + 1):
        wait = None
        async with sem:
            run.sent += 1
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model=cfg.model, messages=messages, **params
                )
                entry = _entry(key, cfg, json.loads(raw.http_response.text))
                ledger.add(entry)
                run.replies[key] = entry
                return
            except openai.APIStatusError as e:
                if e.status_code in (401, 403):
                    raise UserError(
                        f"the server refused the API key (HTTP {e.status_code}); check {API_KEY_ENV}"
                    ) from None
                if e.status_code == 404:
                    raise UserError(
                        f"--model/--base-url: the server has no model {cfg.model!r} (HTTP 404)"
                    ) from None
                if e.status_code != 429 and e.status_code < 500:
                    run.failed[key] = f"HTTP {e.status_code}: {str(e)[:200]}"
                    return
                run.failed[key] = f"HTTP {e.status_code}"
                wait = retry_after(e.response.headers)
            except openai.APITimeoutError:
                run.failed[key] = f"timed out after {cfg.timeout:g} s"
            except openai.APIConnectionError as e:
                run.failed[key] = f"connection error: {type(e.__cause__ or e).__name__}"
            except ValueError as e:  # unreadable JSON or a reply without a message
                run.failed[key] = f"unreadable reply: {str(e)[:200]}"
        if attempt == cfg.max_retries:
            return
        run.retries += 1
        bar.set_postfix_str(f"{run.retries} retries (last: {run.failed[key]})")
        if wait is None:
            wait = cfg.backoff * 2**attempt * (0.5 + random.random())
        wait = min(wait, MAX_WAIT)
        log.info("request %s: %s; retry %d in %.2f s", key, run.failed[key], attempt + 1, wait)
        await asyncio.sleep(wait)
    # unreachable: the loop returns


async def _complete(
    todo: dict[str, ChatRequest], cfg: ChatConfig, run: ChatRun, ledger: Ledger, bar: Any
) -> None:
    import openai

    client = openai.AsyncOpenAI(
        api_key=api_key(cfg.base_url), base_url=cfg.base_url, max_retries=0, timeout=cfg.timeout
    )
    sem = asyncio.Semaphore(cfg.concurrency)
    try:
        await asyncio.gather(
            *(_complete_one(client, r, k, cfg, sem, run, ledger, bar) for k, r in todo.items())
        )
    finally:
        await client.close()
    for k in run.replies:
        run.failed.pop(k, None)


def complete_all(
    requests: list[ChatRequest], cfg: ChatConfig, ledger: Ledger, *, progress: bool = False
) -> ChatRun:
    """Answer every distinct request once: from the ledger if it has it, else from the server.

    With `progress`, a bar (on a terminal) counts finished requests and shows retries and failures.
    """
    if cfg.concurrency < 1:
        raise UserError(f"--concurrency: {cfg.concurrency} must be at least 1")
    if cfg.max_retries < 0:
        raise UserError(f"--max-retries: {cfg.max_retries} must be 0 or more")
    run = ChatRun(replies={})
    todo: dict[str, ChatRequest] = {}
    for req in requests:
        key = req.key(cfg)
        if key in ledger:
            run.replies[key] = ledger.entries[key]
        else:
            todo[key] = req
    run.cached = len(run.replies)
    if todo:
        from tqdm.auto import tqdm

        with tqdm(total=len(todo), desc="judge", unit="request", disable=None if progress else True) as bar:
            _run_sync(lambda: _complete(todo, cfg, run, ledger, bar))
    return run


def _run_sync(make_coro: Any) -> None:
    """Run a coroutine to the end, also from inside a running event loop (a Jupyter notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(make_coro())
        return
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, make_coro()).result()
