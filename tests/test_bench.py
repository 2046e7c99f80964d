"""The quality benchmark's plumbing (bench/quality.py): the parts that run before and between hours
of training, so that an interface drift fails here and not at the end of a long study."""

import glob
import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import PIL.Image
import pytest
import torch

import dnnlib
from dnnlib.util import UserError
from conftest import load_bench
from test_training import make_zip
from training import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def quality():
    return load_bench('quality')


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    return make_zip(tmp_path_factory.mktemp('data') / 'digits.zip', count=32, size=8)


def study(**overrides):
    """The benchmark's settings as its command line would give them, for a tiny network."""
    cfg = dnnlib.EasyDict(cbase=8, cres='1,2', batch=2, lr=2e-3, lr_rampup=0.01, dropout=0.0, tick=0.002, budget=4,
                          points=4, fid_num=16, steps=2, device='cpu', seeds=[0], solver='heun', gen_batch=16, ema_std=None,
                          bf16_features=False,
                          ema_search=[], ema_search_num=8)
    cfg.update(overrides)
    return cfg


def write_folder(path, count):
    os.makedirs(path)
    rng = np.random.default_rng(0)
    for i in range(count):
        PIL.Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(os.path.join(path, f'{i:03d}.png'))


def test_reference_count_is_capped_by_the_data_set(quality, tmp_path, monkeypatch):
    data = str(tmp_path / 'tiny')
    write_folder(data, 5)
    seen = {}

    def fake_stats(path, num_expected, device, bf16, **kwargs):
        seen.update(path=path, num=num_expected, device=device, bf16=bf16)
        feats = np.random.default_rng(1).standard_normal((num_expected, 4))
        return feats.mean(0), np.cov(feats, rowvar=False), feats

    monkeypatch.setattr(metrics, 'calculate_inception_stats', fake_stats)
    path, num = quality.reference_stats(data, 100, str(tmp_path / 'cache'), threads=1, device='cpu')
    assert num == 5 and seen == dict(path=data, num=5, device='cpu', bf16=False)
    bf16_path, _ = quality.reference_stats(data, 100, str(tmp_path / 'cache'), threads=1, device='cpu', bf16=True)
    assert seen['bf16'] and os.path.basename(bf16_path) == 'tiny-ref5-bf16-features.npz'
    assert os.path.basename(path) == 'tiny-ref5-features.npz'
    with np.load(path) as ref:
        assert ref['features'].shape == (5, 4)


EXPECTED = {  # use_coords, real_p, progressive, real_p_end, loss_norm, crop sampler
    'patch': (True, 0.5, False, None, 'mean', None), 'patch-0.25': (True, 0.25, False, None, 'mean', None),
    'patch-0.75': (True, 0.75, False, None, 'mean', None), 'progressive': (True, 0.5, True, None, 'mean', None),
    'full': (True, 1.0, False, None, 'mean', None), 'edm': (False, None, None, None, None, None),
    'sum-loss': (True, 0.5, False, None, 'sum', None), 'rising': (True, 0.0, False, 1.0, 'mean', None),
    'content': (True, 0.5, False, None, 'mean', 'content'),
}


@pytest.mark.parametrize('method', list(EXPECTED))
def test_methods_build_valid_training_configs(quality, digits, method):
    """Every method's options pass train.py's own validation, with the same network for all."""
    assert set(EXPECTED) == set(quality.METHODS)
    c = quality.loop_config(quality.method_options(study(), method), digits, seed=3)
    assert c.seed == 3 and c.network_kwargs.model_channels == 8 and c.network_kwargs.dropout == 0.0
    assert c.augment_kwargs is None
    p = c.patch_kwargs or {}
    got = (c.network_kwargs.get('use_coords', False), p.get('real_p'), p.get('progressive'), p.get('real_p_end'),
           p.get('loss_norm'), c.loss_kwargs.get('crop_sampler'))
    assert got == EXPECTED[method]


def test_train_options_reach_every_method_before_its_own(quality, digits):
    """--train-options (e.g. the demo's fast network) apply to every method; a method's own
    options still win."""
    cfg = study(train_options='--blocks=1 --attn=none --real_p=0.9')
    for method, real_p in (('patch', 0.5), ('patch-0.25', 0.25)):
        c = quality.loop_config(quality.method_options(cfg, method), digits, seed=0)
        assert c.network_kwargs.num_blocks == 1 and c.network_kwargs.attn_resolutions == []
        assert c.patch_kwargs.real_p == real_p


