"""train.py end to end on a tiny network: the files a run leaves, exact resume, DDP equivalence
with two gloo processes, and the one-line errors for bad input."""

import io
import json
import os
import pickle
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--cbase=8', '--cres=1,2', '--workers=0', '--lr=2e-3', '--lr-rampup=0.00001']


def make_zip(path, count=64, size=16, labels=True, channels=1, indices=None):
    """A tiny EDM-format data set of real MNIST digits (from the bundled npz): the first `count`,
    or the digits at `indices`."""
    data = np.load(os.path.join(ROOT, 'data', 'mnist-10k-28x28.npz'))
    entries = []
    with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_STORED) as z:
        for i in (range(count) if indices is None else indices):
            img = Image.fromarray(data['images'][i]).resize((size, size), Image.LANCZOS)
            if channels == 3:
                img = img.convert('RGB')
            buf = io.BytesIO()
            img.save(buf, format='PNG')
            name = f'{i // 1000:05d}/img{i:08d}.png'
            z.writestr(name, buf.getvalue())
            entries.append([name, int(data['labels'][i])])
        z.writestr('dataset.json', json.dumps({'labels': entries if labels else None}))
    return str(path)


def run_train(args, nproc=1, timeout=600):
    """Runs train.py on the CPU in a subprocess (under torchrun for nproc > 1) and returns the
    result. The CPU also on GPU machines: exact comparisons need it, and two ranks must not share
    one GPU."""
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT)
    args = list(args) + ['--device=cpu']
    if nproc == 1:
        cmd = [sys.executable, os.path.join(ROOT, 'train.py')] + args
    else:
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}',
               os.path.join(ROOT, 'train.py')] + args
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def run_dir_of(outdir):
    dirs = sorted(d for d in os.listdir(outdir) if os.path.isdir(os.path.join(outdir, d)))
    assert len(dirs) == 1, dirs
    return os.path.join(outdir, dirs[0])


def read_stats(run_dir):
    with open(os.path.join(run_dir, 'stats.jsonl')) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    return make_zip(tmp_path_factory.mktemp('data') / 'digits.zip')


