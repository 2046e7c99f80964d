"""Data of shapes other than square RGB, for tests and benchmarks of rectangular training:
two-digit numbers (32 high x 64 wide, labels 0-99) made of the bundled MNIST digits, and long thin
1-channel float signals (sums of random sines).

    python bench/shapes.py numbers --dest=two-digits.npz --count=10000
    python bench/shapes.py signals --dest=signals.npz --count=2000
    python dataset_tool.py --source=two-digits.npz --dest=datasets/two-digits-64x32.zip
"""

import os

import click
import numpy as np

import dnnlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = os.path.join(ROOT, 'data', 'mnist-10k-28x28.npz')


def two_digit_numbers(count, seed=0):
    """(count, 32, 64) uint8 images of two random MNIST digits side by side (each zero-padded from
    28x28 to 32x32, as EDM's MNIST) and their int64 labels 10·left + right (0-99)."""
    with np.load(MNIST) as data:
        digits, digit_labels = data['images'], data['labels'].astype(np.int64)
    digits = np.pad(digits, [(0, 0), (2, 2), (2, 2)])
    pairs = np.random.default_rng(seed).integers(0, len(digits), (count, 2))
    images = np.concatenate([digits[pairs[:, 0]], digits[pairs[:, 1]]], axis=2)
    return images, digit_labels[pairs[:, 0]] * 10 + digit_labels[pairs[:, 1]]


def sine_signals(count, height=16, width=256, components=3, seed=0):
    """(count, 1, height, width) float32 signals: every row a sum of `components` sines of random
    frequency (1-8 periods over the width), phase and amplitude, the frequencies shared by the rows
    of an item and the phase drifting from row to row. Values lie in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi, width, endpoint=False)
    freqs = rng.uniform(1, 8, (count, components, 1, 1))
    phases = rng.uniform(0, 2 * np.pi, (count, components, 1, 1)) + rng.uniform(0, 0.3, (count, components, 1, 1)) * np.arange(height).reshape(1, 1, -1, 1)
    amps = rng.dirichlet(np.ones(components), count).reshape(count, components, 1, 1)
    signals = (amps * np.sin(freqs * t.reshape(1, 1, 1, -1) + phases)).sum(axis=1, keepdims=True)
    return signals.astype(np.float32)


@click.command()
@click.argument('kind', type=click.Choice(['numbers', 'signals']))
@click.option('--dest', help='Output .npz', metavar='PATH', required=True)
@click.option('--count', help='Number of items', metavar='INT', type=click.IntRange(min=1), default=10000, show_default=True)
@click.option('--seed', help='Random seed', metavar='INT', type=int, default=0, show_default=True)
def main(kind, dest, count, seed):
    """Writes two-digit numbers ('images' uint8 (N, 32, 64), 'labels') or sine signals
    ('images' float32 (N, 1, 16, 256) in [-1, 1]) as an .npz for dataset_tool.py."""
    if kind == 'numbers':
        images, labels = two_digit_numbers(count, seed)
        arrays = dict(images=images, labels=labels)
    else:
        arrays = dict(images=sine_signals(count, seed=seed))
    with dnnlib.util.atomic_write(dest, 'wb') as f:
        np.savez(f, **arrays)
    click.echo(f'Wrote {count} {kind} to {dest}')


if __name__ == '__main__':
    main()
