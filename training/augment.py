"""Non-leaking augmentation: random geometric and colour transforms plus their labels.

Each image is transformed with probability-gated random operations, and the parameters actually
used are returned as "augmentation labels" that condition the network (`augment_dim`), so the
network can learn which transform it is looking at instead of learning to generate transformed
images. Sampling passes zero labels, which means "no augmentation".

Conventions (all in image coordinates: x = column to the right, y = row downwards):
- Geometric ops build one forward 2-D affine map per image, about the image centre; the output
  pixel at q takes the input at M⁻¹q, sampled once with bilinear `grid_sample` and reflection
  padding. Images whose map only moves pixel centres onto pixel centres (flips, quarter turns,
  integer shifts) are copied by exact index look-up instead, so they are bit-exact.
- xflip mirrors columns, yflip mirrors rows; translations (tx, ty) are fractions of the image
  side and move the content right/down by tx·W, ty·H pixels; rotations by a positive angle turn
  the content counter-clockwise on screen, so θ = π/2 equals `torch.rot90(x, 1, dims=(2, 3))`;
  scale s > 1 magnifies.
- Colour ops build one 4x4 matrix per image acting on [r, g, b, 1] (values in [-1, 1]):
  brightness adds b, contrast scales the deviation from the image's mean colour by c, lumaflip
  reflects through the plane normal to the luma axis v = (1, 1, 1)/√3 at mid-grey, hue rotates
  about v by θ, saturation scales the part orthogonal to v by s. They need C == 3 and are skipped
  (labels stay 0) for grey images and latents.

Random draws. One call draws exactly two tensors, in this order, whatever ops are enabled:
  U = rng.rand(23)   uniform [0, 1), shape (N, 23)
  Z = rng.randn(7)   standard normal, shape (N, 7)
(or `torch.rand`/`torch.randn` on the images' device when rng is None). Columns of U:
  0 xflip gate, 1 xflip bit, 2 yflip gate, 3 yflip bit, 4 rotate_int gate, 5 quarter turns,
  6 translate_int gate, 7 tx, 8 ty, 9 scale gate, 10 rotate_frac gate, 11 angle,
  12 aniso gate, 13 axis angle, 14 axis-rotation gate, 15 translate_frac gate,
  16 brightness gate, 17 contrast gate, 18 lumaflip gate, 19 lumaflip bit,
  20 hue gate, 21 hue angle, 22 saturation gate.
Columns of Z: 0 scale, 1 aniso, 2 translate_frac tx, 3 translate_frac ty, 4 brightness,
  5 contrast, 6 saturation.
An op is applied to an image when its gate column is < strength·p.

Label columns, for each ENABLED op (strength > 0) in this order; 0 where the op was not drawn:
  xflip [flag], yflip [flag], rotate_int [cos θ − 1, sin θ] (θ = k·π/2), translate_int [tx, ty],
  scale [log2 s], rotate_frac [cos θ − 1, sin θ], aniso [w·cos φ, w·sin φ], translate_frac
  [tx, ty], brightness [b], contrast [log2 c], lumaflip [flag], hue [cos θ − 1, sin θ],
  saturation [log2 s].
EDM's configuration (xflip, yflip, scale, rotate_frac, aniso, translate_frac) gives 9 columns.
"""

import math

import torch

from torch_utils import persistence

# (op name, number of label columns), in label order.
_LABEL_LAYOUT = (
    ('xflip', 1), ('yflip', 1), ('rotate_int', 2), ('translate_int', 2), ('scale', 1),
    ('rotate_frac', 2), ('aniso', 2), ('translate_frac', 2), ('brightness', 1), ('contrast', 1),
    ('lumaflip', 1), ('hue', 2), ('saturation', 1),
)
_NUM_UNIFORM = 23
_NUM_NORMAL = 7
_INTEGRAL_TOL = 1e-3  # pixels; a source coordinate this close to a pixel centre counts as exact


