"""Train a Patch Diffusion (or plain EDM) denoiser.

Runs as one process (`python train.py ...`) or as N processes
(`torchrun --standalone --nproc_per_node=N train.py ...`), on CPUs (gloo) or GPUs (nccl).
Options are EDM's, plus the patch options of Patch Diffusion and named presets
(`training/presets.py`); EDM's and the original release's spellings are accepted, hidden."""

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
from training import loss as loss_lib
from training import patch as patch_lib
from training import presets
from training import run_dir as run_dir_lib
from training import training_loop

ARCHITECTURES = {
    'ddpmpp': dict(model_type='SongUNet', embedding_type='positional', encoder_type='standard', decoder_type='standard',
                   channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2]),
    'ncsnpp': dict(model_type='SongUNet', embedding_type='fourier', encoder_type='residual', decoder_type='standard',
                   channel_mult_noise=2, resample_filter=[1, 3, 3, 1], model_channels=128, channel_mult=[2, 2, 2]),
    'adm': dict(model_type='DhariwalUNet', model_channels=192, channel_mult=[1, 2, 3, 4]),
}

MAX_BLOCKS = 64  # residual blocks per resolution (EDM: 4): far more would take minutes just to construct

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
    set of float arrays or precomputed latents (.npy members) gets `ArrayFolderDataset`."""
    if not os.path.exists(data):
        raise UserError(f'--data: "{data}" does not exist')
    holds_arrays = dataset_lib.latent_info(data) is not None or dataset_lib.array_info(data) is not None
    class_name = 'training.dataset.ArrayFolderDataset' if holds_arrays else 'training.dataset.ImageFolderDataset'
    kwargs = dnnlib.EasyDict(class_name=class_name, path=data, use_labels=use_labels, xflip=xflip, cache=cache)
    dataset = dnnlib.construct_class_by_name(**kwargs)
    if use_labels and not dataset.has_labels:
        raise UserError(f'--cond: data set "{data}" has no labels (dataset.json with "labels")')
    kwargs.resolution = dataset.resolution
    kwargs.max_size = len(dataset)
    return kwargs, dataset


def encoder_options(opts, dataset):
    """`encoder_kwargs` of the training loop: None for pixel-space training, else the Stable
    Diffusion VAE encoder. A data set of precomputed latents implies --latents=1 and
    names its VAE, used when it is a local folder (a hub id there needs --vae, as in network
    files); --vae may point elsewhere (another copy of the same VAE)."""
    info = getattr(dataset, 'latent_info', None)
    if not opts.train_on_latents and info is None:
        for name, value in (('--vae', opts.vae), ('--latent-norm', opts.latent_norm)):
            if value is not None:
                raise UserError(f'{name}: only applies with --latents=1')
        return None
    if info is not None and opts.vae is None:
        vae = encoders.recorded_vae(info.get('vae', encoders.DEFAULT_VAE), 'data', f'the data set "{opts.data}"')
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
    resolution, channels = encoders.network_shape(dataset, c.encoder_kwargs)
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


def architecture(opts):
    """The U-Net's keyword arguments: `--arch`'s, with `--cbase`, `--cres`, `--blocks`, `--attn`."""
    arch = dict(ARCHITECTURES[opts.arch])
    if opts.cbase is not None:
        arch['model_channels'] = opts.cbase
        noise = opts.cbase * arch.get('channel_mult_noise', 1)
        if noise % 2:
            raise UserError(f'--cbase={opts.cbase}: the noise embedding splits its {noise} channels into cosines and sines; '
                            'use an even --cbase')
    if opts.cres is not None:
        if not opts.cres or min(opts.cres) < 1:
            raise UserError(f'--cres={",".join(map(str, opts.cres))}: channel multipliers must be 1 or more')
        arch['channel_mult'] = opts.cres
    if opts.blocks is not None:
        arch['num_blocks'] = opts.blocks
    if opts.attn is not None:
        arch['attn_resolutions'] = opts.attn
    return arch


def check_network_shape(opts, arch, resolution, latent):
    """The network halves the image len(channel_mult) - 1 times: every side must divide."""
    levels = len(arch['channel_mult'])
    down_factor = 2 ** (levels - 1)
    height, width = patch_lib.image_hw(resolution)
    if down_factor > min(height, width):
        most = min(height, width).bit_length()
        raise UserError(f'--cres: {levels} channel multipliers halve the {"latents" if latent else "images"} {levels - 1} times; '
                        f'{width}x{height} allows at most {most} multipliers')
    if height % down_factor != 0 or width % down_factor != 0:
        word, size = ('side', f'{height}') if height == width else ('size', f'{width}x{height}')
        side = f'latent {word} {size} (image {word} / 8)' if latent else f'resolution {size}'
        raise UserError(f'--data: {side} is not divisible by the network\'s down-sampling factor '
                        f'{down_factor} (--arch={opts.arch}, channel_mult={arch["channel_mult"]})')
    return down_factor


def augment_options(opts):
    """`augment_kwargs` of the training loop: EDM's pipeline at probability `--augment`, or None."""
    if not opts.augment:
        return None
    return dnnlib.EasyDict(class_name='training.augment.AugmentPipe', p=opts.augment, xflip=1e8, yflip=1,
                           scale=1, rotate_frac=1, aniso=1, translate_frac=1)


