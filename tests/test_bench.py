"""The quality benchmark's plumbing (bench/quality.py): the parts that run before hours of
training, so that an interface drift fails here and not at the end of a long run."""

import argparse
import importlib.util
import json
import os

import numpy as np
import PIL.Image
import pytest

import dnnlib
import fid
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def quality():
    spec = importlib.util.spec_from_file_location('bench_quality', os.path.join(ROOT, 'bench', 'quality.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_args(**overrides):
    """The benchmark's defaults, as its argument parser would give them."""
    args = dict(ref_num=None, fid_num=1000, threads=1, cbase=16, cres='1,2', batch=8, seed=0, lr=2e-3, lr_rampup=0.5,
                dropout=0.0, tick=0.5, real_p=0.5, device='cpu')
    args.update(overrides)
    return argparse.Namespace(**args)


def write_folder(path, count):
    os.makedirs(path)
    rng = np.random.default_rng(0)
    for i in range(count):
        PIL.Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(os.path.join(path, f'{i:03d}.png'))


def test_reference_count_is_capped_by_the_data_set(quality, tmp_path, monkeypatch):
    data = str(tmp_path / 'tiny')
    write_folder(data, 5)
    seen = {}

    def fake_stats(path, num_expected, **kwargs):
        seen.update(path=path, num=num_expected)
        feats = np.random.default_rng(1).standard_normal((num_expected, 4))
        return feats.mean(0), np.cov(feats, rowvar=False), feats

    monkeypatch.setattr(fid, 'calculate_inception_stats', fake_stats)
    args = bench_args(ref_num=100, cache=str(tmp_path / 'cache'))
    os.makedirs(args.cache)
    path, num = quality.reference_stats(args, data)
    assert num == 5 and seen == dict(path=data, num=5)
    assert os.path.basename(path) == 'tiny-ref5-features.npz'
    with np.load(path) as ref:
        assert ref['features'].shape == (5, 4)


@pytest.mark.parametrize('method', ['patch', 'full', 'edm'])
def test_methods_build_valid_training_configs(quality, tmp_path, method):
    """Every method's options pass train.py's own validation, with the same network for all."""
    data = str(tmp_path / 'tiny')
    write_folder(data, 4)
    opts = quality.train_args(bench_args(), method, data, str(tmp_path / 'run'))
    assert '--dropout=0.0' in opts and '--cbase=16' in opts
    ctx = train.main.make_context('train.py', opts)
    c, _ = train.build_config(dnnlib.EasyDict(ctx.params), 1)
    assert c.network_kwargs.model_channels == 16 and c.network_kwargs.dropout == 0.0
    real_p = c.patch_kwargs.real_p if c.patch_kwargs else None
    assert (c.network_kwargs.get('use_coords', False), real_p) == dict(patch=(True, 0.5), full=(True, 1.0), edm=(False, None))[method]


def write_points(run_dir, points, scored):
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, 'points.json'), 'w') as f:
        json.dump(points, f)
    with open(os.path.join(run_dir, 'fid.json'), 'w') as f:
        json.dump(scored, f)


def test_evaluation_resumes_from_the_scores_already_written(quality, tmp_path):
    run_dir = str(tmp_path / 'train-patch')
    points = [dict(point=i, seconds=10.0 * (i + 1), snapshot=f'{run_dir}/point-{i}.pkl') for i in range(3)]
    scored = [dict(points[0]), dict(points[1], fid=50.0), dict(points[2], fid=40.0)]
    write_points(run_dir, points, scored)
    todo = quality.points_to_score(run_dir)
    assert [p['point'] for p in todo if 'fid' not in p] == [0]
    assert [p.get('fid') for p in todo] == [None, 50.0, 40.0]


def test_scores_of_other_snapshots_are_not_reused(quality, tmp_path):
    run_dir = str(tmp_path / 'train-full')
    points = [dict(point=0, seconds=5.0, snapshot=f'{run_dir}/point-0.pkl')]
    write_points(run_dir, points, [dict(point=0, seconds=5.0, snapshot='elsewhere/point-0.pkl', fid=12.0)])
    assert 'fid' not in quality.points_to_score(run_dir)[0]


def test_eval_only_without_a_training_run_is_a_clear_error(quality, tmp_path):
    with pytest.raises(SystemExit, match='results.json not found'):
        quality.read_results(str(tmp_path))


def test_small_data_subset_is_drawn_at_random(quality, tmp_path):
    """--max-images picks images across the whole data set: on data sorted by class (like the
    bundled MNIST) the first N would be a single class."""
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
    with pytest.raises(SystemExit, match='more than the 12 images'):
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
