"""`r4t space ...`: the co-membership space, its neighbourhood-teacher pairs, its fan-out graph and its quality table.

The chain, every stage cached (a rerun with its output present is a no-op):
    r4t space build --dataset mpd      # artifacts/spaces/space-mpd, encoders/space-mpd, index/mpd/space-mpd
    r4t space pairs --dataset mpd      # artifacts/pairs/space-mpd-teacher (every train intent, own set left out)
    r4t diffusion train --dataset mpd --name space-mpd-teacher --relative --width 128 --depth 2 ...
    r4t space export --dataset mpd     # artifacts/graphs/space-mpd-s4, with its measured val recall vs single
    r4t space quality --dataset mpd    # results/quality_mpd.{json,md}, every held-out set
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from export.cli.common import ARTIFACTS_OPT, DATA_OPT

space_app = typer.Typer(help="The co-membership space, its teacher pairs, graph and quality table.",
                        no_args_is_help=True)

NAME_OPT = typer.Option("", help="Space name; default space-<dataset>")
SPLITS_OPT = typer.Option("val,test", help="Held-out splits to score, comma-separated")
MAX_QUERIES_OPT = typer.Option(0, help="0 = every held-out set (the report); > 0 for a quick look")
VENDI_RUNS_OPT = typer.Option(5, help="Runs per query for the run-to-run Vendi")


def _paths(dataset: str, name: str, artifacts: Path | None):
    from export.cli.common import settings_for

    settings = settings_for(dataset, artifacts)
    name = name or f"space-{dataset}"
    at = settings.layout
    return settings, name, {"space": at.space(name), "encoder": at.encoder(name), "index": at.index(dataset, name),
                            "text": at.encoder(settings.encoder), "text_index": at.index(dataset, settings.encoder),
                            "pairs": at.pairs(f"{name}-teacher"), "graph": at.graph(f"{name}-s4"),
                            "model": at.denoiser(f"{name}-teacher")}


def _dataset(dataset: str, data_dir: Path | None):
    from training.data import default_data_dir, load_dataset

    return load_dataset(dataset, data_dir or default_data_dir())


def _exact_copy(index_dir: Path, ds, distance: str):
    """An exact in-memory copy of an Edge index (what the reports score on), the shard closed again."""
    from service.store import EdgeStore
    from training.exact import ExactStore

    store = EdgeStore.open(index_dir / "shard")
    try:
        return ExactStore.copy_of(store, list(ds.items), distance)
    finally:
        store.close()


def _scoring(dataset: str, name: str, artifacts: Path | None, data_dir: Path | None, splits: str, vendi_runs: int,
             max_queries: int, **cfg):
    """What a report over the held-out sets starts from: the space's paths, dataset, space and QualityConfig."""
    from export.cli.common import start_dataset
    from training.quality import QualityConfig
    from training.space import Space

    start_dataset(dataset)
    _, _, p = _paths(dataset, name, artifacts)
    return p, _dataset(dataset, data_dir), Space.load(p["space"]), QualityConfig(
        splits=tuple(s for s in splits.split(",") if s), vendi_runs=vendi_runs, max_queries=max_queries, **cfg)


def _command() -> str:
    return "r4t " + shlex.join(sys.argv[1:])