def network_options(opts, arch, patch_kwargs, augment_kwargs):
    """`network_kwargs`: the preconditioning class of `--precond` around the U-Net, with coordinate
    channels when training on patches and augmentation labels when augmenting."""
    precond_class, _loss_class = PRECONDITIONINGS[opts.precond]
    kwargs = dnnlib.EasyDict(class_name=precond_class, **arch, dropout=opts.dropout, use_fp16=opts.precision == 'fp16')
    if opts.precision == 'bf16':
        kwargs.use_bf16 = True
    if opts.label_dropout:
        kwargs.label_dropout = opts.label_dropout
    if opts.precond == 'edm':
        kwargs.sigma_data = opts.sigma_data
    if patch_kwargs is not None:  # patches need the coordinate channels
        kwargs.use_coords = True
        if opts.pos_embed:
            kwargs.pos_embed = opts.pos_embed
    if augment_kwargs is not None:
        kwargs.augment_dim = dnnlib.construct_class_by_name(**augment_kwargs).label_dim
    return kwargs


def loss_options(opts):
    """`loss_kwargs`: the loss of `--precond`, with EDM's σ distribution for edm."""
    _precond_class, loss_class = PRECONDITIONINGS[opts.precond]
    kwargs = dnnlib.EasyDict(class_name=loss_class)
    if opts.precond == 'edm':
        loss_lib.check_edm_options(opts.P_mean, opts.P_std, opts.sigma_data)
        kwargs.update(P_mean=opts.P_mean, P_std=opts.P_std, sigma_data=opts.sigma_data)
    if opts.crop_sampler is not None:  # patch-only: refused without patches by resolve_options
        kwargs.crop_sampler = opts.crop_sampler
    return kwargs


LOSS_SCALING_RANGE = (1e-30, 1e30)  # gradients of order 1 times it stay normal float32 numbers
MAX_LR = 3.4e38  # float32's largest number


def schedule_options(opts, world_size):
    """Optimizer, batch and the image-count schedule (durations in Mimg → the loop's kimg)."""
    if not LOSS_SCALING_RANGE[0] <= opts.ls <= LOSS_SCALING_RANGE[1]:
        raise UserError(f'--ls={opts.ls:g}: must lie in [{LOSS_SCALING_RANGE[0]:g}, {LOSS_SCALING_RANGE[1]:g}]; beyond, '
                        f'float32 gradients underflow to zero or overflow')
    if opts.lr > MAX_LR:
        raise UserError(f'--lr={opts.lr:g}: beyond float32\'s range ({MAX_LR:g}); the first step would make every weight infinite')
    if opts.batch_gpu is not None and opts.batch % (opts.batch_gpu * world_size) != 0:
        raise UserError(f'--batch={opts.batch} is not divisible by --batch-gpu={opts.batch_gpu} times {world_size} processes')
    if opts.batch % world_size != 0:
        raise UserError(f'--batch={opts.batch} is not divisible by the number of processes ({world_size})')
    return dict(optimizer_kwargs=dnnlib.EasyDict(class_name='torch.optim.Adam', lr=opts.lr, betas=[0.9, 0.999], eps=1e-8),
                total_kimg=opts.duration * 1000, ema_halflife_kimg=opts.ema * 1000,
                lr_rampup_kimg=opts.lr_rampup * 1000, lr_decay_kimg=opts.lr_decay * 1000,
                batch_size=opts.batch, batch_gpu=opts.batch_gpu, loss_scaling=opts.ls)


