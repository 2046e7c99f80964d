"""Networks and preconditioning (SPEC sections 3 and 9).

- Parameter counts of the seven reference configurations, exactly.
- Tiny versions of DDPM++, NCSN++ and ADM: output shape equals input shape for every resolution,
  channel count and coordinate option; patches run through a network built for the full side;
  forward + backward gives finite gradients.
- Preconditioning: c_skip, c_out, c_in, c_noise against float64 formulas, and
  D(x) = c_skip·x + c_out·F(c_in·x ⊕ coords; c_noise) with the inner network mocked.
"""

import gc
import math

import numpy as np
import pytest
import torch

from conftest import make_tiny_net
from torch_utils.misc import count_parameters
from training import networks, patch

# ----------------------------------------------------------------------------------------------
# Parameter counts (SPEC section 9).

DDPMPP = dict(model_type='SongUNet', embedding_type='positional', encoder_type='standard', decoder_type='standard',
              channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2])
NCSNPP = dict(DDPMPP, embedding_type='fourier', encoder_type='residual', channel_mult_noise=2,
              resample_filter=[1, 3, 3, 1])
ADM = dict(model_type='DhariwalUNet', model_channels=192, channel_mult=[1, 2, 3, 4])

PARAM_ROWS = [
    ('ddpmpp32', dict(img_resolution=32, img_channels=3, label_dim=0, augment_dim=9, **DDPMPP), 55_733_891),
    ('ddpmpp32-cond', dict(img_resolution=32, img_channels=3, label_dim=10, augment_dim=9, **DDPMPP), 55_735_299),
    ('ncsnpp32', dict(img_resolution=32, img_channels=3, label_dim=0, augment_dim=9, **NCSNPP), 56_397_827),
    ('ddpmpp64-celeba-patch', dict(img_resolution=64, img_channels=3, use_coords=True,
                                   **dict(DDPMPP, channel_mult=[1, 2, 2, 2])), 61_806_723),
    ('adm64', dict(img_resolution=64, img_channels=3, label_dim=1000, **ADM), 295_899_267),
    ('adm32-latent-patch', dict(img_resolution=32, img_channels=4, label_dim=1000, use_coords=True, **ADM), 280_399_108),
    ('ddpmpp32-bench-patch', dict(img_resolution=32, img_channels=3, use_coords=True,
                                  **dict(DDPMPP, model_channels=32, channel_mult=[1, 2, 2])), 2_741_923),
]


@pytest.mark.parametrize('name,kwargs,expected', PARAM_ROWS, ids=[r[0] for r in PARAM_ROWS])
def test_parameter_count_matches_edm(name, kwargs, expected):
    # Built on the meta device: identical parameter shapes, no time spent on random weights.
    with torch.device('meta'):
        net = networks.EDMPrecond(**kwargs)
    try:
        assert count_parameters(net) == expected
        # "5 → 3": the coordinate channels enter the first convolution only; C channels come out.
        convs = [m for m in net.model.modules() if isinstance(m, networks.Conv2d) and m.weight is not None]
        c = kwargs['img_channels']
        assert convs[0].in_channels == c + (2 if kwargs.get('use_coords') else 0)
        out_conv = net.model.out_conv if hasattr(net.model, 'out_conv') else convs[-1]
        assert out_conv.out_channels == c
    finally:
        del net
        gc.collect()


def test_parameter_count_on_cpu_equals_meta():
    """The meta-device counts above are the CPU counts (checked on the small bench network)."""
    kwargs = PARAM_ROWS[-1][1]
    net = networks.EDMPrecond(**kwargs)
    assert next(net.parameters()).device.type == 'cpu'
    assert count_parameters(net) == PARAM_ROWS[-1][2]


def test_coordinate_channels_only_change_the_first_convolution():
    """use_coords adds exactly 2 (or 4F) input channels to the first 3x3 conv and nothing else."""
    base = make_tiny_net('ddpmpp', resolution=16, channels=3)
    coords = make_tiny_net('ddpmpp', resolution=16, channels=3, use_coords=True)
    pe = make_tiny_net('ddpmpp', resolution=16, channels=3, use_coords=True, pos_embed=3)
    first_conv_out = 16
    assert count_parameters(coords) - count_parameters(base) == 2 * 9 * first_conv_out
    assert count_parameters(pe) - count_parameters(base) == 12 * 9 * first_conv_out


