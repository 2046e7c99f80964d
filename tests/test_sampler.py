"""training/sampler.py: time steps, the Heun update, call counts, per-seed determinism,
coordinate canvases, classifier-free guidance, the ablation sampler and the PNG writers."""

import math

import numpy as np
import PIL.Image
import pytest
import torch

from dnnlib.util import UserError
from torch_utils import png
from training import encoders, patch, sampler, schedules
from training.networks import EDMPrecond
from conftest import sampling_net as tiny_net




class MockNet:
    """A denoiser with a closed form, D(x; σ) = x / (1 + σ²) (the ideal denoiser of unit-variance
    Gaussian data), that records its calls."""
    label_dim = 0
    img_channels = 1
    img_resolution = 4
    sigma_min = 0
    sigma_max = float('inf')
    training = False

    def __init__(self):
        self.calls = []

    def train(self, mode=True):
        return self

    def eval(self):
        return self

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def __call__(self, x, sigma, class_labels=None, coords=None):
        self.calls.append(float(sigma))
        assert x.dtype == torch.float32
        return x / (1 + float(sigma) ** 2)


class OnesRNG:
    """Churn 'noise' of all ones, for hand computations."""

    def randn_like(self, x):
        return torch.ones_like(x)


class CallCounter(torch.nn.Module):
    """Wraps a network, counting forward calls and keeping the coords/labels they got."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.calls = []
        for name in ('img_resolution', 'img_channels', 'label_dim', 'use_coords', 'pos_embed', 'down_factor',
                     'sigma_min', 'sigma_max'):
            setattr(self, name, getattr(net, name))

    def round_sigma(self, sigma):
        return self.net.round_sigma(sigma)

    def forward(self, x, sigma, class_labels=None, coords=None, **kwargs):
        self.calls.append(dict(batch=x.shape[0], coords=None if coords is None else coords.clone(), labels=class_labels))
        return self.net(x, sigma, class_labels, coords=coords, **kwargs)


@pytest.fixture(scope='module')
def rgb_net():
    return tiny_net()


# ----------------------------------------------------------------------------------------------
# The formulas.


def test_time_steps_match_independent_formula():
    n, smin, smax, rho = 7, 0.002, 80.0, 7.0
    expected = np.linspace(smax ** (1 / rho), smin ** (1 / rho), n) ** rho
    steps = sampler.edm_time_steps(MockNet(), n, smin, smax, rho)
    assert steps.dtype == torch.float64 and steps.shape == (n + 1,)
    np.testing.assert_allclose(steps[:-1].numpy(), expected, rtol=1e-12)
    assert steps[-1] == 0 and steps[0] == pytest.approx(80) and steps[-2] == pytest.approx(0.002)


def test_time_steps_clamped_to_network_range():
    net = MockNet()
    net.sigma_min, net.sigma_max = 0.01, 50.0
    steps = sampler.edm_time_steps(net, 5, 0.002, 80, 7)
    assert steps[0] == pytest.approx(50) and steps[-2] == pytest.approx(0.01)


def test_heun_steps_by_hand_with_churn():
    """N = 2: a churned Heun step from t_0 = σ_max to t_1 = σ_min, then an Euler step to 0."""
    net = MockNet()
    z = torch.tensor([[[[0.3, -1.2], [2.0, 0.5]]]])
    smin, smax, churn, s_noise = 0.5, 2.0, 0.6, 1.1
    out = sampler.edm_sampler(net, z, rng=OnesRNG(), num_steps=2, sigma_min=smin, sigma_max=smax, rho=7,
                              S_churn=churn, S_noise=s_noise)

    def D(x, s):
        return x / (1 + s * s)
    gamma = min(churn / 2, math.sqrt(2) - 1)
    x = z.double().numpy() * smax
    t_hat = smax * (1 + gamma)
    x_hat = x + math.sqrt(t_hat ** 2 - smax ** 2) * s_noise * 1.0
    d = (x_hat - D(x_hat, t_hat)) / t_hat
    x_e = x_hat + (smin - t_hat) * d
    d2 = (x_e - D(x_e, smin)) / smin
    x1 = x_hat + (smin - t_hat) * (d + d2) / 2
    t_hat1 = smin * (1 + gamma)
    x_hat1 = x1 + math.sqrt(t_hat1 ** 2 - smin ** 2) * s_noise
    x2 = x_hat1 + (0 - t_hat1) * (x_hat1 - D(x_hat1, t_hat1)) / t_hat1
    assert out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), x2, rtol=1e-6)  # the network sees float32 inputs
    assert net.calls == pytest.approx([t_hat, smin, t_hat1])


@pytest.mark.parametrize('num_steps', [1, 2, 5])
def test_network_evaluations_2n_minus_1(rgb_net, num_steps):
    counter = CallCounter(rgb_net)
    with torch.no_grad():
        x = sampler.edm_sampler(counter, torch.randn(2, 3, 16, 16), num_steps=num_steps)
    assert len(counter.calls) == 2 * num_steps - 1
    assert torch.isfinite(x).all()


def test_cfg_batches_both_halves_in_one_call():
    counter = CallCounter(tiny_net(label_dim=3))
    labels = torch.eye(3)[[0, 2]]
    with torch.no_grad():
        sampler.edm_sampler(counter, torch.randn(2, 3, 16, 16), labels, num_steps=3, cfg_scale=2.0)
    assert len(counter.calls) == 5 and all(c['batch'] == 4 for c in counter.calls)
    assert torch.equal(counter.calls[0]['labels'], torch.cat([labels, torch.zeros(2, 3)]))

# ----------------------------------------------------------------------------------------------
# Seeds, labels, canvases.


def assert_same_pixels(a, b):
    """Equal up to a rare ±1: CPU convolution and matrix kernels pick batch-size-dependent
    blockings, so a network's output for one row moves by ~1e-6 with the batch around it. The
    noise itself is identical per seed."""
    assert a.shape == b.shape
    diff = (a.int() - b.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01


def test_image_depends_only_on_seed(rgb_net):
    kwargs = dict(num_steps=3, S_churn=10)
    together = sampler.sample_images(rgb_net, [7, 3, 2**32 + 5, 11], batch_size=4, **kwargs)
    apart = sampler.sample_images(rgb_net, [7, 3, 2**32 + 5, 11], batch_size=1, **kwargs)
    alone = sampler.sample_images(rgb_net, [5], batch_size=1, **kwargs)  # seed mod 2^32
    assert together.dtype == torch.uint8 and together.shape == (4, 3, 16, 16)
    assert_same_pixels(together, apart)
    assert torch.equal(apart[2], alone[0])
    assert (together[0].int() - together[1].int()).abs().float().mean() > 10


def test_per_seed_noise_is_batch_independent():
    """With the network out of the way (a closed-form denoiser) the results are bit-identical."""
    net = MockNet()
    net.img_resolution, net.img_channels = 8, 3
    kwargs = dict(num_steps=4, S_churn=10, batch_size=3)
    together = sampler.sample_images(net, [4, 8, 15, 16, 23, 42], device='cpu', **kwargs)
    apart = torch.cat([sampler.sample_images(net, [seed], device='cpu', **kwargs) for seed in [4, 8, 15, 16, 23, 42]])
    assert torch.equal(together, apart)


def test_random_class_labels_come_from_the_seed():
    counter = CallCounter(tiny_net(label_dim=5))
    sampler.sample_images(counter, list(range(8)), batch_size=8, num_steps=1)
    labels = counter.calls[0]['labels']
    assert labels.shape == (8, 5) and torch.equal(labels.sum(1), torch.ones(8))
    counter.calls.clear()
    sampler.sample_images(counter, [6], batch_size=1, num_steps=1)
    assert torch.equal(counter.calls[0]['labels'][0], labels[6])
    counter.calls.clear()
    sampler.sample_images(counter, [0, 1], batch_size=2, num_steps=1, class_idx=4)
    assert torch.equal(counter.calls[0]['labels'], torch.eye(5)[[4, 4]])


def test_full_canvas_coords_equal_training_formula(rgb_net):
    counter = CallCounter(rgb_net)
    sampler.sample_images(counter, [0, 1], batch_size=2, num_steps=1)
    coords = counter.calls[0]['coords']
    assert coords.shape == (2, 2, 16, 16)
    grid = patch.coord_grid(16, 16)
    _, train_coords = patch.extract_patches(torch.zeros(2, 3, 16, 16), 16)
    assert torch.equal(coords, grid.expand(2, -1, -1, -1))
    assert torch.allclose(coords, train_coords, atol=1e-6)
    assert coords.min() == -1 and coords.max() == 1
    assert torch.equal(coords[0, 0, 0], grid[0, 0]) and coords[0, 0, 0, 1] > coords[0, 0, 0, 0]  # channel 0 = x


def test_large_canvas_extends_coords_past_unit_range(rgb_net):
    counter = CallCounter(rgb_net)
    images = sampler.sample_images(counter, [0], num_steps=1, canvas=sampler.Canvas(16, 32, 0, 0))
    assert images.shape == (1, 3, 32, 32)
    coords = counter.calls[0]['coords']
    assert coords.min() == -1 and coords.max() == pytest.approx(-1 + 2 * 31 / 15)
    assert torch.equal(coords[0], patch.coord_grid(16, 32))


def test_offset_canvas_shifts_coords(rgb_net):
    counter = CallCounter(rgb_net)
    sampler.sample_images(counter, [0], num_steps=1, canvas=sampler.Canvas(16, 16, 8, 0))
    coords = counter.calls[0]['coords'][0]
    assert coords[0].min() == pytest.approx(-1 + 2 * 8 / 15) and coords[0].max() == pytest.approx(-1 + 2 * 23 / 15)
    assert coords[1].min() == -1 and coords[1].max() == 1


def test_canvas_not_divisible_is_user_error(rgb_net):
    with pytest.raises(UserError, match='--image_size'):
        sampler.sample_images(rgb_net, [0], num_steps=1, canvas=sampler.Canvas(16, 17, 0, 0))


def test_decoder_hook_turns_latents_into_images():
    torch.manual_seed(0)
    net = EDMPrecond(img_resolution=8, img_channels=4, use_coords=True, model_type='SongUNet', model_channels=16,
                     channel_mult=[1], num_blocks=1, attn_resolutions=[], dropout=0).eval()

    class Decoder:
        def decode(self, latents):
            assert latents.dtype == sampler.state_dtype(latents.device) and latents.shape[1:] == (4, 8, 8)
            rgb = latents[:, :3].repeat_interleave(8, 2).repeat_interleave(8, 3)
            return encoders.to_uint8(rgb)
    images = sampler.sample_images(net, [0, 1], num_steps=1, decoder=Decoder())
    assert images.dtype == torch.uint8 and images.shape == (2, 3, 64, 64)

# ----------------------------------------------------------------------------------------------
# Guidance and the ablation sampler.


def test_cfg_weight_one_equals_conditional_sampling():
    net = tiny_net(label_dim=3)
    z = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.eye(3)
    with torch.no_grad():
        plain = sampler.edm_sampler(net, z, labels, num_steps=3)
        guided = sampler.edm_sampler(net, z, labels, num_steps=3, cfg_scale=1.0)
        stronger = sampler.edm_sampler(net, z, labels, num_steps=3, cfg_scale=3.0)
    assert torch.allclose(plain, guided, atol=1e-3, rtol=0)  # 2B-row vs B-row calls round differently
    assert (plain - stronger).abs().max() > 0.1


def test_cfg_on_unconditional_network_is_user_error(rgb_net):
    with pytest.raises(UserError, match='--cfg'):
        sampler.sample_images(rgb_net, [0], num_steps=1, cfg_scale=2.0)
    with pytest.raises(UserError, match='--cfg'):
        sampler.edm_sampler(rgb_net, torch.randn(1, 3, 16, 16), num_steps=1, cfg_scale=2.0)


@pytest.mark.parametrize('churn', [0, 30])
def test_ablation_with_edm_settings_reproduces_edm_sampler(rgb_net, churn):
    z = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    kwargs = dict(num_steps=4, S_churn=churn, S_min=0.01, S_max=50)
    with torch.no_grad():
        edm = sampler.edm_sampler(rgb_net, z, rng=sampler.misc.BatchRNG([1, 2]), **kwargs)
        abl = sampler.ablation_sampler(rgb_net, z, rng=sampler.misc.BatchRNG([1, 2]), solver='heun',
                                       discretization='edm', schedule='linear', scaling='none', **kwargs)
    assert torch.allclose(edm, abl, atol=1e-4, rtol=0)
    assert edm.abs().max() > 0.1


@pytest.mark.parametrize('disc,schedule,scaling,solver', [
    ('vp', 'vp', 'vp', 'euler'), ('vp', 'vp', 'vp', 'heun'), ('ve', 've', 'none', 'heun'),
    ('iddpm', 'linear', 'none', 'euler'), ('edm', 'vp', 'vp', 'heun'), ('edm', 've', 'none', 'euler')])
def test_ablation_variants_run_and_count_calls(disc, schedule, scaling, solver):
    net = MockNet()
    out = sampler.ablation_sampler(net, torch.randn(2, 1, 4, 4, dtype=torch.float64), num_steps=5, discretization=disc,
                                   schedule=schedule, scaling=scaling, solver=solver, S_churn=1, rng=OnesRNG())
    assert torch.isfinite(out).all()
    assert len(net.calls) == (5 if solver == 'euler' else 9)


def test_ablation_solves_gaussian_ode():
    """For unit-variance Gaussian data the ODE of every schedule maps x(t_0) = z·σ_max·s(t_0) to
    z·σ_max/√(1 + σ_max²) at t = 0; a sharp check of signs and derivatives (the VE schedule
    converges slowest, as EDM's paper shows)."""
    z = torch.randn(8, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for disc, schedule, scaling in [('vp', 'vp', 'vp'), ('ve', 've', 'none'), ('edm', 'linear', 'none'),
                                    ('iddpm', 'linear', 'none'), ('edm', 'vp', 'vp'), ('ve', 'linear', 'none')]:
        net = MockNet()
        out = sampler.ablation_sampler(net, z, num_steps=256, discretization=disc, schedule=schedule, scaling=scaling)
        sigma_max = net.calls[0]
        expected = z * sigma_max / math.sqrt(1 + sigma_max ** 2)
        assert torch.allclose(out, expected, rtol=3e-3, atol=0), (disc, schedule, scaling)


def test_iddpm_levels_are_decreasing_and_end_at_zero():
    u = schedules.iddpm_levels()
    assert u.shape == (1001,) and u[-1] == 0 and (u[:-1] > u[1:]).all()
    steps = sampler.ablation_sigma_steps('iddpm', 10, 0.002, 81, 7, 1e-3, 0.001, 0.008, 1000, None)
    assert len(steps) == 10 and (steps[:-1] > steps[1:]).all() and steps[0] <= 81

# ----------------------------------------------------------------------------------------------
# PNG output.


def test_grey_network_writes_grey_png(tmp_path):
    images = sampler.sample_images(tiny_net(img_channels=1), [0, 1], num_steps=1)
    assert images.shape == (2, 1, 16, 16)
    png.save_image(images[0], tmp_path / 'a.png')
    with PIL.Image.open(tmp_path / 'a.png') as img:
        assert img.mode == 'L' and np.array_equal(np.asarray(img), images[0, 0].numpy())
