"""torch_utils.misc (BatchRNG, InfiniteSampler, seeds, parameter helpers) and training_stats."""

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from torch_utils import misc, training_stats

# ----------------------------------------------------------------------------------------------
# BatchRNG.


@pytest.mark.parametrize('method,args', [('randn', (3, 4)), ('rand', (5,)), ('randint', (0, 1000, 2, 3))])
def test_batch_rng_rows_depend_only_on_their_seed(method, args):
    a = getattr(misc.BatchRNG([5, 7, 9], rows_per_seed=2), method)(*args)
    b = getattr(misc.BatchRNG([1, 9, 7, 3], rows_per_seed=2), method)(*args)
    c = getattr(misc.BatchRNG([7], rows_per_seed=2), method)(*args)
    assert a.shape[0] == 6 and b.shape[0] == 8 and c.shape[0] == 2
    assert a.shape[1:] == b.shape[1:] == c.shape[1:]
    assert torch.equal(a[2:4], b[4:6]) and torch.equal(a[2:4], c)  # seed 7
    assert torch.equal(a[4:6], b[2:4])  # seed 9
    assert not torch.equal(a[0:2], a[2:4])


def test_batch_rng_successive_draws_and_shapes():
    rng = misc.BatchRNG([3, 4])
    first, second = rng.randn(2), rng.randn(2)
    assert not torch.equal(first, second)
    again = misc.BatchRNG([3, 4])
    assert torch.equal(again.randn(2), first) and torch.equal(again.randn(2), second)
    assert misc.BatchRNG([1, 2]).randn().shape == (2,)
    assert misc.BatchRNG([1, 2]).rand([3, 4]).shape == (2, 3, 4)
    x = torch.zeros(4, 2, 5, dtype=torch.float64)
    like = misc.BatchRNG([1, 2], rows_per_seed=2).randn_like(x)
    assert like.shape == x.shape and like.dtype == torch.float64
    with pytest.raises(AssertionError):
        misc.BatchRNG([1, 2]).randn_like(x)
    ints = misc.BatchRNG(range(200)).randint(3, 7, 10)
    assert ints.min() == 3 and ints.max() == 6
    u = misc.BatchRNG(range(100), rows_per_seed=100).rand()
    assert 0 <= float(u.min()) and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.02


def test_batch_rng_accepts_large_seeds():
    big = misc.seed_to_int(123, 456)
    assert 0 <= big < 2 ** 63
    a = misc.BatchRNG([big, 2 ** 64 + 5]).randn(3)
    b = misc.BatchRNG([5]).randn(3)
    assert torch.equal(a[1], b[0])  # seeds are taken modulo 2^64


def test_seed_to_int_deterministic_and_distinct():
    assert misc.seed_to_int(1, 2) == misc.seed_to_int(1, 2)
    values = {misc.seed_to_int(s, k) for s in range(5) for k in range(50)}
    assert len(values) == 250
    assert misc.seed_to_int(1, 2) != misc.seed_to_int(2, 1)


# ----------------------------------------------------------------------------------------------
# InfiniteSampler.

def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def _blocks(indices, block_size):
    return [indices[i:i + block_size] for i in range(0, len(indices), block_size)]


