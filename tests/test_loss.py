"""Losses (SPEC section 4): per-element λ(σ)·(D(y + n) − y)², the σ distributions and weights,
patches with their coordinates, and augmentation applied to the full image before cropping.

Random draws are reproduced with `torch_utils.misc.BatchRNG` from the same seeds (an image's
loss depends only on its seed), in the documented order: [augmentation], [crop offsets], σ, noise.
"""

import math

import numpy as np
import pytest
import torch

from conftest import make_tiny_net
from torch_utils.misc import BatchRNG
from training import loss as loss_mod
from training import patch

SEEDS = [11, 12, 13, 14, 15, 16]


class MockNet:
    """D(x; σ) = 0.7·x + 0.05·σ·tanh(x); records what the loss passes in."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, sigma, labels=None, coords=None, augment_labels=None):
        self.calls.append(dict(x=x.detach().clone(), sigma=torch.as_tensor(sigma).detach().clone(), labels=labels,
                               coords=coords, augment_labels=augment_labels))
        return 0.7 * x + 0.05 * sigma * torch.tanh(x)


def _mock_d(x, sigma):
    return 0.7 * x + 0.05 * sigma * np.tanh(x)


def _edm_weight(s, sd=0.5):
    return (s ** 2 + sd ** 2) / (s * sd) ** 2


def _images(n=len(SEEDS), c=3, r=8, seed=0):
    return torch.randn(n, c, r, r, generator=torch.Generator().manual_seed(seed))


def _check_loss_value(out, y, sigma, noise_std, weight):
    """out must equal λ(σ)·(D(y + σ·n) − y)² computed in float64."""
    y64 = y.double().numpy()
    s = np.asarray(sigma, dtype=np.float64).reshape(-1, 1, 1, 1)
    x_in = y64 + s * noise_std.double().numpy()
    expected = weight(s) * (_mock_d(x_in, s) - y64) ** 2
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=2e-4, atol=1e-6 * expected.max())


@pytest.mark.parametrize('P_mean,P_std,sigma_data', [(-1.2, 1.2, 0.5), (0.4, 0.6, 1.0)])
def test_edm_loss_formula(P_mean, P_std, sigma_data):
    y = _images()
    net = MockNet()
    loss_fn = loss_mod.EDMLoss(P_mean=P_mean, P_std=P_std, sigma_data=sigma_data)
    labels = torch.eye(6)
    out = loss_fn(net, y, labels, rng=BatchRNG(SEEDS))
    assert out.shape == y.shape

    ref = BatchRNG(SEEDS)
    sigma = np.exp(ref.randn().double().numpy() * P_std + P_mean)
    noise = ref.randn(*y.shape[1:])
    call, = net.calls
    np.testing.assert_allclose(call['sigma'].double().flatten().numpy(), sigma, rtol=1e-5)
    np.testing.assert_allclose(call['x'].double().numpy(), (y.double() + torch.tensor(sigma).reshape(-1, 1, 1, 1) * noise.double()).numpy(),
                               rtol=1e-5, atol=1e-5)
    assert call['labels'] is labels and call['coords'] is None and call['augment_labels'] is None
    _check_loss_value(out, y, sigma, noise, lambda s: _edm_weight(s, sigma_data))


def _run_uniform_loss(loss_fn, channels):
    """Runs a loss whose σ comes from one uniform draw on a MockNet; returns (net, y, out, u, noise)
    with u and the noise redrawn from the same seeds, in the documented order."""
    y = _images(c=channels)
    net = MockNet()
    out = loss_fn(net, y, rng=BatchRNG(SEEDS))
    ref = BatchRNG(SEEDS)
    u = ref.rand().double().numpy()
    noise = ref.randn(*y.shape[1:])
    return net, y, out, u, noise


def test_ve_loss_formula():
    net, y, out, u, noise = _run_uniform_loss(loss_mod.VELoss(), channels=1)
    sigma = 0.02 * (100 / 0.02) ** u
    np.testing.assert_allclose(net.calls[0]['sigma'].double().flatten().numpy(), sigma, rtol=1e-5)
    _check_loss_value(out, y, sigma, noise, lambda s: 1 / s ** 2)


def _vp_t(sigma, beta_d=19.9, beta_min=0.1):
    return (np.sqrt(beta_min ** 2 + 2 * beta_d * np.log1p(sigma ** 2)) - beta_min) / beta_d


def test_vp_loss_formula():
    net, y, out, u, noise = _run_uniform_loss(loss_mod.VPLoss(), channels=4)
    sigma = net.calls[0]['sigma'].double().flatten().numpy()
    # t(σ) is uniform on [ε_t, 1] through u, in either orientation.
    eps = 1e-5
    t = _vp_t(sigma)
    candidates = [eps + u * (1 - eps), 1 - u * (1 - eps)]
    assert any(np.allclose(t, c, rtol=0, atol=2e-5) for c in candidates), (t, candidates)
    np.testing.assert_allclose(sigma, np.sqrt(np.exp(0.5 * 19.9 * t ** 2 + 0.1 * t) - 1), rtol=1e-4)
    _check_loss_value(out, y, sigma, noise, lambda s: 1 / s ** 2)


def test_weights():
    s = torch.tensor([0.002, 0.1, 0.5, 1.0, 7.0, 80.0], dtype=torch.float64)
    np.testing.assert_allclose(loss_mod.EDMLoss().weight(s).numpy(), _edm_weight(s.numpy()), rtol=1e-12)
    assert float(loss_mod.EDMLoss().weight(torch.tensor(0.5, dtype=torch.float64))) == pytest.approx(8.0)
    np.testing.assert_allclose(loss_mod.EDMLoss(sigma_data=1.0).weight(s).numpy(), _edm_weight(s.numpy(), 1.0), rtol=1e-12)
    np.testing.assert_allclose(loss_mod.VPLoss().weight(s).numpy(), 1 / s.numpy() ** 2, rtol=1e-12)
    np.testing.assert_allclose(loss_mod.VELoss().weight(s).numpy(), 1 / s.numpy() ** 2, rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# σ distributions.

def test_edm_sigma_distribution():
    for P_mean, P_std in [(-1.2, 1.2), (0.5, 0.3)]:
        loss_fn = loss_mod.EDMLoss(P_mean=P_mean, P_std=P_std)
        torch.manual_seed(0)
        n = 100_000
        log_sigma = loss_fn.sample_sigma(n, None, torch.device('cpu')).log().double().flatten()
        assert log_sigma.shape == (n,)
        assert abs(float(log_sigma.mean()) - P_mean) < 4 * P_std / math.sqrt(n)
        assert abs(float(log_sigma.std()) - P_std) < 4 * P_std / math.sqrt(2 * n)
        # The BatchRNG path draws from the same distribution.
        log_sigma = loss_fn.sample_sigma(None, BatchRNG(range(50), rows_per_seed=1000), torch.device('cpu')).log().double().flatten()
        assert log_sigma.shape == (50_000,)
        assert abs(float(log_sigma.mean()) - P_mean) < 4 * P_std / math.sqrt(50_000)
        assert abs(float(log_sigma.std()) - P_std) < 4 * P_std / math.sqrt(100_000)


def _ks_uniform(samples):
    """Kolmogorov-Smirnov distance of samples in [0, 1] from U(0, 1)."""
    x = np.sort(samples)
    n = len(x)
    return max(np.max(np.arange(1, n + 1) / n - x), np.max(x - np.arange(n) / n))


def test_vp_sigma_distribution():
    torch.manual_seed(1)
    n, eps = 50_000, 1e-5
    sigma = loss_mod.VPLoss().sample_sigma(n, None, torch.device('cpu')).double().flatten().numpy()
    t = _vp_t(sigma)
    assert t.min() >= eps * (1 - 1e-3) and t.max() <= 1 + 1e-6
    assert t.min() < eps + 1e-3 and t.max() > 1 - 1e-3
    # KS critical value at α = 1e-4 is ≈ 2.0 / √n.
    assert _ks_uniform((t - eps) / (1 - eps)) < 2.0 / math.sqrt(n)
    assert sigma.min() == pytest.approx(math.sqrt(math.exp(0.5 * 19.9 * eps ** 2 + 0.1 * eps) - 1), rel=0.5)


def test_ve_sigma_distribution():
    torch.manual_seed(2)
    n = 50_000
    sigma = loss_mod.VELoss().sample_sigma(n, None, torch.device('cpu')).double().flatten().numpy()
    assert sigma.min() >= 0.02 * (1 - 1e-6) and sigma.max() <= 100 * (1 + 1e-6)
    u = np.log(sigma / 0.02) / np.log(100 / 0.02)
    assert u.min() < 1e-3 and u.max() > 1 - 1e-3
    assert _ks_uniform(u) < 2.0 / math.sqrt(n)


# ----------------------------------------------------------------------------------------------
# Patches and augmentation.

@pytest.mark.parametrize('loss_cls', [loss_mod.EDMLoss, loss_mod.VPLoss, loss_mod.VELoss])
def test_patch_loss_crops_images_and_passes_coords(loss_cls):
    resolution, size = 16, 4
    images = _images(r=resolution, seed=3)
    net = MockNet()
    out = loss_cls()(net, images, patch_size=size, rng=BatchRNG(SEEDS))
    assert out.shape == (len(SEEDS), 3, size, size)
    call, = net.calls
    coords = call['coords']
    assert coords.shape == (len(SEEDS), 2, size, size)
    ref = BatchRNG(SEEDS)
    offsets = ref.randint(0, resolution - size + 1, 2)
    ref.rand() if loss_cls is not loss_mod.EDMLoss else ref.randn()
    noise = ref.randn(3, size, size)
    sigma = call['sigma'].double().flatten()
    y = call['x'].double() - sigma.reshape(-1, 1, 1, 1) * noise.double()
    crops = []
    for i in range(len(SEEDS)):
        row = int(round((float(coords[i, 1, 0, 0]) + 1) * (resolution - 1) / 2))
        col = int(round((float(coords[i, 0, 0, 0]) + 1) * (resolution - 1) / 2))
        assert torch.equal(coords[i], patch.coord_grid(resolution, size, y_start=row, x_start=col))
        crops.append(images[i, :, row:row + size, col:col + size])
        torch.testing.assert_close(y[i], crops[i].double(), rtol=0, atol=1e-4 * max(1.0, float(sigma[i])))
        assert sorted([row, col]) == sorted(offsets[i].tolist())  # the drawn offsets (axis order is the module's)
    weight = loss_cls().weight
    _check_loss_value(out, torch.stack(crops), sigma.numpy(), noise, lambda s: weight(torch.tensor(s)).numpy())


def test_loss_of_an_image_depends_only_on_its_seed():
    images = _images(r=16, seed=4)
    loss_fn = loss_mod.EDMLoss()
    full = loss_fn(MockNet(), images, patch_size=8, rng=BatchRNG(SEEDS))
    part = loss_fn(MockNet(), images[2:5], patch_size=8, rng=BatchRNG(SEEDS[2:5]))
    torch.testing.assert_close(full[2:5], part, rtol=1e-6, atol=0)


def test_augmentation_applies_to_full_image_before_cropping():
    """Fix 4: the patch is a crop of the augmented full image at its coordinates."""
    augment = pytest.importorskip('training.augment')
    pipe = augment.AugmentPipe(p=1, xflip=1e8, yflip=1e8, rotate_int=1e8, translate_int=1e8)
    resolution, size = 16, 8
    images = torch.rand(len(SEEDS), 3, resolution, resolution, generator=torch.Generator().manual_seed(5)) * 2 - 1
    net = MockNet()
    loss_mod.EDMLoss()(net, images, augment_pipe=pipe, patch_size=size, rng=BatchRNG(SEEDS))
    call, = net.calls

    ref = BatchRNG(SEEDS)
    augmented, aug_labels = pipe(images, rng=ref)
    ref.randint(0, resolution - size + 1, 2)
    sigma = np.exp(ref.randn().double().numpy() * 1.2 - 1.2)
    noise = ref.randn(3, size, size)
    np.testing.assert_allclose(call['sigma'].double().flatten().numpy(), sigma, rtol=1e-5)
    torch.testing.assert_close(call['augment_labels'], aug_labels)
    assert aug_labels.shape == (len(SEEDS), pipe.label_dim) and aug_labels.abs().sum() > 0
    y = call['x'].double() - torch.tensor(sigma).reshape(-1, 1, 1, 1) * noise.double()
    changed = 0
    for i in range(len(SEEDS)):
        row = int(round((float(call['coords'][i, 1, 0, 0]) + 1) * (resolution - 1) / 2))
        col = int(round((float(call['coords'][i, 0, 0, 0]) + 1) * (resolution - 1) / 2))
        torch.testing.assert_close(y[i], augmented[i, :, row:row + size, col:col + size].double(), rtol=0, atol=1e-4 * max(1, sigma[i]))
        changed += not torch.allclose(y[i], images[i, :, row:row + size, col:col + size].double(), atol=1e-3)
    assert changed > 0


def test_loss_with_real_network_covers_image_channels_only():
    net = make_tiny_net('ddpmpp', resolution=16, channels=3, use_coords=True, label_dim=2)
    images = _images(n=4, r=16, seed=6)
    out = loss_mod.EDMLoss()(net, images, torch.eye(2)[[0, 1, 0, 1]], patch_size=8, rng=BatchRNG(range(4)))
    assert out.shape == (4, 3, 8, 8)
    assert torch.isfinite(out).all() and (out >= 0).all()
    out.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_loss_without_rng_uses_global_generator():
    images = _images(r=8)
    torch.manual_seed(9)
    a = loss_mod.VELoss()(MockNet(), images, patch_size=4)
    torch.manual_seed(9)
    b = loss_mod.VELoss()(MockNet(), images, patch_size=4)
    assert torch.equal(a, b)
    c = loss_mod.VELoss()(MockNet(), images, patch_size=4)
    assert not torch.equal(a, c)


@pytest.mark.parametrize('patch_size', [4, 8, 16, None])
def test_loss_norms_against_an_independent_reduction(patch_size):
    """The loop backpropagates sum · weight / (patches in the step): 'sum' is the per-image pixel
    sum averaged over the patches, 'mean' the per-pixel mean times the pixels of a 16x16 image."""
    resolution, channels = 16, 3
    side = patch_size or resolution
    loss = torch.rand(2 * resolution // side, channels, side, side, dtype=torch.float64)
    count = loss.shape[0]
    for norm, expected in (('sum', loss.sum(dim=(1, 2, 3)).mean()), ('mean', loss.mean() * channels * resolution ** 2)):
        schedule = patch.PatchSchedule(resolution, [4, 8, 16], loss_norm=norm)
        reduced = loss.sum() * schedule.loss_weight(side) / count
        torch.testing.assert_close(reduced, expected)
