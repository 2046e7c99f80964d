"""Training losses of the VP, VE and EDM formulations, with or without patches.

Every loss returns the unreduced per-element loss λ(σ)·(D(y + n; σ) − y)² over image channels.
The shared part (`DenoisingLoss.__call__`) applies the augmentation to the full images, then
crops patches with their coordinates when `patch_size` is given (augmenting first keeps the
coordinates true to the augmented image), then draws σ and the noise. All random draws go
through `rng` (a `torch_utils.misc.BatchRNG`) when one is given, so an image's loss does not
depend on which rank or accumulation round computed it.
"""

import torch

from dnnlib.util import FieldError
from torch_utils import persistence
from training import patch, schedules


CROP_SAMPLERS = ('uniform', 'content')  # the first is the default
SIGMA_RANGE = (1e-30, 1e19)  # noise levels whose squares float32 holds (the weight λ(σ) squares them)
SIGMA_SPREAD = 5  # standard deviations of ln σ that must stay within SIGMA_RANGE (all but 1 draw in 3.5 million)


def check_edm_options(P_mean, P_std, sigma_data):
    """Raises a FieldError when EDM's σ distribution (ln σ ~ N(P_mean, P_std²)) or σ_data leave
    the range where float32 arithmetic holds, which would make the loss NaN or zero silently."""
    lo, hi = (float(torch.tensor(v).log()) for v in SIGMA_RANGE)
    if P_mean - SIGMA_SPREAD * P_std < lo or P_mean + SIGMA_SPREAD * P_std > hi:
        raise FieldError('P_mean', f'{P_mean:g} with `P_std`={P_std:g} draws sigma = exp(P_mean +- {SIGMA_SPREAD} P_std) '
                         f'beyond [{SIGMA_RANGE[0]:g}, {SIGMA_RANGE[1]:g}], where float32 breaks (EDM: -1.2, 1.2)')
    if not SIGMA_RANGE[0] <= sigma_data <= SIGMA_RANGE[1]:
        raise FieldError('sigma_data', f'{sigma_data:g} lies beyond [{SIGMA_RANGE[0]:g}, {SIGMA_RANGE[1]:g}], where float32 '
                         f'breaks (pixels in [-1, 1]: 0.5)')


class DenoisingLoss:
    """Base class: subclasses define `sample_sigma(n, rng, device)` (shape (n, 1, 1, 1)) and
    `weight(sigma)`. `crop_sampler='content'` draws patch positions by `patch.content_crop_probs`
    and weights each crop's loss by its importance weight, so the objective stays the uniform one."""

    crop_sampler = CROP_SAMPLERS[0]

    def __call__(self, net, images, labels=None, augment_pipe=None, patch_size=None, rng=None):
        if augment_pipe is not None:
            y, augment_labels = augment_pipe(images, rng=rng)
        else:
            y, augment_labels = images, None
        coords, crop_weight = None, None
        if patch_size is not None and self.crop_sampler == 'content':
            y, coords, crop_weight = patch.extract_content_patches(y, patch_size, rng)
        elif patch_size is not None:
            y, coords = patch.extract_patches(y, patch_size, rng)
        sigma = self.sample_sigma(y.shape[0], rng, y.device)
        noise = (rng.randn_like(y) if rng is not None else torch.randn_like(y)) * sigma
        denoised = net(y + noise, sigma, labels, coords=coords, augment_labels=augment_labels)
        loss = self.weight(sigma) * (denoised - y) ** 2
        return loss if crop_weight is None else crop_weight * loss

    def _set_crop_sampler(self, crop_sampler):
        if crop_sampler not in CROP_SAMPLERS:
            raise FieldError('crop_sampler', f'"{crop_sampler}" is not one of {", ".join(CROP_SAMPLERS)}')
        self.crop_sampler = crop_sampler

    @staticmethod
    def _uniform(n, rng, device):
        u = rng.rand() if rng is not None else torch.rand([n], device=device)
        return u.to(device).reshape(-1, 1, 1, 1)

    @staticmethod
    def _normal(n, rng, device):
        z = rng.randn() if rng is not None else torch.randn([n], device=device)
        return z.to(device).reshape(-1, 1, 1, 1)


@persistence.persistent_class
class VPLoss(DenoisingLoss):
    """VP: t ~ U(ε_t, 1), σ(t) = √(exp(½β_d t² + β_min t) − 1), λ(σ) = 1/σ²."""

    def __init__(self, beta_d=19.9, beta_min=0.1, epsilon_t=1e-5, crop_sampler=CROP_SAMPLERS[0]):
        self._set_crop_sampler(crop_sampler)
        self.beta_d = beta_d
        self.beta_min = beta_min
        self.epsilon_t = epsilon_t

    def sigma(self, t):
        return schedules.vp_sigma(torch.as_tensor(t), self.beta_d, self.beta_min)

    def sample_sigma(self, n, rng, device):
        u = self._uniform(n, rng, device)
        return self.sigma(1 + u * (self.epsilon_t - 1))

    def weight(self, sigma):
        return 1 / sigma ** 2


@persistence.persistent_class
class VELoss(DenoisingLoss):
    """VE: σ = σ_min·(σ_max/σ_min)^u with u ~ U(0, 1), λ(σ) = 1/σ²."""

    def __init__(self, sigma_min=0.02, sigma_max=100, crop_sampler=CROP_SAMPLERS[0]):
        self._set_crop_sampler(crop_sampler)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max

    def sample_sigma(self, n, rng, device):
        u = self._uniform(n, rng, device)
        return self.sigma_min * ((self.sigma_max / self.sigma_min) ** u)

    def weight(self, sigma):
        return 1 / sigma ** 2


@persistence.persistent_class
class EDMLoss(DenoisingLoss):
    """EDM: ln σ ~ N(P_mean, P_std²), λ(σ) = (σ² + σ_d²)/(σ·σ_d)²."""

    def __init__(self, P_mean=-1.2, P_std=1.2, sigma_data=0.5, crop_sampler=CROP_SAMPLERS[0]):
        self._set_crop_sampler(crop_sampler)
        self.P_mean = P_mean
        self.P_std = P_std
        self.sigma_data = sigma_data

    def sample_sigma(self, n, rng, device):
        return (self._normal(n, rng, device) * self.P_std + self.P_mean).exp()

    def weight(self, sigma):
        return (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2
