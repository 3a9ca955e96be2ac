"""The co-membership space: item vectors learned from which items share train sets, and a title head into it.

Two kinds, one interface (`Space`):
- `comember` (MPD): truncated SVD of the idf-weighted train-set x item incidence (sklearn's randomized
  SVD); item = V·√σ, set = U·√σ. The vectors are left unnormalised and scored by inner product, so an
  item's norm carries its popularity. Items that no train set holds (cold tracks) get a content tower:
  ridge regression from their text embedding onto the warm items' factors. `gamma` splits σ^gamma between
  items and sets (item = V·σ^(gamma/2)): the query scores items by the rank-k reconstruction of its
  neighbours' rows with the singular values raised to gamma; gamma > 1 leans on the leading (popular)
  directions, which scored best on MPD val.
- `text` (Polyvore, where only 140 of 8.9k items recur across outfits, so co-membership of ids is
  empty): items are their text embeddings; a set is the mean of its items'.

The query head is the same for both: the mean vector of the train sets whose titles are nearest to the
query text (`query_vectors`), weighted by softmax(title similarity / temperature) when a temperature is
set (many MPD titles repeat: the sets under the query's own title count most), unit-normalised. In the text space it is blended with the query's own text
embedding (`text_weight`, chosen on val sets: on Polyvore the averaged neighbours alone blur the intent
to ~0.3x the plain query's recall). It is exported inside the space encoder's ONNX graph.
Only train-split sets contribute a factor, a set vector or a title.

The neighbourhood teacher (`neighbour_targets`) gives a train intent K fan-out vectors from the sets of
the most similar *other* train intents: K-means of their items in the space, each centroid pulled
towards the query by `blend` (the fixed-quota union of the K lists then covers the query's own list
and spreads around it). It never sees the intent's own set, so it is the teacher a held-out intent has.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.cluster import KMeans
from sklearn.linear_model import Ridge
from sklearn.utils.extmath import randomized_svd
from tqdm import tqdm

from service.atomic import replace_dir, write_json_atomic, write_npz_atomic
from service.encoder import OnnxEncoder
from training.data import Dataset, ItemSet

log = logging.getLogger(__name__)

SPACE_FILE, SPACE_META, MEMBERS_FILE = "space.npz", "space.json", "members.npz"
SYNTH_FILE = "synth.json"  # written last by a pair writer: the pairs directory is complete
KINDS = ("comember", "text")
TEXT_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # the grid `build_space` scores on val sets (text kind)
SELECT_N = 100  # the recall cut-off that grid is scored at
DEFAULT_KIND = {"mpd": "comember", "polyvore": "text"}
# The query head's defaults per kind, chosen on MPD val (results/space_mpd.md); the text kind keeps the plain mean.
GAMMA = 2.0
DEFAULT_NEIGHBOURS = {"comember": 200, "text": 20}
DEFAULT_TEMPERATURE = {"comember": 0.1, "text": 0.0}
# The item memory's weight against the dense score, both divided by their typical spread (`memory_scales`);
# chosen on MPD val, read on test (results/memory_mpd.md).
MEMORY_WEIGHT = 0.1


@dataclass(frozen=True)
class SpaceConfig:
    kind: str = ""  # comember | text; "" = the dataset's default (DEFAULT_KIND)
    factors: int = 128  # SVD rank k (comember); see results/space_mpd.md for the val grid
    idf: bool = True  # weight each item column by log(S / df) before the SVD
    gamma: float = GAMMA  # comember: item = V·σ^(gamma/2), set = U·σ^(gamma/2)
    neighbours: int | None = None  # nearest train titles whose set vectors average into the query; None = the kind's default
    temperature: float | None = None  # softmax temperature over their title similarities; 0 = plain mean; None = the kind's default
    ridge: float = 1.0  # L2 penalty of the cold-item content tower
    tower_sample: int = 30_000  # warm items whose (text, factor) pairs fit the content tower
    text_weight: float | None = None  # text kind: query = w·text + (1−w)·neighbours; None = best of TEXT_WEIGHTS on val
    seed: int = 0

    def __post_init__(self):
        if self.kind and self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)} (or '' for the dataset default)")
        if self.factors < 2 or (self.neighbours is not None and self.neighbours < 1) or self.tower_sample < 1 \
                or self.gamma <= 0:
            raise ValueError("factors must be >= 2, neighbours and tower_sample >= 1 (or neighbours unset), gamma > 0")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError("temperature must be >= 0 (0 = the plain mean of the neighbours)")
        if self.text_weight is not None and not 0.0 <= self.text_weight <= 1.0:
            raise ValueError("text_weight must be in [0, 1] (or unset: chosen on val)")
        if self.text_weight and self.kind == "comember":
            raise ValueError("text_weight needs the text space: a comember query is not in the text space")


@dataclass
class Space:
    """Item vectors (N, k), train-set vectors (S, k) and the train titles' text embeddings (S, D)."""

    name: str
    dataset: str
    kind: str
    item_ids: list[str]
    items: np.ndarray  # (N, k) float32; unnormalised for comember
    warm: np.ndarray  # (N,) bool: the item is in at least one train set
    set_ids: list[str]
    sets: np.ndarray  # (S, k) float32
    titles: np.ndarray  # (S, D) unit text embeddings of the train intents
    members: sp.csr_matrix  # (S, N) which items each train set holds (the teacher's input)
    neighbours: int
    meta: dict
    text_weight: float = 0.0  # weight of the query's own text embedding in the query head (text kind only)
    temperature: float = 0.0  # softmax temperature of the neighbours' title similarities; 0 = plain mean

    @property
    def distance(self) -> str:
        return "dot" if self.kind == "comember" else "cosine"

    @property
    def dim(self) -> int:
        return self.items.shape[1]

    def item_memory(self, sets: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """(N,) Σ_j w_j [item ∈ set_j] over the given train sets: what the index's sparse memory scores."""
        return np.asarray(self.members[sets].T @ weights).ravel()

    def save(self, directory: Path) -> None:
        """Written into a temp directory that replaces `directory` only when complete."""
        directory = Path(directory)
        tmp = directory.with_name(f".{directory.name}.tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        np.savez(tmp / SPACE_FILE, items=self.items, warm=self.warm, sets=self.sets, titles=self.titles,
                 item_ids=np.array(self.item_ids), set_ids=np.array(self.set_ids))
        sp.save_npz(tmp / MEMBERS_FILE, self.members)
        write_json_atomic(tmp / SPACE_META, {"name": self.name, "dataset": self.dataset, "kind": self.kind,
                                             "neighbours": self.neighbours, "text_weight": self.text_weight,
                                             "temperature": self.temperature, **self.meta})
        replace_dir(tmp, directory)

    @classmethod
    def load(cls, directory: Path) -> Space:
        directory = Path(directory)
        if not (directory / SPACE_META).is_file():
            raise FileNotFoundError(f"no space at {directory}: run `r4t space build`")
        meta = json.loads((directory / SPACE_META).read_text())
        arrays = np.load(directory / SPACE_FILE)
        return cls(meta.pop("name"), meta.pop("dataset"), meta.pop("kind"), arrays["item_ids"].tolist(),
                   arrays["items"], arrays["warm"], arrays["set_ids"].tolist(), arrays["sets"], arrays["titles"],
                   sp.load_npz(directory / MEMBERS_FILE).tocsr(), meta.pop("neighbours"), meta,
                   meta.pop("text_weight", 0.0), meta.pop("temperature", 0.0))


def incidence(sets: list[ItemSet], column: dict[str, int]) -> sp.csr_matrix:
    """(S, N) 0/1 matrix: row s holds the items of set s."""
    rows = [r for r, s in enumerate(sets) for _ in s.item_ids]
    cols = [column[i] for s in sets for i in s.item_ids]
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(sets), len(column)))


