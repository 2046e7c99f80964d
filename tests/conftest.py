"""Shared fixtures: the repository root on sys.path, deterministic seeds, and tiny networks.

Everything here runs on the CPU with networks small enough that a forward pass at 64x64 takes
milliseconds, so the suite stays fast on two busy cores."""

import os
import random
import sys
import time

import numpy as np
import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import dnnlib  # noqa: E402
from training import networks, patch  # noqa: E402

# The tests run on shared, busy machines: one intra-op thread avoids oversubscription, which
# otherwise makes small convolutions tens of times slower. PD_TEST_THREADS overrides it.
torch.set_num_threads(int(os.environ.get('PD_TEST_THREADS', '1')))

# Tiny versions of the three architectures: same code paths as the real ones (attention,
# resampling filters, embeddings, encoder/decoder types), a handful of channels.
TINY_ARCHS = {
    'ddpmpp': dict(model_type='SongUNet', embedding_type='positional', encoder_type='standard',
                   decoder_type='standard', channel_mult_noise=1, resample_filter=[1, 1],
                   model_channels=16, channel_mult=[1, 2], num_blocks=1),
    'ncsnpp': dict(model_type='SongUNet', embedding_type='fourier', encoder_type='residual',
                   decoder_type='standard', channel_mult_noise=2, resample_filter=[1, 3, 3, 1],
                   model_channels=16, channel_mult=[1, 2], num_blocks=1),
    # 32 channels at the top level, 64 below: the ADM blocks then have one 64-channel head.
    'adm': dict(model_type='DhariwalUNet', model_channels=32, channel_mult=[1, 2], num_blocks=1),
}

PRECONDS = {'edm': networks.EDMPrecond, 'vp': networks.VPPrecond, 've': networks.VEPrecond}


def make_tiny_net(arch='ddpmpp', precond='edm', resolution=16, channels=3, use_coords=False, pos_embed=0,
                  label_dim=0, augment_dim=0, dropout=0.0, **overrides):
    """A tiny preconditioned network in eval-ready state (dropout 0 by default).

    Attention sits at the lowest resolution the network has, so that it is exercised without
    making 64x64 inputs slow."""
    kwargs = dict(TINY_ARCHS[arch])
    kwargs.update(overrides)
    kwargs.setdefault('attn_resolutions', [max(patch.image_hw(resolution)) >> (len(kwargs['channel_mult']) - 1)])
    return PRECONDS[precond](img_resolution=resolution, img_channels=channels, label_dim=label_dim,
                             augment_dim=augment_dim, use_coords=use_coords, pos_embed=pos_embed,
                             dropout=dropout, **kwargs)


def sampling_net(img_channels=3, label_dim=0, use_coords=True, seed=0):
    """A 16x16 DDPM++-style net. The layers that start near zero (Song et al.'s 1e-5 init of the
    last conv of each block and of the output) get ordinary weights, so labels and coordinates
    visibly change the output."""
    torch.manual_seed(seed)
    net = networks.EDMPrecond(img_resolution=16, img_channels=img_channels, label_dim=label_dim, use_coords=use_coords,
                     model_type='SongUNet', model_channels=16, channel_mult=[1, 2], num_blocks=1,
                     attn_resolutions=[8], dropout=0)
    with torch.no_grad():
        for param in net.parameters():
            if param.dim() > 1 and param.abs().max() < 1e-3:
                param.mul_(1e5)
    return net.eval()


@pytest.fixture
def tiny_net():
    """Factory fixture: `tiny_net(arch='ddpmpp'|'ncsnpp'|'adm', precond='edm'|'vp'|'ve', ...)`."""
    torch.manual_seed(0)
    return make_tiny_net


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


def load_bench(name):
    """The module of `bench/<name>.py` (bench scripts are not a package)."""
    import importlib.util
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(f'bench_{name}', os.path.join(root, 'bench', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DEAD_PID = 2**22 + 12345  # above the largest pid Linux allows: no such process


def plant_temps(folder, name):
    """Puts into `folder` (made if missing) temporary files of the final name `name`, all unchanged
    for twice STALE_TEMP_SECONDS: two of `dnnlib.util.temp_path_for`'s naming whose writer is gone
    (one a half-written folder, one without the host part), one whose writer runs, one of another
    machine, and files of similar names that are not ours. Returns (names a cleaning removes,
    names it keeps)."""
    os.makedirs(folder, exist_ok=True)
    host = dnnlib.util.HOST_TAG
    other_host = 'ffffffff' if host != 'ffffffff' else '00000000'
    gone = [f'.{name}.{DEAD_PID}-{host}.abcd1234.tmp', f'.{name}.{DEAD_PID}.0123abcd.tmp']
    kept = [f'.{name}.{os.getpid()}-{host}.12349012.tmp', f'.{name}.{DEAD_PID}-{other_host}.ef015678.tmp',
            f'{name}.{DEAD_PID}.abcd1234.tmp', f'.{name}.{DEAD_PID}.tmp', f'.{name}.{DEAD_PID}.abcd1234.tmp.bak',
            f'.{name}.{DEAD_PID}.ABCD1234.tmp', f'.{name}.x{DEAD_PID}.abcd1234.tmp']
    old = time.time() - 2 * dnnlib.util.STALE_TEMP_SECONDS
    for entry in gone[1:] + kept:
        path = os.path.join(folder, entry)
        with open(path, 'wb') as f:
            f.write(b'half a file')
        os.utime(path, (old, old))
    half = os.path.join(folder, gone[0])
    os.makedirs(os.path.join(half, '00000'))
    for path in (os.path.join(half, '00000', 'img00000000.png'), os.path.join(half, '00000'), half):
        if not os.path.exists(path):
            open(path, 'wb').close()
        os.utime(path, (old, old))
    return gone, kept


def assert_cleaned(folder, gone, kept):
    """Asserts that of `plant_temps`'s files in `folder` those in `gone` were removed and those in
    `kept` are there."""
    names = set(os.listdir(folder))
    assert not names & set(gone), sorted(names & set(gone))
    assert set(kept) <= names, sorted(set(kept) - names)
