"""Generate images from a trained network snapshot (EDM-compatible command line).

    python generate.py --network=network-snapshot-000200.pkl --outdir=out --seeds=0-63
    torchrun --standalone --nproc_per_node=2 generate.py --network=... --outdir=out --seeds=0-49999

Every seed has its own random generator, so an image depends only on its seed, not on --batch or
the number of processes. The sampling itself lives in `training.sampler`.
"""

import bisect
import collections.abc
import itertools
import os
import re

import click
import numpy as np
import torch

import dnnlib
from dnnlib.util import UserError
from torch_utils import distributed, misc, png
from training import checkpoints, encoders, file_limits, patch, sampler
from training.dataset import MAX_IMAGE_PIXELS


MAX_SIGMA = 1e19  # sigma^2 stays finite in float32
MIN_SIGMA = 1e-30  # sigma stays a normal float32 number
MAX_GUIDANCE = 1000  # |--cfg| and |--guidance|
MAX_S_NOISE = 2.0
MAX_CANVAS_OFFSET = 2**24
SAMPLER_TENSORS = 8  # image-sized tensors the sampler keeps per image (x, denoised, slopes, noise, ...)


class SeedList(collections.abc.Sequence):
    """The seeds of --seeds as a lazy sequence: disjoint ranges in the order given, so that
    `0-4294967295` costs no memory, and slicing (each rank's `seeds[rank::world]`) stays lazy."""

    def __init__(self, ranges, index=None):
        self._ranges = ranges
        self._starts = list(itertools.accumulate((len(r) for r in ranges), initial=0))
        self._index = range(self._starts[-1]) if index is None else index

    def __len__(self):
        return len(self._index)

    def __getitem__(self, item):
        if isinstance(item, slice):
            return SeedList(self._ranges, self._index[item])
        position = self._index[item]
        which = bisect.bisect_right(self._starts, position) - 1
        return self._ranges[which][position - self._starts[which]]


def parse_seeds(text):
    """'0-63,100' → SeedList [0, …, 63, 100]: comma-separated integers in [0, 2^32) and inclusive
    ranges a-b (a ≤ b), duplicates dropped, order kept."""
    ranges, covered = [], []  # covered: sorted disjoint (first, last) of the seeds taken so far
    for part in str(text).split(','):
        part = part.strip()
        match = re.fullmatch(r'(\d+)(?:\s*-\s*(\d+))?', part)
        if match is None:
            raise UserError(f'--seeds: "{text}" is not a list like 0-63,100 (bad item "{part}")')
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise UserError(f'--seeds: range "{part}" ends before it starts')
        if last > sampler.MAX_SEED:
            raise UserError(f'--seeds: "{part}" goes beyond the largest seed, {sampler.MAX_SEED} (2^32 - 1)')
        for lo, hi in covered:  # the parts of first..last not taken yet, in increasing order
            if hi < first or lo > last:
                continue
            if lo > first:
                ranges.append(range(first, lo))
            first = max(first, hi + 1)
        if first <= last:
            ranges.append(range(first, last + 1))
        covered = _merge(covered + [(int(match.group(1)), last)])
    return SeedList(ranges)


def _merge(intervals):
    """Sorted, merged list of inclusive (first, last) intervals."""
    merged = []
    for lo, hi in sorted(intervals):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def configure_network(net, decoder, on_latents, vae, embed_fq, mask_pos):
    """Applies the original release's options to a loaded network; returns the decoder of its
    outputs (the snapshot's, the VAE of --latents, or pixels). Choices the network cannot
    honour are UserErrors."""
    if embed_fq is not None:
        if not getattr(net, 'use_coords', False):
            raise UserError('--pos-embed: the network takes no coordinates')
        channels = patch.coord_channels(True, embed_fq)
        if channels != net.coord_channels:
            raise UserError(f'--pos-embed: the network takes {net.coord_channels} coordinate channels, '
                            f'not {channels} (--pos-embed={embed_fq})')
        net.pos_embed = embed_fq
    if mask_pos and not checkpoints.mask_coordinates(net):
        raise UserError('--mask-pos: only applies to networks that take coordinates')
    if on_latents and decoder is None:
        decoder = encoders.StabilityVAEEncoder(vae_name=encoders.check_vae_name(vae or encoders.DEFAULT_VAE))
    elif vae is not None and decoder is None:
        raise UserError('--vae: only applies to latent networks (--latents=1)')
    if decoder is not None and net.img_channels != encoders.LATENT_CHANNELS:
        raise UserError(f'--latents: the network makes {net.img_channels}-channel images, not {encoders.LATENT_CHANNELS}-channel latents')
    if decoder is None and net.img_channels == encoders.LATENT_CHANNELS and checkpoints.is_foreign(net):
        raise UserError(f'--latents: the network makes {net.img_channels}-channel latents; decode them with --latents=1')
    return decoder if decoder is not None else encoders.PIXELS