def test_run_leaves_snapshot_grid_stats_and_state(digits, tmp_path):
    outdir = tmp_path / 'runs'
    run_train(['--outdir', str(outdir), '--data', digits, '--batch=8', '--duration=0.00005', '--tick=0.001',
               '--snap=1000', '--dump=1000', '--seed=3', '--patch-sizes=4,8'] + TINY)
    run_dir = run_dir_of(outdir)
    assert os.path.basename(run_dir) == '00000-digits-uncond-ddpmpp-pedm-gpus1-batch8-fp32'
    names = set(os.listdir(run_dir))
    assert {'training_options.json', 'log.txt', 'stats.jsonl', 'reals.png', 'loss.png'} <= names
    snapshots = sorted(n for n in names if n.startswith('network-snapshot-') and n.endswith('.pkl'))
    assert snapshots and any(n.startswith('samples-') for n in names)
    assert any(n.startswith('training-state-') for n in names)
    assert not any(n.endswith('.tmp') for n in names)

    stats = read_stats(run_dir)
    assert stats[-1]['kimg'] >= 0.05 and all(np.isfinite(s['loss']) for s in stats)
    seen_sizes = {int(k) for s in stats for k in s['loss_by_patch']}
    assert seen_sizes <= {4, 8, 16} and len(seen_sizes) >= 2
    # Fix 3: kimg counts the images consumed, batch · R // s per step (every step is a tick here).
    previous = 0
    for record in stats:
        (size,) = [int(k) for k in record['loss_by_patch']]
        assert round(record['kimg'] * 1000) - previous == 8 * (16 // size)
        previous = round(record['kimg'] * 1000)
    with open(os.path.join(run_dir, 'log.txt')) as f:
        log = f.read()
    assert 'tick 0 ' in log and 'loss@' in log

    with open(os.path.join(run_dir, snapshots[-1]), 'rb') as f:
        snap = pickle.load(f)
    assert set(snap) >= {'ema', 'loss_fn', 'augment_pipe', 'dataset_kwargs'}
    net = snap['ema']
    assert net.use_coords and net.img_channels == 1 and not net.training
    assert next(net.parameters()).device.type == 'cpu'
    with Image.open(os.path.join(run_dir, 'samples-000000.png')) as img:
        assert img.mode == 'L' and img.size[0] >= 16 * 8


def _state_tensors(path):
    state = torch.load(path, map_location='cpu', weights_only=True)
    return state


def test_resume_continues_exactly(digits, tmp_path):
    """A run resumed from a state dump reproduces the uninterrupted run's losses and weights,
    with dropout and augmentation on (RNG, optimizer, EMA and image count all restored)."""
    common = ['--data', digits, '--batch=4', '--tick=0.0001', '--snap=1000', '--seed=7', '--dropout=0.2',
              '--augment=0.5'] + TINY
    full = tmp_path / 'full'
    run_train(['--outdir', str(full), '--duration=0.00008', '--dump=1000'] + common)
    first = tmp_path / 'first'
    run_train(['--outdir', str(first), '--duration=0.00003', '--dump=1000'] + common)
    first_dir = run_dir_of(first)
    resumed = tmp_path / 'resumed'
    run_train(['--outdir', str(resumed), '--duration=0.00008', '--dump=1000', '--resume', first_dir] + common)

    full_dir, resumed_dir = run_dir_of(full), run_dir_of(resumed)
    full_stats = {s['step']: s['loss'] for s in read_stats(full_dir)}
    resumed_stats = read_stats(resumed_dir)
    first_steps = {s['step'] for s in read_stats(first_dir)}
    new_records = [s for s in resumed_stats if s['step'] not in first_steps]
    assert new_records, 'the resumed run trained no further steps'
    for record in new_records:
        assert record['loss'] == full_stats[record['step']], record['step']

    def final_state(run_dir):
        states = sorted(n for n in os.listdir(run_dir) if n.startswith('training-state-'))
        return _state_tensors(os.path.join(run_dir, states[-1]))

    a, b = final_state(full_dir), final_state(resumed_dir)
    assert a['nimg'] == b['nimg'] and a['step'] == b['step']
    for key in ('net', 'ema'):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)


def test_ddp_two_processes_match_one(digits, tmp_path):
    """Two gloo processes with one accumulation round each compute the same steps as one process
    with two rounds over the same global batch (same blocks, same per-block randomness), and track
    the same post-hoc EMA profile."""
    common = ['--data', digits, '--batch=8', '--batch-gpu=4', '--tick=0.0001', '--snap=1000', '--dump=1000',
              '--seed=11', '--dropout=0', '--duration=0.00006', '--patch-sizes=8', '--ema-std=0.1'] + TINY
    one = tmp_path / 'one'
    run_train(['--outdir', str(one)] + common, nproc=1)
    two = tmp_path / 'two'
    run_train(['--outdir', str(two)] + common, nproc=2)
    one_dir, two_dir = run_dir_of(one), run_dir_of(two)
    assert 'gpus2' in two_dir
    s1, s2 = read_stats(one_dir), read_stats(two_dir)
    assert [s['step'] for s in s1] == [s['step'] for s in s2]
    for a, b in zip(s1, s2):
        assert a['kimg'] == b['kimg']
        assert a['loss'] == pytest.approx(b['loss'], rel=1e-5, abs=1e-7)

    def final(run_dir):
        states = sorted(n for n in os.listdir(run_dir) if n.startswith('training-state-'))
        state = _state_tensors(os.path.join(run_dir, states[-1]))
        return dict(state['net'], **{f'phema.{name}': t for name, t in state['phema']['averages'][0].items()})

    w1, w2 = final(one_dir), final(two_dir)  # the weights and the post-hoc EMA profile
    for name in w1:
        a, b = w1[name], w2[name]
        if name.endswith('qkv.bias'):
            # The key bias cannot change attention (it adds the same logit to every key), so its
            # gradient is pure rounding noise, which Adam scales up to steps of size lr.
            keep = torch.arange(a.numel()) % 3 != 1
            a, b = a[keep], b[keep]
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


