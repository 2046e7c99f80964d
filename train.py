"""Train a Patch Diffusion (or plain EDM) denoiser.

Runs as one process (`python train.py ...`) or as N processes
(`torchrun --standalone --nproc_per_node=N train.py ...`), on CPUs (gloo) or GPUs (nccl).
Options and defaults are EDM's, plus the patch options of Patch Diffusion."""

import json
import os
import re

import click
import torch

import dnnlib
from dnnlib.util import UserError, atomic_write
from torch_utils import distributed as dist
from torch_utils import misc
from training import checkpoints
from training import compile_cache
from training import dataset as dataset_lib
from training import encoders, live_log, phema, train_metrics
from training import patch as patch_lib
from training import run_dir as run_dir_lib
from training import training_loop

ARCHITECTURES = {
    'ddpmpp': dict(model_type='SongUNet', embedding_type='positional', encoder_type='standard', decoder_type='standard',
                   channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2]),
    'ncsnpp': dict(model_type='SongUNet', embedding_type='fourier', encoder_type='residual', decoder_type='standard',
                   channel_mult_noise=2, resample_filter=[1, 3, 3, 1], model_channels=128, channel_mult=[2, 2, 2]),
    'adm': dict(model_type='DhariwalUNet', model_channels=192, channel_mult=[1, 2, 3, 4]),
}

PRECONDITIONINGS = {
    'vp': ('training.networks.VPPrecond', 'training.loss.VPLoss'),
    've': ('training.networks.VEPrecond', 'training.loss.VELoss'),
    'edm': ('training.networks.EDMPrecond', 'training.loss.EDMLoss'),
}


def parse_int_list(text):
    """'1,2,4' or '0-3' → list of ints (as EDM's --cres)."""
    if isinstance(text, list):
        return text
    values = []
    for part in text.split(','):
        match = re.fullmatch(r'^(\d+)-(\d+)$', part.strip())
        if match:
            values.extend(range(int(match.group(1)), int(match.group(2)) + 1))
        else:
            values.append(int(part))
    return values


def parse_attn(text):
    """'16', '32,16' or 'none' → resolutions that get self-attention (EDM fixes them per architecture)."""
    if isinstance(text, list):
        return text
    return [] if text.strip().lower() == 'none' else parse_int_list(text)


class AttnList(click.ParamType):
    name = 'LIST|none'

    def convert(self, value, param, ctx):
        try:
            values = parse_attn(value)
        except ValueError:
            self.fail(f'"{value}" is not "none" or a comma-separated list of resolutions', param, ctx)
        if any(v < 1 for v in values):
            self.fail(f'"{value}": resolutions must be positive', param, ctx)
        return values


class IntList(click.ParamType):
    name = 'LIST'

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, list):
            return value
        try:
            return parse_int_list(value)
        except ValueError:
            self.fail(f'"{value}" is not a comma-separated list of integers', param, ctx)


def dataset_options(data, use_labels, xflip, cache):
    """Data-set kwargs for `training.dataset`, opening the data set once to validate it. A data
    set of precomputed latents (dataset_tool.py --encoder=vae) gets `LatentFolderDataset`."""
    if not os.path.exists(data):
        raise UserError(f'--data: "{data}" does not exist')
    holds_latents = dataset_lib.latent_info(data) is not None
    class_name = 'training.dataset.LatentFolderDataset' if holds_latents else 'training.dataset.ImageFolderDataset'
    if dataset_lib.array_info(data) is not None:
        class_name = 'training.dataset.ArrayFolderDataset'
    kwargs = dnnlib.EasyDict(class_name=class_name, path=data, use_labels=use_labels, xflip=xflip, cache=cache)
    dataset = dnnlib.construct_class_by_name(**kwargs)
    if use_labels and not dataset.has_labels:
        raise UserError(f'--cond: data set "{data}" has no labels (dataset.json with "labels")')
    kwargs.resolution = dataset.resolution
    kwargs.max_size = len(dataset)
    return kwargs, dataset


