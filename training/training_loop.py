"""EDM's training loop with the patch schedule plugged in: a step of patch side s takes R // s
data-loader blocks per accumulation round. All randomness of an image comes from the generator of
its block, so a run does not depend on how the batch is split over ranks and rounds, and a resumed
run repeats the uninterrupted one (bit for bit on CUDA with `deterministic=True`).

The state file lives in `training.training_state`, the files a run writes in `training.run_files`,
and what the denoiser sees of the data in `training.encoders`."""

import copy
import importlib.util
import math
import os
import shutil
import time

import numpy as np
import torch

import dnnlib
from dnnlib.util import FieldError, UserError
from torch_utils import distributed as dist
from torch_utils import misc, training_stats
from training import checkpoints, encoders, run_files, trackers
from training import patch as patch_lib
from training.training_state import TrainingState, state_name


def set_backends(cudnn_benchmark, deterministic):
    """EDM's numerics (full fp32 matmuls and convolutions, fp16 sums not reduced in fp16), and
    with `deterministic` the same result on every CUDA run: deterministic kernels, no cuDNN
    autotuning, a fixed cuBLAS workspace and unfused attention (slower; docs/gpu.md)."""
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


def check_compile_support(device):
    """Raises UserError unless torch.compile can build kernels for `device`: TorchInductor needs
    a C++ compiler for CPU kernels and Triton for CUDA kernels."""
    if device.type == 'cuda':
        if importlib.util.find_spec('triton') is None:
            raise FieldError('compile_network', 'CUDA kernels need the triton package (pip install triton)')
    elif not any(shutil.which(cxx) for cxx in (os.environ.get('CXX'), 'g++', 'c++', 'clang++') if cxx):
        raise FieldError('compile_network', 'compiling for the CPU needs a C++ compiler (g++ or clang++) on the PATH')


def compile_for_training(net, shapes):
    """`net` compiled by torch.compile (TorchInductor) for training: one static graph per input
    shape (one per patch size), which fuses the normalisations, activations and casts around the
    convolutions. Snapshots and the EMA keep using `net` itself."""
    misc.cpu_has_bf16()  # cached now: reading /proc/cpuinfo while tracing would break the graph
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, shapes + 2)
    return torch.compile(net, dynamic=False)


def build_optimizer(net, optimizer_kwargs):
    """The optimizer of `optimizer_kwargs`; Adam runs its fused kernel unless they say otherwise: one
    pass over all parameters instead of several small operations per tensor."""
    kwargs = dict(optimizer_kwargs)
    if kwargs['class_name'] == 'torch.optim.Adam':
        kwargs.setdefault('fused', True)
    return dnnlib.construct_class_by_name(params=net.parameters(), **kwargs)


def build_schedule(patch_kwargs, resolution, seed):
    """The patch schedule of `patch_kwargs` (None: full images), announced."""
    if patch_kwargs is None:
        return None
    schedule = patch_lib.PatchSchedule(resolution, seed=seed, **patch_kwargs)
    rectangles = any(not isinstance(s, int) for s in schedule.patch_sizes)
    dist.print0(f'Patch sizes{" (WxH)" if rectangles else ""}:',
                ', '.join(f'{patch_lib.shape_name(s)} (p={p:.3f}, x{schedule.batch_mul(s)} images)'
                          for s, p in zip(schedule.patch_sizes, schedule.probs)))
    if schedule.real_p_end is not None:
        dist.print0(f'Full-image probability moves from {schedule.real_p} to {schedule.real_p_end} over training')
    return schedule


def learning_rate(base, nimg, rampup_kimg, decay_kimg):
    """EDM's linear warm-up over `rampup_kimg` (0: none, where EDM still gave the first step rate 0),
    then, with `decay_kimg` > 0, EDM2's inverse-square-root decay: base / √(nimg / decay) once nimg
    passes `decay_kimg` (a short run ends at a lower rate without having to know its length, which a
    time limit leaves open)."""
    lr = base * min(nimg / (rampup_kimg * 1000), 1) if rampup_kimg > 0 else base
    if decay_kimg > 0:
        lr /= math.sqrt(max(nimg / (decay_kimg * 1000), 1))
    return lr