# ----------------------------------------------------------------------------------------------
# Shapes.

RESOLUTIONS = [16, 24, 32, 48, 64]
ARCHS = ['ddpmpp', 'ncsnpp', 'adm']
COORD_MODES = [dict(), dict(use_coords=True), dict(use_coords=True, pos_embed=2)]


def _inputs(net, n, channels, side, label_dim, augment_dim, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, side, side, generator=gen)
    sigma = torch.exp(torch.randn(n, generator=gen))
    labels = torch.nn.functional.one_hot(torch.arange(n) % label_dim, label_dim).float() if label_dim else None
    aug = torch.randn(n, augment_dim, generator=gen) if augment_dim else None
    return x, sigma, labels, aug


@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('resolution', RESOLUTIONS)
def test_output_shape_equals_input_all_resolutions(arch, resolution):
    """Every architecture at every side divisible by its down-sampling factor, cycling through
    channel counts and coordinate options, with class and augmentation labels."""
    i = RESOLUTIONS.index(resolution) + ARCHS.index(arch)
    channels = [1, 3, 4][i % 3]
    coord_mode = COORD_MODES[i % 3]
    net = make_tiny_net(arch, resolution=resolution, channels=channels, label_dim=5, augment_dim=9, **coord_mode).eval()
    assert resolution % net.down_factor == 0
    x, sigma, labels, aug = _inputs(net, 2, channels, resolution, 5, 9)
    with torch.no_grad():
        out = net(x, sigma, labels, augment_labels=aug)
    assert out.shape == x.shape
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    if coord_mode:
        # Patches of side R/2 and R/4 (where the down-sampling allows) through the same network.
        images = torch.randn(2, channels, resolution, resolution, generator=torch.Generator().manual_seed(7))
        for side in (resolution // 2, resolution // 4):
            if side % net.down_factor:
                continue
            patches, coords = patch.extract_patches(images, side)
            with torch.no_grad():
                out = net(patches, sigma, labels, coords=coords, augment_labels=aug)
            assert out.shape == patches.shape and torch.isfinite(out).all()


@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('channels', [1, 3, 4])
@pytest.mark.parametrize('coord_mode', COORD_MODES, ids=['plain', 'coords', 'pos_embed2'])
def test_output_shape_channels_and_coords(arch, channels, coord_mode):
    net = make_tiny_net(arch, resolution=16, channels=channels, **coord_mode).eval()
    expected_extra = 0 if not coord_mode else 4 * coord_mode['pos_embed'] if 'pos_embed' in coord_mode else 2
    assert net.coord_channels == expected_extra
    first = net.model.enc['16x16_conv']
    assert first.in_channels == channels + expected_extra
    x, sigma, _, _ = _inputs(net, 3, channels, 16, 0, 0)
    with torch.no_grad():
        out = net(x, sigma)
    assert out.shape == x.shape


@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('pos_embed', [0, 3])
def test_patches_run_through_network_built_for_full_side(arch, pos_embed):
    resolution = 32
    net = make_tiny_net(arch, resolution=resolution, channels=3, use_coords=True, pos_embed=pos_embed,
                        label_dim=4, augment_dim=2).eval()
    images = torch.randn(2, 3, resolution, resolution, generator=torch.Generator().manual_seed(1))
    for side in (resolution // 2, resolution // 4):
        patches, coords = patch.extract_patches(images, side)
        _, sigma, labels, aug = _inputs(net, 2, 3, side, 4, 2)
        with torch.no_grad():
            out = net(patches, sigma, labels, coords=coords, augment_labels=aug)
        assert out.shape == patches.shape
        assert torch.isfinite(out).all()


@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('precond', ['edm', 'vp', 've'])
def test_forward_backward_finite_gradients(arch, precond):
    net = make_tiny_net(arch, precond=precond, resolution=16, channels=3, use_coords=True, label_dim=3,
                        augment_dim=4, dropout=0.1, label_dropout=0.2).train()
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    patches, coords = patch.extract_patches(images, 8)
    sigma = torch.tensor([0.05, 0.5, 5.0, 50.0])
    labels = torch.eye(3)[[0, 1, 2, 0]]
    aug = torch.randn(4, 4)
    out = net(patches, sigma, labels, coords=coords, augment_labels=aug)
    # A linear read-out: ADM's zero-initialised output layer makes a squared error's gradient
    # vanish at initialisation under VP (D = x exactly), which would prove nothing.
    loss = (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(5))).sum()
    loss.backward()
    assert torch.isfinite(loss)
    missing = [name for name, p in net.named_parameters() if p.grad is None]
    assert not missing, f'parameters without gradient: {missing}'
    for name, p in net.named_parameters():
        assert torch.isfinite(p.grad).all(), name
    assert sum(float(p.grad.abs().sum()) for p in net.parameters()) > 0


def test_conditional_network_treats_missing_labels_as_zero():
    net = make_tiny_net('ddpmpp', resolution=16, channels=1, label_dim=10).eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        out_none = net(x, 1.0)
        out_zero = net(x, 1.0, torch.zeros(2, 10))
        out_label = net(x, 1.0, torch.eye(10)[:2])
    assert torch.equal(out_none, out_zero)
    # DDPM++'s output convolution starts at 1e-5 scale, so the label's effect is small but present.
    assert (out_none - out_label).abs().max() > 0


# ----------------------------------------------------------------------------------------------
# Preconditioning coefficients against float64 formulas (SPEC section 3).

SIGMAS = np.array([0.002, 0.01, 0.1, 0.5, 1.0, 2.0, 10.0, 80.0], dtype=np.float64)
SD = 0.5


def _edm_ref(s):
    return (SD ** 2 / (s ** 2 + SD ** 2), s * SD / np.sqrt(s ** 2 + SD ** 2), 1 / np.sqrt(s ** 2 + SD ** 2), np.log(s) / 4)


def _vp_ref(s, beta_d=19.9, beta_min=0.1, M=1000):
    t = (np.sqrt(beta_min ** 2 + 2 * beta_d * np.log(1 + s ** 2)) - beta_min) / beta_d
    return (np.ones_like(s), -s, 1 / np.sqrt(s ** 2 + 1), (M - 1) * t)


def _ve_ref(s):
    return (np.ones_like(s), s, np.ones_like(s), np.log(s / 2))


@pytest.mark.parametrize('precond,ref', [('edm', _edm_ref), ('vp', _vp_ref), ('ve', _ve_ref)])
def test_coefficients_match_formulas(precond, ref):
    net = make_tiny_net('ddpmpp', precond=precond, resolution=16, channels=1)
    sigma = torch.tensor(SIGMAS, dtype=torch.float32).reshape(-1, 1, 1, 1)
    got = [c.double().flatten().numpy() for c in net.coefficients(sigma)]
    want = ref(SIGMAS)
    for name, g, w in zip(['c_skip', 'c_out', 'c_in', 'c_noise'], got, want):
        # VP's c_noise spans 0..999 and goes through ln(1 + σ²) in float32 (as in EDM), which
        # loses ~1% at σ = 0.002 where c_noise ≈ 0.04: compare it on its own scale.
        atol = 1e-3 if (precond, name) == ('vp', 'c_noise') else 1e-6
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=atol, err_msg=f'{precond} {name}')