def run_options(opts):
    """Speed switches, the reporting and saving cadence, and where the weights start from."""
    c = dict(cudnn_benchmark=opts.bench, compile_network=opts.compile_net, deterministic=opts.deterministic,
             kimg_per_tick=opts.tick)
    if opts.time_limit is not None:
        c['time_limit_min'] = opts.time_limit
    c.update(snapshot_ticks=opts.snap, state_dump_ticks=opts.dump)
    if opts.transfer is not None:
        if opts.resume is not None:
            raise UserError('--transfer and --resume: choose one')
        c.update(resume_pkl=opts.transfer, trust_pickle=opts.trust_pickle,
                 ema_rampup_ratio=None)  # as in EDM: the EMA starts from the pretrained weights
    elif opts.trust_pickle:
        raise UserError('--trust-pickle: applies only to --transfer')
    return c


def run_description(opts, dataset_name, latent, world_size):
    """The run folder's name after its id, EDM's pattern: data, labels, network, process count, batch, precision."""
    cond = 'cond' if opts.cond else 'uncond'
    precond_name = 'pedm' if opts.patch and opts.precond == 'edm' else opts.precond + ('-patch' if opts.patch else '')
    latents = '-latents' if latent else ''
    desc = f'{dataset_name:s}-{cond}-{opts.arch}-{precond_name}{latents}-gpus{world_size}-batch{opts.batch}-{opts.precision}'
    return desc if opts.desc is None else f'{desc}-{opts.desc}'


def build_config(opts, world_size):
    """Turns the resolved options (`main.make_context(...).params`) into the keyword arguments of
    `training_loop`, validating everything that can be checked before any file is written; `opts`
    is left as it is."""
    opts = dnnlib.EasyDict(opts)
    dnnlib.util.check_finite_options(main, opts)  # --duration=nan would train forever
    patch_lib.check_schedule_options(opts.real_p, opts.real_p_end, opts.progressive)
    c = dnnlib.EasyDict()
    c.dataset_kwargs, dataset = dataset_options(opts.data, opts.cond, opts.xflip, opts.cache)
    c.encoder_kwargs = encoder_options(opts, dataset)
    latent = c.encoder_kwargs is not None
    c.data_loader_kwargs = dnnlib.EasyDict(pin_memory=True, num_workers=opts.workers, prefetch_factor=2,
                                           persistent_workers=opts.workers > 0)
    arch = architecture(opts)
    resolution, _channels = encoders.network_shape(dataset, c.encoder_kwargs)
    down_factor = check_network_shape(opts, arch, resolution, latent)
    patch_kwargs = patch_options(opts, resolution, down_factor, latent)
    augment_kwargs = augment_options(opts)
    c.network_kwargs = network_options(opts, arch, patch_kwargs, augment_kwargs)
    c.loss_kwargs = loss_options(opts)
    c.patch_kwargs, c.augment_kwargs = patch_kwargs, augment_kwargs
    c.update(schedule_options(opts, world_size))
    c.update(run_options(opts))
    if opts.transfer is not None:
        checkpoints.check_transfer(opts.transfer, run_dir_lib.meta_network(c)[0], '--transfer', trust=opts.trust_pickle)
    if opts.resume is not None:
        c.resume_state = run_dir_lib.pick_resume_state(opts.resume, c)
    evaluation_options(opts, c)
    return c, run_description(opts, dataset.name, latent, world_size)


