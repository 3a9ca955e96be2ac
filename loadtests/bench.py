"""Benchmarks of the service over loopback: strategies side by side against the same index.

    python -m loadtests.bench latency --dataset mpd --strategies single,diffusion,llm --requests 500
    python -m loadtests.bench load --dataset mpd --strategies diffusion,single --rates 50,100,200
    python -m loadtests.bench clients --dataset mpd --users 200 --seconds 60   # overload: 200s and 429s only
    python -m loadtests.bench memory --dataset mpd   # peak RSS under the largest allowed batch requests

Each starts `uvicorn service.app:create_app` on a free loopback port (`latency` and `load` can use `--url`)
and sends real val/test intents. `latency` sends them to `/fanout` one strategy after another (closed loop at
`--concurrency`), records the client latency and the service's own stage times from `Server-Timing`,
then times `/fanout/batch` over batch sizes. `load` drives locust (loadtests/locustfile.py) at fixed
arrival rates per strategy; `clients` runs many closed-loop locust users; `memory` reads the service's
VmHWM around its largest allowed requests. Each writes `<out>.json` and `<out>.md` (and a PNG where it plots).
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import httpx
import numpy as np
import typer

from service.host import machine

ROOT = Path(__file__).resolve().parents[1]
app = typer.Typer(add_completion=False)


def server_env() -> dict[str, str]:
    """The R4T_* settings this process passes on to the service it starts (the report names them)."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("R4T_") and "KEY" not in k}


def settings_line(report: dict) -> str:
    env = report.get("server_env")
    if env is None:
        return "service settings: not known (a service this run did not start)"
    return "service settings from the environment: " + (", ".join(f"`{k}={v}`" for k, v in env.items()) or "none")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict[str, str], log_path: Path, timeout_s: float = 300) -> tuple[subprocess.Popen, str]:
    """The service in its own process on loopback, once `/readyz` answers 200."""
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory", "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning", "--no-access-log",
           "--timeout-keep-alive", "75"]  # longer than any idle gap of the client's pooled connections
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=log_path.open("wb"),
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited ({proc.returncode}): {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"the service was not ready within {timeout_s} s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def parse_server_timing(header: str) -> dict[str, float]:
    """'queue;dur=0.1, sample;dur=3.2' -> {'queue': 0.1, 'sample': 3.2}"""
    out = {}
    for part in filter(None, (p.strip() for p in header.split(","))):
        name, _, dur = part.partition(";dur=")
        out[name] = float(dur)
    return out


def intents(dataset: str, n: int) -> list[str]:
    """n real intents from the val and test splits (cycled when there are fewer)."""
    from training.data import default_data_dir, load_dataset

    ds = load_dataset(dataset, default_data_dir())
    pool = [s.intent for split in ("val", "test") for s in ds.split(split)]
    return [pool[i % len(pool)] for i in range(n)]


def closed_loop(base: str, body: dict, queries: list[str], concurrency: int) -> dict:
    """Every query once, `concurrency` in flight; client latency, status and stage times per request."""

    def one(args):
        i, q = args
        started = time.perf_counter()
        r = client.post(f"{base}/fanout", json={**body, "query": q, "seed": i})
        ms = 1e3 * (time.perf_counter() - started)
        return ms, r.status_code, parse_server_timing(r.headers.get("server-timing", ""))

    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:
        one((0, queries[0]))  # warm the connection
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(one, enumerate(queries)))
        wall = time.perf_counter() - started
    ms = np.array([r[0] for r in results])
    ok = [r for r in results if r[1] == 200]
    stages = sorted({k for r in ok for k in r[2]})
    return {
        "requests": len(results), "errors": len(results) - len(ok), "concurrency": concurrency,
        "qps": round(len(results) / wall, 2), "latencies_ms": [round(x, 3) for x in ms],
        **{f"p{p}_ms": round(float(np.percentile(ms, p)), 2) for p in (50, 95, 99)},
        "stages_p50_ms": {s: round(float(np.median([r[2][s] for r in ok if s in r[2]])), 3) for s in stages},
    }


