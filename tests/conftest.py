"""Shared fixtures: the repository root on sys.path, deterministic seeds, and tiny networks.

Everything here runs on the CPU with networks small enough that a forward pass at 64x64 takes
milliseconds, so the suite stays fast on two busy cores."""

import os
import random
import sys

import numpy as np
import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

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
