"""Network files from elsewhere (training/checkpoints.py, generate.py, train.py --transfer,
convert_network.py).

The foreign pickles are written by this test in EDM's persistence format: a module made of
`training/networks.py` plus two preconditioners written here with the published interfaces of
EDM (`net(x, sigma_tensor, class_labels)`) and of the original Patch Diffusion release
(`net(x, sigma, x_pos=..., class_labels=...)`, img_channels counting the coordinate channels).
"""

import json
import os
import pickle
import shlex
import textwrap

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import convert_network
import dnnlib
import generate
import train
from dnnlib.util import UserError
from test_latents import vae_dir  # noqa: F401 (a fixture)
from test_training import TINY, make_zip
from torch_utils import persistence
from training import checkpoints, networks, patch

FOREIGN_SRC = textwrap.dedent('''

    # --- Written for the tests: the interfaces of EDM's and the original release's preconditioners.

    def _edm_coefficients(sigma, sigma_data):
        c_skip = sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2)
        c_out = sigma * sigma_data / (sigma ** 2 + sigma_data ** 2).sqrt()
        c_in = 1 / (sigma_data ** 2 + sigma ** 2).sqrt()
        return c_skip, c_out, c_in, sigma.log() / 4


    def _labels(label_dim, class_labels, x):
        if label_dim == 0:
            return None
        if class_labels is None:
            return torch.zeros([x.shape[0], label_dim], device=x.device)
        return class_labels.to(torch.float32).reshape(-1, label_dim)


    @persistence.persistent_class
    class EDMPrecond(torch.nn.Module):
        def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_min=0,
                     sigma_max=float('inf'), sigma_data=0.5, model_type='SongUNet', **model_kwargs):
            super().__init__()
            self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
            self.use_fp16, self.sigma_min, self.sigma_max, self.sigma_data = use_fp16, sigma_min, sigma_max, sigma_data
            self.model = ARCHITECTURES[model_type](img_resolution=img_resolution, in_channels=img_channels,
                                                   out_channels=img_channels, label_dim=label_dim, **model_kwargs)

        def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
            x = x.to(torch.float32)
            sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
            c_skip, c_out, c_in, c_noise = _edm_coefficients(sigma, self.sigma_data)
            F_x = self.model(c_in * x, c_noise.flatten(), class_labels=_labels(self.label_dim, class_labels, x), **model_kwargs)
            return c_skip * x + c_out * F_x.to(torch.float32)

        def round_sigma(self, sigma):
            return torch.as_tensor(sigma)


    @persistence.persistent_class
    class VPPrecond(torch.nn.Module):
        def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, beta_d=19.9, beta_min=0.1,
                     M=1000, epsilon_t=1e-5, model_type='SongUNet', **model_kwargs):
            super().__init__()
            self.img_resolution, self.img_channels, self.label_dim, self.use_fp16 = img_resolution, img_channels, label_dim, use_fp16
            self.beta_d, self.beta_min, self.M, self.epsilon_t = beta_d, beta_min, M, epsilon_t
            self.sigma_min, self.sigma_max = float(self.sigma(epsilon_t)), float(self.sigma(1))
            self.model = ARCHITECTURES[model_type](img_resolution=img_resolution, in_channels=img_channels,
                                                   out_channels=img_channels, label_dim=label_dim, **model_kwargs)

        def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
            x = x.to(torch.float32)
            sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
            c_in = 1 / (sigma ** 2 + 1).sqrt()
            c_noise = (self.M - 1) * self.sigma_inv(sigma)
            F_x = self.model(c_in * x, c_noise.flatten(), class_labels=_labels(self.label_dim, class_labels, x), **model_kwargs)
            return x - sigma * F_x.to(torch.float32)

        def sigma(self, t):
            t = torch.as_tensor(t)
            return ((0.5 * self.beta_d * t ** 2 + self.beta_min * t).exp() - 1).sqrt()

        def sigma_inv(self, sigma):
            sigma = torch.as_tensor(sigma)
            return ((self.beta_min ** 2 + 2 * self.beta_d * (1 + sigma ** 2).log()).sqrt() - self.beta_min) / self.beta_d

        def round_sigma(self, sigma):
            return torch.as_tensor(sigma)


    @persistence.persistent_class
    class Patch_EDMPrecond(torch.nn.Module):
        def __init__(self, img_resolution, img_channels, out_channels, label_dim=0, use_fp16=False, sigma_min=0,
                     sigma_max=float('inf'), sigma_data=0.5, model_type='SongUNet', **model_kwargs):
            super().__init__()
            self.img_resolution, self.img_channels, self.out_channels = img_resolution, img_channels, out_channels
            self.label_dim, self.use_fp16 = label_dim, use_fp16
            self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data
            self.model = ARCHITECTURES[model_type](img_resolution=img_resolution, in_channels=img_channels,
                                                   out_channels=out_channels, label_dim=label_dim, **model_kwargs)

        def forward(self, x, sigma, x_pos=None, class_labels=None, force_fp32=False, **model_kwargs):
            x = x.to(torch.float32)
            sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
            c_skip, c_out, c_in, c_noise = _edm_coefficients(sigma, self.sigma_data)
            x_in = torch.cat([c_in * x, x_pos.to(torch.float32)], dim=1)
            F_x = self.model(x_in, c_noise.flatten(), class_labels=_labels(self.label_dim, class_labels, x), **model_kwargs)
            return c_skip * x + c_out * F_x.to(torch.float32)

        def round_sigma(self, sigma):
            return torch.as_tensor(sigma)
''')