def use_bf16(net, bf16, device):
    """--bf16: runs the network body in bfloat16 where the device computes it natively (the
    network's own `use_bf16`, as if it had been trained with --bf16=1); says so in one line where not."""
    if not bf16:
        return
    if not hasattr(net, 'use_bf16'):
        raise UserError('--bf16: needs one of this project\'s networks; convert EDM\'s or the original release\'s '
                        'pickle first with convert_network.py')
    notice = misc.bf16_fallback_notice(device, 'sampling')
    if notice:
        distributed.print0(notice)
        return
    net.use_bf16 = True


def build_sampler_kwargs(steps, sigma_min, sigma_max, rho, S_churn, S_min, S_max, S_noise, solver, disc, schedule, scaling, cfg):
    """Keyword arguments for the sampler; any of solver/disc/schedule/scaling selects EDM's
    generalised sampler (as in EDM) or, for the solvers EDM lacks, `sampler.solver_sampler`; σ
    bounds left out take that sampler's defaults."""
    if sigma_min is not None and sigma_min <= 0:
        raise UserError(f'--sigma_min: must be positive (got {sigma_min})')
    if sigma_min is not None and sigma_max is not None and sigma_max <= sigma_min:
        raise UserError(f'--sigma_max: {sigma_max} must exceed --sigma_min {sigma_min}')
    for name, value in (('--sigma_min', sigma_min), ('--sigma_max', sigma_max)):
        if value is not None and value > MAX_SIGMA:
            raise UserError(f'{name}={value:g}: at most {MAX_SIGMA:g}, or its square overflows float32 and every image is garbage')
        if value is not None and value < MIN_SIGMA:
            raise UserError(f'{name}={value:g}: at least {MIN_SIGMA:g}, or float32 rounds it towards 0 and log(sigma) breaks')
    if disc in (None, 'edm'):
        sampler.check_rho(rho, steps, sigma_min or 0.002, sigma_max or 80)
    check_guidance_weight('--cfg', cfg)
    if not 0 <= S_noise <= MAX_S_NOISE:
        raise UserError(f'--S_noise={S_noise:g}: must be between 0 and {MAX_S_NOISE:g} (the scale of the re-injected noise; EDM uses 1 to 1.007)')
    if solver is not None and solver not in sampler.EDM_SOLVERS:
        if S_churn > 0:
            raise UserError(f'--S_churn: churn applies to --solver=euler|heun only, not to {solver}')
        if schedule not in (None, 'linear') or scaling not in (None, 'none'):
            raise UserError(f'--schedule/--scaling: apply to --solver=euler|heun only, not to {solver} (it integrates in sigma)')
    kwargs = dict(num_steps=steps, rho=rho, S_churn=S_churn, S_min=S_min, S_max=S_max, S_noise=S_noise, cfg_scale=cfg)
    if sigma_min is not None:
        kwargs['sigma_min'] = sigma_min
    if sigma_max is not None:
        kwargs['sigma_max'] = sigma_max
    ablation = dict(solver=solver, discretization=disc, schedule=schedule, scaling=scaling)
    kwargs.update({k: v for k, v in ablation.items() if v is not None})
    return kwargs


