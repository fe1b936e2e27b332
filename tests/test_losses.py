"""Loss functions against values derived by hand (the arithmetic is written next to each number)."""
from __future__ import annotations

import math

import pytest
import torch

from rlvf.losses import c3po_loss, dpo_loss, kd_loss, reward_metrics, scd_loss, sft_loss

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


def test_sft_loss():
    # summed: −mean(−2, −4) = 3;  per token: −mean(−2/1, −4/4) = −mean(−2, −1) = 1.5
    torch.testing.assert_close(sft_loss(LOGPS), t(3.0))
    torch.testing.assert_close(sft_loss(LOGPS, N_TOKENS, per_token=True), t(1.5))
    with pytest.raises(ValueError):
        sft_loss(LOGPS, per_token=True)


def test_kd_loss_endpoints_and_mix():
    kl = t([0.5, 1.5])
    # κ = 0 is SFT, both reductions
    torch.testing.assert_close(kd_loss(LOGPS, kl, N_TOKENS, kappa=0.0, temperature=2.0), sft_loss(LOGPS))
    torch.testing.assert_close(
        kd_loss(LOGPS, kl, N_TOKENS, kappa=0.0, temperature=2.0, per_token=True),
        sft_loss(LOGPS, N_TOKENS, per_token=True),
    )
    # κ = 1 is T²·mean(KL) = 4·1.0 = 4
    torch.testing.assert_close(kd_loss(LOGPS, kl, N_TOKENS, kappa=1.0, temperature=2.0), t(4.0))
    # κ = 0.25, T = 2: 0.75·3 + 0.25·4·1.0 = 2.25 + 1 = 3.25;  squared: ½·3.25² = 5.28125
    mixed = kd_loss(LOGPS, kl, N_TOKENS, kappa=0.25, temperature=2.0)
    torch.testing.assert_close(mixed, t(3.25))
    squared = kd_loss(LOGPS, kl, N_TOKENS, kappa=0.25, temperature=2.0, squared=True)
    torch.testing.assert_close(squared, t(5.28125))


def test_kd_loss_per_token():
    # per token: NLL (2/1, 4/4) = (2, 1), KL (0.5/1, 1.5/4) = (0.5, 0.375);  κ = 0.5, T = 1:
    # 0.5·mean(2, 1) + 0.5·mean(0.5, 0.375) = 0.75 + 0.21875 = 0.96875
    kl = t([0.5, 1.5])
    loss = kd_loss(LOGPS, kl, N_TOKENS, kappa=0.5, temperature=1.0, per_token=True)
    torch.testing.assert_close(loss, t(0.96875))


def test_kd_loss_rejects_bad_arguments():
    with pytest.raises(ValueError):
        kd_loss(LOGPS, LOGPS, N_TOKENS, kappa=1.5)
    with pytest.raises(ValueError):
        kd_loss(LOGPS, LOGPS, N_TOKENS, kappa=0.5, temperature=0.0)


def test_c3po_loss():
    # mean(0.2, 0.4) + 0.2·2 + 0.1·5 = 0.3 + 0.4 + 0.5 = 1.2
    dpo = t([0.2, 0.4], requires_grad=True)
    total, parts = c3po_loss(dpo, t(2.0), t(5.0), lambda_out=0.2, lambda_near=0.1)
    torch.testing.assert_close(total, t(1.2))
    parts = {k: round(v.item(), 6) for k, v in parts.items()}
    assert parts == {"dpo": 0.3, "out": 2.0, "near": 5.0, "total": 1.2}
    total.backward()
    torch.testing.assert_close(dpo.grad, t([0.5, 0.5]))  # ∂mean/∂x_i = 1/B
    # a missing term is skipped: 0.3 + 0.1·5 = 0.8
    total, parts = c3po_loss(dpo, None, t(5.0))
    torch.testing.assert_close(total, t(0.8))
    assert "out" not in parts


def test_scd_loss():
    # SCD: the in-scope SFT loss alone
    total, parts = scd_loss(t(1.0))
    torch.testing.assert_close(total, t(1.0))
    assert set(parts) == {"sft", "total"}
    # SCD + negatives: 1 + 0.2·2 + 0.1·3 = 1.7
    total, parts = scd_loss(t(1.0), t(2.0), t(3.0), lambda_out=0.2, lambda_near=0.1)
    torch.testing.assert_close(total, t(1.7))
    assert set(parts) == {"sft", "out", "near", "total"}


def test_reward_metrics():
    # margins (0.5 − (−0.5), −0.1 − 0.2) = (1.0, −0.3): mean 0.35, one of two positive
    metrics = reward_metrics(t([0.5, -0.1]), t([-0.5, 0.2]))
    assert metrics == pytest.approx(
        {"rewards/chosen": 0.2, "rewards/rejected": -0.15, "rewards/margins": 0.35, "rewards/accuracies": 0.5}
    )