# ----------------------------------------------------------------------------------------------
# Bad input: one line naming the option, exit status 1, nothing created.


def invoke_train(args):
    import train
    runner = CliRunner()
    return runner.invoke(train.main, args, catch_exceptions=True)


def assert_user_error(result, *needles):
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.output.strip().splitlines() if line.startswith('Error:')]
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert 'Traceback' not in result.output


@pytest.fixture(scope='module')
def unlabelled(tmp_path_factory):
    return make_zip(tmp_path_factory.mktemp('data') / 'nolabels.zip', count=8, labels=False)


@pytest.fixture(scope='module')
def odd_size(tmp_path_factory):
    return make_zip(tmp_path_factory.mktemp('data') / 'odd.zip', count=8, size=18)


@pytest.mark.parametrize('case', ['missing', 'unreadable', 'resolution', 'patch-divide', 'patch-factor', 'batch',
                                  'real_p', 'cond', 'resume', 'compiler'])
def test_bad_input_gives_one_line(case, digits, unlabelled, odd_size, tmp_path, monkeypatch):
    outdir = tmp_path / 'runs'
    base = ['--outdir', str(outdir), '--batch=8', '--cbase=8', '--workers=0', '-n']
    if case == 'missing':
        result = invoke_train(base + ['--data', str(tmp_path / 'nope.zip')])
        assert_user_error(result, '--data', 'nope.zip')
    elif case == 'unreadable':
        bad = tmp_path / 'bad.zip'
        bad.write_text('not a zip')
        result = invoke_train(base + ['--data', str(bad)])
        assert_user_error(result, 'bad.zip')
    elif case == 'resolution':
        result = invoke_train(base + ['--data', odd_size, '--cres=1,2,2'])
        assert_user_error(result, '--data', '18', 'down-sampling factor 4')
    elif case == 'patch-divide':
        result = invoke_train(base + ['--data', digits, '--cres=1,2', '--patch-sizes=6,16'])
        assert_user_error(result, '--patch-sizes', '6')
    elif case == 'patch-factor':
        result = invoke_train(base + ['--data', digits, '--cres=1,2,2', '--patch-sizes=2,16'])
        assert_user_error(result, '--patch-sizes', '2', 'factor 4')
    elif case == 'batch':
        result = invoke_train(base[:-2] + ['--batch=10', '--batch-gpu=4', '--data', digits, '-n'])
        assert_user_error(result, '--batch=10', '--batch-gpu=4')
    elif case == 'real_p':
        result = invoke_train(base + ['--data', digits, '--real-p=1.5'])
        assert_user_error(result, '--real-p')
    elif case == 'cond':
        result = invoke_train(base + ['--data', unlabelled, '--cond=1'])
        assert_user_error(result, '--cond')
    elif case == 'resume':
        result = invoke_train(base + ['--data', digits, '--resume', str(tmp_path / 'nothing-here')])
        assert_user_error(result, '--resume', 'nothing-here')
    elif case == 'compiler':
        monkeypatch.setenv('PATH', str(tmp_path))
        monkeypatch.delenv('CXX', raising=False)
        result = invoke_train(base + ['--data', digits, '--compile=1', '--device=cpu'])
        assert_user_error(result, '--compile', 'C++ compiler')
    assert not outdir.exists()


def test_dry_run_writes_nothing(digits, tmp_path):
    outdir = tmp_path / 'runs'
    result = invoke_train(['--outdir', str(outdir), '--data', digits, '--batch=8', '--cbase=8', '-n'])
    assert result.exit_code == 0, result.output
    assert 'Dry run' in result.output and not outdir.exists()


@pytest.mark.parametrize('native', [True, False])
def test_bf16_on_a_cpu_without_native_bf16_says_so_and_trains_in_fp32(monkeypatch, digits, tmp_path, native):
    from torch_utils import misc
    monkeypatch.setattr(misc, '_cpu_has_bf16', [native])
    result = invoke_train(['--outdir', str(tmp_path / 'runs'), '--data', digits, '--batch=8', '--cbase=8', '--bf16=1', '-n'])
    assert result.exit_code == 0, result.output
    notices = [line for line in result.output.splitlines() if line.startswith('--bf16:')]
    assert notices == ([] if native else ['--bf16: this CPU has no native bfloat16 arithmetic (AVX512-BF16 or AMX); training in fp32'])
    assert f'Mixed-precision:         {"bf16" if native else "off"}' in result.output


