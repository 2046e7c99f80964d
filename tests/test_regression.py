"""The training loop's numbers do not change: 20 steps of six tiny runs (patches with labels and
two accumulation rounds, full images with augmentation, float arrays, VAE latents encoded on the
fly, precomputed latents, the bf16 body) give per-step losses and final weights equal, bit for
bit, to those recorded in `tests/data/regression.json` for this kind of machine.

Floating-point results depend on the CPU's instruction set (oneDNN picks AMX, AVX-512 or AVX2
kernels) and on the PyTorch version, so records are kept per machine signature. On a machine
without a record the losses are compared with a tolerance instead (the bf16 body only where
bfloat16 is native, since elsewhere it computes in fp32). `PD_RECORD_REGRESSION=1` writes this
machine's record; do that only with the code whose numbers are to be kept."""

import hashlib
import json
import os
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import dataset_tool
from test_latents import tiny_vae_config
from torch_utils import misc
from training import training_loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD = os.path.join(ROOT, 'tests', 'data', 'regression.json')
STEPS = 20

TINY_NET = dict(class_name='training.networks.EDMPrecond', model_type='SongUNet', embedding_type='positional',
                encoder_type='standard', decoder_type='standard', channel_mult_noise=1, resample_filter=[1, 1],
                model_channels=8, channel_mult=[1, 2], dropout=0.13, use_fp16=False, sigma_data=0.5)
AUGMENT = dict(class_name='training.augment.AugmentPipe', p=0.12, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1,
               translate_frac=1)
PATCHES = dict(patch_sizes=[4, 8], real_p=0.5, progressive=False, real_p_end=None, loss_norm='mean')

# data set, its options, network options, and the remaining training_loop options of each run.
CASES = {
    'patches': ('digits', dict(use_labels=True), dict(use_coords=True), dict(patch_kwargs=PATCHES, batch_gpu=2)),
    'full': ('digits', {}, dict(augment_dim=9), dict(augment_kwargs=AUGMENT)),
    'arrays': ('arrays', {}, dict(use_coords=True), dict(patch_kwargs=PATCHES)),
    'latents': ('emoji', {}, dict(use_coords=True), dict(patch_kwargs=PATCHES, encoder=dict(latent_norm='scale'))),
    'precomputed-latents': ('latents', dict(xflip=True), dict(dropout=0), dict(encoder=dict(latent_norm='channel'))),
    'bf16': ('digits', {}, dict(use_coords=True, use_bf16=True), dict(patch_kwargs=PATCHES)),
}


def machine_signature():
    """What decides the bits of a CPU run: PyTorch's version, the vector ISA PyTorch dispatches
    to, AMX, and native bfloat16."""
    flags = misc.cpu_info()[1]
    return (f'torch {torch.__version__.split("+")[0]}, {torch.backends.cpu.get_cpu_capability()}, '
            f'amx {"yes" if "amx_tile" in flags else "no"}, bf16 {"native" if misc.cpu_has_bf16() else "emulated"}')


def convert(*args):
    result = CliRunner().invoke(dataset_tool.cli, ['convert', *map(str, args)], catch_exceptions=False)
    assert result.exit_code == 0, result.output


@pytest.fixture(scope='module')
def data_sets(tmp_path_factory):
    """The data sets of the runs, made from the bundled digits and emoji by dataset_tool.py: 32
    grey 8x8 digits with labels, 32 two-channel float arrays, 16 64x64 emoji (8x8 latents), and
    their latents precomputed with mirrored copies; `vae` is a tiny random VAE."""
    from diffusers import AutoencoderKL
    root = tmp_path_factory.mktemp('regression')
    digits = np.load(os.path.join(ROOT, 'data', 'mnist-10k-28x28.npz'))
    small = digits['images'][:32, 2:26, 2:26].reshape(32, 8, 3, 8, 3).mean(axis=(2, 4)).round().astype(np.uint8)
    np.savez(root / 'digits.npz', images=small, labels=digits['labels'][:32])
    convert(f'--source={root / "digits.npz"}', f'--dest={root / "digits.zip"}')
    arrays = np.random.default_rng(7).uniform(-3, 3, size=(32, 2, 8, 8)).astype(np.float32)
    np.save(root / 'arrays.npy', arrays)
    convert(f'--source={root / "arrays.npy"}', f'--dest={root / "arrays.zip"}', '--range=-3,3')
    emoji = np.load(os.path.join(ROOT, 'data', 'noto-emoji-32x32.npz'))['images'][:16].repeat(2, axis=1).repeat(2, axis=2)
    np.savez(root / 'emoji.npz', images=emoji)
    convert(f'--source={root / "emoji.npz"}', f'--dest={root / "emoji.zip"}')
    torch.manual_seed(0)
    AutoencoderKL(**tiny_vae_config()).save_pretrained(root / 'vae')
    convert(f'--source={root / "emoji.npz"}', f'--dest={root / "latents.zip"}', '--encoder=vae', f'--vae={root / "vae"}',
            '--xflip', '--latent-dtype=float32')
    with zipfile.ZipFile(root / 'arrays.zip') as z:
        assert 'arrays' in json.loads(z.read('dataset.json'))
    return {name: str(root / f'{name}.zip') for name in ('digits', 'arrays', 'emoji', 'latents')} | {'vae': str(root / 'vae')}


