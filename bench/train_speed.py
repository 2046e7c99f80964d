"""Training speed of patch mode versus full-image mode on the CPU bench configuration.

The configuration of SPEC section 9: DDPM++ with 32 channels, channel_mult [1,2,2], 32x32 digits
as RGB, batch 32, one process, 2 threads. Each mode runs the real training loop (train.py's
options, data loader, loss, optimizer, EMA) in its own subprocess for a fixed number of kimg;
the figures are EDM's sec/kimg over the ticks after the first: their overall rate (total seconds
over total kimg, the throughput that decides how long a run takes; patch mode mixes cheap and
expensive steps, so this is the fair figure) and their median (as the original release was
measured). Prints both for each mode, their ratios, and each process's peak RSS.

    python bench/train_speed.py [--kimg-patch 2] [--kimg-full 1] [--repeats 2] [--threads 2]

The machine's speed drifts by 10-30% over minutes (shared hosts), so the modes run in ABBA order
(patch, full, full, patch, ...) and each mode's figures pool all its runs (run i uses seed i, so the patch draws differ).
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

BENCH_ARGS = ['--arch=ddpmpp', '--cbase=32', '--cres=1,2,2', '--batch=32', '--workers=1',
              '--lr-rampup=10', '--duration=1']


def make_dataset(path):
    """32x32 RGB digits from the bundled MNIST sample (2,000 images are plenty for timing)."""
    cmd = [sys.executable, os.path.join(ROOT, 'dataset_tool.py'), 'convert', f'--source={ROOT}/data/mnist-10k-28x28.npz',
           f'--dest={path}', '--resolution=32x32', '--channels=3', '--max-images=2000']
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)


def run_mode(data, real_p, kimg, tick, threads, device, seed):
    """Child process: trains one mode and prints a JSON line with its tick timings."""
    import torch
    torch.set_num_threads(threads)
    import train
    from torch_utils import distributed as dist
    from training import training_loop

    args = ['--outdir', 'unused', '--data', data, f'--real_p={real_p}', f'--tick={tick}', f'--seed={seed}'] + BENCH_ARGS
    if device:
        args.append(f'--device={device}')
    ctx = train.main.make_context('train.py', args)
    opts = __import__('dnnlib').EasyDict(ctx.params)
    dev = dist.init(opts.device)
    c, _desc = train.build_config(opts, 1)
    with tempfile.TemporaryDirectory() as run_dir:
        c.update(run_dir=run_dir, total_kimg=kimg, snapshot_ticks=None, state_dump_ticks=None, sample_grid=False)
        training_loop.training_loop(**c, device=dev)
        with open(os.path.join(run_dir, 'stats.jsonl')) as f:
            ticks = [json.loads(line) for line in f]
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print('RESULT ' + json.dumps(dict(sec_per_kimg=[t['sec_per_kimg'] for t in ticks[1:]],
                                      seconds=sum(t['sec_per_tick'] for t in ticks[1:]), kimg=ticks[-1]['kimg'] - ticks[0]['kimg'],
                                      peak_rss_gb=peak_rss_gb,
                                      gpumem_gb=ticks[-1].get('gpumem_gb'))))


def median(values):
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])


def pool(results):
    """Combines the runs of one mode: overall rate over all timed ticks, all tick figures, peak RSS."""
    return dict(overall=sum(r['seconds'] for r in results) / sum(r['kimg'] for r in results),
                sec_per_kimg=[v for r in results for v in r['sec_per_kimg']],
                peak_rss_gb=max(r['peak_rss_gb'] for r in results), gpumem_gb=results[-1].get('gpumem_gb'))


def measure(data, real_p, kimg, tick, threads, device, seed):
    """Runs one mode in a fresh process (so its peak RSS is its own) and parses its result."""
    cmd = [sys.executable, __file__, '--child', data, '--real-p', str(real_p), '--kimg-patch', str(kimg),
           '--tick', str(tick), '--threads', str(threads), '--seed', str(seed)] + (['--device', device] if device else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, env=env).stdout
    line = [ln for ln in out.splitlines() if ln.startswith('RESULT ')][-1]
    return json.loads(line[len('RESULT '):])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--kimg-patch', type=float, default=2.0, help='kimg to train in patch mode')
    parser.add_argument('--kimg-full', type=float, default=1.0, help='kimg to train in full-image mode')
    parser.add_argument('--tick', type=float, default=0.5, help='kimg per tick (one timing sample each)')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=2, help='runs of each mode, in ABBA order')
    parser.add_argument('--device', default=None, help='cpu or cuda (default: CPU unless CUDA is available)')
    parser.add_argument('--real-p', type=float, default=0.5)
    parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--seed', type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        run_mode(args.child, args.real_p, args.kimg_patch, args.tick, args.threads, args.device, args.seed)
        return

    runs = {'patch': [], 'full': []}
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, 'digits-rgb-32x32.zip')
        make_dataset(data)
        for rep in range(args.repeats):
            order = ['patch', 'full'] if rep % 2 == 0 else ['full', 'patch']
            for mode in order:
                real_p, kimg = (args.real_p, args.kimg_patch) if mode == 'patch' else (1.0, args.kimg_full)
                runs[mode].append(measure(data, real_p, kimg, args.tick, args.threads, args.device, seed=rep))
    patch, full = pool(runs['patch']), pool(runs['full'])
    p, f = patch['overall'], full['overall']
    pm, fm = median(patch['sec_per_kimg']), median(full['sec_per_kimg'])
    print(f'bench config: DDPM++ 32 ch, mult [1,2,2], 32x32 RGB digits, batch 32, 1 process, {args.threads} threads')
    print(f'patch mode (real_p {args.real_p}): {p:7.2f} s/kimg overall, {pm:7.2f} median of {len(patch["sec_per_kimg"])} ticks ({args.repeats} runs), '
          f'peak RSS {patch["peak_rss_gb"]:.2f} GB')
    print(f'full-image mode (real_p 1):  {f:7.2f} s/kimg overall, {fm:7.2f} median of {len(full["sec_per_kimg"])} ticks, '
          f'peak RSS {full["peak_rss_gb"]:.2f} GB')
    if patch.get('gpumem_gb') is not None:
        print(f'peak GPU memory: patch {patch["gpumem_gb"]:.2f} GB, full {full["gpumem_gb"]:.2f} GB')
    print(f'speed-up of patch mode: {f / p:.2f}x overall, {fm / pm:.2f}x by medians  (compute ratio 2.71; original release 2.46)')
    print(f'versus the original release (46 s/kimg patch, 112 s/kimg full): patch {46 / p:.2f}x, full {112 / f:.2f}x')

if __name__ == '__main__':
    main()