@space_app.command("build")
def build(
    dataset: str = typer.Option("mpd", help="polyvore | mpd"),
    name: str = NAME_OPT,
    kind: str = typer.Option("", help="comember (SVD of set co-membership) | text; default by dataset"),
    factors: int = typer.Option(128, help="SVD rank of the co-membership factors"),
    gamma: float = typer.Option(2.0, help="Comember: item = V·σ^(gamma/2), set = U·σ^(gamma/2)"),
    neighbours: Optional[int] = typer.Option(None, help="Nearest train titles averaged into the query; default by kind"),
    temperature: Optional[float] = typer.Option(None, help="Softmax temperature over those titles' similarities "
                                                "(0 = plain mean); default by kind"),
    text_weight: Optional[float] = typer.Option(None, help="Text space: weight of the query's own text in the "
                                                "query head; default: the best on val sets"),
    artifacts: Optional[Path] = ARTIFACTS_OPT,
    data_dir: Optional[Path] = DATA_OPT,
) -> None:
    """Fit the space on train sets, export its query encoder (ONNX, parity-checked) and build its index."""
    from export.cli.common import export_encoder_artifact, parity_texts, start_dataset
    from export.space import export_space_encoder
    from service.encoder import OnnxEncoder
    from training.index import IndexConfig, build_index
    from training.space import Space, SpaceConfig, build_space

    start_dataset(dataset)
    settings, name, p = _paths(dataset, name, artifacts)
    if not (p["text"] / "manifest.json").is_file():
        export_encoder_artifact("", settings.encoder, artifacts, data_dir)
    ds = _dataset(dataset, data_dir)
    if not (p["space"] / "space.json").is_file():
        cfg = SpaceConfig(kind=kind, factors=factors, gamma=gamma, neighbours=neighbours, temperature=temperature,
                          text_weight=text_weight)
        build_space(ds, OnnxEncoder(p["text"]), cfg, name).save(p["space"])
    space = Space.load(p["space"])
    if not (p["encoder"] / "manifest.json").is_file():
        export_space_encoder(p["encoder"], space, p["text"], parity_texts(data_dir, 64))
    meta = build_index(ds, OnnxEncoder(p["encoder"]), p["index"], IndexConfig(), space=space)
    typer.echo(f"space {name} ({space.kind}, {space.dim}-d, {space.distance}, text weight {space.text_weight:g}): "
               f"{meta['items']} items in {p['index']}")


@space_app.command("pairs")
def pairs(
    dataset: str = typer.Option("mpd", help="polyvore | mpd"),
    name: str = NAME_OPT,
    blend: float = typer.Option(0.25, help="Row = normalise(q + blend·(centroid − q))"),
    samples: int = typer.Option(1, help="Target sets per intent (K-means seeds)"),
    artifacts: Optional[Path] = ARTIFACTS_OPT,
) -> None:
    """Neighbourhood-teacher pairs: every train intent -> K rows from the sets of the nearest *other* intents."""
    from export.cli.common import start_dataset
    from training.space import SYNTH_FILE, Space, TeacherConfig, write_teacher_pairs

    start_dataset(dataset)
    _, name, p = _paths(dataset, name, artifacts)
    if (p["pairs"] / SYNTH_FILE).is_file():
        typer.echo(f"{p['pairs']} is complete ({SYNTH_FILE}): nothing to do")
        return
    space, cfg = Space.load(p["space"]), TeacherConfig(blend=blend, samples=samples)
    total = write_teacher_pairs(space, cfg, p["pairs"], {"dataset": dataset, "task": "teacher", "space": name})
    typer.echo(f"{p['pairs']}: {total} pairs")


@space_app.command("export")
def export(
    dataset: str = typer.Option("mpd", help="polyvore | mpd"),
    name: str = NAME_OPT,
    steps: int = typer.Option(4, help="Sampler steps unrolled into the graph"),
    artifacts: Optional[Path] = ARTIFACTS_OPT,
    data_dir: Optional[Path] = DATA_OPT,
) -> None:
    """Space head + denoiser as one graph; its val recall against `single` lands in the manifest (`/info`)."""
    from export.cli.common import start_dataset
    from export.fanout import FanoutExportConfig, export_fanout
    from export.space import load_head
    from service.atomic import write_json_atomic
    from service.manifest import load_manifest
    from training.diffusion.pairs import read_report
    from training.diffusion.train import load_model
    from training.space import Space

    start_dataset(dataset)
    _, name, p = _paths(dataset, name, artifacts)
    ds = _dataset(dataset, data_dir)
    space = Space.load(p["space"])
    head, _ = load_head(space, p["text"])
    queries = [s.intent for s in ds.split("val")[:64]]
    report = read_report(p["pairs"])
    provenance = {"space": name, "space_kind": space.kind, "distance": space.distance,
                  "teacher": report.get("teacher"), "pairs": report["pairs_total"]}
    export_fanout(p["graph"], p["encoder"], load_model(p["model"]), FanoutExportConfig(steps=steps), queries,
                  dataset, head=head, provenance=provenance)
    # The measured check goes into the manifest only: it is not among the hashed files, so nothing re-exports.
    provenance["val"] = _val_check(ds, p)
    manifest = load_manifest(p["graph"])
    manifest.config["provenance"] = provenance
    write_json_atomic(p["graph"] / "manifest.json", manifest.model_dump())
    typer.echo(f"{p['graph']}: {provenance['val']}")


