"""Post-hoc EMA (Karras et al. 2024, section 3): power-function EMA profiles tracked during training
and any other profile reconstructed afterwards as a least-squares combination of the saved ones.

A profile of exponent γ ending at step t weights the weights θ_τ by p_t(τ) = (γ+1) τ^γ / t^(γ+1);
its width is given as the relative standard deviation σ_rel. Time counts optimizer steps."""

import copy
import glob
import math
import os
import re
import warnings

import numpy as np
import torch

import dnnlib
from dnnlib.util import FieldError, atomic_write
from training import file_limits


def std_to_exp(std):
    """γ of the profile with relative standard deviation `std`: the largest real root of
    (γ+2)²(γ+3) σ² − (γ+1) = 0 (the other root near −1 piles the profile up at the start)."""
    std = float(std)
    if not 0 < std < 0.3:  # σ_rel peaks at ~0.3003 (γ ≈ −0.38): no profile is wider
        raise FieldError('std', f'{std} is not a relative EMA width in (0, 0.3)')
    s2 = std * std
    roots = np.roots([s2, 7 * s2, 16 * s2 - 1, 12 * s2 - 1])
    real = roots[np.abs(roots.imag) < 1e-9].real
    return float(real.max())


def parse_stds(text):
    """'0.050,0.100' → [0.05, 0.1], each a valid width."""
    try:
        stds = [float(part) for part in str(text).split(',')]
    except ValueError:
        raise FieldError('stds', f'"{text}" is not a comma-separated list of numbers') from None
    for std in stds:
        std_to_exp(std)
    return stds


def exp_to_std(gamma):
    """σ_rel = sqrt((γ+1) / ((γ+2)² (γ+3))) of the profile of exponent γ."""
    gamma = np.asarray(gamma, dtype=np.float64)
    return np.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def beta(step, gamma):
    """Decay of the update at step t ≥ 1: β_t = (1 − 1/t)^(γ+1), so the first step copies θ_1."""
    return (1 - 1 / step) ** (gamma + 1)


