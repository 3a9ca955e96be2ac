"""The set-diffusion model and its samplers on tiny configs: EDM identities, symmetry, and a real fit."""

from __future__ import annotations

import math

import pytest
import torch

from training.diffusion.model import DiffusionConfig, SetDenoiser, count_parameters, edm_loss, training_sigmas
from training.diffusion.sampler import karras_sigmas, sample

TINY = DiffusionConfig(dim=16, rows=4, width=32, depth=2, heads=2, cond_tokens=2)


@pytest.fixture()
def model():
    torch.manual_seed(0)
    m = SetDenoiser(TINY)
    for p in m.parameters():  # zero-initialised heads would make every test trivially pass
        torch.nn.init.normal_(p, std=0.05)
    return m.eval()


def test_karras_sigmas_are_decreasing_and_end_at_zero():
    s = karras_sigmas(8, 0.002, 80.0)
    assert len(s) == 9 and s[0] == pytest.approx(80.0) and s[-2] == pytest.approx(0.002) and s[-1] == 0.0
    assert all(a > b for a, b in zip(s, s[1:]))
    assert karras_sigmas(1) == [80.0, 0.0]
    with pytest.raises(ValueError):
        karras_sigmas(0)


@pytest.mark.parametrize("noise,median", [
    ("tangent", 80.0 * math.tan(0.75) / math.tan(1.5)),  # t = 0.5 on the paper's tangent schedule: σ ≈ 5.3
    ("lognormal", math.exp(-1.2)),
    ("loguniform", math.sqrt(0.002 * 80.0)),
])
def test_training_noise_levels_follow_their_distribution(noise, median):
    cfg = DiffusionConfig(noise=noise)
    s = training_sigmas(cfg, 200_000, torch.Generator().manual_seed(0))
    assert s.shape == (200_000,) and s.dtype == torch.float32 and bool((s > 0).all())
    assert float(s.median()) == pytest.approx(median, rel=0.05)
    if noise != "lognormal":  # the bounded ones stay on [σ_min, σ_max]
        assert float(s.min()) >= cfg.sigma_min * 0.999 and float(s.max()) <= cfg.sigma_max * 1.001
    with pytest.raises(ValueError, match="noise must be one of"):
        DiffusionConfig(noise="cosine")


def test_preconditioning_passes_clean_input_through_at_tiny_noise(model):
    x, q = torch.randn(3, 4, 16), torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    out = model(x, torch.full((3,), 1e-4), q)
    assert torch.allclose(out, x, atol=1e-3)  # c_skip -> 1, c_out -> 0
    far = model(x, torch.full((3,), 80.0), q)
    assert not torch.allclose(far, x, atol=1e-1)  # at high noise the network decides


def test_rows_are_a_set_permutation_equivariant(model):
    x, q = torch.randn(2, 4, 16), torch.nn.functional.normalize(torch.randn(2, 16), dim=-1)
    sigma = torch.tensor([0.7, 3.0])
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.allclose(model(x[:, perm], sigma, q), model(x, sigma, q)[:, perm], atol=1e-5)


def test_guidance_one_is_the_conditional_model_and_null_differs(model):
    x, q = torch.randn(2, 4, 16), torch.nn.functional.normalize(torch.randn(2, 16), dim=-1)
    sigma = torch.tensor([1.0, 1.0])
    assert torch.allclose(model.guided(x, sigma, q, 1.0), model(x, sigma, q))
    uncond = model(x, sigma, q, keep=torch.zeros(2, dtype=torch.bool))
    guided = model.guided(x, sigma, q, 3.0)
    assert torch.allclose(guided, uncond + 3.0 * (model(x, sigma, q) - uncond), atol=1e-5)
    batched_uncond = (3.0 * model(x, sigma, q) - guided) / 2  # the null half of the batched CFG pass
    assert torch.allclose(model.guided(x, sigma, q, 0.0), batched_uncond, atol=1e-5)


@pytest.mark.parametrize("guidance", [1.0, 0.0, 3.0])
def test_one_shared_noise_level_is_the_same_as_one_per_row(model, guidance):
    """The sampler passes sigma as (1,) (the export then folds the noise embedding): it must broadcast exactly."""
    x, q = torch.randn(3, 4, 16), torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    shared = model.guided(x, torch.tensor([0.7]), q, guidance)
    per_row = model.guided(x, torch.full((3,), 0.7), q, guidance)
    assert shared.shape == (3, 4, 16) and torch.allclose(shared, per_row, atol=1e-6)


