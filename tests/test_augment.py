"""Tests of training/augment.py: label layout, identity at p=0, determinism, and the geometric
and colour conventions (flip, translation, rotation direction, colour ops on grey/latents)."""

import math
import pickle

import pytest
import torch

from torch_utils.misc import BatchRNG
from training.augment import AugmentPipe

EDM_CONFIG = dict(p=0.12, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
COLOR_OPS = dict(brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
ALL_OPS = dict(xflip=1, yflip=1, rotate_int=1, translate_int=1, scale=1, rotate_frac=1, aniso=1,
               translate_frac=1, **COLOR_OPS)


class FixedRNG:
    """Stands in for BatchRNG: returns the given U and Z and records the draw order."""

    def __init__(self, uni, nrm):
        self.uni, self.nrm = uni, nrm
        self.num_rows = uni.shape[0]
        self.calls = []

    def rand(self, *shape):
        self.calls.append(('rand', shape))
        return self.uni

    def randn(self, *shape):
        self.calls.append(('randn', shape))
        return self.nrm


def fixed(n, uni=None, nrm=None):
    """FixedRNG with all gates open (U = 0) unless columns are overridden: {col: value}."""
    u = torch.zeros(n, 23)
    z = torch.zeros(n, 7)
    for col, val in (uni or {}).items():
        u[:, col] = val
    for col, val in (nrm or {}).items():
        z[:, col] = val
    return FixedRNG(u, z)


def images(n=4, c=3, side=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, side, side, generator=gen) * 2 - 1


def smooth_images(n=2, c=3, side=32):
    """Low-frequency pattern without symmetry, so bilinear resampling is nearly exact."""
    ys, xs = torch.meshgrid(torch.arange(side, dtype=torch.float32), torch.arange(side, dtype=torch.float32), indexing='ij')
    base = torch.stack([torch.sin(xs / 5 + k) * torch.cos(ys / 7 - k) + 0.1 * xs / side for k in range(c)])
    return base.unsqueeze(0).repeat(n, 1, 1, 1) * 0.8


def test_label_dim():
    assert AugmentPipe(**EDM_CONFIG).label_dim == 9
    assert AugmentPipe().label_dim == 0
    assert AugmentPipe(**ALL_OPS).label_dim == 9 + 2 + 2 + 1 + 1 + 1 + 2 + 1


def test_p_zero_is_identity():
    x = images(6)
    pipe = AugmentPipe(**{**EDM_CONFIG, **COLOR_OPS, 'p': 0})
    y, labels = pipe(x, BatchRNG(range(6)))
    assert torch.equal(y, x)
    assert labels.shape == (6, pipe.label_dim) and labels.dtype == torch.float32
    assert not labels.any()
    y, labels = pipe(x)
    assert torch.equal(y, x) and not labels.any()


def test_draw_order_is_fixed():
    for config in (EDM_CONFIG, ALL_OPS, {}):
        rng = fixed(3)
        AugmentPipe(**config)(images(3), rng)
        assert rng.calls == [('rand', (23,)), ('randn', (7,))]


def test_determinism_and_row_independence():
    pipe = AugmentPipe(p=1, **ALL_OPS)
    x = images(3)
    y1, l1 = pipe(x, BatchRNG([5, 6, 7]))
    y2, l2 = pipe(x, BatchRNG([5, 6, 7]))
    assert torch.equal(y1, y2) and torch.equal(l1, l2)
    # Row 1 keeps its seed and its image; its neighbours change.
    x_other = images(3, seed=1)
    x_other[1] = x[1]
    y3, l3 = pipe(x_other, BatchRNG([9, 6, 8]))
    assert torch.equal(y3[1], y1[1]) and torch.equal(l3[1], l1[1])
    assert not torch.equal(l3[0], l1[0])


def test_global_rng_determinism():
    pipe = AugmentPipe(**{**EDM_CONFIG, 'p': 1})
    x = images(4)
    torch.manual_seed(3)
    y1, l1 = pipe(x)
    torch.manual_seed(3)
    y2, l2 = pipe(x)
    assert torch.equal(y1, y2) and torch.equal(l1, l2)


def test_xflip_mirrors_exactly():
    pipe = AugmentPipe(p=1, xflip=1e8)
    x = images(64)
    y, labels = pipe(x, BatchRNG(range(64)))
    assert labels.shape == (64, 1)
    flipped = labels[:, 0] == 1
    assert set(labels[:, 0].tolist()) <= {0.0, 1.0}
    assert 0 < int(flipped.sum()) < 64
    assert torch.equal(y[flipped], x[flipped].flip(3))
    assert torch.equal(y[~flipped], x[~flipped])


def test_yflip_and_forced_flags():
    x = images(2)
    y, labels = AugmentPipe(p=1, xflip=1, yflip=1)(x, fixed(2))  # bits 0 < 0.5: both flip
    assert torch.equal(y, x.flip(2).flip(3))
    assert torch.equal(labels, torch.ones(2, 2))


def test_translate_frac_integer_pixels():
    side = 32
    x = images(2, side=side)
    # tx = 0.75 · 0.125 = 3/32 → 3 pixels right; ty = −0.5 · 0.125 = −2/32 → 2 pixels up.
    pipe = AugmentPipe(p=1, translate_frac=1)
    y, labels = pipe(x, fixed(2, nrm={2: 0.75, 3: -0.5}))
    assert torch.allclose(labels, torch.tensor([[3 / 32, -2 / 32]] * 2))
    assert torch.equal(y[:, :, 0:side - 2, 3:], x[:, :, 2:, :side - 3])


def test_translate_frac_half_pixel_is_bilinear():
    x = images(2)
    # tx = 0.125 · 0.125 = 0.5/32: each output pixel averages two horizontal neighbours.
    y, _ = AugmentPipe(p=1, translate_frac=1)(x, fixed(2, nrm={2: 0.125}))
    expected = (x[..., :-1] + x[..., 1:]) / 2
    assert torch.allclose(y[..., 1:], expected, atol=1e-5)


def test_translate_int_reflects_at_border():
    x = images(2, side=16)
    # u = 1 − 1/16 → t = (2u − 1)·0.125 → 1.75 → rounds to 2 pixels right.
    y, labels = AugmentPipe(p=1, translate_int=1)(x, fixed(2, uni={7: 15 / 16, 8: 0.5}))
    assert torch.allclose(labels, torch.tensor([[2 / 16, 0.0]] * 2))
    assert torch.equal(y[..., 2:], x[..., :-2])
    assert torch.equal(y[..., 0], x[..., 1]) and torch.equal(y[..., 1], x[..., 0])


def test_rotate_frac_quarter_turn_is_rot90():
    x = images(2)
    # θ = (2·0.75 − 1)·π = π/2: counter-clockwise on screen, like torch.rot90(x, 1, (2, 3)).
    y, labels = AugmentPipe(p=1, rotate_frac=1)(x, fixed(2, uni={11: 0.75}))
    assert torch.allclose(labels, torch.tensor([[-1.0, 1.0]] * 2), atol=1e-6)
    assert torch.allclose(y, torch.rot90(x, 1, dims=(2, 3)), atol=1e-6)


def test_rotate_frac_bilinear_matches_rot90_direction():
    x = smooth_images()
    angle = math.pi / 2 + 2e-3  # off the exact path, through grid_sample
    u = (angle / math.pi + 1) / 2
    y, _ = AugmentPipe(p=1, rotate_frac=1)(x, fixed(2, uni={11: u}))
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))
    assert torch.allclose(y[inner], torch.rot90(x, 1, dims=(2, 3))[inner], atol=0.05)