UNET = dict(model_type='SongUNet', embedding_type='positional', encoder_type='standard', decoder_type='standard',
            channel_mult_noise=1, resample_filter=[1, 1], model_channels=16, channel_mult=[1, 2], num_blocks=1,
            dropout=0)


def foreign_module():
    """The module a foreign pickle carries (loaded once per process, as persistence does)."""
    return persistence._src_to_module(networks.EDMPrecond._orig_module_src + FOREIGN_SRC)


def _wake_up(net, seed=0):
    """Ordinary weights for the layers that start near zero, so every input changes the output."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in net.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return net.eval().requires_grad_(False)


def foreign_net(kind, resolution=16, channels=3, label_dim=0, embed_fq=0, **unet):
    """A tiny network of EDM ('edm', 'vp') or of the original release ('patch')."""
    torch.manual_seed(0)
    module = foreign_module()
    kwargs = dict(UNET, attn_resolutions=[resolution // 2])
    kwargs.update(unet)
    if kind == 'vp':
        net = module.VPPrecond(img_resolution=resolution, img_channels=channels, label_dim=label_dim, **kwargs)
    elif kind == 'edm':
        net = module.EDMPrecond(img_resolution=resolution, img_channels=channels, label_dim=label_dim, **kwargs)
    else:
        coords = 4 * embed_fq if embed_fq else 2
        net = module.Patch_EDMPrecond(img_resolution=resolution, img_channels=channels + coords, out_channels=channels,
                                      label_dim=label_dim, **kwargs)
    return _wake_up(net)


def write_pickle(path, net):
    with open(path, 'wb') as f:
        pickle.dump(dict(ema=net, loss_fn=None, augment_pipe=None, dataset_kwargs={}), f)
    return str(path)


def run_generate(args):
    return CliRunner().invoke(generate.main, [str(a) for a in args] + ['--device=cpu'], catch_exceptions=False)


def read_png(path):
    with PIL.Image.open(path) as img:
        return img.mode, np.asarray(img).astype(np.int32)


@pytest.fixture(scope='module')
def pickles(tmp_path_factory):
    root = tmp_path_factory.mktemp('foreign')
    return dict(
        edm=write_pickle(root / 'edm-uncond.pkl', foreign_net('edm')),
        edm_cond=write_pickle(root / 'edm-cond.pkl', foreign_net('edm', label_dim=10)),
        vp_cond=write_pickle(root / 'vp-cond.pkl', foreign_net('vp', label_dim=10)),
        patch=write_pickle(root / 'patch.pkl', foreign_net('patch')),
        patch_fq=write_pickle(root / 'patch-fq.pkl', foreign_net('patch', embed_fq=2)),
        latent=write_pickle(root / 'patch-latent.pkl', foreign_net('patch', resolution=32, channels=4)),
    )

# ----------------------------------------------------------------------------------------------
# The adapter.


def test_foreign_networks_need_the_adapter_and_compute_the_same_through_it(pickles):
    x = torch.randn(2, 3, 16, 16)
    with open(pickles['edm'], 'rb') as f:
        raw = pickle.load(f)['ema']
    with pytest.raises(AttributeError):
        raw(x, 1.5)  # what the sampler passes: EDM's forward needs a tensor
    net, _ = checkpoints.load_network(pickles['edm'], trust=True)
    assert isinstance(net, checkpoints.ForeignNetwork) and not net.use_coords
    assert (net.img_resolution, net.img_channels, net.label_dim, net.down_factor) == (16, 3, 0, 2)
    assert torch.equal(net(x, 1.5), raw(x, torch.full([2], 1.5)))

    patch_net, _ = checkpoints.load_network(pickles['patch_fq'], trust=True)
    assert patch_net.use_coords and patch_net.img_channels == 3 and patch_net.pos_embed == 2
    coords = patch.coord_grid(32, 16, 16, y_start=8, x_start=4).expand(2, -1, -1, -1)
    want = patch_net.net(x, torch.full([2], 0.7), x_pos=patch.coord_features(coords, 2))
    assert torch.equal(patch_net(x, 0.7, coords=coords), want)
    assert not torch.equal(patch_net(x, 0.7), want)  # default: the full-image grid


@pytest.mark.parametrize('kind', ['edm', 'vp_cond', 'patch', 'patch_fq', 'latent'])
def test_foreign_pickles_are_rebuilt_onto_our_classes_and_compute_what_they_computed(pickles, kind):
    """Without --trust-pickle the pickle's module source never runs: the network is one of
    training/networks.py with the pickled weights, computing what the pickled code computes."""
    executed = set(persistence._modules_by_src)
    ours, _ = checkpoints.load_network(pickles[kind])
    assert set(persistence._modules_by_src) == executed
    assert type(ours).__module__ == 'training.networks' and checkpoints.is_foreign(ours)
    trusted, _ = checkpoints.load_network(pickles[kind], trust=True)
    side, channels = ours.img_resolution, ours.img_channels
    assert (channels, ours.label_dim, ours.use_coords, ours.pos_embed) == (trusted.img_channels, trusted.label_dim, trusted.use_coords, trusted.pos_embed)
    x, sigma = torch.randn(2, channels, side, side), torch.tensor([0.2, 20.0])
    labels = torch.eye(ours.label_dim)[[1, 4]] if ours.label_dim else None
    coords = patch.coord_grid(2 * side, side, side, y_start=3, x_start=side).expand(2, -1, -1, -1)
    assert torch.equal(ours(x, sigma, labels, coords=coords), trusted(x, sigma, labels, coords=coords))
    if ours.use_coords:  # --mask_pos: zeros for the coordinate channels, both ways
        assert checkpoints.mask_coordinates(ours) and checkpoints.mask_coordinates(trusted)
        masked = ours(x, sigma, labels, coords=coords)
        assert torch.equal(masked, trusted(x, sigma, labels, coords=coords))
        assert torch.equal(masked, ours(x, sigma, labels, coords=torch.rand_like(coords)))


@pytest.mark.parametrize('kind,extra', [('edm_cond', ['--class=3']), ('patch', ['--image_size=24', '--resolution=32'])])
def test_restricted_and_trusted_loading_sample_identically(pickles, tmp_path, kind, extra):
    for name, trust in (('restricted', []), ('trusted', ['--trust-pickle'])):
        res = run_generate(['--network', pickles[kind], '--outdir', tmp_path / name, '--seeds', '4', '--steps', 2, *extra, *trust])
        assert res.exit_code == 0, res.output
    assert np.array_equal(read_png(tmp_path / 'restricted' / '000004.png')[1], read_png(tmp_path / 'trusted' / '000004.png')[1])


def test_our_networks_are_not_wrapped(tmp_path):
    net = networks.EDMPrecond(img_resolution=16, img_channels=3, use_coords=True, **UNET)
    loaded, decoder = checkpoints.load_network(write_pickle(tmp_path / 'ours.pkl', net))
    assert type(loaded).__name__ == 'EDMPrecond' and decoder is None

# ----------------------------------------------------------------------------------------------
# The README commands of EDM and of the original release, scaled down.

EDM_COMMANDS = [
    'python generate.py --outdir=out --seeds=0-63 --batch=64 --network=NET',
    'torchrun --standalone --nproc_per_node=2 generate.py --outdir=out --seeds=0-999 --batch=64 --network=NET',
    'torchrun --standalone --nproc_per_node=8 generate.py --outdir=fid-tmp --seeds=0-49999 --subdirs --network=NET',
    'torchrun --standalone --nproc_per_node=8 generate.py --outdir=fid-tmp --seeds=0-49999 --subdirs '
    '--steps=256 --S_churn=40 --S_min=0.05 --S_max=50 --S_noise=1.003 --network=NET',
    'python generate.py --outdir=out --seeds=0-63 --batch=64 --class=1 --network=NET',
    'python generate.py --outdir=out --seeds=0-63 --batch=64 --network=NET --solver=euler --disc=vp --schedule=vp --scaling=vp',
    'python generate.py --outdir=out --seeds=0-63 --batch=64 --network=NET --solver=euler --disc=ve --schedule=ve --scaling=none',
    'python generate.py --outdir=out --seeds=0-63 --batch=64 --network=NET --solver=euler --disc=iddpm --schedule=linear --scaling=none',
    'python generate.py --outdir=out --seeds=0-63 --batch=64 --network=NET --solver=heun --disc=edm --schedule=linear --scaling=none',
]
ORIGINAL_COMMANDS = [
    'python generate.py --steps=256 --S_churn=40 --S_min=0.05 --S_max=50 --S_noise=1.003 --resolution 32 '
    '--on_latents=1 --batch 64 --outdir=fid-tmp --seeds=0-49999 --subdirs --network=NET',
    'torchrun --standalone --nproc_per_node=8 generate.py --outdir=fid-tmp --seeds=0-49999 --subdirs --network=NET',
]


def scaled_down(command, network, outdir):
    """The command's generate.py arguments with 2 seeds, at most 2 steps, our network and folder
    (torchrun's own arguments dropped: one process runs the same code)."""
    args = shlex.split(command)
    args = args[args.index('generate.py') + 1:]
    out = []
    for arg in args:
        if arg.startswith('--seeds='):
            arg = '--seeds=3,1001'
        elif arg.startswith('--steps='):
            arg = '--steps=2'
        elif arg == '--network=NET':
            arg = f'--network={network}'
        elif arg.startswith('--outdir='):
            arg = f'--outdir={outdir}'
        out.append(arg)
    return out if any(a.startswith('--steps') for a in out) else out + ['--steps=2']


@pytest.mark.parametrize('index', range(len(EDM_COMMANDS)))
@pytest.mark.parametrize('kind', ['edm_cond', 'vp_cond'])
def test_edm_readme_commands_run_on_an_edm_pickle(pickles, tmp_path, index, kind):
    network = pickles[kind]
    res = run_generate(scaled_down(EDM_COMMANDS[index], network, tmp_path / 'out'))
    assert res.exit_code == 0, res.output
    names = sorted(os.path.relpath(os.path.join(d, n), tmp_path / 'out') for d, _, ns in os.walk(tmp_path / 'out') for n in ns)
    want = ['000000/000003.png', '001000/001001.png'] if '--subdirs' in EDM_COMMANDS[index] else ['000003.png', '001001.png']
    assert names == want


@pytest.mark.parametrize('index', range(len(ORIGINAL_COMMANDS)))
def test_original_release_readme_commands_run_on_its_pickles(pickles, vae_dir, tmp_path, index):
    latent = '--on_latents=1' in ORIGINAL_COMMANDS[index]
    args = scaled_down(ORIGINAL_COMMANDS[index], pickles['latent' if latent else 'patch'], tmp_path / 'out')
    res = run_generate(args + ([f'--vae={vae_dir}'] if latent else []))
    assert res.exit_code == 0, res.output
    mode, pixels = read_png(tmp_path / 'out' / '000000' / '000003.png')
    assert mode == 'RGB' and pixels.shape == ((256, 256, 3) if latent else (16, 16, 3))


def test_edm_class_conditional_images_depend_on_seed_and_class_only(pickles, tmp_path):
    net = pickles['edm_cond']
    for name, batch in (('a', 1), ('b', 3)):
        assert run_generate(['--network', net, '--outdir', tmp_path / name, '--seeds', '0-2', '--steps', 2,
                             '--batch', batch]).exit_code == 0
    for seed in range(3):
        a, b = (read_png(tmp_path / name / f'{seed:06d}.png')[1] for name in 'ab')
        assert np.abs(a - b).max() <= 1
    assert run_generate(['--network', net, '--outdir', tmp_path / 'c', '--seeds', '0', '--steps', 2, '--class', 7]).exit_code == 0
    assert run_generate(['--network', net, '--outdir', tmp_path / 'd', '--seeds', '0', '--steps', 2, '--class', 8]).exit_code == 0
    assert not np.array_equal(read_png(tmp_path / 'c' / '000000.png')[1], read_png(tmp_path / 'd' / '000000.png')[1])


def test_embed_fq_and_mask_pos(pickles, tmp_path):
    def sample(name, net, *extra):
        res = run_generate(['--network', pickles[net], '--outdir', tmp_path / name, '--seeds', '5', '--steps', 2, *extra])
        assert res.exit_code == 0, res.output
        return read_png(tmp_path / name / '000005.png')[1]
    assert np.array_equal(sample('fq', 'patch_fq', '--embed_fq=2'), sample('fq-inferred', 'patch_fq'))
    assert not np.array_equal(sample('masked', 'patch', '--mask_pos=1'), sample('unmasked', 'patch'))


@pytest.mark.parametrize('net,args,option', [
    ('patch_fq', ['--embed_fq=3'], '--pos-embed'),
    ('edm', ['--embed_fq=0'], '--pos-embed'),
    ('edm', ['--mask_pos=1'], '--mask-pos'),
    ('latent', [], '--latents'),
    ('edm', ['--on_latents=1'], '--latents'),
    ('edm', ['--vae=stabilityai/sd-vae-ft-ema'], '--vae'),
])
def test_bad_options_for_foreign_networks(pickles, tmp_path, net, args, option):
    res = CliRunner().invoke(generate.main, ['--network', pickles[net], '--outdir', str(tmp_path / 'out'), '--device=cpu'] + args)
    errors = [line for line in res.output.splitlines() if line.startswith('Error:')]
    assert res.exit_code == 1 and len(errors) == 1 and errors[0].startswith(f'Error: {option}'), res.output
    assert not os.path.exists(tmp_path / 'out')

# ----------------------------------------------------------------------------------------------
# train.py --transfer and --precond.


@pytest.mark.parametrize('encoder_type', ['standard', 'residual'])
def test_transfer_widens_the_input_convolutions_with_zeros_and_computes_the_same(encoder_type):
    source = foreign_net('edm', encoder_type=encoder_type, label_dim=3)
    kwargs = dict(UNET, encoder_type=encoder_type, attn_resolutions=[8])
    net = networks.EDMPrecond(img_resolution=16, img_channels=3, label_dim=3, use_coords=True, **kwargs).eval()
    checkpoints.transfer_weights(checkpoints.for_sampling(source), net)
    x, labels = torch.randn(4, 3, 16, 16), torch.eye(3)[[0, 1, 2, 0]]
    sigma = torch.tensor([0.05, 0.5, 5.0, 50.0])
    coords = patch.coord_grid(16, 16).expand(4, -1, -1, -1)
    want = source(x, sigma, labels)
    assert torch.equal(net(x, sigma, labels, coords=coords), want)
    with pytest.raises(UserError, match='^resume_pkl: '):
        checkpoints.transfer_weights(source, networks.EDMPrecond(img_resolution=16, img_channels=3, label_dim=3,
                                                                 **dict(kwargs, model_channels=8)))


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    return make_zip(tmp_path_factory.mktemp('data') / 'digits.zip', count=16)


def test_train_transfer_from_an_edm_pickle_keeps_the_pretrained_ema(digits, tmp_path):
    source = foreign_net('edm', channels=1, model_channels=8, channel_mult=[1, 2], num_blocks=4, attn_resolutions=[16])
    network = write_pickle(tmp_path / 'edm.pkl', source)
    res = CliRunner().invoke(train.main, ['--outdir', str(tmp_path / 'runs'), '--data', digits, '--batch=8',
                                          '--duration=0.00001', '--snap=1', '--dump=1000', '--seed=1', '--transfer', network,
                                          '--dropout=0', '--augment=0'] + TINY + ['--device=cpu'], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    run_dir = os.path.join(tmp_path / 'runs', os.listdir(tmp_path / 'runs')[0])
    with open(os.path.join(run_dir, 'training_options.json')) as f:
        assert json.load(f)['ema_rampup_ratio'] is None
    snapshot = sorted(n for n in os.listdir(run_dir) if n.endswith('.safetensors'))[-1]
    ema, _ = checkpoints.load_network(os.path.join(run_dir, snapshot))
    assert ema.use_coords
    x, sigma = torch.randn(2, 1, 16, 16), torch.tensor([0.3, 3.0])
    with open(os.path.join(run_dir, snapshot.replace('.safetensors', '.pkl')), 'rb') as f:
        assert torch.equal(pickle.load(f)['ema'](x, sigma), ema(x, sigma))  # the two files hold the same network
    # One step with a 500-kimg half-life moves the EMA by about 1e-5 of the step (the ramp-up would replace it).
    torch.testing.assert_close(ema(x, sigma), source(x, sigma), rtol=0, atol=1e-4)


@pytest.mark.parametrize('args,patches', [([], True), (['--precond=pedm'], True), (['--precond=edm'], True),
                                          (['--precond=vp'], True), (['--precond=ve', '--patch=1'], True),
                                          (['--patch=0'], False), (['--precond=vp', '--patch=0'], False)])
def test_precond_and_patch_are_independent(digits, tmp_path, args, patches):
    """--patch alone decides patches (default on, as in the original release); --precond=pedm is
    edm with patches."""
    ctx = train.main.make_context('train.py', ['--outdir', str(tmp_path), '--data', digits] + args)
    c, _desc = train.build_config(dnnlib.EasyDict(ctx.params), 1)
    assert (c.patch_kwargs is not None) == patches
    assert c.network_kwargs.get('use_coords', False) == patches


def test_pedm_without_patches_is_an_error(digits, tmp_path):
    with pytest.raises(UserError, match='--patch=0'):
        train.main.make_context('train.py', ['--outdir', str(tmp_path), '--data', digits, '--precond=pedm', '--patch=0'])

# ----------------------------------------------------------------------------------------------
# safetensors: snapshots, conversion, loading without unpickling.


@pytest.mark.parametrize('kind', ['ours', 'edm', 'vp_cond', 'patch', 'patch_fq', 'latent'])
def test_convert_to_safetensors_and_load_without_unpickling(pickles, tmp_path, monkeypatch, kind, vae_dir):
    if kind == 'ours':
        net = _wake_up(networks.EDMPrecond(img_resolution=16, img_channels=3, use_coords=True, pos_embed=1, **UNET))
        path = write_pickle(tmp_path / 'ours.pkl', net)
    else:
        path = pickles[kind]
    dest = tmp_path / 'net.safetensors'
    res = CliRunner().invoke(convert_network.main, ['--network', path, '--dest', str(dest)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    pickled, _ = checkpoints.load_network(path)

    def no_unpickling(*_args, **_kwargs):
        raise AssertionError('unpickled')
    monkeypatch.setattr(pickle, 'load', no_unpickling)
    monkeypatch.setattr(pickle, 'loads', no_unpickling)
    loaded, decoder = checkpoints.load_network(str(dest))
    assert type(loaded).__module__ == 'training.networks' and decoder is None
    assert (loaded.img_channels, loaded.use_coords, loaded.pos_embed) == (pickled.img_channels, pickled.use_coords, pickled.pos_embed)
    side = pickled.img_resolution
    x, sigma = torch.randn(2, pickled.img_channels, side, side), torch.tensor([0.2, 20.0])
    coords = patch.coord_grid(2 * side, side, side, y_start=3, x_start=side).expand(2, -1, -1, -1)
    torch.testing.assert_close(loaded(x, sigma, coords=coords), pickled(x, sigma, coords=coords), rtol=0, atol=1e-5)


def test_pickle_and_safetensors_sample_alike_and_each_loads_itself(pickles, tmp_path):
    path = tmp_path / 'edm.pkl'
    path.write_bytes(open(pickles['edm'], 'rb').read())
    res = run_generate(['--network', path, '--outdir', tmp_path / 'a', '--seeds', '0', '--steps', 1])
    assert res.exit_code == 0 and 'runs code' not in res.output, res.output
    CliRunner().invoke(convert_network.main, ['--network', str(path)], catch_exceptions=False)
    res = run_generate(['--network', tmp_path / 'edm.safetensors', '--outdir', tmp_path / 'b', '--seeds', '0', '--steps', 1])
    assert res.exit_code == 0 and 'edm.safetensors' in res.output, res.output
    diff = np.abs(read_png(tmp_path / 'a' / '000000.png')[1] - read_png(tmp_path / 'b' / '000000.png')[1])
    assert diff.max() <= 1
    net = _wake_up(networks.EDMPrecond(img_resolution=16, img_channels=3, **UNET), seed=5)
    checkpoints.save_safetensors(str(tmp_path / 'edm.safetensors'), net)  # another network beside the pickle
    loaded, _ = checkpoints.load_network(str(path))
    assert not torch.equal(loaded.model.enc['16x16_conv'].weight, net.model.enc['16x16_conv'].weight)


def test_snapshot_pair_interrupted_between_its_two_writes_is_refused(tmp_path):
    """save_snapshot_pair writes one id into both files; a .safetensors left from an earlier save
    beside a newer .pkl is refused, and the .pkl itself loads the newer network."""
    old = _wake_up(networks.EDMPrecond(img_resolution=16, img_channels=3, **UNET), seed=1)
    new = _wake_up(networks.EDMPrecond(img_resolution=16, img_channels=3, **UNET), seed=2)
    path = str(tmp_path / 'network-snapshot-000010.pkl')
    checkpoints.save_snapshot_pair(path, dict(ema=old, loss_fn=None, augment_pipe=None, dataset_kwargs={}))
    loaded, _ = checkpoints.load_network(checkpoints.safetensors_path(path))
    assert torch.equal(loaded.model.enc['16x16_conv'].weight, old.model.enc['16x16_conv'].weight)
    stale = open(checkpoints.safetensors_path(path), 'rb').read()
    checkpoints.save_snapshot_pair(path, dict(ema=new, loss_fn=None, augment_pipe=None, dataset_kwargs={}))
    with open(checkpoints.safetensors_path(path), 'wb') as f:  # as a kill between the two writes leaves it
        f.write(stale)
    with pytest.raises(UserError, match='different saves.*load .*network-snapshot-000010.pkl'):
        checkpoints.load_network(checkpoints.safetensors_path(path))
    loaded, _ = checkpoints.load_network(path)
    assert torch.equal(loaded.model.enc['16x16_conv'].weight, new.model.enc['16x16_conv'].weight)


def test_latent_snapshot_keeps_its_decoder_in_safetensors(tmp_path, vae_dir):
    from training import encoders
    net = _wake_up(networks.EDMPrecond(img_resolution=8, img_channels=4, **dict(UNET, attn_resolutions=[4])))
    encoder = encoders.StabilityVAEEncoder(vae_name=vae_dir, latent_norm='channel', channel_mean=[0.1] * 4, channel_std=[2.0] * 4)
    checkpoints.save_safetensors(str(tmp_path / 'net.safetensors'), net, encoder)
    _, decoder = checkpoints.load_network(str(tmp_path / 'net.safetensors'))
    assert (decoder.vae_name, decoder.latent_norm, decoder.channel_mean, decoder.channel_std) == (vae_dir, 'channel', [0.1] * 4, [2.0] * 4)

# ----------------------------------------------------------------------------------------------
# Bad files: one line naming the option, for generate.py --network and train.py --transfer.


def _truncated(path, good):
    data = open(good, 'rb').read()
    path.write_bytes(data[:len(data) // 2])


BAD_FILES = {
    'missing': (None, 'no such file'),
    'truncated pickle': (lambda p, good: _truncated(p, good), 'ends early or is damaged'),
    'text file': (lambda p, good: p.write_text('version https://git-lfs.github.com/spec/v1\noid sha256:abc\n'), 'text file'),
    'pickle of a list': (lambda p, good: p.write_bytes(pickle.dumps([1, 2, 3])), 'pickle of a list'),
    'damaged safetensors': (lambda p, good: p.with_suffix('.safetensors').write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a'), 'safetensors'),
}


@pytest.mark.parametrize('case', list(BAD_FILES))
@pytest.mark.parametrize('script', ['generate', 'train'])
def test_bad_network_files_are_one_line_errors(pickles, digits, tmp_path, case, script):
    make, needle = BAD_FILES[case]
    path = tmp_path / 'net.pkl'
    if make is not None:
        make(path, pickles['edm'])
    if case == 'damaged safetensors':
        path = path.with_suffix('.safetensors')
    if script == 'generate':
        res = CliRunner().invoke(generate.main, ['--network', str(path), '--outdir', str(tmp_path / 'out'), '--device=cpu'])
        option = '--network'
    else:
        res = CliRunner().invoke(train.main, ['--outdir', str(tmp_path / 'runs'), '--data', digits, '--transfer', str(path), '-n'])
        option = '--transfer'
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1, res.output
    assert lines[0].startswith(f'Error: {option}') and needle in lines[0], lines[0]
    assert not os.path.exists(tmp_path / 'out') and not os.path.exists(tmp_path / 'runs')
