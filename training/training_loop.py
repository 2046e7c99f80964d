"""EDM's training loop with the patch schedule plugged in: a step of patch side s takes R // s
data-loader blocks per accumulation round. All randomness of an image comes from the generator of
its block, so a run does not depend on how the batch is split over ranks and rounds, and a resumed
run repeats the uninterrupted one (bit for bit on CUDA with `deterministic=True`)."""

import copy
import glob
import importlib.util
import json
import math
import os
import pickle
import re
import shutil
import time
import warnings

import numpy as np
import psutil
import torch

import dnnlib
from dnnlib.util import UserError, atomic_write
from torch_utils import distributed as dist
from torch_utils import misc, png, training_stats
from training import checkpoints, live_log, train_metrics
from training import patch as patch_lib
from training import phema as phema_lib

# ----------------------------------------------------------------------------------------------
# Files of a run.


def snapshot_name(kimg):
    return f'network-snapshot-{int(kimg):06d}.pkl'


def state_name(kimg):
    return f'training-state-{int(kimg):06d}.pt'


def find_resume_state(path):
    """The training-state file to resume from: `path` itself, or the latest state in a run folder."""
    if os.path.isdir(path):
        states = sorted(glob.glob(os.path.join(path, 'training-state-*.pt')), key=_kimg_of)
        if not states:
            raise UserError(f'--resume: run folder "{path}" holds no training-state-*.pt file')
        return states[-1]
    if not os.path.isfile(path):
        raise UserError(f'--resume: "{path}" does not exist')
    return path


def _kimg_of(path):
    match = re.search(r'-(\d+)\.\w+$', os.path.basename(path))
    return int(match.group(1)) if match else -1


def load_state(path):
    """Reads a training-state file written by `training_loop`, with a clear error for anything else.

    Loaded with `weights_only=True`: a state holds only tensors, numbers, strings and containers,
    so a file whose unpickling would run code (or build any other object) is refused unread."""
    try:
        with warnings.catch_warnings():  # e.g. about the pickle protocol of a foreign file: the error says enough
            warnings.simplefilter('ignore')
            state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:
        found = re.search(r'GLOBAL ([\w.]+)', str(err)) if isinstance(err, pickle.UnpicklingError) else None
        if found:
            raise UserError(f'--resume: "{path}" holds a {found.group(1)}, which training states of this version never do; '
                            f'refused unread, since loading it could run code') from None
        raise UserError(f'--resume: "{path}" is not a readable training state ({type(err).__name__})') from None
    if not isinstance(state, dict) or 'net' not in state or 'nimg' not in state:
        raise UserError(f'--resume: "{path}" is not a training-state file written by train.py')
    return state


RESUMABLE_CHANGES = ('use_fp16', 'use_bf16')


def check_resume_state(path, network_kwargs, batch_size):
    """Loads the state at `path` and raises UserError naming every network option and the batch
    size that differ from this run's, before a run folder is made for a resume that cannot work.
    The precision flags may change: they do not change the weights. Returns the loaded state."""
    state = load_state(path)
    stored = dict(state.get('network_kwargs') or {})
    wanted = json.loads(json.dumps(network_kwargs))
    differ = [f'{key} {stored.get(key)!r} (now {wanted.get(key)!r})' for key in sorted(set(stored) | set(wanted))
              if key not in RESUMABLE_CHANGES and stored.get(key) != wanted.get(key)]
    if state.get('batch_size', batch_size) != batch_size:
        differ.append(f'--batch {state["batch_size"]} (now {batch_size})')
    if differ:
        raise UserError(f'--resume: "{path}" was trained with other options: {", ".join(differ)}')
    return state


def _rng_state(device):
    """This process's global RNG states (used by dropout and the data-loader workers' seeds): the
    CPU's and, on a GPU, that GPU's only, so a run can resume on a machine with fewer GPUs. Tensors
    and numbers only, so that the state file loads with `weights_only=True`."""
    _name, key, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = dict(torch=torch.get_rng_state(), numpy_key=torch.from_numpy(key.astype(np.int64)), numpy_pos=int(pos),
                 numpy_has_gauss=int(has_gauss), numpy_cached_gaussian=float(cached_gaussian))
    if device.type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state, device):
    torch.set_rng_state(state['torch'])
    np.random.set_state(('MT19937', state['numpy_key'].numpy().astype(np.uint32), state['numpy_pos'],
                         state['numpy_has_gauss'], state['numpy_cached_gaussian']))
    if 'cuda' in state and device.type == 'cuda':
        torch.cuda.set_rng_state(state['cuda'], device)


