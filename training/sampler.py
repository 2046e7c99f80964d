"""Sampling shared by generate.py and the training loop: EDM's Heun sampler, its generalised
(ablation) sampler, and seeds → uint8 images. Each seed has its own generator for its latent,
label and churn noise, so an image depends only on its seed, not on the batch or the processes."""

import itertools
import math
from typing import NamedTuple

import torch

from dnnlib.util import FieldError
from torch_utils import distributed, misc
from training import encoders, patch, schedules

ABLATION_KEYS = ('solver', 'discretization', 'schedule', 'scaling')
MAX_SEED = 2**32 - 1  # seeds are 32-bit: larger ones would alias smaller ones
MAX_STEPS = 100_000  # noise levels of one sampling run: far beyond any use, while the schedule stays small

# ----------------------------------------------------------------------------------------------
# Shared pieces.


def state_dtype(device):
    """Sampler state precision: float64 as in EDM, float32 where the device has no float64 (MPS)."""
    return torch.float32 if torch.device(device).type == 'mps' else torch.float64


def make_denoiser(net, class_labels=None, coords=None, cfg_scale=None, guide_net=None, guidance=None):
    """D(x, σ) → denoised x in x's dtype; the network sees float32, only the sampler state is float64.
    With `cfg_scale` w it returns D_u + w·(D_c − D_u), both halves in one call of twice the batch.
    With `guide_net` (autoguidance) it returns D_1 + (w − 1)·(D_1 − D_0), i.e. w·D_1 + (1 − w)·D_0,
    where D_0 is the guide, given the same labels and coordinates, and w = `guidance`."""
    if guide_net is not None:
        return _autoguided_denoiser(net, guide_net, guidance, class_labels, coords, cfg_scale)
    if cfg_scale is None:
        def denoise(x, sigma):
            return net(x.to(torch.float32), sigma_like(sigma, x), class_labels, coords=coords).to(x.dtype)
        return denoise

    if net.label_dim == 0:
        raise FieldError('cfg_scale', 'classifier-free guidance needs a class-conditional network; this one is unconditional')
    if class_labels is None:
        raise ValueError('classifier-free guidance needs class labels for the conditional half')
    both_labels = torch.cat([class_labels, torch.zeros_like(class_labels)])
    both_coords = None if coords is None else torch.cat([coords, coords])
    w = float(cfg_scale)

    def guided(x, sigma):
        x32 = x.to(torch.float32)
        out = net(torch.cat([x32, x32]), sigma_like(sigma, x), both_labels, coords=both_coords).to(x.dtype)
        cond, uncond = out.chunk(2)
        return uncond + w * (cond - uncond)
    return guided


def _autoguided_denoiser(net, guide_net, guidance, class_labels, coords, cfg_scale):
    """Autoguidance (Karras et al. 2024): the weak `guide_net` takes the place of CFG's
    unconditional model; the two networks are called one after the other on the same inputs."""
    if cfg_scale is not None:
        raise FieldError('guide_net', 'autoguidance does not combine with classifier-free guidance (cfg_scale); use one of them')
    if guidance is None:
        raise FieldError('guidance', 'give the guidance weight w (e.g. 2) with a guide network')
    check_guide_network(net, guide_net)
    strong, weak = make_denoiser(net, class_labels, coords), make_denoiser(guide_net, class_labels, coords)
    w = float(guidance)

    def autoguided(x, sigma):
        d1 = strong(x, sigma)
        return d1 + (w - 1) * (d1 - weak(x, sigma))
    return autoguided


def check_guide_network(net, guide_net):
    """Raises FieldError('guide_net') unless the guide makes the same images from the same inputs:
    resolution, channels, label dimension and coordinate input."""
    for name in ('img_resolution', 'img_channels', 'label_dim', 'use_coords'):
        ours, theirs = getattr(net, name, None), getattr(guide_net, name, None)
        if name in ('label_dim', 'use_coords'):
            ours, theirs = ours or 0, theirs or 0
        if ours != theirs:
            raise FieldError('guide_net', f'the guide network has {name}={theirs}, the network {name}={ours}; '
                                          f'it must be a weaker model of the same task')