# ----------------------------------------------------------------------------------------------
# Options: presets, hidden aliases (EDM's and the original release's spellings) and the
# combinations that contradict each other, resolved once when the command line is parsed.

# The arguments of `training_loop` (dotted for the keyword dictionaries) whose name is not the
# parameter name of the option that sets them: a FieldError about one names that option.
LOOP_FIELDS = {
    'dataset_kwargs.path': '--data', 'dataset_kwargs.use_labels': '--cond', 'encoder_kwargs.vae_name': '--vae',
    'network_kwargs.model_channels': '--cbase', 'network_kwargs.channel_mult': '--cres',
    'network_kwargs.num_blocks': '--blocks', 'network_kwargs.attn_resolutions': '--attn',
    'total_kimg': '--duration', 'ema_halflife_kimg': '--ema', 'lr_rampup_kimg': '--lr-rampup', 'lr_decay_kimg': '--lr-decay',
    'batch_size': '--batch', 'loss_scaling': '--ls', 'cudnn_benchmark': '--bench', 'compile_network': '--compile',
    'kimg_per_tick': '--tick', 'time_limit_min': '--time-limit', 'snapshot_ticks': '--snap', 'state_dump_ticks': '--dump',
    'resume_pkl': '--transfer', 'resume_state': '--resume', 'vae_name': '--vae', 'dataset': '--data',
    'network_kwargs': '--cbase/--cres/--blocks', 'num_expected': '--metrics-num', 'trust': '--trust-pickle', 'use_labels': '--cond',
}

PATCH_ONLY = ('real_p', 'real_p_end', 'patch_sizes', 'progressive', 'loss_norm', 'pos_embed', 'crop_sampler')


class HiddenChoice(click.Choice):
    """A choice that also accepts unlisted values (the original release's --precond=pedm)."""

    def __init__(self, choices, hidden):
        super().__init__(choices)
        self.hidden = tuple(hidden)

    def convert(self, value, param, ctx):
        return value if value in self.hidden else super().convert(value, param, ctx)


def option_flag(name):
    """The shown command-line name of the parameter `name`, e.g. real_p → --real-p."""
    (param,) = [p for p in main.params if p.name == name]
    return param.opts[0]


def flag_value(value):
    """An option value as it is written on the command line."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, list):
        return ','.join(map(str, value)) if value else 'none'
    return str(value)


def apply_preset(ctx, params, given):
    """Fills the options not given on the command line from `--preset`; returns their names."""
    if params['preset'] is None:
        return []
    by_flag = {opt: p for p in main.params for opt in p.opts}
    filled = []
    for key, value in presets.PRESETS[params['preset']].options.items():
        param = by_flag[f'--{key}']
        if param.name not in given:
            params[param.name] = param.type_cast_value(ctx, value)
            filled.append(param.name)
    return filled


def resolve_precision(params, given):
    """Merges the hidden --fp16=BOOL and --bf16=BOOL (EDM's and this project's old switches)
    into --precision; a contradiction between them is refused."""
    fp16, bf16 = params.pop('fp16'), params.pop('bf16')
    if fp16 and bf16:
        raise UserError('--fp16=1 and --bf16=1: choose one (--precision=fp16|bf16)')
    for name, on in (('fp16', fp16), ('bf16', bf16)):
        if on is None:
            continue
        if 'precision' in given and (params['precision'] == name) != on:
            raise UserError(f'--{name}={int(on)} and --precision={params["precision"]}: choose one')
        if on:
            params['precision'] = name
        elif params['precision'] == name:
            params['precision'] = 'fp32'


def resolve_options(ctx):
    """The options `main` runs with: the preset under the explicit options, the hidden aliases
    merged, and patch-only options refused where patches are off. Adds `preset_options`, the
    names of the options that came from the preset."""
    params = dict(ctx.params)
    given = {name for name in params if ctx.get_parameter_source(name) not in
             (None, click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP)}
    params['preset_options'] = tuple(apply_preset(ctx, params, given))
    if params['precond'] == 'pedm':  # the original release's name for EDM with patches
        if 'patch' in given and not params['patch']:
            raise UserError('--precond=pedm: means EDM with patches, not with --patch=0 (plain EDM: --precond=edm --patch=0)')
        params.update(precond='edm', patch=True)
    resolve_precision(params, given)
    if not params['patch']:
        for name in PATCH_ONLY:
            if name in given:
                raise UserError(f'{option_flag(name)}: only applies to patches, not with --patch=0')
    return params


class TrainCommand(click.Command):
    """train.py's command: `make_context(...).params` are the resolved options (`resolve_options`)."""

    def parse_args(self, ctx, args):
        rest = super().parse_args(ctx, args)
        ctx.params = resolve_options(ctx)
        return rest


