"""What the denoiser sees of the training data, behind one interface chosen by the data set.

An encoder has
- `latent_shape(dataset)`: (side or (H, W), channels) of the denoiser's input for the data set's items;
- `init(device)` and `fit(dataset)`: load weights and take statistics before training;
- `encode(batch, rng)`: a batch of items → float32 denoiser input (`rng`, a `BatchRNG` with a
  generator per item row, draws any randomness);
- `decode(x)`: denoiser output → uint8 images; `items_to_images(batch)`: items → uint8 images to view;
- `down_factor` (image pixels per input pixel), `describe()` (one log line) and
  `snapshot_decoder()` (what a snapshot stores under 'encoder' for generate.py).

`PixelEncoder` serves images and float arrays; `StabilityVAEEncoder` the latent space of the Stable
Diffusion VAE (`--train_on_latents=1`): it turns images, or the posterior moments that
`write_latents` stores for `dataset_tool.py --encoder=vae`, into normalised latents and samples
back into images. It pickles with the snapshot without the VAE weights and loads the VAE (a
diffusers AutoencoderKL) on first use, so generate.py decodes with the settings of training and
nothing is downloaded early."""

import contextlib
import os
import re
import warnings

import numpy as np
import torch

import dnnlib
from dnnlib.util import FieldError, UserError
from torch_utils import distributed as dist
from torch_utils import persistence
from training import patch

DEFAULT_VAE = 'stabilityai/sd-vae-ft-ema'
SD_SCALE = 0.18215
LATENT_CHANNELS = 4
DOWN_FACTOR = 8
STATS_IMAGES = 256      # images encoded to estimate per-channel statistics when none are stored
ENCODE_BATCH = 32       # images per VAE call, to bound memory

_HUB_ID = re.compile(r'^[A-Za-z0-9][\w.-]*/[\w.-]+$')


def is_local_vae(name):
    """True when `name` refers to a local folder rather than a hub id ("org/name")."""
    return os.path.exists(name) or not _HUB_ID.match(name)


def _how_to_provide():
    return ('pass `vae_name`=/path/to/folder holding config.json and diffusion_pytorch_model.safetensors '
            '(AutoencoderKL.save_pretrained), or allow network access to the Hugging Face hub')


def vae_folder(name):
    """The folder holding the VAE's config.json for a local `name` (the folder itself or its
    `vae/` sub-folder, as in a full Stable Diffusion checkout); a UserError when there is none."""
    path = os.path.abspath(os.path.expanduser(name))
    for folder in (path, os.path.join(path, 'vae')):
        if os.path.isfile(os.path.join(folder, 'config.json')):
            return folder
    what = 'does not exist' if not os.path.exists(path) else 'holds no config.json'
    raise FieldError('vae_name', f'"{name}" {what}; {_how_to_provide()}')


def recorded_vae(name, field, where):
    """The local folder of the VAE `name` that a file (`where`: a network file or a data set)
    records. A hub id there is a FieldError of `field` asking for `vae`, so that a file never
    makes the program download anything; so is a folder that holds no VAE here."""
    if not is_local_vae(name):
        raise FieldError(field, f'{where} names the VAE "{name}", a hub id; pass `vae`={name} to download it '
                                f'(or `vae`=FOLDER for a local copy)')
    try:
        return vae_folder(name)
    except UserError:
        raise FieldError(field, f'{where} names the VAE folder "{name}", which holds no VAE here; pass `vae`=FOLDER or a hub id') from None


def check_vae_name(name):
    """Cheap validation for command lines (no loading): a local folder must hold a config.json.
    Returns the name to record: an absolute folder for local VAEs, the hub id otherwise."""
    if is_local_vae(name):
        return vae_folder(name)
    return name


def load_vae(name, device):
    """The `AutoencoderKL` `name` (hub id or local folder) in eval mode on `device`, float32.
    Any failure to find or read it is a one-line UserError that says how to provide it."""
    source = vae_folder(name) if is_local_vae(name) else name
    try:
        from diffusers import AutoencoderKL
    except ImportError as err:
        raise FieldError('vae_name', f'the diffusers package is needed for latents ({err})') from None
    try:
        with warnings.catch_warnings():  # diffusers' own deprecation notices, not the user's concern
            warnings.simplefilter('ignore', UserWarning)
            warnings.simplefilter('ignore', FutureWarning)
            vae = AutoencoderKL.from_pretrained(source, torch_dtype=torch.float32, low_cpu_mem_usage=False)
    except Exception as err:  # hub, network and file errors come in many types
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise FieldError('vae_name', f'cannot load the VAE "{name}" ({reason}); {_how_to_provide()}') from None
    return vae.eval().requires_grad_(False).to(device)


