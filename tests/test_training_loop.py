"""The training loop called in-process on a tiny network: the loss normalisation of patch steps
(`--loss-norm`), the moving patch schedule (`--real_p-end`) across a resume, `stats.jsonl`, the
data-loader blocks and their ids, per-size loss stats, and the training state with extra parts."""

import copy
import json
import os
import shutil

import pytest
import torch

import dnnlib
import train
from test_training import TINY, make_zip
from torch_utils import misc, training_stats
from training import checkpoints, file_limits, run_dir, run_files, training_loop, training_state
from training import patch as patch_lib
from training.patch import PatchSchedule


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    return make_zip(tmp_path_factory.mktemp('data') / 'digits.zip', count=32, size=8)


def loop_config(digits, *options):
    """training_loop kwargs for train.py's options on 8x8 digits, one step per tick."""
    ctx = train.main.make_context('train.py', ['--outdir', 'unused', '--data', digits, '--batch=2', '--tick=0.002',
                                               '--seed=5', '--dropout=0', *TINY, *options])
    c, _desc = train.build_config(dnnlib.EasyDict(ctx.params), 1)
    c.update(seed=5, snapshot_ticks=None, state_dump_ticks=None, sample_grid=False, lr_rampup_kimg=0)
    return c


def first_gradient(digits, run_dir, *options):
    """The gradient of the first optimizer step, flattened."""
    os.makedirs(run_dir)
    seen = {}

    def at_step(info):
        seen['grad'] = torch.cat([p.grad.flatten() for p in info.net.parameters()])
        return True

    training_loop.training_loop(**loop_config(digits, '--duration=1', *options), run_dir=str(run_dir), step_callback=at_step)
    return seen['grad']


@pytest.mark.parametrize('real_p,factor', [(0.0, 4.0), (1.0, 1.0)])
def test_mean_loss_norm_scales_a_patch_step_by_the_pixel_ratio(digits, tmp_path, real_p, factor):
    """With --real_p=0 and sizes 4, 8 every step uses 4x4 patches of 8x8 images: the per-pixel
    mean makes its gradient (8/4)² = 4 times the per-image sum's; a full-image step is unchanged."""
    options = ('--patch-sizes=4', f'--real_p={real_p}')
    by_sum = first_gradient(digits, tmp_path / 'sum', *options, '--loss-norm=sum')
    by_mean = first_gradient(digits, tmp_path / 'mean', *options, '--loss-norm=mean')
    assert by_sum.abs().max() > 0
    torch.testing.assert_close(by_mean, by_sum * factor, rtol=1e-4, atol=1e-7)


def run(c, run_dir, stop_at=None, resume_state=None):
    """Trains to the end of `c` (or stops after step `stop_at`, dumping a state) and returns the
    parameters after the last step."""
    os.makedirs(run_dir)
    seen = {}

    def at_step(info):
        seen['net'] = [p.detach().clone() for p in info.net.parameters()]
        return info.step == stop_at

    training_loop.training_loop(**dict(c, state_dump_ticks=1000), run_dir=str(run_dir), resume_state=resume_state,
                                step_callback=at_step)
    return seen['net']


def read_stats(run_dir):
    with open(os.path.join(run_dir, 'stats.jsonl')) as f:
        return [json.loads(line) for line in f]


