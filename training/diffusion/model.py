"""A set denoiser: EDM preconditioning (Karras et al. 2022) around a transformer over the L rows.

D(x; σ, z_q) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x, c_noise(σ), z_q) predicts the clean set x0.
F is a transformer: rows attend to each other (the set is generated jointly, with no positional
embedding, so it is permutation-equivariant), cross-attend to the query tokens, and every block is
modulated by a learned noise embedding. Classifier-free guidance: the query is replaced by a learned
null token with probability `cond_drop` in training; sampling mixes both predictions.

Rows live in the encoder's unit-sphere space scaled by sqrt(d), so each coordinate has std ≈ 1
(`sigma_data` = 1) and the EDM noise schedule applies unchanged.

Training noise levels follow the paper's Table 3 ("Tangent", swirl_dynamics' time-uniform sampling):
t ~ U[t(σ_min), 1] and σ = σ_max·tan(1.5t)/tan(1.5), so half the draws are above σ ≈ 5. EDM's image
default (log-normal around σ = 0.3) almost never trains the high-noise levels where the query decides
where the set lies, and a denoiser trained that way ignores its query.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn


NOISES = ("tangent", "lognormal", "loguniform")


@dataclass(frozen=True)
class DiffusionConfig:
    dim: int = 384  # embedding size d
    rows: int = 10  # L: fan-out vectors per set
    width: int = 256  # transformer width
    depth: int = 4  # blocks
    heads: int = 4
    cond_tokens: int = 4  # z_q is projected into this many key/value tokens
    mlp_ratio: float = 4.0
    cond_drop: float = 0.1  # CFG: probability of training without the query
    sigma_data: float = 1.0
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    noise: str = "tangent"  # training noise levels: tangent | lognormal | loguniform (see `training_sigmas`)
    p_mean: float = -1.2  # lognormal only (EDM's image setting)
    p_std: float = 1.2
    relative: bool = False  # rows are offsets from the query (x0 = sqrt(d)·(Z − z_q)); see `to_x0`

    def __post_init__(self):
        if self.noise not in NOISES:
            raise ValueError(f"noise must be one of {', '.join(NOISES)}, got {self.noise!r}")

    def as_dict(self) -> dict:
        return asdict(self)


class Fourier(nn.Module):
    """Random Fourier features of the scalar noise level (EDM's noise embedding)."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("freqs", torch.randn(channels // 2) * 16.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, channels)
        angles = 2 * math.pi * x[:, None] * self.freqs[None]
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class Attention(nn.Module):
    """Multi-head attention on scaled_dot_product_attention: nn.MultiheadAttention's inference fast path
    (aten::_native_multi_head_attention) has no ONNX export."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be a multiple of heads {heads}")
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:  # (B, L, W), (B, S, W)
        b, n, w = x.shape
        split = lambda t: t.view(b, -1, self.heads, w // self.heads).transpose(1, 2)  # noqa: E731 (B, H, *, W/H)
        q, k, v = split(self.q(x)), split(self.k(context)), split(self.v(context))
        # The default scale, 1/sqrt(W/H), given as a constant: left to the exporter it is computed from the
        # tensor's shape at every call of the unrolled sampler.
        out = nn.functional.scaled_dot_product_attention(q, k, v, scale=(w // self.heads) ** -0.5)  # (B, H, L, W/H)
        return self.o(out.transpose(1, 2).reshape(b, n, w))


class Block(nn.Module):
    """Self-attention over rows, cross-attention to the query, MLP; adaptive LayerNorm on the noise."""

    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        w = cfg.width
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(w, elementwise_affine=False) for _ in range(3))
        self.self_attn = Attention(w, cfg.heads)
        self.cross_attn = Attention(w, cfg.heads)
        hidden = int(w * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(w, hidden), nn.GELU(), nn.Linear(hidden, w))
        self.modulation = nn.Linear(w, 6 * w)  # shift/scale for the three norms
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, h: torch.Tensor, cond: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        s1, b1, s2, b2, s3, b3 = self.modulation(emb)[:, None].chunk(6, dim=-1)  # each (B, 1, W)
        x = self.norm1(h) * (1 + s1) + b1
        h = h + self.self_attn(x, x)
        x = self.norm2(h) * (1 + s2) + b2
        h = h + self.cross_attn(x, cond)
        x = self.norm3(h) * (1 + s3) + b3
        return h + self.mlp(x)


class SetDenoiser(nn.Module):
    """x (B, L, d) noisy rows, sigma (B,) or one shared (1,), query (B, d) unit vectors, keep (B,) bool -> x0
    estimate (B, L, d)."""

    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        self.cfg = cfg
        self.sigmas: list[float] | None = None  # a distilled student's fixed schedule (`distil.py`)
        w = cfg.width
        self.inp = nn.Linear(cfg.dim, w)
        self.noise = nn.Sequential(Fourier(w), nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.cond = nn.Linear(cfg.dim, cfg.cond_tokens * w)
        self.null = nn.Parameter(torch.zeros(cfg.cond_tokens, w))  # the dropped-condition token
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.out_norm = nn.LayerNorm(w)
        self.out = nn.Linear(w, cfg.dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def to_x0(self, rows: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """(B, L, d) unit target rows -> the space the denoiser works in: rows scaled by sqrt(d) or, when
        `relative`, their offsets from the query. An offset learned on one intent moves with the intent,
        so a pair's shape carries to a nearby held-out intent (`r4t diffusion diagnose --transfer`)."""
        x = rows - query[:, None, :] if self.cfg.relative else rows
        return x * math.sqrt(self.cfg.dim)

    def to_rows(self, x: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """The inverse of `to_x0`, then L2-normalised: (B, L, d) unit vectors to search with."""
        x = x / math.sqrt(self.cfg.dim)
        return nn.functional.normalize(x + query[:, None, :] if self.cfg.relative else x, dim=-1)

    def raw(self, x: torch.Tensor, c_noise: torch.Tensor, query: torch.Tensor,
            keep: torch.Tensor | None = None) -> torch.Tensor:
        """F: the network inside the preconditioning. `keep` None: every query kept (no null-token select)."""
        b = x.shape[0]
        cond = self.cond(query * math.sqrt(self.cfg.dim)).view(b, self.cfg.cond_tokens, -1)
        if keep is not None:
            cond = torch.where(keep[:, None, None], cond, self.null.expand(b, -1, -1))
        emb = self.noise(c_noise)  # (B or 1, W): one shared noise level broadcasts over the batch
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, cond, emb)
        return self.out(self.out_norm(h))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, query: torch.Tensor,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        sd = self.cfg.sigma_data
        s = sigma.reshape(-1, 1, 1).to(x.dtype)
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / (s**2 + sd**2).sqrt()
        c_in = 1 / (s**2 + sd**2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip * x + c_out * self.raw(c_in * x, c_noise, query, keep)

    def guided(self, x: torch.Tensor, sigma: torch.Tensor, query: torch.Tensor, guidance: float) -> torch.Tensor:
        """CFG: D_uncond + w·(D_cond - D_uncond), both halves in one batched pass (w = 1: the conditional
        half only; w = 0: the unconditional half only)."""
        if guidance == 1.0:
            return self(x, sigma, query)
        if guidance == 0.0:
            return self(x, sigma, query, torch.zeros(x.shape[0], dtype=torch.bool, device=x.device))
        b = x.shape[0]
        keep = torch.cat([torch.ones(b, dtype=torch.bool), torch.zeros(b, dtype=torch.bool)]).to(x.device)
        sigma = sigma if sigma.numel() == 1 else torch.cat([sigma, sigma])  # one shared level broadcasts
        both = self(torch.cat([x, x]), sigma, torch.cat([query, query]), keep)
        cond, uncond = both[:b], both[b:]
        return uncond + guidance * (cond - uncond)


def edm_loss(model: SetDenoiser, x0: torch.Tensor, query: torch.Tensor, generator: torch.Generator | None = None
             ) -> torch.Tensor:
    """EDM training loss on scaled clean sets x0 (B, L, d): weighted x0-prediction MSE.

    Rows are permuted at random (the set has no order), the query is dropped with p = cond_drop.
    """
    cfg = model.cfg
    b, rows, _ = x0.shape
    perm = torch.argsort(torch.rand(b, rows, generator=generator), dim=1).to(x0.device)
    x0 = torch.gather(x0, 1, perm[..., None].expand_as(x0))
    sigma = training_sigmas(cfg, b, generator).to(x0.device)
    keep = (torch.rand(b, generator=generator) >= cfg.cond_drop).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    denoised = model(x0 + sigma[:, None, None] * noise, sigma, query, keep)
    weight = (sigma**2 + cfg.sigma_data**2) / (sigma * cfg.sigma_data) ** 2
    return (weight[:, None, None] * (denoised - x0) ** 2).mean()


def training_sigmas(cfg: DiffusionConfig, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n training noise levels: tangent (time-uniform on σ_max·tan(1.5t)/tan(1.5)), lognormal (EDM) or
    loguniform (log σ uniform on [σ_min, σ_max])."""
    if cfg.noise == "lognormal":
        return (torch.randn(n, generator=generator) * cfg.p_std + cfg.p_mean).exp()
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    if cfg.noise == "loguniform":
        lo, hi = math.log(cfg.sigma_min), math.log(cfg.sigma_max)
        return (lo + (hi - lo) * u).exp().float()
    t_min = math.atan(cfg.sigma_min / cfg.sigma_max * math.tan(1.5)) / 1.5  # tangent
    t = t_min + (1 - t_min) * u
    return (cfg.sigma_max * torch.tan(1.5 * t) / math.tan(1.5)).float()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