def encoder_options(opts, dataset):
    """`encoder_kwargs` of the training loop: None for pixel-space training, else the Stable
    Diffusion VAE encoder. A data set of precomputed latents implies --train_on_latents=1 and
    names its VAE; --vae may point elsewhere (another copy of the same VAE)."""
    info = getattr(dataset, 'latent_info', None)
    if not opts.train_on_latents and info is None:
        for name, value in (('--vae', opts.vae), ('--latent-norm', opts.latent_norm)):
            if value is not None:
                raise UserError(f'{name}: only applies with --train_on_latents=1')
        return None
    if info is not None and opts.vae is None:
        vae = info.get('vae', encoders.DEFAULT_VAE)
    else:
        vae = encoders.check_vae_name(opts.vae or encoders.DEFAULT_VAE)
    return dnnlib.EasyDict(class_name='training.encoders.StabilityVAEEncoder', vae_name=vae,
                           latent_norm=opts.latent_norm or 'scale')


def patch_options(opts, resolution, down_factor, latent):
    """`patch_kwargs` of the training loop, the one switch for patches: None for plain EDM, else
    the final arguments of `training.patch.PatchSchedule`, patch sizes parsed and checked."""
    if not opts.patch:
        return None
    sizes = patch_lib.parse_patch_sizes(opts.patch_sizes, resolution, down_factor, latent)
    return dnnlib.EasyDict(patch_sizes=sizes, real_p=opts.real_p, progressive=opts.progressive,
                           real_p_end=opts.real_p_end, loss_norm=opts.loss_norm)


def network_parameters(c):
    """Parameter count of the network that `build_config`'s options build (for --dry-run)."""
    dataset = dnnlib.construct_class_by_name(**c.dataset_kwargs)
    resolution, channels = training_loop.network_shape(dataset, c.encoder_kwargs)
    net = dnnlib.construct_class_by_name(**c.network_kwargs, img_resolution=resolution, img_channels=channels,
                                         label_dim=dataset.label_dim)
    return misc.count_parameters(net)


EVALUATION_OPTIONS = dict(std='--ema-std', stds='--ema-std', num='--metrics-num', kind='--logger')


def evaluation_options(opts, c):
    """`phema_kwargs`, `metrics_kwargs` and `logger_kwargs` of the training loop, each set only when
    asked for, so that a run without them has the same training options as before."""
    with dnnlib.util.option_errors(main, names=EVALUATION_OPTIONS):
        if opts.ema_std is not None:
            c.phema_kwargs = dnnlib.EasyDict(stds=phema.parse_stds(opts.ema_std))
        if opts.metrics is not None:
            train_metrics.check_data(c.dataset_kwargs)
            c.metrics_kwargs = dnnlib.EasyDict(metrics=train_metrics.parse_metrics(opts.metrics), num=opts.metrics_num,
                                               every=opts.metrics_every)
        if opts.logger != 'none':
            live_log.check_kind(opts.logger)
            c.logger_kwargs = dnnlib.EasyDict(kind=opts.logger)


