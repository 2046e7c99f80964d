"""The noise schedules (training/schedules.py) and the modules that share them: the VP loss, the
VP and iDDPM preconditioners and the sampler must use the same σ(t), t(σ) and iDDPM levels."""

import math

import numpy as np
import pytest
import torch

from training import loss, networks, sampler, schedules


def test_vp_sigma_inverse_and_derivative_on_floats_and_tensors():
    t = [1e-3, 0.1, 0.5, 1.0]
    for value in t:
        sigma = schedules.vp_sigma(value)
        assert isinstance(sigma, float)
        assert sigma == pytest.approx(math.sqrt(math.exp(0.5 * 19.9 * value ** 2 + 0.1 * value) - 1), rel=1e-12)
        assert schedules.vp_sigma_inv(sigma) == pytest.approx(value, rel=1e-9)
        h = 1e-6
        slope = (schedules.vp_sigma(value + h) - schedules.vp_sigma(value - h)) / (2 * h)
        assert schedules.vp_sigma_deriv(value) == pytest.approx(slope, rel=1e-5)
    tensor = schedules.vp_sigma(torch.tensor(t, dtype=torch.float32))
    assert tensor.dtype == torch.float32
    np.testing.assert_allclose(tensor.numpy(), [schedules.vp_sigma(v) for v in t], rtol=1e-3)  # exp − 1 in float32


def test_vp_betas_hit_the_requested_sigma_range():
    beta_d, beta_min = schedules.vp_betas(0.002, 80, 1e-3)
    assert schedules.vp_sigma(1e-3, beta_d, beta_min) == pytest.approx(0.002, rel=1e-6)
    assert schedules.vp_sigma(1.0, beta_d, beta_min) == pytest.approx(80, rel=1e-9)


def test_ve_sigma_and_inverse():
    assert schedules.ve_sigma(4.0) == 2.0 and schedules.ve_sigma_inv(3.0) == 9.0 and schedules.ve_sigma_deriv(4.0) == 0.25


def test_vp_loss_preconditioner_and_sampler_share_sigma_of_t():
    net = networks.VPPrecond(img_resolution=8, img_channels=1, model_channels=8, channel_mult=[1, 2], num_blocks=1,
                             attn_resolutions=[])
    t = torch.tensor([1e-5, 0.01, 0.3, 1.0], dtype=torch.float64)
    vp = sampler._vp_schedule(19.9, 0.1)
    expected = [vp.sigma(float(v)) for v in t]
    np.testing.assert_allclose(net.sigma(t).numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(loss.VPLoss().sigma(t).numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(net.sigma_inv(torch.tensor(expected, dtype=torch.float64)).numpy(), [vp.sigma_inv(s) for s in expected], rtol=1e-12)


def test_sampler_iddpm_levels_equal_the_preconditioner_levels():
    """The iDDPM discretisation of the sampler picks from the levels the iDDPM network snaps to,
    so every time step is one of the network's own levels."""
    net = networks.iDDPMPrecond(img_resolution=8, img_channels=1, model_channels=32, channel_mult=[1, 2], num_blocks=1)
    levels = schedules.iddpm_levels()
    assert torch.equal(net.u, levels.to(torch.float32))
    steps = sampler.ablation_sigma_steps('iddpm', 12, net.sigma_min, net.sigma_max, 7, 1e-3, 0.001, 0.008, 1000, None)
    assert set(steps.tolist()) <= set(levels.tolist())
    assert torch.equal(net.round_sigma(steps.to(torch.float32)), steps.to(torch.float32))