def build_space(dataset: Dataset, encoder: OnnxEncoder, cfg: SpaceConfig, name: str) -> Space:
    """Fit the space on the train split of `dataset`; `encoder` embeds titles and item texts (text tower)."""
    kind = cfg.kind or DEFAULT_KIND[dataset.name]
    train = dataset.split("train")
    item_ids = list(dataset.items)
    column = {i: j for j, i in enumerate(item_ids)}
    x = incidence(train, column)  # (S, N)
    df = np.asarray(x.sum(0)).ravel()  # (N,) train sets holding each item
    warm = df > 0
    titles = encoder.encode([s.intent for s in train])  # (S, D)
    meta = {"config": asdict(cfg), "train_sets": len(train), "items": len(item_ids), "warm_items": int(warm.sum()),
            "text_encoder": encoder.manifest.encoder.name, "text_encoder_sha256": encoder.manifest.encoder_sha256}
    if kind == "comember":
        weights = np.log(len(train) / np.maximum(df, 1)).astype(np.float32) if cfg.idf else np.ones(len(df), np.float32)
        u, sigma, vt = randomized_svd(x.multiply(weights[None]).tocsr(), cfg.factors, random_state=cfg.seed, n_iter=5)
        items = (vt.T * sigma ** (cfg.gamma / 2)).astype(np.float32)  # (N, k)
        sets = (u * sigma ** (cfg.gamma / 2)).astype(np.float32)  # (S, k)
        items[~warm] = content_tower(dataset, encoder, items, warm, item_ids, cfg)
        meta["singular_values"] = [round(float(s), 4) for s in sigma]
    else:
        items = encoder.encode([dataset.items[i].text for i in item_ids])  # (N, D)
        sets = np.asarray(x @ items) / np.maximum(np.asarray(x.sum(1)), 1)  # (S, D) mean of members
        sets = sets.astype(np.float32)
    temperature = DEFAULT_TEMPERATURE[kind] if cfg.temperature is None else cfg.temperature
    neighbours = min(DEFAULT_NEIGHBOURS[kind] if cfg.neighbours is None else cfg.neighbours, len(train))
    space = Space(name, dataset.name, kind, item_ids, items, warm, [s.id for s in train], sets, titles, x,
                  neighbours, meta, temperature=temperature)
    if kind == "text":
        space.text_weight = cfg.text_weight if cfg.text_weight is not None else choose_text_weight(space, dataset, encoder)
    return space