def test_vp_sigma_and_inverse_match_formulas():
    net = make_tiny_net('ddpmpp', precond='vp', resolution=16, channels=1)
    t = np.array([1e-5, 1e-3, 0.1, 0.5, 1.0])
    sigma = np.sqrt(np.exp(0.5 * 19.9 * t ** 2 + 0.1 * t) - 1)
    np.testing.assert_allclose(net.sigma(torch.tensor(t)).double().numpy(), sigma, rtol=1e-6)
    np.testing.assert_allclose(net.sigma_inv(torch.tensor(sigma)).double().numpy(), t, rtol=1e-6)
    assert net.sigma_min == pytest.approx(sigma[0], rel=1e-6)
    assert net.sigma_max == pytest.approx(sigma[-1], rel=1e-6)


def _iddpm_levels(M=1000, C_1=0.001, C_2=0.008):
    """u_M = 0, u_{j-1} = √((u_j² + 1) / max(ᾱ_{j-1}/ᾱ_j, C_1) − 1), ᾱ_j = sin²(π/2 · j / (M(C_2 + 1)))."""
    alpha_bar = lambda j: math.sin(0.5 * math.pi * j / M / (C_2 + 1)) ** 2  # noqa: E731
    u = np.zeros(M + 1)
    for j in range(M, 0, -1):
        u[j - 1] = math.sqrt((u[j] ** 2 + 1) / max(alpha_bar(j - 1) / alpha_bar(j), C_1) - 1)
    return u


