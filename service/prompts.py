"""The paper's fan-out prompts (shared/paper.md §2.2, Appendix D), worded per domain.

OAR (open-ended) asks for diverse queries on the same topic; WSCR (outfit / playlist) asks for
queries that together retrieve the items of one set. `think=False` drops the <think> block: a 135M
model gains nothing from it and it costs tokens. `PREFILL` opens the assistant turn with the start of
the JSON list, which lifts SmolLM2's parse rate from ~5/32 to ~22/32 (measured); the parser reads
PREFILL + completion.
"""

from __future__ import annotations

import json
from typing import Literal

Task = Literal["oar", "wscr"]
DOMAINS = {"polyvore": ("fashion", "an outfit"), "mpd": ("music", "a playlist")}
PREFILL = '<queries>\n["'
# A worked example per domain (example="domain"): SmolLM2-135M copies the paper's "query1", "query2"
# placeholders verbatim (measured: most zero-shot completions), so small policies get concrete ones.
EXAMPLES = {
    "polyvore": ("winter office outfit", ["camel wool coat", "black ankle boots", "grey knit sweater",
                                          "tailored wool trousers", "leather tote bag", "silk scarf"]),
    "mpd": ("road trip", ["classic rock driving songs", "indie folk road anthems", "summer pop hits",
                          "country highway songs", "90s sing along", "chill acoustic drive"]),
}

_FIRST = {
    "oar": ("You are a Query Writer. Given a broad query, your task is to create a list of queries which are "
            "diverse but cover the same topic as the broad query (better adding/changing one to three words). "
            "These queries will be used to search a {domain} dataset."),
    "wscr": ("You are a Query Writer. Your task is to create a list of queries for a broad query given by me "
             "to retrieve a set of items from a {domain} dataset to form {whole}."),
}
_THINK = """You should show your thinking process in <think> </think> tags. You MUST return the final list of queries in
JSON format in <queries> </queries> tags.
For example:
<think>
[thinking process]
</think>
"""
_NO_THINK = """You MUST return the final list of queries in JSON format in <queries> </queries> tags.
For example:
"""
_PAPER_LIST = """[
    "query1",
    "query2",
    "query3",
    ... (up to {k} queries)
]"""
_EXAMPLE = """<queries>
{listing}
</queries>
The broad query is: <broad_query>{query}</broad_query>"""
Example = Literal["paper", "domain"]


def fanout_prompt(query: str, task: Task, dataset: str, think: bool = False, k: int = 10,
                  example: Example = "domain") -> str:
    """The user message for one broad query; example="paper" keeps Appendix D's placeholder list."""
    if task not in _FIRST:
        raise ValueError(f"task must be 'oar' or 'wscr', got {task!r}")
    domain, whole = DOMAINS[dataset]
    if example == "paper":
        listing = _PAPER_LIST.format(k=k)
    else:
        broad, subs = EXAMPLES[dataset]
        listing = f"(for the broad query \"{broad}\")\n" + json.dumps(subs)
    return "\n".join([_FIRST[task].format(domain=domain, whole=whole), (_THINK if think else _NO_THINK)
                      + _EXAMPLE.format(listing=listing, query=query)])


def chat_prompt(tokenizer, query: str, task: Task, dataset: str, think: bool = False, k: int = 10,
                prefill: bool = True, example: Example = "domain") -> str:
    """The full model input: chat template, generation prompt, and the list opening when `prefill`."""
    messages = [{"role": "user", "content": fanout_prompt(query, task, dataset, think, k, example)}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text + (PREFILL if prefill and not think else "")


def example_queries(dataset: str, example: str = "domain") -> tuple[str, ...]:
    """What the prompt's worked example shows, its broad query and its sub-queries: a policy that repeats
    them has fanned out nothing (on MPD, half of SmolLM2's lists held the example's "road trip")."""
    if example != "domain" or dataset not in EXAMPLES:
        return ()
    broad, subs = EXAMPLES[dataset]
    return (broad, *subs)
