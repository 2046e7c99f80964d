"""Denoiser networks and their preconditioning.

Architectures (names and keyword arguments as in EDM, so that EDM's option files keep working):
- `SongUNet`: the DDPM++ / NCSN++ U-Net of Song et al.
- `DhariwalUNet`: the ADM U-Net of Dhariwal & Nichol.
Preconditioning wrappers, D(x; σ) = c_skip·x + c_out·F(c_in·x; c_noise):
- `VPPrecond`, `VEPrecond`, `iDDPMPrecond` (sampling only), `EDMPrecond`.
Every wrapper can take patch coordinates (`use_coords=True`): two extra input channels, x then y,
appended after the c_in scaling (or 4F sin/cos features with `pos_embed=F`); see
`training.patch.coord_grid`. `img_resolution` is the side of square images (an int, as in EDM)
or the pair (H, W) of rectangular ones; both sides must be multiples of the down-sampling factor.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

from torch_utils import misc, persistence
from training import patch, schedules

# ----------------------------------------------------------------------------------------------
# Layers.


def weight_init(shape, mode, fan_in, fan_out):
    """Random initial weights for the four schemes the architectures use."""
    if mode == 'xavier_uniform':
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == 'xavier_normal':
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == 'kaiming_uniform':
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == 'kaiming_normal':
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f'unknown init_mode "{mode}"')


@persistence.persistent_class
class Linear(torch.nn.Module):
    """Fully connected layer whose initialisation is set by (init_mode, init_weight, init_bias)."""

    def __init__(self, in_features, out_features, bias=True, init_mode='kaiming_normal', init_weight=1, init_bias=0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = torch.nn.Parameter(weight_init([out_features, in_features], init_mode, in_features, out_features) * init_weight)
        self.bias = torch.nn.Parameter(weight_init([out_features], init_mode, in_features, out_features) * init_bias) if bias else None

    def forward(self, x):
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight.to(x.dtype), bias)


def _resample_kernel(taps):
    """Separable 2-D low-pass kernel from 1-D taps, normalised to unit gain."""
    taps = torch.as_tensor(taps, dtype=torch.float32)
    return (torch.outer(taps, taps) / taps.sum().square())[None, None]


@persistence.persistent_class
class Conv2d(torch.nn.Module):
    """Convolution with optional 2x up- or down-sampling through a fixed low-pass filter.

    `kernel=0` makes a pure resampling layer without weights. `fused_resample=True` performs the
    resampling and the convolution back to back with the padding folded together (NCSN++'s
    residual encoder uses it)."""

    def __init__(self, in_channels, out_channels, kernel, bias=True, up=False, down=False, resample_filter=(1, 1),
                 fused_resample=False, init_mode='kaiming_normal', init_weight=1, init_bias=0):
        assert not (up and down)
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        fan_in, fan_out = in_channels * kernel * kernel, out_channels * kernel * kernel
        self.weight = torch.nn.Parameter(weight_init([out_channels, in_channels, kernel, kernel], init_mode, fan_in, fan_out) * init_weight) if kernel else None
        self.bias = torch.nn.Parameter(weight_init([out_channels], init_mode, fan_in, fan_out) * init_bias) if kernel and bias else None
        self.register_buffer('resample_filter', _resample_kernel(resample_filter) if up or down else None)
        self.box_filter = tuple(resample_filter) == (1, 1)

    def _upsample(self, x, pad):
        if self.box_filter and pad == 0 and x.dtype != torch.float32:  # bf16/fp16: faster than a depthwise conv
            return F.interpolate(x, scale_factor=2, mode='nearest')  # what the 2x2 box filter computes
        channels = x.shape[1]
        f = self.resample_filter.to(x.dtype).mul(4).tile([channels, 1, 1, 1])
        return F.conv_transpose2d(x, f, groups=channels, stride=2, padding=pad)

    def _downsample(self, x, pad):
        if self.box_filter and pad == 0 and x.dtype != torch.float32:  # as in _upsample (fp32: the conv is faster)
            return F.avg_pool2d(x, 2)
        channels = x.shape[1]
        f = self.resample_filter.to(x.dtype).tile([channels, 1, 1, 1])
        return F.conv2d(x, f, groups=channels, stride=2, padding=pad)

    def forward(self, x):
        w = self.weight.to(x.dtype) if self.weight is not None else None
        b = self.bias.to(x.dtype) if self.bias is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (self.resample_filter.shape[-1] - 1) // 2 if self.resample_filter is not None else 0
        if self.fused_resample and self.up and w is not None:
            x = self._upsample(x, max(f_pad - w_pad, 0))
            return F.conv2d(x, w, b, padding=max(w_pad - f_pad, 0))
        if self.fused_resample and self.down and w is not None:
            x = self._downsample(F.conv2d(x, w, padding=w_pad + f_pad), 0)
            return x.add_(b.reshape(1, -1, 1, 1)) if b is not None else x
        if self.up:
            x = self._upsample(x, f_pad)
        if self.down:
            x = self._downsample(x, f_pad)
        return F.conv2d(x, w, b, padding=w_pad) if w is not None else x


@persistence.persistent_class
class GroupNorm(torch.nn.Module):
    """Group normalisation with min(num_groups, C / min_channels_per_group) groups, as EDM; for
    channel counts where that is zero or does not divide C (e.g. --cbase=2 or 34), the largest
    count below it that divides C, so that any width trains."""

    def __init__(self, num_channels, num_groups=32, min_channels_per_group=4, eps=1e-5):
        super().__init__()
        self.num_groups = group_count(num_channels, num_groups, min_channels_per_group)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_channels))
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        return F.group_norm(x, num_groups=self.num_groups, weight=self.weight.to(x.dtype), bias=self.bias.to(x.dtype), eps=self.eps)


def group_count(num_channels, num_groups, min_channels_per_group):
    """Groups of GroupNorm: EDM's min(num_groups, C // min_channels_per_group), lowered to the
    nearest count that divides C, and at least 1."""
    groups = max(1, min(num_groups, num_channels // min_channels_per_group))
    while num_channels % groups:
        groups -= 1
    return groups


def attention(qkv):
    """Softmax attention over spatial positions with the softmax computed in float32.

    qkv: (batch·heads, channels, 3, positions). Returns (batch·heads, channels, positions).
    Queries, keys and values are laid out as contiguous (N, 1, positions, channels) tensors, the
    layout in which `scaled_dot_product_attention` takes its fused kernels (strided views fall back
    to the unfused path). The result is
    contiguous: a channels-last view would carry its layout into every later layer."""
    q, k, v = qkv.float().permute(2, 0, 3, 1).contiguous().unsqueeze(2).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v)
    return out.squeeze(1).to(qkv.dtype).transpose(1, 2).contiguous()


@persistence.persistent_class
class UNetBlock(torch.nn.Module):
    """Residual block shared by both U-Nets: norm-act-conv, embedding injection, norm-act-dropout-
    conv, a skip path (projected when the shape changes), and optional multi-head self-attention.

    `adaptive_scale=True` (ADM) turns the embedding into a per-channel scale and shift of the
    second normalisation; otherwise (DDPM++) it is added as a bias."""

    def __init__(self, in_channels, out_channels, emb_channels, up=False, down=False, attention=False,
                 num_heads=None, channels_per_head=64, dropout=0, skip_scale=1, eps=1e-5,
                 resample_filter=(1, 1), resample_proj=False, adaptive_scale=True,
                 init=None, init_zero=None, init_attn=None):
        super().__init__()
        init = init if init is not None else {}
        init_zero = init_zero if init_zero is not None else dict(init_weight=0)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        if not attention:
            self.num_heads = 0
        else:
            self.num_heads = num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale

        self.norm0 = GroupNorm(num_channels=in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, up=up, down=down, resample_filter=resample_filter, **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(num_channels=out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)

        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel=kernel, up=up, down=down, resample_filter=resample_filter, **init)

        if self.num_heads:
            self.norm2 = GroupNorm(num_channels=out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1, **(init_attn if init_attn is not None else init))
            self.proj = Conv2d(out_channels, out_channels, kernel=1, **init_zero)

    def forward(self, x, emb):
        residual = x
        x = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb).unsqueeze(2).unsqueeze(3).to(x.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(chunks=2, dim=1)
            x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = F.silu(self.norm1(x.add_(params)))
        x = self.conv1(dropout(x, self.dropout, self.training))
        x = x.add_(self.skip(residual) if self.skip is not None else residual)
        x = x * self.skip_scale

        if self.num_heads:
            batch, channels, height, width = x.shape
            qkv = self.qkv(self.norm2(x)).reshape(batch * self.num_heads, channels // self.num_heads, 3, height * width)
            a = attention(qkv)
            x = self.proj(a.reshape(batch, channels, height, width)).add_(x)
            x = x * self.skip_scale
        return x


@persistence.persistent_class
class PositionalEmbedding(torch.nn.Module):
    """Transformer-style sinusoidal embedding of the noise level (DDPM++, ADM)."""

    def __init__(self, num_channels, max_positions=10000, endpoint=False):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x):
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device) / max(half - (1 if self.endpoint else 0), 1)
        freqs = (1 / self.max_positions) ** freqs
        x = torch.outer(x.to(freqs.dtype), freqs)
        return torch.cat([x.cos(), x.sin()], dim=1)


@persistence.persistent_class
class FourierEmbedding(torch.nn.Module):
    """Random Fourier features of the noise level (NCSN++); the frequencies are a fixed buffer."""

    def __init__(self, num_channels, scale=16):
        super().__init__()
        self.register_buffer('freqs', torch.randn(num_channels // 2) * scale)

    def forward(self, x):
        x = torch.outer(x.to(self.freqs.dtype), (2 * np.pi * self.freqs))
        return torch.cat([x.cos(), x.sin()], dim=1)


def dropout(x, p, training):
    """`F.dropout` with a cheaper mask on the CPU, where drawing one random number per element
    dominates its cost: 16 bits per element from one 64-bit draw per four elements
    (`misc.draw_keep_mask_`, also under torch.compile, whose own per-element draw is the costly
    one; figures in docs/benchmarks.md). An element is kept with probability k/65536
    (|k/65536 − (1−p)| ≤ 2⁻¹⁷) and scaled by 65536/k, so the expected output is exactly x, as
    with `F.dropout`. The mask is a 0/1 tensor of x's dtype, so the backward pass
    multiplies by it without converting it again. On CUDA it is `F.dropout`."""
    if not training or p == 0 or x.device.type != 'cpu':
        return F.dropout(x, p=p, training=training)
    keep = round((1 - p) * 65536)
    if keep in (0, 65536):  # p within 2⁻¹⁷ of 1 or 0
        return x * (keep / 65536)
    mask = torch.empty(x.shape, dtype=x.dtype)
    misc.draw_keep_mask_(mask, keep)
    return x.mul(65536 / keep).mul_(mask)


def _label_dropout_mask(labels, p, training):
    """Zeroes whole label vectors with probability p during training (for CFG)."""
    if training and p:
        keep = (torch.rand([labels.shape[0], 1], device=labels.device) >= p).to(labels.dtype)
        labels = labels * keep
    return labels


def _down_factor(channel_mult):
    return 2 ** (len(channel_mult) - 1)


def _level(img_resolution, level):
    """(name, side) of U-Net level `level`: named '16x16' as in EDM, 'HxW' for rectangles; the side
    that `attn_resolutions` refers to is the longer one, so attention never spans more positions
    than at that resolution of square images (the shorter side would put it on all 16x256 pixels
    of a long, thin signal)."""
    height, width = patch.image_hw(img_resolution)
    height, width = height >> level, width >> level
    return f'{height}x{width}', max(height, width)


# ----------------------------------------------------------------------------------------------
# Architectures.


@persistence.persistent_class
class SongUNet(torch.nn.Module):
    """DDPM++ (positional embedding, standard encoder) and NCSN++ (Fourier embedding, residual
    encoder) U-Net. Resolutions, block counts and initialisation follow Song et al.'s
    configuration as used by EDM, so parameter counts match EDM's exactly."""

    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0,
                 model_channels=128, channel_mult=(1, 2, 2, 2), channel_mult_emb=4, num_blocks=4,
                 attn_resolutions=(16,), dropout=0.10, label_dropout=0, embedding_type='positional',
                 channel_mult_noise=1, encoder_type='standard', decoder_type='standard', resample_filter=(1, 1)):
        assert embedding_type in ('fourier', 'positional')
        assert encoder_type in ('standard', 'skip', 'residual')
        assert decoder_type in ('standard', 'skip')
        super().__init__()
        self.img_resolution = img_resolution
        self.down_factor = _down_factor(channel_mult)
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode='xavier_uniform')
        init_zero = dict(init_mode='xavier_uniform', init_weight=1e-5)
        init_attn = dict(init_mode='xavier_uniform', init_weight=math.sqrt(0.2))
        block = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6,
                     resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
                     init=init, init_zero=init_zero, init_attn=init_attn)

        if embedding_type == 'positional':
            self.map_noise = PositionalEmbedding(num_channels=noise_channels, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(num_channels=noise_channels)
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        self.enc = torch.nn.ModuleDict()
        cout = in_channels
        caux = in_channels
        for level, mult in enumerate(channel_mult):
            name, res = _level(img_resolution, level)
            if level == 0:
                self.enc[f'{name}_conv'] = Conv2d(cout, model_channels, kernel=3, **init)
                cout = model_channels
            else:
                self.enc[f'{name}_down'] = UNetBlock(cout, cout, down=True, **block)
                if encoder_type == 'skip':
                    self.enc[f'{name}_aux_down'] = Conv2d(caux, caux, kernel=0, down=True, resample_filter=resample_filter)
                    self.enc[f'{name}_aux_skip'] = Conv2d(caux, cout, kernel=1, **init)
                if encoder_type == 'residual':
                    self.enc[f'{name}_aux_residual'] = Conv2d(caux, cout, kernel=3, down=True, resample_filter=resample_filter,
                                                                   fused_resample=True, **init)
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f'{name}_block{idx}'] = UNetBlock(cin, cout, attention=(res in attn_resolutions), **block)
        skip_channels = [m.out_channels for name, m in self.enc.items() if 'aux' not in name]

        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            name, res = _level(img_resolution, level)
            if level == len(channel_mult) - 1:
                self.dec[f'{name}_in0'] = UNetBlock(cout, cout, attention=True, **block)
                self.dec[f'{name}_in1'] = UNetBlock(cout, cout, **block)
            else:
                self.dec[f'{name}_up'] = UNetBlock(cout, cout, up=True, **block)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skip_channels.pop(), model_channels * mult
                attn = idx == num_blocks and res in attn_resolutions
                self.dec[f'{name}_block{idx}'] = UNetBlock(cin, cout, attention=attn, **block)
            if decoder_type == 'skip' or level == 0:
                if decoder_type == 'skip' and level < len(channel_mult) - 1:
                    self.dec[f'{name}_aux_up'] = Conv2d(out_channels, out_channels, kernel=0, up=True, resample_filter=resample_filter)
                self.dec[f'{name}_aux_norm'] = GroupNorm(num_channels=cout, eps=1e-6)
                self.dec[f'{name}_aux_conv'] = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def embed(self, noise_labels, class_labels, augment_labels):
        """The per-sample embedding that conditions every block."""
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)  # sin first, as Song et al.
        if self.map_label is not None:
            labels = _label_dropout_mask(class_labels, self.label_dropout, self.training)
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer0(emb))
        return F.silu(self.map_layer1(emb))

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        emb = self.embed(noise_labels, class_labels, augment_labels)  # fp32: the blocks cast after their affine layer

        skips = []
        aux = x
        for name, layer in self.enc.items():
            if 'aux_down' in name:
                aux = layer(aux)
            elif 'aux_skip' in name:
                x = skips[-1] = x + layer(aux)
            elif 'aux_residual' in name:
                x = skips[-1] = aux = (x + layer(aux)) / math.sqrt(2)
            else:
                x = layer(x, emb) if isinstance(layer, UNetBlock) else layer(x)
                skips.append(x)

        aux = None
        normed = None
        for name, layer in self.dec.items():
            if 'aux_up' in name:
                aux = layer(aux)
            elif 'aux_norm' in name:
                normed = layer(x)
            elif 'aux_conv' in name:
                normed = layer(F.silu(normed))
                aux = normed if aux is None else normed + aux
            else:
                if x.shape[1] != layer.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = layer(x, emb)
        return aux