def build_config(opts, world_size):
    """Turns the command-line options into the keyword arguments of `training_loop`, validating
    everything that can be checked before any file is written."""
    c = dnnlib.EasyDict()
    dnnlib.util.check_finite_options(main, opts)  # --duration=nan would train forever
    if opts.precond == 'pedm' and opts.patch is False:
        raise UserError('--patch=0: --precond=pedm means patches; use --precond=edm for plain EDM')
    if opts.precond in (None, 'pedm'):  # the original release's default: EDM with patches
        opts.precond, opts.patch = 'edm', opts.patch is not False
    opts.patch = bool(opts.patch)  # --precond=edm|vp|ve: plain EDM unless --patch=1
    patch_lib.check_schedule_options(opts.real_p, opts.real_p_end, opts.progressive)
    if opts.fp16 and opts.bf16:
        raise UserError('--fp16 and --bf16: choose one')

    c.dataset_kwargs, dataset = dataset_options(opts.data, opts.cond, opts.xflip, opts.cache)
    dataset_name = dataset.name
    c.encoder_kwargs = encoder_options(opts, dataset)
    c.data_loader_kwargs = dnnlib.EasyDict(pin_memory=True, num_workers=opts.workers, prefetch_factor=2,
                                           persistent_workers=opts.workers > 0)

    arch = dict(ARCHITECTURES[opts.arch])
    if opts.cbase is not None:
        arch['model_channels'] = opts.cbase
    if opts.cres is not None:
        if not opts.cres or min(opts.cres) < 1:
            raise UserError(f'--cres={",".join(map(str, opts.cres))}: channel multipliers must be 1 or more')
        arch['channel_mult'] = opts.cres
    if opts.blocks is not None:
        arch['num_blocks'] = opts.blocks
    if opts.attn is not None:
        arch['attn_resolutions'] = opts.attn
    precond_class, loss_class = PRECONDITIONINGS[opts.precond]
    c.network_kwargs = dnnlib.EasyDict(class_name=precond_class, **arch, dropout=opts.dropout, use_fp16=opts.fp16)
    if opts.bf16:
        c.network_kwargs.use_bf16 = True
    if opts.label_dropout:
        c.network_kwargs.label_dropout = opts.label_dropout
    c.loss_kwargs = dnnlib.EasyDict(class_name=loss_class)
    if opts.precond == 'edm':
        c.loss_kwargs.update(P_mean=opts.P_mean, P_std=opts.P_std, sigma_data=opts.sigma_data)
        c.network_kwargs.sigma_data = opts.sigma_data

    down_factor = 2 ** (len(arch['channel_mult']) - 1)
    resolution, _channels = training_loop.network_shape(dataset, c.encoder_kwargs)
    height, width = patch_lib.image_hw(resolution)
    if height % down_factor != 0 or width % down_factor != 0:
        word, size = ('side', f'{height}') if height == width else ('size', f'{width}x{height}')
        side = f'latent {word} {size} (image {word} / 8)' if c.encoder_kwargs is not None else f'resolution {size}'
        raise UserError(f'--data: {side} is not divisible by the network\'s down-sampling factor '
                        f'{down_factor} (--arch={opts.arch}, channel_mult={arch["channel_mult"]})')

    c.patch_kwargs = patch_options(opts, resolution, down_factor, latent=c.encoder_kwargs is not None)
    if c.patch_kwargs is not None:  # patches need the coordinate channels
        c.network_kwargs.use_coords = True
        if opts.pos_embed:
            c.network_kwargs.pos_embed = opts.pos_embed

    augment = opts.augment if opts.augment is not None else (0.0 if opts.patch else 0.12)
    c.augment_kwargs = None
    if augment:
        c.augment_kwargs = dnnlib.EasyDict(class_name='training.augment.AugmentPipe', p=augment, xflip=1e8, yflip=1,
                                           scale=1, rotate_frac=1, aniso=1, translate_frac=1)
        pipe = dnnlib.construct_class_by_name(**c.augment_kwargs)
        c.network_kwargs.augment_dim = pipe.label_dim

    c.optimizer_kwargs = dnnlib.EasyDict(class_name='torch.optim.Adam', lr=opts.lr, betas=[0.9, 0.999], eps=1e-8)
    c.total_kimg = opts.duration * 1000
    c.ema_halflife_kimg = opts.ema * 1000
    c.lr_rampup_kimg = opts.lr_rampup
    c.lr_decay_kimg = opts.lr_decay
    c.batch_size = opts.batch
    c.batch_gpu = opts.batch_gpu
    if opts.batch_gpu is not None and opts.batch % (opts.batch_gpu * world_size) != 0:
        raise UserError(f'--batch={opts.batch} is not divisible by --batch-gpu={opts.batch_gpu} times {world_size} processes')
    if opts.batch % world_size != 0:
        raise UserError(f'--batch={opts.batch} is not divisible by the number of processes ({world_size})')
    c.loss_scaling = opts.ls
    c.cudnn_benchmark = opts.bench
    c.compile_network = opts.compile_net
    c.deterministic = opts.deterministic
    c.kimg_per_tick = opts.tick
    if opts.time_limit is not None:
        c.time_limit_min = opts.time_limit
    c.snapshot_ticks = opts.snap
    c.state_dump_ticks = opts.dump

    if opts.transfer is not None:
        if opts.resume is not None:
            raise UserError('--transfer and --resume: choose one')
        checkpoints.check_network_file(opts.transfer, '--transfer', trust=opts.trust_pickle)
        c.resume_pkl = opts.transfer
        c.trust_pickle = opts.trust_pickle
        c.ema_rampup_ratio = None  # as in EDM: the EMA starts from the pretrained weights
    elif opts.trust_pickle:
        raise UserError('--trust-pickle: applies only to --transfer')
    if opts.resume is not None:
        c.resume_state = run_dir_lib.pick_resume_state(opts.resume, c)

    cond = 'cond' if opts.cond else 'uncond'
    precond_name = 'pedm' if opts.patch and opts.precond == 'edm' else opts.precond + ('-patch' if opts.patch else '')
    dtype = 'fp16' if opts.fp16 else 'bf16' if opts.bf16 else 'fp32'
    latents = '-latents' if c.encoder_kwargs is not None else ''
    desc = f'{dataset_name:s}-{cond}-{opts.arch}-{precond_name}{latents}-gpus{world_size}-batch{opts.batch}-{dtype}'
    if opts.desc is not None:
        desc += f'-{opts.desc}'
    evaluation_options(opts, c)
    return c, desc


