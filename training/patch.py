"""Everything that makes Patch Diffusion differ from plain EDM training, in one place: the pixel
coordinates (`coord_grid` is the only formula), random patch crops, and `PatchSchedule`, which
picks each step's patch side identically on every rank."""

import math

import numpy as np
import torch

from dnnlib.util import FieldError
from torch_utils import misc

REAL_P = 0.5                  # the paper's full-image probability
LOSS_NORMS = ('mean', 'sum')  # the first is the default (docs/results.md); 'sum' is the original release's


def coord_channels(use_coords, pos_embed=0):
    """Number of extra input channels a network needs for its coordinates."""
    if not use_coords:
        return 0
    return 4 * pos_embed if pos_embed else 2


def image_hw(resolution):
    """(height, width) of an image side given as an int (square) or an (H, W) pair."""
    if isinstance(resolution, (int, np.integer)):
        return int(resolution), int(resolution)
    height, width = resolution
    return int(height), int(width)


def as_resolution(height, width):
    """The form `img_resolution` takes: the side for square images (as EDM's networks), else the
    pair (H, W)."""
    return int(height) if height == width else (int(height), int(width))


def shape_name(resolution):
    """'32' for a square side, '64x32' (width x height, as sizes are written on the command line)
    for a rectangle: used in messages and stat names."""
    height, width = image_hw(resolution)
    return f'{height}' if height == width else f'{width}x{height}'


def check_divisible(resolution, factor, field):
    """Raises a FieldError of `field` (the argument that gave `resolution`) unless both sides are
    multiples of the network's down-sampling factor."""
    height, width = image_hw(resolution)
    if height % factor != 0 or width % factor != 0:
        raise FieldError(field, f'{width}x{height} (WxH) is not divisible by the network\'s down-sampling factor {factor} on both sides')


def index_to_coord(index, resolution):
    """(index / (R − 1) − 0.5)·2 for a float tensor of pixel indices, evaluated as
    (2·index − (R − 1)) / (R − 1): a single rounding, so a full image spans exactly [−1, 1] (the
    ends are bit-exact for every R) and the grid is symmetric about 0."""
    if resolution <= 1:
        return torch.full_like(index, -1.0)
    return (2 * index - (resolution - 1)) / (resolution - 1)


def coord_grid(resolution, height, width=None, y_start=0, x_start=0, device=None):
    """(2, height, width) float32 coordinates of the pixels of a canvas whose top-left pixel sits
    at (y_start, x_start) of an image of side `resolution` (or (H, W): x runs over W, y over H).
    Beyond the image (a larger canvas or an offset) the values simply continue past [−1, 1]."""
    width = height if width is None else width
    full_h, full_w = image_hw(resolution)
    ys = index_to_coord(torch.arange(height, dtype=torch.float32, device=device) + y_start, full_h)
    xs = index_to_coord(torch.arange(width, dtype=torch.float32, device=device) + x_start, full_w)
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
    """One crop of side `patch_size` (or (h, w)) per (N, C, H, W) image at a uniformly random
    position, drawn from `rng` (a `BatchRNG`) or the global generator; returns (patches, coords
    (N, 2, h, w))."""
    n, _c, height, width = images.shape
    ph, pw = image_hw(patch_size)
    if ph > height or pw > width:
        raise ValueError(f'patch size {ph}x{pw} exceeds the image size {height}x{width}')
    offsets = _patch_offsets(n, height - ph + 1, width - pw + 1, rng, images.device)
    return crop_at(images, offsets, (ph, pw))


def crop_at(images, offsets, patch_size):
    """Crops of size `patch_size` at the (N, 2) top-left (row, col) `offsets`, with their
    coordinate channels: (patches, coords (N, 2, h, w))."""
    n, _c, height, width = images.shape
    ph, pw = image_hw(patch_size)
    offsets = offsets.to(images.device)
    rows = offsets[:, 0].reshape(n, 1, 1) + torch.arange(ph, device=images.device).reshape(1, ph, 1)
    cols = offsets[:, 1].reshape(n, 1, 1) + torch.arange(pw, device=images.device).reshape(1, 1, pw)
    flat_index = (rows * width + cols).reshape(n, 1, ph * pw)
    patches = images.flatten(2).gather(2, flat_index.expand(-1, images.shape[1], -1)).reshape(n, -1, ph, pw)
    xs = index_to_coord(cols.expand(n, ph, pw).to(torch.float32), width)
    ys = index_to_coord(rows.expand(n, ph, pw).to(torch.float32), height)
    return patches, torch.stack([xs, ys], dim=1)