def test_a_patch_step_costs_its_share_of_a_full_step(quality, digits):
    """Compute is counted in FLOPs: a step of side-s patches of 8x8 images about s/8 of a full
    step; plain EDM's full step slightly less than one with coordinate channels."""
    cfg = study()
    full = quality.full_step_flops(cfg, digits)
    patch = quality.step_flops(quality.loop_config(quality.method_options(cfg, 'patch'), digits, 0))
    assert patch[8] == full
    assert patch[4] / full == pytest.approx(0.5, rel=0.2) and patch[2] / full == pytest.approx(0.25, rel=0.3)
    edm = quality.step_flops(quality.loop_config(quality.method_options(cfg, 'edm'), digits, 0))
    assert list(edm) == [8] and 0.9 * full < edm[8] < full


@pytest.mark.parametrize('method', ['full', 'patch', 'rising'])
def test_duration_ends_where_the_compute_budget_does(quality, digits, method):
    """Replaying the schedule with the returned duration spends the budget exactly when the images
    run out, also for a schedule that follows the progress."""
    from training.patch import PatchSchedule
    c = quality.loop_config(quality.method_options(study(), method), digits, seed=1)
    cost = {8: 1.0, 4: 0.5, 2: 0.25}
    total = quality.images_for_budget(c, cost, 30)
    if method == 'full':
        assert total == 30 * 2
        return
    p = c.patch_kwargs
    schedule = PatchSchedule(8, p.patch_sizes, p.real_p, seed=1, progressive=p.progressive, real_p_end=p.real_p_end)
    nimg, spent, step = 0, 0.0, 0
    while spent < 30:
        side = schedule.size_for_step(step, nimg / total)
        nimg, spent, step = nimg + 2 * schedule.batch_mul(side), spent + cost[side], step + 1
    assert nimg == total and spent < 31
    assert quality.follows_progress(c) == (method == 'rising')


def train(quality, cfg, digits, out, method='patch'):
    spec = quality.run_spec(cfg, method, 0, digits, quality.full_step_flops(cfg, digits))
    run_dir = os.path.join(out, quality.run_name(method, 0))
    quality.check_resumable(run_dir, spec)
    return quality.train_run(cfg, spec, run_dir, digits), run_dir


def snapshot_weights(run_dir, point):
    with open(os.path.join(run_dir, point['snapshot']), 'rb') as f:
        return list(pickle.load(f)['ema'].state_dict().values())


def test_training_resumes_after_the_last_point_and_extends_exactly(quality, digits, tmp_path):
    """A study stopped after 2 of 4 points and extended to the full budget ends with the same
    network as one trained to the full budget at once, and keeps its finished points."""
    whole, _ = train(quality, study(), digits, str(tmp_path / 'whole'))
    assert [p['point'] for p in whole] == [0, 1, 2, 3]
    assert all(p['compute'] >= t - 1e-9 for p, t in zip(whole, [1, 2, 3, 4]))
    half, run_dir = train(quality, study(budget=2, points=2), digits, str(tmp_path / 'split'))
    extended, _ = train(quality, study(), digits, str(tmp_path / 'split'))
    assert extended[:2] == half
    for key in ('steps', 'nimg', 'compute'):
        assert [p[key] for p in extended] == [p[key] for p in whole]
    for a, b in zip(snapshot_weights(str(tmp_path / 'whole' / 'patch-seed0'), whole[-1]), snapshot_weights(run_dir, extended[-1])):
        assert torch.equal(a, b)
    with open(os.path.join(run_dir, 'point-3', 'stats.jsonl')) as f:
        assert len(f.readlines()) == whole[-1]['steps']  # one tick per step, the history carried on
    assert sorted(n for n in os.listdir(os.path.join(run_dir, 'point-3')) if n.endswith('.pkl')) == \
        [os.path.basename(extended[-1]['snapshot'])]
    assert [os.path.exists(os.path.join(run_dir, p['state'])) for p in extended] == [False, False, False, True]


