"""Patches of rectangles: aspect-keeping (W/k x H/k) against squares of the shorter side's
fractions, on the two-digit numbers (64x32: 64 wide, 32 high). Trains each for the same number of
images with train.py, then scores the EMA network by its EDM loss on held-out full images (fixed
seeds, so both networks see the same noise) and reports the training speed.

    python bench/rect_patches.py --outdir=rect-runs --kimg=4
"""

import json
import os
import pickle
import subprocess
import sys

import click
import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'bench'))

import shapes  # noqa: E402
from torch_utils.misc import BatchRNG  # noqa: E402
from training.loss import EDMLoss  # noqa: E402

SCHEMES = {'aspect': '16x8,32x16', 'squares': '8x8,16x16'}


def held_out_loss(net, images, labels, seed=1000):
    """Mean EDM loss of `net` on full images, noise and σ drawn from per-image seeds."""
    x = torch.as_tensor(images, dtype=torch.float32).unsqueeze(1) / 127.5 - 1
    onehot = torch.nn.functional.one_hot(torch.as_tensor(labels), net.label_dim).float() if net.label_dim else None
    rng = BatchRNG(list(range(seed, seed + len(x))), 1, 'cpu')
    with torch.no_grad():
        return float(EDMLoss()(net, x, onehot, rng=rng).mean())


@click.command()
@click.option('--outdir', required=True, metavar='DIR')
@click.option('--kimg', type=float, default=4, show_default=True, metavar='KIMG')
@click.option('--count', type=int, default=5000, show_default=True, metavar='INT')
def main(outdir, kimg, count):
    """Trains both schemes and prints one JSON line per scheme."""
    os.makedirs(outdir, exist_ok=True)
    data = os.path.join(outdir, 'numbers.zip')
    if not os.path.exists(data):
        images, labels = shapes.two_digit_numbers(count)
        np.savez(os.path.join(outdir, 'numbers.npz'), images=images, labels=labels)
        subprocess.run([sys.executable, os.path.join(ROOT, 'dataset_tool.py'), '--source', os.path.join(outdir, 'numbers.npz'),
                        '--dest', data], check=True, capture_output=True)
    test_images, test_labels = shapes.two_digit_numbers(256, seed=99)
    for name, sizes in SCHEMES.items():
        run = os.path.join(outdir, name)
        subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'), '--outdir', run, '--data', data, '--preset=bench',
                        '--cbase=16', '--cond=1', '--batch=16', f'--duration={kimg / 1000}', f'--tick={kimg / 4}', '--snap=1000',
                        '--dump=1000', '--workers=0', '--lr=2e-3', '--lr-rampup=0.0001', '--seed=0',
                        f'--patch-sizes={sizes}', '--loss-norm=sum', '--device=cpu'], check=True, capture_output=True)
        run_dir = os.path.join(run, sorted(os.listdir(run))[-1])
        with open(os.path.join(run_dir, 'stats.jsonl')) as f:
            stats = [json.loads(line) for line in f]
        snapshot = sorted(n for n in os.listdir(run_dir) if n.startswith('network-snapshot-') and n.endswith('.pkl'))[-1]
        with open(os.path.join(run_dir, snapshot), 'rb') as f:
            net = pickle.load(f)['ema']
        seconds = stats[-1]['time']
        print(json.dumps(dict(scheme=name, patch_sizes=sizes, kimg=stats[-1]['kimg'], steps=stats[-1]['step'], seconds=round(seconds, 1),
                              sec_per_kimg=round(seconds / stats[-1]['kimg'], 2),
                              held_out_loss=round(held_out_loss(net, test_images, test_labels), 4))), flush=True)


if __name__ == '__main__':
    main()
