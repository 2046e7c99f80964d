"""Sampling speed of the bench network, and sample quality against network calls per image.

Speed (without --network): the bench network (SPEC §9: DDPM++ 32x32, 32 channels, mult
[1,2,2], 3 channels plus coordinates, 2,741,923 parameters), random weights, EDM sampler.

    python bench/sample_speed.py                 # CPU, 2 threads, batch 64, 18 steps
    python bench/sample_speed.py --device=cuda --batch=256

Prints the median time of one network call under each inference variant that was tried
(autograd off via no_grad vs inference_mode, NCHW vs channels_last weights) and the
images/second of a full 18-step sampling run through `training.sampler.sample_images`
(35 network calls per batch), which is what generate.py and the training loop use.

Quality (with --network): FID of --num samples (seeds 0..N-1) against reference statistics from
`fid.py ref`, for each solver at about each number of network calls per image (heun takes the
largest 2N-1 within it), with --cfg or --guide-network/--guidance applied to every row; with
--digits also the digit score of bench/digit_score.py (MNIST networks); with --ode-error the RMS
distance (pixels in [0, 1]) of each image from the same seed's image by heun at 255 calls, i.e. how
far the solver ends from the ODE's end point (no Inception network needed).

    python fid.py ref --data=datasets/mnist-32x32.zip --dest=ref-2000.npz --num=2000
    python bench/sample_speed.py --network=runs/00000-demo/network-snapshot-000400.safetensors \
        --ref=ref-2000.npz --num=2000 --cfg=2.5 --digits
"""

import os
import statistics
import sys
import time

import click
import torch

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH))
sys.path.insert(0, BENCH)

from dnnlib.util import UserError, option_errors  # noqa: E402
from torch_utils import misc  # noqa: E402
from training import checkpoints, metrics, sampler  # noqa: E402
from training.networks import EDMPrecond  # noqa: E402
from quality import parse_list  # noqa: E402

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


