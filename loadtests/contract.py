"""The API contract run: schemathesis with every check against a running server, written to a report.

    make serve DATASET=mpd &   # or any running server
    python -m loadtests.contract --url http://127.0.0.1:8000 --max-examples 200

Runs `st run <url>/openapi.json --checks all` (examples and fuzzing phases: the coverage phase enumerates the
recursive filter schema's boundary combinations and does not end in 10 minutes), then writes
`results/contract_<dataset>.md`: what was served (from /info), the command, the cases and every failure.
"""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import httpx
import typer

from service.atomic import write_text_atomic

app = typer.Typer(add_completion=False)


@app.command()
def main(url: str = typer.Option("http://127.0.0.1:8000", help="A running server"),
         max_examples: int = typer.Option(200, help="Fuzzed cases per operation"),
         seed: int = typer.Option(1, help="Hypothesis seed (the run is reproducible)"),
         out_dir: Path = typer.Option(Path("results"), help="Where contract_<dataset>.md goes")) -> None:
    info = httpx.get(f"{url}/info", timeout=30).raise_for_status().json()
    cmd = [str(Path(sys.executable).with_name("st")), "run", f"{url}/openapi.json", "--checks", "all",
           "--phases", "examples,fuzzing", "--max-examples", str(max_examples), "--seed", str(seed), "--no-color",
           "--output-sanitize", "false"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    sections = [run.stdout.find(h) for h in ("ERRORS", "FAILURES") if h in run.stdout]  # what went wrong, first
    start = min(sections) if sections else run.stdout.rfind("SUMMARY")
    summary = run.stdout[max(start, 0):][-12000:]
    cases = re.search(r"(\d+) generated", run.stdout)
    lines = [f"# API contract: schemathesis `--checks all` against the {info['dataset']} server", "",
             f"- date: {datetime.now(timezone.utc):%Y-%m-%d}",
             f"- command: `python -m loadtests.contract --max-examples {max_examples} --seed {seed}` "
             f"(runs `st run <url>/openapi.json {' '.join(cmd[3:])}`)",
             f"- served: {info['items']} items, strategies {', '.join(info['strategies'])}, graph "
             f"{(info.get('graph') or {}).get('name', 'none')}, default {info['default_strategy']['name']}",
             f"- cases: {cases.group(1) if cases else '?'}; exit status {run.returncode} "
             f"({'no failures' if run.returncode == 0 else 'FAILURES below'})", "",
             "```", summary.strip(), "```", ""]
    out = out_dir / f"contract_{info['dataset']}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, "\n".join(lines))
    typer.echo(f"{out}: exit {run.returncode}, {cases.group(1) if cases else '?'} cases")
    raise typer.Exit(run.returncode)


if __name__ == "__main__":
    app()