def choose_text_weight(space: Space, dataset: Dataset, encoder: OnnxEncoder) -> float:
    """The TEXT_WEIGHTS value whose query head scores the best exact R@SELECT_N on the val sets."""
    val = dataset.split("val")
    if not val:
        return 0.0
    emb = encoder.encode([s.intent for s in val])
    items = space.items / np.maximum(np.linalg.norm(space.items, axis=1, keepdims=True), 1e-12)
    column = {i: j for j, i in enumerate(space.item_ids)}
    truth = [{column[i] for i in s.item_ids} for s in val]
    scores = {}
    for w in TEXT_WEIGHTS:
        space.text_weight = w
        top = np.argsort(-(query_vectors(space, emb) @ items.T), axis=1, kind="stable")[:, :SELECT_N]
        scores[w] = float(np.mean([len(t & set(row)) / len(t) for t, row in zip(truth, top.tolist())]))
    space.meta["text_weight_val"] = {"n": SELECT_N, "sets": len(val), "recall": {str(w): round(r, 5) for w, r in scores.items()}}
    best = max(scores, key=lambda w: (scores[w], -w))
    log.info("text weight on %d val sets (R@%d): %s -> %.2f", len(val), SELECT_N, scores, best)
    return best


def content_tower(dataset: Dataset, encoder: OnnxEncoder, items: np.ndarray, warm: np.ndarray,
                  item_ids: list[str], cfg: SpaceConfig) -> np.ndarray:
    """Factors of the cold items from their text: ridge regression fitted on a sample of warm items.

    Its predictions shrink towards 0, so a cold item scores like a rare one: honest, since nothing says
    people put it in sets.
    """
    rng = np.random.default_rng(cfg.seed)
    warm_idx = np.flatnonzero(warm)
    fit_idx = rng.choice(warm_idx, size=min(cfg.tower_sample, len(warm_idx)), replace=False)
    cold_idx = np.flatnonzero(~warm)
    texts = [dataset.items[item_ids[i]].text for i in np.concatenate([fit_idx, cold_idx])]
    emb = encoder.encode(texts)  # (fit + cold, D)
    tower = Ridge(alpha=cfg.ridge).fit(emb[: len(fit_idx)], items[fit_idx])
    log.info("content tower: fitted on %d warm items, R^2 %.3f; %d cold items embedded", len(fit_idx),
             tower.score(emb[: len(fit_idx)], items[fit_idx]), len(cold_idx))
    return tower.predict(emb[len(fit_idx):]).astype(np.float32)