def set_backends(cudnn_benchmark, deterministic):
    """EDM's numerics (full fp32 matmuls and convolutions, fp16 sums not reduced in fp16), and
    with `deterministic` the same result on every CUDA run: deterministic kernels, no cuDNN
    autotuning, a fixed cuBLAS workspace and unfused attention (this costs speed; docs/gpu.md)."""
    torch.backends.cudnn.benchmark = cudnn_benchmark and not deterministic
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    torch.use_deterministic_algorithms(deterministic)
    if deterministic:
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')  # read when cuBLAS starts
        for name in ('enable_flash_sdp', 'enable_mem_efficient_sdp', 'enable_cudnn_sdp'):
            if hasattr(torch.backends.cuda, name):  # their backward passes are not deterministic
                getattr(torch.backends.cuda, name)(False)


# ----------------------------------------------------------------------------------------------
# Pieces of a step.


def build_data_loader(dataset, batch_gpu, seed, start_block, data_loader_kwargs):
    """This rank's endless iterator of data-loader blocks (batches of `batch_gpu` images)."""
    sampler = misc.InfiniteSampler(len(dataset), rank=dist.get_rank(), world_size=dist.get_world_size(),
                                   seed=seed, block_size=batch_gpu, start_block=start_block)
    kwargs = dict(data_loader_kwargs)
    if dist.device().type != 'cuda':
        kwargs.pop('pin_memory', None)
    if not kwargs.get('num_workers'):
        kwargs.pop('prefetch_factor', None)
        kwargs.pop('persistent_workers', None)
    # A generator of its own keeps the loader from drawing on the global RNG (which dropout uses
    # and a resumed run restores) and makes worker seeds reproducible.
    generator = torch.Generator().manual_seed(misc.seed_to_int(seed, 4, dist.get_rank(), start_block))
    loader = torch.utils.data.DataLoader(dataset=dataset, sampler=sampler, batch_size=batch_gpu, generator=generator, **kwargs)
    return iter(loader), sampler.first_block()


def blocks_to_device(blocks, device):
    """(images, labels) of data-loader blocks, concatenated on the device. Each block is copied
    by itself: the loader's pinned blocks copy without waiting, a concatenation on the host
    would be pageable memory again."""
    images = torch.cat([block[0].to(device, non_blocking=True) for block in blocks])
    labels = torch.cat([block[1].to(device, non_blocking=True) for block in blocks])
    return images, labels


def images_to_float(images, device):
    """uint8 NCHW → float32 in [−1, 1] on the device; float items (arrays, already in [−1, 1]) as they are."""
    if images.dtype.is_floating_point:
        return images.to(device, non_blocking=True).to(torch.float32)
    return images.to(device, non_blocking=True).to(torch.float32) / 127.5 - 1


def network_shape(dataset, encoder_kwargs):
    """(side or (H, W), channels) of the denoiser's input: the data set's images, or their
    latents. Read from the encoder's class, so that train.py can check sizes without building an
    encoder."""
    if encoder_kwargs is None:
        return dataset.resolution, dataset.num_channels
    return dnnlib.util.get_obj_by_name(encoder_kwargs['class_name']).latent_shape(dataset)


def update_ema(ema, net, images_in_step, nimg, ema_halflife_kimg, ema_rampup_ratio):
    """ema ← β·ema + (1 − β)·net with β = 0.5^(images in step / h), h = min(half-life, ratio·nimg)."""
    halflife = ema_halflife_kimg * 1000
    if ema_rampup_ratio is not None:
        halflife = min(halflife, nimg * ema_rampup_ratio)
    beta = 0.5 ** (images_in_step / max(halflife, 1e-8))
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in net.parameters()], 1 - beta)
        for b_ema, b_net in zip(ema.buffers(), net.buffers()):
            b_ema.copy_(b_net.detach())