@pytest.mark.parametrize("method, steps", [("euler", 1), ("euler", 4), ("heun", 4)])
def test_sampler_is_deterministic_given_noise_and_returns_unit_rows(model, method, steps):
    q = torch.nn.functional.normalize(torch.randn(2, 16), dim=-1)
    noise = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(1))
    a = sample(model, q, noise, karras_sigmas(steps), guidance=2.0, method=method)
    b = sample(model, q, noise.clone(), karras_sigmas(steps), guidance=2.0, method=method)
    assert a.shape == (2, 4, 16) and torch.equal(a, b)
    assert torch.allclose(a.norm(dim=-1), torch.ones(2, 4), atol=1e-5)


def test_a_small_model_learns_a_conditional_set():
    """Two queries, each with its own 4-row target set: after training, sampling recovers each set."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(2, 16, generator=g), dim=-1)
    targets = torch.nn.functional.normalize(torch.randn(2, 4, 16, generator=g), dim=-1)  # (2, L, d)
    model = SetDenoiser(TINY)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x0 = targets.repeat(32, 1, 1) * math.sqrt(TINY.dim)
    q = queries.repeat(32, 1)
    for _ in range(400):
        opt.zero_grad()
        edm_loss(model, x0, q, g).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        out = sample(model, queries, torch.randn(2, 4, 16, generator=g), karras_sigmas(16), guidance=1.0,
                     method="heun")
    # Each generated row lands near some row of its own target set, not the other query's.
    own = torch.einsum("bld,bmd->blm", out, targets).amax(-1)
    other = torch.einsum("bld,bmd->blm", out, targets.flip(0)).amax(-1)
    assert own.mean() > 0.9 and own.mean() > other.mean() + 0.3
    assert count_parameters(model) > 0


@pytest.mark.parametrize("relative", [False, True])
def test_rows_map_into_the_model_space_and_back(relative):
    g = torch.Generator().manual_seed(0)
    model = SetDenoiser(DiffusionConfig(**{**TINY.as_dict(), "relative": relative}))
    query = torch.nn.functional.normalize(torch.randn(3, 16, generator=g), dim=-1)
    rows = torch.nn.functional.normalize(torch.randn(3, 4, 16, generator=g), dim=-1)
    assert torch.allclose(model.to_rows(model.to_x0(rows, query), query), rows, atol=1e-5)
    at_query = model.to_x0(query[:, None, :].expand(-1, 4, -1), query)
    assert (at_query.abs().max() < 1e-6) == relative  # relative: a row on the query is the origin


def _fit(cfg: DiffusionConfig, queries: torch.Tensor, targets: torch.Tensor, steps: int = 400) -> SetDenoiser:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = SetDenoiser(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x0 = model.to_x0(targets, queries)
    for _ in range(steps):
        opt.zero_grad()
        edm_loss(model, x0, queries, g).backward()
        opt.step()
    return model.eval()


def test_a_relative_model_carries_a_shared_offset_to_new_queries():
    """Every target set is its query moved by the same 4 offsets. As offsets from the query that is one set to
    learn; as absolute rows it is a different set per query. On held-out queries the relative model lands nearer."""
    g = torch.Generator().manual_seed(0)
    offsets = 0.8 * torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=-1)
    queries = torch.nn.functional.normalize(torch.randn(24, 16, generator=g), dim=-1)
    targets = torch.nn.functional.normalize(queries[:, None, :] + offsets, dim=-1)
    train, held = slice(0, 16), slice(16, 24)
    noise = torch.randn(8, 4, 16, generator=g)
    scores = {}
    for relative in (False, True):
        model = _fit(DiffusionConfig(**{**TINY.as_dict(), "relative": relative}), queries[train], targets[train])
        with torch.no_grad():
            out = sample(model, queries[held], noise, karras_sigmas(16), method="heun")
        scores[relative] = torch.einsum("bld,bmd->blm", out, targets[held]).amax(-1).mean().item()
    assert scores[True] > 0.9 and scores[True] > scores[False] + 0.05
