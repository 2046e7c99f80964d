"""Sampling speed of the bench network (SPEC §9: DDPM++ 32x32, 32 channels, mult [1,2,2],
3 channels plus coordinates, 2,741,923 parameters), random weights, EDM sampler.

    python bench/sample_speed.py                 # CPU, 2 threads, batch 64, 18 steps
    python bench/sample_speed.py --device=cuda --batch=256

Prints the median time of one network call under each inference variant that was tried
(autograd off via no_grad vs inference_mode, NCHW vs channels_last weights) and the
images/second of a full 18-step sampling run through `training.sampler.sample_images`
(35 network calls per batch), which is what generate.py and the training loop use.
"""

import os
import statistics
import sys
import time

import click
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from torch_utils import misc  # noqa: E402
from training import sampler  # noqa: E402
from training.networks import EDMPrecond  # noqa: E402

BENCH_PARAMS = 2_741_923


def bench_net():
    """The spec's CPU bench configuration with random weights."""
    torch.manual_seed(0)
    net = EDMPrecond(img_resolution=32, img_channels=3, use_coords=True, model_type='SongUNet',
                     embedding_type='positional', encoder_type='standard', decoder_type='standard',
                     channel_mult_noise=1, resample_filter=[1, 1], model_channels=32, channel_mult=[1, 2, 2])
    return net.eval()


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_calls(net, batch, device, context, repeats, memory_format=torch.contiguous_format):
    """Median seconds of one network call (after one warm-up call) under `context`."""
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=memory_format)
    times = []
    with context():
        net(x, 1.0)
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            net(x, 1.0)
            _sync(device)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_sampling(net, batch, steps, device):
    """Images per second of one full sampling run of `batch` seeds (after a 1-step warm-up)."""
    sampler.sample_images(net, range(batch), device, batch_size=batch, num_steps=1)
    _sync(device)
    start = time.perf_counter()
    sampler.sample_images(net, range(batch), device, batch_size=batch, num_steps=steps)
    _sync(device)
    return batch / (time.perf_counter() - start)


@click.command()
@click.option('--batch', type=int, default=64, show_default=True, help='Images per batch')
@click.option('--steps', type=int, default=18, show_default=True, help='Sampling steps (2N-1 network calls)')
@click.option('--threads', type=int, default=2, show_default=True, help='torch.set_num_threads on CPU')
@click.option('--repeats', type=int, default=5, show_default=True, help='Timed network calls per variant')
@click.option('--device', type=str, default='cpu', show_default=True, help='Device to run on')
def main(batch, steps, threads, repeats, device):
    """Print sampling speed figures for the bench network."""
    device = torch.device(device)
    if device.type == 'cpu':
        torch.set_num_threads(threads)
    net = bench_net().to(device)
    params = misc.count_parameters(net)
    print(f'bench net: {params:,} parameters (spec: {BENCH_PARAMS:,}), batch {batch}, {steps} steps, '
          f'device {device}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get("OMP_WAIT_POLICY", "unset")}')

    variants = [('no_grad', torch.no_grad, torch.contiguous_format),
                ('inference_mode', torch.inference_mode, torch.contiguous_format)]
    for name, context, fmt in variants:
        print(f'  one call, {name:<30s} {time_calls(net, batch, device, context, repeats, fmt) * 1e3:8.1f} ms')
    net_cl = bench_net().to(device).to(memory_format=torch.channels_last)
    print(f'  one call, {"inference_mode + channels_last":<30s} '
          f'{time_calls(net_cl, batch, device, torch.inference_mode, repeats, torch.channels_last) * 1e3:8.1f} ms')

    net_bf16 = None
    if device.type == 'cuda' or misc.cpu_has_bf16():
        net_bf16 = bench_net().to(device)
        net_bf16.use_bf16 = True
        print(f'  one call, {"inference_mode + bf16 body":<30s} {time_calls(net_bf16, batch, device, torch.inference_mode, repeats) * 1e3:8.1f} ms')

    rate = time_sampling(net, batch, steps, device)
    print(f'sampling ({2 * steps - 1} calls per batch, training.sampler.sample_images): {rate:.2f} images/s')
    if net_bf16 is not None:
        print(f'sampling with the bf16 body: {time_sampling(net_bf16, batch, steps, device):.2f} images/s')


if __name__ == '__main__':
    main()