def learning_rate(base, nimg, rampup_kimg, decay_kimg):
    """EDM's linear warm-up over `rampup_kimg` (0: none, where EDM still gave the first step rate 0),
    then, with `decay_kimg` > 0, EDM2's inverse-square-root decay: base / √(nimg / decay) once nimg
    passes `decay_kimg` (a short run ends at a lower rate without having to know its length, which a
    time limit leaves open)."""
    lr = base * min(nimg / (rampup_kimg * 1000), 1) if rampup_kimg > 0 else base
    if decay_kimg > 0:
        lr /= math.sqrt(max(nimg / (decay_kimg * 1000), 1))
    return lr


def build_optimizer(net, optimizer_kwargs):
    """The optimizer of `optimizer_kwargs`; Adam runs its fused kernel unless they say otherwise: one
    pass over all parameters instead of ~8 small operations per tensor (~5% of a small CPU step)."""
    kwargs = dict(optimizer_kwargs)
    if kwargs['class_name'] == 'torch.optim.Adam':
        kwargs.setdefault('fused', True)
    return dnnlib.construct_class_by_name(params=net.parameters(), **kwargs)


def load_optimizer_state(optimizer, state):
    """Loads a saved optimizer state but keeps this run's choice of kernel, which the saved groups
    (EDM's have no `fused`) would otherwise overwrite."""
    kernels = {key: optimizer.defaults[key] for key in ('fused', 'foreach') if key in optimizer.defaults}
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        group.update(kernels)


def sanitize_gradients(net):
    """NaN → 0 and ±∞ → ±1e5 in every gradient, so one bad batch cannot poison Adam."""
    for param in net.parameters():
        if param.grad is not None:
            misc.nan_to_num_(param.grad)


def save_snapshot(run_dir, kimg, ema, loss_fn, augment_pipe, dataset_kwargs, encoder=None, name=None):
    """`network-snapshot-<kimg>.pkl` (or `name`): the EMA network (eval, CPU) and what generate.py needs,
    and the same network as `.safetensors` (weights and constructor arguments; loading runs no code)."""
    data = dict(ema=ema, loss_fn=loss_fn, augment_pipe=augment_pipe, dataset_kwargs=dict(dataset_kwargs))
    if encoder is not None:
        data['encoder'] = encoder
    for key, value in list(data.items()):
        if isinstance(value, torch.nn.Module):
            value = copy.deepcopy(value).eval().requires_grad_(False)
            misc.check_ddp_consistency(value)
            data[key] = value.cpu()
    path = os.path.join(run_dir, name or snapshot_name(kimg))
    if dist.get_rank() == 0:
        checkpoints.save_snapshot_pair(path, data)
    return path


# ----------------------------------------------------------------------------------------------
# Reporting.


def format_tick_line(fields):
    """The status line printed every tick."""
    parts = [f'tick {fields["tick"]:<5d}', f'kimg {fields["kimg"]:<9.3f}', f'time {_fmt_time(fields["time"]):<12s}',
             f'sec/tick {fields["sec_per_tick"]:<7.1f}', f'sec/kimg {fields["sec_per_kimg"]:<7.2f}',
             f'cpumem {fields["cpumem_gb"]:<5.2f}']
    if fields.get('gpumem_gb') is not None:
        parts.append(f'gpumem {fields["gpumem_gb"]:<5.2f}')
    parts.append(f'loss {fields["loss"]:<8.4f}')
    for size, value in sorted(fields.get('loss_by_patch', {}).items(), key=lambda kv: _size_order(kv[0])):
        parts.append(f'loss@{size} {value:<8.4f}')
    parts.extend(f'{name} {value:<8.4g}' for name, value in fields.get('metrics', {}).items())
    return ' '.join(parts)


def _size_order(name):
    """Sort key of a patch size's stat name ('16' or '16x32'): its pixel count."""
    return patch_lib.patch_pixels(patch_lib.parse_patch_size(name))