def content_crop_probs(images, patch_size, uniform_share=0.5):
    """(N, positions) probability of each crop position (row-major top-left corners): `uniform_share`
    spread evenly, the rest in proportion to the crop's pixel standard deviation, so flat
    background crops are drawn less often and the importance weight 1/(positions·q) stays at most
    1/uniform_share."""
    ph, pw = image_hw(patch_size)
    x = images.detach().to(torch.float32)
    mean = torch.nn.functional.avg_pool2d(x, (ph, pw), stride=1)
    var = (torch.nn.functional.avg_pool2d(x * x, (ph, pw), stride=1) - mean * mean).clamp_min(0).sum(dim=1)
    std = var.sqrt().flatten(1)
    positions = std.shape[1]
    total = std.sum(dim=1, keepdim=True)
    content = torch.where(total > 0, std / total.clamp_min(torch.finfo(torch.float32).tiny), 1 / positions)
    return uniform_share / positions + (1 - uniform_share) * content


def extract_content_patches(images, patch_size, rng=None, uniform_share=0.5):
    """Like `extract_patches`, with crop positions drawn from `content_crop_probs`; also returns
    each crop's importance weight 1/(positions·q) of shape (N, 1, 1, 1), which makes the weighted
    loss an unbiased estimate of the uniform-crop loss."""
    n, _c, height, width = images.shape
    ph, pw = image_hw(patch_size)
    if ph > height or pw > width:
        raise ValueError(f'patch size {ph}x{pw} exceeds the image size {height}x{width}')
    probs = content_crop_probs(images, (ph, pw), uniform_share)
    u = (rng.rand(1) if rng is not None else torch.rand(n, 1)).to(probs.device, torch.float32)
    cdf = probs.cumsum(dim=1)
    index = torch.searchsorted(cdf, u * cdf[:, -1:]).clamp_max(probs.shape[1] - 1)
    cols = width - pw + 1
    offsets = torch.cat([index // cols, index % cols], dim=1)
    weights = 1 / (probs.shape[1] * probs.gather(1, index))
    patches, coords = crop_at(images, offsets, (ph, pw))
    return patches, coords, weights.reshape(n, 1, 1, 1).to(images.dtype)


def _patch_offsets(n, row_choices, col_choices, rng, device):
    """(n, 2) top-left (row, col) of the crops; one draw of two values when both axes have the same
    number of positions (so square images keep their random sequence), else one per axis."""
    if rng is None:
        if row_choices == col_choices:
            return torch.randint(0, row_choices, (n, 2), device=device)
        return torch.stack([torch.randint(0, row_choices, (n,), device=device),
                            torch.randint(0, col_choices, (n,), device=device)], dim=1)
    if row_choices == col_choices:
        return rng.randint(0, row_choices, 2)
    return torch.cat([rng.randint(0, row_choices, 1), rng.randint(0, col_choices, 1)], dim=1)


def default_patch_sizes(resolution, latent=False):
    """{R/4, R/2, R} in pixel space, {R/2, R} in latent space; a rectangle's patches keep its
    aspect ratio ((H/k, W/k) pairs), which trained better than squares (docs/data.md)."""
    divisors = [2, 1] if latent else [4, 2, 1]
    if isinstance(resolution, (int, np.integer)):
        return [resolution // k for k in divisors]
    height, width = image_hw(resolution)
    return [(height // k, width // k) for k in divisors]


def patch_pixels(size):
    """Pixels of a patch of side `size` or shape (h, w); patch sizes are ordered by it."""
    height, width = image_hw(size)
    return height * width


def patch_probabilities(num_sizes, real_p):
    """Probabilities of the sizes in ascending order: the full image takes `real_p`, the smaller
    sizes share 1 − real_p with weights 2, 3, 4, … (the paper's 2/5, 3/5 for three sizes)."""
    if num_sizes == 1:
        return [1.0]
    weights = np.arange(2, num_sizes + 1, dtype=np.float64)
    probs = list((1 - real_p) * weights / weights.sum()) + [real_p]
    return [float(p) for p in probs]


def parse_patch_sizes(text, resolution, down_factor, latent=False):
    """Validates `--patch-sizes` (comma-separated sides or WxH entries, or None for the default)
    against the image and the network's down-sampling factor; returns the sizes ordered by pixel
    count, always ending with the full image: sides (ints) for square images and square patches,
    else (h, w) pairs."""
    if text is None or (isinstance(text, str) and not text.strip()):
        sizes = default_patch_sizes(resolution, latent)
    else:
        try:
            sizes = [parse_patch_size(s) for s in (text.split(',') if isinstance(text, str) else text)]
        except ValueError:
            raise FieldError('patch_sizes', f'"{text}" is not a comma-separated list of sides or WxH sizes') from None
    height, width = image_hw(resolution)
    pairs = sorted(set(image_hw(s) for s in sizes) | {(height, width)}, key=lambda hw: (hw[0] * hw[1], hw))
    for ph, pw in pairs:
        name = shape_name((ph, pw))
        if height == width and ph == pw:
            if ph <= 0 or ph > height or height % ph != 0:
                raise FieldError('patch_sizes', f'{ph} does not divide the image side {height}')
        elif not (0 < ph <= height and 0 < pw <= width):
            raise FieldError('patch_sizes', f'{name} (WxH) does not fit in the {width}x{height} images')
        if ph % down_factor != 0 or pw % down_factor != 0:
            raise FieldError('patch_sizes', f'{name} is not divisible by the network\'s down-sampling factor {down_factor}')
    if all(ph == pw for ph, pw in pairs):
        return [ph for ph, _pw in pairs]
    return pairs


def parse_patch_size(entry):
    """'16' → 16 and '32x16' (WxH, width first) → (16, 32) as (H, W), as in `--patch-sizes` and the
    names of the per-size loss stats; ValueError for anything else."""
    if isinstance(entry, (int, np.integer)):
        return int(entry)
    parts = str(entry).strip().lower().split('x')
    if len(parts) == 1:
        return int(parts[0])
    if len(parts) != 2:
        raise ValueError(entry)
    return int(parts[1]), int(parts[0])


def check_schedule_options(real_p, real_p_end=None, progressive=False):
    """Raises a FieldError for `real_p`/`real_p_end` outside [0, 1] or `real_p_end` combined with
    `progressive`, which has no random draw to move."""
    for name, value in (('real_p', real_p), ('real_p_end', real_p_end)):
        if value is not None and not 0 <= value <= 1:
            raise FieldError(name, f'{value} is outside [0, 1]')
    if progressive and real_p_end is not None:
        raise FieldError('real_p_end', 'not with `progressive`, which has no random draw to move')


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
        self.resolution = as_resolution(*image_hw(resolution))
        self.patch_sizes = [int(s) if isinstance(s, (int, np.integer)) else image_hw(s) for s in patch_sizes]
        assert self.patch_sizes == sorted(self.patch_sizes, key=patch_pixels)
        assert image_hw(self.patch_sizes[-1]) == image_hw(self.resolution)
        self.real_p = real_p
        self.real_p_end = real_p_end
        self.probs = patch_probabilities(len(self.patch_sizes), real_p)
        self.seed = seed
        self.progressive = progressive
        self.loss_norm = loss_norm

    def batch_mul(self, size):
        """Images per image-slot for patches of side `size` (or (h, w)): the square root of the
        pixels saved, rounded down; R // size for square patches of square images."""
        return math.isqrt(patch_pixels(self.resolution) // patch_pixels(size))

    def loss_weight(self, size):
        """Factor on the loss of a step of side `size`: 1 for 'sum' (the original release's: a patch
        step weighs less than a full-image step), the pixel ratio (R/s)² for 'mean' (every pixel
        weighs the same)."""
        return 1.0 if self.loss_norm == 'sum' else patch_pixels(self.resolution) / patch_pixels(size)

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
        return self.patch_sizes[rng.choice(len(self.patch_sizes), p=self.probs_at(progress))]

    def expected_batch_mul(self):
        """Average images per image-slot over the random draw (at the start of training)."""
        return float(sum(p * self.batch_mul(s) for p, s in zip(self.probs, self.patch_sizes)))