def check_guidance_weight(name, weight):
    """Raises UserError for a guidance weight so large that every pixel saturates."""
    if weight is not None and abs(weight) > MAX_GUIDANCE:
        raise UserError(f'{name}={weight:g}: at most {MAX_GUIDANCE:g} in magnitude (weights in use lie below 10; far beyond, '
                        f'the difference of two denoisers swamps the image and every pixel saturates)')


def load_guide(net, guide_url, guidance, cfg, device, trust=False):
    """The --guide-network on `device`, checked against the network before any sampling."""
    if guide_url is None:
        raise UserError('--guidance: applies only with --guide-network')
    if guidance is None:
        raise UserError('--guide-network: give the guidance weight too, e.g. --guidance=2')
    if cfg is not None:
        raise UserError('--guide-network: autoguidance does not combine with --cfg; use one of them')
    check_guidance_weight('--guidance', guidance)
    guide, _ = checkpoints.load_network(guide_url, 'guide_net', trust=trust)
    sampler.check_guide_network(net, guide)
    if getattr(net, 'use_bf16', False) and hasattr(guide, 'use_bf16'):
        guide.use_bf16 = True
    return guide.to(device)


class CanvasSize(click.ParamType):
    """A side (`64`) or `WxH` (`64x32`, width first as in dataset_tool.py); becomes a side or the
    pair (H, W) of `sampler.Canvas`."""
    name = 'INT|WxH'

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        parts = value.lower().split('x')
        try:
            sizes = [int(p) for p in parts]
        except ValueError:
            sizes = []
        if len(sizes) not in (1, 2) or min(sizes) < 1:
            self.fail(f'"{value}" is not a positive side or WxH', param, ctx)
        return sizes[0] if len(sizes) == 1 else patch.as_resolution(sizes[1], sizes[0])


def build_canvas(net, resolution, image_size, x_start, y_start):
    """A `sampler.Canvas` when any canvas option is given (missing ones from the network), else None."""
    for name, value in (('--x_start', x_start), ('--y_start', y_start)):
        if abs(value) > MAX_CANVAS_OFFSET:
            raise UserError(f'{name}={value}: must lie within ±{MAX_CANVAS_OFFSET:,} (2^24: beyond, float32 coordinates lose whole pixels)')
    if resolution is None and image_size is None and x_start == 0 and y_start == 0:
        return None
    resolution = net.img_resolution if resolution is None else resolution
    image_size = resolution if image_size is None else image_size
    return sampler.Canvas(resolution, image_size, x_start, y_start)


def check_image_pixels(net, decoder, canvas, grid_count):
    """Raises UserError when one image (or the --grid of `grid_count` images) would exceed the
    pixel limit of the data sets, before any memory is allocated for it."""
    height, width = patch.image_hw(canvas.image_size if canvas is not None else net.img_resolution)
    scale = getattr(decoder, 'down_factor', encoders.DOWN_FACTOR)  # VAE encoders pickled before it existed
    height, width = height * scale, width * scale
    option = '--image_size/--resolution' if canvas is not None else '--network'
    if height * width > MAX_IMAGE_PIXELS:
        raise UserError(f'{option}: images of {width}x{height} pixels exceed the limit of {MAX_IMAGE_PIXELS:,}')
    if grid_count is not None and grid_count * height * width > MAX_IMAGE_PIXELS:
        raise UserError(f'--grid: {grid_count} images of {width}x{height} exceed the limit of {MAX_IMAGE_PIXELS:,} pixels '
                        f'for one PNG; use --outdir or fewer --seeds')


def check_sampling_memory(net, canvas, batch, device):
    """Raises UserError when one batch of `batch` images cannot fit on `device`: the sampler's
    image-sized tensors, the encoder outputs the U-Net keeps for its decoder and the output of its
    first convolution (together a lower bound of its activations), before anything is allocated."""
    height, width = patch.image_hw(canvas.image_size if canvas is not None else net.img_resolution)
    per_pixel = (SAMPLER_TENSORS * net.img_channels + file_limits.skip_elements_per_pixel(net)
                 + 2 * file_limits.full_resolution_channels(net))
    file_limits.check_memory(4 * batch * per_pixel * height * width,
                             f'--batch/--image_size: batches of {batch} images of {width}x{height}', device)