@click.command(context_settings=dict(show_default=True, max_content_width=100))
@click.option('--outdir', help='Where to save the results', metavar='DIR', type=str, required=True)
@click.option('--data', help='Path to the dataset (folder or zip)', metavar='ZIP|DIR', type=str, required=True)
@click.option('--cond', help='Train class-conditional model', metavar='BOOL', type=bool, default=False)
@click.option('--arch', help='Network architecture', type=click.Choice(['ddpmpp', 'ncsnpp', 'adm']), default='ddpmpp')
@click.option('--precond', help='Preconditioning & loss: edm|vp|ve as in EDM (full images unless --patch=1), pedm = edm with patches  [default: pedm]',
              type=click.Choice(['vp', 've', 'edm', 'pedm']))
@click.option('--patch', help='Train on patches with coordinate channels  [default: 1 for pedm, 0 for edm|vp|ve]', metavar='BOOL', type=bool)
@click.option('--real_p', help='Probability of a full-image step', metavar='FLOAT', type=float, default=patch_lib.REAL_P)
@click.option('--real_p-end', 'real_p_end', help='Full-image probability at the end, moved to linearly from --real_p  [default: constant]',
              metavar='FLOAT', type=click.FloatRange(min=0, max=1))
@click.option('--loss-norm', 'loss_norm', help='Patch-step loss: per-pixel mean x full-image pixels, or per-image pixel sum (original)',
              type=click.Choice(patch_lib.LOSS_NORMS), default=patch_lib.LOSS_NORMS[0])
@click.option('--patch-sizes', 'patch_sizes', help='Patch sides or WxH sizes [default: R/4,R/2,R, rectangles W/k x H/k; latents R/2,R]', metavar='LIST', type=str, default=None)
@click.option('--progressive', help='Small patches first, full images last, instead of a random draw', metavar='BOOL', type=bool, default=False)
@click.option('--pos-embed', 'pos_embed', help='Feed sin/cos features of the coordinates at F frequencies (0 = raw)', metavar='F',
              type=click.IntRange(min=0), default=0)
@click.option('--train_on_latents', help='Train on Stable Diffusion VAE latents (implied by a data set of latents)',
              metavar='BOOL', type=bool, default=False)
@click.option('--vae', help='VAE for latents: hub id or local folder  [default: stabilityai/sd-vae-ft-ema, or the data set\'s]',
              metavar='ID|DIR', type=str)
@click.option('--latent-norm', 'latent_norm', help='Latent normalisation: x0.18215, or per channel to std 0.5  [default: scale]',
              type=click.Choice(['scale', 'channel']))
@click.option('--duration', help='Training duration', metavar='MIMG', type=click.FloatRange(min=0, min_open=True), default=200)
@click.option('--batch', help='Total batch size (image slots per step)', metavar='INT', type=click.IntRange(min=1), default=512)
@click.option('--batch-gpu', 'batch_gpu', help='Limit batch size per process', metavar='INT', type=click.IntRange(min=1))
@click.option('--cbase', help='Channel multiplier  [default: varies]', metavar='INT', type=click.IntRange(min=1))
@click.option('--cres', help='Channels per resolution  [default: varies]', metavar='LIST', type=IntList())
@click.option('--blocks', help='Residual blocks per resolution  [default: 4, adm 3]', metavar='INT', type=click.IntRange(min=1))
@click.option('--attn', help='Resolutions with self-attention, or none  [default: 16, adm 32,16,8]', metavar='LIST', type=AttnList())
@click.option('--lr', help='Learning rate', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True), default=10e-4)
@click.option('--lr-rampup', 'lr_rampup', help='Learning-rate warm-up', metavar='KIMG', type=click.FloatRange(min=0), default=10000)
@click.option('--lr-decay', 'lr_decay', help='Inverse-square-root learning-rate decay after KIMG thousand images (0 = constant, as in EDM)',
              metavar='KIMG', type=click.FloatRange(min=0), default=0)
