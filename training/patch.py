"""Everything that makes Patch Diffusion differ from plain EDM training, in one place: the pixel
coordinates (`coord_grid` is the only formula), random patch crops, and `PatchSchedule`, which
picks each step's patch side identically on every rank."""

import math

import numpy as np
import torch

from dnnlib.util import UserError
from torch_utils import misc

REAL_P = 0.5                  # the paper's full-image probability
LOSS_NORMS = ('mean', 'sum')  # the first is the default (docs/results.md); 'sum' is the original release's


def coord_channels(use_coords, pos_embed=0):
    """Number of extra input channels a network needs for its coordinates."""
    if not use_coords:
        return 0
    return 4 * pos_embed if pos_embed else 2


def index_to_coord(index, resolution):
    """(index / (R − 1) − 0.5)·2 for a float tensor of pixel indices, evaluated as
    (2·index − (R − 1)) / (R − 1): a single rounding, so a full image spans exactly [−1, 1] (the
    ends are bit-exact for every R) and the grid is symmetric about 0."""
    if resolution <= 1:
        return torch.full_like(index, -1.0)
    return (2 * index - (resolution - 1)) / (resolution - 1)


def coord_grid(resolution, height, width=None, y_start=0, x_start=0, device=None):
    """(2, height, width) float32 coordinates of the pixels of a canvas whose top-left pixel sits
    at (y_start, x_start) of an image of side `resolution`. Beyond the image (a larger canvas or
    an offset) the values simply continue past [−1, 1]."""
    width = height if width is None else width
    ys = index_to_coord(torch.arange(height, dtype=torch.float32, device=device) + y_start, resolution)
    xs = index_to_coord(torch.arange(width, dtype=torch.float32, device=device) + x_start, resolution)
    return torch.stack([xs.reshape(1, -1).expand(height, -1), ys.reshape(-1, 1).expand(-1, width)])