def batch_sweep(base: str, body: dict, queries: list[str], sizes: list[int], repeats: int) -> list[dict]:
    """Median wall time of one /fanout/batch call per batch size, and per query."""
    rows = []
    with httpx.Client(timeout=600) as client:
        for size in sizes:
            times = []
            for r in range(repeats + 1):
                batch = [queries[(r * size + j) % len(queries)] for j in range(size)]
                started = time.perf_counter()
                response = client.post(f"{base}/fanout/batch", json={**body, "queries": batch, "seed": r})
                response.raise_for_status()
                if r:  # the first call of each size warms it
                    times.append(1e3 * (time.perf_counter() - started))
            median = float(np.median(times))
            rows.append({"batch": size, "median_ms": round(median, 2), "per_query_ms": round(median / size, 3)})
    return rows


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cdf, sweep) = plt.subplots(1, 2, figsize=(11, 4))
    for name, run in report["strategies"].items():
        ms = np.sort(run["latencies_ms"])
        cdf.plot(ms, np.arange(1, len(ms) + 1) / len(ms), label=f"{name} (p50 {run['p50_ms']} ms)")
    cdf.set(xscale="log", xlabel="latency per request (ms, client side)", ylabel="fraction of requests",
            title=f"/fanout, concurrency {report['concurrency']}")
    cdf.legend()
    for name, rows in report["batch_sweep"].items():
        sweep.plot([r["batch"] for r in rows], [r["median_ms"] for r in rows], marker="o", label=name)
    sweep.set(xscale="log", yscale="log", xlabel="queries per /fanout/batch call", ylabel="median latency (ms)",
              title="latency vs batch size")
    if report["batch_sweep"]:
        sweep.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(report: dict) -> str:
    lines = [f"# /fanout latency on {report['dataset']} ({report['items']:,} items)", "",
             f"Machine: {report['machine']}; ONNX Runtime provider: {report['provider']}. Command: "
             f"`{report['command']}`; {settings_line(report)}", "",
             "| strategy | requests | errors | concurrency | QPS | p50 ms | p95 ms | p99 ms | server stages p50 (ms) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["strategies"].items():
        stages = ", ".join(f"{k} {v}" for k, v in r["stages_p50_ms"].items())
        lines.append(f"| {name} | {r['requests']} | {r['errors']} | {r['concurrency']} | {r['qps']} | "
                     f"{r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {stages} |")
    for name, rows in report["batch_sweep"].items():
        lines += ["", f"/fanout/batch, strategy {name}:", "", "| batch | median ms | ms per query |", "|---|---|---|"]
        lines += [f"| {r['batch']} | {r['median_ms']} | {r['per_query_ms']} |" for r in rows]
    return "\n".join(lines) + "\n"


@app.command()
def latency(
    dataset: str = typer.Option("mpd", help="polyvore | mpd: whose val/test intents are sent"),
    strategies: str = typer.Option("single,diffusion", help="Comma-separated /fanout strategies"),
    requests: int = typer.Option(500, help="Requests per strategy"),
    concurrency: int = typer.Option(1, help="Requests in flight (closed loop)"),
    k: int = typer.Option(10, help="Fan-outs per query"),
    limit: int = typer.Option(10, help="Items per response"),
    batch_sizes: str = typer.Option("1,8,64,256", help="/fanout/batch sizes to time ('' = skip)"),
    batch_strategies: str = typer.Option("diffusion", help="Strategies of the batch sweep"),
    repeats: int = typer.Option(5, help="Timed calls per batch size"),
    url: Optional[str] = typer.Option(None, help="A running service; default: start one on loopback"),
    out: Path = typer.Option(Path("results/service_latency"), help="Output prefix (.json, .md, .png)"),
) -> None:
    """Per-strategy p50/p95/p99 and QPS, stage times, and the /fanout/batch sweep."""
    env = {"R4T_DATASET": dataset, "HF_HUB_OFFLINE": "1"}
    proc = None
    if url is None:
        out.parent.mkdir(parents=True, exist_ok=True)
        proc, url = start_server(env, Path(tempfile.mkdtemp(prefix="r4t-bench-")) / "server.log")
    try:
        info = httpx.get(f"{url}/info", timeout=10).json()
        queries = intents(dataset, requests)
        body = {"k": k, "limit": limit}
        report = {"dataset": dataset, "items": info["items"], "provider": info["provider"],
                  "graph": (info.get("graph") or {}).get("path"), "llm": info.get("llm"),
                  "concurrency": concurrency, "k": k, "limit": limit,
                  "machine": machine(), "server_env": server_env() if proc else None,
                  "command": " ".join(["python -m loadtests.bench", *sys.argv[1:]]), "strategies": {},
                  "batch_sweep": {}}
        for name in strategies.split(","):
            typer.echo(f"{name}: {requests} requests ...")
            report["strategies"][name] = closed_loop(url, {**body, "strategy": name}, queries, concurrency)
            run = report["strategies"][name]
            typer.echo(f"  p50 {run['p50_ms']} ms, p95 {run['p95_ms']} ms, {run['errors']} errors")
            if run["errors"] == run["requests"]:
                raise typer.BadParameter(f"every {name} request failed: is the strategy configured?")
        sizes = [int(x) for x in batch_sizes.split(",") if x]
        for name in filter(None, batch_strategies.split(",")) if sizes else []:
            report["batch_sweep"][name] = batch_sweep(url, {**body, "strategy": name}, queries, sizes, repeats)
    finally:
        if proc is not None:
            stop_server(proc)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    plot(report, out.with_suffix(".png"))
    typer.echo(f"wrote {out}.json, .md, .png")



def process_cpu_s(pid: Optional[int]) -> float:
    """User + system CPU seconds a process has used so far; 0 when there is none to ask."""
    import psutil  # comes with locust

    return sum(psutil.Process(pid).cpu_times()[:2]) if pid else 0.0


def locust_run(url: str, strategy: str, rate: float, seconds: int, dataset: str, workdir: Path, users: int = 1,
               server_pid: Optional[int] = None) -> dict:
    """One headless locust run: open loop at `rate` requests/s (one dispatching user), or closed loop with
    `users` users when rate is 0. Client-side latency from locust's stats, the service's stage times, the
    dispatcher's lag behind schedule, and the CPU both sides spent."""
    prefix = workdir / f"{strategy}-{rate:g}-{users}"
    env = {**os.environ, "R4T_STRATEGY": strategy, "R4T_RATE": str(rate), "R4T_DATASET": dataset,
           "R4T_STAGES_OUT": f"{prefix}-record.json", "PYTHONPATH": str(ROOT)}
    n_users = 1 if rate > 0 else users
    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"), "--headless",
           "-u", str(n_users), "-r", str(n_users), "-t", f"{seconds}s", "--host", url, "--csv", str(prefix),
           "--only-summary", "--stop-timeout", "30"]
    cpu_before = process_cpu_s(server_pid)
    subprocess.run(cmd, cwd=ROOT, env=env, check=False, capture_output=True, timeout=seconds + 240)
    server_cpu = process_cpu_s(server_pid) - cpu_before
    with open(f"{prefix}_stats.csv") as fh:
        agg = next(r for r in csv.DictReader(fh) if r["Name"] == "Aggregated")
    record = json.loads(Path(f"{prefix}-record.json").read_text())
    n, failures, dropped = int(agg["Request Count"]), int(agg["Failure Count"]), record["dropped"]
    lag = record["lag_ms"]
    return {"strategy": strategy, "target_rps": rate, "users": n_users, "seconds": seconds, "requests": n,
            "failures": failures, "dropped": dropped,
            "error_rate": round((failures + dropped) / max(n + dropped, 1), 4),
            "rps": round(float(agg["Requests/s"]), 3),
            **{f"p{p}_ms": float(agg[f"{p}%"]) if n else None for p in ("50", "95", "99")},
            "stages_p50_ms": {k: round(float(np.median(v)), 3) for k, v in record["stages"].items() if v},
            "dispatch_lag_p99_ms": round(float(np.percentile(lag, 99)), 2) if lag else None,
            "client_cpu_s": record["client_cpu_s"],
            "server_cpu_ms_per_request": round(1e3 * server_cpu / n, 2) if server_pid and n else None}


