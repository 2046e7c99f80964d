"""Training speed of patch mode versus full-image mode on the CPU bench configuration.

The configuration of SPEC section 9: DDPM++ with 32 channels, channel_mult [1,2,2], 32x32 digits
as RGB, batch 32, one process, 2 threads. Each mode runs the real training loop (train.py's
options, data loader, loss, optimizer, EMA) in its own subprocess for a fixed number of kimg;
the figure is EDM's sec/kimg, the median over ticks after the first. Prints s/kimg of each mode,
their ratio, and each process's peak RSS.

    python bench/train_speed.py [--kimg-patch 3] [--kimg-full 1.5] [--threads 2]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BENCH_ARGS = ['--arch=ddpmpp', '--cbase=32', '--cres=1,2,2', '--batch=32', '--workers=1', '--seed=0',
              '--lr-rampup=10', '--duration=1']


def make_dataset(path):
    """32x32 RGB digits from the bundled MNIST sample (2,000 images are plenty for timing)."""
    cmd = [sys.executable, os.path.join(ROOT, 'dataset_tool.py'), 'convert', f'--source={ROOT}/data/mnist-10k-28x28.npz',
           f'--dest={path}', '--resolution=32x32', '--channels=3', '--max-images=2000']
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)


def run_mode(data, real_p, kimg, tick, threads, device):
    """Child process: trains one mode and prints a JSON line with its tick timings."""
    import torch
    torch.set_num_threads(threads)
    import train
    from torch_utils import distributed as dist
    from training import training_loop

    args = ['--outdir', 'unused', '--data', data, f'--real_p={real_p}', f'--tick={tick}'] + BENCH_ARGS
    if device:
        args.append(f'--device={device}')
    ctx = train.main.make_context('train.py', args)
    opts = __import__('dnnlib').EasyDict(ctx.params)
    dev = dist.init(opts.device)
    c, _desc = train.build_config(opts, 1)
    with tempfile.TemporaryDirectory() as run_dir:
        c.update(run_dir=run_dir, seed=0, total_kimg=kimg, snapshot_ticks=None, state_dump_ticks=None, sample_grid=False)
        training_loop.training_loop(**c, device=dev)
        with open(os.path.join(run_dir, 'stats.jsonl')) as f:
            ticks = [json.loads(line) for line in f]
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print('RESULT ' + json.dumps(dict(sec_per_kimg=[t['sec_per_kimg'] for t in ticks[1:]], peak_rss_gb=peak_rss_gb,
                                      gpumem_gb=ticks[-1].get('gpumem_gb'))))


def median(values):
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])


def measure(data, real_p, kimg, tick, threads, device):
    """Runs one mode in a fresh process (so its peak RSS is its own) and parses its result."""
    cmd = [sys.executable, __file__, '--child', data, '--real-p', str(real_p), '--kimg-patch', str(kimg),
           '--tick', str(tick), '--threads', str(threads)] + (['--device', device] if device else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, env=env).stdout
    line = [ln for ln in out.splitlines() if ln.startswith('RESULT ')][-1]
    return json.loads(line[len('RESULT '):])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--kimg-patch', type=float, default=3.0, help='kimg to train in patch mode')
    parser.add_argument('--kimg-full', type=float, default=1.5, help='kimg to train in full-image mode')
    parser.add_argument('--tick', type=float, default=0.25, help='kimg per tick (one timing sample each)')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--device', default=None, help='cpu or cuda (default: CPU unless CUDA is available)')
    parser.add_argument('--real-p', type=float, default=0.5)
    parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        run_mode(args.child, args.real_p, args.kimg_patch, args.tick, args.threads, args.device)
        return

    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, 'digits-rgb-32x32.zip')
        make_dataset(data)
        patch = measure(data, args.real_p, args.kimg_patch, args.tick, args.threads, args.device)
        full = measure(data, 1.0, args.kimg_full, args.tick, args.threads, args.device)
    p, f = median(patch['sec_per_kimg']), median(full['sec_per_kimg'])
    print(f'bench config: DDPM++ 32 ch, mult [1,2,2], 32x32 RGB digits, batch 32, 1 process, {args.threads} threads')
    print(f'patch mode (real_p {args.real_p}): {p:7.2f} s/kimg  (median of {len(patch["sec_per_kimg"])} ticks)  '
          f'peak RSS {patch["peak_rss_gb"]:.2f} GB')
    print(f'full-image mode (real_p 1):  {f:7.2f} s/kimg  (median of {len(full["sec_per_kimg"])} ticks)  '
          f'peak RSS {full["peak_rss_gb"]:.2f} GB')
    if patch.get('gpumem_gb') is not None:
        print(f'peak GPU memory: patch {patch["gpumem_gb"]:.2f} GB, full {full["gpumem_gb"]:.2f} GB')
    print(f'speed-up of patch mode: {f / p:.2f}x  (compute ratio 2.71; original release 2.46)')
    print(f'versus the original release (46 s/kimg patch, 112 s/kimg full): patch {46 / p:.2f}x, full {112 / f:.2f}x')


if __name__ == '__main__':
    main()