@persistence.persistent_class
class AugmentPipe:
    """EDM-style augmentation; `pipe(images, rng)` returns (augmented images, labels).

    Keyword names and defaults are EDM's, so `training_options.json` files keep working. Each op
    is applied to each image with probability `strength · p` (strengths such as 1e8 mean
    "always"); the `*_std`, `*_max` and `aniso_rotate_prob` options set the parameter ranges."""

    def __init__(self, p=1, xflip=0, yflip=0, rotate_int=0, translate_int=0, translate_int_max=0.125,
                 scale=0, rotate_frac=0, aniso=0, translate_frac=0, scale_std=0.2, rotate_frac_max=1,
                 aniso_std=0.2, aniso_rotate_prob=0.5, translate_frac_std=0.125,
                 brightness=0, contrast=0, lumaflip=0, hue=0, saturation=0,
                 brightness_std=0.2, contrast_std=0.5, hue_max=1, saturation_std=1):
        self.p = float(p)
        self.xflip = float(xflip)
        self.yflip = float(yflip)
        self.rotate_int = float(rotate_int)
        self.translate_int = float(translate_int)
        self.translate_int_max = float(translate_int_max)
        self.scale = float(scale)
        self.rotate_frac = float(rotate_frac)
        self.aniso = float(aniso)
        self.translate_frac = float(translate_frac)
        self.scale_std = float(scale_std)
        self.rotate_frac_max = float(rotate_frac_max)
        self.aniso_std = float(aniso_std)
        self.aniso_rotate_prob = float(aniso_rotate_prob)
        self.translate_frac_std = float(translate_frac_std)
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.lumaflip = float(lumaflip)
        self.hue = float(hue)
        self.saturation = float(saturation)
        self.brightness_std = float(brightness_std)
        self.contrast_std = float(contrast_std)
        self.hue_max = float(hue_max)
        self.saturation_std = float(saturation_std)

    @property
    def label_dim(self):
        """Number of label columns (the network's `augment_dim`): enabled ops only."""
        return sum(width for name, width in _LABEL_LAYOUT if getattr(self, name) > 0)

    def __call__(self, images, rng=None):
        """images: float (N, C, H, W) in [-1, 1]. rng: a `torch_utils.misc.BatchRNG` with N rows,
        or None for torch's global generator. Returns (images, float32 labels (N, label_dim))."""
        n, c, h, w = images.shape
        device = images.device
        uni, nrm = self._draw(n, device, rng)
        params = {}
        inv = self._geometric(uni, nrm, h, w, params)
        x = images.to(torch.float32)
        if inv is not None:
            x = _warp(x, inv)
        if c == 3:
            mat = self._color(uni, nrm, x, params)
            if mat is not None:
                x = _apply_color(x, mat)
        labels = self._labels(params, n, device)
        return x.to(images.dtype), labels

    # ----------------------------------------------------------------------------------------
    # Random draws and gates.

    @staticmethod
    def _draw(n, device, rng):
        """The two random tensors of one call (see the module docstring for their columns)."""
        if rng is None:
            uni = torch.rand([n, _NUM_UNIFORM], device=device)
            nrm = torch.randn([n, _NUM_NORMAL], device=device)
        else:
            assert rng.num_rows == n, f'rng has {rng.num_rows} rows for {n} images'
            uni = rng.rand(_NUM_UNIFORM).to(device=device, dtype=torch.float32)
            nrm = rng.randn(_NUM_NORMAL).to(device=device, dtype=torch.float32)
        return uni, nrm

    def _gate(self, strength, u):
        """Boolean (N,): which images get an op of this strength."""
        return u < strength * self.p

    # ----------------------------------------------------------------------------------------
    # Geometry.

    def _geometric(self, uni, nrm, h, w, params):
        """Inverse affine maps (N, 3, 3) in centred pixel units (output → input), or None when no
        geometric op is enabled (decided without looking at the draws, which live on the GPU).
        Records label parts in `params`."""
        n = uni.shape[0]
        zero = uni.new_zeros(n)
        steps = []  # forward maps in application order, each given by its inverse

        if self.xflip > 0:
            flag = (self._gate(self.xflip, uni[:, 0]) & (uni[:, 1] < 0.5)).float()
            params['xflip'] = [flag]
            steps.append(_scale_mat(1 - 2 * flag, zero + 1))
        if self.yflip > 0:
            flag = (self._gate(self.yflip, uni[:, 2]) & (uni[:, 3] < 0.5)).float()
            params['yflip'] = [flag]
            steps.append(_scale_mat(zero + 1, 1 - 2 * flag))
        if self.rotate_int > 0:
            k = torch.where(self._gate(self.rotate_int, uni[:, 4]), (uni[:, 5] * 4).floor().clamp(max=3), zero)
            cos = torch.where(k % 2 == 0, 1 - k, zero)  # 1, 0, -1, 0 for k = 0..3
            sin = torch.where(k % 2 == 1, 2 - k, zero)  # 0, 1, 0, -1
            params['rotate_int'] = [cos - 1, sin]
            steps.append(_rotate_mat(cos, -sin))
        if self.translate_int > 0:
            on = self._gate(self.translate_int, uni[:, 6])
            px = torch.where(on, ((uni[:, 7] * 2 - 1) * self.translate_int_max * w).round(), zero)
            py = torch.where(on, ((uni[:, 8] * 2 - 1) * self.translate_int_max * h).round(), zero)
            params['translate_int'] = [px / w, py / h]
            steps.append(_translate_mat(-px, -py))
        if self.scale > 0:
            log2s = torch.where(self._gate(self.scale, uni[:, 9]), nrm[:, 0] * self.scale_std, zero)
            params['scale'] = [log2s]
            inv_s = torch.exp2(-log2s)
            steps.append(_scale_mat(inv_s, inv_s))
        if self.rotate_frac > 0:
            theta = torch.where(self._gate(self.rotate_frac, uni[:, 10]),
                                (uni[:, 11] * 2 - 1) * math.pi * self.rotate_frac_max, zero)
            params['rotate_frac'] = [theta.cos() - 1, theta.sin()]
            steps.append(_rotate_mat(theta.cos(), -theta.sin()))
        if self.aniso > 0:
            on = self._gate(self.aniso, uni[:, 12])
            wgt = torch.where(on, nrm[:, 1] * self.aniso_std, zero)
            phi = torch.where(on & (uni[:, 14] < self.aniso_rotate_prob), (uni[:, 13] * 2 - 1) * math.pi, zero)
            params['aniso'] = [wgt * phi.cos(), wgt * phi.sin()]
            # Stretch by 2^w along the axis at angle φ and by 2^-w across it: R(φ)·D·R(−φ).
            stretch = _scale_mat(torch.exp2(-wgt), torch.exp2(wgt))
            steps.append(_rotate_mat(phi.cos(), phi.sin()) @ stretch @ _rotate_mat(phi.cos(), -phi.sin()))
        if self.translate_frac > 0:
            on = self._gate(self.translate_frac, uni[:, 15])
            tx = torch.where(on, nrm[:, 2] * self.translate_frac_std, zero)
            ty = torch.where(on, nrm[:, 3] * self.translate_frac_std, zero)
            params['translate_frac'] = [tx, ty]
            steps.append(_translate_mat(-tx * w, -ty * h))

        if not steps:
            return None
        inv = steps[0]
        for step in steps[1:]:
            inv = inv @ step  # M = F_K…F_1, so M⁻¹ = F_1⁻¹…F_K⁻¹
        return inv

    # ----------------------------------------------------------------------------------------
    # Colour.

    def _color(self, uni, nrm, images, params):
        """Colour matrices (N, 4, 4) acting on [r, g, b, 1], or None when no
        colour op is enabled. Records label parts in `params`."""
        n = uni.shape[0]
        zero = uni.new_zeros(n)
        eye = torch.eye(4, device=uni.device).expand(n, 4, 4)
        mat = eye
        axis = uni.new_full([3], 1 / math.sqrt(3))
        proj = torch.zeros(4, 4, device=uni.device)
        proj[:3, :3] = torch.outer(axis, axis)  # projection onto the luma axis
        names = ('brightness', 'contrast', 'lumaflip', 'hue', 'saturation')

        if self.brightness > 0:
            b = torch.where(self._gate(self.brightness, uni[:, 16]), nrm[:, 4] * self.brightness_std, zero)
            params['brightness'] = [b]
            mat = _color_translate(b.unsqueeze(1).expand(n, 3)) @ mat
        if self.contrast > 0:
            log2c = torch.where(self._gate(self.contrast, uni[:, 17]), nrm[:, 5] * self.contrast_std, zero)
            params['contrast'] = [log2c]
            mean = torch.cat([images.mean(dim=(2, 3)), uni.new_ones(n, 1)], dim=1)
            mean = (mat @ mean.unsqueeze(2))[:, :3, 0]  # mean colour after the ops so far
            scale = torch.exp2(log2c).reshape(n, 1, 1)
            about_mean = _color_translate(mean) @ (eye + (scale - 1) * _rgb_part(eye)) @ _color_translate(-mean)
            mat = about_mean @ mat
        if self.lumaflip > 0:
            flag = (self._gate(self.lumaflip, uni[:, 18]) & (uni[:, 19] < 0.5)).float()
            params['lumaflip'] = [flag]
            mat = (eye - 2 * flag.reshape(n, 1, 1) * proj) @ mat
        if self.hue > 0:
            theta = torch.where(self._gate(self.hue, uni[:, 20]), (uni[:, 21] * 2 - 1) * math.pi * self.hue_max, zero)
            params['hue'] = [theta.cos() - 1, theta.sin()]
            mat = _rotate_about(axis, theta) @ mat
        if self.saturation > 0:
            log2s = torch.where(self._gate(self.saturation, uni[:, 22]), nrm[:, 6] * self.saturation_std, zero)
            params['saturation'] = [log2s]
            scale = torch.exp2(log2s).reshape(n, 1, 1)
            mat = (eye + (scale - 1) * (_rgb_part(eye) - proj)) @ mat
        return mat if any(name in params for name in names) else None

    # ----------------------------------------------------------------------------------------
    # Labels.

    def _labels(self, params, n, device):
        """Assembles the label columns of the enabled ops; ops not applied (e.g. colour ops on
        C != 3 images) get zeros."""
        columns = []
        for name, width in _LABEL_LAYOUT:
            if getattr(self, name) <= 0:
                continue
            parts = params.get(name)
            if parts is None:
                columns.append(torch.zeros(n, width, device=device))
            else:
                columns.append(torch.stack(parts, dim=1))
        if not columns:
            return torch.zeros(n, 0, device=device)
        return torch.cat(columns, dim=1).to(torch.float32)


