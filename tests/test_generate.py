"""generate.py end to end: PNG files, per-seed determinism across --batch and torchrun, grey
output, --subdirs, --grid, canvases, guidance, and every bad input (exit 1, one line, no files)."""

import os
import pickle
import subprocess
import sys
import tempfile

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import dnnlib
import generate
from conftest import assert_cleaned, plant_temps
from conftest import sampling_net as tiny_net

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_snapshot(path, net):
    with dnnlib.util.atomic_write(path, 'wb') as f:
        pickle.dump(dict(ema=net, loss_fn=None, augment_pipe=None, dataset_kwargs={}), f)
    return str(path)


@pytest.fixture(scope='module')
def snapshots(tmp_path_factory):
    root = tmp_path_factory.mktemp('snapshots')
    return dict(rgb=write_snapshot(root / 'rgb.pkl', tiny_net()),
                grey=write_snapshot(root / 'grey.pkl', tiny_net(img_channels=1)),
                cond=write_snapshot(root / 'cond.pkl', tiny_net(label_dim=3)),
                cond_early=write_snapshot(root / 'cond-early.pkl', tiny_net(label_dim=3, seed=1)))


def run(*args):
    """generate.py in this process (click's runner): returns the click Result."""
    return CliRunner().invoke(generate.main, [str(a) for a in args] + ['--device=cpu'], catch_exceptions=False)


def read_pngs(folder):
    """{relative path: pixel array} of every PNG under `folder`."""
    out = {}
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            with PIL.Image.open(path) as img:
                out[os.path.relpath(path, folder)] = (img.mode, np.asarray(img).astype(np.int32))
    return out


def assert_same_images(a, b):
    """Same files, modes and pixels up to a rare ±1 (CPU kernels round a row's result slightly
    differently depending on the batch around it; the per-seed noise is identical)."""
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name][0] == b[name][0]
        diff = np.abs(a[name][1] - b[name][1])
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, name


def test_writes_one_png_per_seed_independent_of_batch(snapshots, tmp_path):
    res = run('--network', snapshots['rgb'], '--outdir', tmp_path / 'a', '--seeds', '0-4', '--steps', 2, '--batch', 5)
    assert res.exit_code == 0, res.output
    run('--network', snapshots['rgb'], '--outdir', tmp_path / 'b', '--seeds', '4,0-3', '--steps', 2, '--batch', 2)
    a, b = read_pngs(tmp_path / 'a'), read_pngs(tmp_path / 'b')
    assert sorted(a) == [f'{s:06d}.png' for s in range(5)]
    assert a['000000.png'][0] == 'RGB' and a['000000.png'][1].shape == (16, 16, 3)
    assert_same_images(a, b)
    assert not os.path.exists(tmp_path / 'a' / '000000.png.tmp') and len(os.listdir(tmp_path / 'a')) == 5


def test_torchrun_two_processes_match_one(snapshots, tmp_path):
    run('--network', snapshots['rgb'], '--outdir', tmp_path / 'one', '--seeds', '0-4', '--steps', 2, '--batch', 4,
        '--grid', tmp_path / 'one.png')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'generate.py',
           '--network', snapshots['rgb'], '--outdir', str(tmp_path / 'two'), '--seeds', '0-4', '--steps', '2',
           '--batch', '4', '--grid', str(tmp_path / 'two.png'), '--device', 'cpu']
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1')
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('Done.') == 1, proc.stdout
    assert_same_images(read_pngs(tmp_path / 'one'), read_pngs(tmp_path / 'two'))
    with PIL.Image.open(tmp_path / 'one.png') as one, PIL.Image.open(tmp_path / 'two.png') as two:
        assert one.size == two.size == (48, 32)
        diff = np.abs(np.asarray(one).astype(int) - np.asarray(two).astype(int))
        assert diff.max() <= 1


def test_grey_network_writes_grey_pngs(snapshots, tmp_path):
    assert run('--network', snapshots['grey'], '--outdir', tmp_path, '--seeds', '3', '--steps', 1).exit_code == 0
    with PIL.Image.open(tmp_path / '000003.png') as img:
        assert img.mode == 'L' and img.size == (16, 16)


def test_subdirs_layout(snapshots, tmp_path):
    res = run('--network', snapshots['rgb'], '--outdir', tmp_path, '--seeds', '998-1001', '--steps', 1, '--subdirs')
    assert res.exit_code == 0, res.output
    assert sorted(read_pngs(tmp_path)) == ['000000/000998.png', '000000/000999.png', '001000/001000.png',
                                           '001000/001001.png']


def test_stale_temps_of_killed_runs_are_removed_from_every_seed_folder(snapshots, tmp_path):
    """Also from the --subdirs folders this run writes nothing into."""
    gone, kept = plant_temps(tmp_path / '002000', '002000.png')
    top_gone, top_kept = plant_temps(tmp_path, 'grid.png')
    res = run('--network', snapshots['rgb'], '--outdir', tmp_path, '--seeds', '0', '--steps', 1, '--subdirs')
    assert res.exit_code == 0, res.output
    assert_cleaned(tmp_path / '002000', gone, kept)
    assert_cleaned(tmp_path, top_gone, top_kept)
    assert os.listdir(tmp_path / '000000') == ['000000.png']