def sigma_like(sigma, x):
    """σ (a Python number) as a 0-dim tensor of x's dtype on x's device, written there by a fill
    kernel: unlike torch.tensor(σ, device=...) it copies nothing from the host, so the GPU never
    waits."""
    return x.new_full([], sigma)


def _randn_like(rng, x):
    return torch.randn_like(x) if rng is None else rng.randn_like(x)


def churn_gamma(sigma, num_steps, S_churn, S_min, S_max):
    """γ_i = min(S_churn/N, √2 − 1) when S_min ≤ σ_i ≤ S_max, else 0."""
    if S_churn > 0 and S_min <= sigma <= S_max:
        return min(S_churn / num_steps, math.sqrt(2) - 1)
    return 0.0


def clamp_sigma_range(net, sigma_min, sigma_max):
    """The requested σ range intersected with the one the network supports."""
    return max(sigma_min, getattr(net, 'sigma_min', 0)), min(sigma_max, getattr(net, 'sigma_max', float('inf')))


def churned_sigmas(net, sigmas, gammas):
    """σ̂_i = round_sigma(σ_i + γ_i·σ_i) where γ_i > 0, else σ_i (Python floats), for every step in
    one `round_sigma` call before the loop, which then never waits for the GPU."""
    raised = _round_sigma(net, torch.tensor([s + g * s for s, g in zip(sigmas, gammas)], dtype=torch.float64)).tolist()
    return [r if g > 0 else s for s, g, r in zip(sigmas, gammas, raised)]


def _round_sigma(net, sigma):
    """`net.round_sigma` on a float64 tensor (networks without it use σ as is)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    if not hasattr(net, 'round_sigma'):
        return sigma
    return torch.as_tensor(net.round_sigma(sigma), dtype=torch.float64)


def edm_sigma_steps(num_steps, sigma_min, sigma_max, rho):
    """EDM's discretisation σ_i = (σ_max^(1/ρ) + i/(N−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ, i < N,
    as a float64 tensor of N values (one step at σ_max when N = 1)."""
    i = torch.arange(num_steps, dtype=torch.float64)
    frac = i / max(num_steps - 1, 1)
    return (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def check_rho(rho, num_steps=18, sigma_min=0.002, sigma_max=80):
    """Raises a FieldError of `rho` unless EDM's discretisation with it gives finite, strictly
    decreasing noise levels (an extreme ρ overflows 1/ρ or rounds every level to one value)."""
    try:
        steps = edm_sigma_steps(max(num_steps, 2), sigma_min, sigma_max, rho)
    except (OverflowError, ZeroDivisionError):
        steps = None
    if steps is None or not torch.isfinite(steps).all() or not (steps[:-1] > steps[1:]).all():
        raise FieldError('rho', f'{rho:g} gives no decreasing noise levels from {sigma_max:g} to {sigma_min:g} '
                                f'(float precision; EDM uses 7)', value=None)


def edm_time_steps(net, num_steps=18, sigma_min=0.002, sigma_max=80, rho=7):
    """t_0 … t_N of the EDM sampler: the σ range clamped to the network's, each σ_i rounded by
    `net.round_sigma`, and t_N = 0 (float64, N + 1 values)."""
    sigma_min, sigma_max = clamp_sigma_range(net, sigma_min, sigma_max)
    steps = _round_sigma(net, edm_sigma_steps(num_steps, sigma_min, sigma_max, rho))
    return torch.cat([steps, torch.zeros(1, dtype=torch.float64)])

# ----------------------------------------------------------------------------------------------
# EDM sampler.


def edm_sampler(net, latents, class_labels=None, rng=None, num_steps=18, sigma_min=0.002, sigma_max=80, rho=7,
                S_churn=0, S_min=0, S_max=float('inf'), S_noise=1, coords=None, cfg_scale=None, guide_net=None,
                guidance=None):
    """EDM's 2nd-order Heun sampler (Karras et al. 2022, Algorithm 2): float64 images (float32 on
    MPS) from standard normal `latents`, in 2N − 1 network calls. `rng` (a `BatchRNG`, one
    generator per image) draws the churn noise; `coords` are the coordinate channels of patch
    networks; guidance as in `make_denoiser`."""
    denoise = make_denoiser(net, class_labels, coords, cfg_scale, guide_net, guidance)
    t_steps = edm_time_steps(net, num_steps, sigma_min, sigma_max, rho).tolist()
    gammas = [churn_gamma(t, num_steps, S_churn, S_min, S_max) for t in t_steps[:-1]]
    t_hats = churned_sigmas(net, t_steps[:-1], gammas)
    x_next = latents.to(state_dtype(latents.device)) * t_steps[0]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        t_hat = t_hats[i]
        x_hat = x_cur
        if gammas[i] > 0:
            x_hat = x_cur + math.sqrt(t_hat ** 2 - t_cur ** 2) * S_noise * _randn_like(rng, x_cur)

        d_cur = (x_hat - denoise(x_hat, t_hat)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        if i < num_steps - 1:
            d_prime = (x_next - denoise(x_next, t_next)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next

# ----------------------------------------------------------------------------------------------
# Generalised (ablation) sampler.


class _Schedule(NamedTuple):
    sigma: callable        # σ(t)
    sigma_deriv: callable  # σ'(t)
    sigma_inv: callable    # t(σ)


def _vp_schedule(beta_d, beta_min):
    """The VP schedule of `training.schedules` with its β's bound."""
    return _Schedule(lambda t: schedules.vp_sigma(t, beta_d, beta_min), lambda t: schedules.vp_sigma_deriv(t, beta_d, beta_min),
                     lambda s: schedules.vp_sigma_inv(s, beta_d, beta_min))