def test_moving_schedule_resumes_exactly_and_stats_are_truncated_then_appended(digits, tmp_path):
    """A run with --real_p-end stopped after step 3 and resumed in its own folder draws the same
    patch sizes and reaches the same weights as the uninterrupted run. stats.jsonl loses the lines
    written after the dumped state and is appended to, not replaced, while training runs."""
    c = loop_config(digits, '--duration=0.000016', '--patch-sizes=4', '--real_p=0', '--real_p-end=1')
    full_dir, split_dir = tmp_path / 'full', tmp_path / 'split'
    full_net = run(c, full_dir)
    run(c, split_dir, stop_at=3)
    state = os.path.join(split_dir, training_state.state_name(0))
    shutil.copy(state, tmp_path / 'state.pt')
    with open(os.path.join(split_dir, 'stats.jsonl'), 'a') as f:  # a tick after the dump, then a crash
        f.write(json.dumps(dict(read_stats(split_dir)[-1], tick=3, step=4)) + '\n')

    reader = {}
    seen = {}

    def at_step(info):
        reader.setdefault('file', open(os.path.join(split_dir, 'stats.jsonl')))
        seen['net'] = [p.detach().clone() for p in info.net.parameters()]

    training_loop.training_loop(**c, run_dir=str(split_dir), resume_state=str(tmp_path / 'state.pt'), step_callback=at_step)
    full, split = read_stats(full_dir), read_stats(split_dir)
    ticks = [r['tick'] for r in full]
    assert len(ticks) >= 5 and [r['tick'] for r in split] == ticks == list(range(len(ticks)))
    sizes = [list(r['loss_by_patch']) for r in full]
    assert [list(r['loss_by_patch']) for r in split] == sizes and {'4', '8'} <= {s for (s,) in sizes}
    assert [r['loss'] for r in split] == [r['loss'] for r in full]
    for a, b in zip(full_net, seen['net']):
        assert torch.equal(a, b)
    with reader['file'] as f:  # opened during the resumed run: still the file being written
        assert [json.loads(line)['tick'] for line in f] == ticks


def test_real_p_end_with_progressive_is_a_user_error(digits):
    with pytest.raises(dnnlib.util.UserError, match='^real_p_end: not with `progressive`'):
        loop_config(digits, '--real_p-end=1', '--progressive=1')


def test_patch_kwargs_are_the_final_schedule_arguments(digits):
    """build_config resolves the patch options once; the loop passes them to PatchSchedule as they are."""
    c = loop_config(digits, '--patch-sizes=4', '--loss-norm=mean')
    schedule = PatchSchedule(8, seed=0, **c.patch_kwargs)
    assert schedule.patch_sizes == [4, 8] and schedule.loss_weight(4) == 4 and c.network_kwargs.use_coords
    assert loop_config(digits, '--patch=0').patch_kwargs is None


def test_lr_decay_follows_the_inverse_square_root_of_the_images_seen(digits, tmp_path):
    """--lr-decay=0.000004 (4 images), batch 2, no warm-up: the rate of the step after n images is
    2e-3 / √(max(n / 4, 1)), logged per tick (one step per tick); 0 keeps it constant. Without a
    warm-up the very first step (n = 0) has the full rate too (EDM gave it 0)."""
    c = loop_config(digits, '--duration=0.000012', '--real_p=1', '--lr-decay=0.000004')
    run(c, tmp_path / 'decay')
    seen = [(round(r['kimg'] * 1000), r['lr']) for r in read_stats(tmp_path / 'decay')]
    assert [n for n, _ in seen] == [2, 4, 6, 8, 10, 12]
    expected = [2e-3 / max((n - 2) / 4, 1) ** 0.5 for n, _ in seen]
    assert [lr for _, lr in seen] == pytest.approx(expected)
    run(loop_config(digits, '--duration=0.000006', '--real_p=1'), tmp_path / 'constant')
    assert [r['lr'] for r in read_stats(tmp_path / 'constant')] == [2e-3, 2e-3, 2e-3]


def test_adam_is_fused_and_stays_fused_after_loading_a_state_without_the_flag():
    """The loop's Adam runs the fused kernel; a saved state without `fused` (EDM's) loads into it
    with the same moments and step count and leaves the kernel as it was; fused=False is honoured."""
    net = torch.nn.Linear(3, 2)
    kwargs = dict(class_name='torch.optim.Adam', lr=1e-3, betas=[0.9, 0.999], eps=1e-8)
    optimizer = training_loop.build_optimizer(net, kwargs)
    assert optimizer.param_groups[0]['fused'] is True
    plain = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(4, 3)).square().sum().backward()
    plain.step()
    saved = plain.state_dict()
    for group in saved['param_groups']:
        group.pop('fused'), group.pop('foreach')
    training_state.load_optimizer_state(optimizer, saved)
    assert optimizer.param_groups[0]['fused'] is True
    moments = optimizer.state[net.weight]
    assert int(moments['step']) == 1 and torch.equal(moments['exp_avg'], plain.state[net.weight]['exp_avg'])
    assert not training_loop.build_optimizer(net, dict(kwargs, fused=False)).param_groups[0]['fused']