def probe(url: str, strategy: str, queries: list[str], seconds: float = 10.0, most: int = 50,
          warmup_s: float = 0.0) -> dict:
    """Closed loop at concurrency 1 for about `seconds` (3 to `most` requests): the strategy's QPS and
    p50 with no queueing, which the open-loop rates are scaled by. The first `warmup_s` seconds of
    requests are not counted (a fresh server's index pages are still on disk)."""
    times = []
    with httpx.Client(timeout=120) as client:
        started, i = time.perf_counter(), 0
        while i == 0 or time.perf_counter() - started < warmup_s:
            client.post(f"{url}/fanout", json={"query": queries[i % len(queries)], "strategy": strategy})
            i += 1
        started = time.perf_counter()
        while len(times) < most and (len(times) < 3 or time.perf_counter() - started < seconds):
            t = time.perf_counter()
            client.post(f"{url}/fanout", json={"query": queries[len(times) + 1], "strategy": strategy,
                                               "seed": len(times)}).raise_for_status()
            times.append(time.perf_counter() - t)
    return {"qps": round(len(times) / (time.perf_counter() - started), 3),
            "p50_ms": round(1e3 * float(np.median(times)), 2)}


def write_load_report(report: dict, out: Path) -> None:
    """<out>.json, markdown tables (steps, saturation, sustained run) and latency/throughput vs load plots."""
    dataset, steps = report["dataset"], report["steps"]
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"# /fanout under open-loop load on {dataset} ({report['items']:,} items)", "",
             f"Machine: {report['machine']}; ONNX Runtime provider {report['provider']}; the load generator (locust, "
             f"one user dispatching Poisson arrivals) shares the machine with the service. Command: "
             f"`{report['command']}`; {settings_line(report)}", "",
             "Each strategy is first probed closed-loop at concurrency 1; open-loop rates are fractions of that QPS. "
             "A step stops the sweep when it has errors (non-200 answers or arrivals dropped at the client's "
             f"in-flight cap) or its p50 passes {report['saturated_p50_factor']:g}× the probe's p50 (queueing).", "",
             "| strategy | probe QPS (c=1) | probe p50 ms | saturation QPS | step |", "|---|---|---|---|---|"]
    for name, sat in report["saturation"].items():
        lines.append(f"| {name} | {sat['probe_qps']} | {sat['probe_p50_ms']} | {sat['qps']} | "
                     f"{sat['at_target_rps']:g} rps target |")
    lines += ["", "| strategy | target rps | achieved rps | requests | errors | p50 ms | p95 ms | p99 ms "
              "| server CPU ms/req | client CPU s | dispatch lag p99 ms | stages p50 (ms) |", "|---" * 12 + "|"]
    rows = [*steps, *([report["sustained"]] if report.get("sustained") else [])]
    for s in rows:
        stages = ", ".join(f"{k} {v}" for k, v in s["stages_p50_ms"].items())
        tag = f" ({s['seconds']} s sustained)" if s is report.get("sustained") else ""
        lines.append(f"| {s['strategy']}{tag} | {s['target_rps']:g} | {s['rps']} | {s['requests']} | "
                     f"{s['failures'] + s['dropped']} | {s['p50_ms']} | {s['p95_ms']} | {s['p99_ms']} | "
                     f"{s['server_cpu_ms_per_request']} | {s['client_cpu_s']} | {s['dispatch_lag_p99_ms']} | "
                     f"{stages} |")
    sustained = report.get("sustained")
    if sustained:
        ok = sustained["p99_ms"] <= report["sustain_p99_ms"] and sustained["failures"] + sustained["dropped"] == 0
        lines += ["", f"Sustained: {sustained['strategy']} at {sustained['target_rps']:g} requests/s for "
                  f"{sustained['seconds']} s: {sustained['requests']} requests, p99 {sustained['p99_ms']:g} ms, "
                  f"{sustained['failures'] + sustained['dropped']} errors: "
                  f"{'meets' if ok else 'misses'} p99 ≤ {report['sustain_p99_ms']:g} ms with 0 errors."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, thr) = plt.subplots(1, 2, figsize=(11, 4))
    for name in report["saturation"]:
        mine = [s for s in steps if s["strategy"] == name]
        for p, style in (("p50", "-o"), ("p99", "--x")):
            lat.plot([s["target_rps"] for s in mine], [s[f"{p}_ms"] for s in mine], style, label=f"{name} {p}")
        thr.plot([s["target_rps"] for s in mine], [s["rps"] for s in mine], "-o", label=name)
    lat.set(xscale="log", yscale="log", xlabel="offered load (requests/s, Poisson)", ylabel="latency (ms)",
            title="/fanout latency vs load")
    thr.plot(*[[min(s["target_rps"] for s in steps), max(s["target_rps"] for s in steps)]] * 2, ":", color="grey",
             label="achieved = offered")
    thr.set(xscale="log", yscale="log", xlabel="offered load (requests/s)", ylabel="achieved requests/s",
            title="throughput")
    for ax in (lat, thr):
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)