@pytest.mark.parametrize('native', [True, False])
def test_fp32_on_a_cpu_with_native_bf16_suggests_bf16(monkeypatch, digits, tmp_path, native):
    from torch_utils import misc
    monkeypatch.setattr(misc, '_cpu_has_bf16', [native])
    args = ['--outdir', str(tmp_path / 'runs'), '--data', digits, '--batch=8', '--cbase=8', '-n']
    hint = 'This CPU computes bfloat16 natively'
    result = invoke_train(args)
    assert result.exit_code == 0, result.output
    assert (hint in result.output) == native
    assert hint not in invoke_train(args + ['--bf16=1']).output


@pytest.mark.parametrize('precond,patch', [('vp', '0'), ('ve', '1'), ('edm', '0')])
def test_each_preconditioning_trains_with_and_without_patches(precond, patch, digits, tmp_path):
    outdir = tmp_path / 'runs'
    result = invoke_train(['--outdir', str(outdir), '--data', digits, f'--precond={precond}', f'--patch={patch}',
                           '--batch=4', '--duration=0.00002', '--tick=0.001', '--snap=1000', '--dump=1000', '--seed=1'] + TINY)
    assert result.exit_code == 0, result.output
    run_dir = run_dir_of(outdir)
    stats = read_stats(run_dir)
    assert stats and all(np.isfinite(s['loss']) for s in stats)
    assert all(bool(s['loss_by_patch']) == (patch == '1') for s in stats)
    snapshot = sorted(n for n in os.listdir(run_dir) if n.startswith('network-snapshot-') and n.endswith('.pkl'))[-1]
    with open(os.path.join(run_dir, snapshot), 'rb') as f:
        net = pickle.load(f)['ema']
    assert type(net).__name__ == {'vp': 'VPPrecond', 've': 'VEPrecond', 'edm': 'EDMPrecond'}[precond]
    assert net.use_coords == (patch == '1')
    assert net.model.enc['16x16_conv'].in_channels == 1 + (2 if patch == '1' else 0)


def test_step_callback_sees_every_step_and_can_stop(digits, tmp_path):
    import dnnlib
    import train
    from training import training_loop
    ctx = train.main.make_context('train.py', ['--outdir', 'unused', '--data', digits, '--batch=4', '--duration=1',
                                               '--tick=0.001', '--seed=2'] + TINY)
    opts = dnnlib.EasyDict(ctx.params)
    c, _desc = train.build_config(opts, 1)
    seen = []

    def at_step(info):
        seen.append((info.step, info.nimg, info.seconds))
        return info.step == 3

    c.update(run_dir=str(tmp_path), seed=2, snapshot_ticks=None, state_dump_ticks=None, sample_grid=False)
    training_loop.training_loop(**c, device=torch.device('cpu'), step_callback=at_step)
    assert [s for s, _, _ in seen] == [1, 2, 3]
    assert seen[-1][1] == read_stats(str(tmp_path))[-1]['kimg'] * 1000
    assert all(b[2] >= a[2] for a, b in zip(seen, seen[1:]))


