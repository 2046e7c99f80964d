"""Latent-space training (training/encoders.py): encoding and decoding, pickling without the VAE
weights, the two normalisations, precomputed latents (dataset_tool.py --encoder=vae) against
on-the-fly encoding, train.py --train_on_latents=1 end to end with generate.py, and the one-line
errors. A tiny randomly initialised AutoencoderKL (the SD geometry: /8, 4 channels) saved to a
temporary folder stands in for the real VAE, which cannot be downloaded here."""

import json
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import dataset_tool
from dnnlib.util import UserError
from torch_utils.misc import BatchRNG
from training import encoders
from training.dataset import ArrayFolderDataset, ImageFolderDataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COUNT = 16      # images in the test data sets
SIDE = 64       # pixels; latents are 8x8
CLASSES = 3


def tiny_vae_config():
    """Stable Diffusion's AutoencoderKL layout (four encoder levels = three down-samplers, 4
    latent channels) with 8 channels per level: about 25k parameters."""
    return dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=4,
                down_block_types=('DownEncoderBlock2D',) * 4, up_block_types=('UpDecoderBlock2D',) * 4,
                block_out_channels=(8, 8, 8, 8), sample_size=SIDE)


@pytest.fixture(scope='module')
def vae_dir(tmp_path_factory):
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('vae') / 'tiny-vae'
    AutoencoderKL(**tiny_vae_config()).save_pretrained(path)
    return str(path)


@pytest.fixture(scope='module')
def emoji_npz(tmp_path_factory):
    """COUNT bundled 32x32 emoji, upscaled to 64x64 (nearest), with CLASSES labels."""
    data = np.load(os.path.join(ROOT, 'data', 'noto-emoji-32x32.npz'))
    images = data['images'][:COUNT].repeat(2, axis=1).repeat(2, axis=2)
    path = tmp_path_factory.mktemp('src') / 'emoji.npz'
    np.savez(path, images=images, labels=np.arange(COUNT) % CLASSES)
    return str(path)


def run_tool(*args):
    return CliRunner().invoke(dataset_tool.cli, [str(a) for a in args], catch_exceptions=False)


def convert(*args):
    result = run_tool('convert', *args)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope='module')
def images_zip(emoji_npz, tmp_path_factory):
    dest = tmp_path_factory.mktemp('data') / 'emoji.zip'
    convert(f'--source={emoji_npz}', f'--dest={dest}')
    return str(dest)


@pytest.fixture(scope='module')
def latents_zip(emoji_npz, vae_dir, tmp_path_factory):
    """float32 latents with mirrored copies, so that they can be compared exactly."""
    dest = tmp_path_factory.mktemp('data') / 'emoji-latents.zip'
    convert(f'--source={emoji_npz}', f'--dest={dest}', '--encoder=vae', f'--vae={vae_dir}', '--xflip',
            '--latent-dtype=float32')
    return str(dest)


@pytest.fixture(scope='module')
def encoder(vae_dir):
    enc = encoders.StabilityVAEEncoder(vae_name=vae_dir)
    enc.init('cpu')
    return enc


def load_images(path):
    dataset = ImageFolderDataset(path)
    return torch.as_tensor(np.stack([dataset[i][0] for i in range(len(dataset))]))


# ----------------------------------------------------------------------------------------------
# The encoder.