def _val_check(ds, p) -> dict:
    """The graph against `single` on every val set (one run, exact search as in the quality report): recall and
    paired interval at every cut-off; non-inferior only if the lower bound is >= -0.005 at all of them."""
    from service.encoder import OnnxEncoder
    from service.graph import FanoutGraph
    from service.resolver import Resolver
    from training.evaluate import EvalConfig, graph_strategy, score_split, single_strategy
    from training.frontier import paired_difference
    from training.space import Space

    enc, res = OnnxEncoder(p["encoder"]), Resolver(_exact_copy(p["index"], ds, Space.load(p["space"]).distance))
    cfg = EvalConfig(dataset=ds.name, splits=("val",), vendi_runs=1)
    single = score_split(single_strategy(enc, res, cfg.k), ds, "val", cfg)
    graph = score_split(graph_strategy("diffusion", FanoutGraph(p["graph"]), enc, res), ds, "val", cfg)
    at = {}
    for n in cfg.ns:
        ci = paired_difference(graph.recall_per_query[n], single.recall_per_query[n])
        at[str(n)] = (round(graph.recall[n], 5), round(single.recall[n], 5), [round(x, 5) for x in ci])
    return _checked("diffusion", single.queries, "exact", at)


def _checked(name: str, sets: int, search: str, at: dict[str, tuple[float, float, list[float]]]) -> dict:
    """A val check as the service's default reads it, from (recall, single's recall, paired CI) per cut-off:
    non-inferior only if the CI's lower bound is >= -0.005 at all of them."""
    at = {n: {f"recall_{name}": r, "recall_single": r_single, "ci_vs_single": ci, "non_inferior": ci[1] >= -0.005}
          for n, (r, r_single, ci) in at.items()}
    return {"sets": sets, "search": search, "at": at, "non_inferior": all(a["non_inferior"] for a in at.values())}


@space_app.command("quality")
def quality(
    dataset: str = typer.Option("mpd", help="polyvore | mpd"),
    name: str = NAME_OPT,
    jitter: str = typer.Option("0.05,0.1,0.2,0.4", help="Scales of the jittered-query control"),
    memory_jitter: str = typer.Option("0.1,0.2", help="Scales of the jittered control around the memory (rows "
                                      "jitter@<s>+memory, beside diffusion+memory); the space needs a memory"),
    memory_depth: int = typer.Option(2_000, help="The served memory row's depth (R4T_MEMORY_DEPTH)"),
    splits: str = SPLITS_OPT,
    max_queries: int = MAX_QUERIES_OPT,
    vendi_runs: int = VENDI_RUNS_OPT,
    exact: bool = typer.Option(True, help="Score on an exact in-memory copy of each index (the served HNSW "
                               "index with --no-exact: ~100x slower at N = 5000)"),
    out: Path = typer.Option(Path("results"), help="Directory of quality_<dataset>.{json,md}"),
    artifacts: Optional[Path] = ARTIFACTS_OPT,
    data_dir: Optional[Path] = DATA_OPT,
) -> None:
    """Every strategy on every val and test set: results/quality_<dataset>.json (the service's default reads it)."""
    from service.encoder import OnnxEncoder
    from service.graph import FanoutGraph
    from service.resolver import Resolver
    from service.store import EdgeStore
    from training.evaluate import (graph_rows, graph_strategy, jitter_rows, jitter_strategy, neighbour_sets_strategy,
                                   single_strategy)
    from training.quality import (exact_fanout_strategy, measure, popular_strategy, served_memory_strategy,
                                  teacher_strategy)
    from training.space import TeacherConfig

    p, ds, space, cfg = _scoring(dataset, name, artifacts, data_dir, splits, vendi_runs, max_queries,
                                 jitter=tuple(float(s) for s in jitter.split(",") if s))
    text, enc = OnnxEncoder(p["text"]), OnnxEncoder(p["encoder"])
    if exact:
        stores = [_exact_copy(p["text_index"], ds, "cosine"), _exact_copy(p["index"], ds, space.distance)]
    else:
        stores = [EdgeStore.open(p["text_index"] / "shard"), EdgeStore.open(p["index"] / "shard")]
    base, res = Resolver(stores[0]), Resolver(stores[1])
    strategies = {"single_base": single_strategy(text, base, 10), "single": single_strategy(enc, res, 10),
                  "popular": popular_strategy(ds, enc, res), "neighbours": neighbour_sets_strategy(text, base, ds, 10),
                  **{f"jitter@{s:g}": jitter_strategy(enc, res, 10, s) for s in cfg.jitter},
                  "teacher": teacher_strategy(space, text, enc, res, TeacherConfig())}
    graph = FanoutGraph(p["graph"]) if p["graph"].is_dir() else None
    if graph:
        strategies["diffusion"] = graph_strategy("diffusion", graph, enc, res)
    edge = EdgeStore.open(p["index"] / "shard") if exact else stores[1]
    if enc.memory is not None and edge.memory:  # the served memory row, and fan-outs around the memory
        strategies["memory"] = served_memory_strategy(enc, Resolver(edge), memory_depth, exact=exact)
        if graph:
            strategies["diffusion+memory"] = exact_fanout_strategy("diffusion+memory", space, enc, res,
                                                                    graph_rows(graph))
        for s in (float(x) for x in memory_jitter.split(",") if x):
            strategies[f"jitter@{s:g}+memory"] = exact_fanout_strategy(f"jitter@{s:g}+memory", space, enc, res,
                                                                        jitter_rows(10, s))
    extra = {"graph": graph.manifest.config.get("provenance", {}) | {"steps": graph.info.steps} if graph else None,
             "search": "exact (in-memory copy of the index)" if exact else "served index (Qdrant Edge, HNSW; int8 for cosine spaces)",
             "memory": {"depth": memory_depth, "search": "Qdrant Edge formula query, exact" if exact else "served",
                        "fanouts": "exact numpy (the served memory formula per row), not served"}
             if "memory" in strategies else None}
    try:
        measure(strategies, ds, space, cfg, out / f"quality_{dataset}", _command(), extra)
    finally:
        if exact:
            edge.close()
    typer.echo(f"{out}/quality_{dataset}.json")


