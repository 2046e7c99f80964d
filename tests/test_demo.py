"""scripts/demo.sh's CPU recipe stays runnable: its train.py preset (read from the script) passes
train.py's validation and build the network the README describes, and a snapshot trained with
them for a few steps samples with its generate.py options (classifier-free guidance)."""

import glob
import os
import re

import numpy as np
import pytest
from click.testing import CliRunner

from test_training import ROOT, make_zip

DEMO = os.path.join(ROOT, 'scripts', 'demo.sh')


def cpu_branch():
    return open(DEMO).read().split('\nelse\n', 1)[1].split('\nfi\n', 1)[0]


def cpu_array(name):
    """The words of bash array `name` in the CPU branch of demo.sh, ${VAR:-default} as the default."""
    body = re.search(rf'^\s*{name}=\((.*?)\)', cpu_branch(), re.S | re.M).group(1)
    return re.sub(r'\$\{\w+:-([^}]*)\}', r'\1', body).split()


def cpu_train_options():
    """The train.py options of demo.sh's CPU branch: its preset (the environment overrides unset)."""
    return ['--preset=' + re.search(r'^\s*PRESET=(\S+)$', cpu_branch(), re.M).group(1)]


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    """20 bundled MNIST digits at 32x32, two of each class (so the label embedding has all 10)."""
    labels = np.load(os.path.join(ROOT, 'data', 'mnist-10k-28x28.npz'))['labels']
    picks = [int(i) for d in range(10) for i in np.flatnonzero(labels == d)[:2]]
    return make_zip(tmp_path_factory.mktemp('data') / 'digits.zip', size=32, indices=picks)


def test_demo_network_is_the_one_the_readme_describes(digits, tmp_path):
    import train
    result = CliRunner().invoke(train.main, ['--outdir', str(tmp_path), '--data', digits, *cpu_train_options(), '-n'])
    assert result.exit_code == 0, result.output
    assert re.search(r'Network parameters: +1,737,441\n', result.output) and re.search(r'Class-conditional: +True', result.output)
    assert '1.7M-parameter' in open(os.path.join(ROOT, 'README.md')).read()


def test_demo_options_train_and_sample_with_guidance(digits, tmp_path):
    import dnnlib
    import generate
    import train
    from training import training_loop
    options = cpu_train_options()
    ctx = train.main.make_context('train.py', ['--outdir=unused', f'--data={digits}', *options, '--workers=0',
                                               '--duration=0.00016', '--tick=0.00016'])
    c, _desc = train.build_config(dnnlib.EasyDict(ctx.params), 1)
    c.update(run_dir=str(tmp_path), seed=0, snapshot_ticks=100, state_dump_ticks=100, sample_grid=False)
    training_loop.training_loop(**c)
    snapshot = sorted(glob.glob(str(tmp_path / 'network-snapshot-*.safetensors')))[-1]
    gen = cpu_array('GEN')
    assert gen == ['--cfg=2.5']
    result = CliRunner().invoke(generate.main, [f'--network={snapshot}', f'--outdir={tmp_path / "out"}', '--seeds=0-3',
                                                '--steps=2', f'--grid={tmp_path / "grid.png"}', *gen])
    assert result.exit_code == 0, result.output
    assert len(glob.glob(str(tmp_path / 'out' / '**' / '*.png'), recursive=True)) == 4 and (tmp_path / 'grid.png').exists()
