"""Benchmarks of the service over loopback: strategies side by side against the same index.

    python -m loadtests.bench latency --dataset mpd --strategies single,diffusion,llm --requests 500
    python -m loadtests.bench load --dataset mpd --strategies diffusion,single --rates 50,100,200

Both start `uvicorn service.app:create_app` on a free loopback port (or use `--url`) and send real
val/test intents. `latency` sends them to `/fanout` one strategy after another (closed loop at
`--concurrency`), records the client latency and the service's own stage times from `Server-Timing`,
then times `/fanout/batch` over batch sizes. `load` drives locust (loadtests/locustfile.py) at fixed
arrival rates per strategy. Each writes `<out>.json`, `<out>.md` and `<out>.png`.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import httpx
import numpy as np
import typer

ROOT = Path(__file__).resolve().parents[1]
app = typer.Typer(add_completion=False)


def machine() -> str:
    """CPU model and core count, for the report's header."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return f"{names[0] if names else platform.machine()}, {os.cpu_count()} CPUs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict[str, str], log_path: Path, timeout_s: float = 300) -> tuple[subprocess.Popen, str]:
    """The service in its own process on loopback, once `/readyz` answers 200."""
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory", "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning", "--no-access-log"]
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
             f"`{report['command']}`", "",
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
                  "machine": machine(),
                  "command": " ".join(["python -m loadtests.bench", *sys.argv[1:]]), "strategies": {},
                  "batch_sweep": {}}
        for name in strategies.split(","):
            typer.echo(f"{name}: {requests} requests ...")
            report["strategies"][name] = closed_loop(url, {**body, "strategy": name}, queries, concurrency)
            run = report["strategies"][name]
            typer.echo(f"  p50 {run['p50_ms']} ms, p95 {run['p95_ms']} ms")
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



def locust_run(url: str, strategy: str, rate: float, users: int, seconds: int, dataset: str, workdir: Path) -> dict:
    """One headless locust run; its aggregated stats (client side) and the service's stage times."""
    prefix = workdir / f"{strategy}-{rate:g}"
    env = {**os.environ, "R4T_STRATEGY": strategy, "R4T_RATE": str(rate), "R4T_DATASET": dataset,
           "R4T_STAGES_OUT": f"{prefix}-stages.json", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"), "--headless",
           "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--host", url, "--csv", str(prefix),
           "--only-summary", "--stop-timeout", "10"]
    subprocess.run(cmd, cwd=ROOT, env=env, check=False, capture_output=True, timeout=seconds + 120)
    with open(f"{prefix}_stats.csv") as fh:
        rows = list(csv.DictReader(fh))
    agg = next(r for r in rows if r["Name"] == "Aggregated")
    stages = json.loads(Path(f"{prefix}-stages.json").read_text()) if Path(f"{prefix}-stages.json").exists() else {}
    n = int(agg["Request Count"])
    return {"strategy": strategy, "target_rps": rate, "users": users, "seconds": seconds, "requests": n,
            "failures": int(agg["Failure Count"]), "error_rate": round(int(agg["Failure Count"]) / max(n, 1), 4),
            "rps": round(float(agg["Requests/s"]), 2),
            **{f"p{p}_ms": float(agg[f"{p}%"]) for p in ("50", "95", "99")},
            "stages_p50_ms": {k: round(float(np.median(v)), 3) for k, v in stages.items() if v}}


def write_load_report(report: dict, strategies: list[str], out: Path) -> None:
    """<out>.json, a markdown table per step and a latency-vs-load plot."""
    dataset, steps = report["dataset"], report["steps"]
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"# /fanout under open-loop load on {dataset} ({report['items']:,} items)", "",
             f"Machine: {report['machine']}; provider {report['provider']}; locust, {report['users']} users. "
             f"Command: `{report['command']}`", "",
             "| strategy | target rps | achieved rps | requests | errors | p50 ms | p95 ms | p99 ms "
             "| stages p50 (ms) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in steps:
        stages = ", ".join(f"{k} {v}" for k, v in s["stages_p50_ms"].items())
        lines.append(f"| {s['strategy']} | {s['target_rps']:g} | {s['rps']} | {s['requests']} | {s['failures']} | "
                     f"{s['p50_ms']:g} | {s['p95_ms']:g} | {s['p99_ms']:g} | {stages} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in strategies:
        mine = [s for s in steps if s["strategy"] == name]
        for p, style in (("p50", "-o"), ("p99", "--x")):
            ax.plot([s["rps"] for s in mine], [s[f"{p}_ms"] for s in mine], style, label=f"{name} {p}")
    ax.set(xlabel="achieved requests/s", ylabel="latency (ms)", yscale="log", title="/fanout latency vs load")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)


@app.command()
def load(
    dataset: str = typer.Option("mpd", help="polyvore | mpd: whose val/test intents are sent"),
    strategies: str = typer.Option("diffusion,single", help="Comma-separated /fanout strategies"),
    rates: str = typer.Option("25,50,100,200", help="Arrival rates (requests/s) to try, ascending"),
    users: int = typer.Option(64, help="Locust users: enough that slow answers do not hold the rate back"),
    seconds: int = typer.Option(20, help="Duration of each step"),
    url: Optional[str] = typer.Option(None, help="A running service; default: start one on loopback"),
    out: Path = typer.Option(Path("results/service_load"), help="Output prefix (.json, .md, .png)"),
) -> None:
    """Open-loop load per strategy at ascending rates (stopping after the first step with errors or a
    p99 over 1 s): achieved QPS, p50/p95/p99 and error rate per step."""
    proc = None
    workdir = Path(tempfile.mkdtemp(prefix="r4t-load-"))
    if url is None:
        out.parent.mkdir(parents=True, exist_ok=True)
        proc, url = start_server({"R4T_DATASET": dataset, "HF_HUB_OFFLINE": "1"}, workdir / "server.log")
    steps = []
    try:
        info = httpx.get(f"{url}/info", timeout=10).json()
        for name in strategies.split(","):
            for rate in (float(r) for r in rates.split(",")):
                step = locust_run(url, name, rate, users, seconds, dataset, workdir)
                typer.echo(f"{name} @ {rate:g}/s: {step['rps']} rps, p50 {step['p50_ms']} p99 {step['p99_ms']} ms, "
                           f"{step['failures']} failures")
                steps.append(step)
                if step["failures"] or step["p99_ms"] > 1000:
                    break
    finally:
        if proc is not None:
            stop_server(proc)
    report = {"dataset": dataset, "items": info["items"], "provider": info["provider"], "users": users,
              "machine": machine(), "command": " ".join(["python -m loadtests.bench load", *sys.argv[2:]]),
              "steps": steps}
    write_load_report(report, strategies.split(","), out)
    typer.echo(f"wrote {out}.json, .md, .png")


if __name__ == "__main__":
    app()
