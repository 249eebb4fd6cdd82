"""The clipped PPO objective and per-prompt advantages."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.trainer.ddpo.ppo import PerPromptAdvantages, ppo_loss


def test_at_ratio_one_the_loss_is_minus_the_mean_advantage() -> None:
    old = torch.tensor([-1.0, -2.0, -0.5])
    new = old.clone().requires_grad_(True)
    advantages = torch.tensor([1.0, -1.0, 2.0])
    loss, stats = ppo_loss(new, old, advantages, clip_range=0.1, adv_clip_max=5)
    assert float(loss) == pytest.approx(-2 / 3)
    assert stats.approx_kl == 0 and stats.clip_fraction == 0
    loss.backward()
    # The gradient raises the log-probability of what was better than average.
    assert new.grad is not None
    torch.testing.assert_close(new.grad, -advantages / 3)


def test_a_ratio_past_the_clip_stops_its_gradient_in_the_direction_of_the_advantage() -> None:
    old = torch.zeros(2)
    new = torch.tensor([0.5, -0.5], requires_grad=True)  # ratios e^0.5 and e^-0.5
    loss, stats = ppo_loss(new, old, torch.tensor([1.0, -1.0]), clip_range=0.2, adv_clip_max=5)
    loss.backward()
    assert new.grad is not None and torch.equal(new.grad, torch.zeros(2))
    assert stats.clip_fraction == 1.0 and stats.approx_kl == pytest.approx(0.125)


def test_advantages_are_clipped() -> None:
    old = torch.zeros(2)
    loss, _ = ppo_loss(
        old.clone(), old, torch.tensor([100.0, -1.0]), clip_range=0.1, adv_clip_max=3
    )
    assert float(loss) == pytest.approx(-(3 - 1) / 2)


def test_advantages_use_the_batch_until_a_prompt_has_enough_history() -> None:
    tracker = PerPromptAdvantages(buffer_size=4, min_count=3)
    first = tracker(["a", "a", "b", "b"], np.array([1.0, 3.0, 5.0, 7.0]))
    batch = np.array([1.0, 3.0, 5.0, 7.0])
    np.testing.assert_allclose(first, (batch - batch.mean()) / (batch.std() + 1e-6))
    # "a" now has 3 rewards (1, 3, 2): standardised against its own; "c" against the batch.
    second = tracker(["a", "c"], np.array([2.0, 9.0]))
    a_history = np.array([1.0, 3.0, 2.0])
    assert second[0] == pytest.approx((2 - a_history.mean()) / (a_history.std() + 1e-6))
    assert second[1] == pytest.approx((9 - 5.5) / (3.5 + 1e-6))


def test_the_buffers_keep_the_newest_rewards_and_survive_a_restore() -> None:
    tracker = PerPromptAdvantages(buffer_size=2, min_count=1)
    tracker(["a", "a", "a"], np.array([1.0, 2.0, 3.0]))
    assert tracker.state() == {"a": [2.0, 3.0]}
    restored = PerPromptAdvantages(buffer_size=2, min_count=1)
    restored.restore(tracker.state())
    np.testing.assert_allclose(restored(["a"], np.array([4.0])), tracker(["a"], np.array([4.0])))
    with pytest.raises(ValueError, match="min_count"):
        PerPromptAdvantages(buffer_size=2, min_count=3)