@persistence.persistent_class
class DhariwalUNet(torch.nn.Module):
    """ADM U-Net (Dhariwal & Nichol): adaptive group-norm conditioning, attention at 32, 16 and 8
    with 64 channels per head, 3 blocks per resolution."""

    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0,
                 model_channels=192, channel_mult=(1, 2, 3, 4), channel_mult_emb=4, num_blocks=3,
                 attn_resolutions=(32, 16, 8), dropout=0.10, label_dropout=0):
        super().__init__()
        self.img_resolution = img_resolution
        self.down_factor = _down_factor(channel_mult)
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        init = dict(init_mode='kaiming_uniform', init_weight=math.sqrt(1 / 3), init_bias=math.sqrt(1 / 3))
        init_zero = dict(init_mode='kaiming_uniform', init_weight=0, init_bias=0)
        block = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout, init=init, init_zero=init_zero)

        self.map_noise = PositionalEmbedding(num_channels=model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False, **init_zero) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)
        self.map_label = Linear(label_dim, emb_channels, bias=False, init_mode='kaiming_normal',
                                init_weight=math.sqrt(label_dim)) if label_dim else None

        self.enc = torch.nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            name, res = _level(img_resolution, level)
            if level == 0:
                self.enc[f'{name}_conv'] = Conv2d(cout, model_channels * mult, kernel=3, **init)
                cout = model_channels * mult
            else:
                self.enc[f'{name}_down'] = UNetBlock(cout, cout, down=True, **block)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f'{name}_block{idx}'] = UNetBlock(cin, cout, attention=(res in attn_resolutions), **block)
        skip_channels = [m.out_channels for m in self.enc.values()]

        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            name, res = _level(img_resolution, level)
            if level == len(channel_mult) - 1:
                self.dec[f'{name}_in0'] = UNetBlock(cout, cout, attention=True, **block)
                self.dec[f'{name}_in1'] = UNetBlock(cout, cout, **block)
            else:
                self.dec[f'{name}_up'] = UNetBlock(cout, cout, up=True, **block)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skip_channels.pop(), model_channels * mult
                self.dec[f'{name}_block{idx}'] = UNetBlock(cin, cout, attention=(res in attn_resolutions), **block)
        self.out_norm = GroupNorm(num_channels=cout)
        self.out_conv = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def embed(self, noise_labels, class_labels, augment_labels):
        """The per-sample embedding that conditions every block."""
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            emb = emb + self.map_label(_label_dropout_mask(class_labels, self.label_dropout, self.training))
        return F.silu(emb)

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        emb = self.embed(noise_labels, class_labels, augment_labels)  # fp32: the blocks cast after their affine layer
        skips = []
        for layer in self.enc.values():
            x = layer(x, emb) if isinstance(layer, UNetBlock) else layer(x)
            skips.append(x)
        for layer in self.dec.values():
            if x.shape[1] != layer.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = layer(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))


