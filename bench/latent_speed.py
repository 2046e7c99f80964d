"""Training-step time with precomputed latents vs on-the-fly VAE encoding.

    python bench/latent_speed.py                       # CPU, 2 threads, SD VAE layout, 64x64, batch 8
    python bench/latent_speed.py --vae=tiny            # the test suite's 25k-parameter VAE
    python bench/latent_speed.py --device=cuda --resolution=256 --batch=64

What it measures: one training step as the training loop runs it on latents, split into
  data    reading the batch from the data set (PNG decode vs .npy read, no cache),
  encode  `StabilityVAEEncoder.encode`: the VAE encoder plus posterior sample (on the fly), or
          only the posterior sample mean + std·ε (precomputed),
  net     EDM loss on the latents (full-image step with coordinates), backward, Adam,
for a DDPM++ denoiser of 64 channels, mult [1,2,2] on the R/8 latent grid. Medians over
--steps steps, after a full untimed round of both paths (CPU kernels are slow the first time). The VAE is randomly initialised (no weights are downloaded):
`--vae=sd` builds Stable Diffusion's AutoencoderKL layout (block_out_channels 128/256/512/512,
2 layers per block; 83.7M parameters of which the encoder is 34M), so its encoder costs what the
real one costs; `--vae=tiny` is the test suite's. The precomputed set is written with `training.encoders.write_latents`
(float16), so the bench also shows how long precomputing takes per image.
"""

import os
import statistics
import sys
import tempfile
import time

import click
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from training import dataset_convert  # noqa: E402
from torch_utils import misc  # noqa: E402
from training import encoders, training_loop  # noqa: E402
from training.dataset import ArrayFolderDataset, ImageFolderDataset  # noqa: E402
from training.loss import EDMLoss  # noqa: E402
from training.networks import EDMPrecond  # noqa: E402

VAE_CONFIGS = {
    'sd': dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32),
    'tiny': dict(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4),
}


def make_vae(kind, folder):
    """A randomly initialised AutoencoderKL with the SD geometry (/8, 4 channels), saved to `folder`."""
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, down_block_types=('DownEncoderBlock2D',) * 4,
                        up_block_types=('UpDecoderBlock2D',) * 4, **VAE_CONFIGS[kind])
    vae.save_pretrained(folder)
    return sum(p.numel() for p in vae.parameters())


def make_images(folder, count, resolution):
    """`count` smooth random RGB images (upsampled noise) as an EDM zip."""
    rng = np.random.default_rng(0)
    path = os.path.join(folder, 'images.zip')
    with dataset_convert.DatasetWriter(path) as writer:
        for _ in range(count):
            small = rng.integers(0, 256, (resolution // 8, resolution // 8, 3), dtype=np.uint8)
            writer.add_image(small.repeat(8, 0).repeat(8, 1))
    return path


def make_latents(folder, images, vae_dir, device):
    """The precomputed set of `images`; returns (path, seconds per image)."""
    path = os.path.join(folder, 'latents.zip')
    stream = dataset_convert.iterate_images(images)
    start = time.perf_counter()
    with dataset_convert.DatasetWriter(path) as writer:
        encoders.write_latents(writer, stream, vae_dir, device=device)
    return path, (time.perf_counter() - start) / len(stream)


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_steps(dataset, encoder, net, batch, steps, device):
    """Median seconds of (data, encode, net) per step over `steps` steps after one warm-up."""
    loss_fn = EDMLoss()
    optimizer = training_loop.build_optimizer(net, dict(class_name='torch.optim.Adam', lr=1e-4))
    parts = []
    for step in range(steps + 1):
        indices = [(step * batch + i) % len(dataset) for i in range(batch)]
        t0 = time.perf_counter()
        items = torch.as_tensor(np.stack([dataset[i][0] for i in indices])).to(device)
        _sync(device)
        t1 = time.perf_counter()
        rng = misc.BatchRNG([step], rows_per_seed=batch, device=device)
        latents = encoder.encode(items, rng)
        _sync(device)
        t2 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net=net, images=latents, patch_size=latents.shape[-1], rng=rng).mean().backward()
        optimizer.step()
        _sync(device)
        t3 = time.perf_counter()
        if step > 0:
            parts.append((t1 - t0, t2 - t1, t3 - t2))
    return [statistics.median(p[k] for p in parts) for k in range(3)]


def bench_denoiser(side, device):
    """DDPM++ with 64 channels, mult [1,2,2], 2 blocks per level, coordinates, on 4 latent channels."""
    torch.manual_seed(0)
    return EDMPrecond(img_resolution=side, img_channels=4, use_coords=True, model_type='SongUNet',
                      embedding_type='positional', encoder_type='standard', decoder_type='standard',
                      channel_mult_noise=1, resample_filter=[1, 1], model_channels=64, channel_mult=[1, 2, 2],
                      num_blocks=2, attn_resolutions=[]).to(device).train()


@click.command()
@click.option('--vae', 'vae_kind', type=click.Choice(sorted(VAE_CONFIGS)), default='sd', show_default=True)
@click.option('--resolution', type=int, default=64, show_default=True, help='Image side in pixels (latents R/8)')
@click.option('--batch', type=int, default=8, show_default=True)
@click.option('--steps', type=int, default=5, show_default=True)
@click.option('--threads', type=int, default=2, show_default=True)
@click.option('--device', type=str, default=None, help='[default: cuda if available]')
def main(vae_kind, resolution, batch, steps, threads, device):
    torch.set_num_threads(threads)
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    with tempfile.TemporaryDirectory() as folder:
        vae_dir = os.path.join(folder, 'vae')
        params = make_vae(vae_kind, vae_dir)
        images = make_images(folder, batch * (steps + 1), resolution)
        latents, precompute = make_latents(folder, images, vae_dir, device)
        encoder = encoders.StabilityVAEEncoder(vae_name=vae_dir)
        encoder.init(device)
        side = resolution // 8
        print(f'device {device}, {threads} threads; VAE "{vae_kind}" ({params:,} parameters, random weights); '
              f'{resolution}x{resolution} images -> 4x{side}x{side} latents; batch {batch}; median of {steps} steps')
        print(f'precomputing: {precompute * 1e3:.1f} ms per image (dataset_tool.py --encoder=vae)')
        print(f'{"path":<12s} {"data ms":>9s} {"encode ms":>10s} {"net ms":>9s} {"step ms":>9s}')
        results = {}
        paths = (('on-the-fly', ImageFolderDataset(images)), ('precomputed', ArrayFolderDataset(latents)))
        for timed in (False, True):  # the first round only warms up (kernel selection, allocator)
            for name, dataset in paths:
                data, encode, step = time_steps(dataset, encoder, bench_denoiser(side, device), batch, steps, device)
                results[name] = data + encode + step
                if timed:
                    print(f'{name:<12s} {data * 1e3:9.1f} {encode * 1e3:10.1f} {step * 1e3:9.1f} {results[name] * 1e3:9.1f}')
        print(f'speed-up of a step with precomputed latents: {results["on-the-fly"] / results["precomputed"]:.2f}x')


if __name__ == '__main__':
    main()
