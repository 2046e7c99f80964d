"""Pickles that keep loading after the code changes (torch_utils.persistence).

- Networks, losses and the augmentation pipe survive pickle.dumps/loads (and deepcopy, and a
  second round trip) with identical outputs and constructor arguments.
- A snapshot loads in a fresh process where `training/networks.py` does not exist.
- A snapshot written before `training/networks.py` changed still runs the code that wrote it.
"""

import copy
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import threading

import pytest
import torch

from conftest import REPO_ROOT, make_tiny_net
from torch_utils import persistence
from torch_utils.misc import BatchRNG
from training import loss as loss_mod
from training import networks, patch


def _net_inputs(resolution=16, channels=3, n=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, channels, resolution, resolution, generator=gen)
    x, coords = patch.extract_patches(images, resolution // 2, BatchRNG(range(seed, seed + n)))
    sigma = torch.exp(torch.randn(n, generator=gen))
    labels = torch.eye(4)[:n]
    return x, sigma, labels, coords


@pytest.mark.parametrize('arch,precond', [('ddpmpp', 'edm'), ('ncsnpp', 've'), ('adm', 'vp')])
def test_network_round_trip_identical_outputs(arch, precond):
    net = make_tiny_net(arch, precond=precond, resolution=16, channels=3, use_coords=True, label_dim=4, augment_dim=3).eval()
    # Give the zero-initialised layers some weight so that the output depends on everything.
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    x, sigma, labels, coords = _net_inputs()
    aug = torch.randn(2, 3)
    with torch.no_grad():
        want = net(x, sigma, labels, coords=coords, augment_labels=aug)
    data = pickle.dumps(net)
    loaded = pickle.loads(data)
    again = pickle.loads(pickle.dumps(loaded))
    clone = copy.deepcopy(net)
    for other in (loaded, again, clone):
        assert type(other).__name__ == type(net).__name__
        assert persistence.is_persistent(other)
        assert other.init_kwargs == net.init_kwargs
        assert other.use_coords and other.coord_channels == 2
        with torch.no_grad():
            got = other.eval()(x, sigma, labels, coords=coords, augment_labels=aug)
        assert torch.equal(got, want)
        sd_a, sd_b = net.state_dict(), other.state_dict()
        assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_pickle_record_layout_is_edms():
    """EDM's snapshots store (type, version, module_src, class_name, state); so do ours."""
    net = make_tiny_net('ddpmpp', resolution=8, channels=1)
    fn, args = net.__reduce__()[:2]
    assert fn is persistence._reconstruct_persistent_obj
    meta, = args
    assert {'type', 'version', 'module_src', 'class_name', 'state'} <= set(meta)
    assert meta['type'] == 'class' and meta['class_name'] == 'EDMPrecond'
    assert 'class EDMPrecond' in meta['module_src'] and 'class SongUNet' in meta['module_src']


@pytest.mark.parametrize('loss_cls,kwargs', [(loss_mod.EDMLoss, dict(P_mean=-0.7, P_std=1.4, sigma_data=0.6)),
                                             (loss_mod.VPLoss, dict(beta_d=15.0)), (loss_mod.VELoss, dict(sigma_max=50))])
def test_loss_round_trip_identical_outputs(loss_cls, kwargs):
    loss_fn = loss_cls(**kwargs)
    loaded = pickle.loads(pickle.dumps(loss_fn))
    assert type(loaded).__name__ == loss_cls.__name__
    for key, value in kwargs.items():
        assert getattr(loaded, key) == value
    assert loaded.init_kwargs == kwargs
    net = make_tiny_net('ddpmpp', resolution=16, channels=3, use_coords=True, label_dim=4)
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    labels = torch.eye(4)[:3]
    with torch.no_grad():
        want = loss_fn(net, images, labels, patch_size=8, rng=BatchRNG([1, 2, 3]))
        got = loaded(net, images, labels, patch_size=8, rng=BatchRNG([1, 2, 3]))
    assert torch.equal(got, want)


def test_augment_pipe_round_trip_identical_outputs():
    augment = pytest.importorskip('training.augment')
    pipe = augment.AugmentPipe(p=0.8, xflip=1e8, rotate_int=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1,
                               brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
    loaded = pickle.loads(pickle.dumps(pipe))
    assert type(loaded).__name__ == 'AugmentPipe' and loaded.init_kwargs == pipe.init_kwargs
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    want_x, want_l = pipe(images, rng=BatchRNG([5, 6, 7, 8]))
    got_x, got_l = loaded(images, rng=BatchRNG([5, 6, 7, 8]))
    assert torch.equal(got_x, want_x) and torch.equal(got_l, want_l)
    assert not torch.equal(want_x, images)


def test_unpicklable_constructor_argument_fails_at_construction():
    with pytest.raises(Exception):
        loss_mod.EDMLoss(P_mean=threading.Lock())


def test_import_hook_sees_and_can_patch_records():
    seen = []

    def hook(meta):
        seen.append(meta.class_name)
        if meta.class_name == 'VELoss':
            meta.state.sigma_max = 7.0
        return meta

    persistence.import_hook(hook)
    try:
        loaded = pickle.loads(pickle.dumps(loss_mod.VELoss(sigma_max=100)))
    finally:
        persistence._import_hooks.remove(hook)
    assert seen == ['VELoss'] and loaded.sigma_max == 7.0


# ----------------------------------------------------------------------------------------------
# Loading in other processes, without (or with changed) source files.

def _snapshot(path):
    """Writes a snapshot (network, loss, inputs, expected outputs) and returns it."""
    torch.manual_seed(0)
    net = make_tiny_net('ncsnpp', resolution=16, channels=3, use_coords=True, label_dim=4).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    x, sigma, labels, coords = _net_inputs(seed=3)
    loss_fn = loss_mod.EDMLoss(P_mean=-1.0)
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = net(x, sigma, labels, coords=coords)
        loss = loss_fn(net, images, labels, patch_size=8, rng=BatchRNG([7, 8]))
    snap = dict(net=net, loss_fn=loss_fn, x=x, sigma=sigma, labels=labels, coords=coords, images=images, out=out, loss=loss)
    with open(path, 'wb') as f:
        pickle.dump(snap, f)
    return snap


CHECK_SCRIPT = textwrap.dedent('''
    import pickle, sys
    import torch
    from torch_utils.misc import BatchRNG
    expect_networks = sys.argv[2] == 'with-networks'
    try:
        import training.networks
        has_networks = True
    except ImportError:
        has_networks = False
    assert has_networks == expect_networks, ('training.networks importable:', has_networks)
    with open(sys.argv[1], 'rb') as f:
        snap = pickle.load(f)
    net = snap['net']
    assert type(net).__module__.startswith('_imported_module_'), type(net).__module__
    with torch.no_grad():
        out = net(snap['x'], snap['sigma'], snap['labels'], coords=snap['coords'])
        loss = snap['loss_fn'](net, snap['images'], snap['labels'], patch_size=8, rng=BatchRNG([7, 8]))
    assert torch.equal(out, snap['out']), (out - snap['out']).abs().max()
    assert torch.equal(loss, snap['loss']), (loss - snap['loss']).abs().max()
    if expect_networks:
        # The changed code really is different: the same weights give a different output.
        fresh = training.networks.EDMPrecond(*net.init_args, **net.init_kwargs).eval()
        fresh.load_state_dict(net.state_dict())
        with torch.no_grad():
            changed = fresh(snap['x'], snap['sigma'], snap['labels'], coords=snap['coords'])
        assert not torch.allclose(changed, snap['out']), 'the edit did not change the current code'
    print('OK')
''')


def _run_check(tree, snapshot_path, mode):
    script = os.path.join(tree, 'check_snapshot.py')
    with open(script, 'w') as f:
        f.write(CHECK_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env['OMP_NUM_THREADS'] = '1'
    result = subprocess.run([sys.executable, script, str(snapshot_path), mode], cwd=tree, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith('OK'), result.stdout + result.stderr


def _copy_package(dst_root, name, files=None):
    src = os.path.join(REPO_ROOT, name)
    dst = os.path.join(dst_root, name)
    if files is None:
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns('__pycache__'))
    else:
        os.makedirs(dst)
        for file in files:
            shutil.copy(os.path.join(src, file), os.path.join(dst, file))


def test_snapshot_loads_without_networks_source(tmp_path):
    """What a snapshot needs besides itself: torch_utils, dnnlib, training/patch.py and
    training/schedules.py (the pickled network and loss modules import them), not networks.py or
    loss.py."""
    snapshot = tmp_path / 'snapshot.pkl'
    _snapshot(snapshot)
    tree = tmp_path / 'tree'
    tree.mkdir()
    _copy_package(str(tree), 'torch_utils')
    _copy_package(str(tree), 'dnnlib')
    _copy_package(str(tree), 'training', files=['__init__.py', 'patch.py', 'schedules.py'])
    assert not (tree / 'training' / 'networks.py').exists() and not (tree / 'training' / 'loss.py').exists()
    _run_check(str(tree), snapshot, 'without-networks')


def test_snapshot_written_before_a_code_change_runs_the_old_code(tmp_path):
    snapshot = tmp_path / 'snapshot.pkl'
    _snapshot(snapshot)
    tree = tmp_path / 'repo'
    tree.mkdir()
    for name in ('torch_utils', 'dnnlib', 'training'):
        _copy_package(str(tree), name)
    path = tree / 'training' / 'networks.py'
    # A behaviour change, appended so that it does not depend on the file's current text.
    path.write_text(path.read_text() + textwrap.dedent('''

        _previous_coefficients = EDMPrecond.coefficients


        def _changed_coefficients(self, sigma):
            c_skip, c_out, c_in, c_noise = _previous_coefficients(self, sigma)
            return c_skip, c_out, c_in, c_noise * 2 + 1


        EDMPrecond.coefficients = _changed_coefficients
    '''))
    _run_check(str(tree), snapshot, 'with-networks')

# ----------------------------------------------------------------------------------------------
# The restricted unpickler: records instead of code.


def test_restricted_loads_reads_networks_as_records_without_running_their_source():
    net = make_tiny_net('ddpmpp', resolution=8, channels=1, use_coords=True)
    executed = set(persistence._modules_by_src)
    data = persistence.restricted_loads(pickle.dumps(dict(ema=net, kwargs=dict(a=[1, 2.5, 'x'], b=torch.float16))))
    assert set(persistence._modules_by_src) == executed
    record = data['ema']
    assert isinstance(record, persistence.PersistentRecord) and record.class_name == 'EDMPrecond'
    assert record.init_kwargs == net.init_kwargs and data['kwargs'] == dict(a=[1, 2.5, 'x'], b=torch.float16)
    assert isinstance(record.state['_modules']['model'], persistence.PersistentRecord)
    from training import checkpoints
    tensors = checkpoints.record_tensors(record)
    want = net.state_dict()
    assert tensors.keys() == want.keys() and all(torch.equal(tensors[k], want[k]) for k in want)


class _Payload:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize('payload,what', [
    (_Payload(os.system, 'true'), 'posix.system'),
    (_Payload(eval, '1'), 'builtins.eval'),
    (_Payload(getattr, 'text', 'upper'), 'builtins.getattr'),
    (_Payload(torch.load, 'x'), 'torch.serialization.load'),
    (_Payload(pickle.loads, b''), '_pickle.loads'),
    (_Payload(threading.Thread), 'threading.Thread'),
])
def test_restricted_loads_refuses_every_other_global(payload, what):
    with pytest.raises(persistence.RefusedPickle) as info:
        persistence.restricted_loads(pickle.dumps(dict(ema=payload)))
    assert what in info.value.what


def test_restricted_loads_sets_state_only_on_objects_it_made():
    # A pickle that sets attributes on an allowed function (as a BUILD opcode can) is refused.
    def text(value):
        return b'\x8c' + bytes([len(value)]) + value.encode()
    data = (b'\x80\x04' + text('collections') + text('OrderedDict') + b'\x93'  # the OrderedDict class itself
            + b'N}' + text('__init__') + b'Ns\x86b.')  # BUILD with (None, {'__init__': None}): setattr on the class
    with pytest.raises(persistence.RefusedPickle, match='type'):
        persistence.restricted_loads(data)
    with pytest.raises(persistence.RefusedPickle, match='persistent id'):
        persistence.restricted_loads(b'\x80\x04\x8c\x01x\x94Q.')