class TensorLists:
    """The parameter and buffer lists of the network and its EMA, taken once: walking the module
    tree for them every step costs more host time than the updates themselves on small networks."""

    def __init__(self, net, ema):
        self.params, self.buffers = list(net.parameters()), list(net.buffers())
        self.ema_params, self.ema_buffers = list(ema.parameters()), list(ema.buffers())


def update_ema(tensors, images_in_step, nimg, ema_halflife_kimg, ema_rampup_ratio):
    """ema ← β·ema + (1 − β)·net with β = 0.5^(images in step / h), h = min(half-life, ratio·nimg)."""
    halflife = ema_halflife_kimg * 1000
    if ema_rampup_ratio is not None:
        halflife = min(halflife, nimg * ema_rampup_ratio)
    beta = 0.5 ** (images_in_step / max(halflife, 1e-8))
    with torch.no_grad():
        torch._foreach_lerp_(tensors.ema_params, tensors.params, 1 - beta)
        for b_ema, b_net in zip(tensors.ema_buffers, tensors.buffers):
            b_ema.copy_(b_net)


def training_step(run, state, patch_size):
    """One optimizer step on patches of `patch_size` (None: full images): `rounds` accumulation
    rounds of batch_mul blocks each, then Adam, the EMA and the trackers."""
    c = run.options
    batch_mul, weight = (run.schedule.batch_mul(patch_size), run.schedule.loss_weight(patch_size)) if run.schedule else (1, 1)
    images_per_rank = run.loader.block_size * c.rounds * batch_mul
    state.optimizer.zero_grad(set_to_none=True)
    for round_idx in range(c.rounds):
        block_ids, items, labels = run.loader.take(batch_mul)
        rng = misc.BatchRNG([misc.seed_to_int(c.seed, 3, b) for b in block_ids], rows_per_seed=run.loader.block_size,
                            device=run.device)
        images = run.encoder.encode(items, rng)
        with misc.ddp_sync(run.ddp, sync=(round_idx == c.rounds - 1)):
            loss = run.loss_fn(net=run.ddp, images=images, labels=labels, augment_pipe=run.augment_pipe,
                               patch_size=patch_size, rng=rng)
            run.losses.report(loss, patch_size)
            loss.sum().mul(c.loss_scaling * weight / images_per_rank).backward()

    for group in state.optimizer.param_groups:
        group['lr'] = learning_rate(c.optimizer_kwargs['lr'], state.nimg, c.lr_rampup_kimg, c.lr_decay_kimg)
    for param in run.tensors.params:  # NaN → 0 and ±∞ → ±1e5, so one bad batch cannot poison Adam
        if param.grad is not None:
            misc.nan_to_num_(param.grad)
    state.optimizer.step()

    images_in_step = state.batch_size * batch_mul
    state.nimg += images_in_step
    state.step += 1
    state.blocks_consumed = run.loader.blocks_consumed
    update_ema(run.tensors, images_in_step, state.nimg, c.ema_halflife_kimg, c.ema_rampup_ratio)
    for tracker in state.parts.values():
        tracker.update(state.net, state.step, state.nimg)


