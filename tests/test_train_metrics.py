"""Metrics while training (training/train_metrics.py) with a tiny stand-in detector: the scores in
stats.jsonl equal FID/KID computed independently from the snapshot of the same tick, the reference
statistics are cached beside the data set and reused, the plots exist, and bad options are one line."""

import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import train
from test_fid import StandInNet
from test_training import TINY, make_zip
from test_training_loop import loop_config
from training import checkpoints, metrics, run_files, sampler, train_metrics, training_loop


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    return make_zip(tmp_path_factory.mktemp('data') / 'digits.zip', count=32, size=8)


@pytest.fixture(scope='module')
def detector(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('det') / 'standin.pt')
    torch.jit.script(StandInNet()).save(path)
    return path


def test_scores_at_ticks_match_an_independent_computation(digits, detector, tmp_path):
    """--metrics=fid,kid --metrics-num=6 --metrics-every=2 with --ema-std=0.1 on 4 ticks: ticks 2
    and 3 (the last) are scored, for the EMA and the profile; the EMA's FID and KID equal those of
    the tick's snapshot computed here from the same seeds against the data set's own features."""
    c = loop_config(digits, '--duration=0.000008', '--patch=0', '--metrics=fid,kid', '--metrics-num=6',
                    '--metrics-every=2', '--ema-std=0.1')
    c.metrics_kwargs.detector = detector
    c.update(snapshot_ticks=1)
    training_loop.training_loop(**c, run_dir=str(tmp_path))
    with open(tmp_path / 'stats.jsonl') as f:
        lines = [json.loads(line) for line in f]
    scored = ['fid', 'fid/ema-0.100', 'kid', 'kid/ema-0.100']
    assert [sorted(line.get('metrics', {})) for line in lines] == [[], [], scored, scored]
    assert {'metrics.png', 'metrics-kid.png'} <= set(os.listdir(tmp_path))

    det = metrics.load_detector(detector, device='cpu')
    net, _ = checkpoints.load_network(str(tmp_path / run_files.snapshot_name(0)))  # the last tick's
    feats = metrics.compute_features(det, sampler.sample_images(net, seeds=range(6), device='cpu'))
    mu_ref, sigma_ref, feats_ref = metrics.calculate_inception_stats(digits, detector=det, num_workers=0, return_features=True)
    expected_fid = metrics.calculate_fid_from_inception_stats(*metrics.stats_from_features(feats), mu_ref, sigma_ref)
    assert lines[-1]['metrics']['fid'] == pytest.approx(expected_fid, rel=1e-6)
    assert lines[-1]['metrics']['kid'] == pytest.approx(metrics.compute_kid(feats, feats_ref)[0], rel=1e-6)
    assert lines[-1]['metrics']['fid/ema-0.100'] != lines[-1]['metrics']['fid']


def test_reference_statistics_are_cached_beside_the_data_and_reused(digits, detector, tmp_path, monkeypatch):
    data = tmp_path / 'digits.zip'
    data.write_bytes(open(digits, 'rb').read())
    kwargs = dict(class_name='training.dataset.ImageFolderDataset', path=str(data))
    first = train_metrics.TickMetrics(kwargs, metrics=['fid'], num=4, detector=detector, device='cpu')
    cache = train_metrics.ref_path(str(data))
    assert os.path.isfile(cache) and cache == str(data) + '.fid-ref.npz'
    with np.load(cache) as saved:
        assert 'features' not in saved.files

    def fail(*args, **kwargs):
        raise AssertionError('computed again')

    monkeypatch.setattr(metrics, 'calculate_inception_stats', fail)
    again = train_metrics.TickMetrics(kwargs, metrics=['fid'], num=4, detector=detector, device='cpu')
    assert np.array_equal(first.ref[0], again.ref[0]) and np.array_equal(first.ref[1], again.ref[1])
    with pytest.raises(AssertionError, match='computed again'):  # KID needs features the cache lacks
        train_metrics.TickMetrics(kwargs, metrics=['fid', 'kid'], num=4, detector=detector, device='cpu')


@pytest.mark.parametrize('options,needle', [
    (['--metrics=fid,is'], 'Error: --metrics: "fid,is" is not a list of fid, kid'),
    (['--metrics=fid', '--metrics-num=1'], 'Error: Invalid value for \'--metrics-num\''),
])
def test_bad_metrics_options_are_one_line(digits, tmp_path, options, needle):
    result = CliRunner().invoke(train.main, ['--outdir', str(tmp_path), '--data', digits, '--patch=0', '-n', *TINY, *options])
    assert result.exit_code != 0 and needle in result.output, result.output
    assert 'Traceback' not in result.output