def test_iddpm_levels_and_noise_index():
    net = networks.iDDPMPrecond(img_resolution=8, img_channels=1, model_channels=32, channel_mult=[1, 2], num_blocks=1)
    u = _iddpm_levels()
    # The recurrence runs in float64 (training.schedules), the buffer holds it rounded to float32.
    np.testing.assert_allclose(net.u.double().numpy(), u, rtol=1e-7, atol=0)
    # σ a quarter and three quarters of the way between two levels: far from any tie.
    j = np.array([0, 1, 10, 500, 900, 998, 0, 1, 10, 500, 900, 998])
    frac = np.array([0.25] * 6 + [0.75] * 6)
    sigma = u[j] + frac * (u[j + 1] - u[j])
    c_skip, c_out, c_in, c_noise = net.coefficients(torch.tensor(sigma, dtype=torch.float32).reshape(-1, 1, 1, 1))
    nearest = np.abs(sigma[:, None] - u[None, :]).argmin(axis=1)
    np.testing.assert_array_equal(c_noise.flatten().numpy(), (1000 - 1 - nearest).astype(np.float32))
    np.testing.assert_allclose(c_out.flatten().double().numpy(), -sigma, rtol=1e-6)
    np.testing.assert_allclose(c_in.flatten().double().numpy(), 1 / np.sqrt(sigma ** 2 + 1), rtol=1e-6)
    assert torch.equal(c_skip, torch.ones_like(c_skip))
    # round_sigma snaps to the nearest level.
    np.testing.assert_allclose(net.round_sigma(torch.tensor(u[j] * 1.0001, dtype=torch.float32)).double().numpy(),
                               u[j], rtol=1e-3)


# ----------------------------------------------------------------------------------------------
# D(x) with the inner network mocked.

class CaptureModel(torch.nn.Module):
    """Stands in for the U-Net: records its inputs and returns sin of the image channels plus a
    term in the noise label, so that the output depends on both."""

    def __init__(self, channels, out_channels=None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.calls = []
        self.down_factor = 1

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        self.calls.append(dict(x=x.detach().clone(), noise_labels=noise_labels.detach().clone(),
                               class_labels=None if class_labels is None else class_labels.clone(),
                               augment_labels=augment_labels))
        out = torch.sin(x[:, :self.channels]) + 0.1 * noise_labels.reshape(-1, 1, 1, 1)
        return out.repeat(1, self.out_channels // self.channels, 1, 1)


def _coord_reference(resolution, rows, cols):
    """(2, len(rows), len(cols)) float64 coordinates from the spec formula; channel 0 = x (column)."""
    ys = (np.asarray(rows, dtype=np.float64) / (resolution - 1) - 0.5) * 2
    xs = (np.asarray(cols, dtype=np.float64) / (resolution - 1) - 0.5) * 2
    return np.stack([np.broadcast_to(xs[None, :], (len(rows), len(cols))),
                     np.broadcast_to(ys[:, None], (len(rows), len(cols)))])


@pytest.mark.parametrize('precond,ref', [('edm', _edm_ref), ('vp', _vp_ref), ('ve', _ve_ref)])
def test_denoiser_combines_inner_output_and_appends_unscaled_coords(precond, ref):
    channels, resolution, side = 3, 16, 8
    net = make_tiny_net('ddpmpp', precond=precond, resolution=resolution, channels=channels, use_coords=True, label_dim=4)
    net.model = CaptureModel(channels)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, channels, side, side, generator=gen)
    sigma64 = np.array([0.03, 1.3, 40.0])
    # Patches at known offsets (row, col): coordinates built from the spec formula.
    offsets = [(0, 0), (8, 3), (5, 8)]
    coords64 = np.stack([_coord_reference(resolution, range(r, r + side), range(c, c + side)) for r, c in offsets])
    coords = torch.tensor(coords64, dtype=torch.float32)
    labels = torch.eye(4)[[1, 2, 3]]
    aug = torch.randn(3, 5)
    out = net(x, torch.tensor(sigma64, dtype=torch.float32), labels, coords=coords, augment_labels=aug)

    c_skip, c_out, c_in, c_noise = [np.asarray(v).reshape(-1, 1, 1, 1) for v in ref(sigma64)]
    x64 = x.double().numpy()
    inner = np.sin(c_in * x64) + 0.1 * c_noise
    expected = c_skip * x64 + c_out * inner
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=1e-5, atol=1e-5 * np.abs(c_out).max())

    call, = net.model.calls
    assert call['x'].shape == (3, channels + 2, side, side)
    np.testing.assert_allclose(call['x'][:, :channels].double().numpy(), c_in * x64, rtol=1e-6, atol=1e-7)
    # Coordinates appended after scaling, unscaled: channel C is x (column), C+1 is y (row).
    np.testing.assert_allclose(call['x'][:, channels:].double().numpy(), coords64, rtol=0, atol=1e-6)
    assert torch.all(call['x'][1, channels, 0, :].diff() > 0) and torch.all(call['x'][1, channels, :, 0].diff() == 0)
    assert torch.all(call['x'][1, channels + 1, :, 0].diff() > 0) and torch.all(call['x'][1, channels + 1, 0, :].diff() == 0)
    np.testing.assert_allclose(call['noise_labels'].double().numpy(), c_noise.flatten(), rtol=1e-5, atol=1e-3)
    assert torch.equal(call['class_labels'], labels)
    assert call['augment_labels'] is aug