def print_options(opts):
    """Every option's resolved value, the ones from the preset marked."""
    dist.print0('Resolved options' + (f' (* from --preset={opts.preset}: {presets.PRESETS[opts.preset].summary})'
                                      if opts.preset else '') + ':')
    for param in main.params:
        if param.name in opts and opts[param.name] is not None and param.name not in ('preset', 'dry_run'):
            mark = '  *' if param.name in opts.preset_options else ''
            dist.print0(f'  {param.opts[0]}={flag_value(opts[param.name])}{mark}')


@click.command(cls=TrainCommand, context_settings=dict(show_default=True, max_content_width=100))
@click.option('--outdir', help='Where to save the results', metavar='DIR', type=str, required=True)
@click.option('--data', help='Path to the dataset (folder or zip)', metavar='ZIP|DIR', type=str, required=True)
@click.option('--preset', help='Start from a named recipe; options given here override it (-n lists the result)',
              type=click.Choice(list(presets.PRESETS)))
@click.option('--cond', help='Train class-conditional model', metavar='BOOL', type=bool, default=False)
@click.option('--arch', help='Network architecture', type=click.Choice(['ddpmpp', 'ncsnpp', 'adm']), default='ddpmpp')
@click.option('--precond', help='Preconditioning & loss (the original release\'s pedm: edm with --patch=1)',
              type=HiddenChoice(['edm', 'vp', 've'], hidden=['pedm']), default='edm')
@click.option('--patch', help='Train on patches with coordinate channels (0 = EDM\'s network on full images)', metavar='BOOL',
              type=bool, default=True)
@click.option('--real-p', '--real_p', 'real_p', cls=dnnlib.util.AliasOption, help='Probability of a full-image step (1: full images only, with the coordinate channels)', metavar='FLOAT',
              type=click.FloatRange(min=0, max=1), default=patch_lib.REAL_P)
@click.option('--real-p-end', '--real_p-end', 'real_p_end', cls=dnnlib.util.AliasOption,
              help='Full-image probability at the end, moved to linearly from --real-p  [default: constant]',
              metavar='FLOAT', type=click.FloatRange(min=0, max=1))
@click.option('--loss-norm', 'loss_norm', help='Patch-step loss: per-pixel mean x full-image pixels, or per-image pixel sum (original)',
              type=click.Choice(patch_lib.LOSS_NORMS), default=patch_lib.LOSS_NORMS[0])
@click.option('--patch-sizes', 'patch_sizes', help='Patch sides or WxH sizes [default: R/4,R/2,R, rectangles W/k x H/k; latents R/2,R]', metavar='LIST', type=str, default=None)
@click.option('--crop-sampler', 'crop_sampler', help='Where patches are cropped: uniform, or content (more often where the image has content; the loss reweighted to stay unbiased)  [default: uniform]', metavar='KIND',
              type=click.Choice(loss_lib.CROP_SAMPLERS))
@click.option('--progressive', help='Small patches first, full images last, instead of a random draw', metavar='BOOL', type=bool, default=False)
@click.option('--pos-embed', 'pos_embed', help='Feed sin/cos features of the coordinates at F frequencies (0 = raw)', metavar='F',
              type=click.IntRange(min=0), default=0)
@click.option('--latents', '--train_on_latents', 'train_on_latents', cls=dnnlib.util.AliasOption,
              help='Train on Stable Diffusion VAE latents (implied by a data set of latents)', metavar='BOOL', type=bool, default=False)