@click.option('--ema', help='EMA half-life', metavar='MIMG', type=click.FloatRange(min=0), default=0.5)
@click.option('--dropout', help='Dropout probability', metavar='FLOAT', type=click.FloatRange(min=0, max=1), default=0.13)
@click.option('--label-dropout', 'label_dropout', help='Class-label dropout probability (for CFG)', metavar='FLOAT',
              type=click.FloatRange(min=0, max=1), default=0)
@click.option('--augment', help='Augment probability  [default: 0.12, or 0 with patches]', metavar='FLOAT', type=click.FloatRange(min=0, max=1))
@click.option('--xflip', help='Enable dataset x-flips', metavar='BOOL', type=bool, default=False)
@click.option('--P_mean', 'P_mean', help='Mean of ln(sigma) in training (EDM)', metavar='FLOAT', type=float, default=-1.2)
@click.option('--P_std', 'P_std', help='Std of ln(sigma) in training (EDM)', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True), default=1.2)
@click.option('--sigma_data', 'sigma_data', help='Data standard deviation (EDM)', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True), default=0.5)
@click.option('--fp16', help='Enable mixed-precision training (CUDA)', metavar='BOOL', type=bool, default=False)
@click.option('--bf16', help='Enable bfloat16 network body (CUDA; CPUs with AVX512-BF16 or AMX)', metavar='BOOL', type=bool, default=False)
@click.option('--ls', help='Loss scaling', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True), default=1)
@click.option('--compile', 'compile_net', help='Compile the network with torch.compile (each patch size compiles once, ~1 min on a CPU)',
              metavar='BOOL', type=bool, default=False)
@click.option('--bench', help='Enable cuDNN benchmarking', metavar='BOOL', type=bool, default=True)
@click.option('--deterministic', help='Repeat CUDA runs exactly (slower)', metavar='BOOL', type=bool, default=False)
@click.option('--cache', help='Cache dataset in CPU memory', metavar='BOOL', type=bool, default=True)
@click.option('--workers', help='DataLoader worker processes', metavar='INT', type=click.IntRange(min=0), default=1)
@click.option('--device', help='Force a device (cpu, cuda, cuda:1, mps)  [default: CUDA if available]', metavar='STR', type=str)
@click.option('--desc', help='String to include in result dir name', metavar='STR', type=str)
@click.option('--nosubdir', help='Do not create a subdirectory for results', is_flag=True)
@click.option('--time-limit', 'time_limit', help='Stop at the first tick after this many minutes (snapshot and state as at the end)',
              metavar='MIN', type=click.FloatRange(min=0, min_open=True))
@click.option('--tick', help='How often to print progress', metavar='KIMG', type=click.FloatRange(min=0, min_open=True), default=50)
@click.option('--snap', help='How often to save snapshots', metavar='TICKS', type=click.IntRange(min=1), default=50)
@click.option('--dump', help='How often to dump state', metavar='TICKS', type=click.IntRange(min=1), default=500)
@click.option('--ema-std', 'ema_std', help='Also track post-hoc EMA profiles of these relative widths, e.g. 0.050,0.100 (reconstruct_phema.py)',
              metavar='LIST', type=str)
@click.option('--metrics', help='Score the EMA networks while training: fid, kid or fid,kid', metavar='LIST', type=str)
@click.option('--metrics-num', 'metrics_num', help='Images generated for each score', metavar='INT', type=click.IntRange(min=2), default=1000)
@click.option('--metrics-every', 'metrics_every', help='How often to score', metavar='TICKS', type=click.IntRange(min=1), default=50)
@click.option('--logger', help='Also write the stats and sample grids live: none, tensorboard or wandb', metavar='KIND',
              type=click.Choice(live_log.KINDS), default='none')
