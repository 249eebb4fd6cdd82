"""The DDIM policy step: the scheduler's own sample, and the closed-form Gaussian density."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler

from services.trainer.ddpo.logprob import ddim_step_with_logprob


def scheduler(steps: int = 10, **config: object) -> DDIMScheduler:
    made = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        **config,
    )
    made.set_timesteps(steps)
    return made


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("index", [0, 5, 9])
def test_the_drawn_sample_is_the_schedulers_own(prediction_type: str, index: int) -> None:
    sched = scheduler(prediction_type=prediction_type)
    t = sched.timesteps[index]
    sample = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    output = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    ours = ddim_step_with_logprob(
        sched, output, t, sample, eta=1.0, generator=torch.Generator().manual_seed(3)
    )
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    theirs = sched.step(output, t, sample, eta=1.0, variance_noise=noise).prev_sample
    torch.testing.assert_close(ours.prev_sample, theirs, rtol=1e-5, atol=1e-5)


def test_the_log_prob_is_the_gaussian_density_averaged_over_elements() -> None:
    sched = scheduler()
    t = sched.timesteps[3]
    sample = torch.randn(3, 4, 8, 8)
    output = torch.randn(3, 4, 8, 8)
    step = ddim_step_with_logprob(sched, output, t, sample, eta=0.7)
    normal = torch.distributions.Normal(step.mean, step.std.expand_as(step.mean))
    expected = normal.log_prob(step.prev_sample).mean(dim=(1, 2, 3))
    torch.testing.assert_close(step.log_prob, expected, rtol=1e-5, atol=1e-5)
    assert float(step.std) > 0


def test_scoring_a_given_sample_and_its_gradient() -> None:
    sched = scheduler()
    t = sched.timesteps[4]
    sample = torch.randn(2, 4, 8, 8)
    output = torch.randn(2, 4, 8, 8, requires_grad=True)
    drawn = ddim_step_with_logprob(sched, output.detach(), t, sample, eta=1.0)
    again = ddim_step_with_logprob(sched, output, t, sample, eta=1.0, prev_sample=drawn.prev_sample)
    torch.testing.assert_close(again.log_prob, drawn.log_prob)
    again.log_prob.sum().backward()
    assert output.grad is not None and float(output.grad.abs().sum()) > 0
    # The mean itself is the likeliest point: its density beats the drawn sample's.
    at_mean = ddim_step_with_logprob(sched, output, t, sample, eta=1.0, prev_sample=again.mean)
    assert bool((at_mean.log_prob > again.log_prob).all())
    per_element_peak = -math.log(float(again.std)) - 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(at_mean.log_prob.detach(), torch.full((2,), per_element_peak))


def test_a_deterministic_step_has_no_density() -> None:
    with pytest.raises(ValueError, match="eta"):
        ddim_step_with_logprob(scheduler(), torch.zeros(1, 4), 1, torch.zeros(1, 4), eta=0.0)