class IndexDataset(torch.utils.data.Dataset):
    """Item i is a one-row tensor holding i, so a block shows which items it holds."""

    def __len__(self):
        return 23

    def __getitem__(self, idx):
        return torch.tensor([idx]), torch.zeros(0)


def test_block_loader_yields_the_same_block_under_the_same_id_on_any_number_of_ranks():
    """Block b holds the same items for one process and for each of three ranks, also when a
    resumed run starts at block 7; `blocks_consumed` says where the next run continues."""
    single = misc.BlockLoader(IndexDataset(), block_size=4, seed=1)
    by_id = {}
    for _ in range(20):
        block_id, items, _labels = next(single)
        by_id[block_id] = items.flatten().tolist()
    assert sorted(by_id) == list(range(20)) and single.blocks_consumed == 20
    for rank in range(3):
        loader = misc.BlockLoader(IndexDataset(), block_size=4, seed=1, rank=rank, world_size=3, start_block=7)
        block_ids, items, _labels = loader.take(3)
        assert [b % 3 for b in block_ids] == [rank] * 3 and 7 <= block_ids[0] < 10
        assert items.flatten().tolist() == [i for b in block_ids for i in by_id[b]]
        assert loader.blocks_consumed == 7 + 3 * 3


def test_loss_stats_are_read_back_per_patch_size():
    """Each size's mean comes back under its own name, ordered by pixels, whatever the name's digits."""
    collector = training_stats.Collector(regex='Loss/.*')
    collector.update()  # whatever earlier tests left
    losses = run_files.LossStats()
    losses.report(torch.full([2, 1, 4, 4], 1.0), 16)
    losses.report(torch.full([2, 1, 4, 4], 3.0), 4)
    losses.report(torch.full([2, 1, 4, 4], 5.0), (8, 16))
    losses.report(torch.full([2, 1, 4, 4], 7.0), None)
    collector.update()
    collected = losses.collect(collector)
    assert collected == dict(loss=4.0, loss_by_patch={'4': 3.0, '16x8': 5.0, '16': 1.0})
    assert list(collected['loss_by_patch']) == ['4', '16x8', '16']
    collector.update()
    assert losses.collect(collector)['loss_by_patch'] == {}


class CountingPart(training_state.Tracker):
    """A part with state: the steps it saw."""

    def __init__(self):
        self.steps, self.loaded = [], 'never'

    def update(self, net, step, nimg):
        self.steps.append(step)

    def state_dict(self):
        return dict(steps=torch.tensor(self.steps))

    def load_state_dict(self, state):
        self.loaded = state
        if state is not None:
            self.steps = state['steps'].tolist()