def test_runs_that_cannot_go_on_are_user_errors(quality, tmp_path):
    run_dir = str(tmp_path / 'rising-seed0')
    os.makedirs(run_dir)
    old = dict(options=['--real_p=0'], targets=[1.0, 2.0], total_kimg=0.1, follows_progress=True)
    with open(os.path.join(run_dir, 'run.json'), 'w') as f:
        json.dump(old, f)
    with open(os.path.join(run_dir, 'points.json'), 'w') as f:
        json.dump([dict(point=0)], f)
    quality.check_resumable(run_dir, dict(old))
    with pytest.raises(UserError, match='other options'):
        quality.check_resumable(run_dir, dict(old, options=['--real_p=0.5']))
    with pytest.raises(UserError, match='--budget/--points'):
        quality.check_resumable(run_dir, dict(old, targets=[1.5, 3.0]))
    with pytest.raises(UserError, match='cannot be extended'):
        quality.check_resumable(run_dir, dict(old, targets=[1.0, 2.0, 3.0, 4.0], total_kimg=0.2))
    with open(os.path.join(run_dir, 'run.json'), 'w') as f:
        json.dump(dict(old, follows_progress=False), f)
    quality.check_resumable(run_dir, dict(old, targets=[1.0, 2.0, 3.0, 4.0], total_kimg=0.2, follows_progress=False))


def test_runs_resume_by_their_training_configuration(quality, digits, tmp_path):
    """A run records the training configuration: options spelt otherwise resume, another learning
    rate does not; the data set's place does not matter."""
    cfg = study()
    spec = quality.run_spec(cfg, 'patch', 0, digits, quality.full_step_flops(cfg, digits))
    run_dir = str(tmp_path / 'patch-seed0')
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, 'run.json'), 'w') as f:
        json.dump(spec, f)
    with open(os.path.join(run_dir, 'points.json'), 'w') as f:
        json.dump([dict(point=0)], f)
    moved = str(tmp_path / 'moved.zip')
    shutil.copy(digits, moved)
    respelt = dict(quality.run_spec(cfg, 'patch', 0, moved, spec['full_step_flops']),
                   options=[o.replace('--real_p=', '--real_p=0') for o in spec['options']])
    quality.check_resumable(run_dir, respelt)
    other = quality.run_spec(study(lr=1e-3), 'patch', 0, digits, spec['full_step_flops'])
    with pytest.raises(UserError, match='other options'):
        quality.check_resumable(run_dir, other)


def write_run(out, name, points, scores):
    run_dir = os.path.join(out, name)
    os.makedirs(run_dir)
    for file, data in (('points.json', points), ('scores.json', scores)):
        with open(os.path.join(run_dir, file), 'w') as f:
            json.dump(data, f)
    return run_dir


def a_point(index, seed):
    return dict(point=index, compute=10.0 * (index + 1), seconds=5.0 * (index + 1) + seed, kimg=1.0, steps=10,
                nimg=1000, snapshot=f'point-{index}/network-snapshot-000001.pkl')


def test_scoring_resumes_and_rescores_for_another_sample_count(quality, tmp_path):
    points = [a_point(i, 0) for i in range(3)]
    how = quality.scoring(study(fid_num=100))
    scored = [dict(key=quality.score_key(p, how, '/x/ref.npz'), point=p['point'], fid=1.0) for p in points[1:]]
    run_dir = write_run(str(tmp_path), 'patch-seed0', points, scored)
    assert [p['point'] for p in quality.points_to_score(run_dir, scored, how, '/elsewhere/ref.npz')] == [0]
    for other in (study(fid_num=200), study(fid_num=100, solver='euler'), study(fid_num=100, ema_search=[0.05]),
                  study(fid_num=100, bf16_features=True)):
        assert [p['point'] for p in quality.points_to_score(run_dir, scored, quality.scoring(other), '/x/ref.npz')] == [2, 1, 0]
    fresh = quality.scoring(study(fid_num=200))
    assert [p['point'] for p in quality.points_to_score(run_dir, scored, fresh, '/x/ref.npz', first=1)] == [1, 0, 2]
    assert [p['point'] for p in quality.points_to_score(run_dir, scored, fresh, '/x/ref.npz', first=1, only=[0, 2])] == [0, 2]
    behind = write_run(str(tmp_path), 'full-seed0', points[:2], [])
    assert quality.last_common_point([run_dir, behind]) == 1
    assert quality.last_common_point([run_dir, str(tmp_path / 'none-seed0')]) is None