def nearest_sets(space: Space, title_emb: np.ndarray, exclude: list[str | None] | None = None,
                 n: int | None = None, with_sims: bool = False):
    """(B, n) indices of the train sets whose titles are nearest to each (D,) text embedding (and, with
    `with_sims`, their (B, n) similarities, tie-break included, as the ONNX head sees them).

    `exclude[b]` names a train set that query b must not see (its own, when b is a train intent).
    """
    n = n or space.neighbours
    sims = title_emb @ space.titles.T + tiebreak(len(space.set_ids))  # (B, S)
    if exclude is not None:
        row = {sid: j for j, sid in enumerate(space.set_ids)}
        for b, sid in enumerate(exclude):
            if sid in row:
                sims[b, row[sid]] = -np.inf
    near = np.argsort(-sims, axis=1, kind="stable")[:, :n]
    return (near, np.take_along_axis(sims, near, 1)) if with_sims else near


def tiebreak(n_sets: int) -> np.ndarray:
    """(S,) decreasing offsets, 1e-3 across all sets: many train sets share a title, and equal similarities must
    rank the same way in numpy, torch and ONNX Runtime (earlier set first). Steps must stay above float32
    resolution near 1 (~1.2e-7) or the sum rounds the tie back."""
    return (-1e-3 * np.arange(n_sets) / max(n_sets, 1)).astype(np.float32)


def neighbour_weights(sims: np.ndarray, temperature: float, n: int) -> np.ndarray:
    """(B, n) weights summing to 1 from (B, n) or (B, n + 1) sorted similarities: uniform when temperature is 0,
    else exp((s − s_1) / t) less the same term of the (n+1)-th title, so a weight falls to 0 at the cut. Many
    titles tie there, and which of them makes the top n must not move the query (numpy and ONNX order ties
    differently at float32 resolution)."""
    if not temperature:
        return np.full((len(sims), n), 1.0 / n, np.float32)
    e = np.exp((sims - sims[:, :1]) / temperature)  # sims are sorted: the first is the largest
    w = e[:, :n] - (e[:, n:n + 1] if e.shape[1] > n else 0.0)
    total = w.sum(1, keepdims=True)
    w = np.where(total > 0, w / np.maximum(total, 1e-30), 1.0 / n)  # all n tie with the (n+1)-th: plain mean
    return w.astype(np.float32)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def query_vectors(space: Space, title_emb: np.ndarray, exclude: list[str | None] | None = None) -> np.ndarray:
    """(B, k) unit query vectors: the (softmax-of-similarity weighted) mean vector of the nearest train sets,
    blended with the text embedding itself by `space.text_weight` (what the ONNX head computes)."""
    n = space.neighbours
    near, sims = nearest_sets(space, title_emb, exclude, n=min(n + 1, len(space.set_ids)), with_sims=True)
    q = unit((space.sets[near[:, :n]] * neighbour_weights(sims, space.temperature, n)[..., None]).sum(1))  # (B, k)
    if space.text_weight:
        q = unit(space.text_weight * unit(title_emb) + (1.0 - space.text_weight) * q)
    return q.astype(np.float32)


@dataclass(frozen=True)
class TeacherConfig:
    k: int = 10  # fan-out vectors per intent (paper: 10)
    blend: float = 0.25  # row = normalise(q + blend·(centroid − q)); chosen on MPD val (1.0, 0.5, 0.25)
    samples: int = 1  # target sets per intent (K-means seeds)
    neighbours: int = 20  # nearest other train intents whose sets' items the K-means clusters
    max_iter: int = 50

    def __post_init__(self):
        if self.k < 1 or self.samples < 1 or self.neighbours < 1 or not 0.0 <= self.blend <= 1.0:
            raise ValueError("k, samples and neighbours must be >= 1 and blend in [0, 1]")