_VE_SCHEDULE = _Schedule(schedules.ve_sigma, schedules.ve_sigma_deriv, schedules.ve_sigma_inv)
_LINEAR_SCHEDULE = _Schedule(lambda t: t, lambda t: 1.0, lambda s: s)


def _scaling(name, schedule):
    """s(t) and s'(t): VP keeps the signal at unit variance, s = 1/√(1 + σ²); none is s = 1."""
    if name == 'none':
        return (lambda t: 1.0), (lambda t: 0.0)

    def s(t):
        return 1 / math.sqrt(1 + schedule.sigma(t) ** 2)

    def s_deriv(t):
        return -schedule.sigma(t) * schedule.sigma_deriv(t) * s(t) ** 3
    return s, s_deriv


_DEFAULT_SIGMA_RANGE = {'ve': (0.02, 100), 'iddpm': (0.002, 81), 'edm': (0.002, 80)}


def discretization_sigma_range(net, discretization, sigma_min, sigma_max, epsilon_s):
    """(σ_min, σ_max): the given bounds, the discretisation's defaults (EDM's Table 1) for those
    left None, intersected with the network's range."""
    vp_defaults = _vp_schedule(19.9, 0.1)
    default_min, default_max = _DEFAULT_SIGMA_RANGE.get(discretization, (vp_defaults.sigma(epsilon_s), vp_defaults.sigma(1)))
    return clamp_sigma_range(net, default_min if sigma_min is None else sigma_min,
                             default_max if sigma_max is None else sigma_max)


def ablation_sigma_steps(discretization, num_steps, sigma_min, sigma_max, rho, epsilon_s, C_1, C_2, M, vp_betas):
    """σ_0 … σ_{N−1} of the discretisations of EDM's Table 1 (vp, ve, iddpm, edm), float64."""
    frac = torch.arange(num_steps, dtype=torch.float64) / max(num_steps - 1, 1)
    if discretization == 'vp':
        vp = _vp_schedule(*vp_betas)
        return torch.tensor([vp.sigma(float(t)) for t in 1 + frac * (epsilon_s - 1)], dtype=torch.float64)
    if discretization == 've':
        return sigma_max * (sigma_min / sigma_max) ** frac
    if discretization == 'iddpm':
        u = schedules.iddpm_levels(C_1, C_2, M)
        u = u[(u >= sigma_min) & (u <= sigma_max)]
        return u[(frac * (len(u) - 1)).round().to(torch.int64)]
    if discretization == 'edm':
        return edm_sigma_steps(num_steps, sigma_min, sigma_max, rho)
    raise ValueError(f'unknown discretization "{discretization}"')


