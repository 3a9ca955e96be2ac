"""Locust load on /fanout with real val/test intents, one strategy per run.

Closed loop, fixed concurrency (each user sends its next request when the last one answered):
    R4T_STRATEGY=diffusion locust -f loadtests/locustfile.py --headless -u 16 -r 16 -t 60s \
        --host http://127.0.0.1:8000 --csv results/load_diffusion
Open loop, fixed arrival rate (users pace themselves to R4T_RATE requests/s in total; give enough
users that a slow answer does not hold the rate back):
    R4T_STRATEGY=diffusion R4T_RATE=100 locust -f loadtests/locustfile.py --headless -u 64 -r 64 -t 60s ...

Env: R4T_STRATEGY (diffusion | llm | single), R4T_DATASET (whose intents), R4T_K, R4T_LIMIT, R4T_RATE
(0 = closed loop), R4T_STAGES_OUT (a JSON file for the service's Server-Timing stage times).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import threading

import gevent
from locust import FastHttpUser, constant, constant_throughput, events, task

from loadtests.bench import intents, parse_server_timing

STRATEGY = os.environ.get("R4T_STRATEGY", "diffusion")
RATE = float(os.environ.get("R4T_RATE", "0"))
BODY = {"strategy": STRATEGY, "k": int(os.environ.get("R4T_K", "10")), "limit": int(os.environ.get("R4T_LIMIT", "10"))}
QUERIES = intents(os.environ.get("R4T_DATASET", "polyvore"), 2000)
_next = itertools.count()
_stages: dict[str, list[float]] = {}
_lock = threading.Lock()


class FanoutUser(FastHttpUser):
    def __init__(self, environment):
        super().__init__(environment)
        users = max(1, environment.parsed_options.num_users if environment.parsed_options else 1)
        # locust's wait functions take the user as argument (they are meant as class attributes)
        self._pace = constant_throughput(RATE / users) if RATE > 0 else constant(0)
        self._period = users / RATE if RATE > 0 else 0.0

    def on_start(self):
        # Open loop: start each user at a random phase of its period, so the users' arrivals spread
        # over time instead of landing together in bursts of `users` requests every period.
        gevent.sleep(random.uniform(0, self._period))

    def wait_time(self) -> float:
        return self._pace(self)

    @task
    def fanout(self):
        i = next(_next)
        with self.client.post("/fanout", json={**BODY, "query": QUERIES[i % len(QUERIES)], "seed": i},
                              name=f"/fanout {STRATEGY}", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
                return
            stages = parse_server_timing(response.headers.get("server-timing", ""))
            with _lock:
                for stage, ms in stages.items():
                    _stages.setdefault(stage, []).append(ms)


@events.test_stop.add_listener
def write_stages(environment, **kwargs):
    path = os.environ.get("R4T_STAGES_OUT")
    if path:
        with _lock:
            data = {stage: sorted(values) for stage, values in _stages.items()}
        with open(path, "w") as fh:
            json.dump(data, fh)