def test_grid_alone_writes_one_png_of_the_right_size(snapshots, tmp_path):
    grid = tmp_path / 'sub' / 'grid.png'
    res = run('--network', snapshots['grey'], '--grid', grid, '--seeds', '0-9', '--steps', 1)
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(tmp_path / 'sub')) == ['grid.png']
    with PIL.Image.open(grid) as img:
        assert img.mode == 'L' and img.size == (4 * 16, 3 * 16)


def test_canvas_options_make_larger_or_shifted_images(snapshots, tmp_path):
    res = run('--network', snapshots['rgb'], '--outdir', tmp_path / 'big', '--seeds', '0', '--steps', 1, '--image_size', 32)
    assert res.exit_code == 0, res.output
    with PIL.Image.open(tmp_path / 'big' / '000000.png') as img:
        assert img.size == (32, 32)
    res = run('--network', snapshots['rgb'], '--outdir', tmp_path / 'off', '--seeds', '0', '--steps', 1, '--x_start', 8)
    assert res.exit_code == 0, res.output
    assert os.path.isfile(tmp_path / 'off' / '000000.png')


def test_conditional_network_with_class_cfg_and_ablation(snapshots, tmp_path):
    res = run('--network', snapshots['cond'], '--outdir', tmp_path, '--seeds', '0-1', '--steps', 2, '--class', 2,
              '--cfg', 1.5, '--solver', 'euler', '--disc', 'vp', '--schedule', 'vp', '--scaling', 'vp', '--S_churn', 5)
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(tmp_path)) == ['000000.png', '000001.png']


@pytest.mark.parametrize('solver', ['dpmpp-2m', 'dpmpp-3m', 'euler-a'])
def test_new_solvers_take_any_discretisation(snapshots, tmp_path, solver):
    res = run('--network', snapshots['rgb'], '--outdir', tmp_path, '--seeds', '0-1', '--steps', 3, '--solver', solver,
              '--disc', 've')
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(tmp_path)) == ['000000.png', '000001.png']


def test_autoguidance_with_the_network_itself_changes_nothing(snapshots, tmp_path):
    args = ['--network', snapshots['cond'], '--seeds', '0-2', '--steps', 3, '--solver', 'dpmpp-2m']
    assert run(*args, '--outdir', tmp_path / 'plain').exit_code == 0
    res = run(*args, '--outdir', tmp_path / 'self', '--guide-network', snapshots['cond'], '--guidance', 2)
    assert res.exit_code == 0, res.output
    assert run(*args, '--outdir', tmp_path / 'early', '--guide-network', snapshots['cond_early'], '--guidance', 2).exit_code == 0
    plain, same, early = (read_pngs(tmp_path / name) for name in ('plain', 'self', 'early'))
    assert all(np.array_equal(plain[name][1], same[name][1]) for name in plain)
    assert any(np.abs(plain[name][1] - early[name][1]).mean() > 1 for name in plain)


@pytest.mark.parametrize('native', [True, False])
def test_bf16_samples_close_to_fp32_where_native_and_fp32_with_a_notice_elsewhere(snapshots, tmp_path, monkeypatch, native):
    from torch_utils import misc
    monkeypatch.setattr(misc, '_cpu_has_bf16', [native])
    args = ['--network', snapshots['rgb'], '--seeds', '0-3', '--steps', 4]
    assert run(*args, '--outdir', tmp_path / 'fp32').exit_code == 0
    res = run(*args, '--outdir', tmp_path / 'bf16', '--bf16', 1)
    assert res.exit_code == 0, res.output
    ref, out = read_pngs(tmp_path / 'fp32'), read_pngs(tmp_path / 'bf16')
    assert sorted(out) == sorted(ref)
    diff = np.concatenate([np.abs(out[name][1] - ref[name][1]).ravel() for name in ref])
    if native:
        assert 0 < diff.mean() < 3 and diff.max() < 64  # pixel levels of 255: rounding, not other images
        assert 'no native bfloat16' not in res.output
    else:
        assert diff.max() == 0
        assert '--bf16: this CPU has no native bfloat16 arithmetic' in res.output


def test_bf16_needs_one_of_our_networks():
    with pytest.raises(dnnlib.util.UserError, match='--bf16: needs one of this project'):
        generate.use_bf16(torch.nn.Identity(), True, torch.device('cpu'))


def _random_binary(path):
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def _foreign_pickle(path):
    path.write_bytes(pickle.dumps([1, 2, 3]))


def _dict_without_ema(path):
    path.write_bytes(pickle.dumps(dict(loss_fn=None, dataset_kwargs={})))


BAD_NETWORKS = {'missing': None, 'random binary': _random_binary, 'foreign pickle': _foreign_pickle,
                'dict without ema': _dict_without_ema, 'truncated': 'truncate'}