def ablation_sampler(net, latents, class_labels=None, rng=None, num_steps=18, sigma_min=None, sigma_max=None, rho=7,
                     solver='heun', discretization='edm', schedule='linear', scaling='none',
                     epsilon_s=1e-3, C_1=0.001, C_2=0.008, M=1000, alpha=1,
                     S_churn=0, S_min=0, S_max=float('inf'), S_noise=1, coords=None, cfg_scale=None, guide_net=None,
                     guidance=None):
    """EDM's generalised sampler (Karras et al. 2022, Algorithm 1 with the choices of Table 1):
    integrates dx/dt = (σ'/σ + s'/s)·x − σ'·s/σ·D(x/s; σ) with euler or heun (evaluated at t + α·h).
    With discretization=edm, schedule=linear, scaling=none, solver=heun it computes `edm_sampler`."""
    if solver not in ('euler', 'heun'):
        raise ValueError(f'unknown solver "{solver}"')
    if schedule not in ('vp', 've', 'linear') or scaling not in ('vp', 'none'):
        raise ValueError(f'unknown schedule "{schedule}" or scaling "{scaling}"')
    sigma_min, sigma_max = discretization_sigma_range(net, discretization, sigma_min, sigma_max, epsilon_s)
    vp_betas = schedules.vp_betas(sigma_min, sigma_max, epsilon_s)
    sched = {'vp': _vp_schedule(*vp_betas), 've': _VE_SCHEDULE, 'linear': _LINEAR_SCHEDULE}[schedule]
    s, s_deriv = _scaling(scaling, sched)

    sigma_steps = _round_sigma(net, ablation_sigma_steps(discretization, num_steps, sigma_min, sigma_max, rho,
                                                         epsilon_s, C_1, C_2, M, vp_betas))
    t_steps = [sched.sigma_inv(sig) for sig in sigma_steps.tolist()] + [0.0]
    sigma_curs = [sched.sigma(t) for t in t_steps[:-1]]
    gammas = [churn_gamma(sig, num_steps, S_churn, S_min, S_max) for sig in sigma_curs]
    churned = churned_sigmas(net, sigma_curs, gammas)
    t_hats = [sched.sigma_inv(sig) if g > 0 else t for sig, g, t in zip(churned, gammas, t_steps)]
    denoise = make_denoiser(net, class_labels, coords, cfg_scale, guide_net, guidance)

    def slope(x, t):
        sig, dsig = sched.sigma(t), sched.sigma_deriv(t)
        return (dsig / sig + s_deriv(t) / s(t)) * x - dsig * s(t) / sig * denoise(x / s(t), sig)

    x_next = latents.to(state_dtype(latents.device)) * (sched.sigma(t_steps[0]) * s(t_steps[0]))
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        sigma_cur = sigma_curs[i]
        t_hat = t_hats[i]
        x_hat = x_cur
        if gammas[i] > 0:
            noise_std = math.sqrt(sched.sigma(t_hat) ** 2 - sigma_cur ** 2) * s(t_hat) * S_noise
            x_hat = s(t_hat) / s(t_cur) * x_cur + noise_std * _randn_like(rng, x_cur)

        h = t_next - t_hat
        d_cur = slope(x_hat, t_hat)
        if solver == 'euler' or i == num_steps - 1:
            x_next = x_hat + h * d_cur
        else:
            t_prime = t_hat + alpha * h
            d_prime = slope(x_hat + alpha * h * d_cur, t_prime)
            x_next = x_hat + h * ((1 - 1 / (2 * alpha)) * d_cur + 1 / (2 * alpha) * d_prime)
    return x_next


# ----------------------------------------------------------------------------------------------
# Solvers on any σ schedule: `solver(denoise, x, sigmas, rng=None)` integrates the probability-flow
# ODE dx/dσ = (x − D(x; σ))/σ from x at sigmas[0] down to sigmas[-1] = 0 (a Python list), one
# step per pair of neighbouring σ's; `rng` draws the noise of the stochastic ones.


def euler(denoise, x, sigmas, rng=None):
    """First order, one network call per step."""
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        x = x + (sigma_next - sigma) * (x - denoise(x, sigma)) / sigma
    return x


def heun(denoise, x, sigmas, rng=None):
    """Second order (EDM's Algorithm 1 without churn): an Euler step corrected by the slope at its
    end; the step to σ = 0 stays Euler. 2N − 1 calls for N steps."""
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        slope = (x - denoise(x, sigma)) / sigma
        x_euler = x + (sigma_next - sigma) * slope
        if sigma_next == 0:
            x = x_euler
            continue
        slope_next = (x_euler - denoise(x_euler, sigma_next)) / sigma_next
        x = x + (sigma_next - sigma) * 0.5 * (slope + slope_next)
    return x