@click.option('--seed', help='Random seed  [default: random]', metavar='INT', type=click.IntRange(min=0))
@click.option('--transfer', help='Start from the weights of a network file (ours, EDM\'s, the original release\'s; .pkl or .safetensors)', metavar='PATH|URL', type=str)
@click.option('--trust-pickle', 'trust_pickle', help='Unpickle --transfer fully, running code it carries (only for files you trust)', is_flag=True)
@click.option('--resume', help='Resume from a training-state file or a run folder', metavar='PT|DIR', type=str)
@click.option('-n', '--dry-run', help='Print training options and exit', is_flag=True)
def main(**kwargs):
    """Train a diffusion model on patches (Patch Diffusion) or full images (EDM).

    \b
    Examples:
    \b
    # Patch Diffusion on 32x32 digits, one CPU process
    python train.py --outdir=runs --data=datasets/mnist-32x32.zip --cbase=32 --cres=1,2,2 \\
        --batch=32 --duration=0.05 --lr-rampup=1 --tick=2 --snap=10
    \b
    # CelebA-64 as in the paper, 8 GPUs
    torchrun --standalone --nproc_per_node=8 train.py --outdir=runs \\
        --data=datasets/celeba-64x64.zip --cres=1,2,2,2 --batch=256 --precond=pedm --real_p=0.5
    """
    opts = dnnlib.EasyDict(kwargs)
    dnnlib.util.check_output_dir(opts.outdir, '--outdir')
    device = dist.init(opts.device)
    torch.multiprocessing.set_sharing_strategy('file_system')
    notice = misc.bf16_fallback_notice(device, 'training') if opts.bf16 else None
    if notice:
        dist.print0(notice)
        opts.bf16 = False
    if opts.compile_net:
        training_loop.check_compile_support(device)
        compile_cache.repair(dist.print0)
    c, desc = build_config(opts, dist.get_world_size())
    run_dir_lib.check_training_memory(c, device)

    seed = opts.seed
    if seed is None:
        seed = int(torch.randint(1 << 31, size=[]))
    c.seed = dist.broadcast_object(seed)

    if opts.nosubdir:
        c.run_dir = opts.outdir
    else:
        run_dir_lib.check_desc(desc, opts.outdir)
        c.run_dir = dist.broadcast_object(run_dir_lib.claim_run_dir(opts.outdir, desc, opts.dry_run) if dist.get_rank() == 0 else None)

    dist.print0()
    dist.print0('Training options:')
    dist.print0(json.dumps(c, indent=2))
    dist.print0()
    dist.print0(f'Output directory:        {c.run_dir}')
    dist.print0(f'Dataset path:            {c.dataset_kwargs.path}')
    dist.print0(f'Class-conditional:       {c.dataset_kwargs.use_labels}')
    dist.print0(f'Network architecture:    {opts.arch}')
    dist.print0(f'Preconditioning & loss:  {opts.precond}{" + patches" if opts.patch else ""}')
    if c.encoder_kwargs is not None:
        dist.print0(f'Latents:                 VAE "{c.encoder_kwargs.vae_name}", --latent-norm={c.encoder_kwargs.latent_norm}')
    dist.print0(f'Device:                  {device}')
    dist.print0(f'Number of processes:     {dist.get_world_size()}')
    dist.print0(f'Batch size:              {c.batch_size}')
    dist.print0(f'Mixed-precision:         {"fp16" if opts.fp16 else "bf16" if opts.bf16 else "off"}')
    dist.print0(f'Compiled network:        {"yes" if opts.compile_net else "no"}')
    dist.print0()
    if not opts.bf16 and not opts.fp16 and device.type == 'cpu' and misc.cpu_has_bf16():
        dist.print0('This CPU computes bfloat16 natively (AVX512-BF16 or AMX): --bf16=1 trains 1.4-2.9x faster, '
                    'more the wider the network (docs/benchmarks.md)')

    if opts.dry_run:  # a real run builds the network once, in the loop, and prints its count there
        dist.print0(f'Network parameters:      {network_parameters(c):,}')
        dist.print0('Dry run; exiting.')
        dist.shutdown()
        return

    dist.print0('Creating output directory...')
    logger = None
    if dist.get_rank() == 0:
        os.makedirs(c.run_dir, exist_ok=True)
        with atomic_write(os.path.join(c.run_dir, 'training_options.json'), 'w', encoding='utf-8') as f:
            json.dump(c, f, indent=2)
        logger = dnnlib.util.Logger(file_name=os.path.join(c.run_dir, 'log.txt'), file_mode='a', should_flush=True)
    dist.barrier()

    try:
        with dnnlib.util.option_errors(main, names=EVALUATION_OPTIONS), dnnlib.util.disk_full_errors(c.run_dir):
            training_loop.training_loop(**c, device=device)
    finally:
        if logger is not None:
            logger.close()
    dist.shutdown()


if __name__ == '__main__':
    main()
