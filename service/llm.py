"""The `llm` strategy's fan-out writers: the baseline the diffusion graph must beat.

Two backends, both imported only when configured: an OpenAI-compatible chat endpoint
(`R4T_LLM_URL`, e.g. vLLM serving Qwen3-4B) over httpx, and the tuned local policy
(`R4T_LLM_POLICY`, needs torch from the [train] extra). Both use the training prompts and parser, so
the baseline served is the one evaluated. A malformed answer falls back to the broad query itself.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from service.settings import Settings

log = logging.getLogger(__name__)


class LLMUnavailable(RuntimeError):
    """The LLM endpoint failed or timed out (HTTP 503)."""


class FanoutWriter(Protocol):
    name: str
    concurrency: int  # calls that may run at once

    def write(self, queries: list[str], k: int, seed: int) -> list[list[str]]:
        """Up to k sub-queries per broad query (at least the query itself)."""


def _or_query(subqueries: list[str], query: str, k: int) -> list[str]:
    return subqueries[:k] or [query]


class OpenAIWriter:
    """Chat completions against an OpenAI-compatible server, one request per broad query."""

    def __init__(self, settings: Settings, task: str = "wscr"):
        import httpx

        from service.parse import parse_fanout
        from service.prompts import example_queries, fanout_prompt

        self.httpx, self.parse, self.prompt = httpx, parse_fanout, fanout_prompt
        self.echo = example_queries(settings.dataset)  # a model that repeats the prompt's example wrote nothing
        self.url, self.model, self.dataset, self.task = settings.llm_url.rstrip("/"), settings.llm_model, \
            settings.dataset, task
        self.name, self.concurrency = f"openai:{self.model or self.url}", 8
        headers = {"Authorization": f"Bearer {settings.llm_api_key}"} if settings.llm_api_key else {}
        self.client = httpx.Client(timeout=settings.llm_timeout_s, headers=headers)
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="llm")

    def _one(self, query: str, k: int, seed: int) -> list[str]:
        body = {"model": self.model, "temperature": 0.8, "seed": seed, "max_tokens": 256,
                "messages": [{"role": "user", "content": self.prompt(query, self.task, self.dataset, k=k)}]}
        try:
            response = self.client.post(f"{self.url}/chat/completions", json=body)
            response.raise_for_status()
            text = response.json()["choices"][0]["message"]["content"] or ""
        except (self.httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            raise LLMUnavailable(f"LLM endpoint {self.url}: {exc}") from exc
        return _or_query(self.parse(text, query, k, self.echo).queries, query, k)

    def write(self, queries: list[str], k: int, seed: int) -> list[list[str]]:
        return list(self.pool.map(lambda q: self._one(q, k, seed), queries))


class LocalWriter:
    """The tuned fan-out LM in this process (torch, CPU or GPU); one batched generate per call."""

    def __init__(self, settings: Settings, task: str = "wscr"):
        from training.fanout.infer import FanoutLM, SampleConfig

        self.name, self.concurrency = f"local:{settings.llm_policy}", 1  # one generate at a time: the seed is global
        self.lm = FanoutLM(str(settings.llm_policy), settings.artifacts_dir,
                           SampleConfig(task=task, dataset=settings.dataset, temperature=0.8))

    def write(self, queries: list[str], k: int, seed: int) -> list[list[str]]:
        fanouts = self.lm.sample(queries, 1, seed)
        return [_or_query(group[0].queries, q, k) for q, group in zip(queries, fanouts)]


def make_writer(settings: Settings) -> FanoutWriter | None:
    """The configured backend, or None when the llm strategy is off."""
    if settings.llm_url:
        return OpenAIWriter(settings)
    if settings.llm_policy:
        return LocalWriter(settings)
    return None