@click.option('--vae', help='VAE for latents: hub id or local folder  [default: stabilityai/sd-vae-ft-ema, or the data set\'s]',
              metavar='ID|DIR', type=str)
@click.option('--latent-norm', 'latent_norm', help='Latent normalisation: x0.18215, or per channel to std 0.5  [default: scale]',
              type=click.Choice(['scale', 'channel']))
@click.option('--duration', help='Training duration', metavar='MIMG', type=click.FloatRange(min=0, min_open=True), default=200)
@click.option('--batch', help='Total batch size (image slots per step)', metavar='INT', type=click.IntRange(min=1), default=512)
@click.option('--batch-gpu', 'batch_gpu', help='Limit batch size per process', metavar='INT', type=click.IntRange(min=1))
@click.option('--cbase', help='Channel multiplier  [default: varies]', metavar='INT', type=click.IntRange(min=1))
@click.option('--cres', help='Channels per resolution  [default: varies]', metavar='LIST', type=IntList())
@click.option('--blocks', help='Residual blocks per resolution  [default: 4, adm 3]', metavar='INT', type=click.IntRange(min=1, max=MAX_BLOCKS))
@click.option('--attn', help='Resolutions with self-attention, or none  [default: 16, adm 32,16,8]', metavar='LIST', type=AttnList())
@click.option('--lr', help='Learning rate', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True), default=10e-4)
@click.option('--lr-rampup', 'lr_rampup', help='Learning-rate warm-up', metavar='MIMG', type=click.FloatRange(min=0), default=10)
@click.option('--lr-decay', 'lr_decay', help='Inverse-square-root learning-rate decay after MIMG million images (0 = constant, as in EDM)',
              metavar='MIMG', type=click.FloatRange(min=0), default=0)
@click.option('--ema', help='EMA half-life', metavar='MIMG', type=click.FloatRange(min=0), default=0.5)
@click.option('--dropout', help='Dropout probability', metavar='FLOAT', type=click.FloatRange(min=0, max=1), default=0.13)
@click.option('--label-dropout', 'label_dropout', help='Class-label dropout probability (for CFG)', metavar='FLOAT',
              type=click.FloatRange(min=0, max=1), default=0)
@click.option('--augment', help='Augment probability (EDM\'s recipes: 0.12 or 0.15)', metavar='FLOAT', type=click.FloatRange(min=0, max=1), default=0)
@click.option('--xflip', help='Enable dataset x-flips', metavar='BOOL', type=bool, default=False)
@click.option('--p-mean', '--P_mean', 'P_mean', cls=dnnlib.util.AliasOption, help='Mean of ln(sigma) in training (EDM)', metavar='FLOAT', type=float, default=-1.2)
@click.option('--p-std', '--P_std', 'P_std', cls=dnnlib.util.AliasOption, help='Std of ln(sigma) in training (EDM)', metavar='FLOAT',
              type=click.FloatRange(min=0, min_open=True), default=1.2)
@click.option('--sigma-data', '--sigma_data', 'sigma_data', cls=dnnlib.util.AliasOption, help='Data standard deviation (EDM)', metavar='FLOAT',
              type=click.FloatRange(min=0, min_open=True), default=0.5)
@click.option('--precision', help='Network body precision (fp16: CUDA; bf16: CUDA, CPUs with AVX512-BF16 or AMX)',
              type=click.Choice(['fp32', 'fp16', 'bf16']), default='fp32')