def steps_for_calls(solver, calls):
    """The most steps whose network calls per image do not exceed `calls` (at least one)."""
    return max(1, (calls + 1) // 2) if solver == 'heun' else calls


REFERENCE_STEPS = 128  # heun at 255 calls: the reference end points of the ODE for --ode-error


def quality_table(network, ref, num, solvers, calls, cfg, guide_network, guidance, digits, batch, device, ode_error=False,
                  bf16_features=False):
    """Prints FID (with `ref`), the digit score (with `digits`) and the RMS pixel distance to the
    ODE's end points (with `ode_error`) of each solver at each call budget."""
    import numpy as np
    stats_ref = None if ref is None else metrics.load_stats(ref)
    net = checkpoints.load_network(network)[0].to(device)
    kwargs = dict(cfg_scale=cfg)
    if guide_network is not None:
        kwargs.update(guide_net=checkpoints.load_network(guide_network, 'guide_network')[0].to(device),
                      guidance=guidance)
    detector = None if ref is None else metrics.load_detector(device=device, bf16=bf16_features)
    classifier = None
    if digits:
        import digit_score
        classifier = digit_score.load_classifier(digit_score.DEFAULT_WEIGHTS)
    exact = None
    if ode_error:
        exact = sampler.sample_images(net, range(num), device, batch_size=batch, solver='heun', num_steps=REFERENCE_STEPS,
                                      **kwargs).to(torch.float64) / 255
    guide = f'autoguidance w={guidance} by {guide_network}' if guide_network else (f'cfg {cfg}' if cfg else 'no guidance')
    per_eval = 2 if (cfg is not None or guide_network is not None) else 1
    print(f'{num} samples (seeds 0-{num - 1}) of {network} ({guide}; {per_eval} network pass(es) per call)')
    print(f'{"solver":<10s} {"calls":>6s} {"steps":>6s}' + (f' {metrics.fid_label(num):>9s}' if ref else '')
          + (f' {"digits":>7s}' if digits else '') + (f' {"ode-err":>8s}' if ode_error else '') + f' {"seconds":>8s}')
    for solver in solvers:
        for budget in calls:
            steps = steps_for_calls(solver, budget)
            start = time.perf_counter()
            images = sampler.sample_images(net, range(num), device, batch_size=batch, solver=solver, num_steps=steps,
                                           **kwargs)
            seconds = time.perf_counter() - start
            line = f'{solver:<10s} {sampler.network_calls(solver, steps):6d} {steps:6d}'
            if detector is not None:
                mu, sigma = metrics.stats_from_features(metrics.compute_features(detector, images))
                line += f' {metrics.calculate_fid_from_inception_stats(mu, sigma, *stats_ref):9.2f}'
            if classifier is not None:
                line += f' {digit_score.digit_score(list(images[:, 0].numpy().astype(np.uint8)), classifier)[0]:7.3f}'
            if exact is not None:
                line += f' {(images.to(torch.float64) / 255 - exact).square().mean().sqrt().item():8.4f}'
            print(line + f' {seconds:8.1f}', flush=True)


@click.command()
@click.option('--batch', type=int, default=64, show_default=True, help='Images per batch')
@click.option('--steps', type=int, default=18, show_default=True, help='Sampling steps (2N-1 network calls)')
@click.option('--threads', type=int, default=2, show_default=True, help='torch.set_num_threads on CPU')
@click.option('--repeats', type=int, default=5, show_default=True, help='Timed network calls per variant')
@click.option('--device', type=str, default='cpu', show_default=True, help='Device to run on')
@click.option('--network', help='Quality mode: snapshot to sample from', metavar='PATH', type=str)
@click.option('--ref', help='Quality mode: reference statistics from fid.py ref', metavar='NPZ', type=str)
@click.option('--num', help='Quality mode: samples per FID', type=click.IntRange(min=2), default=2000, show_default=True)
@click.option('--solvers', help='Quality mode: solvers to compare', metavar='LIST', default=','.join(sampler.SOLVERS), show_default=True)
@click.option('--calls', help='Quality mode: network calls per image', metavar='LIST', default='5,10,15,20,35', show_default=True)
@click.option('--cfg', help='Quality mode: classifier-free guidance weight', metavar='FLOAT', type=float)
@click.option('--guide-network', help='Quality mode: autoguidance by this snapshot', metavar='PATH', type=str)
@click.option('--guidance', help='Quality mode: autoguidance weight', metavar='FLOAT', type=float, default=2.0, show_default=True)
@click.option('--digits', help='Quality mode: also the digit score (MNIST)', is_flag=True)
@click.option('--bf16-features', help='Quality mode: Inception features in bfloat16 (fid.py --bf16=1; the reference must match)', is_flag=True)
@click.option('--ode-error', help=f'Quality mode: also the RMS pixel distance to heun at {2 * REFERENCE_STEPS - 1} calls', is_flag=True)
@option_errors(names={'bf16': '--bf16-features'})
def main(batch, steps, threads, repeats, device, network, ref, num, solvers, calls, cfg, guide_network, guidance, digits,
         bf16_features, ode_error):
    """Print sampling speed figures for the bench network, or a quality table for --network."""
    device = torch.device(device)
    if device.type == 'cpu':
        torch.set_num_threads(threads)
    if network is not None:
        if ref is None and not digits and not ode_error:
            raise UserError('--ref: give the reference statistics (fid.py ref) for FID, or --digits or --ode-error')
        if cfg is not None and guide_network is not None:
            raise UserError('--guide-network: autoguidance does not combine with --cfg; use one of them')
        budgets = parse_list('--calls', calls, kind=int)
        if min(budgets) < 1:
            raise UserError(f'--calls: "{calls}" must list positive numbers of network calls')
        quality_table(network, ref, num, parse_list('--solvers', solvers, choices=list(sampler.SOLVERS)), budgets, cfg,
                      guide_network, guidance, digits, batch, device, ode_error, bf16_features)
        return
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