def test_report_averages_seeds_from_every_run_folder(quality, tmp_path):
    """Runs of two seeds (trained anywhere) count in the mean; scores of another --fid-num do not."""
    out = str(tmp_path)
    how, other = quality.scoring(study(fid_num=100)), quality.scoring(study(fid_num=50))
    for seed, fids in ((0, [50.0, 30.0]), (1, [70.0, 40.0])):
        points = [a_point(i, seed) for i in range(2)]
        scores = [dict(key=quality.score_key(p, how, 'ref.npz'), point=p['point'], fid=f, kid=f / 1000)
                  for p, f in zip(points, fids)]
        scores.append(dict(key=quality.score_key(points[0], other, 'ref.npz'), point=0, fid=999.0, kid=1.0))
        write_run(out, f'patch-seed{seed}', points, scores)
    write_run(out, 'full-seed0', [a_point(0, 0)], [])
    table = quality.collect(out, ['patch', 'full'], how, 'ref.npz')
    assert table['full'] == []
    first, second = table['patch']
    assert (first['seeds'], first['fid'], first['fid_min'], first['fid_max'], first['seconds']) == (2, 60.0, 50.0, 70.0, 5.5)
    assert second['fid'] == 35.0 and second['compute'] == 20.0


def test_lists_and_small_data_subsets(quality, tmp_path):
    assert quality.parse_list('--seeds', '0, 2', kind=int) == [0, 2]
    with pytest.raises(UserError, match='--methods'):
        quality.parse_list('--methods', 'patch,nope', choices=list(quality.METHODS))
    with pytest.raises(UserError, match='--seeds'):
        quality.parse_list('--seeds', 'one', kind=int)
    data = str(tmp_path / 'sorted')
    os.makedirs(data)
    for i in range(12):
        PIL.Image.fromarray(np.full((32, 32), 20 * i, dtype=np.uint8)).save(os.path.join(data, f'{i:03d}.png'))
    dest = str(tmp_path / 'subset.zip')
    quality.build_random_subset(data, dest, 5, seed=0)
    from training.dataset import ImageFolderDataset
    levels = sorted(int(ImageFolderDataset(dest)[i][0][0, 0, 0]) // 20 for i in range(5))
    expected = sorted(np.random.default_rng(0).choice(12, size=5, replace=False).tolist())
    assert levels == expected and levels != [0, 1, 2, 3, 4]
    assert not os.path.exists(dest + '.source.npz')
    with pytest.raises(UserError, match='more than the 12 images'):
        quality.build_random_subset(data, str(tmp_path / 'big.zip'), 13, seed=0)


def test_sample_grids_are_put_side_by_side(quality, tmp_path):
    left, right = str(tmp_path / 'a.png'), str(tmp_path / 'b.png')
    PIL.Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(left)
    PIL.Image.fromarray(np.full((8, 6, 3), 200, dtype=np.uint8)).save(right)
    dest = str(tmp_path / 'both.png')
    quality.side_by_side([left, right], dest, gap=4)
    both = np.asarray(PIL.Image.open(dest))
    assert both.shape == (8, 18, 3)
    assert (both[:, :8] == 0).all() and (both[:, 8:12] == 255).all() and (both[:, 12:] == 200).all()


@pytest.mark.parametrize('name,expected', [('demo', 1_737_089), ('bench', 2_741_923), ('cifar', 55_735_043),
                                           ('bench@64', 10_927_427)])
def test_train_speed_times_the_network_the_training_command_builds(tmp_path, name, expected):
    """bench/train_speed.py's step network and its `train.py` loop options build the same network:
    SPEC's counts (CIFAR-10 DDPM++: 55,733,891, less the 1,152 of the augmentation map, plus 2,304
    for the coordinate channels)."""
    import train
    from torch_utils import misc
    speed = load_bench('train_speed')
    config = speed.parse_configs(name)[name]
    assert misc.count_parameters(speed.build_net(config, False, torch.device('cpu'))) == expected
    data = make_zip(tmp_path / 'digits.zip', count=4, size=32, channels=config['channels'])
    args = ['--outdir', str(tmp_path / 'runs'), '--data', data] + speed.loop_args(config, 32)
    opts = dnnlib.EasyDict(train.main.make_context('train.py', args).params)
    c, _desc = train.build_config(opts, 1)
    assert train.network_parameters(c) == expected


def test_train_speed_width_suffix():
    """`NAME@WIDTH` is the configuration with another base channel count; a bad width is one
    clear error."""
    import click
    speed = load_bench('train_speed')
    configs = speed.parse_configs('bench@64,b2:2:none@16')
    assert configs['bench@64'] == dict(speed.CONFIGS['bench'], cbase=64)
    assert configs['b2@16']['cbase'] == 16 and configs['b2@16']['blocks'] == 2
    with pytest.raises(click.BadParameter, match='width after @'):
        speed.parse_configs('bench@wide')


def test_train_speed_split_of_a_step_and_its_bf16_ceiling():
    """`--only=split`: the profiler's self time of a convolution step counts as convolution; the
    ceiling prices everything but the convolutions at fp32's cost (here 20 + 40 ms against 100)."""
    speed = load_bench('train_speed')
    x, w = torch.randn(4, 8, 16, 16, requires_grad=True), torch.randn(8, 8, 3, 3, requires_grad=True)
    total, conv, copy = speed.profile_split(lambda: torch.nn.functional.conv2d(x, w, padding=1).square().sum().backward(), 2)
    assert 0 < conv < total and 0 <= copy < total
    fp32 = {8: (100.0, 60.0), 16: (100.0, 60.0), 32: (100.0, 60.0)}
    bf16 = {8: (70.0, 20.0), 16: (70.0, 20.0), 32: (70.0, 20.0)}
    measured, ceiling = speed.split_ceiling(fp32, bf16, {8: 128, 16: 64, 32: 32})
    assert measured == pytest.approx(100 / 70) and ceiling == pytest.approx(100 / 60)


def test_train_speed_schedule_ratio():
    """Per-step times that scale with pixels give the compute ratio 60.8 / (32 · 0.7) = 2.714 of the
    default schedule (8x8: 0.2 of the steps, 128 images; 16x16: 0.3, 64; 32x32: 0.5, 32); steps
    that all cost the same give the images ratio 60.8 / 32."""
    speed = load_bench('train_speed')
    images = {8: 128, 16: 64, 32: 32}
    assert speed.schedule_ratio({8: 0.25, 16: 0.5, 32: 1.0}, images) == pytest.approx(60.8 / (32 * 0.7))
    assert speed.schedule_ratio({8: 3.0, 16: 3.0, 32: 3.0}, images) == pytest.approx(60.8 / 32)


def test_post_hoc_ema_profiles_are_saved_in_every_segment_and_reconstructed(quality, digits, tmp_path):
    """With --ema-std the run saves profiles several times per segment; at the last point a width
    that was tracked is reconstructed as exactly the tracked profile, and a width that was not is
    a different network."""
    from training import checkpoints, phema
    cfg = study(ema_std='0.05,0.1', points=2, budget=64, batch=32, tick=0.25)
    points, run_dir = train(quality, cfg, digits, str(tmp_path), method='full')
    saved = sorted(glob.glob(os.path.join(run_dir, 'point-*', 'phema-*.pt')))
    assert len(saved) > len(points) and all(os.path.basename(os.path.dirname(p)).startswith('point-') for p in saved)
    assert sorted(glob.glob(os.path.join(run_dir, 'point-1', 'network-snapshot-*.pkl'))) == \
        [os.path.join(run_dir, points[-1]['snapshot'])]
    last = points[-1]
    steps = sorted(phema.load_saved(p)['step'] for p in saved)
    assert steps[-1] == last['steps'] and len(quality.profile_sources(run_dir, points[0]['steps'])) < 2 * len(saved)
    net = checkpoints.load_network(os.path.join(run_dir, last['snapshot']))[0]
    (std_a, net_a, fit_a), (std_b, net_b, fit_b) = quality.ema_candidates([0.1, 0.03], run_dir, last, net)
    assert fit_a == 0.0 and 0 < fit_b < 1
    tracked = [phema.load_saved(p) for p in saved if phema.load_saved(p)['step'] == last['steps']][0]['averages'][1]
    assert std_a == 0.1 and std_b == 0.03
    for name, param in net_a.named_parameters():
        torch.testing.assert_close(param, tracked[name].to(param.dtype), rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(a, b) for a, b in zip(net_a.parameters(), net_b.parameters()))
    assert quality.ema_candidates([], run_dir, last, net) == [(None, net, None)]


class FakeDetector:
    """Features from pixels (the mean of each of 8 row bands), so that scoring needs no Inception."""

    def __call__(self, images):
        x = torch.as_tensor(images).to(torch.float32).mean(1)
        return torch.stack([band.mean((1, 2)) for band in x.chunk(8, dim=1)], 1)


def test_scoring_searches_the_ema_widths_and_counts_copies(quality, digits, tmp_path, monkeypatch):
    """The scored network is the width with the lowest search FID; a network that returns its
    training images counts as copying every one of them, and its closest pairs are drawn."""
    from training import metrics
    from training.dataset import ImageFolderDataset
    cfg = study(ema_std='0.05,0.1', ema_search=[0.05, 0.08, 0.1], ema_search_num=8, points=1, budget=2, fid_num=8)
    points, run_dir = train(quality, cfg, digits, str(tmp_path))
    real = torch.as_tensor(np.stack([ImageFolderDataset(digits)[i][0] for i in range(32)]))
    feats = metrics.compute_features(FakeDetector(), real)
    ref = dict(zip(('mu', 'sigma'), metrics.stats_from_features(feats)), features=feats)
    row = quality.score_point(cfg, run_dir, points[0], ref, FakeDetector(), torch.device('cpu'), digits)
    assert set(row['ema_search']) == {'0.050', '0.080', '0.100'}
    assert f'{row["ema_std"]:.3f}' == min(row['ema_search'], key=row['ema_search'].get)
    assert all(k in row for k in ('fid', 'kid', 'precision', 'recall')) and 0 <= row['memorised'] <= 1
    monkeypatch.setattr(quality, 'generate', lambda cfg, net, num, device: real[:num])
    copied = quality.score_point(cfg, run_dir, points[0], ref, FakeDetector(), torch.device('cpu'), digits)
    assert copied['memorised'] == 1.0 and copied['d1_d2'] == 0.0
    assert PIL.Image.open(os.path.join(run_dir, 'closest-point0.png')).size[0] > 8


def test_plateau_and_compute_ratio(quality):
    """The last-third gain interpolates in log compute; the ratio is the compute patches need to
    reach full images' FID (their last, while improving) over the compute full images needed."""
    full = [dict(compute=c, fid=f) for c, f in ((1000, 40.0), (2000, 30.0), (3000, 29.0))]
    at_2000 = 30.0 + (29.0 - 30.0) * (math.log(2000) - math.log(2000)) / (math.log(3000) - math.log(2000))
    assert quality.last_third_gain(full) == pytest.approx((at_2000 - 29.0) / at_2000)
    patch = [dict(compute=c, fid=f) for c, f in ((1000, 50.0), (2000, 35.0), (4000, 25.0))]
    expected = math.exp(math.log(2000) + 0.6 * (math.log(4000) - math.log(2000)))
    ratios = quality.compute_ratios(dict(full=full, patch=patch))
    assert ratios['full'] == 1.0 and ratios['patch'] == pytest.approx(expected / 3000)
    assert quality.compute_ratios(dict(full=full, patch=patch[:2])) == {'full': 1.0}
    assert quality.last_third_gain(full[:1]) is None


def test_over_fitting_curve_is_judged_at_its_best(quality):
    """Once full-image training over-fits (FID rising again), the ratio is taken at its best FID,
    not its last, and the verdict says the curve is past its best."""
    full = [dict(compute=c, fid=f) for c, f in ((1000, 30.0), (3000, 16.0), (5000, 19.0), (10000, 26.0))]
    patch = [dict(compute=c, fid=f) for c, f in ((1000, 48.0), (5000, 17.0), (7000, 15.0), (10000, 16.0))]
    expected = math.exp(math.log(5000) + 0.5 * (math.log(7000) - math.log(5000)))
    ratios = quality.compute_ratios(dict(full=full, patch=patch))
    assert ratios['full'] == 1.0 and ratios['patch'] == pytest.approx(expected / 3000)
    assert quality.best_point(full)['compute'] == 3000
    assert quality.plateau_verdict(quality.last_third_gain(full)) == 'past its best'
    assert quality.plateau_verdict(0.049) == 'a plateau' and quality.plateau_verdict(0.05) == 'still improving'


def test_presets_yield_to_explicit_options(quality):
    """--preset sets the study's options, --smoke shrinks it, and options given on the command
    line win over both."""
    base = dnnlib.EasyDict(preset='gpu', smoke=False, budget=2000, device=None, cbase=32, fid_num=1000)
    cfg = quality.apply_preset(base, given=set())
    assert (cfg.device, cfg.cbase, cfg.budget, cfg.fid_num) == ('cuda', 16, quality.PRESETS['gpu']['budget'], 5000)
    cfg = quality.apply_preset(dnnlib.EasyDict(base, budget=500), given={'budget'})
    assert cfg.budget == 500 and cfg.device == 'cuda'
    cfg = quality.apply_preset(dnnlib.EasyDict(base, smoke=True), given=set())
    assert cfg.budget == 20 and cfg.device == 'cuda' and cfg.ema_search_num == 64
    assert quality.apply_preset(dnnlib.EasyDict(base, preset=None), given=set()) == dnnlib.EasyDict(base, preset=None)
    for preset in quality.PRESETS.values():
        quality.parse_score_points(preset.get('score_points'), preset['points'])
    assert quality.parse_score_points('0, 3', 4) == [0, 3] and quality.parse_score_points(None, 4) is None
    with pytest.raises(UserError, match='--score-points: indices must lie in 0..3'):
        quality.parse_score_points('1,4', 4)


def test_named_data_in_the_shared_folder_and_npz_files(quality, tmp_path, monkeypatch):
    """--data=emoji64 is found in the first data folder that holds it, with one line naming the
    folders where none does; an .npz of images is converted into the cache at its own size."""
    first, second = tmp_path / 'data', tmp_path / 'shared'
    first.mkdir(), second.mkdir()
    monkeypatch.setattr(quality, 'SHARED_DATA', (str(first), str(second)))
    with pytest.raises(UserError, match='--data=emoji64: noto-emoji-64x64.npz is in none of'):
        quality.find_source('emoji64')
    images = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    np.savez(second / 'noto-emoji-64x64.npz', images=images)
    assert quality.find_source('emoji64') == str(second / 'noto-emoji-64x64.npz')
    train_data, full = quality.prepare_data('emoji64', None, str(tmp_path / 'cache'))
    assert train_data == full and os.path.basename(full) == 'emoji64.zip'
    from training.dataset import ImageFolderDataset
    dataset = ImageFolderDataset(full)
    assert len(dataset) == 6 and dataset.resolution == 16 and np.array_equal(dataset[2][0].transpose(1, 2, 0), images[2])
    with pytest.raises(UserError, match='--data: .*nope.npz does not exist'):
        quality.prepare_data(str(tmp_path / 'nope.npz'), None, str(tmp_path / 'cache'))


def test_a_trained_run_is_scored_resumably_and_reported(quality, digits, tmp_path, monkeypatch):
    """score_run scores every point once (a second call finds nothing to do), and the report
    writes the table's numbers to results.json with the log-compute plot and the side-by-side grids."""
    from training import metrics
    from training.dataset import ImageFolderDataset
    monkeypatch.setattr(metrics, 'load_detector', lambda *args, **kwargs: FakeDetector())
    out = str(tmp_path / 'study')
    cfg = study(points=2, budget=4, fid_num=8, out=out, max_images=None, seeds=[0], report_only=False, eval_only=False)
    points, run_dir = train(quality, cfg, digits, out)
    real = torch.as_tensor(np.stack([ImageFolderDataset(digits)[i][0] for i in range(32)]))
    feats = metrics.compute_features(FakeDetector(), real)
    ref_path = str(tmp_path / 'ref.npz')
    metrics.save_stats(ref_path, *metrics.stats_from_features(feats), feats)
    scores = quality.score_run(cfg, run_dir, ref_path, digits)
    assert [s['point'] for s in scores] == [1, 0] and all(s['ema_std'] is None for s in scores)
    assert quality.score_run(cfg, run_dir, ref_path, digits) == scores
    quality.report(cfg, ['patch'], digits, ref_path, 32)
    with open(os.path.join(out, 'results.json')) as f:
        rows = json.load(f)['methods']['patch']
    assert [r['fid'] for r in rows] == [s['fid'] for s in reversed(scores)]
    assert all(0 <= r['memorised'] <= 1 and 0 <= r['precision'] <= 1 for r in rows)
    for name in ('quality-compute.png', 'quality-seconds.png', 'samples-point1.png', 'closest-point1.png'):
        assert os.path.exists(os.path.join(out, name)), name


DRIVER = """
import concurrent.futures, multiprocessing, os, sys, time
sys.path.insert(0, sys.argv[1])
import quality
if __name__ == '__main__':
    context = multiprocessing.get_context('spawn')
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context, initializer=quality.worker_init,
                                                initargs=(1, os.getpid())) as pool:
        print(pool.submit(os.getpid).result(), flush=True)
        pool.submit(time.sleep, 120).result()
"""


def running(pid):
    """Whether process `pid` exists and is not a zombie (an orphan's new parent may not reap it)."""
    if not dnnlib.util.process_exists(pid):
        return False
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except FileNotFoundError:
        return not os.path.isdir('/proc')  # no /proc to tell zombies apart: it exists


def test_workers_end_when_their_driver_is_killed(tmp_path):
    """A study killed without its workers (SIGKILL to the driver only) leaves no worker training on
    into its --out, where a restarted study would write too."""
    script = tmp_path / 'driver.py'
    script.write_text(DRIVER)
    driver = subprocess.Popen([sys.executable, str(script), os.path.join(ROOT, 'bench')], stdout=subprocess.PIPE, text=True)
    worker = int(driver.stdout.readline())
    try:
        assert running(worker)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and running(worker):
            time.sleep(0.2)
        assert not running(worker), 'the worker outlived its driver by 30 s'
    finally:
        driver.kill()
        if running(worker):
            os.kill(worker, signal.SIGKILL)


def test_adversarial_bench_lists_its_held_out_cases():
    """bench/adversarial.py --list builds and runs nothing; every case has a unique id and a known
    family, --only picks one family and --cases picks cases by id or shell pattern."""
    from click.testing import CliRunner
    adversarial = load_bench('adversarial')
    result = CliRunner().invoke(adversarial.main, ['--list'])
    assert result.exit_code == 0, result.output
    cases = adversarial.case_list()
    assert len({c.id for c in cases}) == len(cases) >= 80 and {c.family for c in cases} == set(adversarial.FAMILIES)
    assert result.output.strip().endswith(f'{len(cases)} cases')
    one = CliRunner().invoke(adversarial.main, ['--list', '--only=zip'])
    assert one.exit_code == 0 and one.output.startswith('zip (') and 'dest-' not in one.output
    assert CliRunner().invoke(adversarial.main, ['--only=nonsense']).exit_code == 2
    fresh = CliRunner().invoke(adversarial.main, ['--list', '--cases=r3-*,race-desc-dotdot'])
    listed = [line.split()[0] for line in fresh.output.splitlines() if line.startswith('  ')]
    assert fresh.exit_code == 0 and len(listed) >= 41 and set(listed) == {c.id for c in cases if c.id.startswith('r3-')} | {'race-desc-dotdot'}
    assert CliRunner().invoke(adversarial.main, ['--cases=nothing-*']).exit_code == 2


def test_step_time_measures_the_study_steps_at_each_batch(tmp_path):
    """bench/step_time.py times the study network's real training steps: a full-image step takes
    `batch` images, a patch step between `batch` and 4 x `batch` (R/s images per slot)."""
    step_time = load_bench('step_time')
    rows = step_time.time_steps('full', 'cpu', [2, 4], 1, 2, 1, str(tmp_path / 'cache'), 'cpu')
    rows += step_time.time_steps('patch', 'cpu', [2], 1, 4, 1, str(tmp_path / 'cache'), 'cpu')
    assert [(r['method'], r['batch']) for r in rows] == [('full', 2), ('full', 4), ('patch', 2)]
    for r in rows:
        per_step = r['img_s'] * r['ms'] / 1e3
        low, high = (r['batch'], r['batch']) if r['method'] == 'full' else (r['batch'], 4 * r['batch'])
        assert low - 1e-6 <= per_step <= high + 1e-6
    table = step_time.summary(rows + [dict(rows[0], ms=3 * rows[0]['ms'])])
    assert table[('full', 2)][0] == pytest.approx(2 * rows[0]['ms'])