def dpmpp_2m(denoise, x, sigmas, rng=None):
    """DPM-Solver++(2M) (Lu et al. 2022) in EDM's σ form: an exponential-integrator step whose
    denoised value is extrapolated linearly in log σ from the previous step's; one call per step."""
    previous, h_previous = None, None
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        denoised = denoise(x, sigma)
        if sigma_next == 0:
            return denoised
        h = math.log(sigma / sigma_next)
        extrapolated = denoised
        if previous is not None:
            r = h_previous / h
            extrapolated = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
        x = (sigma_next / sigma) * x + (1 - sigma_next / sigma) * extrapolated
        previous, h_previous = denoised, h
    return x


def dpmpp_3m(denoise, x, sigmas, rng=None):
    """Third-order multistep exponential integrator in λ = −ln σ: with D(λ_i + u) ≈ D_i + a·u + b·u²
    fitted through the last three denoised values, x_{i+1} = e^(−h) x_i + (1 − e^(−h)) D_i
    + (h − 1 + e^(−h)) a + (h² − 2h + 2 − 2e^(−h)) b exactly integrates that quadratic. The first
    steps use the values there are (first, then second order). One call per step."""
    history = []  # (λ, D) of the previous steps, newest last
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        denoised = denoise(x, sigma)
        if sigma_next == 0:
            return denoised
        lam, h = -math.log(sigma), math.log(sigma / sigma_next)
        a, b = _quadratic_in_log_sigma(lam, denoised, history)
        decay = math.exp(-h)
        x = decay * x - math.expm1(-h) * denoised
        if a is not None:
            x = x + (h - 1 + decay) * a
        if b is not None:
            x = x + (h * h - 2 * h + 2 - 2 * decay) * b
        history = (history + [(lam, denoised)])[-2:]
    return x


def _quadratic_in_log_sigma(lam, denoised, history):
    """Slope a and curvature b (None where there are too few points) at u = 0 of the polynomial in
    u = λ − `lam` through (0, denoised) and the (λ, D) of `history` (Newton's divided differences)."""
    if not history:
        return None, None
    u1, d1 = history[-1][0] - lam, history[-1][1]
    first = (d1 - denoised) / u1
    if len(history) < 2:
        return first, None
    u2, d2 = history[-2][0] - lam, history[-2][1]
    second = ((d2 - d1) / (u2 - u1) - first) / u2
    return first - second * u1, second


def euler_ancestral(denoise, x, sigmas, rng=None):
    """Stochastic: each step goes deterministically down to σ_down and adds fresh noise of std σ_up,
    σ_up = σ_{i+1}·√(1 − σ_{i+1}²/σ_i²), σ_down = √(σ_{i+1}² − σ_up²), so that for Gaussian data the
    sample's distribution at σ_{i+1} is exactly right when the step is small. One call per step."""
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        sigma_up = sigma_next * math.sqrt(max(1 - sigma_next ** 2 / sigma ** 2, 0))
        sigma_down = math.sqrt(sigma_next ** 2 - sigma_up ** 2)
        x = x + (sigma_down - sigma) * (x - denoise(x, sigma)) / sigma
        if sigma_up > 0:
            x = x + sigma_up * _randn_like(rng, x)
    return x


SOLVERS = {'euler': euler, 'heun': heun, 'dpmpp-2m': dpmpp_2m, 'dpmpp-3m': dpmpp_3m, 'euler-a': euler_ancestral}
EDM_SOLVERS = ('euler', 'heun')  # also EDM's generalised sampler's, which keeps them with its options


def network_calls(solver, num_steps):
    """Network evaluations per image of `solver` with `num_steps` noise levels (guidance doubles
    them: two networks, or both halves of --cfg, per evaluation)."""
    return 2 * num_steps - 1 if solver == 'heun' else num_steps


