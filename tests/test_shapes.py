"""Data of other shapes end to end (issue 20): two-digit numbers (32 high x 64 wide) and
1-channel float signals (16 x 256) converted by dataset_tool.py, trained with patches for a few
steps and sampled at full size."""

import os
import pickle

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner

import dataset_tool
import generate
from training import run_files
from training.dataset import ArrayFolderDataset
from conftest import load_bench
from test_training import TINY, invoke_train, read_stats, run_dir_of


@pytest.fixture
def small_grids(monkeypatch):
    """Snapshot grids of 4 images instead of 64: at these shapes the grids, not the training
    steps, would take most of a test's time (grids are tested in test_training.py)."""
    full = run_files.save_sample_grid
    monkeypatch.setattr(run_files, 'save_sample_grid', lambda *args, **kwargs: full(*args, **kwargs, num_images=4))


def train_with_patches(outdir, data, sizes, options):
    """Trains a tiny network with patches; checks the patch shapes (WxH, as printed) it reported and the
    losses, and returns the run folder and its last snapshot's name."""
    result = invoke_train(['--outdir', str(outdir), '--data', data, '--tick=0.001', '--snap=1000', '--dump=1000',
                           '--seed=2', '--device=cpu'] + TINY + options)
    assert result.exit_code == 0, result.output
    run_dir = run_dir_of(outdir)
    stats = read_stats(run_dir)
    reported = {k for s in stats for k in s['loss_by_patch']}
    assert reported and reported <= sizes, reported
    assert 'Patch sizes (WxH): ' in result.output and all(f'{name} (p=' in result.output for name in sizes)
    assert all(np.isfinite(s['loss']) for s in stats)
    return run_dir, sorted(n for n in os.listdir(run_dir) if n.startswith('network-snapshot-') and n.endswith('.pkl'))[-1]


@pytest.fixture(scope='module')
def shapes():
    return load_bench('shapes')


def test_two_digit_numbers_are_mnist_digits_side_by_side(shapes):
    images, labels = shapes.two_digit_numbers(50, seed=1)
    assert images.shape == (50, 32, 64) and images.dtype == np.uint8
    assert labels.min() >= 0 and labels.max() <= 99 and len(set(labels.tolist())) > 20
    assert (images[:, :2] == 0).all() and images[:, :, 30:34].sum() < images[:, :, 8:24].sum()


def test_two_digit_numbers_train_with_patches_and_sample_at_full_size(shapes, tmp_path, small_grids):
    images, labels = shapes.two_digit_numbers(32)
    np.savez(tmp_path / 'numbers.npz', images=images, labels=labels)
    data = str(tmp_path / 'numbers.zip')
    result = CliRunner().invoke(dataset_tool.cli, ['--source', str(tmp_path / 'numbers.npz'), '--dest', data])
    assert result.exit_code == 0, result.output
    assert '64x32, 1 channel, ' in result.output

    run_dir, snapshot = train_with_patches(tmp_path / 'runs', data, {'16x8', '32x16', '64x32'}, ['--cond=1', '--batch=4', '--duration=0.00004'])
    with open(os.path.join(run_dir, snapshot), 'rb') as f:
        net = pickle.load(f)['ema']
    assert net.img_resolution == (32, 64) and net.label_dim == labels.max() + 1

    out = tmp_path / 'samples'
    result = CliRunner().invoke(generate.main, ['--network', os.path.join(run_dir, snapshot), '--outdir', str(out),
                                                '--seeds=0-1', '--steps=2', '--device=cpu'], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for name in sorted(os.listdir(out)):
        with PIL.Image.open(out / name) as img:
            assert img.size == (64, 32) and img.mode == 'L'


def test_signals_train_with_patches_and_sample_at_full_size(shapes, tmp_path, small_grids):
    """1-channel float signals (16x256): stored as float32 .npy items mapped by --range, trained
    with aspect-keeping patches, sampled at 256x16."""
    signals = shapes.sine_signals(16)
    assert signals.shape == (16, 1, 16, 256) and signals.dtype == np.float32 and np.abs(signals).max() <= 1
    np.save(tmp_path / 'signals.npy', signals * 5)
    data = str(tmp_path / 'signals.zip')
    result = CliRunner().invoke(dataset_tool.cli, ['--source', str(tmp_path / 'signals.npy'), '--dest', data, '--range=-5,5'])
    assert result.exit_code == 0, result.output
    dataset = ArrayFolderDataset(data)
    assert dataset.resolution == (16, 256) and np.allclose(dataset[3][0], signals[3], atol=1e-6)

    # --cres=1,1,1: attention at the 64-wide level, not the 128-wide one
    run_dir, snapshot = train_with_patches(tmp_path / 'runs', data, {'64x4', '128x8', '256x16'},
                                           ['--batch=2', '--duration=0.00001', '--cres=1,1,1'])
    grid = tmp_path / 'grid.png'
    result = CliRunner().invoke(generate.main, ['--network', os.path.join(run_dir, snapshot), '--grid', str(grid),
                                                '--seeds=0-1', '--steps=2', '--device=cpu'], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    with PIL.Image.open(grid) as img:
        assert img.size == (2 * 256, 16)