@app.command()
def load(
    dataset: str = typer.Option("mpd", help="polyvore | mpd: whose val/test intents are sent"),
    strategies: str = typer.Option("single,diffusion", help="Comma-separated /fanout strategies"),
    fractions: str = typer.Option("0.25,0.5,1,1.5,2,3", help="Offered rates as fractions of each strategy's "
                                                            "closed-loop QPS at concurrency 1, ascending"),
    seconds: int = typer.Option(20, help="Shortest duration of a step"),
    min_requests: int = typer.Option(20, help="Steps last long enough for this many arrivals ..."),
    max_seconds: int = typer.Option(120, help="... but no longer than this"),
    saturated_p50_factor: float = typer.Option(3.0, help="A step whose p50 passes this × the probe's p50 is "
                                                         "saturated"),
    warmup_s: float = typer.Option(30.0, help="Uncounted closed-loop requests per strategy before its probe"),
    sustain_strategy: str = typer.Option("diffusion", help="Strategy of the sustained run ('' = none)"),
    sustain_p99_ms: float = typer.Option(50.0, help="The sustained run's rate is the highest step with this p99"),
    sustain_seconds: int = typer.Option(60, help="Duration of the sustained run"),
    url: Optional[str] = typer.Option(None, help="A running service; default: start one on loopback"),
    out: Path = typer.Option(Path("results/service_load"), help="Output prefix (.json, .md, .png)"),
) -> None:
    """Open-loop load per strategy at rising Poisson arrival rates until it saturates: achieved QPS,
    p50/p95/p99, errors; then a sustained run at the highest rate whose p99 met the target."""
    proc = None
    workdir = Path(tempfile.mkdtemp(prefix="r4t-load-"))
    if url is None:
        out.parent.mkdir(parents=True, exist_ok=True)
        proc, url = start_server({"R4T_DATASET": dataset, "HF_HUB_OFFLINE": "1"}, workdir / "server.log")
    pid = proc.pid if proc else None
    steps, saturation, sustained = [], {}, None
    try:
        info = httpx.get(f"{url}/info", timeout=10).json()
        queries = intents(dataset, 200)
        for name in strategies.split(","):
            base = probe(url, name, queries, warmup_s=warmup_s)
            typer.echo(f"{name}: closed loop {base['qps']} QPS, p50 {base['p50_ms']} ms")
            mine = []
            for fraction in (float(f) for f in fractions.split(",")):
                rate = round(fraction * base["qps"], 3)
                duration = int(min(max(seconds, np.ceil(min_requests / rate)), max_seconds))
                step = locust_run(url, name, rate, duration, dataset, workdir, server_pid=pid)
                mine.append(step)
                typer.echo(f"  {rate:g}/s for {duration} s: {step['rps']} rps, p50 {step['p50_ms']} p99 "
                           f"{step['p99_ms']} ms, {step['failures']} failures, {step['dropped']} dropped")
                if step["failures"] or step["dropped"] or (step["p50_ms"] or 0) > saturated_p50_factor * base["p50_ms"]:
                    break
            clean = [s for s in mine if not (s["failures"] or s["dropped"])] or mine
            best = max(clean, key=lambda s: s["rps"])
            saturation[name] = {"probe_qps": base["qps"], "probe_p50_ms": base["p50_ms"], "qps": best["rps"],
                                "at_target_rps": best["target_rps"]}
            steps += mine
        held = sorted((s for s in steps if s["strategy"] == sustain_strategy and s["requests"]
                       and s["p99_ms"] <= sustain_p99_ms and not (s["failures"] or s["dropped"])),
                      key=lambda s: -s["target_rps"])
        for step in held[:3]:  # the highest rate first; a lower one if the long run misses the target
            sustained = locust_run(url, sustain_strategy, step["target_rps"], sustain_seconds, dataset, workdir,
                                   server_pid=pid)
            typer.echo(f"sustained {sustain_strategy} at {step['target_rps']:g}/s: p99 {sustained['p99_ms']} ms, "
                       f"{sustained['failures'] + sustained['dropped']} errors")
            if sustained["p99_ms"] <= sustain_p99_ms and not (sustained["failures"] or sustained["dropped"]):
                break
    finally:
        if proc is not None:
            stop_server(proc)
    report = {"dataset": dataset, "items": info["items"], "provider": info["provider"],
              "graph": (info.get("graph") or {}).get("path"), "machine": machine(),
              "server_env": server_env() if proc else None,
              "command": " ".join(["python -m loadtests.bench load", *sys.argv[2:]]),
              "saturated_p50_factor": saturated_p50_factor, "sustain_p99_ms": sustain_p99_ms,
              "saturation": saturation, "steps": steps, "sustained": sustained}
    write_load_report(report, out)
    typer.echo(f"wrote {out}.json, .md, .png")


