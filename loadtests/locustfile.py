"""Locust load on /fanout with real val/test intents, one strategy per run.

Closed loop, fixed concurrency (each user sends its next request when the last one answered):
    R4T_STRATEGY=diffusion locust -f loadtests/locustfile.py --headless -u 16 -r 16 -t 60s \
        --host http://127.0.0.1:8000 --csv results/load_diffusion
Open loop, fixed arrival rate: one user whose dispatcher fires requests at exponential intervals (a
Poisson process at R4T_RATE requests/s), each in its own greenlet, so a slow answer never delays
the next arrival (no coordinated omission):
    R4T_STRATEGY=diffusion R4T_RATE=20 locust -f loadtests/locustfile.py --headless -u 1 -r 1 -t 60s ...

Env: R4T_STRATEGY (diffusion | llm | single), R4T_DATASET (whose intents), R4T_K, R4T_LIMIT, R4T_RATE
(0 = closed loop), R4T_MAX_IN_FLIGHT (open loop: arrivals beyond it are counted as dropped),
R4T_SEED, R4T_STAGES_OUT (a JSON file: the service's Server-Timing stage times, the dispatcher's lag
behind schedule, dropped arrivals and the load generator's own CPU seconds).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import resource
import time

import gevent
from gevent.pool import Pool
from locust import FastHttpUser, constant, events, task

from loadtests.bench import intents, parse_server_timing

STRATEGY = os.environ.get("R4T_STRATEGY", "diffusion")
RATE = float(os.environ.get("R4T_RATE", "0"))
MAX_IN_FLIGHT = int(os.environ.get("R4T_MAX_IN_FLIGHT", "256"))
SEED = int(os.environ.get("R4T_SEED", "0"))
BODY = {"strategy": STRATEGY, "k": int(os.environ.get("R4T_K", "10")), "limit": int(os.environ.get("R4T_LIMIT", "10"))}
QUERIES = intents(os.environ.get("R4T_DATASET", "polyvore"), 2000)
_next = itertools.count()
_record: dict = {"stages": {}, "lag_ms": [], "dropped": 0}


def send(client) -> None:
    """One /fanout request; a non-200 answer is a failure; stage times are kept for the report."""
    i = next(_next)
    with client.post("/fanout", json={**BODY, "query": QUERIES[i % len(QUERIES)], "seed": i},
                     name=f"/fanout {STRATEGY}", catch_response=True) as response:
        if response.status_code != 200:
            response.failure(f"HTTP {response.status_code}")
            return
        for stage, ms in parse_server_timing(response.headers.get("server-timing", "")).items():
            _record["stages"].setdefault(stage, []).append(ms)


class ClosedLoopUser(FastHttpUser):
    abstract = RATE > 0
    wait_time = constant(0)

    @task
    def fanout(self):
        send(self.client)


class OpenLoopUser(FastHttpUser):
    abstract = RATE <= 0
    concurrency = MAX_IN_FLIGHT  # connections of this user's pool: one per request in flight
    network_timeout = 30.0
    wait_time = constant(0)

    def on_start(self):
        self.rng = random.Random(SEED)
        self.pool = Pool(MAX_IN_FLIGHT)
        self.due = time.perf_counter() + self.rng.expovariate(RATE)

    @task
    def arrivals(self):
        """Dispatch the arrivals due within the next second (the task returns every second so that
        locust can stop the user at the end of the run)."""
        end = time.perf_counter() + 1.0
        while self.due < end:
            gevent.sleep(max(0.0, self.due - time.perf_counter()))
            _record["lag_ms"].append(1e3 * (time.perf_counter() - self.due))
            if self.pool.full():
                _record["dropped"] += 1
            else:
                self.pool.spawn(send, self.client)
            self.due += self.rng.expovariate(RATE)
        gevent.sleep(max(0.0, end - time.perf_counter()))  # the next arrival is past this window: no spinning

    def on_stop(self):
        self.pool.join(timeout=25)  # the requests still in flight count too


@events.test_start.add_listener
def start_clock(environment, **kwargs):
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _record["cpu_start"] = usage.ru_utime + usage.ru_stime


@events.test_stop.add_listener
def write_record(environment, **kwargs):
    path = os.environ.get("R4T_STAGES_OUT")
    if not path:
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    data = {"stages": {k: sorted(v) for k, v in _record["stages"].items()}, "lag_ms": sorted(_record["lag_ms"]),
            "dropped": _record["dropped"],
            "client_cpu_s": round(usage.ru_utime + usage.ru_stime - _record.get("cpu_start", 0.0), 3)}
    with open(path, "w") as fh:
        json.dump(data, fh)