def test_encode_decode_shapes(encoder):
    images = torch.randint(0, 256, (3, 3, SIDE, SIDE), dtype=torch.uint8)
    latents = encoder.encode(images, BatchRNG([1, 2, 3]))
    assert latents.shape == (3, 4, SIDE // 8, SIDE // 8) and latents.dtype == torch.float32
    decoded = encoder.decode(latents)
    assert decoded.shape == (3, 3, SIDE, SIDE) and decoded.dtype == torch.uint8
    grey = encoder.encode(images[:, :1])  # grey repeats to RGB
    assert torch.equal(grey, encoder.encode(images[:, :1].expand(-1, 3, -1, -1)))
    # Normalisation is the SD factor and decode inverts it.
    mean, _std = encoder.posterior(images)
    torch.testing.assert_close(encoder.encode(images), mean * 0.18215)
    torch.testing.assert_close(encoder.denormalize(encoder.normalize(mean)), mean)


def test_latent_shape_and_resolution_check(encoder, images_zip, latents_zip):
    assert encoder.latent_shape(ImageFolderDataset(images_zip)) == (SIDE // 8, 4)
    assert encoder.latent_shape(ArrayFolderDataset(latents_zip)) == (SIDE // 8, 4)

    class Odd:
        resolution = 36
    with pytest.raises(UserError, match='36 is not divisible by 8'):
        encoder.latent_shape(Odd())


def test_the_data_set_chooses_its_encoder(vae_dir, images_zip, latents_zip):
    """Images are pixels unless the run names the VAE; precomputed latents bring the VAE that
    wrote them. One interface: shape, encode, and items shown as images."""
    images, latents = ImageFolderDataset(images_zip), ArrayFolderDataset(latents_zip)
    pixels = encoders.build_encoder(images)
    assert isinstance(pixels, encoders.PixelEncoder) and pixels.snapshot_decoder() is None
    assert pixels.latent_shape(images) == (SIDE, 3) and pixels.down_factor == 1
    batch = torch.as_tensor(np.stack([images[i][0] for i in range(2)]))
    assert torch.equal(pixels.encode(batch), batch.float() / 127.5 - 1)
    assert torch.equal(pixels.decode(pixels.encode(batch)), batch) and pixels.items_to_images(batch) is batch
    vae = encoders.build_encoder(latents)
    assert isinstance(vae, encoders.StabilityVAEEncoder) and vae.vae_name == os.path.abspath(vae_dir)
    assert vae.latent_shape(latents) == (SIDE // 8, 4) and vae.down_factor == 8 and vae.snapshot_decoder() is vae
    named = encoders.build_encoder(images, dict(class_name='training.encoders.StabilityVAEEncoder', vae_name=vae_dir))
    assert named.latent_shape(images) == (SIDE // 8, 4)
    moments = torch.as_tensor(np.stack([latents[i][0] for i in range(2)]))
    shown = vae.items_to_images(moments)
    assert shown.dtype == torch.uint8 and torch.equal(shown, vae.decode(vae.encode(moments)))


def test_pickles_without_weights_and_decodes_the_same(vae_dir, images_zip):
    enc = encoders.StabilityVAEEncoder(vae_name=vae_dir, latent_norm='channel')
    enc.init('cpu')
    enc.fit(ImageFolderDataset(images_zip))
    data = pickle.dumps(enc)
    assert '_vae' not in enc.__getstate__() and enc.vae_device is not None
    vae_params = sum(p.numel() for p in enc._vae.parameters())
    assert len(data) < 4 * vae_params  # the module source and the settings only
    loaded = pickle.loads(data)
    assert loaded.vae_device is None  # reloaded lazily
    assert loaded.channel_mean == enc.channel_mean and loaded.latent_norm == 'channel'
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5
    assert torch.equal(loaded.decode(latents), enc.decode(latents))


def test_channel_normalisation_gives_std_half(vae_dir, images_zip, latents_zip):
    dataset = ImageFolderDataset(images_zip)
    enc = encoders.StabilityVAEEncoder(vae_name=vae_dir, latent_norm='channel')
    enc.init('cpu')
    enc.fit(dataset)
    images = load_images(images_zip)
    z = torch.cat([enc.encode(images, BatchRNG([k * 1000 + i for i in range(len(images))])) for k in range(8)])
    assert z.mean(dim=(0, 2, 3)).abs().max() < 0.05
    torch.testing.assert_close(z.std(dim=(0, 2, 3)), torch.full([4], 0.5), atol=0.05, rtol=0)
    # The statistics stored by dataset_tool (over images and their mirrors) agree.
    stored = ArrayFolderDataset(latents_zip).latent_stats
    np.testing.assert_allclose(stored['mean'], enc.channel_mean, atol=0.1 * max(enc.channel_std))
    np.testing.assert_allclose(stored['std'], enc.channel_std, rtol=0.1)


# ----------------------------------------------------------------------------------------------
# Precomputed latents.

def test_precomputed_equals_on_the_fly(encoder, images_zip, latents_zip):
    images = load_images(images_zip)
    latents = ArrayFolderDataset(latents_zip, xflip=True)
    assert len(latents) == 2 * COUNT
    moments = torch.as_tensor(np.stack([latents[i][0] for i in range(len(latents))]))
    assert moments.shape == (2 * COUNT, 8, 8, 8) and moments.dtype == torch.float32
    for half, view in ((moments[:COUNT], images), (moments[COUNT:], images.flip(3))):
        mean, std = encoder.posterior(view)
        torch.testing.assert_close(half[:, :4], mean, atol=1e-4, rtol=1e-4)  # the same posterior mean
        torch.testing.assert_close(half[:, 4:], std, atol=1e-4, rtol=1e-4)
    # The same generator rows give the same posterior samples on both paths ...
    seeds = list(range(COUNT))
    torch.testing.assert_close(encoder.encode(moments[:COUNT], BatchRNG(seeds)), encoder.encode(images, BatchRNG(seeds)),
                               atol=1e-5, rtol=1e-5)
    # ... and independent draws have the same distribution (per element over 64 draws).
    draws = 64
    fly = torch.stack([encoder.encode(images, BatchRNG([10**6 + k * COUNT + s for s in seeds])) for k in range(draws)])
    pre = torch.stack([encoder.encode(moments[:COUNT], BatchRNG([2 * 10**6 + k * COUNT + s for s in seeds]))
                       for k in range(draws)])
    standard_error = fly.std(0) * (2 / draws) ** 0.5
    assert ((pre.mean(0) - fly.mean(0)).abs() < 5 * standard_error + 1e-6).all()
    torch.testing.assert_close(pre.std(0).mean(dim=(0, 2, 3)), fly.std(0).mean(dim=(0, 2, 3)), rtol=0.03, atol=0)
    torch.testing.assert_close(pre.mean(0).mean(dim=(0, 2, 3)), fly.mean(0).mean(dim=(0, 2, 3)), atol=0.01, rtol=0)


def test_dataset_tool_round_trip(emoji_npz, vae_dir, latents_zip, images_zip, tmp_path):
    with zipfile.ZipFile(latents_zip) as z:
        names = sorted(z.namelist())
        meta = json.loads(z.read('dataset.json'))
    assert names[0] == '00000/img00000000.npy' and len(names) == COUNT + 1
    info = meta['latents']
    assert info['vae'] == os.path.abspath(vae_dir) and info['shape'] == [8, 8, 8] and info['flips'] == 2
    assert info['image_resolution'] == SIDE and info['dtype'] == 'float32' and len(info['stats']['mean']) == 4
    # Labels survive, and x-flipped items keep their image's label.
    flipped = ArrayFolderDataset(latents_zip, use_labels=True, xflip=True)
    plain = ImageFolderDataset(images_zip, use_labels=True)
    assert flipped.label_dim == CLASSES
    for i in range(COUNT):
        np.testing.assert_array_equal(flipped.get_label(i), plain.get_label(i))
        np.testing.assert_array_equal(flipped.get_label(COUNT + i), plain.get_label(i))
    # float16 (the default) in a folder, without mirrors: close to the float32 values.
    dest = tmp_path / 'half'
    result = convert(f'--source={emoji_npz}', f'--dest={dest}', '--encoder=vae', f'--vae={vae_dir}', '--max-images=4')
    assert 'posterior mean and std' in result.output
    half = ArrayFolderDataset(dest)
    assert len(half) == 4 and half.latent_info['dtype'] == 'float16'
    np.testing.assert_allclose(half[3][0], flipped[3][0], rtol=2e-3, atol=1e-4)
    with pytest.raises(UserError, match='^xflip: '):
        ArrayFolderDataset(dest, xflip=True)


def test_dataset_tool_errors(emoji_npz, vae_dir, tmp_path):
    result = run_tool('convert', f'--source={emoji_npz}', f'--dest={tmp_path / "a.zip"}', '--encoder=vae',
                      f'--vae={tmp_path / "no-vae"}')
    assert result.exit_code == 1 and '--vae' in result.output and 'config.json' in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / 'a.zip').exists()
    result = run_tool('convert', f'--source={emoji_npz}', f'--dest={tmp_path / "b.zip"}', '--xflip')
    assert result.exit_code == 1 and '--xflip: only applies with --encoder=vae' in result.output
    result = run_tool('convert', f'--source={emoji_npz}', f'--dest={tmp_path / "c.zip"}', '--encoder=vae',
                      f'--vae={vae_dir}', '--resolution=36x36')
    assert result.exit_code == 1 and 'not divisible by 8' in result.output and not (tmp_path / 'c.zip').exists()


# ----------------------------------------------------------------------------------------------
# train.py and generate.py end to end.

TINY = ['--cbase=8', '--cres=1,2', '--workers=0', '--lr-rampup=0.00001', '--batch=8', '--duration=0.00005',
        '--tick=0.01', '--snap=1', '--dump=100', '--seed=1', '--patch-sizes=4,8']


def run_train(args):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'train.py')] + args + ['--device=cpu'], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run,) = os.listdir(args[args.index('--outdir') + 1])
    return os.path.join(args[args.index('--outdir') + 1], run)


def generate(snapshot, outdir, *options):
    import generate as generate_script
    result = CliRunner().invoke(generate_script.main, [f'--network={snapshot}', f'--outdir={outdir}', '--seeds=0-1',
                                                       '--steps=2', *options], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return [os.path.join(outdir, f'{s:06d}.png') for s in (0, 1)]


def latest_snapshot(run_dir):
    return os.path.join(run_dir, sorted(n for n in os.listdir(run_dir) if n.startswith('network-snapshot-') and n.endswith('.pkl'))[-1])


def test_train_on_the_fly_then_generate(images_zip, vae_dir, tmp_path):
    outdir = tmp_path / 'runs'
    run_dir = run_train(['--outdir', str(outdir), '--data', images_zip, '--train_on_latents=1', f'--vae={vae_dir}'] + TINY)
    assert os.path.basename(run_dir) == '00000-emoji-uncond-ddpmpp-pedm-latents-gpus1-batch8-fp32'
    with open(os.path.join(run_dir, 'training_options.json')) as f:
        options = json.load(f)
    assert options['encoder_kwargs']['vae_name'] == os.path.abspath(vae_dir)
    assert options['encoder_kwargs']['latent_norm'] == 'scale'
    assert options['patch_kwargs']['patch_sizes'] == [4, 8]
    with Image.open(os.path.join(run_dir, 'reals.png')) as img:
        assert img.mode == 'RGB' and img.size[0] % SIDE == 0
    with open(latest_snapshot(run_dir), 'rb') as f:
        snap = pickle.load(f)
    assert snap['ema'].img_channels == 4 and snap['ema'].img_resolution == 8
    assert snap['encoder'].vae_name == os.path.abspath(vae_dir)
    for path in generate(latest_snapshot(run_dir), tmp_path / 'out'):
        with Image.open(path) as img:
            assert img.mode == 'RGB' and img.size == (SIDE, SIDE)


def test_train_on_precomputed_cond_adm_then_generate_cfg(latents_zip, tmp_path):
    outdir = tmp_path / 'runs'
    run_dir = run_train(['--outdir', str(outdir), '--data', latents_zip, '--arch=adm', '--cond=1', '--label-dropout=0.2',
                         '--xflip=1', '--latent-norm=channel'] + TINY[:1] + ['--cbase=32'] + TINY[1:])
    assert '-cond-adm-pedm-latents-' in os.path.basename(run_dir)
    with open(os.path.join(run_dir, 'training_options.json')) as f:
        options = json.load(f)
    assert options['dataset_kwargs']['class_name'] == 'training.dataset.ArrayFolderDataset'
    with open(latest_snapshot(run_dir), 'rb') as f:
        snap = pickle.load(f)
    encoder = snap['encoder']
    assert encoder.latent_norm == 'channel'
    np.testing.assert_allclose(encoder.channel_mean, ArrayFolderDataset(latents_zip).latent_stats['mean'])
    assert snap['ema'].label_dim == CLASSES
    for path in generate(latest_snapshot(run_dir), tmp_path / 'out', '--class=1', '--cfg=2'):
        with Image.open(path) as img:
            assert img.mode == 'RGB' and img.size == (SIDE, SIDE)


# ----------------------------------------------------------------------------------------------
# One-line errors of train.py.

def invoke_train(args):
    import train
    return CliRunner().invoke(train.main, args)


@pytest.mark.parametrize('case', ['missing-vae', 'vae-without-latents', 'latent-side'])
def test_train_errors(case, images_zip, vae_dir, tmp_path):
    base = ['--outdir', str(tmp_path / 'runs'), '--data', images_zip, '--batch=8', '--cbase=8', '--workers=0', '-n']
    if case == 'missing-vae':
        result = invoke_train(base + ['--train_on_latents=1', f'--vae={tmp_path / "nowhere"}'])
        needles = ['--vae', 'nowhere', 'does not exist', 'config.json']
    elif case == 'vae-without-latents':
        result = invoke_train(base + [f'--vae={vae_dir}'])
        needles = ['--vae: only applies with --latents=1']
    else:  # 64 px → 8x8 latents; four levels halve them three times → fine; five would go below 1
        result = invoke_train(base + ['--train_on_latents=1', f'--vae={vae_dir}', '--cres=1,1,1,1,1'])
        needles = ['--cres', 'latents 4 times', '8x8 allows at most 4']
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (tmp_path / 'runs').exists()


def test_non_square_latents_train_and_generate(emoji_npz, vae_dir, tmp_path):
    """64x32 (WxH) images: 8x4 latents precomputed, trained with aspect-keeping patches, and
    sampled back to 64x32 images (issue 20); sides that are not multiples of 8 are refused."""
    wide = np.load(emoji_npz)['images'][:, 16:48]
    np.savez(tmp_path / 'wide.npz', images=wide)
    data = tmp_path / 'wide-latents.zip'
    convert(f'--source={tmp_path / "wide.npz"}', f'--dest={data}', '--encoder=vae', f'--vae={vae_dir}')
    dataset = ArrayFolderDataset(data)
    assert dataset.resolution == (4, 8) and dataset.image_shape == [8, 4, 8]
    run_dir = run_train(['--outdir', str(tmp_path / 'runs'), '--data', str(data)] + TINY[:-1])
    with open(os.path.join(run_dir, 'training_options.json')) as f:
        assert json.load(f)['patch_kwargs']['patch_sizes'] == [[2, 4], [4, 8]]
    for path in generate(latest_snapshot(run_dir), tmp_path / 'out'):
        with Image.open(path) as img:
            assert img.mode == 'RGB' and img.size == (64, 32)
    result = run_tool('convert', f'--source={tmp_path / "wide.npz"}', f'--dest={tmp_path / "odd.zip"}', '--encoder=vae',
                      f'--vae={vae_dir}', '--resolution=64x36')
    assert result.exit_code == 1 and '64x36 (WxH) is not divisible by 8' in result.output