def solver_sigmas(net, num_steps, sigma_min=None, sigma_max=None, rho=7, discretization='edm',
                  epsilon_s=1e-3, C_1=0.001, C_2=0.008, M=1000):
    """σ_0 … σ_{N−1}, 0 of one of EDM's discretisations (Table 1) as Python floats: the σ range
    (that discretisation's default where None) clamped to the network's, each σ rounded by it."""
    sigma_min, sigma_max = discretization_sigma_range(net, discretization, sigma_min, sigma_max, epsilon_s)
    vp_betas = schedules.vp_betas(sigma_min, sigma_max, epsilon_s)
    steps = ablation_sigma_steps(discretization, num_steps, sigma_min, sigma_max, rho, epsilon_s, C_1, C_2, M, vp_betas)
    return _round_sigma(net, steps).tolist() + [0.0]


def solver_sampler(net, latents, class_labels=None, rng=None, solver='dpmpp-2m', num_steps=18, sigma_min=None,
                   sigma_max=None, rho=7, discretization='edm', schedule='linear', scaling='none', S_churn=0, S_min=0,
                   S_max=float('inf'), S_noise=1, coords=None, cfg_scale=None, guide_net=None, guidance=None,
                   **discretization_kwargs):
    """Images from standard normal `latents` by one of `SOLVERS` on the σ steps of `solver_sigmas`,
    float64 (float32 on MPS); guidance as in `make_denoiser`. They integrate in σ itself: EDM's
    churn, σ(t) schedules and scalings belong to `ablation_sampler` (euler and heun)."""
    if solver not in SOLVERS:
        raise FieldError('solver', f'"{solver}" is not one of {", ".join(SOLVERS)}')
    if S_churn > 0:
        raise FieldError('S_churn', f'churn applies to the euler and heun solvers only, not to {solver}')
    if schedule != 'linear' or scaling != 'none':
        raise FieldError('schedule', f'sigma(t) schedules and scalings apply to the euler and heun solvers only, '
                                     f'not to {solver} (it integrates in sigma)')
    denoise = make_denoiser(net, class_labels, coords, cfg_scale, guide_net, guidance)
    sigmas = solver_sigmas(net, num_steps, sigma_min, sigma_max, rho, discretization, **discretization_kwargs)
    x = latents.to(state_dtype(latents.device)) * sigmas[0]
    return SOLVERS[solver](denoise, x, sigmas, rng=rng)


def select_sampler(sampler_kwargs):
    """`solver_sampler` for the solvers EDM does not have; else `ablation_sampler` when any of
    solver/discretization/schedule/scaling is given (as EDM's generate.py does), else `edm_sampler`."""
    if sampler_kwargs.get('solver', 'heun') not in EDM_SOLVERS:
        return solver_sampler
    return ablation_sampler if any(k in sampler_kwargs for k in ABLATION_KEYS) else edm_sampler

# ----------------------------------------------------------------------------------------------
# Seeds → images.


class Canvas(NamedTuple):
    """Where the sampled image sits, in the network's pixels: an `image_size` canvas whose top-left
    pixel is at (y_start, x_start) of an image of size `resolution`; beyond it coordinates leave
    [−1, 1]. Sizes are sides (squares) or (H, W) pairs."""
    resolution: int | tuple
    image_size: int | tuple
    x_start: int = 0
    y_start: int = 0


def default_canvas(net):
    """The full training image."""
    return Canvas(net.img_resolution, net.img_resolution, 0, 0)


def check_sampling_options(net, class_idx=None, canvas=None, cfg_scale=None):
    """Raises a `FieldError` (naming the argument) for choices the network cannot honour;
    generate.py calls it before writing anything."""
    label_dim = getattr(net, 'label_dim', 0)
    if class_idx is not None:
        if label_dim == 0:
            raise FieldError('class_idx', f'the network is unconditional, so class {class_idx} cannot be used')
        if not 0 <= class_idx < label_dim:
            raise FieldError('class_idx', f'{class_idx} is out of range; the network has {label_dim} classes (0..{label_dim - 1})')
    if cfg_scale is not None and label_dim == 0:
        raise FieldError('cfg_scale', 'classifier-free guidance needs a class-conditional network; this one is unconditional')
    if canvas is not None:
        factor = getattr(net, 'down_factor', 1)
        if min(patch.image_hw(canvas.image_size) + patch.image_hw(canvas.resolution)) <= 0:
            raise FieldError('canvas', f'must be positive (got {patch.shape_name(canvas.image_size)}, '
                                       f'{patch.shape_name(canvas.resolution)})')
        patch.check_divisible(canvas.image_size, factor, 'canvas.image_size')
        uses_coords = getattr(net, 'use_coords', False)
        same_image = patch.image_hw(canvas.resolution) == patch.image_hw(net.img_resolution)
        if not uses_coords and (not same_image or canvas.x_start or canvas.y_start):
            raise FieldError('canvas.resolution', 'the network was trained without coordinates; only the image size applies')