@pytest.mark.parametrize('size,block,world', [(23, 5, 3), (10, 4, 2), (7, 7, 4), (50, 3, 1)])
def test_sampler_ranks_partition_blocks(size, block, world):
    num_blocks = 24
    single = _blocks(_take(misc.InfiniteSampler(size, seed=3, block_size=block), num_blocks * block), block)
    per_rank = []
    for rank in range(world):
        sampler = misc.InfiniteSampler(size, rank=rank, world_size=world, seed=3, block_size=block)
        per_rank.append(_blocks(_take(sampler, (num_blocks // world) * block), block))
    for b in range(num_blocks - num_blocks % world):
        rank, j = b % world, b // world
        assert per_rank[rank][j] == single[b], f'block {b}'
    # Union over ranks of the first k blocks == single-process first k blocks.
    k = (num_blocks // world) * world
    union = sorted(i for blocks in per_rank for blk in blocks for i in blk)
    assert union == sorted(i for blk in single[:k] for i in blk)


def test_sampler_start_block_resumes_mid_stream():
    size, block = 23, 5
    single = _blocks(_take(misc.InfiniteSampler(size, seed=1, block_size=block), 40 * block), block)
    resumed = misc.InfiniteSampler(size, seed=1, block_size=block, start_block=17)
    assert resumed.first_block() == 17
    assert _blocks(_take(resumed, 10 * block), block) == single[17:27]
    # With 3 ranks resuming at block 17: every block from 17 on is produced by exactly one rank.
    got = {}
    for rank in range(3):
        sampler = misc.InfiniteSampler(size, rank=rank, world_size=3, seed=1, block_size=block, start_block=17)
        first = sampler.first_block()
        assert first >= 17 and first % 3 == rank and first < 20
        for j, blk in enumerate(_blocks(_take(sampler, 6 * block), block)):
            got[first + 3 * j] = blk
    for b in range(17, 35):
        assert got[b] == single[b]


def test_sampler_each_epoch_is_a_permutation():
    size = 17
    stream = _take(misc.InfiniteSampler(size, seed=5, block_size=4), size * 4)
    epochs = [stream[i * size:(i + 1) * size] for i in range(4)]
    for e in epochs:
        assert sorted(e) == list(range(size))
    assert len({tuple(e) for e in epochs}) == 4
    assert _take(misc.InfiniteSampler(size, seed=6, block_size=4), size) != epochs[0]
    assert _take(misc.InfiniteSampler(size, shuffle=False, block_size=4), 2 * size) == list(range(size)) * 2


def test_sampler_works_with_data_loader():
    dataset = list(range(11))
    sampler = misc.InfiniteSampler(len(dataset), rank=1, world_size=2, seed=0, block_size=3)
    loader = torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=3)
    batches = [b.tolist() for b in itertools.islice(iter(loader), 4)]
    single = _blocks(_take(misc.InfiniteSampler(len(dataset), seed=0, block_size=3), 8 * 3), 3)
    assert batches == single[1::2]


# ----------------------------------------------------------------------------------------------
# Parameter helpers.

def test_count_parameters_excludes_buffers():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 4)
            self.register_buffer('freqs', torch.zeros(100))
    assert misc.count_parameters(M()) == 3 * 4 + 4


def test_copy_params_and_buffers():
    src, dst = torch.nn.Linear(3, 4), torch.nn.Linear(3, 4)
    misc.copy_params_and_buffers(src, dst, require_all=True)
    assert torch.equal(src.weight, dst.weight) and torch.equal(src.bias, dst.bias)
    with pytest.raises(ValueError):
        misc.copy_params_and_buffers(torch.nn.Linear(3, 5), dst)
    with pytest.raises(ValueError):
        misc.copy_params_and_buffers(torch.nn.Linear(3, 4, bias=False), torch.nn.Linear(3, 4), require_all=True)


def test_nan_to_num_():
    t = torch.tensor([float('nan'), float('inf'), -float('inf'), 2.0])
    misc.nan_to_num_(t)
    assert t.tolist() == [0.0, 1e5, -1e5, 2.0]


# ----------------------------------------------------------------------------------------------
# training_stats.

def test_collector_mean_std_num_match_numpy():
    rng = np.random.default_rng(0)
    a = rng.normal(3.0, 2.0, size=1000)
    b1, b2 = rng.uniform(size=7), rng.uniform(size=(3, 4))
    collector = training_stats.Collector(regex='test_misc/.*', keep_previous=True)
    assert training_stats.report('test_misc/a', torch.tensor(a[:600])) is not None
    training_stats.report('test_misc/a', a[600:].tolist())
    training_stats.report('test_misc/b', torch.tensor(b1, dtype=torch.float32))
    training_stats.report('test_misc/b', torch.tensor(b2))
    training_stats.report('test_misc/b', [])
    collector.update()
    assert collector.names() == ['test_misc/a', 'test_misc/b']
    assert collector.num('test_misc/a') == 1000
    assert collector.mean('test_misc/a') == pytest.approx(a.mean(), rel=1e-9)
    assert collector.std('test_misc/a') == pytest.approx(a.std(), rel=1e-7)  # from sums of squares
    b = np.concatenate([b1.astype(np.float32).astype(np.float64), b2.ravel()])
    assert collector.num('test_misc/b') == 19
    assert collector.mean('test_misc/b') == pytest.approx(b.mean(), rel=1e-6)
    assert collector.std('test_misc/b') == pytest.approx(b.std(), rel=1e-5)
    assert collector['test_misc/a'] == collector.mean('test_misc/a')
    assert collector.as_dict()['test_misc/b']['num'] == 19

    # Next interval: only new reports count; a name without new values keeps its last figures.
    training_stats.report('test_misc/a', [1.0, 2.0, 4.0])
    collector.update()
    assert collector.num('test_misc/a') == 3
    assert collector.mean('test_misc/a') == pytest.approx(7 / 3)
    assert collector.std('test_misc/a') == pytest.approx(np.std([1.0, 2.0, 4.0]))
    assert collector.num('test_misc/b') == 19


def test_collector_regex_and_no_keep_previous():
    fresh = training_stats.Collector(regex='test_misc2/x', keep_previous=False)
    training_stats.report('test_misc2/x', 5.0)
    training_stats.report('test_misc2/y', 6.0)
    fresh.update()
    assert fresh.names() == ['test_misc2/x'] and fresh.mean('test_misc2/x') == 5.0 and fresh.std('test_misc2/x') == 0.0
    assert np.isnan(fresh.mean('test_misc2/y')) and fresh.num('test_misc2/y') == 0
    fresh.update()
    assert fresh.num('test_misc2/x') == 0 and np.isnan(fresh.mean('test_misc2/x'))
    # Clean up what this test reported but did not collect.
    training_stats.Collector(regex='test_misc2/.*').update()


# ----------------------------------------------------------------------------------------------
# CPU allocator.

_FAULTS = """
import resource, sys, torch
sys.path.insert(0, {root!r})
from torch_utils import misc
if {keep}:
    assert misc.keep_freed_memory()
def faults():  # a step's worth of large tensors of mixed sizes, made, written and freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = torch.empty(16 << 20).fill_(1)
    b = torch.empty(3 << 20).fill_(1)
    del a
    c = torch.empty(12 << 20).fill_(1)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(sum([faults() for _ in range(12)][-4:]))
"""


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc')
def test_keep_freed_memory_reuses_large_blocks():
    """By default large freed tensors go back to the kernel and the next ones are mapped afresh,
    one page fault per 4 KiB page written (~30,000 per cycle here); after keep_freed_memory() the
    heap settles within a few cycles and later cycles reuse it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def late_faults(keep):
        out = subprocess.run([sys.executable, '-c', _FAULTS.format(root=root, keep=keep)], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])
    assert late_faults(False) > 50_000
    assert late_faults(True) < 10_000


# ----------------------------------------------------------------------------------------------
# Native bfloat16 detection.


@pytest.mark.parametrize('flags,limit,expected', [
    ({'avx2', 'avx512f', 'avx512_bf16', 'amx_bf16'}, None, True),
    ({'avx2', 'amx_bf16'}, 'AVX512_CORE_AMX', True),
    ({'avx2', 'avx512f', 'avx512_bf16', 'amx_bf16'}, 'avx2', False),  # the AMD EPYC proxy of docs/benchmarks.md
    ({'avx2', 'avx512f', 'avx512_bf16'}, 'AVX512_CORE_VNNI', False),
    ({'avx2', 'fma'}, None, False),
])
def test_cpu_has_bf16_follows_flags_and_onednn_isa_limit(monkeypatch, flags, limit, expected):
    monkeypatch.setattr(misc, '_cpu_has_bf16', [])
    monkeypatch.setattr(misc, 'cpu_info', lambda: ('test CPU', flags))
    monkeypatch.delenv('DNNL_MAX_CPU_ISA', raising=False)
    if limit is None:
        monkeypatch.delenv('ONEDNN_MAX_CPU_ISA', raising=False)
    else:
        monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', limit)
    assert misc.cpu_has_bf16() is expected
    monkeypatch.setattr(misc, 'cpu_info', lambda: ('changed', set()))
    assert misc.cpu_has_bf16() is expected  # read once per process


def test_field_error_is_renamed_to_the_scripts_option():
    import click
    from dnnlib.util import FieldError, UserError, option_errors

    @click.command()
    @click.option('--real-p', 'real_p', type=float)
    def command(real_p):
        pass

    with pytest.raises(UserError) as info:
        with option_errors(command):
            raise FieldError('patch_kwargs.real_p', '2 is not in [0, 1]')
    assert str(info.value) == '--real-p: 2 is not in [0, 1]' and not isinstance(info.value, FieldError)
    with pytest.raises(UserError, match='^--data: missing$'):
        with option_errors(command, names={'dataset_kwargs.path': '--data'}):
            raise FieldError('dataset_kwargs.path', 'missing')
    with pytest.raises(FieldError, match='^lr: negative$'):
        raise FieldError('lr', 'negative')


def test_option_errors_as_decorator_names_the_running_commands_option():
    """As a decorator below @click.command, option_errors finds the option of the command being run;
    a FieldError with a value keeps it, as `--flag=value` for the script and `field=value` in Python."""
    import click
    from click.testing import CliRunner
    from dnnlib.util import FieldError, UserError, field_of, option_errors

    @click.command()
    @click.option('--dev', 'device_name', type=str)
    @option_errors(names={'device': '--dev'})
    def command(device_name):
        with field_of('device'):
            raise UserError('not known')

    result = CliRunner().invoke(command, ['--dev=gpu'])
    assert result.exit_code == 1 and result.output.strip() == 'Error: --dev: not known', result.output
    with pytest.raises(FieldError, match='^device=gpu: not a device$'):
        raise FieldError('device', 'not a device', value='gpu')

    @click.command()
    @click.option('--device', 'device', type=str)
    @option_errors()
    def other(device):
        raise FieldError('device', 'not a device', value=device)

    assert CliRunner().invoke(other, ['--device=gpu']).output.strip() == 'Error: --device=gpu: not a device'


def test_mentioned_arguments_and_notices_name_options_only_in_scripts():
    """Backquoted argument names in a message or notice, and a FieldError of several arguments,
    read as Python names in Python and as the options of the script that runs the code."""
    import click
    from dnnlib.util import FieldError, UserError, notice, option_errors

    def fail():
        raise FieldError(('network_kwargs', 'batch_size'), 'too big; pass `overwrite` or `unknown`, not overwrite')

    with pytest.raises(FieldError, match='^network_kwargs/batch_size: too big; pass `overwrite` or `unknown`, not overwrite$'):
        fail()
    assert notice('slow', field='bf16') == 'bf16: slow' and notice('pass `overwrite`') == 'pass `overwrite`'

    @click.command()
    @click.option('--batch', 'batch_size', type=int)
    @click.option('--overwrite', is_flag=True)
    @click.option('--bf16', type=bool)
    def command(batch_size, overwrite, bf16):
        pass

    with pytest.raises(UserError) as info:
        with option_errors(command, names={'network_kwargs': '--cbase/--cres'}):
            assert notice('slow; pass `overwrite`', field='bf16') == '--bf16: slow; pass --overwrite'
            fail()
    assert str(info.value) == '--cbase/--cres/--batch: too big; pass --overwrite or `unknown`, not overwrite'
    with pytest.raises(UserError, match='^a.png: bad; pass --overwrite$'):
        with option_errors(command):
            raise UserError('a.png: bad; pass `overwrite`')
    assert notice('pass `overwrite`') == 'pass `overwrite`'  # the script's names end with its block