@contextmanager
def own_server(dataset: str, name: str):
    """A service this run starts for `dataset` (the R4T_* environment passes on): yields (process, url, /info,
    a work directory); stopped on the way out."""
    workdir = Path(tempfile.mkdtemp(prefix=f"r4t-{name}-"))
    proc, url = start_server({"HF_HUB_OFFLINE": "1", "R4T_DATASET": dataset}, workdir / "server.log")
    try:
        yield proc, url, httpx.get(f"{url}/info", timeout=10).json(), workdir
    finally:
        stop_server(proc)


def write_report(report: dict, out: Path, title: str, body: list[str]) -> None:
    """<out>.json and <out>.md: the title, machine, command and service settings, then `body`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    head = [f"# {title}", "", f"Machine: {report['machine']}. Command: `{report['command']}`; {settings_line(report)}",
            ""]
    out.with_suffix(".md").write_text("\n".join(head + body) + "\n")


def memory_kib(pid: int) -> dict[str, int]:
    """The process's resident set now and at its peak (VmRSS, VmHWM from /proc), in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"rss_kib": int(fields["VmRSS"].split()[0]), "peak_kib": int(fields["VmHWM"].split()[0])}


@app.command()
def memory(
    dataset: str = typer.Option("mpd", help="polyvore | mpd: whose val/test intents are sent"),
    strategies: str = typer.Option("single,diffusion", help="Strategies of the largest batch"),
    concurrent: int = typer.Option(2, help="Largest batches in flight at once (R4T_MAX_QUEUE admits 2 of 256)"),
    out: Path = typer.Option(Path("results/service_memory"), help="Output prefix (.json, .md)"),
) -> None:
    """Peak resident memory of a service it starts, under the largest request its settings allow: a
    /fanout/batch of R4T_MAX_BATCH_QUERIES intents at the largest k, limit and limit_per_fanout (MMR over
    the most candidates and `explain` in the last round), `concurrent` of them at once."""
    rounds = []
    with own_server(dataset, "memory") as (proc, url, info, _):
        props = httpx.get(f"{url}/openapi.json", timeout=10).json()["components"]["schemas"]["BatchRequest"][
            "properties"]
        n, k, lim = props["queries"]["maxItems"], props["k"]["anyOf"][0]["maximum"], props["limit"]["maximum"]
        queries = intents(dataset, n * concurrent)
        rounds.append({"request": "none (ready)", **memory_kib(proc.pid), "statuses": [], "seconds": 0.0})
        bodies = [(name, {"strategy": name, "k": k, "limit": lim, "limit_per_fanout": lim}) for name in
                  strategies.split(",")]
        bodies.append((bodies[-1][0] + " + mmr + explain", {**bodies[-1][1], "mmr": {"candidates": lim},
                                                            "explain": True}))
        with httpx.Client(timeout=600) as client:
            for label, body in bodies:
                def one(i: int) -> int:
                    batch = {**body, "queries": queries[i * n:(i + 1) * n], "seed": i}
                    return client.post(f"{url}/fanout/batch", json=batch).status_code

                started = time.perf_counter()
                with ThreadPoolExecutor(concurrent) as pool:
                    statuses = list(pool.map(one, range(concurrent)))
                rounds.append({"request": f"{concurrent} x /fanout/batch of {n} queries, {label}, k {k}, limit "
                                          f"{lim}, limit_per_fanout {lim}", **memory_kib(proc.pid),
                               "statuses": statuses, "seconds": round(time.perf_counter() - started, 2)})
                typer.echo(f"{label}: statuses {statuses}, peak {rounds[-1]['peak_kib'] / 1024:.0f} MiB")
    report = {"dataset": dataset, "items": info["items"], "machine": machine(), "server_env": server_env(),
              "command": " ".join(["python -m loadtests.bench memory", *sys.argv[2:]]), "rounds": rounds,
              "peak_mib": round(max(r["peak_kib"] for r in rounds) / 1024, 1)}
    body = ["Resident memory of the service process (VmRSS after the round, VmHWM = peak so far):", "",
            "| after | statuses | seconds | RSS MiB | peak MiB |", "|---|---|---|---|---|"]
    body += [f"| {r['request']} | {' '.join(map(str, r['statuses'])) or '-'} | {r['seconds']} | "
             f"{r['rss_kib'] / 1024:.0f} | {r['peak_kib'] / 1024:.0f} |" for r in rounds]
    write_report(report, out, f"Service memory under the largest allowed requests ({dataset}, {info['items']:,} "
                              "items)", body)
    typer.echo(f"wrote {out}.json, .md: peak {report['peak_mib']} MiB")


