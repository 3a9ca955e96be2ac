"""`r4t`: the one command line, each stage from files to files; this module is its table of contents.

One thin module per stage family, each command parsing its options and calling one function of its stage:
    encoder    r4t encoder export | tune        the text encoder that defines the embedding space
    index      r4t index                        embed the catalog, build its Qdrant index
    space      r4t space build | pairs | export | quality | memory    the co-membership space (MPD)
    fanout     r4t fanout train | latency | record    step (i): the fan-out LM and GRPO
    diffusion  r4t diffusion synth | train | steps | diagnose | distil   steps (ii)-(iii)
    graph      r4t export                       the fan-out graph as one ONNX artifact
    evaluation r4t eval | frontier              the evaluation tables
    bench      r4t bench graph | store | llm     model-only, store-only and LLM-generation benchmarks
    serve      r4t serve                        the HTTP service
It lives in export/, the top of the import graph (export -> training -> service), so it may reach every stage;
each command imports its stage lazily, so `r4t serve` needs only the service's dependencies and never loads torch.
"""

from __future__ import annotations

import typer

from export.cli import bench, evaluation, graph, index, serve
from export.cli.diffusion import diffusion_app
from export.cli.encoder import encoder_app
from export.cli.fanout import fanout_app
from export.cli.space import space_app

app = typer.Typer(help="R4T fan-out retrieval: build, train, evaluate and serve.", no_args_is_help=True)
app.add_typer(encoder_app, name="encoder")
app.command()(index.index)
app.add_typer(space_app, name="space")
app.add_typer(fanout_app, name="fanout")
app.add_typer(diffusion_app, name="diffusion")
app.command("export")(graph.export_graph)
app.command("eval")(evaluation.evaluate)
app.command("frontier")(evaluation.frontier)
bench_app = typer.Typer(help="Benchmarks: the graph alone, the store alone, LLM generation (HTTP: loadtests).",
                        no_args_is_help=True)
bench_app.command("graph")(bench.graph)
bench_app.command("store")(bench.store)
bench_app.command("llm")(bench.llm)
app.add_typer(bench_app, name="bench")
app.command()(serve.serve)
# The names the committed reports' commands were run with, kept so those commands still run.
app.command("bench-graph", hidden=True)(bench.graph)
app.command("bench-store", hidden=True)(bench.store)
fanout_app.command("gen-bench", hidden=True)(bench.llm)
