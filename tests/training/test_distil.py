"""Progressive distillation on a tiny denoiser: the target identity, a round that closes the gap to the
teacher, and students that keep their schedule on disk."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.diffusion.distil import DistilConfig, _euler, distil, distil_round
from training.diffusion.model import DiffusionConfig, SetDenoiser
from training.diffusion.sampler import karras_sigmas, model_sigmas, sample
from training.diffusion.train import load_model

TINY = DiffusionConfig(dim=16, rows=4, width=32, depth=2, heads=2, cond_tokens=2)


@pytest.fixture()
def teacher():
    torch.manual_seed(0)
    m = SetDenoiser(TINY)
    for p in m.parameters():  # a non-trivial function of x, sigma and the query
        torch.nn.init.normal_(p, std=0.05)
    return m.eval()


@pytest.fixture()
def pairs():
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(32, 16, generator=g), dim=-1)
    x = torch.nn.functional.normalize(torch.randn(32, 4, 16, generator=g), dim=-1)
    return q, x


def test_rounds_halve_to_the_final_step_count():
    assert DistilConfig(start_steps=32, final_steps=1).rounds() == [16, 8, 4, 2, 1]
    assert DistilConfig(start_steps=8, final_steps=2).rounds() == [4, 2]
    with pytest.raises(ValueError):
        DistilConfig(start_steps=12, final_steps=1).rounds()


def test_the_target_makes_one_student_step_land_on_two_teacher_steps(teacher, pairs):
    q, x = pairs
    s_t, s_m, s_s = torch.full((32,), 5.0), torch.full((32,), 2.0), torch.full((32,), 0.5)
    x_t = x * 4 + s_t[:, None, None] * torch.randn(x.shape)
    with torch.no_grad():
        x_s = _euler(teacher, _euler(teacher, x_t, s_t, s_m, q), s_m, s_s, q)
    target = x_t - s_t[:, None, None] * (x_s - x_t) / (s_s - s_t)[:, None, None]
    one_step = x_t + (s_s - s_t)[:, None, None] * (x_t - target) / s_t[:, None, None]
    assert torch.allclose(one_step, x_s, atol=1e-4)


def test_a_round_brings_the_student_closer_to_the_teacher(teacher, pairs):
    q, x = pairs
    sigmas = karras_sigmas(4)
    noise = torch.randn(32, 4, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = sample(teacher, q, noise, sigmas)
        before = (sample(teacher, q, noise, sigmas[::2]) - reference).norm(dim=-1).mean()
    cfg = DistilConfig(start_steps=4, final_steps=2, round_steps=300, batch_size=32, lr=1e-3)
    student, losses = distil_round(teacher, sigmas, q, x * 4, cfg, seed=0)
    with torch.no_grad():
        after = (sample(student, q, noise, model_sigmas(student, 2)) - reference).norm(dim=-1).mean()
    assert student.sigmas == sigmas[::2] and np.mean(losses[-20:]) < np.mean(losses[:20])
    assert after < 0.5 * before


def test_students_are_saved_with_their_schedule_and_reruns_reuse_them(teacher, pairs, tmp_path):
    q, x = pairs
    cfg = DistilConfig(start_steps=4, final_steps=1, round_steps=5, batch_size=8)
    seen = []
    rows = distil(teacher, q.numpy(), x.numpy(), cfg, tmp_path, on_student=lambda n, m: seen.append(n) or {"n": n})
    assert [r["steps"] for r in rows] == [2, 1] and seen == [2, 1] and rows[0]["n"] == 2
    student = load_model(tmp_path / "student-s1.pt")
    assert model_sigmas(student, 1) == [80.0, 0.0] and len(model_sigmas(load_model(tmp_path / "student-s2.pt"), 2)) == 3
    with pytest.raises(ValueError, match="distilled for 1"):
        model_sigmas(student, 4)
    again = distil(teacher, q.numpy(), x.numpy(), cfg, tmp_path)
    assert [r["seconds"] for r in again] == [r["seconds"] for r in rows]  # loaded, not retrained
    with pytest.raises(ValueError, match="another distillation config"):
        distil(teacher, q.numpy(), x.numpy(), DistilConfig(start_steps=4, final_steps=1, round_steps=6), tmp_path)


def test_a_guided_round_bakes_the_teachers_guidance_into_the_student(teacher, pairs):
    q, x = pairs
    with torch.no_grad():
        teacher.null.normal_(std=3.0)  # a null token far from every query's
    sigmas = karras_sigmas(4)
    noise = torch.randn(32, 4, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        unguided, guided = (sample(teacher, q, noise, sigmas, guidance=w) for w in (1.0, 0.0))
    assert (unguided - guided).norm(dim=-1).mean() > 0.01  # the null branch leads elsewhere
    cfg = DistilConfig(start_steps=4, final_steps=2, round_steps=300, batch_size=32, lr=1e-3, guidance=0.0)
    student, _ = distil_round(teacher, sigmas, q, x * 4, cfg, seed=0, guidance=0.0)
    with torch.no_grad():
        rows = sample(student, q, noise, model_sigmas(student, 2))
    assert (rows - guided).norm(dim=-1).mean() < 0.5 * (rows - unguided).norm(dim=-1).mean()
    with pytest.raises(ValueError, match="guidance 1"):
        sample(student, q, noise, model_sigmas(student, 2), guidance=0.0)