def test_compiled_network_takes_the_same_steps(digits, tmp_path):
    """--compile=1 (TorchInductor) trains the same function as eager mode: equal first losses, and
    after six Adam steps weights that moved the same way up to rounding; the snapshot holds the
    plain network. Full-size crops only: each further patch size would compile for ~50 s more."""
    import dnnlib
    import train
    from training import checkpoints, training_loop
    runs = {}
    for compiled in (0, 1):
        ctx = train.main.make_context('train.py', ['--outdir', 'unused', '--data', digits, '--batch=4', '--duration=1',
                                                   '--tick=0.001', '--dropout=0', '--real_p=1', f'--compile={compiled}'] + TINY)
        c, _desc = train.build_config(dnnlib.EasyDict(ctx.params), 1)
        run_dir = tmp_path / str(compiled)
        weights = {}

        def at_step(info):
            if info.step == 1:
                weights['start'] = {k: v.clone() for k, v in info.net.state_dict().items()}
            weights['end'] = {k: v.clone() for k, v in info.net.state_dict().items()}
            return info.step == 6
        c.update(run_dir=str(run_dir), snapshot_ticks=6, state_dump_ticks=None, sample_grid=False)
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        training_loop.training_loop(**c, device=torch.device('cpu'), step_callback=at_step)
        runs[compiled] = weights, read_stats(str(run_dir))
        graphs = torch._dynamo.utils.counters['stats']['unique_graphs']
        assert graphs == compiled and not torch._dynamo.utils.counters['graph_break'], dict(torch._dynamo.utils.counters)
    (eager, eager_stats), (fused, fused_stats) = runs[0], runs[1]
    assert fused_stats[0]['loss'] == pytest.approx(eager_stats[0]['loss'], rel=1e-4)
    moved = sum((eager['end'][k] - eager['start'][k]).abs().sum() for k in eager['end'])
    apart = sum((fused['end'][k] - eager['end'][k]).abs().sum() for k in eager['end'])
    assert moved > 0 and apart < 0.02 * moved, (float(apart), float(moved))
    net, _decoder = checkpoints.load_network(str(sorted((tmp_path / '1').glob('network-snapshot-*.pkl'))[-1]))
    assert net.state_dict().keys() == eager['end'].keys()


def test_time_limit_stops_at_a_tick_with_snapshot_and_state(digits, tmp_path):
    outdir = tmp_path / 'runs'
    result = invoke_train(['--outdir', str(outdir), '--data', digits, '--batch=4', '--duration=10', '--tick=0.004',
                           '--snap=1000', '--dump=1000', '--seed=1', '--time-limit=0.0001'] + TINY)
    assert result.exit_code == 0, result.output
    run_dir = run_dir_of(outdir)
    stats = read_stats(run_dir)
    assert len(stats) == 1 and stats[0]['kimg'] < 1  # the first tick is past 6 ms: stop there, not after 10 Mimg
    names = os.listdir(run_dir)
    assert any(n.startswith('network-snapshot-') for n in names) and any(n.startswith('training-state-') for n in names)


# ----------------------------------------------------------------------------------------------
# Options: presets, hidden aliases, contradictions.


def resolve(*args):
    """train.py's resolved options for `args` (no data set is opened)."""
    import train
    return train.main.make_context('train.py', ['--outdir=unused', '--data=unused', *args]).params


def config_of(data, *args):
    import dnnlib
    import train
    return train.build_config(dnnlib.EasyDict(resolve(*args), data=data), 1)


@pytest.fixture(scope='module')
def digits32(tmp_path_factory):
    return make_zip(tmp_path_factory.mktemp('data') / 'digits32.zip', count=8, size=32)


@pytest.fixture(scope='module')
def digits64(tmp_path_factory):
    return make_zip(tmp_path_factory.mktemp('data') / 'digits64.zip', count=4, size=64, channels=3)


def test_every_preset_resolves_to_its_own_values():
    """Each preset option lands in the resolved options under its parameter, converted as on the
    command line, and is listed as coming from the preset."""
    import train
    from training import presets
    by_flag = {opt: p for p in train.main.params for opt in p.opts}
    for name, preset in presets.PRESETS.items():
        params = resolve(f'--preset={name}')
        for key, value in preset.options.items():
            param = by_flag[f'--{key}']
            assert param.name in params['preset_options'], (name, key)
            assert params[param.name] == param.type_cast_value(None, value), (name, key)
    latent = resolve('--preset=imagenet256-latent')
    assert (latent['batch'], latent['ema'], latent['precision'], latent['ls'], latent['cond']) == (4096, 50, 'fp16', 100, True)
    assert latent['train_on_latents'] and resolve('--preset=celeba64')['augment'] == 0