ARCHITECTURES = {'SongUNet': SongUNet, 'DhariwalUNet': DhariwalUNet}

# ----------------------------------------------------------------------------------------------
# Preconditioning.


class _Precond(torch.nn.Module):
    """What all preconditioning wrappers share: building the inner network with room for the
    coordinate channels, label handling, the fp16/bf16 body, and the c_skip/c_out/c_in/c_noise
    combination. Subclasses define `coefficients(sigma)` and their σ range."""

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, use_bf16=False,
                 use_coords=False, pos_embed=0, model_type='SongUNet', out_channels=None, **model_kwargs):
        super().__init__()
        img_resolution = patch.as_resolution(*patch.image_hw(img_resolution))  # a JSON list or (H, W)
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.use_bf16 = use_bf16
        self.use_coords = bool(use_coords)
        self.pos_embed = int(pos_embed)
        self.coord_channels = patch.coord_channels(self.use_coords, self.pos_embed)
        self.model = ARCHITECTURES[model_type](img_resolution=img_resolution, in_channels=img_channels + self.coord_channels,
                                               out_channels=out_channels or img_channels, label_dim=label_dim, **model_kwargs)
        patch.check_divisible(img_resolution, self.model.down_factor, 'img_resolution')

    @property
    def down_factor(self):
        """Input sides must be multiples of this (2^(levels-1))."""
        return self.model.down_factor

    def body_dtype(self, x, force_fp32=False):
        """The network body's dtype: fp16/bf16 on CUDA as asked, bf16 also on CPUs that compute it
        natively (elsewhere oneDNN emulates it, slower than fp32), else fp32."""
        if force_fp32:
            return torch.float32
        if x.device.type == 'cuda' and self.use_fp16:
            return torch.float16
        if self.use_bf16 and (x.device.type == 'cuda' or (x.device.type == 'cpu' and misc.cpu_has_bf16())):
            return torch.bfloat16
        return torch.float32

    def prepare_labels(self, class_labels, batch, device):
        """Label matrix of shape (batch, label_dim), zeros when none is given; None if unconditional."""
        if self.label_dim == 0:
            return None
        if class_labels is None:
            return torch.zeros([batch, self.label_dim], device=device)
        return class_labels.to(torch.float32).reshape(-1, self.label_dim).expand(batch, -1)

    def model_input(self, x_scaled, coords):
        """c_in·x with the coordinate channels appended (unscaled). Without `coords`, a network
        that expects them gets the grid of a full image at the top-left of the canvas."""
        if not self.use_coords:
            return x_scaled
        if coords is None:
            grid = patch.coord_grid(self.img_resolution, x_scaled.shape[2], x_scaled.shape[3], device=x_scaled.device)
            coords = grid.unsqueeze(0).expand(x_scaled.shape[0], -1, -1, -1)
        features = patch.coord_features(coords.to(torch.float32), self.pos_embed)
        return torch.cat([x_scaled, features.to(x_scaled.dtype)], dim=1)

    def forward(self, x, sigma, class_labels=None, coords=None, force_fp32=False, **model_kwargs):
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1, 1, 1, 1)
        if sigma.shape[0] == 1 and x.shape[0] != 1:
            sigma = sigma.expand(x.shape[0], -1, -1, -1)
        labels = self.prepare_labels(class_labels, x.shape[0], x.device)
        dtype = self.body_dtype(x, force_fp32)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        inp = self.model_input(c_in * x, coords).to(dtype, memory_format=torch.contiguous_format)  # NCHW: see `attention`
        F_x = self.model(inp, c_noise.flatten(), class_labels=labels, **model_kwargs)
        return c_skip * x + c_out * self.split_output(F_x).to(torch.float32)

    def split_output(self, F_x):
        return F_x

    def coefficients(self, sigma):
        raise NotImplementedError

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)


