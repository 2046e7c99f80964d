"""What the first CUDA run depends on, checked on the CPU: no host-device synchronisation inside
a training step or between the network calls of a sampler, blocks copied to the device one by
one, this GPU's RNG state only in training states, --deterministic, the fp32 noise embedding and
TF32 for the VAE."""

import io
import json
import os
import sys
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner
from torch.overrides import TorchFunctionMode

from conftest import sampling_net
from torch_utils import misc
from torch_utils.misc import BatchRNG
from training import encoders, networks, sampler, training_loop, training_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_MACHINERY = tuple(os.path.join(os.path.dirname(torch.__file__), name) for name in ('overrides.py', '_tensor.py'))
NOT_HOT = (os.path.join(ROOT, 'tests') + os.sep, os.path.join(ROOT, 'training', 'dataset.py'))  # workers run dataset.py

# Calls that make the host wait for the GPU, and factories that copy Python data to the device.
WAITS = {'item', 'tolist', 'cpu', 'numpy', '__bool__', '__float__', '__int__', '__index__', '__format__',
         '__repr__', 'nonzero', 'argwhere', 'masked_select', 'unique'}
FROM_HOST = {'tensor', 'as_tensor', 'asarray', 'scalar_tensor', 'new_tensor'}


class HostSyncCounter(TorchFunctionMode):
    """Records, while `active`, every call in WAITS, boolean-mask indexing, and FROM_HOST with
    non-tensor data that the project's own code (not torch's, not the data set's) makes."""

    def __init__(self, exclude=NOT_HOT):
        super().__init__()
        self.exclude = exclude
        self.active = True
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, '__name__', '')
        if self.active and self._counts(name, args):
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename.startswith(TORCH_MACHINERY):
                frame = frame.f_back
            path = frame.f_code.co_filename if frame is not None else ''
            if path.startswith(ROOT) and not path.startswith(self.exclude) and 'site-packages' not in path:
                self.calls.append(f'{name} at {os.path.relpath(path, ROOT)}:{frame.f_lineno}')
        return func(*args, **(kwargs or {}))

    @staticmethod
    def _counts(name, args):
        if name in WAITS:
            return True
        if name in FROM_HOST:
            data = args[1] if name == 'new_tensor' else args[0] if args else None
            return not isinstance(data, torch.Tensor)
        if name in ('__getitem__', '__setitem__') and len(args) > 1:
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)
        return False


def test_counter_sees_the_calls_it_looks_for():
    x = torch.ones(3)
    with HostSyncCounter(exclude=()) as counter:
        bool(x.sum() > 0), x.sum().item(), x.tolist(), x.cpu(), float(x[0]), x[x > 0]
        torch.tensor(1.0), x.new_tensor([2.0]), torch.as_tensor(x), torch.full([], 3.0)
    names = [call.split()[0] for call in counter.calls]
    assert names == ['__bool__', 'item', 'tolist', 'cpu', '__float__', '__getitem__', 'tensor', 'new_tensor']


# ----------------------------------------------------------------------------------------------
# One training step.


def make_rgb_zip(path, count=16, size=8):
    """Random RGB images with labels: colour augmentation and labels are both exercised."""
    rng = np.random.default_rng(0)
    entries = []
    with zipfile.ZipFile(path, 'w') as z:
        for i in range(count):
            buf = io.BytesIO()
            PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format='PNG')
            z.writestr(f'{i:08d}.png', buf.getvalue())
            entries.append([f'{i:08d}.png', i % 3])
        z.writestr('dataset.json', json.dumps({'labels': entries}))
    return str(path)