def test_rotate_int_and_scale():
    x = images(2)
    y, labels = AugmentPipe(p=1, rotate_int=1)(x, fixed(2, uni={5: 0.6}))  # k = 2
    assert torch.equal(y, torch.rot90(x, 2, dims=(2, 3)))
    assert torch.equal(labels, torch.tensor([[-2.0, 0.0]] * 2))
    s = smooth_images()
    y, labels = AugmentPipe(p=1, scale=1)(s, fixed(2, nrm={0: 5.0}))  # scale 2: magnifies
    assert torch.allclose(labels, torch.ones(2, 1))
    centre = s[:, :, 8:24, 8:24]
    magnified = torch.nn.functional.interpolate(centre, scale_factor=2, mode='bilinear', align_corners=False)
    assert torch.allclose(y[..., 4:-4, 4:-4], magnified[..., 4:-4, 4:-4], atol=0.02)


def test_edm_label_layout():
    x = images(2)
    nrm = {0: 1.0, 1: 0.5, 2: 0.2, 3: -0.4}
    rng = fixed(2, uni={1: 0.9, 3: 0.1, 11: 0.25, 13: 0.75}, nrm=nrm)  # no xflip, yflip
    _, labels = AugmentPipe(**{**EDM_CONFIG, 'p': 1})(x, rng)
    w = 0.5 * 0.2
    phi = (2 * 0.75 - 1) * math.pi  # axis rotated: column 14 is 0 < aniso_rotate_prob
    expected = [0, 1, 0.2, math.cos(-math.pi / 2) - 1, math.sin(-math.pi / 2),
                w * math.cos(phi), w * math.sin(phi), 0.2 * 0.125, -0.4 * 0.125]
    assert torch.allclose(labels, torch.tensor([expected] * 2), atol=1e-6)


