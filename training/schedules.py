"""The noise schedules of EDM's Table 1, in one place for the losses, the preconditioners and
the sampler.

- VP: σ(t) = √(exp(½β_d t² + β_min t) − 1), its derivative, its inverse, and the (β_d, β_min)
  that map t = ε_s and t = 1 to a given σ range.
- VE: σ(t) = √t, its derivative and inverse.
- iDDPM: the M + 1 discrete σ levels of improved DDPM.

The σ(t) functions take Python floats (and return floats) or tensors (and keep their dtype), so
that the sampler's float64 scalars and the training's float32 batches share one formula.
"""

import math

import torch


def _ops(x):
    return torch if torch.is_tensor(x) else math


def vp_sigma(t, beta_d=19.9, beta_min=0.1):
    """σ(t) = √(exp(½β_d t² + β_min t) − 1)."""
    ops = _ops(t)
    return ops.sqrt(ops.exp(0.5 * beta_d * t ** 2 + beta_min * t) - 1)


def vp_sigma_deriv(t, beta_d=19.9, beta_min=0.1):
    """σ'(t) = ½(β_min + β_d t)·exp(½β_d t² + β_min t) / σ(t)."""
    ops = _ops(t)
    return 0.5 * (beta_min + beta_d * t) * ops.exp(0.5 * beta_d * t ** 2 + beta_min * t) / vp_sigma(t, beta_d, beta_min)


def vp_sigma_inv(sigma, beta_d=19.9, beta_min=0.1):
    """t(σ) = (√(β_min² + 2β_d ln(1 + σ²)) − β_min) / β_d."""
    ops = _ops(sigma)
    return (ops.sqrt(beta_min ** 2 + 2 * beta_d * ops.log(1 + sigma ** 2)) - beta_min) / beta_d


def vp_betas(sigma_min, sigma_max, epsilon_s):
    """(β_d, β_min) of the VP schedule with σ(ε_s) = σ_min and σ(1) = σ_max."""
    l_min, l_max = math.log1p(sigma_min ** 2), math.log1p(sigma_max ** 2)
    beta_d = 2 * (l_min / epsilon_s - l_max) / (epsilon_s - 1)
    return beta_d, l_max - 0.5 * beta_d


def ve_sigma(t):
    """σ(t) = √t."""
    return _ops(t).sqrt(t)


def ve_sigma_deriv(t):
    """σ'(t) = 1 / (2√t)."""
    return 0.5 / _ops(t).sqrt(t)


def ve_sigma_inv(sigma):
    """t(σ) = σ²."""
    return sigma ** 2


def iddpm_levels(C_1=0.001, C_2=0.008, M=1000):
    """The σ levels u_0 > … > u_M = 0 of improved DDPM as a float64 tensor:
    u_{j−1} = √((u_j² + 1) / max(ᾱ(j−1)/ᾱ(j), C_1) − 1), ᾱ(j) = sin²(π/2 · j / (M·(C_2 + 1)))."""
    def alpha_bar(j):
        return math.sin(0.5 * math.pi * j / (M * (C_2 + 1))) ** 2
    u = [0.0] * (M + 1)
    for j in range(M, 0, -1):
        u[j - 1] = math.sqrt((u[j] ** 2 + 1) / max(alpha_bar(j - 1) / alpha_bar(j), C_1) - 1)
    return torch.tensor(u, dtype=torch.float64)