# --------------------------------------------------------------------------------------------
# Matrix helpers; all return batched (N, 3, 3) or (N, 4, 4) float32 tensors.

def _affine(a, b, c, d, tx, ty):
    """[[a, b, tx], [c, d, ty], [0, 0, 1]] from (N,) tensors."""
    zero = torch.zeros_like(a)
    one = torch.ones_like(a)
    return torch.stack([a, b, tx, c, d, ty, zero, zero, one], dim=1).reshape(-1, 3, 3)


def _scale_mat(sx, sy):
    zero = torch.zeros_like(sx)
    return _affine(sx, zero, zero, sy, zero, zero)


def _translate_mat(tx, ty):
    one = torch.ones_like(tx)
    zero = torch.zeros_like(tx)
    return _affine(one, zero, zero, one, tx, ty)


def _rotate_mat(cos, sin):
    """Counter-clockwise on screen (y points down) by the angle with this cos and sin."""
    return _affine(cos, sin, -sin, cos, torch.zeros_like(cos), torch.zeros_like(cos))


def _rgb_part(mat):
    """The matrix with its homogeneous row and column zeroed (for scaling colour deviations)."""
    mask = torch.zeros(4, 4, device=mat.device)
    mask[:3, :3] = 1
    return mat * mask


def _color_translate(offset):
    """4x4 matrices adding `offset` (N, 3) to the colour."""
    mat = torch.eye(4, device=offset.device).repeat(offset.shape[0], 1, 1)
    mat[:, :3, 3] = offset
    return mat