def coord_features(coords, pos_embed=0):
    """The channels fed to the network for (N, 2, H, W) coordinates: the coordinates themselves,
    or [sin(2^k π c), cos(2^k π c)] for k < pos_embed and both axes (4·pos_embed channels)."""
    if not pos_embed:
        return coords
    freqs = (2.0 ** torch.arange(pos_embed, dtype=torch.float32, device=coords.device)) * math.pi
    angles = coords.unsqueeze(2) * freqs.reshape(1, 1, -1, 1, 1)
    angles = angles.flatten(1, 2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def extract_patches(images, patch_size, rng=None):
    """One `patch_size` crop per (N, C, R, R) image at a uniformly random position, drawn from `rng`
    (a `BatchRNG`) or the global generator; returns (patches, coords (N, 2, s, s))."""
    n, _c, height, width = images.shape
    s = int(patch_size)
    if s > height or s > width:
        raise ValueError(f'patch size {s} exceeds the image size {height}x{width}')
    resolution = height
    if rng is None:
        offsets = torch.randint(0, height - s + 1, (n, 2), device=images.device)
    else:
        offsets = rng.randint(0, height - s + 1, 2).to(images.device)
    rows = offsets[:, 0].reshape(n, 1, 1) + torch.arange(s, device=images.device).reshape(1, s, 1)
    cols = offsets[:, 1].reshape(n, 1, 1) + torch.arange(s, device=images.device).reshape(1, 1, s)
    flat_index = (rows * width + cols).reshape(n, 1, s * s)
    patches = images.flatten(2).gather(2, flat_index.expand(-1, images.shape[1], -1)).reshape(n, -1, s, s)
    coords = index_to_coord(torch.stack([cols.expand(n, s, s), rows.expand(n, s, s)], dim=1).to(torch.float32), resolution)
    return patches, coords


def default_patch_sizes(resolution, latent=False):
    """{R/4, R/2, R} in pixel space, {R/2, R} in latent space."""
    if latent:
        return [resolution // 2, resolution]
    return [resolution // 4, resolution // 2, resolution]


def patch_probabilities(num_sizes, real_p):
    """Probabilities of the sizes in ascending order: the full image takes `real_p`, the smaller
    sizes share 1 − real_p with weights 2, 3, 4, … (the paper's 2/5, 3/5 for three sizes)."""
    if num_sizes == 1:
        return [1.0]
    weights = np.arange(2, num_sizes + 1, dtype=np.float64)
    probs = list((1 - real_p) * weights / weights.sum()) + [real_p]
    return [float(p) for p in probs]


def parse_patch_sizes(text, resolution, down_factor, latent=False):
    """Validates `--patch-sizes` (comma-separated, or None for the default) against the image
    side and the network's down-sampling factor; returns the ascending list of sides, always
    ending with the full image."""
    if text is None or (isinstance(text, str) and not text.strip()):
        sizes = default_patch_sizes(resolution, latent)
    else:
        try:
            sizes = [int(s) for s in (text.split(',') if isinstance(text, str) else text)]
        except ValueError:
            raise UserError(f'--patch-sizes: "{text}" is not a comma-separated list of integers') from None
    sizes = sorted(set(sizes) | {resolution})
    for s in sizes:
        if s <= 0 or s > resolution or resolution % s != 0:
            raise UserError(f'--patch-sizes: {s} does not divide the image side {resolution}')
        if s % down_factor != 0:
            raise UserError(f'--patch-sizes: {s} is not divisible by the network\'s down-sampling factor {down_factor}')
    return sizes


def check_schedule_options(real_p, real_p_end=None, progressive=False):
    """Raises a UserError for `--real_p`/`--real_p-end` outside [0, 1] or combined with
    `--progressive`, which has no random draw to move."""
    for name, value in (('--real_p', real_p), ('--real_p-end', real_p_end)):
        if value is not None and not 0 <= value <= 1:
            raise UserError(f'{name}: {value} is outside [0, 1]')
    if progressive and real_p_end is not None:
        raise UserError('--real_p-end: not with --progressive, which has no random draw to move')


class PatchSchedule:
    """Picks each step's patch side and the image multiplier and loss weight that go with it; its
    keyword arguments are the training loop's `patch_kwargs`.

    Step k draws from a generator seeded with (seed, k), so every rank agrees without communicating
    and a resumed run repeats the sequence. `progressive` orders the sizes by training progress
    instead; `real_p_end` moves the full-image probability linearly to that value by the end."""

    def __init__(self, resolution, patch_sizes, real_p=REAL_P, seed=0, progressive=False, real_p_end=None,
                 loss_norm=LOSS_NORMS[0]):
        check_schedule_options(real_p, real_p_end, progressive)
        if loss_norm not in LOSS_NORMS:
            raise ValueError(f'unknown loss normalisation "{loss_norm}"')
        self.resolution = int(resolution)
        self.patch_sizes = [int(s) for s in patch_sizes]
        assert self.patch_sizes == sorted(self.patch_sizes) and self.patch_sizes[-1] == self.resolution
        self.real_p = real_p
        self.real_p_end = real_p_end
        self.probs = patch_probabilities(len(self.patch_sizes), real_p)
        self.seed = seed
        self.progressive = progressive
        self.loss_norm = loss_norm

    def batch_mul(self, size):
        """Images per image-slot for patches of side `size`: R // size."""
        return self.resolution // int(size)

    def loss_weight(self, size):
        """Factor on the loss of a step of side `size`: 1 for 'sum' (the original release's: a patch
        step weighs less than a full-image step), (R/s)² for 'mean' (every pixel weighs the same)."""
        return 1.0 if self.loss_norm == 'sum' else (self.resolution / int(size)) ** 2

    def probs_at(self, progress):
        """Probabilities of the sizes when a fraction `progress` of training is done."""
        if self.real_p_end is None:
            return self.probs
        fraction = min(max(float(progress), 0.0), 1.0)
        return patch_probabilities(len(self.patch_sizes), self.real_p + (self.real_p_end - self.real_p) * fraction)

    def size_for_step(self, step, progress=0.0):
        """Patch side for training step `step`; `progress` is the fraction of training done
        (images seen / total images: the same on every rank and after a resume)."""
        if self.progressive:
            edges = np.cumsum(self.probs)
            index = int(np.searchsorted(edges, progress, side='right'))
            candidates = [i for i in range(index, len(self.patch_sizes)) if self.probs[i] > 0]
            return self.patch_sizes[candidates[0] if candidates else -1]
        rng = np.random.default_rng(misc.seed_to_int(self.seed, step))
        return int(self.patch_sizes[rng.choice(len(self.patch_sizes), p=self.probs_at(progress))])

    def expected_batch_mul(self):
        """Average images per image-slot over the random draw (at the start of training)."""
        return float(sum(p * self.batch_mul(s) for p, s in zip(self.probs, self.patch_sizes)))
