"""Loss functions against values derived by hand (the arithmetic is written next to each number)."""
from __future__ import annotations

import math

import pytest
import torch

from rlvf.losses import constraint_loss, dpo_loss, nll, reward_metrics

t = torch.tensor


def _pair(h_chosen=1.0, h_rejected=-1.0):
    """Log-probs with log-ratios π−ref of h_chosen (chosen) and h_rejected (rejected)."""
    ref_chosen, ref_rejected = t([-2.0]), t([-2.0])
    policy_chosen = (ref_chosen + h_chosen).requires_grad_(True)
    policy_rejected = (ref_rejected + h_rejected).requires_grad_(True)
    return policy_chosen, policy_rejected, ref_chosen, ref_rejected


def test_dpo_sigmoid_hand_value_and_gradient():
    # h = (−1 − (−2)) − (−3 − (−2)) = 1 − (−1) = 2;  β = 0.5 → βh = 1
    # loss = −log σ(1) = log(1 + e^{−1}) = 0.3132617
    pc, pr, rc, rr = _pair()
    out = dpo_loss(pc, pr, rc, rr, beta=0.5)
    torch.testing.assert_close(out.losses, t([math.log1p(math.exp(-1))]))
    assert abs(out.losses.item() - 0.3132617) < 1e-6
    # rewards β·(π − ref): chosen 0.5·1 = 0.5, rejected 0.5·(−1) = −0.5, detached
    torch.testing.assert_close(out.chosen_rewards, t([0.5]))
    torch.testing.assert_close(out.rejected_rewards, t([-0.5]))
    assert not out.chosen_rewards.requires_grad
    # ∂loss/∂π_chosen = −β·σ(−βh) = −0.5·σ(−1) = −0.5·0.2689414 = −0.1344707; ∂/∂π_rejected = +0.1344707
    out.losses.sum().backward()
    torch.testing.assert_close(pc.grad, t([-0.5 / (1 + math.e)]))
    torch.testing.assert_close(pr.grad, t([0.5 / (1 + math.e)]))


def test_dpo_label_smoothing():
    # ε = 0.1: 0.9·log(1 + e^{−1}) + 0.1·log(1 + e^{1});  log(1 + e) − log(1 + e^{−1}) = 1,
    # so the loss is log(1 + e^{−1}) + 0.1·1 = 0.4132617
    out = dpo_loss(*_pair(), beta=0.5, label_smoothing=0.1)
    torch.testing.assert_close(out.losses, t([math.log1p(math.exp(-1)) + 0.1]))


def test_dpo_ipo_and_hinge():
    # IPO: (h − 1/(2β))²;  h = 2, β = 0.5 → (2 − 1)² = 1;  β = 0.25 → (2 − 2)² = 0
    torch.testing.assert_close(dpo_loss(*_pair(), beta=0.5, loss_type="ipo").losses, t([1.0]))
    torch.testing.assert_close(dpo_loss(*_pair(), beta=0.25, loss_type="ipo").losses, t([0.0]))
    # hinge: max(0, 1 − βh);  h = 2, β = 0.5 → 0;  h = 1 (0.5 − (−0.5)), β = 0.5 → 0.5
    torch.testing.assert_close(dpo_loss(*_pair(), beta=0.5, loss_type="hinge").losses, t([0.0]))
    torch.testing.assert_close(dpo_loss(*_pair(0.5, -0.5), beta=0.5, loss_type="hinge").losses, t([0.5]))


def test_dpo_batch_shapes():
    pc, pr, rc, rr = (torch.randn(5) for _ in range(4))
    out = dpo_loss(pc, pr, rc, rr)
    assert out.losses.shape == out.chosen_rewards.shape == out.rejected_rewards.shape == (5,)


BAD_DPO_ARGS = [
    {"loss_type": "kto"},
    {"beta": 0.0},
    {"label_smoothing": 0.5},
    {"loss_type": "ipo", "label_smoothing": 0.1},  # label smoothing is defined for the sigmoid loss only
]


@pytest.mark.parametrize("kwargs", BAD_DPO_ARGS)
def test_dpo_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        dpo_loss(*_pair(), **kwargs)


LOGPS, N_TOKENS = t([-2.0, -4.0]), t([1, 4])


def test_nll_reductions():
    # token mean: (−(−2)/1, −(−4)/4) = (2, 1);  sequence sum: (2, 4)
    torch.testing.assert_close(nll(LOGPS, N_TOKENS), t([2.0, 1.0]))
    torch.testing.assert_close(nll(LOGPS, N_TOKENS, "sequence_sum"), t([2.0, 4.0]))
    # a row with no scored token counts 1 token: −(−3)/1 = 3
    torch.testing.assert_close(nll(t([-3.0]), t([0])), t([3.0]))
    with pytest.raises(ValueError):
        nll(LOGPS, N_TOKENS, "mean")


def test_constraint_endpoints_and_mix():
    kl = t([0.5, 1.5])
    # κ = 0 is the NLL, whatever the KL
    torch.testing.assert_close(constraint_loss(LOGPS, N_TOKENS, kl, kappa=0.0, temperature=2.0), nll(LOGPS, N_TOKENS))
    # κ = 1, T = 2, KL summed per row: 4·(0.5, 1.5) = (2, 6);  per token: 4·(0.5/1, 1.5/4) = (2, 1.5)
    torch.testing.assert_close(constraint_loss(LOGPS, N_TOKENS, kl, kappa=1.0, temperature=2.0), t([2.0, 6.0]))
    torch.testing.assert_close(constraint_loss(LOGPS, N_TOKENS, kl, kappa=1.0, temperature=2.0,
                                               kl_reduction="token_mean"), t([2.0, 1.5]))
    # κ = 0.25, T = 2, NLL summed (2, 4): 0.75·(2, 4) + 0.25·(2, 6) = (1.5 + 0.5, 3 + 1.5) = (2, 4.5)
    mixed = constraint_loss(LOGPS, N_TOKENS, kl, kappa=0.25, temperature=2.0, nll_reduction="sequence_sum")
    torch.testing.assert_close(mixed, t([2.0, 4.5]))
    # squared per row: ½·(2², 4.5²) = (2, 10.125)
    squared = constraint_loss(LOGPS, N_TOKENS, kl, kappa=0.25, temperature=2.0, nll_reduction="sequence_sum",
                              squared=True)
    torch.testing.assert_close(squared, t([2.0, 10.125]))


def test_constraint_rejects_bad_arguments():
    with pytest.raises(ValueError):
        constraint_loss(LOGPS, N_TOKENS, LOGPS, kappa=1.5)
    with pytest.raises(ValueError):
        constraint_loss(LOGPS, N_TOKENS, LOGPS, kappa=0.5, temperature=0.0)
    with pytest.raises(ValueError):  # κ > 0 needs the KL
        constraint_loss(LOGPS, N_TOKENS, None, kappa=0.5)


def test_reward_metrics():
    # margins (0.5 − (−0.5), −0.1 − 0.2) = (1.0, −0.3): mean 0.35, one of two positive
    metrics = reward_metrics(t([0.5, -0.1]), t([-0.5, 0.2]))
    assert metrics == pytest.approx(
        {"rewards/chosen": 0.2, "rewards/rejected": -0.15, "rewards/margins": 0.35, "rewards/accuracies": 0.5}
    )