def _rotate_about(axis, theta):
    """4x4 matrices rotating colours about the unit `axis` (3,) by `theta` (N,) (Rodrigues)."""
    n = theta.shape[0]
    cross = torch.zeros(3, 3, device=axis.device)
    cross[0, 1], cross[0, 2], cross[1, 2] = -axis[2], axis[1], -axis[0]
    cross = cross - cross.T
    outer = torch.outer(axis, axis)
    cos = theta.cos().reshape(n, 1, 1)
    sin = theta.sin().reshape(n, 1, 1)
    rot = cos * torch.eye(3, device=axis.device) + sin * cross + (1 - cos) * outer
    mat = torch.eye(4, device=axis.device).repeat(n, 1, 1)
    mat[:, :3, :3] = rot
    return mat


# --------------------------------------------------------------------------------------------
# Applying the transforms.

def _source_coords(inv, h, w):
    """Input pixel coordinates (N, H, W, 2) as (column, row) sampled by each output pixel."""
    ys = torch.arange(h, device=inv.device, dtype=torch.float32) - (h - 1) / 2
    xs = torch.arange(w, device=inv.device, dtype=torch.float32) - (w - 1) / 2
    grid = torch.stack([xs.reshape(1, w).expand(h, w), ys.reshape(h, 1).expand(h, w), torch.ones(h, w, device=inv.device)], dim=2)
    src = torch.einsum('nij,hwj->nhwi', inv[:, :2, :], grid)
    return torch.stack([src[..., 0] + (w - 1) / 2, src[..., 1] + (h - 1) / 2], dim=-1)