def end_tick(run, state, done):
    """The tick's record (printed, appended to stats.jsonl), then the snapshot and the state when
    due. Returns whether training ends here (at the end of training or of the time limit)."""
    c = run.options
    tick = state.tick
    training_stats.default_collector.update()
    record = run_files.tick_record(tick, state.nimg, state.step, run.clock.end_tick(state.nimg),
                                   run.losses.collect(training_stats.default_collector),
                                   state.optimizer.param_groups[0]['lr'], run.device)
    for tracker in run.trackers:
        tracker.tick(record, state.stats, done)
    dist.print0(run_files.format_tick_line(record))
    state.stats.append(record)
    if dist.get_rank() == 0:
        run_files.append_stats(c.run_dir, record)
    if c.time_limit_min is not None and not done:  # rank 0's clock decides, so all ranks stop at the same tick
        done = dist.broadcast_object(record['time'] >= c.time_limit_min * 60)

    # Save network snapshot.
    if c.snapshot_ticks is not None and (done or tick % c.snapshot_ticks == 0):
        run_files.save_snapshot(c.run_dir, state.nimg // 1000, state.ema, run.loss_fn, run.augment_pipe, c.dataset_kwargs,
                                run.encoder.snapshot_decoder())
        for tracker in run.trackers:
            tracker.snapshot(c.run_dir, state.nimg // 1000, state.nimg)
        if dist.get_rank() == 0:
            if c.sample_grid:
                run_files.save_sample_grid(c.run_dir, state.nimg // 1000, state.ema, run.device, run.encoder)
            run_files.write_loss_plot(c.run_dir, state.stats)
    for tracker in run.trackers:
        tracker.after_tick(record, c.run_dir)

    # Save full dump of the training state.
    state.tick = tick + 1
    if c.state_dump_ticks is not None and (done or (tick % c.state_dump_ticks == 0 and tick != 0)):
        state.save(os.path.join(c.run_dir, state_name(state.nimg // 1000)), run.device)
    dist.barrier()
    run.clock.start_tick(state.nimg)
    return done


def training_loop(
    run_dir='.', dataset_kwargs=None, data_loader_kwargs=None, network_kwargs=None, loss_kwargs=None,
    optimizer_kwargs=None, augment_kwargs=None, patch_kwargs=None, encoder_kwargs=None,
    seed=0, batch_size=512, batch_gpu=None, total_kimg=200000,
    ema_halflife_kimg=500, ema_rampup_ratio=0.05, lr_rampup_kimg=10000, lr_decay_kimg=0, loss_scaling=1,
    kimg_per_tick=50, snapshot_ticks=50, state_dump_ticks=500, sample_grid=True,
    resume_pkl=None, trust_pickle=False, resume_state=None,
    cudnn_benchmark=True, compile_network=False, deterministic=False,
    device=torch.device('cpu'), step_callback=None, time_limit_min=None,
    phema_kwargs=None, metrics_kwargs=None, logger_kwargs=None,
):
    """Trains a denoiser with the final options of train.py's `build_config` (`training_options.json`),
    which it trusts (`trust_pickle`: unpickle `resume_pkl` fully). `patch_kwargs`, PatchSchedule's
    arguments, switches patches on (the network then needs `use_coords=True`); `encoder_kwargs`
    picks latents (None: what the data set holds); `step_callback(info)` after every step (step,
    nimg, net, ema, seconds) ends training when it returns true, for benchmarks and notebooks. `phema_kwargs` (PowerEMA's `stds`) tracks post-hoc
    EMA profiles, `metrics_kwargs` (TickMetrics's) scores the EMA networks at ticks, `logger_kwargs`
    (live_log.open_logger's) mirrors the stats to TensorBoard or wandb (`training.trackers`)."""
    options = dnnlib.EasyDict(locals())
    start_time = time.time()
    torch.manual_seed(misc.seed_to_int(seed, 1))  # the same initial weights on every rank
    np.random.seed(misc.seed_to_int(seed, 2, dist.get_rank()) % (1 << 32))
    set_backends(cudnn_benchmark, deterministic)
    if device.type == 'cpu':
        misc.keep_freed_memory()
    world = dist.get_world_size()
    batch_gpu = min(batch_gpu or batch_size // world, batch_size // world)
    options.rounds = batch_size // world // batch_gpu
    assert batch_size == batch_gpu * options.rounds * world, 'build_config checks the batch divisibility'

    # Load data set.
    dist.print0('Loading data set...')
    dataset = dnnlib.construct_class_by_name(**dataset_kwargs)
    encoder = encoders.build_encoder(dataset, encoder_kwargs)
    encoder.init(device)
    encoder.fit(dataset)
    dist.print0(encoder.describe())

    # Construct network.
    resolution, channels = encoder.latent_shape(dataset)
    dist.print0('Constructing network...')
    net = dnnlib.construct_class_by_name(**network_kwargs, img_resolution=resolution, img_channels=channels,
                                         label_dim=dataset.label_dim)
    net.train().requires_grad_(True).to(device)
    schedule = build_schedule(patch_kwargs, resolution, seed)
    dist.print0(f'Network parameters: {misc.count_parameters(net):,}')

    # Setup optimizer.
    dist.print0('Setting up optimizer...')
    loss_fn = dnnlib.construct_class_by_name(**loss_kwargs)
    optimizer = build_optimizer(net, optimizer_kwargs)
    augment_pipe = dnnlib.construct_class_by_name(**augment_kwargs) if augment_kwargs is not None else None
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    parts = trackers.state_parts(net, phema_kwargs)
    torch.manual_seed(misc.seed_to_int(seed, 5, dist.get_rank()))  # dropout differs between ranks

    # Resume training from previous snapshot.
    state = TrainingState(net, ema, optimizer, network_kwargs, batch_size, parts)
    if resume_pkl is not None:
        dist.print0(f'Loading network weights from "{resume_pkl}"...')
        source, _decoder = checkpoints.load_network(resume_pkl, 'resume_pkl', trust=trust_pickle)
        checkpoints.transfer_weights(source, net)
        checkpoints.transfer_weights(source, ema)
        del source
    if resume_state is not None:
        dist.print0(f'Resuming from "{resume_state}"...')
        state.load(resume_state, device)

    # Distribute across processes.
    ddp = compile_for_training(net, len(schedule.patch_sizes) if schedule else 1) if compile_network else net
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(ddp, device_ids=[device] if device.type == 'cuda' else None,
                                                        broadcast_buffers=False)
    loader = misc.BlockLoader(dataset, batch_gpu, seed, dist.get_rank(), world, state.blocks_consumed, device,
                              data_loader_kwargs)
    resume_nimg = state.nimg if resume_state is not None else None
    reporters = trackers.reporters(run_dir, dataset_kwargs, device, encoder, ema, parts, resume_nimg, metrics_kwargs,
                                   logger_kwargs)
    if dist.get_rank() == 0:
        run_files.write_stats(run_dir, state.stats)
        if sample_grid and resume_state is None:
            run_files.save_reals_grid(run_dir, dataset, encoder)

    # Train.
    dist.print0(f'Training for {total_kimg} kimg...')
    dist.print0()
    run = dnnlib.EasyDict(options=options, device=device, ddp=ddp, loss_fn=loss_fn, augment_pipe=augment_pipe,
                          encoder=encoder, schedule=schedule, loader=loader, losses=run_files.LossStats(), tensors=TensorLists(net, ema),
                          trackers=[*parts.values(), *reporters], clock=run_files.TickClock(start_time, state.nimg))
    compiled_sizes = set()
    dist.barrier()
    train_start_time = time.time()
    while True:
        patch_size = schedule.size_for_step(state.step, state.nimg / max(total_kimg * 1000, 1)) if schedule else None
        if compile_network and patch_size not in compiled_sizes:
            compiled_sizes.add(patch_size)
            size = patch_lib.shape_name(patch_size if patch_size is not None else resolution)
            dist.print0(f'Compiling the network for inputs of size {size} (once per size; slow on a CPU)...')
        training_step(run, state, patch_size)

        done = state.nimg >= total_kimg * 1000
        if step_callback is not None:
            info = dnnlib.EasyDict(step=state.step, nimg=state.nimg, net=net, ema=ema, seconds=time.time() - train_start_time)
            done = bool(step_callback(info)) or done
        if not done and state.tick != 0 and state.nimg < run.clock.tick_start_nimg + kimg_per_tick * 1000:
            continue
        if end_tick(run, state, done):
            break

    for tracker in run.trackers:
        tracker.close()
    dist.print0()
    dist.print0('Exiting...')