@space_app.command("fusion")
def fusion(
    dataset: str = typer.Option("mpd", help="A comember space's dataset (the memory rows need its item memory)"),
    name: str = NAME_OPT,
    taus: str = typer.Option("2", help="Soft-max temperatures of the lse fusion, × the std of q·v over the catalog"),
    jitter: str = typer.Option("0.1", help="Scales of the jittered control (0.1 is the nearest to the graph's Vendi)"),
    splits: str = SPLITS_OPT,
    max_queries: int = MAX_QUERIES_OPT,
    vendi_runs: int = VENDI_RUNS_OPT,
    quota: bool = typer.Option(True, help="Also the quota (served) rows: the same as results/quality_<dataset>'s "
                               "diffusion, diffusion+memory and jitter rows"),
    out: Path = typer.Option(Path("results"), help="Directory of fusion_<dataset>.{json,md}"),
    artifacts: Optional[Path] = ARTIFACTS_OPT,
    data_dir: Optional[Path] = DATA_OPT,
) -> None:
    """The served graph's K rows fused two ways, with and without the memory, each beside its jitter control:
    rank-major quota (served) and a soft maximum over rows (lse): results/fusion_<dataset>.json."""
    from service.encoder import OnnxEncoder
    from service.graph import FanoutGraph
    from service.resolver import Resolver
    from service.store import EdgeStore
    from training.evaluate import graph_rows, jitter_rows, single_strategy
    from training.quality import exact_fanout_strategy, measure, served_memory_strategy

    p, ds, space, cfg = _scoring(dataset, name, artifacts, data_dir, splits, vendi_runs, max_queries)
    enc, res = OnnxEncoder(p["encoder"]), Resolver(_exact_copy(p["index"], ds, space.distance))
    edge = EdgeStore.open(p["index"] / "shard")
    graph = FanoutGraph(p["graph"])
    rows = {"diffusion": graph_rows(graph),
            **{f"jitter@{float(s):g}": jitter_rows(10, float(s)) for s in jitter.split(",") if s}}
    strategies = {"single": single_strategy(enc, res, 10), "memory": served_memory_strategy(enc, Resolver(edge), 2_000)}
    for fuse in ["quota"] * quota + [f"lse{t}" for t in taus.split(",") if t]:
        for base, rows_of in rows.items():
            for mem in (False, True):
                label = base + ("" if fuse == "quota" else f"~{fuse}") + ("+memory" if mem else "")
                strategies[label] = exact_fanout_strategy(label, space, enc, res, rows_of, memory=mem,
                                                           fusion="quota" if fuse == "quota" else "lse",
                                                           tau=float(fuse[3:]) if fuse != "quota" else 0.0)
    extra = {"graph": graph.manifest.config.get("provenance", {}),
             "search": "exact numpy over the whole catalog (every fan-out row); memory: Qdrant Edge formula query",
             "fusions": {"quota": "rank-major union of the K lists (served)",
                         "lse<t>": "t·log Σ_k exp(q_k·v / t), t = <t> × std(q·v) over the catalog (not served)"}}
    try:
        measure(strategies, ds, space, cfg, out / f"fusion_{dataset}", _command(), extra)
    finally:
        edge.close()
    typer.echo(f"{out}/fusion_{dataset}.json")