def _reflect(index, size):
    """Folds integer indices into [0, size) by mirror reflection about the outer pixel edges
    (index −1 → 0), the same padding `grid_sample(padding_mode='reflection')` uses."""
    period = 2 * size
    index = index.remainder(period)
    return torch.where(index < size, index, period - 1 - index)


def _warp(images, inv):
    """Resamples each image at M⁻¹q: exact look-up where all source points are pixel centres,
    bilinear with reflection padding elsewhere. Both are computed for every image and one is
    picked per image, which costs less than asking the GPU which images need which."""
    n, c, h, w = images.shape
    src = _source_coords(inv, h, w)
    exact = _is_integral(src)
    rounded = src.round().long()
    col = _reflect(rounded[..., 0], w)
    row = _reflect(rounded[..., 1], h)
    index = (row * w + col).reshape(n, 1, h * w).expand(n, c, h * w)
    looked_up = images.reshape(n, c, h * w).gather(2, index).reshape(n, c, h, w)
    # Pixel centres in grid_sample's units (align_corners=False).
    grid = torch.stack([(src[..., 0] + 0.5) * (2 / w) - 1, (src[..., 1] + 0.5) * (2 / h) - 1], dim=-1)
    sampled = torch.nn.functional.grid_sample(images, grid, mode='bilinear', padding_mode='reflection', align_corners=False)
    return torch.where(exact.reshape(n, 1, 1, 1), looked_up, sampled)


def _is_integral(src):
    """(N,) bool: whether every source point of an image is a pixel centre. The map is affine,
    so checking the top-left pixel and its right and lower neighbours suffices."""
    h, w = src.shape[1:3]
    probes = torch.stack([src[:, 0, 0], src[:, 0, min(1, w - 1)], src[:, min(1, h - 1), 0]], dim=1)
    return (probes - probes.round()).abs().flatten(1).amax(dim=1) < _INTEGRAL_TOL


def _apply_color(images, mat):
    """Applies (N, 4, 4) colour matrices to (N, 3, H, W) images."""
    n, c, h, w = images.shape
    flat = images.reshape(n, c, h * w)
    out = torch.baddbmm(mat[:, :3, 3:], mat[:, :3, :3], flat)
    return out.reshape(n, c, h, w)