def test_denoiser_without_coords_uses_full_grid():
    """A coordinate network called without coords (sampling a full image) gets the full grid."""
    resolution = 12
    net = make_tiny_net('ddpmpp', resolution=resolution, channels=1, use_coords=True)
    net.model = CaptureModel(1)
    net(torch.zeros(2, 1, resolution, resolution), 1.0)
    inp = net.model.calls[0]['x']
    want = _coord_reference(resolution, range(resolution), range(resolution))
    for i in range(2):
        np.testing.assert_allclose(inp[i, 1:].double().numpy(), want, atol=1e-6)
    assert inp[0, 1, 0, 0] == -1 and inp[0, 1, 0, -1] == 1 and inp[0, 2, -1, 0] == 1


def test_denoiser_pos_embed_features_are_unscaled_and_consistent():
    net = make_tiny_net('ddpmpp', precond='edm', resolution=16, channels=2, use_coords=True, pos_embed=3)
    net.model = CaptureModel(2)
    coords = patch.coord_grid(16, 8, y_start=4, x_start=2).unsqueeze(0).expand(2, -1, -1, -1)
    net(torch.randn(2, 2, 8, 8), torch.tensor([0.1, 30.0]), coords=coords)
    inp = net.model.calls[0]['x']
    assert inp.shape[1] == 2 + 12
    feats = inp[:, 2:]
    # Identical for both samples although σ (hence c_in) differs a lot: not scaled.
    assert torch.equal(feats[0], feats[1])
    assert torch.equal(feats, patch.coord_features(coords, 3))
    assert feats.abs().max() <= 1


def test_network_without_coords_rejects_nothing_and_takes_plain_input():
    net = make_tiny_net('ddpmpp', resolution=16, channels=3)
    net.model = CaptureModel(3)
    x = torch.randn(1, 3, 16, 16)
    net(x, 2.0)
    assert net.model.calls[0]['x'].shape == (1, 3, 16, 16)


def test_iddpm_denoiser_uses_first_half_of_output():
    net = networks.iDDPMPrecond(img_resolution=8, img_channels=2, model_channels=32, channel_mult=[1, 2], num_blocks=1)
    assert net.model.out_conv.out_channels == 4
    net.model = CaptureModel(2, out_channels=4)
    x = torch.randn(2, 2, 8, 8)
    sigma = float(net.u[100])
    out = net(x, sigma)
    c_in = 1 / math.sqrt(sigma ** 2 + 1)
    expected = x.double() - sigma * (torch.sin(c_in * x.double()) + 0.1 * (999 - 100))
    np.testing.assert_allclose(out.double().numpy(), expected.numpy(), rtol=1e-5, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# Rectangles (issue 20).


@pytest.mark.parametrize('arch', ['ddpmpp', 'ncsnpp', 'adm'])
def test_rectangular_network(arch):
    """An (H, W) network names its levels HxW, keeps the shape and takes H x W coordinates; the
    int of a square network is unchanged."""
    torch.manual_seed(0)
    net = make_tiny_net(arch, resolution=(16, 32), channels=1, use_coords=True, attn_resolutions=[16])
    assert net.img_resolution == (16, 32) and any(k.startswith('16x32_') for k in net.model.enc.keys())
    assert net.model.enc['8x16_block0'].num_heads > 0  # attention where the longer side is 16
    x = torch.randn(2, 1, 16, 32)
    out = net(x, torch.full((2,), 1.0))
    assert out.shape == x.shape and torch.isfinite(out).all()
    coords = patch.coord_grid((16, 32), 16, 32).expand(2, -1, -1, -1)
    assert torch.equal(net(x, torch.full((2,), 1.0), coords=coords), out)
    assert make_tiny_net(arch, resolution=[16, 16], attn_resolutions=[8]).img_resolution == 16


def test_rectangular_network_needs_divisible_sides():
    with pytest.raises(Exception, match='not divisible by the network\'s down-sampling factor'):
        make_tiny_net('ddpmpp', resolution=(16, 21), attn_resolutions=[8])


@pytest.mark.parametrize('native', [True, False])
def test_bf16_body_on_cpu_only_where_the_cpu_computes_it(monkeypatch, native):
    """`use_bf16` runs the body in bf16 on CPUs with native bf16 (output close to fp32's, returned
    in fp32) and leaves it in fp32 elsewhere (output identical to the fp32 network's)."""
    from torch_utils import misc
    monkeypatch.setattr(misc, '_cpu_has_bf16', [native])
    torch.manual_seed(0)
    net32 = make_tiny_net(resolution=16, channels=1, use_coords=True)
    net16 = make_tiny_net(resolution=16, channels=1, use_coords=True, use_bf16=True)
    net16.load_state_dict(net32.state_dict())
    x = torch.randn(4, 1, 16, 16)
    sigma = torch.tensor([0.1, 1.0, 5.0, 40.0])
    with torch.no_grad():
        ref, out = net32(x, sigma), net16(x, sigma)
    assert net16.body_dtype(x) == (torch.bfloat16 if native else torch.float32)
    assert out.dtype == torch.float32
    if native:
        assert not torch.equal(out, ref)
        assert (out - ref).abs().max() <= 0.05 * ref.abs().max()
    else:
        assert torch.equal(out, ref)


@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('layout', [torch.contiguous_format, torch.channels_last], ids=['nchw', 'channels_last'])
def test_activations_stay_in_one_memory_layout_through_attention(arch, layout):
    """The body runs NCHW whatever the input's layout, and no operation of the forward or backward
    pass turns NCHW activations into channels-last ones. Attention's output once came back
    channels-last, and every later layer followed it: group norm's channels-last kernels are
    several times slower (the bench network's bf16 step, 1.15x)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    def channels_last(t):
        return (isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[2] * t.shape[3] > 1
                and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last))

    class LayoutWatch(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.changed = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if any(map(channels_last, tree_flatten(out)[0])) and not any(map(channels_last, tree_flatten((args, kwargs))[0])):
                self.changed.append(str(func))
            return out

    net = make_tiny_net(arch, resolution=16, channels=3, attn_resolutions=[16, 8]).train()
    norm_inputs = []
    for module in net.modules():
        if isinstance(module, networks.GroupNorm):
            module.register_forward_pre_hook(lambda _module, args: norm_inputs.append(args[0].is_contiguous()))
    x = torch.randn(4, 3, 16, 16).contiguous(memory_format=layout).requires_grad_(True)
    with LayoutWatch() as watch:
        net(x, torch.tensor([0.1, 1.0, 5.0, 40.0])).square().sum().backward()
    assert watch.changed == []
    assert norm_inputs and all(norm_inputs)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_dropout_keeps_1_minus_p_scales_to_the_same_mean_and_repeats_with_the_seed(dtype):
    p = 0.13
    x = torch.full([64, 32, 16, 16], 1.5, dtype=dtype, requires_grad=True)
    torch.manual_seed(5)
    out = networks.dropout(x, p, training=True)
    keep = round((1 - p) * 65536)
    kept = out != 0
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.equal(out[kept], torch.full_like(out[kept], 1.5 * 65536 / keep))  # the scale, exact in fp32 and bf16's rounding
    assert abs(kept.float().mean().item() - (1 - p)) < 4 * math.sqrt(p * (1 - p) / x.numel())
    assert abs(out.float().mean().item() / 1.5 - 1) < 4 * math.sqrt(p / (1 - p) / x.numel()) + (0.004 if dtype == torch.bfloat16 else 0)
    out.sum().backward()
    assert torch.equal(x.grad, out.detach() / 1.5)  # the gradient is the same mask and scale
    torch.manual_seed(5)
    assert torch.equal(networks.dropout(x, p, training=True), out)
    assert not torch.equal(networks.dropout(x, p, training=True), out)
    # every element's mask is independent: no correlation between the four elements of one draw
    masks = torch.stack([networks.dropout(torch.ones(4096), 0.5, True) != 0 for _ in range(16)]).float().reshape(-1, 4)
    corr = torch.corrcoef(masks.T)
    assert (corr - torch.eye(4)).abs().max() < 0.05
    assert networks.dropout(x, p, training=False) is x and networks.dropout(x, 0, training=True) is x


def test_compiled_dropout_draws_a_mask_per_call_and_backpropagates_through_it():
    """Under torch.compile the cheaper mask is still drawn per call (two layers with the same input
    get different masks: the draw is not merged), keeps 1 − p of the elements, and the backward
    pass multiplies by the mask of the forward pass, not a fresh one."""
    torch._dynamo.reset()

    def two_layers(x, w):
        hidden = torch.sin(x) * w
        return networks.dropout(hidden, 0.3, True), networks.dropout(hidden, 0.3, True)

    x = torch.randn(8, 16, 8, 8, requires_grad=True)
    w = torch.randn(1, 16, 1, 1)
    first, second = torch.compile(two_layers)(x, w)
    grad_out = torch.randn_like(first)
    (first * grad_out).sum().backward()
    kept = first != 0
    assert not torch.equal(kept, second != 0)
    assert abs(kept.float().mean().item() - 0.7) < 0.03
    scale = 65536 / round(0.7 * 65536)
    assert torch.allclose(x.grad, grad_out * kept * scale * torch.cos(x) * w, rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()


def test_network_with_dropout_traces_as_one_graph():
    """--compile=1 with dropout: the CPU's cheaper dropout mask must not break the graph (its draw
    is a custom operator, `misc.draw_keep_mask_`)."""
    torch._dynamo.reset()
    net = make_tiny_net(resolution=16, channels=1, dropout=0.2, use_coords=True).train()
    explained = torch._dynamo.explain(net)(torch.randn(2, 1, 16, 16), torch.rand(2) * 5)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    torch._dynamo.reset()


def test_group_norm_keeps_edm_groups_and_trains_any_width():
    """EDM's group counts for the widths of its configurations; narrow or odd widths (where EDM's
    count is zero or does not divide the channels) get the largest count that does, and the
    narrowest even widths train (a 2-channel noise embedding has one frequency)."""
    assert [networks.group_count(c, 32, 4) for c in (64, 128, 192, 256, 384, 576, 768)] == [16, 32, 32, 32, 32, 32, 32]
    assert [networks.group_count(c, 32, 4) for c in (2, 3, 6, 65, 130)] == [1, 1, 1, 13, 26]
    for cbase in (2, 6, 34):
        net = networks.SongUNet(img_resolution=8, in_channels=3, out_channels=3, model_channels=cbase, channel_mult=[1, 2],
                                num_blocks=1, attn_resolutions=[])
        x = torch.randn(2, 3, 8, 8)
        net(x, torch.ones(2), None).square().mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