@space_app.command("memory")
def memory(
    dataset: str = typer.Option("mpd", help="A comember space's dataset"),
    name: str = NAME_OPT,
    weights: str = typer.Option("0.05,0.1,0.2,0.5", help="Weights of the neighbour sets' item memory"),
    splits: str = SPLITS_OPT,
    memory_depths: str = typer.Option("2000,20000", help="Served rows: items the sparse prefetch returns; the first "
                                      "is the `memory` row (the service's R4T_MEMORY_DEPTH), the others "
                                      "memory@depth<d> (20,000 holds every item the MPD neighbour sets hold: exact)"),
    out: Path = typer.Option(Path("results"), help="Directory of memory_<dataset>.{json,md}"),
    artifacts: Optional[Path] = ARTIFACTS_OPT,
    data_dir: Optional[Path] = DATA_OPT,
) -> None:
    """`single` against `single` + the nearest train sets' item memory (exact, whole catalog) on every val and
    test set: results/memory_<dataset>.{json,md}. Pick the weight on val, read it on test."""
    from export.cli.common import start_dataset
    from service.encoder import OnnxEncoder
    from service.resolver import Resolver
    from training.evaluate import single_strategy
    from service.atomic import write_json_atomic
    from service.manifest import load_manifest
    from service.store import EdgeStore
    from training.quality import QualityConfig, measure, memory_strategy, served_memory_strategy
    from training.space import Space

    start_dataset(dataset)
    _, name, p = _paths(dataset, name, artifacts)
    ds, space = _dataset(dataset, data_dir), Space.load(p["space"])
    if space.kind != "comember":
        raise typer.BadParameter(f"{name} is a {space.kind} space: the memory needs train-set co-membership")
    text, enc = OnnxEncoder(p["text"]), OnnxEncoder(p["encoder"])
    res = Resolver(_exact_copy(p["index"], ds, space.distance))
    memories = {f"memory@{w:g}": memory_strategy(space, text, enc, res, w) for w in map(float, weights.split(","))}
    strategies = {"single": single_strategy(enc, res, 10), **memories}
    edge = EdgeStore.open(p["index"] / "shard")
    served = enc.memory is not None and edge.memory
    depths = [int(d) for d in memory_depths.split(",") if d] if served else []
    for i, depth in enumerate(depths):  # the served path: the head's outputs, one Qdrant formula query per set
        strategies["memory" if i == 0 else f"memory@depth{depth}"] = served_memory_strategy(enc, Resolver(edge), depth)
    cfg = QualityConfig(splits=tuple(s for s in splits.split(",") if s), jitter=(), vendi_runs=1)
    try:
        report = measure(strategies, ds, space, cfg, out / f"memory_{dataset}", _command(),
                {"search": "exact: single on an in-memory copy of the index, memory@w by numpy over the space, "
                           "memory (served) by Qdrant Edge's exact search of the index with its item memory",
                 "memory": enc.memory, "memory_depths": depths})
    finally:
        edge.close()
    if served:  # the served row's val check goes into the encoder's manifest (not a hashed file): the default reads it
        manifest = load_manifest(p["encoder"])
        manifest.config["space"]["memory"]["val"] = _memory_val_check(report["splits"]["val"], depths[0])
        write_json_atomic(p["encoder"] / "manifest.json", manifest.model_dump())
        typer.echo(f"{p['encoder']}: memory {manifest.config['space']['memory']['val']}")
    typer.echo(f"{out}/memory_{dataset}.json")


def _memory_val_check(val: dict, depth: int) -> dict:
    """The served memory row against single on val, at every cut-off, as `_val_check` records the graph's."""
    single, row = val["strategies"]["single"], val["strategies"]["memory"]
    return _checked("memory", val["queries"], f"Qdrant Edge exact search, memory depth {depth}",
                    {n: (row["recall"][n], single["recall"][n], row["ci_vs_single"][n]) for n in row["recall"]})