def test_gates_leave_neutral_labels():
    x = images(2)
    rng = fixed(2, uni={col: 0.99 for col in range(23)}, nrm={col: 1.0 for col in range(7)})
    pipe = AugmentPipe(p=0.5, **ALL_OPS)
    y, labels = pipe(x, rng)
    assert torch.equal(y, x) and not labels.any()


@pytest.mark.parametrize('channels', [1, 4])
def test_color_ops_skip_grey_and_latents(channels):
    x = images(3, c=channels)
    pipe = AugmentPipe(p=1, **COLOR_OPS)
    y, labels = pipe(x, fixed(3, nrm={4: 1.0, 5: 1.0, 6: 1.0}, uni={21: 0.8}))
    assert torch.equal(y, x)
    assert labels.shape == (3, pipe.label_dim) and not labels.any()


def test_color_ops_rgb():
    x = images(3)
    pipe = AugmentPipe(p=1, **COLOR_OPS)
    y, labels = pipe(x, BatchRNG([1, 2, 3]))
    assert y.shape == x.shape and torch.isfinite(y).all() and labels.shape == (3, 6)
    # Brightness adds b = 1 · 0.2.
    y, labels = AugmentPipe(p=1, brightness=1)(x, fixed(3, nrm={4: 1.0}))
    assert torch.allclose(y, x + 0.2, atol=1e-6) and torch.allclose(labels, torch.full((3, 1), 0.2))
    # Contrast keeps each channel's mean and scales deviations by 2^(2 · 0.5) = 2.
    y, _ = AugmentPipe(p=1, contrast=1)(x, fixed(3, nrm={5: 2.0}))
    mean = x.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(y, mean + 2 * (x - mean), atol=1e-5)
    # Lumaflip turns grey g into −g; hue and saturation keep grey pixels grey.
    grey = images(3, c=1).repeat(1, 3, 1, 1)
    y, _ = AugmentPipe(p=1, lumaflip=1)(grey, fixed(3))
    assert torch.allclose(y, -grey, atol=1e-6)
    y, _ = AugmentPipe(p=1, hue=1, saturation=1)(grey, fixed(3, uni={21: 0.8}, nrm={6: 1.0}))
    assert torch.allclose(y, grey, atol=1e-5)
    # Hue by 2π/3 about the grey axis permutes pure primaries.
    red = torch.tensor([1.0, -1.0, -1.0]).reshape(1, 3, 1, 1).expand(1, 3, 4, 4)
    y, _ = AugmentPipe(p=1, hue=1)(red, fixed(1, uni={21: (2 / 3 + 1) / 2}))
    assert torch.allclose(y.abs(), torch.ones_like(y), atol=1e-5) and (y[:, :, 0, 0] > 0).sum() == 1


@pytest.mark.parametrize('channels', [1, 3, 4])
@pytest.mark.parametrize('side', [16, 24, 32])
def test_shapes_and_finite(channels, side):
    pipe = AugmentPipe(p=1, **ALL_OPS)
    x = images(5, c=channels, side=side)
    y, labels = pipe(x, BatchRNG(range(5)))
    assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
    assert labels.shape == (5, pipe.label_dim) and torch.isfinite(labels).all()


def test_pickle_round_trip():
    pipe = AugmentPipe(**EDM_CONFIG)
    clone = pickle.loads(pickle.dumps(pipe))
    assert clone.label_dim == 9 and clone.init_kwargs == EDM_CONFIG
    x = images(4)
    y1, l1 = pipe(x, BatchRNG(range(4)))
    y2, l2 = clone(x, BatchRNG(range(4)))
    assert torch.equal(y1, y2) and torch.equal(l1, l2)