def canvas_coords(net, canvas, batch, device):
    """(batch, 2, H, W) coordinate channels of the canvas for a network with `use_coords`, else None."""
    if not getattr(net, 'use_coords', False):
        return None
    grid = patch.coord_grid(canvas.resolution, *patch.image_hw(canvas.image_size), canvas.y_start, canvas.x_start,
                            device=device)
    return grid.unsqueeze(0).expand(batch, -1, -1, -1)


def draw_batch_inputs(net, seeds, canvas, device, class_idx=None):
    """Per-seed latents (B, C, S, S) and one-hot labels (or None) from a `BatchRNG` of the seeds
    (each mod 2³²); the labels of a conditional net without `class_idx` come from each seed's
    generator after its latent. Returns (rng, latents, labels); rng then draws the churn noise."""
    rng = misc.BatchRNG([int(seed) % (1 << 32) for seed in seeds], rows_per_seed=1, device=device)
    latents = rng.randn(net.img_channels, *patch.image_hw(canvas.image_size))
    labels = None
    if net.label_dim:
        if class_idx is None:
            index = rng.randint(0, net.label_dim)
        else:
            index = torch.full([len(seeds)], int(class_idx), dtype=torch.int64, device=device)
        labels = torch.nn.functional.one_hot(index.to(device), net.label_dim).to(torch.float32)
    return rng, latents, labels


def iter_sample_batches(net, seeds, device=None, class_idx=None, batch_size=64, canvas=None, decoder=encoders.PIXELS,
                        progress=False, **sampler_kwargs):
    """Yields (batch_seeds, uint8 images (B, C, H, W) on the CPU) for consecutive batches of `seeds`
    (a sized sequence, read a batch at a time, so that long runs never hold all seeds or images). `net` must already be on `device`; `decoder` (the
    training data's encoder) turns its outputs into images; other keywords go to the sampler."""
    if device is None:
        device = next(net.parameters()).device
    device = torch.device(device)
    canvas = default_canvas(net) if canvas is None else Canvas(*canvas)
    check_sampling_options(net, class_idx, canvas, sampler_kwargs.get('cfg_scale'))
    sampler = select_sampler(sampler_kwargs)
    seed_iter = iter(seeds)
    batches = iter(lambda: [int(seed) for seed in itertools.islice(seed_iter, batch_size)], [])

    from tqdm import tqdm
    bar = tqdm(total=len(seeds), unit='img', disable=(not progress) or distributed.tqdm_disabled())
    nets = [n for n in (net, sampler_kwargs.get('guide_net')) if n is not None]
    was_training = [n.training for n in nets]
    for n in nets:
        n.eval()
    try:
        for batch_seeds in batches:
            with torch.inference_mode():
                rng, latents, labels = draw_batch_inputs(net, batch_seeds, canvas, device, class_idx)
                coords = canvas_coords(net, canvas, len(batch_seeds), device)
                x = sampler(net, latents, labels, rng=rng, coords=coords, **sampler_kwargs)
                images = decoder.decode(x)
            bar.update(len(batch_seeds))
            yield batch_seeds, images.to(torch.uint8).cpu()
    finally:
        for n, mode in zip(nets, was_training):
            n.train(mode)
        bar.close()


def sample_images(net, seeds, device=None, class_idx=None, batch_size=64, canvas=None, decoder=encoders.PIXELS, progress=False,
                  **sampler_kwargs):
    """uint8 images (len(seeds), C, H, W) on the CPU in the order of `seeds`; arguments as in
    `iter_sample_batches`."""
    chunks = [images for _, images in iter_sample_batches(net, seeds, device, class_idx, batch_size, canvas, decoder,
                                                          progress, **sampler_kwargs)]
    if not chunks:
        raise ValueError('no seeds to sample')
    return torch.cat(chunks)