def loop_kwargs(case, data_sets):
    """training_loop's keyword arguments for `case`, as train.py's build_config writes them."""
    data, dataset_options, network_options, options = CASES[case]
    options = dict(options)
    dataset_class = {'digits': 'ImageFolderDataset', 'emoji': 'ImageFolderDataset', 'arrays': 'ArrayFolderDataset',
                     'latents': 'ArrayFolderDataset'}[data]
    dataset_kwargs = dict(class_name=f'training.dataset.{dataset_class}', path=data_sets[data], use_labels=False,
                          xflip=False, cache=True) | dataset_options
    encoder = options.pop('encoder', None)
    encoder_kwargs = None
    if encoder is not None:
        encoder_kwargs = dict(class_name='training.encoders.StabilityVAEEncoder', vae_name=data_sets['vae'], **encoder)
    return dict(
        dataset_kwargs=dataset_kwargs, encoder_kwargs=encoder_kwargs,
        data_loader_kwargs=dict(pin_memory=True, num_workers=0, prefetch_factor=2, persistent_workers=False),
        network_kwargs=TINY_NET | network_options,
        loss_kwargs=dict(class_name='training.loss.EDMLoss', P_mean=-1.2, P_std=1.2, sigma_data=0.5),
        optimizer_kwargs=dict(class_name='torch.optim.Adam', lr=2e-3, betas=[0.9, 0.999], eps=1e-8),
        seed=3, batch_size=4, total_kimg=1000, ema_halflife_kimg=0.5, ema_rampup_ratio=0.05, lr_rampup_kimg=0.01,
        kimg_per_tick=1e-6, snapshot_ticks=None, state_dump_ticks=None, sample_grid=False) | options


def digest(module):
    """SHA-256 of a module's parameters and buffers, in order."""
    sha = hashlib.sha256()
    for tensor in list(module.parameters()) + list(module.buffers()):
        sha.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()


def train_steps(case, data_sets, run_dir):
    """Per-step losses (one step per tick in stats.jsonl), the patch side of each step ('' without
    patches; its loss equals the step's), and the digests of the network and its EMA after step 20."""
    os.makedirs(run_dir)
    final = {}

    def at_step(info):
        if info.step == STEPS:
            final.update(net=digest(info.net), ema=digest(info.ema))
        return info.step == STEPS

    training_loop.training_loop(**loop_kwargs(case, data_sets), run_dir=str(run_dir), step_callback=at_step)
    with open(os.path.join(run_dir, 'stats.jsonl')) as f:
        records = [json.loads(line) for line in f]
    assert [r['step'] for r in records] == list(range(1, STEPS + 1))
    assert all(list(r['loss_by_patch'].values()) in ([], [r['loss']]) for r in records)
    return dict(loss=[r['loss'] for r in records], patch=[','.join(r['loss_by_patch']) for r in records], **final)


def load_records():
    if not os.path.exists(RECORD):
        return {}
    with open(RECORD) as f:
        return json.load(f)


@pytest.mark.parametrize('case', list(CASES))
def test_twenty_steps_repeat_the_recorded_numbers(case, data_sets, tmp_path):
    result = train_steps(case, data_sets, tmp_path / 'run')
    records, signature = load_records(), machine_signature()
    if os.environ.get('PD_RECORD_REGRESSION') == '1':
        records.setdefault(signature, {})[case] = result
        with open(RECORD, 'w') as f:
            json.dump(records, f, indent=1, sort_keys=True)
            f.write('\n')
        return
    assert records, f'{RECORD} is missing; PD_RECORD_REGRESSION=1 writes it'
    if case in records.get(signature, {}):
        assert result == records[signature][case]
        return
    if case == 'bf16' and not misc.cpu_has_bf16():
        pytest.skip('bf16 is recorded where the CPU computes it natively; this one runs the body in fp32')
    natives = [r for s, r in records.items() if case in r and (case != 'bf16' or s.endswith('bf16 native'))]
    assert natives, f'{RECORD} holds no {case} run'
    recorded = natives[0][case]
    assert result['patch'] == recorded['patch']
    tolerance = 2e-2 if case == 'bf16' else 1e-4
    assert result['loss'] == pytest.approx(recorded['loss'], rel=tolerance)