@pytest.mark.parametrize('preset,data,parameters', [('demo-cpu', 'digits32', None), ('demo-gpu', 'digits32', None),
                                                    ('bench', 'digits32', None), ('cifar10', 'digits32', None),
                                                    ('celeba64', 'digits64', 61_806_723)])
def test_preset_dry_run(preset, data, parameters, request, tmp_path):
    """`--preset=NAME -n` on a data set of the preset's shape: the resolved options, the preset's
    marked, and the network (SPEC's count for the CelebA recipe)."""
    outdir = tmp_path / 'runs'
    result = invoke_train(['--outdir', str(outdir), '--data', request.getfixturevalue(data), f'--preset={preset}', '-n'])
    assert result.exit_code == 0, result.output
    assert f'* from --preset={preset}' in result.output and '  --batch=' in result.output
    if parameters is not None:
        assert f'Network parameters:      {parameters:,}' in result.output
    assert not outdir.exists()


def test_explicit_options_override_the_preset(digits32):
    params = resolve('--preset=celeba64', '--lr=1e-3', '--real_p=0.3', '--augment=0.2')
    assert (params['lr'], params['real_p'], params['augment'], params['batch']) == (1e-3, 0.3, 0.2, 256)
    assert not {'lr', 'real_p', 'augment'} & set(params['preset_options']) and 'batch' in params['preset_options']
    assert resolve('--preset=lsun256-latent', '--fp16=0')['precision'] == 'fp32'
    assert resolve('--preset=demo-cpu', '--precision=fp32')['precision'] == 'fp32'
    result = invoke_train(['--outdir=unused', '--data', digits32, '--preset=demo-cpu', '--batch=8', '-n'])
    assert '  --batch=8\n' in result.output and '  --cbase=32  *\n' in result.output


def test_demo_and_bench_presets_train_what_their_flag_lists_trained(digits32):
    """The presets replace scripts/demo.sh's and bench/train_speed.py's flag lists (learning-rate
    schedule converted from kimg to Mimg): the same training-loop arguments."""
    demo = ['--cbase=32', '--cres=1,2,2,2', '--blocks=1', '--attn=none', '--cond=1', '--label-dropout=0.1', '--batch=32',
            '--duration=0.4', '--time-limit=8', '--lr=2e-3', '--lr-decay=0.02', '--dropout=0', '--lr-rampup=0.002',
            '--loss-norm=mean', '--P_mean=0', '--bf16=1', '--tick=5', '--snap=20', '--dump=40']
    assert config_of(digits32, *demo) == config_of(digits32, '--preset=demo-cpu')
    gpu = ['--cbase=64', '--cres=1,2,2', '--batch=128', '--duration=1.0', '--lr=1e-3', '--dropout=0', '--lr-rampup=0.02',
           '--tick=20', '--snap=25', '--dump=50']
    assert config_of(digits32, *gpu) == config_of(digits32, '--preset=demo-gpu')
    bench = ['--arch=ddpmpp', '--cbase=32', '--cres=1,2,2', '--batch=32', '--lr-rampup=0.01', '--duration=1', '--blocks=4',
             '--attn=16', '--dropout=0.13', '--real_p=0.5']
    assert config_of(digits32, *bench) == config_of(digits32, '--preset=bench')


def test_hidden_aliases_resolve_as_the_new_names(digits32):
    old = ['--real_p=0.3', '--real_p-end=0.9', '--P_mean=0.1', '--P_std=1.1', '--sigma_data=0.6', '--fp16=1',
           '--precond=pedm']
    new = ['--real-p=0.3', '--real-p-end=0.9', '--p-mean=0.1', '--p-std=1.1', '--sigma-data=0.6', '--precision=fp16',
           '--precond=edm', '--patch=1']
    assert config_of(digits32, *old) == config_of(digits32, *new)
    assert resolve('--train_on_latents=1') == resolve('--latents=1')
    assert resolve('--bf16=1') == resolve('--precision=bf16')
    assert resolve('--fp16=0', '--bf16=0') == resolve()