@pytest.mark.parametrize('case', list(BAD_NETWORKS))
def test_bad_network_file(snapshots, tmp_path, case):
    path = tmp_path / 'net.pkl'
    make = BAD_NETWORKS[case]
    if make == 'truncate':
        data = open(snapshots['rgb'], 'rb').read()
        path.write_bytes(data[:len(data) // 2])
    elif make is not None:
        make(path)
    assert_user_error(['--network', path], '--network')


@pytest.mark.parametrize('seeds', ['', 'a', '3-1', '1,,2', '-5', '0-3x'])
def test_bad_seeds(snapshots, seeds):
    assert_user_error(['--network', snapshots['rgb'], '--seeds', seeds], '--seeds')


@pytest.mark.parametrize('net,args,option', [
    ('cond', ['--class', 3], '--class'),
    ('rgb', ['--class', 0], '--class'),
    ('rgb', ['--image_size', 17], '--image_size'),
    ('rgb', ['--cfg', 2], '--cfg'),
    ('rgb', ['--solver', 'dpmpp-2m', '--S_churn', 10], '--S_churn'),
    ('rgb', ['--solver', 'euler-a', '--schedule', 'vp'], '--schedule'),
    ('rgb', ['--guidance', 2], '--guidance'),
    ('cond', ['--guide-network', 'PLACEHOLDER_cond'], '--guidance'),
    ('cond', ['--guide-network', 'PLACEHOLDER_cond', '--guidance', 2, '--cfg', 2], '--guide-network'),
    ('cond', ['--guide-network', 'PLACEHOLDER_rgb', '--guidance', 2], '--guide-network'),
    ('cond', ['--guide-network', 'PLACEHOLDER_grey', '--guidance', 2], '--guide-network'),
    ('cond', ['--guide-network', 'missing.pkl', '--guidance', 2], '--guide-network'),
])
def test_bad_options_for_the_network(snapshots, net, args, option):
    args = [snapshots[a.split('_', 1)[1]] if str(a).startswith('PLACEHOLDER_') else a for a in args]
    assert_user_error(['--network', snapshots[net]] + args, option)


def assert_user_error(args, option):
    """Exit status 1, exactly one line naming `option`, no traceback, and nothing written."""
    with tempfile.TemporaryDirectory() as tmp:
        outdir, grid = os.path.join(tmp, 'out'), os.path.join(tmp, 'grid.png')
        res = CliRunner().invoke(generate.main, [str(a) for a in args] + ['--outdir', outdir, '--grid', grid, '--steps', '1',
                                                                        '--device', 'cpu'])
        assert res.exit_code == 1, res.output
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith('Error: ') and option in lines[0], res.output
        assert os.listdir(tmp) == []


def test_bad_input_from_the_command_line_prints_one_line(tmp_path):
    """The real script: one 'Error:' line on stderr, status 1, no traceback, no output folder."""
    bad = tmp_path / 'net.pkl'
    _random_binary(bad)
    proc = subprocess.run([sys.executable, 'generate.py', '--network', str(bad), '--outdir', str(tmp_path / 'out')],
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stdout == '' and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith('Error: --network') and 'Traceback' not in proc.stderr
    assert not os.path.exists(tmp_path / 'out')


def test_rectangles_and_channel_counts_png_cannot_hold(tmp_path):
    """A 16x32 network samples 32x16 by default and any WxH canvas; 5 channels are saved as .npy."""
    from training import networks
    torch.manual_seed(0)
    net = networks.EDMPrecond(img_resolution=(16, 32), img_channels=5, use_coords=True, model_channels=16,
                              channel_mult=[1, 2], num_blocks=1, attn_resolutions=[16])
    snapshot = write_snapshot(tmp_path / 'rect.pkl', net)
    assert run('--network', snapshot, '--outdir', tmp_path / 'a', '--seeds=0-1', '--steps=2').exit_code == 0
    arrays = [np.load(tmp_path / 'a' / name) for name in sorted(os.listdir(tmp_path / 'a'))]
    assert len(arrays) == 2 and all(a.shape == (5, 16, 32) and a.dtype == np.uint8 for a in arrays)
    assert run('--network', snapshot, '--grid', tmp_path / 'g.png', '--seeds=0-1', '--steps=2',
               '--image_size=48x16', '--x_start=-8').exit_code == 0
    with PIL.Image.open(tmp_path / 'g.png') as img:
        assert img.size == (96, 16) and img.mode == 'L'
    result = CliRunner().invoke(generate.main, ['--network', snapshot, '--grid', str(tmp_path / 'h.png'),
                                                '--image_size=31x16', '--device=cpu'])
    assert result.exit_code == 1 and '--image_size' in result.output and 'down-sampling factor' in result.output
    result = CliRunner().invoke(generate.main, ['--network', snapshot, '--grid', str(tmp_path / 'h.png'),
                                                '--image_size=3x', '--device=cpu'])
    assert result.exit_code == 2 and 'WxH' in result.output