def save_sample(image, path):
    """Writes a uint8 (C, H, W) sample as PNG (C = 1 or 3), else as the same array in a .npy beside
    where the PNG would be (PNG cannot hold other channel counts)."""
    if image.shape[0] in (1, 3):
        png.save_image(image, path)
        return
    with dnnlib.util.atomic_write(os.path.splitext(path)[0] + '.npy', 'wb') as f:
        np.save(f, image.numpy(), allow_pickle=False)


def image_path(outdir, seed, subdirs):
    folder = os.path.join(outdir, f'{seed - seed % 1000:06d}') if subdirs else outdir
    return os.path.join(folder, f'{seed:06d}.png')


def remove_stale_temps(outdir):
    """Removes the temporary files that killed runs left in `outdir` and in its `--subdirs`
    folders, including those this run writes nothing into."""
    if not os.path.isdir(outdir):
        return
    dnnlib.util.remove_stale_temps(outdir)
    for name in os.listdir(outdir):
        folder = os.path.join(outdir, name)
        if re.fullmatch(r'\d{6}', name) and os.path.isdir(folder) and not os.path.islink(folder):
            dnnlib.util.remove_stale_temps(folder)


# The arguments of library functions whose name differs from the parameter of the option that sets them.
GENERATE_FIELDS = {'network': '--network', 'trust': '--trust-pickle', 'cfg_scale': '--cfg', 'vae_name': '--vae',
                   'canvas': '--image_size/--resolution', 'canvas.resolution': '--resolution/--x_start/--y_start'}