def test_help_lists_only_the_new_names():
    import click
    import train
    text = train.main.get_help(click.Context(train.main))
    for old in ('--real_p', '--P_mean', '--P_std', '--sigma_data', '--train_on_latents', '--fp16', '--bf16'):
        assert old not in text, old
    assert '[edm|vp|ve]' in text and '--real-p FLOAT' in text and '--lr-rampup MIMG' in text


@pytest.mark.parametrize('option', ['--real-p=0.5', '--real_p=1', '--real-p-end=1', '--patch-sizes=8,16', '--progressive=0',
                                    '--loss-norm=sum', '--pos-embed=2'])
def test_patch_options_are_refused_without_patches(option, tmp_path):
    outdir = tmp_path / 'runs'
    result = invoke_train(['--outdir', str(outdir), '--data', 'unused', '--patch=0', option, '-n'])
    name = option.split('=')[0].replace('_', '-')
    assert_user_error(result, name, 'only applies to patches')
    assert not outdir.exists()


def test_a_presets_patch_options_do_not_stop_patch_0(digits32):
    c, desc = config_of(digits32, '--preset=bench', '--patch=0')
    assert c.patch_kwargs is None and 'use_coords' not in c.network_kwargs and '-edm-' in desc


@pytest.mark.parametrize('args,needles', [
    (['--fp16=1', '--bf16=1'], ['--fp16=1 and --bf16=1', 'choose one']),
    (['--precision=bf16', '--fp16=1'], ['--fp16=1 and --precision=bf16']),
    (['--precision=fp16', '--fp16=0'], ['--fp16=0 and --precision=fp16']),
    (['--precision=fp32', '--bf16=1'], ['--bf16=1 and --precision=fp32']),
    (['--precond=pedm', '--patch=0'], ['--precond=pedm', '--patch=0']),
    (['--precision=fp8'], ['--precision']),
    (['--precond=pedm2'], ['--precond']),
    (['--preset=mnist'], ['--preset']),
])
def test_contradictions_are_one_line(args, needles, tmp_path):
    outdir = tmp_path / 'runs'
    assert_user_error(invoke_train(['--outdir', str(outdir), '--data', 'unused', *args, '-n']), *needles)
    assert not outdir.exists()


def test_an_alias_error_names_the_new_option(tmp_path):
    result = invoke_train(['--outdir', str(tmp_path), '--data', 'unused', '--real_p=2', '-n'])
    assert_user_error(result, "'--real-p'")
    assert '--real_p' not in result.output


# EDM's README (CIFAR-10, FFHQ, AFHQv2, ImageNet-64, transfer), the original Patch Diffusion
# release's README (CelebA, FFHQ, latents) and this README before presets, verbatim after train.py.
OLD_COMMANDS = [
    '--outdir=training-runs --data=datasets/cifar10-32x32.zip --cond=1 --arch=ddpmpp',
    '--outdir=training-runs --data=datasets/cifar10-32x32.zip --cond=0 --arch=ncsnpp --precond=ve',
    '--outdir=training-runs --data=datasets/cifar10-32x32.zip --cond=1 --arch=ddpmpp --precond=vp',
    '--outdir=training-runs --data=datasets/ffhq-64x64.zip --cond=0 --arch=ddpmpp --batch=256 --cres=1,2,2,2 --lr=2e-4 '
    '--dropout=0.05 --augment=0.15',
    '--outdir=training-runs --data=datasets/afhqv2-64x64.zip --cond=0 --arch=ddpmpp --batch=256 --cres=1,2,2,2 --lr=2e-4 '
    '--dropout=0.25 --augment=0.15',
    '--outdir=training-runs --data=datasets/imagenet-64x64.zip --cond=1 --arch=adm --duration=2500 --batch=4096 --lr=1e-4 '
    '--ema=50 --dropout=0.10 --augment=0 --fp16=1 --ls=100 --tick=200',
    '--outdir=training-runs --data=datasets/ffhq-64x64.zip --cond=0 --arch=ddpmpp --batch=256 --cres=1,2,2,2 --lr=2e-4 '
    '--dropout=0.05 --augment=0.15 --transfer=edm-ffhq-64x64-uncond-vp.pkl --duration=2',
    '--outdir=training-runs --data=datasets/celeba-64x64.zip --cond=0 --arch=ddpmpp --batch=256 --cres=1,2,2,2 --lr=2e-4 '
    '--dropout=0.05 --augment=0 --real_p=0.5',
    '--outdir=training-runs --data=datasets/celeba-64x64.zip --arch=ddpmpp --cres=1,2,2,2 --batch=256 --lr=2e-4 '
    '--dropout=0.05 --augment=0.15 --precond=pedm --real_p=0.5',
    '--outdir=training-runs --data=datasets/lsun-256.zip --cond=0 --arch=adm --train_on_latents=1 --duration=200 '
    '--batch-gpu=32 --batch=1024 --lr=1e-4 --ema=50 --dropout=0.10 --fp16=1 --ls=100 --augment=0 --real_p=0.5',
    '--outdir=training-runs --data=datasets/imagenet-256.zip --cond=1 --arch=adm --train_on_latents=1 --duration=2500 '
    '--batch-gpu=32 --batch=4096 --lr=1e-4 --ema=50 --dropout=0.10 --fp16=1 --ls=100 --augment=0 --real_p=0.5 --precond=pedm',
    '--outdir=runs --data=d.zip --cbase=32 --cres=1,2,2 --batch=32 --duration=0.05 --lr-rampup=2 --P_mean=0 --bf16=1',
]