@contextlib.contextmanager
def vae_precision(device):
    """Lets the VAE use TF32 matmuls and convolutions on CUDA, faster than full fp32, for a
    precision close to the float16 of precomputed latents (the training loop keeps TF32 off for
    the denoiser, as EDM)."""
    if torch.device(device).type != 'cuda':
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def moment_stats(means, stds):
    """Per-channel (mean, std) of posterior samples over a set of items, exactly: with posterior
    mean m and std s per element, E[z] = avg(m) and Var[z] = avg(m² + s²) − E[z]².
    means, stds: (N, C, h, w) tensors. Returns two float64 (C,) tensors."""
    m = means.to(torch.float64)
    s = stds.to(torch.float64)
    mean = m.mean(dim=(0, 2, 3))
    second = (m.square() + s.square()).mean(dim=(0, 2, 3))
    return mean, (second - mean.square()).clamp(min=0).sqrt()


def to_uint8(x):
    """[−1, 1] images → uint8 as (x·127.5 + 128) clipped, EDM's convention."""
    return (x * 127.5 + 128).clip(0, 255).to(torch.uint8)


def build_encoder(dataset, encoder_kwargs=None):
    """The encoder of `encoder_kwargs` (latents of an image set), or the data set's own: pixels,
    or for precomputed latents the VAE that wrote them. Builds no weights: they load in `init`."""
    return dnnlib.util.construct_class_by_name(**(encoder_kwargs if encoder_kwargs is not None else dataset.encoder_kwargs()))


def network_shape(dataset, encoder_kwargs=None):
    """(side or (H, W), channels) of the denoiser's input for `dataset` and `encoder_kwargs`."""
    return build_encoder(dataset, encoder_kwargs).latent_shape(dataset)


class PixelEncoder:
    """Pixel-space training: uint8 images scaled to [−1, 1], float arrays (already in [−1, 1]) as
    they are; outputs clipped back to uint8. Snapshots store none (as EDM's)."""

    down_factor = 1

    def latent_shape(self, dataset):
        return dataset.resolution, dataset.num_channels

    def init(self, device):
        """Nothing to load."""

    def fit(self, dataset):
        """Nothing to fit."""

    def encode(self, batch, rng=None):
        if batch.dtype.is_floating_point:
            return batch.to(torch.float32)
        return batch.to(torch.float32) / 127.5 - 1

    def decode(self, x):
        return to_uint8(x)

    def items_to_images(self, batch):
        return batch if batch.dtype == torch.uint8 else to_uint8(batch)

    def describe(self):
        return 'Pixels: uint8 images scaled to [-1, 1], float arrays as stored'

    def snapshot_decoder(self):
        return None


PIXELS = PixelEncoder()