def _fmt_time(seconds):
    seconds = int(round(seconds))
    if seconds < 60:
        return f'{seconds}s'
    if seconds < 3600:
        return f'{seconds // 60}m {seconds % 60:02d}s'
    if seconds < 86400:
        return f'{seconds // 3600}h {(seconds // 60) % 60:02d}m'
    return f'{seconds // 86400}d {(seconds // 3600) % 24:02d}h'


def write_stats(run_dir, records):
    """Rewrites `stats.jsonl` atomically with the records so far: at the start of a run, so that a
    resume truncates it to the resumed tick."""
    with atomic_write(os.path.join(run_dir, 'stats.jsonl'), 'w', encoding='utf-8') as f:
        for record in records:
            f.write(json.dumps(record) + '\n')


def append_stats(run_dir, record):
    """Appends one tick's line to `stats.jsonl`, as EDM does, so `tail -f` follows the run."""
    with open(os.path.join(run_dir, 'stats.jsonl'), 'a', encoding='utf-8') as f:
        f.write(json.dumps(record) + '\n')


def write_loss_plot(run_dir, records):
    """`loss.png`: total loss and loss per patch side against kimg."""
    from dnnlib import plot
    if len(records) < 2:
        return
    series = {'all': [(r['kimg'], r['loss']) for r in records if np.isfinite(r['loss'])]}
    sizes = sorted({s for r in records for s in r.get('loss_by_patch', {})}, key=_size_order)
    for size in sizes:
        points = [(r['kimg'], r['loss_by_patch'][size]) for r in records if size in r.get('loss_by_patch', {})]
        series[f'patch {size}'] = points
    plot.line_plot(os.path.join(run_dir, 'loss.png'), series, xlabel='kimg', ylabel='loss', title='training loss', logy=True)


def save_sample_grid(run_dir, kimg, ema, device, encoder=None, num_images=64):
    """`samples-<kimg>.png`: a grid from the EMA network with fixed seeds (the sampler of
    generate.py, 18 steps)."""
    from training import sampler
    images = sampler.sample_images(ema, seeds=list(range(num_images)), device=device, decoder=encoder)
    png.save_image_grid(images, os.path.join(run_dir, f'samples-{int(kimg):06d}.png'))


def save_reals_grid(run_dir, dataset, encoder=None, num_images=64):
    """`reals.png`: the first training images, for comparison with the sample grids (precomputed
    latents are shown decoded from their posterior means)."""
    count = min(num_images, len(dataset))
    images = torch.as_tensor(np.stack([dataset[i][0] for i in range(count)]))
    if encoder is not None and images.dtype != torch.uint8:
        images = encoder.decode(encoder.encode(images.to(encoder.vae_device)))
    elif images.dtype != torch.uint8:  # arrays in [−1, 1]
        from training import sampler
        images = sampler.to_uint8(images)
    png.save_image_grid(images, os.path.join(run_dir, 'reals.png'))


# ----------------------------------------------------------------------------------------------
# The loop.


def check_compile_support(device):
    """Raises UserError unless torch.compile can build kernels for `device`: TorchInductor needs
    a C++ compiler for CPU kernels and Triton for CUDA kernels."""
    if device.type == 'cuda':
        if importlib.util.find_spec('triton') is None:
            raise UserError('--compile: CUDA kernels need the triton package (pip install triton)')
    elif not any(shutil.which(cxx) for cxx in (os.environ.get('CXX'), 'g++', 'c++', 'clang++') if cxx):
        raise UserError('--compile: compiling for the CPU needs a C++ compiler (g++ or clang++) on the PATH')


def compile_for_training(net, shapes):
    """`net` compiled by torch.compile (TorchInductor) for training: one static graph per input
    shape (one per patch size), which fuses the normalisations, activations and casts around the
    convolutions. Snapshots and the EMA keep using `net` itself."""
    misc.cpu_has_bf16()  # cached now: reading /proc/cpuinfo while tracing would break the graph
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, shapes + 2)
    return torch.compile(net, dynamic=False)