def neighbour_targets(space: Space, query: np.ndarray, neighbours: np.ndarray, cfg: TeacherConfig,
                      seed: int = 0) -> np.ndarray:
    """(k, d) unit fan-out rows for one (d,) unit query from the train sets `neighbours` (indices).

    K-means (item-count weighted) of the neighbour sets' items; each centroid blended with the query.
    """
    members = space.members[neighbours]  # (n, N)
    counts = np.asarray(members.sum(0)).ravel()
    idx = np.flatnonzero(counts)
    if len(idx) < cfg.k:
        return np.repeat(query[None], cfg.k, axis=0)
    km = KMeans(cfg.k, n_init=1, max_iter=cfg.max_iter, random_state=seed).fit(space.items[idx], sample_weight=counts[idx])
    centres = km.cluster_centers_ / np.maximum(np.linalg.norm(km.cluster_centers_, axis=1, keepdims=True), 1e-12)
    rows = query[None] + cfg.blend * (centres - query[None])  # (k, d)
    return (rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def teacher_pairs(space: Space, cfg: TeacherConfig, rows: range | None = None
                  ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Train intents `rows` (default all) -> (query (d,), targets (k, d)), each one's own set left out of both;
    `samples` pairs per intent."""
    rows = rows if rows is not None else range(len(space.set_ids))
    emb, own = space.titles[rows.start:rows.stop], space.set_ids[rows.start:rows.stop]  # train order
    near = nearest_sets(space, emb, exclude=own, n=cfg.neighbours)
    q = query_vectors(space, emb, exclude=own)
    queries, targets, ids = [], [], []
    for b in tqdm(range(len(own)), desc=f"teacher pairs {rows.start}-{rows.stop}", unit="intent"):
        for r in range(cfg.samples):
            queries.append(q[b])
            targets.append(neighbour_targets(space, q[b], near[b], cfg, seed=r))
            ids.append(own[b])
    return np.stack(queries), np.stack(targets), ids


def write_teacher_pairs(space: Space, cfg: TeacherConfig, out_dir: Path, meta: dict, shard: int = 1000) -> int:
    """Every train intent's pairs as pairs-<i>.npz shards of `shard` intents, each written atomically, then
    `SYNTH_FILE` last; a killed run resumes at the first missing shard (the pairs are deterministic).
    Returns the number of pairs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    index = {sid: j for j, sid in enumerate(space.set_ids)}
    total = 0
    for i, start in enumerate(range(0, len(space.set_ids), shard)):
        path = out_dir / f"pairs-{i:05d}.npz"
        if path.is_file():
            total += len(np.load(path)["reward"])
            continue
        query, targets, ids = teacher_pairs(space, cfg, range(start, min(start + shard, len(space.set_ids))))
        write_npz_atomic(path, query=query, targets=targets, reward=np.ones(len(query), np.float32),
                  set_index=np.asarray([index[s] for s in ids], np.int64))
        total += len(query)
    write_json_atomic(out_dir / SYNTH_FILE, {**meta, "teacher": {"kind": "neighbourhood", **cfg.__dict__},
                                             "queries": len(space.set_ids), "pairs_total": total, "shard": shard})
    return total


def memory_scales(space: Space, sample: int = 1_000, seed: int = 0) -> dict:
    """The typical spread over the catalog of the dense score q·v and of the item memory Σ_j w_j [item ∈ set_j]:
    medians of their per-query standard deviations on `sample` train titles (own set left out). A Qdrant score
    formula takes constants only, so the served score is dense + coef·memory with coef = weight·dense/memory."""
    rows = np.sort(np.random.default_rng(seed).choice(len(space.set_ids), min(sample, len(space.set_ids)),
                                                      replace=False))
    emb, own = space.titles[rows], [space.set_ids[r] for r in rows]
    n = space.neighbours
    near, sims = nearest_sets(space, emb, own, n=min(n + 1, len(space.set_ids)), with_sims=True)
    weights = neighbour_weights(sims, space.temperature, n)
    dense = (query_vectors(space, emb, own) @ space.items.T).std(1)  # (B,)
    memory = np.array([space.item_memory(near[b, :n], weights[b]).std() for b in range(len(rows))])
    return {"dense_scale": float(np.median(dense)), "memory_scale": float(np.median(memory)), "titles": len(rows)}