@persistence.persistent_class
class StabilityVAEEncoder:
    """Stable Diffusion VAE latents for the denoiser, normalised as z_n = (z − shift)·gain per channel:
    'scale' (shift 0, gain 0.18215, the original release's) or 'channel' (mean 0, std 0.5 = σ_data,
    from `channel_mean`/`channel_std` or the statistics that `fit` takes from the data set)."""

    down_factor = DOWN_FACTOR

    def __init__(self, vae_name=DEFAULT_VAE, latent_norm='scale', scale=SD_SCALE, channel_mean=None, channel_std=None):
        if latent_norm not in ('scale', 'channel'):
            raise FieldError('latent_norm', f'"{latent_norm}" is not one of scale, channel')
        self.vae_name = vae_name
        self.latent_norm = latent_norm
        self.scale = float(scale)
        self.channel_mean = None if channel_mean is None else [float(v) for v in channel_mean]
        self.channel_std = None if channel_std is None else [float(v) for v in channel_std]
        self._vae = None

    # -- pickling: everything but the VAE ---------------------------------------------------

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != '_vae'}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._vae = None

    # -- the VAE ------------------------------------------------------------------------------

    def init(self, device):
        """Loads the VAE onto `device` now (so a missing VAE fails before training starts)."""
        self._get_vae(device)

    def _get_vae(self, device):
        device = torch.device(device)
        if self._vae is None:
            self._vae = load_vae(self.vae_name, device)
        elif next(self._vae.parameters()).device != device:
            self._vae = self._vae.to(device)
        return self._vae

    @property
    def vae_device(self):
        """Device of the loaded VAE (None before it is loaded)."""
        return None if self._vae is None else next(self._vae.parameters()).device

    def latent_shape(self, dataset):
        """(latent side or (h, w), channels) of the denoiser for `dataset`: R/8 and 4 for images, the
        stored size for a data set of precomputed latents."""
        if _holds_latents(dataset):
            return dataset.resolution, LATENT_CHANNELS
        height, width = patch.image_hw(dataset.resolution)
        if height % DOWN_FACTOR != 0 or width % DOWN_FACTOR != 0:
            raise FieldError('dataset', f'resolution {patch.shape_name(dataset.resolution)} is not divisible by {DOWN_FACTOR} '
                            f'on both sides, the down-sampling factor of the VAE whose latents are trained on')
        return patch.as_resolution(height // DOWN_FACTOR, width // DOWN_FACTOR), LATENT_CHANNELS

    # -- normalisation ------------------------------------------------------------------------

    def fit(self, dataset):
        """For 'channel' normalisation without given statistics: takes them from the data set's
        precomputed statistics, or encodes its first `STATS_IMAGES` images (on rank 0, then
        shared, so every rank normalises identically). A no-op for 'scale'."""
        if self.latent_norm != 'channel' or self.channel_mean is not None:
            return
        stats = getattr(dataset, 'latent_stats', None)
        if stats is None:
            stats = self._estimate_stats(dataset) if dist.get_rank() == 0 else None
            stats = dist.broadcast_object(stats)
        self.channel_mean = [float(v) for v in stats['mean']]
        self.channel_std = [float(v) for v in stats['std']]

    def _estimate_stats(self, dataset):
        device = next(self._get_vae(dist.device()).parameters()).device if self._vae is None else self.vae_device
        count = min(len(dataset), STATS_IMAGES)
        means, stds = [], []
        for start in range(0, count, ENCODE_BATCH):
            batch = np.stack([dataset[i][0] for i in range(start, min(start + ENCODE_BATCH, count))])
            mean, std = self.posterior(torch.as_tensor(batch).to(device))
            means.append(mean.cpu())
            stds.append(std.cpu())
        mean, std = moment_stats(torch.cat(means), torch.cat(stds))
        return dict(mean=mean.tolist(), std=std.tolist())

    def _shift_gain(self, device):
        """Per-channel float32 (shift, gain) tensors (1, 4, 1, 1) of z_n = (z − shift)·gain, filled
        in on `device` (a copy from the host every training step would make the GPU wait)."""
        def filled(values):
            return torch.stack([torch.full([], float(v), device=device) for v in values]).reshape(1, -1, 1, 1)
        if self.latent_norm == 'scale':
            return filled([0] * LATENT_CHANNELS), filled([self.scale] * LATENT_CHANNELS)
        if self.channel_mean is None:
            raise RuntimeError('channel normalisation needs statistics: call fit(dataset) first')
        return filled(self.channel_mean), 0.5 / filled(self.channel_std).clamp(min=1e-8)

    def normalize(self, z):
        """Raw VAE latents → what the denoiser sees."""
        shift, gain = self._shift_gain(z.device)
        return (z.to(torch.float32) - shift) * gain

    def denormalize(self, x):
        """Inverse of `normalize`."""
        shift, gain = self._shift_gain(x.device)
        return x.to(torch.float32) / gain + shift

    # -- encoding and decoding -------------------------------------------------------------

    def posterior(self, images):
        """Posterior (mean, std), each (N, 4, R/8, R/8) float32, of uint8 images (N, 1|3, R, R)
        on the VAE's device (grey images are repeated to RGB)."""
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        vae = self._get_vae(images.device)
        means, stds = [], []
        with torch.no_grad(), vae_precision(images.device):
            for chunk in images.split(ENCODE_BATCH):
                dist_ = vae.encode(chunk.to(torch.float32) / 127.5 - 1).latent_dist
                means.append(dist_.mean)
                stds.append(dist_.std)
        return torch.cat(means), torch.cat(stds)

    def encode(self, batch, rng=None):
        """Training data (uint8 images or float posterior moments (N, 8, r, r)) → normalised latents,
        a posterior sample drawn with `rng` (one row per item; both kinds draw the same ε) or the mean."""
        if batch.dtype == torch.uint8:
            mean, std = self.posterior(batch)
        else:
            if batch.shape[1] != 2 * LATENT_CHANNELS:
                raise ValueError(f'expected posterior moments with {2 * LATENT_CHANNELS} channels, got {batch.shape[1]}')
            mean, std = batch.to(torch.float32).chunk(2, dim=1)
        z = mean if rng is None else mean + std * rng.randn_like(mean)
        return self.normalize(z)

    def decode(self, latents):
        """Normalised latents (N, 4, r, r) → uint8 RGB images (N, 3, 8r, 8r) on the latents' device."""
        vae = self._get_vae(latents.device)
        images = []
        with torch.no_grad(), vae_precision(latents.device):
            for chunk in self.denormalize(latents).split(ENCODE_BATCH):
                x = vae.decode(chunk).sample.clamp(-1, 1)
                images.append(((x + 1) * 127.5).round().to(torch.uint8))
        return torch.cat(images)

    def items_to_images(self, batch):
        """Images as they are; precomputed latents decoded from their posterior means."""
        if batch.dtype == torch.uint8:
            return batch
        return self.decode(self.encode(batch.to(self.vae_device or 'cpu')))

    def describe(self):
        """One line for logs."""
        norm = f'scale {self.scale}' if self.latent_norm == 'scale' else 'per-channel mean 0, std 0.5'
        return f'Latents: VAE "{self.vae_name}", latents normalised by {norm}'

    def snapshot_decoder(self):
        """The encoder itself: generate.py decodes with the settings of training."""
        return self


def _holds_latents(dataset):
    return getattr(dataset, 'latent_info', None) is not None


def write_latents(writer, stream, vae_name, xflip=False, dtype='float16', device=None):
    """Encodes every image of `stream` and stores its posterior moments (K, 8, r, r) through `writer`
    (mean in channels 0-3, std in 4-7; K = 2 with `xflip`), with the per-channel statistics that
    `--latent-norm=channel` uses in dataset.json, so training never runs the encoder."""
    recorded = check_vae_name(vae_name)
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    encoder = StabilityVAEEncoder(vae_name=recorded)
    encoder.init(device)
    sums = np.zeros([3, LATENT_CHANNELS], dtype=np.float64)  # count, Σm, Σ(m² + s²)
    shape = None

    def flush(batch):
        nonlocal shape
        images = torch.as_tensor(np.stack([image.transpose(2, 0, 1) for image, _label in batch])).to(device)
        views = [images, images.flip(3)] if xflip else [images]
        moments = torch.stack([torch.cat(encoder.posterior(view), dim=1) for view in views], dim=1).cpu()
        mean, std = moments.to(torch.float64).chunk(2, dim=2)
        sums[0] += mean[:, :, 0].numel()
        sums[1] += mean.sum(dim=(0, 1, 3, 4)).numpy()
        sums[2] += (mean.square() + std.square()).sum(dim=(0, 1, 3, 4)).numpy()
        shape = list(moments.shape[2:])
        for (_image, label), item in zip(batch, moments.numpy().astype(dtype)):
            writer.add_array(item, label)

    batch = []
    for name, image, label in stream:
        if image.shape[0] % DOWN_FACTOR != 0 or image.shape[1] % DOWN_FACTOR != 0:
            raise UserError(f'{name}: image size {image.shape[1]}x{image.shape[0]} (WxH) is not divisible by {DOWN_FACTOR} '
                            f'on both sides, the VAE\'s down-sampling factor; give `resolution`=WxH')
        batch.append((image, label))
        if len(batch) == ENCODE_BATCH:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    if shape is None:
        return
    mean = sums[1] / sums[0]
    std = np.sqrt(np.maximum(sums[2] / sums[0] - mean ** 2, 0))
    writer.meta['latents'] = dict(
        encoder='vae', vae=recorded, shape=shape, channels=LATENT_CHANNELS,
        image_resolution=patch.as_resolution(shape[1] * DOWN_FACTOR, shape[2] * DOWN_FACTOR), flips=2 if xflip else 1, dtype=dtype,
        layout='(flips, 8, r, r): channels 0-3 posterior mean, 4-7 posterior std of the raw VAE latent; '
               'flips row 1 is the mirrored image',
        stats=dict(mean=mean.tolist(), std=std.tolist()))