@pytest.mark.parametrize('command', OLD_COMMANDS)
def test_edm_and_original_release_commands_parse(command):
    import train
    params = train.main.make_context('train.py', command.split()).params
    given = re.search(r'--precond=(\w+)', command)
    assert params['precond'] == {None: 'edm', 'pedm': 'edm'}.get(given and given.group(1), given and given.group(1))
    assert params['patch']
    assert params['precision'] == ('fp16' if '--fp16=1' in command else 'bf16' if '--bf16=1' in command else 'fp32')
    assert params['train_on_latents'] == ('--train_on_latents=1' in command)


@pytest.mark.parametrize('field,flag', [('lr_rampup_kimg', '--lr-rampup'), ('dataset_kwargs.path', '--data'),
                                        ('loss_kwargs.P_mean', '--p-mean'), ('real_p', '--real-p')])
def test_a_field_error_of_library_code_names_the_option(field, flag, monkeypatch, tmp_path):
    """train.py re-raises a FieldError under the option that sets the field."""
    import dnnlib
    import train

    def bad_config(opts, world_size):
        raise dnnlib.util.FieldError(field, 'is wrong')
    monkeypatch.setattr(train, 'build_config', bad_config)
    result = invoke_train(['--outdir', str(tmp_path / 'runs'), '--data', 'unused', '-n'])
    assert_user_error(result, f'{flag}: is wrong')


def test_build_config_leaves_its_options_as_they_are(digits32):
    import copy
    import dnnlib
    import train
    opts = dnnlib.EasyDict(resolve('--preset=demo-cpu', '--bf16=1'), data=digits32)
    before = copy.deepcopy(opts)
    train.build_config(opts, 1)
    assert opts == before


def test_crop_sampler_reaches_the_loss_and_needs_patches(digits, tmp_path):
    """--crop-sampler=content sets the loss's crop sampler; without it the loss options stay as they
    were; with patches off it is one line naming the option."""
    import dnnlib
    import train
    base = ['--outdir', str(tmp_path / 'runs'), '--data', digits, '--batch=4', '--cbase=8', '--workers=0']

    def config(*extra):
        return train.build_config(dnnlib.EasyDict(train.main.make_context('train.py', base + list(extra)).params), 1)[0]

    c = config('--crop-sampler=content')
    assert dnnlib.construct_class_by_name(**c.loss_kwargs).crop_sampler == 'content'
    assert 'crop_sampler' not in config().loss_kwargs
    assert config('--crop-sampler=uniform').loss_kwargs.crop_sampler == 'uniform'
    result = invoke_train(base + ['--precond=edm', '--patch=0', '--crop-sampler=content', '-n'])
    assert_user_error(result, '--crop-sampler', 'patches')
    assert not (tmp_path / 'runs').exists()