@click.command(context_settings=dict(max_content_width=100))
@click.option('--network', 'network_url', help='Network to sample from: our snapshot (.pkl or .safetensors), EDM\'s or the original release\'s pickle', metavar='PATH|URL', type=str, required=True)
@click.option('--outdir', help='Folder for the PNG files, one per seed (.npy for channel counts PNG cannot hold)', metavar='DIR', type=str)
@click.option('--seeds', help='Seeds to sample, comma-separated numbers and a-b ranges', metavar='LIST', type=str, default='0-63', show_default=True)
@click.option('--subdirs', help='Group the PNG files into folders of 1000 seeds', is_flag=True)
@click.option('--class', 'class_idx', help='Class of every image  [default: drawn per seed]', metavar='INT', type=click.IntRange(min=0), default=None)
@click.option('--batch', 'max_batch_size', help='Images per network call, per process', metavar='INT', type=click.IntRange(min=1), default=64, show_default=True)
@click.option('--steps', 'num_steps', help='Noise levels visited (2N-1 network calls with heun, N with the other solvers)', metavar='INT', type=click.IntRange(min=1, max=sampler.MAX_STEPS), default=18, show_default=True)
@click.option('--sigma_min', help='Smallest sigma  [default: the sampler\'s]', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True))
@click.option('--sigma_max', help='Largest sigma  [default: the sampler\'s]', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True))
@click.option('--rho', help='Exponent rho of the sigma spacing', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True), default=7, show_default=True)
@click.option('--S_churn', 'S_churn', help='Churn: how much noise to re-inject per step', metavar='FLOAT', type=click.FloatRange(min=0), default=0, show_default=True)
@click.option('--S_min', 'S_min', help='Churn only at sigma >= this', metavar='FLOAT', type=click.FloatRange(min=0), default=0, show_default=True)
@click.option('--S_max', 'S_max', help='Churn only at sigma <= this', metavar='FLOAT', type=click.FloatRange(min=0), default='inf', show_default=True)
@click.option('--S_noise', 'S_noise', help='Scale of the re-injected noise', metavar='FLOAT', type=float, default=1, show_default=True)
@click.option('--solver', help='euler|heun (generalised sampler), dpmpp-2m (DPM-Solver++(2M)), dpmpp-3m (3rd-order multistep), euler-a (Euler-ancestral, stochastic)  [default: EDM\'s Heun sampler]', metavar='NAME', type=click.Choice(list(sampler.SOLVERS)))
@click.option('--disc', 'disc', help='Noise levels of EDM\'s Table 1 (any solver)', metavar='vp|ve|iddpm|edm', type=click.Choice(['vp', 've', 'iddpm', 'edm']))
@click.option('--schedule', help='Generalised sampler: sigma(t)', metavar='vp|ve|linear', type=click.Choice(['vp', 've', 'linear']))
@click.option('--scaling', help='Generalised sampler: scaling s(t)', metavar='vp|none', type=click.Choice(['vp', 'none']))
@click.option('--cfg', help='Classifier-free guidance weight w (class-conditional networks)', metavar='FLOAT', type=float)
@click.option('--guide-network', 'guide_net', help='Autoguidance: a weaker model of the same task (e.g. an early snapshot of the run); not with --cfg', metavar='PATH', type=str)
@click.option('--guidance', help='Autoguidance weight w: w*D(net) + (1-w)*D(guide)', metavar='FLOAT', type=float)
@click.option('--grid', 'grid_path', help='Write all samples as one PNG grid here too', metavar='PATH', type=str)
@click.option('--resolution', help='Size of the full image the canvas is placed in  [default: network\'s]', metavar='INT|WxH', type=CanvasSize())
@click.option('--image_size', help='Size of the generated canvas  [default: --resolution]', metavar='INT|WxH', type=CanvasSize())
@click.option('--x_start', help='Column of the canvas\'s left edge in that image', metavar='INT', type=int, default=0, show_default=True)
@click.option('--y_start', help='Row of the canvas\'s top edge in that image', metavar='INT', type=int, default=0, show_default=True)
@click.option('--latents', '--on_latents', 'on_latents', cls=dnnlib.util.AliasOption, help='Decode latents with the Stable Diffusion VAE (original release\'s latent models)', metavar='BOOL', type=bool, default=False, show_default=True)
@click.option('--vae', help='VAE for --latents: hub id or local folder  [default: stabilityai/sd-vae-ft-ema]', metavar='ID|DIR', type=str)
@click.option('--pos-embed', '--embed_fq', 'embed_fq', cls=dnnlib.util.AliasOption, help='Coordinates as sin/cos features at F frequencies  [default: from the network]', metavar='F', type=click.IntRange(min=0))
@click.option('--mask-pos', '--mask_pos', 'mask_pos', cls=dnnlib.util.AliasOption, help='Feed zeros for the coordinates (the original release\'s option; any coordinate network)', metavar='BOOL', type=bool, default=False, show_default=True)
@click.option('--bf16', help='Network body in bfloat16 on CUDA (fp16 networks stay fp16) and on CPUs that compute it natively (AVX512-BF16, AMX)', metavar='BOOL', type=bool, default=False, show_default=True)
@click.option('--device', help='Device to sample on  [default: cuda if available, else cpu]', metavar='STR', type=str)
@click.option('--trust-pickle', 'trust_pickle', help='Unpickle --network and --guide-network fully, running code they carry (only for files you trust)', is_flag=True)
@dnnlib.util.option_errors(names=GENERATE_FIELDS)
def main(network_url, outdir, seeds, subdirs, class_idx, max_batch_size, num_steps, sigma_min, sigma_max, rho,
         S_churn, S_min, S_max, S_noise, solver, disc, schedule, scaling, cfg, guide_net, guidance, grid_path,
         resolution, image_size, x_start, y_start, on_latents, vae, embed_fq, mask_pos, bf16, device, trust_pickle):
    """Sample images from a trained network with EDM's samplers (Karras et al. 2022), whether
    it was trained on full images or on patches with coordinates (Wang et al. 2023). Takes this
    project's snapshots, EDM's published pickles and the original Patch Diffusion release's.

    Any of --solver/--disc/--schedule/--scaling switches to the generalised sampler; the solvers
    EDM does not have (dpmpp-2m, dpmpp-3m, euler-a) take --disc but not --schedule, --scaling or
    churn. --guide-network guides the network with a weaker one of the same task (autoguidance,
    Karras et al. 2024: unconditional networks too; two network calls per evaluation); it does not
    combine with --cfg. Seeds are split across torchrun processes; each image depends only on its seed.

    \b
    python generate.py --network=network-snapshot-000500.pkl --outdir=samples --seeds=0-99
    torchrun --standalone --nproc_per_node=4 generate.py --network=URL --outdir=fid50k \\
        --seeds=0-49999 --subdirs
    python generate.py --network=NET.pkl --grid=wide.png --image_size=64 --seeds=0-15
    python generate.py --network=edm-cifar10.safetensors --outdir=out --bf16=1
    python generate.py --network=NET.pkl --outdir=out --solver=dpmpp-2m --steps=10
    python generate.py --network=NET.pkl --outdir=out --guide-network=EARLY.pkl --guidance=2
    python generate.py --steps=256 --S_churn=40 --S_min=0.05 --S_max=50 --S_noise=1.003 \\
        --resolution 32 --latents=1 --batch 64 --outdir=out --seeds=0-63 --network=LATENT.pkl
    """
    ctx = click.get_current_context()
    dnnlib.util.check_finite_options(ctx.command, ctx.params, infinite_ok=('S_max',))
    seed_list = parse_seeds(seeds)
    if outdir is None and grid_path is None:
        raise UserError('--outdir: give an output folder (or --grid for one PNG of all samples)')
    if outdir is not None:
        dnnlib.util.check_output_dir(outdir, '--outdir')
    if grid_path is not None:
        png.check_png_dest(grid_path, '--grid')
    dev = distributed.init(device)
    net, decoder = checkpoints.load_network(network_url, trust=trust_pickle)
    checkpoints.check_file_vae(decoder, network_url, vae)
    decoder = configure_network(net, decoder, on_latents, vae, embed_fq, mask_pos)
    use_bf16(net, bf16, dev)
    canvas = build_canvas(net, resolution, image_size, x_start, y_start)
    check_image_pixels(net, decoder, canvas, len(seed_list) if grid_path is not None else None)
    check_sampling_memory(net, canvas, min(max_batch_size, len(seed_list)), dev)
    sampler_kwargs = build_sampler_kwargs(num_steps, sigma_min, sigma_max, rho, S_churn, S_min, S_max, S_noise,
                                          solver, disc, schedule, scaling, cfg)
    sampler.check_sampling_options(net, class_idx, canvas, cfg)
    if guide_net is not None or guidance is not None:
        sampler_kwargs.update(guide_net=load_guide(net, guide_net, guidance, cfg, dev, trust_pickle), guidance=guidance)

    net = net.to(dev)
    decoder.init(dev)
    rank, world = distributed.get_rank(), distributed.get_world_size()
    if outdir is not None and rank == 0:
        remove_stale_temps(outdir)
    my_seeds = seed_list[rank::world]
    distributed.print0(f'Generating {len(seed_list)} images from "{network_url}" on {world} process(es)...')
    kept = []
    for batch_seeds, images in sampler.iter_sample_batches(net, my_seeds, dev, class_idx=class_idx, batch_size=max_batch_size,
                                                           canvas=canvas, decoder=decoder, progress=True, **sampler_kwargs):
        if outdir is not None:
            for seed, image in zip(batch_seeds, images):
                save_sample(image, image_path(outdir, seed, subdirs))
        if grid_path is not None:
            kept.append((batch_seeds, images))

    if grid_path is not None:
        save_grid(kept, seed_list, grid_path)
    distributed.barrier()
    distributed.print0('Done.')  # before shutdown(), after which every process counts as rank 0
    distributed.shutdown()


def save_grid(kept, seed_list, grid_path):
    """Gathers every rank's (seeds, images) and writes the grid on rank 0, in --seeds order."""
    parts = distributed.all_gather_object(kept)
    if distributed.get_rank() != 0:
        return
    by_seed = {}
    for rank_parts in parts:
        for batch_seeds, images in rank_parts:
            by_seed.update(zip(batch_seeds, images))
    png.save_image_grid(torch.stack([by_seed[seed] for seed in seed_list]), grid_path)


if __name__ == '__main__':
    main()
