"""Live logs (training/live_log.py): every number of the stats lines and the sample grids reach
TensorBoard's events, read back with TensorBoard's own reader; wandb missing is one line."""

import importlib.util
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from test_training import TINY, make_zip
from test_training_loop import loop_config
from training import live_log, training_loop

pytest.importorskip('tensorboard')
from tensorboard.backend.event_processing import event_accumulator  # noqa: E402


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    return make_zip(tmp_path_factory.mktemp('data') / 'digits.zip', count=32, size=8)


def read_events(run_dir):
    """TensorBoard's view of a folder: {tag: [(step, value)]} and {tag: [(step, width, height)]}."""
    acc = event_accumulator.EventAccumulator(str(run_dir), size_guidance={'scalars': 0, 'images': 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()['scalars']}
    images = {tag: [(e.step, e.width, e.height) for e in acc.Images(tag)] for tag in acc.Tags()['images']}
    return scalars, images


def test_flatten_keeps_the_finite_numbers_under_slash_names():
    fields = dict(tick=3, kimg=1.5, gpumem_gb=None, loss=float('nan'), loss_by_patch={'4': 0.5, '8x4': 0.25},
                  metrics={'fid': 12.0, 'fid/ema-0.100': 11.0}, note='text', flag=True)
    assert live_log.flatten(fields) == {'tick': 3.0, 'kimg': 1.5, 'loss_by_patch/4': 0.5, 'loss_by_patch/8x4': 0.25,
                                        'metrics/fid': 12.0, 'metrics/fid/ema-0.100': 11.0}


def test_tensorboard_events_hold_each_field_and_each_new_grid_once(tmp_path):
    grid = tmp_path / 'samples-000001.png'
    Image.fromarray(np.full((12, 20, 3), 200, np.uint8)).save(grid)
    log = live_log.open_logger(str(tmp_path), kind='tensorboard')
    log.log(dict(tick=0, kimg=0.5, loss=0.75, lr=1e-3, loss_by_patch={'4': 0.5}), str(grid))
    log.log(dict(tick=1, kimg=1.0, loss=0.5, lr=1e-3, loss_by_patch={'4': 0.25}, metrics={'fid': 40.0}), str(grid))
    log.close()
    scalars, images = read_events(tmp_path)
    assert scalars['loss'] == [(500, 0.75), (1000, 0.5)]
    assert scalars['loss_by_patch/4'] == [(500, 0.5), (1000, 0.25)]
    assert scalars['metrics/fid'] == [(1000, 40.0)]
    assert images == {'samples': [(500, 20, 12)]}


def test_training_with_tensorboard_logs_stats_lines_and_grids(digits, tmp_path):
    c = loop_config(digits, '--duration=0.000006', '--patch=0', '--logger=tensorboard')
    c.update(snapshot_ticks=2, sample_grid=True)
    training_loop.training_loop(**c, run_dir=str(tmp_path))
    scalars, images = read_events(tmp_path)
    with open(tmp_path / 'stats.jsonl') as f:
        lines = [json.loads(line) for line in f]
    for name, value in live_log.flatten(lines[-1]).items():
        assert scalars[name][-1] == (round(lines[-1]['kimg'] * 1000), pytest.approx(value, rel=1e-6)), name
    assert [step for step, _ in scalars['loss']] == [2, 4, 6]
    assert [step for step, _w, _h in images['samples']] == [2, 6]  # the grids of ticks 0 and 2 (kimg 0, rewritten)


@pytest.mark.skipif(importlib.util.find_spec('wandb') is not None, reason='wandb is installed here')
def test_wandb_missing_is_one_line(digits, tmp_path):
    import train
    result = CliRunner().invoke(train.main, ['--outdir', str(tmp_path), '--data', digits, '--patch=0', '--logger=wandb', '-n', *TINY])
    assert result.exit_code == 1
    assert result.output.strip() == 'Error: --logger: wandb is not installed (pip install wandb), or use tensorboard'