def profile_inner(t_a, gamma_a, t_b, gamma_b):
    """⟨p_a, p_b⟩ = ∫ p_a p_b dτ of two profiles (end times in steps, exponents); broadcasts."""
    t_a, gamma_a, t_b, gamma_b = (np.asarray(v, dtype=np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
    g = gamma_a + gamma_b + 1
    # Written with ratios to stay finite for large t and γ: min^g / (t_a^(γa+1) t_b^(γb+1)).
    t_min = np.minimum(t_a, t_b)
    return (gamma_a + 1) * (gamma_b + 1) / g * (t_min / t_a) ** (gamma_a + 1) * (t_min / t_b) ** (gamma_b + 1) / t_min


def solve_weights(t_src, gamma_src, t_out, gamma_out):
    """Weights w of the saved profiles (end times `t_src`, exponents `gamma_src`) whose sum Σ wᵢ pᵢ
    is closest in L2 to the target profile, and the relative residual ‖Σ wᵢ pᵢ − p*‖ / ‖p*‖. A
    target that was saved gets that profile's unit weight."""
    t_src, gamma_src = np.asarray(t_src, np.float64), np.asarray(gamma_src, np.float64)
    same = np.flatnonzero((t_src == t_out) & np.isclose(gamma_src, gamma_out, rtol=1e-9, atol=0))
    if len(same):
        weights = np.zeros(len(t_src))
        weights[same[0]] = 1
        return weights, 0.0
    a = profile_inner(t_src[:, None], gamma_src[:, None], t_src[None, :], gamma_src[None, :])
    b = profile_inner(t_src, gamma_src, t_out, gamma_out)
    weights = np.linalg.lstsq(a, b, rcond=1e-12)[0]  # SVD: the matrix is ill-conditioned
    target = profile_inner(t_out, gamma_out, t_out, gamma_out)
    residual = max(weights @ a @ weights - 2 * weights @ b + target, 0)
    return weights, float(np.sqrt(residual / target))


class PowerEMA:
    """Power-function EMA profiles of a network's parameters, one per relative width in `stds`;
    every rank holds the same ones, since every rank averages the same weights."""

    def __init__(self, net, stds):
        self.stds = [float(s) for s in stds]
        self.gammas = [std_to_exp(s) for s in self.stds]
        self.averages = [{name: p.detach().clone() for name, p in net.named_parameters()} for _ in self.stds]
        self._source = None

    @torch.no_grad()
    def update(self, net, step):
        """θ̂ ← β_t θ̂ + (1 − β_t) θ for every profile, after optimizer step `step` (1, 2, ...)."""
        if self._source is not net:  # the lists are taken once per network: walking it every step is slow
            names, params = zip(*net.named_parameters())
            self._source, self._params = net, list(params)
            self._targets = [[average[name] for name in names] for average in self.averages]
        for gamma, targets in zip(self.gammas, self._targets):
            torch._foreach_lerp_(targets, self._params, 1 - beta(step, gamma))

    def state_dict(self, step):
        """The profiles at step `step`: tensors, numbers and lists only (loads with weights_only)."""
        return dict(step=int(step), std=list(self.stds), gamma=list(self.gammas),
                    averages=[{name: t.detach().cpu().clone() for name, t in average.items()} for average in self.averages])

    def load_state_dict(self, state):
        """Restores profiles saved by `state_dict` (same widths, same parameter names); `state`
        None means the run being resumed tracked none."""
        if state is None:
            raise FieldError('stds', 'the training state to resume tracked no EMA profiles; resume without them')
        if [float(s) for s in state['std']] != self.stds:
            raise FieldError('stds', f'the saved profiles have widths {state["std"]}, not {self.stds}')
        for average, saved in zip(self.averages, state['averages']):
            if set(saved) != set(average):
                raise FieldError('stds', 'the saved profiles average another network (parameter names differ)')
            for name, tensor in average.items():
                tensor.copy_(saved[name])

    def network(self, index, template):
        """A copy of `template` (the classic EMA: same buffers) with the parameters of profile `index`."""
        return network_with(template, self.averages[index])

    def save(self, run_dir, kimg, step, nimg):
        """Writes `phema-<kimg>.pt` beside the snapshot of the same kimg (atomically)."""
        state = dict(self.state_dict(step), nimg=int(nimg))
        with atomic_write(os.path.join(run_dir, phema_name(kimg)), 'wb') as f:
            torch.save(state, f)


def network_with(template, params):
    """A copy of the network `template` with the parameters `params` (name → tensor)."""
    net = copy.deepcopy(template)
    with torch.no_grad():
        for name, param in net.named_parameters():
            param.copy_(params[name].to(param.dtype))
    return net


def phema_name(kimg):
    return f'phema-{int(kimg):06d}.pt'


def list_saved(run_dir):
    """{kimg: path} of the profile files in a run folder."""
    found = {}
    for path in glob.glob(os.path.join(run_dir, 'phema-*.pt')):
        match = re.fullmatch(r'phema-(\d+)\.pt', os.path.basename(path))
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def load_saved(path):
    """A profile file written by `PowerEMA.save`, loaded with `weights_only` (nothing in it runs
    code) and checked: a step of at least 1, finite exponents above -1 and one dict of tensors per
    exponent, so that a damaged or planted file is a FieldError of `indir` (the run folder), not
    a traceback or a reconstruction of NaNs."""
    with dnnlib.util.field_of('indir'):
        file_limits.check_regular_file(path)
    try:
        with warnings.catch_warnings():  # about a foreign file's pickle: the error says enough
            warnings.simplefilter('ignore')
            state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:
        raise FieldError('indir', f'"{path}" is not a readable profile file ({type(err).__name__}; one holding '
                         f'code is refused unread)') from None
    gammas, averages = (state.get('gamma'), state.get('averages')) if isinstance(state, dict) else (None, None)
    if not (isinstance(state.get('step') if isinstance(state, dict) else None, int) and state['step'] >= 1
            and isinstance(gammas, list) and gammas and all(_finite(g) and g > -1 for g in gammas)
            and isinstance(averages, list) and len(averages) == len(gammas)
            and all(isinstance(a, dict) and a and all(isinstance(t, torch.Tensor) for t in a.values()) for a in averages)):
        raise FieldError('indir', f'"{path}" is not a profile file of train.py --ema-std (a step, finite exponents above -1 '
                         f'and one set of averages each)')
    return state


def _finite(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