def failure_counts(prefix: Path) -> dict[str, int]:
    """locust's failures by message ('HTTP 429': n, ...) from <prefix>_failures.csv."""
    path = Path(f"{prefix}_failures.csv")
    if not path.exists():
        return {}
    with path.open() as fh:
        return {row["Error"]: int(row["Occurrences"]) for row in csv.DictReader(fh)}


@app.command()
def clients(
    dataset: str = typer.Option("mpd", help="polyvore | mpd: whose val/test intents are sent"),
    strategies: str = typer.Option("diffusion,single", help="Comma-separated /fanout strategies"),
    users: int = typer.Option(200, help="Concurrent clients, each sending its next request on an answer"),
    seconds: int = typer.Option(60, help="Duration per strategy"),
    out: Path = typer.Option(Path("results/service_clients"), help="Output prefix (.json, .md)"),
) -> None:
    """Overload: `users` closed-loop clients for `seconds` per strategy against a service it starts: every
    answer is a 200 or a 429 (the queue is full) and nothing else; the report counts both and the p99."""
    runs = []
    with own_server(dataset, "clients") as (proc, url, info, workdir):
        for name in strategies.split(","):
            run = locust_run(url, name, 0, seconds, dataset, workdir, users=users, server_pid=proc.pid)
            errors = failure_counts(workdir / f"{name}-0-{users}")
            run |= {"http_429": sum(n for e, n in errors.items() if "429" in e),
                    "other_errors": sum(n for e, n in errors.items() if "429" not in e), "errors_by_kind": errors}
            runs.append(run)
            typer.echo(f"{name}: {run['requests']} requests, {run['rps']} rps, p99 {run['p99_ms']} ms, "
                       f"{run['http_429']} x 429, {run['other_errors']} other errors")
    report = {"dataset": dataset, "items": info["items"], "machine": machine(), "server_env": server_env(),
              "command": " ".join(["python -m loadtests.bench clients", *sys.argv[2:]]), "runs": runs}
    body = ["Closed loop: each client sends its next /fanout when the last one is answered. A full queue answers "
            "429 with Retry-After (counted, not retried); any other non-200 is an error.", "",
            "| strategy | requests | rps | p50 ms | p99 ms | 429 | other errors |", "|---|---|---|---|---|---|---|"]
    body += [f"| {r['strategy']} | {r['requests']} | {r['rps']} | {r['p50_ms']} | {r['p99_ms']} | {r['http_429']} | "
             f"{r['other_errors']} |" for r in runs]
    write_report(report, out, f"{users} concurrent clients for {seconds} s per strategy ({dataset}, "
                              f"{info['items']:,} items)", body)
    typer.echo(f"wrote {out}.json, .md")

if __name__ == "__main__":
    app()