def test_training_steps_never_wait_for_the_device(tmp_path):
    """Steps 3 to 6 of a run with patches of two sizes, two accumulation rounds, labels, dropout
    and every augmentation (geometry and colour): none of their code waits for the device."""
    window = range(3, 7)
    sizes = set()
    ops = dict(xflip=1e8, yflip=1, rotate_int=1, translate_int=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1,
               brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
    counter = HostSyncCounter()
    counter.active = False

    def at_step(info):
        if info.step == window.start - 1:
            info.net.register_forward_pre_hook(lambda net, args: sizes.add(args[0].shape[-1]))
            counter.__enter__()
            counter.active = True
        if info.step == window.stop - 1:
            counter.active = False
            counter.__exit__(None, None, None)
            return True
        return False

    try:
        training_loop.training_loop(
            run_dir=str(tmp_path), seed=4, batch_size=4, batch_gpu=2, total_kimg=1, kimg_per_tick=1000,
            snapshot_ticks=None, state_dump_ticks=None, sample_grid=False, step_callback=at_step,
            dataset_kwargs=dict(class_name='training.dataset.ImageFolderDataset', path=make_rgb_zip(tmp_path / 'd.zip'),
                                use_labels=True, cache=True),
            data_loader_kwargs=dict(pin_memory=True, num_workers=0),
            network_kwargs=dict(class_name='training.networks.EDMPrecond', model_type='SongUNet', model_channels=8,
                                channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.2, use_coords=True,
                                augment_dim=19),
            loss_kwargs=dict(class_name='training.loss.EDMLoss'),
            optimizer_kwargs=dict(class_name='torch.optim.Adam', lr=1e-3, betas=[0.9, 0.999], eps=1e-8),
            augment_kwargs=dict(class_name='training.augment.AugmentPipe', p=0.5, **ops),
            patch_kwargs=dict(patch_sizes=[4, 8], real_p=0.5))
    finally:
        if counter.active:
            counter.__exit__(None, None, None)
    assert sizes == {4, 8}, 'the window should hold steps of both patch sizes'
    assert counter.calls == []


def test_blocks_are_copied_to_the_device_one_by_one():
    """A concatenation on the host would be pageable memory, which copies synchronously; each
    (pinned) block must go to the device by itself, without waiting."""
    blocks = [(torch.full([2, 1, 4, 4], i, dtype=torch.uint8), torch.full([2, 3], float(i))) for i in range(3)]
    moved = []

    class RecordCopies(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if getattr(func, '__name__', '') == 'to' and kwargs.get('non_blocking'):
                moved.append(args[0])
            return func(*args, **kwargs)

    with RecordCopies():
        images, labels = misc.blocks_to_device(blocks, torch.device('cpu'))
    assert torch.equal(images, torch.cat([b[0] for b in blocks])) and torch.equal(labels, torch.cat([b[1] for b in blocks]))
    assert all(any(t is m for m in moved) for block in blocks for t in block)


class FakeVAE(torch.nn.Module):
    """Stands in for the Stable Diffusion VAE: encodes to the 8x8 average, decodes by
    repetition, and calls `on_call()` each time."""

    def __init__(self, on_call=lambda: None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.on_call = on_call

    def encode(self, x):
        self.on_call()
        mean = torch.nn.functional.avg_pool2d(x, 8)[:, :1].expand(-1, 4, -1, -1)
        return type('Out', (), {'latent_dist': type('Dist', (), {'mean': mean, 'std': mean.abs() + 0.1})})

    def decode(self, z):
        self.on_call()
        return type('Out', (), {'sample': z[:, :3].repeat_interleave(8, 2).repeat_interleave(8, 3)})


@pytest.mark.parametrize('norm', ['scale', 'channel'])
def test_latent_encoding_never_waits_for_the_device(norm):
    """Encoding a training batch to normalised latents, from images (VAE on the fly) or from
    precomputed posterior moments, copies no Python numbers to the device."""
    encoder = encoders.StabilityVAEEncoder('unused', latent_norm=norm, channel_mean=[0.1, -0.2, 0.3, 0.0],
                                           channel_std=[1.0, 2.0, 0.5, 1.5])
    encoder._vae = FakeVAE()
    rng = BatchRNG([1, 2], rows_per_seed=1)
    with HostSyncCounter() as counter:
        encoder.encode(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), rng)
        encoder.encode(torch.rand(2, 8, 2, 2), rng)
    assert counter.calls == []


# ----------------------------------------------------------------------------------------------
# One sampling step.


@pytest.mark.parametrize('kwargs', [
    dict(),
    dict(S_churn=40, S_min=0.05, S_max=50),
    dict(solver='euler', discretization='vp', schedule='vp', scaling='vp', S_churn=10),
    dict(discretization='iddpm', solver='heun', S_churn=5),
    dict(cfg_scale=2.0),
], ids=['edm', 'edm-churn', 'ablation-vp', 'ablation-iddpm', 'cfg'])
def test_sampling_steps_never_wait_for_the_device(kwargs, monkeypatch):
    """Between a sampler's first and last network call (its loop, the network included) nothing
    waits for the device and no Python number is copied to it: σ reaches the network as a
    device tensor."""
    net = sampling_net(img_channels=1, label_dim=3 if 'cfg_scale' in kwargs else 0)
    counter = HostSyncCounter()
    calls_before_net = []
    forward = net.forward

    def counted_forward(x, sigma, *args, **more):
        assert isinstance(sigma, torch.Tensor) and sigma.device == x.device
        calls_before_net.append(len(counter.calls))
        return forward(x, sigma, *args, **more)

    monkeypatch.setattr(net, 'forward', counted_forward)
    with counter:
        sampler.sample_images(net, seeds=[0, 1, 2], device='cpu', num_steps=4, **kwargs)
    first, last = calls_before_net[0], calls_before_net[-1]
    assert len(calls_before_net) >= 4
    assert counter.calls[first:last] == []


def test_churned_sigmas_match_rounding_each_step():
    """The σ̂ rounded before the loop are the per-step values (iDDPM rounds to its levels)."""
    net = networks.iDDPMPrecond(img_resolution=8, img_channels=1, model_channels=8, channel_mult=[1], num_blocks=1,
                                attn_resolutions=[])
    sigmas, gammas = [80.0, 10.0, 0.5], [0.2, 0.0, 0.1]
    expected = [float(net.round_sigma(torch.tensor(s + g * s, dtype=torch.float64))) if g > 0 else s
                for s, g in zip(sigmas, gammas)]
    assert sampler.churned_sigmas(net, sigmas, gammas) == expected


# ----------------------------------------------------------------------------------------------
# RNG state in training states.


@pytest.fixture
def fake_gpus(monkeypatch):
    """torch.cuda's RNG functions on a pretend machine with `n` GPUs; returns the call log."""
    log = []

    def setup(n):
        monkeypatch.setattr(torch.cuda, 'is_available', lambda: n > 0)
        monkeypatch.setattr(torch.cuda, 'device_count', lambda: n)

        def get_rng_state(device='cuda'):
            index = torch.device(device).index
            assert index is not None and index < n, f'no GPU {device}'
            log.append(('get', index))
            return torch.full([8], index, dtype=torch.uint8)

        def set_rng_state(state, device='cuda'):
            index = torch.device(device).index
            assert index is not None and index < n, f'no GPU {device}'
            log.append(('set', index, int(state[0])))

        def all_gpus(*args):
            raise AssertionError('the RNG states of all GPUs were used')

        monkeypatch.setattr(torch.cuda, 'get_rng_state', get_rng_state)
        monkeypatch.setattr(torch.cuda, 'set_rng_state', set_rng_state)
        monkeypatch.setattr(torch.cuda, 'get_rng_state_all', all_gpus)
        monkeypatch.setattr(torch.cuda, 'set_rng_state_all', all_gpus)
        return log
    return setup


def test_state_holds_this_gpus_rng_and_resumes_on_fewer_gpus(fake_gpus):
    """Rank 5 of an 8-GPU machine saves GPU 5's state; resuming it as rank 0 of a one-GPU machine
    restores that state into GPU 0 (a list of 8 states used to raise IndexError there)."""
    log = fake_gpus(8)
    state = training_state.rng_state(torch.device('cuda', 5))
    assert log == [('get', 5)] and int(state['cuda'][0]) == 5
    log = fake_gpus(1)
    log.clear()
    cpu_state = torch.get_rng_state()
    training_state.set_rng_state(state, torch.device('cuda', 0))
    assert log == [('set', 0, 5)] and torch.equal(torch.get_rng_state(), cpu_state)


def test_cpu_runs_neither_save_nor_restore_gpu_rng(fake_gpus):
    log = fake_gpus(2)
    state = training_state.rng_state(torch.device('cpu'))
    assert 'cuda' not in state
    training_state.set_rng_state(dict(state, cuda=torch.zeros(8, dtype=torch.uint8)), torch.device('cpu'))
    assert log == []


# ----------------------------------------------------------------------------------------------
# --deterministic and precision.


@pytest.fixture
def restore_backends(monkeypatch):
    monkeypatch.setenv('CUBLAS_WORKSPACE_CONFIG', 'placeholder')
    monkeypatch.delenv('CUBLAS_WORKSPACE_CONFIG')  # restored, or removed again, afterwards
    flags = [(torch.backends.cudnn, 'benchmark'), (torch.backends.cudnn, 'allow_tf32'),
             (torch.backends.cuda.matmul, 'allow_tf32'),
             (torch.backends.cuda.matmul, 'allow_fp16_reduced_precision_reduction')]
    saved = [getattr(obj, name) for obj, name in flags]
    sdp = [(name, getattr(torch.backends.cuda, name.replace('enable_', '') + '_enabled')())
           for name in ('enable_flash_sdp', 'enable_mem_efficient_sdp', 'enable_cudnn_sdp')
           if hasattr(torch.backends.cuda, name)]
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    for (obj, name), value in zip(flags, saved):
        setattr(obj, name, value)
    for name, value in sdp:
        getattr(torch.backends.cuda, name)(value)
    torch.use_deterministic_algorithms(deterministic)


def test_deterministic_turns_off_every_source_of_run_to_run_differences(restore_backends):
    training_loop.set_backends(cudnn_benchmark=True, deterministic=False)
    assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert not torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction
    assert 'CUBLAS_WORKSPACE_CONFIG' not in os.environ

    training_loop.set_backends(cudnn_benchmark=True, deterministic=True)
    assert not torch.backends.cudnn.benchmark and torch.are_deterministic_algorithms_enabled()
    assert os.environ['CUBLAS_WORKSPACE_CONFIG'] == ':4096:8'
    assert not torch.backends.cuda.flash_sdp_enabled() and not torch.backends.cuda.mem_efficient_sdp_enabled()
    assert not torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction


def test_train_deterministic_option_reaches_the_training_loop(tmp_path):
    import train
    data = make_rgb_zip(tmp_path / 'd.zip', count=4)
    result = CliRunner().invoke(train.main, ['--outdir', str(tmp_path / 'runs'), '--data', data, '--deterministic=1',
                                             '--device=cpu', '--dry-run', '--cbase=8', '--cres=1,2'])
    assert result.exit_code == 0, result.output
    options = json.loads(result.output.split('Training options:')[1].split('\n\n')[0])
    assert options['deterministic'] is True


@pytest.mark.parametrize('arch', ['ddpmpp', 'adm'])
def test_noise_embedding_reaches_the_blocks_in_fp32(tiny_net, arch):
    """With a bfloat16 body (as --fp16/--bf16 on CUDA) the per-block affine layers still get the
    fp32 embedding, as in EDM; only their output is cast to the body's dtype."""
    model = tiny_net(arch).model
    seen = []
    for module in model.modules():
        if isinstance(module, networks.UNetBlock):
            module.affine.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].dtype))
    x = torch.randn(2, 3, 16, 16, dtype=torch.bfloat16)
    out = model(x, torch.randn(2), class_labels=None)
    assert out.dtype == torch.bfloat16
    assert seen and set(seen) == {torch.float32}


def test_vae_runs_with_tf32_on_cuda_only(monkeypatch, restore_backends):
    flags = lambda: (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)  # noqa: E731
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    with encoders.vae_precision(torch.device('cuda', 0)):
        assert flags() == (True, True)
    assert flags() == (False, False)
    with encoders.vae_precision(torch.device('cpu')):
        assert flags() == (False, False)

    real = encoders.vae_precision

    def on_cuda(device):  # the CPU tensors stand for CUDA ones
        assert device.type == 'cpu'
        return real(torch.device('cuda'))

    monkeypatch.setattr(encoders, 'vae_precision', on_cuda)
    inside = []
    encoder = encoders.StabilityVAEEncoder('unused')
    encoder._vae = FakeVAE(on_call=lambda: inside.append(flags()))
    latents = encoder.encode(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    encoder.decode(latents)
    assert inside == [(True, True), (True, True)] and flags() == (False, False)