def test_training_state_round_trip_with_parts(tmp_path):
    """A state saves the weights, the optimizer, the counters, the stats and each part under its
    name, and loads them into a fresh run; a part the file lacks is told so (None)."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    optimizer = training_loop.build_optimizer(net, dict(class_name='torch.optim.Adam', lr=1e-3))
    net(torch.randn(4, 3)).square().sum().backward()
    optimizer.step()
    part = CountingPart()
    part.update(net, 1, 4)
    state = training_state.TrainingState(net, copy.deepcopy(net), optimizer, dict(width=3), 4, dict(count=part))
    state.nimg, state.step, state.tick, state.blocks_consumed, state.stats = 4, 1, 1, 2, [dict(tick=0, loss=1.5)]
    path = str(tmp_path / training_state.state_name(0))
    state.save(path, torch.device('cpu'))

    fresh_net = torch.nn.Linear(3, 2)
    fresh_optimizer = training_loop.build_optimizer(fresh_net, dict(class_name='torch.optim.Adam', lr=1e-3))
    parts = dict(count=CountingPart(), other=CountingPart())
    fresh = training_state.TrainingState(fresh_net, torch.nn.Linear(3, 2), fresh_optimizer, dict(width=3), 4, parts)
    fresh.load(path, torch.device('cpu'))
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), fresh_net.parameters()))
    assert fresh_optimizer.state_dict()['state'][0]['step'] == 1
    assert (fresh.nimg, fresh.step, fresh.tick, fresh.blocks_consumed, fresh.stats) == (4, 1, 1, 2, [dict(tick=0, loss=1.5)])
    assert parts['count'].steps == [1] and parts['other'].loaded is None
    training_state.check_resume_state(path, dict(width=3), 4)
    with pytest.raises(dnnlib.util.UserError, match=r'width 3 \(now 5\), `batch_size` 4 \(now 8\)'):
        training_state.check_resume_state(path, dict(width=5), 8)


def test_python_callers_read_their_own_argument_names(digits, tmp_path):
    """Library code names the argument a Python caller passed; only the scripts speak of flags."""
    with pytest.raises(dnnlib.util.FieldError, match='^patch_sizes: 12 does not divide') as info:
        patch_lib.parse_patch_sizes('12', 32, 1)
    assert info.value.field == 'patch_sizes'
    bad = tmp_path / 'state.pt'
    bad.write_text('not a training state')
    with pytest.raises(dnnlib.util.FieldError, match=f'^resume_state: "{bad}" is not a readable training state') as info:
        training_loop.training_loop(**dict(loop_config(digits), run_dir=str(tmp_path / 'run'), resume_state=str(bad)))
    assert info.value.field == 'resume_state'
    missing = str(tmp_path / 'missing.pkl')
    with pytest.raises(dnnlib.util.FieldError, match='^guide: .*missing.pkl": no such file'):
        checkpoints.load_network(missing, 'guide')
    with pytest.raises(dnnlib.util.UserError, match='^--resume: "') as info:
        with dnnlib.util.option_errors(train.main, names=train.LOOP_FIELDS):
            training_state.find_resume_state(missing)
    assert not isinstance(info.value, dnnlib.util.FieldError)


def test_memory_estimate_names_arguments_in_python_and_options_in_train_py(digits, monkeypatch):
    """The memory check of a run names `network_kwargs` and the batch argument for a Python caller
    (`batch_gpu` where it is set), train.py's --cbase/--cres/--blocks and --batch or --batch-gpu."""
    monkeypatch.setattr(file_limits, 'free_memory', lambda device=None: 1 << 20)
    cpu = torch.device('cpu')
    c = loop_config(digits)
    with pytest.raises(dnnlib.util.FieldError, match=r'^network_kwargs/batch_size: [\d,]+ parameters and batches of 2 '
                                                     r'images of 8x8: needs at least') as info:
        run_dir.check_training_memory(c, cpu)
    assert info.value.fields == ('network_kwargs', 'batch_size') and '--' not in str(info.value)
    with pytest.raises(dnnlib.util.UserError, match=r'^--cbase/--cres/--blocks/--batch: [\d,]+ parameters and batches of 2 '):
        with dnnlib.util.option_errors(train.main, names=train.LOOP_FIELDS):
            run_dir.check_training_memory(c, cpu)
    one = dnnlib.EasyDict(c, batch_gpu=1)
    with pytest.raises(dnnlib.util.FieldError, match=r'^network_kwargs/batch_gpu: [\d,]+ parameters and batches of 1 '):
        run_dir.check_training_memory(one, cpu)
    with pytest.raises(dnnlib.util.UserError, match=r'^--cbase/--cres/--blocks/--batch-gpu: '):
        with dnnlib.util.option_errors(train.main, names=train.LOOP_FIELDS):
            run_dir.check_training_memory(one, cpu)


def test_ema_update_follows_the_half_life_and_sees_later_weights():
    """update_ema is ema ← β·ema + (1 − β)·net with β = 0.5^(images / h), h the ramped half-life;
    the tensor lists taken once keep following the network as its weights change in place."""
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = copy.deepcopy(net)
    tensors = training_loop.TensorLists(net, ema)
    for step in range(3):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
            net[1].running_mean.add_(1.0)
        expected = [e.detach().clone() for e in ema.parameters()]
        nimg, images = 64 * (step + 1), 64
        halflife = min(0.5 * 1000, nimg * 0.05)  # 0.5 kimg, ramp-up ratio 0.05
        beta = 0.5 ** (images / halflife)
        expected = [beta * e + (1 - beta) * p.detach() for e, p in zip(expected, net.parameters())]
        training_loop.update_ema(tensors, images, nimg, 0.5, 0.05)
        for e, want in zip(ema.parameters(), expected):
            torch.testing.assert_close(e.detach(), want)
        assert torch.equal(ema[1].running_mean, net[1].running_mean)
