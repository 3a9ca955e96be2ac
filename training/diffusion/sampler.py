"""Deterministic EDM samplers as pure functions over a fixed list of sigmas (exportable: no RNG inside).

The caller supplies the initial noise, so a seed outside makes results reproducible, and the ONNX
export can unroll the same loop over the same sigmas.
"""

from __future__ import annotations

import torch

from training.diffusion.model import SetDenoiser


def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> list[float]:
    """Karras et al. (2022) Eq. 5 spacing: `steps` noise levels from sigma_max down to sigma_min, then 0."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    if steps == 1:
        return [sigma_max, 0.0]
    ramp = [i / (steps - 1) for i in range(steps)]
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return [(hi + r * (lo - hi)) ** rho for r in ramp] + [0.0]


def model_sigmas(model: SetDenoiser, steps: int) -> list[float]:
    """The sigmas `model` samples with in `steps` steps: Karras spacing, or, for a distilled student, the
    schedule it was distilled on (its only step count)."""
    if model.sigmas is None:
        return karras_sigmas(steps, model.cfg.sigma_min, model.cfg.sigma_max)
    if steps != len(model.sigmas) - 1:
        raise ValueError(f"this student was distilled for {len(model.sigmas) - 1} sampler steps, not {steps}")
    return list(model.sigmas)


def _denoise(model: SetDenoiser, x: torch.Tensor, sigma: float, query: torch.Tensor, guidance: float) -> torch.Tensor:
    # One (1,) level shared by the batch, not one per row: in the exported graph the noise embedding and every
    # block's modulation then depend on constants only, and ONNX Runtime folds them away at load.
    return model.guided(x, torch.full((1,), sigma, dtype=x.dtype, device=x.device), query, guidance)


def sample(model: SetDenoiser, query: torch.Tensor, noise: torch.Tensor, sigmas: list[float],
           guidance: float = 1.0, method: str = "euler") -> torch.Tensor:
    """query (B, d) unit vectors, noise (B, L, d) standard normal -> (B, L, d) unit fan-out vectors.

    euler: one model call per step; heun: Heun's 2nd-order correction on every step but the last.
    """
    if method not in ("euler", "heun"):
        raise ValueError(f"method must be 'euler' or 'heun', got {method!r}")
    if model.sigmas is not None and guidance != 1.0:
        raise ValueError("a distilled student samples with guidance 1: its teacher's guidance is built in")
    x = noise * sigmas[0]
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        d = (x - _denoise(model, x, s, query, guidance)) / s
        x_next = x + (s_next - s) * d
        if method == "heun" and s_next > 0:
            d_next = (x_next - _denoise(model, x_next, s_next, query, guidance)) / s_next
            x_next = x + (s_next - s) * (d + d_next) / 2
        x = x_next
    return model.to_rows(x, query)