def training_loop(
    run_dir='.',
    dataset_kwargs=None,
    data_loader_kwargs=None,
    network_kwargs=None,
    loss_kwargs=None,
    optimizer_kwargs=None,
    augment_kwargs=None,
    patch_kwargs=None,
    encoder_kwargs=None,
    seed=0,
    batch_size=512,
    batch_gpu=None,
    total_kimg=200000,
    ema_halflife_kimg=500,
    ema_rampup_ratio=0.05,
    lr_rampup_kimg=10000,
    lr_decay_kimg=0,
    loss_scaling=1,
    kimg_per_tick=50,
    snapshot_ticks=50,
    state_dump_ticks=500,
    sample_grid=True,
    resume_pkl=None,
    trust_pickle=False,
    resume_state=None,
    cudnn_benchmark=True,
    compile_network=False,
    deterministic=False,
    device=torch.device('cpu'),
    step_callback=None,
    time_limit_min=None,
    phema_kwargs=None,
    metrics_kwargs=None,
    logger_kwargs=None,
):
    """Trains a denoiser with the final options of train.py's `build_config` (`training_options.json`),
    which it trusts. `patch_kwargs`, PatchSchedule's arguments, switches patches on (the network then
    needs `use_coords=True`); `step_callback(info)` after every step (step, nimg, net, ema, seconds)
    ends training when it returns true, for benchmarks and notebooks. `phema_kwargs` (PowerEMA's
    `stds`) tracks post-hoc EMA profiles, `metrics_kwargs` (TickMetrics's) scores the EMA networks
    at ticks, `logger_kwargs` (live_log.open_logger's) mirrors the stats to TensorBoard or wandb."""
    start_time = time.time()
    torch.manual_seed(misc.seed_to_int(seed, 1))  # the same initial weights on every rank
    np.random.seed(misc.seed_to_int(seed, 2, dist.get_rank()) % (1 << 32))
    set_backends(cudnn_benchmark, deterministic)
    if device.type == 'cpu':
        misc.keep_freed_memory()

    world = dist.get_world_size()
    batch_gpu_total = batch_size // world
    if batch_gpu is None or batch_gpu > batch_gpu_total:
        batch_gpu = batch_gpu_total
    rounds = batch_gpu_total // batch_gpu
    assert batch_size == batch_gpu * rounds * world, 'build_config checks the batch divisibility'

    dist.print0('Loading data set...')
    dataset = dnnlib.construct_class_by_name(**dataset_kwargs)
    encoder = dnnlib.construct_class_by_name(**encoder_kwargs) if encoder_kwargs else None
    if encoder is not None:
        encoder.init(device)
        encoder.fit(dataset)
        dist.print0(f'Latents: {encoder.describe()}')

    net_resolution, net_channels = network_shape(dataset, encoder_kwargs)
    dist.print0('Constructing network...')
    net = dnnlib.construct_class_by_name(**network_kwargs, img_resolution=net_resolution, img_channels=net_channels,
                                         label_dim=dataset.label_dim)
    net.train().requires_grad_(True).to(device)

    schedule = None
    if patch_kwargs is not None:
        schedule = patch_lib.PatchSchedule(net_resolution, seed=seed, **patch_kwargs)
        rectangles = any(not isinstance(s, int) for s in schedule.patch_sizes)
        dist.print0(f'Patch sizes{" (WxH)" if rectangles else ""}:',
                    ', '.join(f'{patch_lib.shape_name(s)} (p={p:.3f}, x{schedule.batch_mul(s)} images)'
                              for s, p in zip(schedule.patch_sizes, schedule.probs)))
        if schedule.real_p_end is not None:
            dist.print0(f'Full-image probability moves from {schedule.real_p} to {schedule.real_p_end} over training')

    dist.print0(f'Network parameters: {misc.count_parameters(net):,}')
    dist.print0('Setting up optimizer...')
    loss_fn = dnnlib.construct_class_by_name(**loss_kwargs)
    optimizer = build_optimizer(net, optimizer_kwargs)
    augment_pipe = dnnlib.construct_class_by_name(**augment_kwargs) if augment_kwargs is not None else None
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    phema = phema_lib.PowerEMA(net, **phema_kwargs) if phema_kwargs else None
    torch.manual_seed(misc.seed_to_int(seed, 5, dist.get_rank()))  # dropout differs between ranks

    nimg, step, cur_tick, start_block, stats_records = 0, 0, 0, 0, []
    if resume_pkl is not None:
        dist.print0(f'Loading network weights from "{resume_pkl}"...')
        source, _decoder = checkpoints.load_network(resume_pkl, option='--transfer', trust=trust_pickle)
        checkpoints.transfer_weights(source, net)
        checkpoints.transfer_weights(source, ema)
        del source
    if resume_state is not None:
        dist.print0(f'Resuming from "{resume_state}"...')
        state = load_state(resume_state)
        try:
            net.load_state_dict(state['net'])
            ema.load_state_dict(state['ema'])
            load_optimizer_state(optimizer, state['optimizer_state'])
            if phema is not None:
                phema.load_state_dict(state.get('phema'))
        except (RuntimeError, ValueError, KeyError) as err:
            raise UserError(f'--resume: "{resume_state}" does not fit this network ({str(err).strip().splitlines()[0]})') from None
        nimg, step, cur_tick, start_block = state['nimg'], state['step'], state['tick'], state['blocks_consumed']
        stats_records = list(state.get('stats', []))
        rng_states = state.get('rng_states', [])
        if dist.get_rank() < len(rng_states):
            _set_rng_state(rng_states[dist.get_rank()], device)
        del state

    ddp = compile_for_training(net, len(schedule.patch_sizes) if schedule else 1) if compile_network else net
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(ddp, device_ids=[device] if device.type == 'cuda' else None,
                                                        broadcast_buffers=False)

    data_iter, first_block = build_data_loader(dataset, batch_gpu, seed, start_block, data_loader_kwargs)
    rank_blocks_taken = 0
    blocks_consumed = start_block
    scorer = train_metrics.TickMetrics(dataset_kwargs, device=device, encoder=encoder, **metrics_kwargs) if metrics_kwargs else None
    live = live_log.open_logger(run_dir, resume_nimg=nimg if resume_state else None, **logger_kwargs) if logger_kwargs else None
    if dist.get_rank() == 0:
        write_stats(run_dir, stats_records)
        if sample_grid and resume_state is None:
            save_reals_grid(run_dir, dataset, encoder)

    dist.print0(f'Training for {total_kimg} kimg...')
    dist.print0()
    tick_start_nimg = nimg
    compiled_sizes = set()
    tick_start_time = time.time()
    maintenance_time = tick_start_time - start_time
    dist.barrier()
    train_start_time = time.time()
    while True:
        patch_size, batch_mul, weight = None, 1, 1
        if schedule is not None:
            patch_size = schedule.size_for_step(step, nimg / max(total_kimg * 1000, 1))
            batch_mul, weight = schedule.batch_mul(patch_size), schedule.loss_weight(patch_size)
        images_per_rank = batch_gpu * rounds * batch_mul
        if compile_network and patch_size not in compiled_sizes:
            compiled_sizes.add(patch_size)
            size = patch_lib.shape_name(patch_size if patch_size is not None else net_resolution)
            dist.print0(f'Compiling the network for inputs of size {size} (once per size; a minute or more on a CPU)...')

        optimizer.zero_grad(set_to_none=True)
        for round_idx in range(rounds):
            blocks, block_ids = [], []
            for _ in range(batch_mul):
                blocks.append(next(data_iter))
                block_ids.append(first_block + rank_blocks_taken * world)
                rank_blocks_taken += 1
            images, labels = blocks_to_device(blocks, device)
            rng = misc.BatchRNG([misc.seed_to_int(seed, 3, b) for b in block_ids], rows_per_seed=batch_gpu, device=device)
            if encoder is not None:
                images = encoder.encode(images, rng)
            else:
                images = images_to_float(images, device)
            with misc.ddp_sync(ddp, sync=(round_idx == rounds - 1)):
                loss = loss_fn(net=ddp, images=images, labels=labels, augment_pipe=augment_pipe,
                               patch_size=patch_size, rng=rng)
                per_image = loss.detach().mean(dim=(1, 2, 3))
                training_stats.report('Loss/loss', per_image)
                if patch_size is not None:
                    training_stats.report(f'Loss/patch{patch_lib.shape_name(patch_size)}', per_image)
                loss.sum().mul(loss_scaling * weight / images_per_rank).backward()

        for group in optimizer.param_groups:
            group['lr'] = learning_rate(optimizer_kwargs['lr'], nimg, lr_rampup_kimg, lr_decay_kimg)
        sanitize_gradients(net)
        optimizer.step()

        images_in_step = batch_size * batch_mul
        nimg += images_in_step
        blocks_consumed += rounds * batch_mul * world
        step += 1
        update_ema(ema, net, images_in_step, nimg, ema_halflife_kimg, ema_rampup_ratio)
        if phema is not None:
            phema.update(net, step)

        done = nimg >= total_kimg * 1000
        if step_callback is not None:
            info = dnnlib.EasyDict(step=step, nimg=nimg, net=net, ema=ema, seconds=time.time() - train_start_time)
            done = bool(step_callback(info)) or done
        if not done and cur_tick != 0 and nimg < tick_start_nimg + kimg_per_tick * 1000:
            continue

        tick_end_time = time.time()
        training_stats.default_collector.update()
        collected = training_stats.default_collector
        sec_per_tick = tick_end_time - tick_start_time
        fields = dict(
            tick=cur_tick, kimg=nimg / 1e3, step=step, time=tick_end_time - start_time,
            sec_per_tick=sec_per_tick, sec_per_kimg=sec_per_tick / max(nimg - tick_start_nimg, 1) * 1e3,
            maintenance_sec=maintenance_time, cpumem_gb=psutil.Process(os.getpid()).memory_info().rss / 2**30,
            gpumem_gb=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == 'cuda' else None,
            loss=collected.mean('Loss/loss'), lr=optimizer.param_groups[0]['lr'],
            loss_by_patch={name.split('patch')[-1]: collected.mean(name) for name in collected.names()
                           if name.startswith('Loss/patch') and collected.num(name) > 0},
            timestamp=time.time())
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(device)
        if scorer is not None and scorer.due(cur_tick, done):
            fields['metrics'] = scorer.score(run_dir, ema, phema, stats_records + [fields])
        dist.print0(format_tick_line(fields))
        stats_records.append(fields)

        if dist.get_rank() == 0:
            append_stats(run_dir, fields)
        if time_limit_min is not None and not done:  # rank 0's clock decides, so all ranks stop at the same tick
            done = dist.broadcast_object(tick_end_time - start_time >= time_limit_min * 60)

        if snapshot_ticks is not None and (done or cur_tick % snapshot_ticks == 0):
            save_snapshot(run_dir, nimg // 1000, ema, loss_fn, augment_pipe, dataset_kwargs, encoder)
            if phema is not None and dist.get_rank() == 0:
                phema.save(run_dir, nimg // 1000, step, nimg)
            if sample_grid and dist.get_rank() == 0:
                save_sample_grid(run_dir, nimg // 1000, ema, device, encoder)
            if dist.get_rank() == 0:
                write_loss_plot(run_dir, stats_records)
        if live is not None:
            live.log(fields, os.path.join(run_dir, f'samples-{int(nimg // 1000):06d}.png'))

        if state_dump_ticks is not None and (done or (cur_tick % state_dump_ticks == 0 and cur_tick != 0)):
            rng_states = dist.all_gather_object(_rng_state(device))
            if dist.get_rank() == 0:
                state = dict(net=net.state_dict(), ema=ema.state_dict(), optimizer_state=optimizer.state_dict(),
                             nimg=nimg, step=step, tick=cur_tick + 1, blocks_consumed=blocks_consumed,
                             rng_states=rng_states, stats=json.loads(json.dumps(stats_records)),
                             network_kwargs=json.loads(json.dumps(network_kwargs)), batch_size=batch_size)
                if phema is not None:
                    state['phema'] = phema.state_dict(step)
                with atomic_write(os.path.join(run_dir, state_name(nimg // 1000)), 'wb') as f:
                    torch.save(state, f)
        dist.barrier()

        cur_tick += 1
        tick_start_nimg = nimg
        tick_start_time = time.time()
        maintenance_time = tick_start_time - tick_end_time
        if done:
            break

    if live is not None:
        live.close()
    dist.print0()
    dist.print0('Exiting...')