@persistence.persistent_class
class VPPrecond(_Precond):
    """Variance-preserving preconditioning (DDPM++ "VP" of Song et al.)."""

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, beta_d=19.9, beta_min=0.1,
                 M=1000, epsilon_t=1e-5, model_type='SongUNet', **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim=label_dim, use_fp16=use_fp16, model_type=model_type, **model_kwargs)
        self.beta_d = beta_d
        self.beta_min = beta_min
        self.M = M
        self.epsilon_t = epsilon_t
        self.sigma_min = float(self.sigma(epsilon_t))
        self.sigma_max = float(self.sigma(1))

    def coefficients(self, sigma):
        c_in = 1 / (sigma ** 2 + 1).sqrt()
        c_noise = (self.M - 1) * self.sigma_inv(sigma)
        return torch.ones_like(sigma), -sigma, c_in, c_noise

    def sigma(self, t):
        """σ(t) of the VP schedule, in float64."""
        return schedules.vp_sigma(torch.as_tensor(t, dtype=torch.float64), self.beta_d, self.beta_min)

    def sigma_inv(self, sigma):
        """t(σ) of the VP schedule."""
        return schedules.vp_sigma_inv(torch.as_tensor(sigma), self.beta_d, self.beta_min)


@persistence.persistent_class
class VEPrecond(_Precond):
    """Variance-exploding preconditioning (NCSN++ "VE" of Song et al.)."""

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_min=0.02, sigma_max=100,
                 model_type='SongUNet', **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim=label_dim, use_fp16=use_fp16, model_type=model_type, **model_kwargs)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max

    def coefficients(self, sigma):
        return torch.ones_like(sigma), sigma, torch.ones_like(sigma), (0.5 * sigma).log()