@click.option('--fp16', help='EDM\'s switch for --precision=fp16', metavar='BOOL', type=bool, hidden=True)
@click.option('--bf16', help='Old switch for --precision=bf16', metavar='BOOL', type=bool, hidden=True)
@click.option('--ls', help='Loss scaling', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True), default=1)
@click.option('--compile', 'compile_net', help='Compile the network with torch.compile (each patch size compiles once, before its first step)',
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
@click.option('--seed', help='Random seed  [default: random]', metavar='INT', type=click.IntRange(min=0, max=2**32 - 1))
@click.option('--transfer', help='Start from the weights of a network file (ours, EDM\'s, the original release\'s; .pkl or .safetensors)', metavar='PATH|URL', type=str)
@click.option('--trust-pickle', 'trust_pickle', help='Unpickle --transfer fully, running code it carries (only for files you trust)', is_flag=True)
@click.option('--resume', help='Resume from a training-state file or a run folder', metavar='PT|DIR', type=str)
@click.option('-n', '--dry-run', help='Print the resolved options and the training options, and exit', is_flag=True)
def main(**kwargs):
    """Train a diffusion model on patches (Patch Diffusion) or full images (EDM).

    \b
    Examples:
    \b
    # The demo's network on 32x32 digits, one CPU process
    python train.py --outdir=runs --data=datasets/mnist-32x32.zip --preset=demo-cpu
    \b
    # CelebA-64 as in the paper, 8 GPUs
    torchrun --standalone --nproc_per_node=8 train.py --outdir=runs \\
        --data=datasets/celeba-64x64.zip --preset=celeba64
    """
    with dnnlib.util.option_errors(main, names={**LOOP_FIELDS, **EVALUATION_OPTIONS}):
        train(dnnlib.EasyDict(kwargs))


def train(opts):
    """Runs `main` with its resolved options."""
    dnnlib.util.check_output_dir(opts.outdir, '--outdir')
    device = dist.init(opts.device)
    torch.multiprocessing.set_sharing_strategy('file_system')
    notice = misc.bf16_fallback_notice(device, 'training') if opts.precision == 'bf16' else None
    if opts.precision == 'fp16' and device.type != 'cuda':  # the network's fp16 body runs on CUDA only
        notice = f'--precision=fp16: half precision runs on CUDA only; training in fp32 on {device.type}'
    if notice:
        dist.print0(notice)
        opts = dnnlib.EasyDict(opts, precision='fp32')
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
        run_dir_lib.check_nosubdir(opts.outdir, c.get('resume_state'))
        c.run_dir = opts.outdir
    else:
        run_dir_lib.check_desc(desc, opts.outdir)
        c.run_dir = dist.broadcast_object(run_dir_lib.claim_run_dir(opts.outdir, desc, opts.dry_run) if dist.get_rank() == 0 else None)

    if opts.dry_run:
        dist.print0()
        print_options(opts)
    dist.print0()
    dist.print0('Training options:')
    dist.print0(json.dumps(c, indent=2))
    dist.print0()
    dist.print0(f'Output directory:        {c.run_dir}')
    dist.print0(f'Dataset path:            {c.dataset_kwargs.path}')
    dist.print0(f'Class-conditional:       {c.dataset_kwargs.use_labels}')
    if opts.preset is not None:
        dist.print0(f'Preset:                  {opts.preset}')
    dist.print0(f'Network architecture:    {opts.arch}')
    dist.print0(f'Preconditioning & loss:  {opts.precond}{" + patches" if opts.patch else ""}')
    if c.encoder_kwargs is not None:
        dist.print0(f'Latents:                 VAE "{c.encoder_kwargs.vae_name}", --latent-norm={c.encoder_kwargs.latent_norm}')
    dist.print0(f'Device:                  {device}')
    dist.print0(f'Number of processes:     {dist.get_world_size()}')
    dist.print0(f'Batch size:              {c.batch_size}')
    dist.print0(f'Mixed-precision:         {"off" if opts.precision == "fp32" else opts.precision}')
    dist.print0(f'Compiled network:        {"yes" if opts.compile_net else "no"}')
    dist.print0()
    if opts.precision == 'fp32' and device.type == 'cpu' and misc.cpu_has_bf16():
        dist.print0('This CPU computes bfloat16 natively (AVX512-BF16 or AMX): --precision=bf16 trains faster '
                    '(docs/benchmarks.md)')

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
        with dnnlib.util.disk_full_errors(c.run_dir):
            training_loop.training_loop(**c, device=device)
    finally:
        if logger is not None:
            logger.close()
    dist.shutdown()


if __name__ == '__main__':
    main()
