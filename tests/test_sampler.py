"""training/sampler.py: time steps, the Heun update, call counts, per-seed determinism,
coordinate canvases, classifier-free guidance, the ablation sampler and the PNG writers."""

import math

import numpy as np
import PIL.Image
import pytest
import torch

from dnnlib.util import FieldError, UserError
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
    with pytest.raises(FieldError, match='^canvas.image_size: '):
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
    with pytest.raises(FieldError, match='^cfg_scale: '):
        sampler.sample_images(rgb_net, [0], num_steps=1, cfg_scale=2.0)
    with pytest.raises(FieldError, match='^cfg_scale: '):
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

# ----------------------------------------------------------------------------------------------
# Solvers on a σ schedule, against the exact solution for Gaussian data.

DATA_STD = 0.5


def gaussian_denoiser(x, sigma):
    """The exact denoiser of data ~ N(0, s²): D(x; σ) = x·s²/(s² + σ²)."""
    return x * DATA_STD ** 2 / (DATA_STD ** 2 + sigma ** 2)


def exact_flow(x, sigma_from, sigma_to):
    """The probability-flow ODE's solution for that data: x·√((s² + σ_to²)/(s² + σ_from²))."""
    return x * math.sqrt((DATA_STD ** 2 + sigma_to ** 2) / (DATA_STD ** 2 + sigma_from ** 2))


def solver_error(name, num_steps):
    """Largest final error of a solver on EDM's ρ = 7 steps from σ = 80. Every solver's last step
    is x_N = D(x; σ_{N−1}), so the reference is D of the exact solution at σ_{N−1}."""
    x0 = torch.linspace(-3, 3, 7, dtype=torch.float64) * 80
    sigmas = sampler.edm_sigma_steps(num_steps, 0.002, 80, 7).tolist() + [0.0]
    out = sampler.SOLVERS[name](gaussian_denoiser, x0.clone(), sigmas)
    reference = gaussian_denoiser(exact_flow(x0, sigmas[0], sigmas[-2]), sigmas[-2])
    return (out - reference).abs().max().item()


@pytest.mark.parametrize('name,low,high', [('euler', 1.7, 2.3), ('heun', 3.5, 5), ('dpmpp-2m', 3.5, 5),
                                           ('dpmpp-3m', 7, 11)])
def test_solver_error_falls_at_its_order(name, low, high):
    """Doubling the steps divides the error by ~2^order: 2 (Euler), 4 (Heun, 2M), 8 (3M)."""
    errors = [solver_error(name, n) for n in (32, 64, 128)]
    ratios = [a / b for a, b in zip(errors, errors[1:])]
    assert all(low < r < high for r in ratios), (errors, ratios)
    assert errors[-1] < 0.05


class TorchRNG:
    """`randn_like` from one seeded generator, for many samples at once."""

    def __init__(self, seed):
        self.generator = torch.Generator().manual_seed(seed)

    def randn_like(self, x):
        return torch.randn(x.shape, generator=self.generator, dtype=x.dtype)


def test_euler_ancestral_reaches_the_data_distribution():
    """A stochastic solver has no exact path to follow; its samples' variance must approach s²
    (first order: the gap halves as the steps double)."""
    gaps = []
    for n in (32, 64, 128):
        z = torch.randn(50_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        sigmas = sampler.edm_sigma_steps(n, 0.002, 80, 7).tolist() + [0.0]
        out = sampler.euler_ancestral(gaussian_denoiser, z * math.sqrt(DATA_STD ** 2 + 80 ** 2), sigmas, rng=TorchRNG(2))
        gaps.append(1 - out.var().item() / DATA_STD ** 2)
    assert all(1.6 < a / b < 2.5 for a, b in zip(gaps, gaps[1:])), gaps
    assert 0 < gaps[-1] < 0.1


def test_dpmpp_2m_steps_by_hand():
    """Three steps of the published update: first order, then the extrapolated D', then x_N = D."""
    sigmas = [4.0, 1.0, 0.25, 0.0]
    x0 = torch.tensor([1.5, -2.0], dtype=torch.float64)
    out = sampler.dpmpp_2m(gaussian_denoiser, x0.clone(), sigmas)
    d0 = gaussian_denoiser(x0, 4.0)
    x1 = (1 / 4) * x0 + (1 - 1 / 4) * d0
    d1 = gaussian_denoiser(x1, 1.0)
    r = math.log(4.0) / math.log(4.0)
    x2 = 0.25 * x1 + 0.75 * ((1 + 1 / (2 * r)) * d1 - 1 / (2 * r) * d0)
    assert torch.allclose(out, gaussian_denoiser(x2, 0.25), rtol=1e-14, atol=0)


@pytest.mark.parametrize('solver', list(sampler.SOLVERS))
def test_solver_sampler_calls_and_noise_levels(solver):
    net = MockNet()
    out = sampler.solver_sampler(net, torch.randn(2, 1, 4, 4), solver=solver, num_steps=5, rng=OnesRNG())
    assert torch.isfinite(out).all() and out.dtype == torch.float64
    assert len(net.calls) == sampler.network_calls(solver, 5)
    steps = sampler.edm_sigma_steps(5, 0.002, 80, 7).tolist()
    assert sorted({round(c, 9) for c in net.calls}) == sorted(round(s, 9) for s in steps)


@pytest.mark.parametrize('solver', ['euler', 'heun'])
@pytest.mark.parametrize('disc', ['edm', 'vp', 've', 'iddpm'])
def test_composable_euler_heun_equal_edms_generalised_sampler(solver, disc):
    """With σ(t) = t and no scaling, EDM's generalised sampler is the σ-space solver on its steps."""
    z = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = sampler.solver_sampler(MockNet(), z, solver=solver, num_steps=6, discretization=disc)
    edm = sampler.ablation_sampler(MockNet(), z, solver=solver, num_steps=6, discretization=disc)
    assert torch.allclose(ours, edm, rtol=1e-12, atol=1e-12)


def reference_edm_sampler(denoise, latents, sigmas):
    """EDM's Algorithm 2 without churn, operation for operation as `edm_sampler` computes it."""
    x_next = latents.to(torch.float64) * sigmas[0]
    for i, (t_cur, t_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        x_hat = x_next
        d_cur = (x_hat - denoise(x_hat, t_cur)) / t_cur
        x_next = x_hat + (t_next - t_cur) * d_cur
        if i < len(sigmas) - 2:
            d_prime = (x_next - denoise(x_next, t_next)) / t_next
            x_next = x_hat + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


def test_default_sampler_is_edm_and_bit_identical(rgb_net):
    """No solver options select `edm_sampler`, whose output on fixed seeds is exactly Algorithm 2's."""
    assert sampler.select_sampler(dict(num_steps=5)) is sampler.edm_sampler
    assert sampler.select_sampler(dict(solver='heun')) is sampler.ablation_sampler
    assert sampler.select_sampler(dict(solver='dpmpp-2m')) is sampler.solver_sampler
    rng, latents, _ = sampler.draw_batch_inputs(rgb_net, [0, 1, 2], sampler.default_canvas(rgb_net), 'cpu')
    coords = sampler.canvas_coords(rgb_net, sampler.default_canvas(rgb_net), 3, 'cpu')
    with torch.no_grad():
        ours = sampler.edm_sampler(rgb_net, latents, rng=rng, num_steps=4, coords=coords)
        ref = reference_edm_sampler(sampler.make_denoiser(rgb_net, coords=coords), latents,
                                    sampler.edm_time_steps(rgb_net, 4).tolist())
    assert torch.equal(ours, ref)


def test_new_solvers_refuse_edm_only_options():
    with pytest.raises(FieldError, match='S_churn'):
        sampler.solver_sampler(MockNet(), torch.randn(1, 1, 4, 4), solver='dpmpp-2m', S_churn=10)
    with pytest.raises(FieldError, match='schedule'):
        sampler.solver_sampler(MockNet(), torch.randn(1, 1, 4, 4), solver='dpmpp-3m', schedule='vp', scaling='vp')
    with pytest.raises(FieldError, match='solver'):
        sampler.solver_sampler(MockNet(), torch.randn(1, 1, 4, 4), solver='lms')

# ----------------------------------------------------------------------------------------------
# Autoguidance.


class ScaledMockNet(MockNet):
    """Closed-form denoiser x·a/(a + σ²), another 'model' of similar data."""

    def __init__(self, a):
        super().__init__()
        self.a = a

    def __call__(self, x, sigma, class_labels=None, coords=None):
        self.calls.append(float(sigma))
        return x * self.a / (self.a + float(sigma) ** 2)


def test_autoguidance_combines_two_denoisers_exactly():
    strong, weak, w = ScaledMockNet(0.25), ScaledMockNet(1.0), 2.5
    denoise = sampler.make_denoiser(strong, guide_net=weak, guidance=w)
    x = torch.linspace(-2, 2, 5, dtype=torch.float64).reshape(1, 1, 1, 5)
    for sigma in (0.1, 1.0, 7.0):
        d1, d0 = x.float().double() * 0.25 / (0.25 + sigma ** 2), x.float().double() * 1.0 / (1.0 + sigma ** 2)
        assert torch.allclose(denoise(x, sigma), w * d1 + (1 - w) * d0, rtol=1e-6, atol=1e-7)
    z = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    guided = sampler.solver_sampler(ScaledMockNet(0.25), z, solver='euler', num_steps=4, guide_net=ScaledMockNet(1.0),
                                    guidance=w)
    by_hand = sampler.euler(lambda x, s: w * x.float().double() * 0.25 / (0.25 + s * s)
                            + (1 - w) * x.float().double() / (1 + s * s), z * 80.0, sampler.solver_sigmas(MockNet(), 4))
    assert torch.allclose(guided, by_hand, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('solver', [None, 'dpmpp-2m'])
def test_autoguidance_with_itself_is_unguided(solver):
    net = tiny_net(label_dim=3)
    kwargs = dict(num_steps=3) if solver is None else dict(num_steps=3, solver=solver)
    plain = sampler.sample_images(net, [0, 1], batch_size=2, **kwargs)
    guided = sampler.sample_images(net, [0, 1], batch_size=2, guide_net=net, guidance=3.0, **kwargs)
    assert torch.equal(plain, guided)


def test_autoguidance_gives_both_networks_the_same_inputs():
    strong, weak = CallCounter(tiny_net(label_dim=3)), CallCounter(tiny_net(label_dim=3, seed=1))
    images = sampler.sample_images(strong, [0, 1], batch_size=2, num_steps=2, guide_net=weak, guidance=2.0,
                                   canvas=sampler.Canvas(16, 32, 0, 0))
    assert images.shape == (2, 3, 32, 32)
    assert len(strong.calls) == len(weak.calls) == 3
    for a, b in zip(strong.calls, weak.calls):
        assert torch.equal(a['coords'], b['coords']) and torch.equal(a['labels'], b['labels'])
    assert a['coords'].shape == (2, 2, 32, 32)


def test_autoguidance_refuses_incompatible_guides_and_cfg():
    net = tiny_net(label_dim=3)
    with pytest.raises(FieldError, match='guide_net.*label_dim'):
        sampler.sample_images(net, [0], num_steps=1, guide_net=tiny_net(), guidance=2.0)
    with pytest.raises(FieldError, match='guide_net.*img_channels'):
        sampler.sample_images(net, [0], num_steps=1, guide_net=tiny_net(img_channels=1, label_dim=3), guidance=2.0)
    with pytest.raises(FieldError, match='guide_net.*classifier-free'):
        sampler.sample_images(net, [0], num_steps=1, guide_net=net, guidance=2.0, cfg_scale=2.0)
    with pytest.raises(FieldError, match='guidance'):
        sampler.sample_images(net, [0], num_steps=1, guide_net=net)

# ----------------------------------------------------------------------------------------------
# bench/sample_speed.py's quality table.


def test_quality_table_rows_and_call_counts(tmp_path, monkeypatch, capsys):
    import pickle
    from conftest import load_bench
    bench = load_bench('sample_speed')
    assert [bench.steps_for_calls('heun', c) for c in (5, 10, 15, 20, 35)] == [3, 5, 8, 10, 18]
    assert [bench.steps_for_calls('dpmpp-2m', c) for c in (5, 35)] == [5, 35]

    proj = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))  # 8 features: a cheap Fréchet distance
    monkeypatch.setattr(bench.metrics, 'load_detector',
                        lambda device=None, bf16=False: lambda x: torch.nn.functional.adaptive_avg_pool2d(x.float(), 4).flatten(1) @ proj)
    monkeypatch.setattr(bench.metrics, 'load_stats', lambda path: (np.zeros(8), np.eye(8)))
    ref = tmp_path / 'ref.npz'
    snapshot = tmp_path / 'net.pkl'
    snapshot.write_bytes(pickle.dumps(dict(ema=tiny_net(img_channels=1))))
    bench.quality_table(str(snapshot), str(ref), 4, ['heun', 'dpmpp-2m'], [3, 6], None, str(snapshot), 2.0, False, 4,
                        torch.device('cpu'))
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.split()[:1] in (['heun'], ['dpmpp-2m'])]
    assert [(r[0], int(r[1]), int(r[2])) for r in rows] == [('heun', 3, 2), ('heun', 5, 3), ('dpmpp-2m', 3, 3),
                                                            ('dpmpp-2m', 6, 6)]
    assert all(math.isfinite(float(r[3])) for r in rows)


def test_quality_table_ode_error_is_zero_for_the_reference_itself(tmp_path, monkeypatch, capsys):
    import pickle
    from conftest import load_bench
    bench = load_bench('sample_speed')
    monkeypatch.setattr(bench, 'REFERENCE_STEPS', 4)
    snapshot = tmp_path / 'net.pkl'
    snapshot.write_bytes(pickle.dumps(dict(ema=tiny_net(img_channels=1))))
    bench.quality_table(str(snapshot), None, 3, ['heun', 'euler'], [7], None, None, 2.0, False, 3, torch.device('cpu'),
                        ode_error=True)
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.split()[:1] in (['heun'], ['euler'])}
    assert rows['heun'][1:3] == ['7', '4'] and float(rows['heun'][3]) == 0
    assert float(rows['euler'][3]) > 0.001