@persistence.persistent_class
class iDDPMPrecond(_Precond):
    """Improved-DDPM preconditioning (Nichol & Dhariwal), for sampling pre-trained models: the
    network predicts noise (and a variance, ignored here) at one of M discrete σ levels."""

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, C_1=0.001, C_2=0.008, M=1000,
                 model_type='DhariwalUNet', **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim=label_dim, use_fp16=use_fp16, model_type=model_type,
                         out_channels=img_channels * 2, **model_kwargs)
        self.C_1 = C_1
        self.C_2 = C_2
        self.M = M
        u = schedules.iddpm_levels(C_1, C_2, M).to(torch.float32)
        self.register_buffer('u', u)
        self.sigma_min = float(u[M - 1])
        self.sigma_max = float(u[0])

    def coefficients(self, sigma):
        c_in = 1 / (sigma ** 2 + 1).sqrt()
        c_noise = self.M - 1 - self.round_sigma(sigma, return_index=True).to(torch.float32)
        return torch.ones_like(sigma), -sigma, c_in, c_noise

    def split_output(self, F_x):
        return F_x[:, :self.img_channels]

    def round_sigma(self, sigma, return_index=False):
        """The nearest of the M discrete σ levels (or its index)."""
        sigma = torch.as_tensor(sigma)
        index = torch.cdist(sigma.to(self.u.device).to(torch.float32).reshape(1, -1, 1), self.u.reshape(1, -1, 1)).argmin(2)
        result = index if return_index else self.u[index.flatten()].to(sigma.dtype)
        return result.reshape(sigma.shape).to(sigma.device)


@persistence.persistent_class
class EDMPrecond(_Precond):
    """EDM preconditioning (Karras et al. 2022, Table 1)."""

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_min=0, sigma_max=float('inf'),
                 sigma_data=0.5, model_type='DhariwalUNet', **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim=label_dim, use_fp16=use_fp16, model_type=model_type, **model_kwargs)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data

    def coefficients(self, sigma):
        sd = self.sigma_data
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
        c_in = 1 / (sd ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise
