"""Training speed: seconds per optimizer step and per kimg, fp32 and bf16, patches and full images.

Prints the CPU (model and the flags that decide the arithmetic: AVX2, AVX-512, AVX512-BF16, AMX),
then a convolution probe: a 64-channel 3x3 convolution at 32x32, batch 32, forward and backward,
in GFLOP/s for fp32 and bf16, which is what the machine can do on the layer that dominates these
networks. Then two measurements:

- `steps`: for each network configuration (--configs), the median seconds of one optimizer step
  (forward, backward, Adam) at each patch side of the default schedule (R, R/2, R/4 with R/s times
  the images), its FLOPs (counted with torch's FlopCounterMode: convolutions, matrix products,
  attention) and the achieved GFLOP/s as a share of the probe; then the patch/full speed ratio
  those steps give when weighted by the default schedule's probabilities.
- `loop`: the real training loop (train.py's options, data loader, loss, Adam, EMA) in a fresh
  subprocess per run, patch mode (real_p 0.5) and full-image mode, in fp32 and bf16, in ABBA
  order over repeats; s/kimg over the ticks after the first, ratios within this one run; with
  --compile=1 also compiled (train.py --compile=1), timed after a first run that compiles. A short
  run draws more or fewer small patches than the schedule's average, so the patch/full ratio is
  also given "by the schedule": the median loop step of each size weighted by its probability.
- `split` (only with --only=split): where a step's time goes, from the torch profiler:
  convolutions, layout copies and the rest, per side and dtype, and the bf16 speed-up of patches
  the schedule would give if everything but the convolutions cost in bf16 what it does in fp32.

    python bench/train_speed.py                              # both, CPU, 2 threads
    python bench/train_speed.py --only=steps --configs=demo,bench
    python bench/train_speed.py --only=split --configs=bench
    python bench/train_speed.py --device=cuda --only=loop    # kimg/s and peak GPU memory

Configurations are train.py presets with overrides (training/presets.py), timed on data with
`channels` image channels: `bench` is the `bench` preset (SPEC section 9: DDPM++ 32 channels,
[1,2,2], 4 blocks, attention at 16, 3 channels); `demo` is the `demo-cpu` preset's network without
its class labels ([1,2,2,2], 1 block, no attention, 1 channel); `small` the demo's until 2026-11-24
([1,2,2]); `cifar` the `cifar10` preset (EDM's CIFAR-10 DDPM++: 128 channels, [2,2,2], 4 blocks,
attention at 16, 3 channels) without augmentation; NAME:blocks:attn adds others of 32 channels on
[1,2,2], e.g. `b2:2:none`; a suffix @WIDTH sets the base channel count of any of them, e.g.
`bench@64` (where bf16 starts to pay, docs/benchmarks.md).
"""

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import click
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# name → train.py preset, the options that override it, and the image channels of the timing data
CONFIGS = {
    'bench': dict(preset='bench', channels=3),
    'demo': dict(preset='demo-cpu', channels=1, cond=False, **{'label-dropout': 0}),
    'small': dict(preset='demo-cpu', channels=1, cond=False, cres='1,2,2', **{'label-dropout': 0}),
    'b2': dict(preset='bench', channels=1, blocks=2, attn='none', dropout=0),
    'cifar': dict(preset='cifar10', channels=3, augment=0),
}
CPU_FLAGS = ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16')


def cpu_description():
    """CPU model and the arithmetic flags that matter here."""
    from torch_utils import misc
    model, flags = misc.cpu_info()
    return model or platform.processor() or platform.machine(), [flag for flag in CPU_FLAGS if flag in flags]


def parse_configs(text):
    """'bench,demo@64,b3:3:none' → {name: dict(preset, channels, train.py options over the preset)}."""
    configs = {}
    for item in text.split(','):
        spec, _, width = item.partition('@')
        name, *rest = spec.split(':')
        if rest:
            config = dict(CONFIGS['b2'], blocks=int(rest[0]), attn=rest[1] if len(rest) > 1 else 'none')
        elif name in CONFIGS:
            config = CONFIGS[name]
        else:
            raise click.BadParameter(f'unknown configuration "{name}" (known: {", ".join(CONFIGS)}, or NAME:blocks:attn, with @WIDTH)')
        if width:
            if not width.isdigit() or int(width) < 1:
                raise click.BadParameter(f'"{item}": the width after @ must be a positive whole number')
            config = dict(config, cbase=int(width))
        configs[name + (f'@{width}' if width else '')] = config
    return configs


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def median_seconds(fn, device, repeats, warmup=2):
    """Median wall time of `fn()` after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def conv_probe(dtype, device, repeats=10):
    """GFLOP/s of a 64-channel 3x3 convolution at 32x32, batch 32, forward and backward."""
    x = torch.randn(32, 64, 32, 32, device=device, dtype=dtype, requires_grad=True)
    w = torch.randn(64, 64, 3, 3, device=device, dtype=dtype, requires_grad=True)

    def step():
        torch.nn.functional.conv2d(x, w, padding=1).backward(torch.ones(32, 64, 32, 32, device=device, dtype=dtype))
    flops = 3 * 2 * 32 * 32 * 32 * 64 * 64 * 9
    return flops / median_seconds(step, device, repeats) / 1e9


def train_args(config):
    """The train.py options of a configuration: its preset, then its overrides."""
    return [f'--preset={config["preset"]}'] + [f'--{k}={v}' for k, v in config.items() if k not in ('preset', 'channels')]


def build_net(config, use_bf16, device, resolution=32):
    """The configuration's network as train.py builds it, with coordinate channels."""
    import dnnlib
    import train
    args = ['--outdir=unused', '--data=unused', f'--precision={"bf16" if use_bf16 else "fp32"}'] + train_args(config)
    opts = dnnlib.EasyDict(train.main.make_context('train.py', args).params)
    kwargs = train.network_options(opts, train.architecture(opts), patch_kwargs={}, augment_kwargs=None)
    torch.manual_seed(0)
    net = dnnlib.construct_class_by_name(**kwargs, img_resolution=resolution, img_channels=config['channels'], label_dim=0)
    return net.train().to(device)


def step_fn(net, optimizer, side, images, device):
    """One optimizer step of the EDM loss on `images` random patches of side `side`."""
    from training.loss import EDMLoss
    loss_fn = EDMLoss()
    y = torch.rand(images, net.img_channels, side, side, device=device) * 2 - 1
    coords = torch.rand(images, 2, side, side, device=device) * 2 - 1

    def step():
        sigma = loss_fn.sample_sigma(images, None, device)
        denoised = net(y + torch.randn_like(y) * sigma, sigma, coords=coords)
        optimizer.zero_grad(set_to_none=True)
        (loss_fn.weight(sigma) * (denoised - y) ** 2).sum().div(images).backward()
        optimizer.step()
    return step


def count_flops(fn):
    """FLOPs of one call of `fn` (convolutions, matrix products, attention; forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def scheduled_seconds_per_image(seconds_by_side, images_by_side, real_p=0.5):
    """Seconds per image of the default schedule's random mix of sides (`real_p` full images),
    from the seconds of one step at each side: expected seconds over expected images per step."""
    from training import patch
    sides = sorted(seconds_by_side)
    probs = patch.patch_probabilities(len(sides), real_p)
    return sum(p * seconds_by_side[s] for p, s in zip(probs, sides)) / sum(p * images_by_side[s] for p, s in zip(probs, sides))


def schedule_ratio(seconds_by_side, images_by_side, real_p=0.5):
    """Patch/full speed ratio that per-step times give under the default schedule; the loop's
    ratio without the noise of which sizes a short run happened to draw."""
    full = max(seconds_by_side)
    return seconds_by_side[full] / images_by_side[full] / scheduled_seconds_per_image(seconds_by_side, images_by_side, real_p)


def side_images(batch):
    """Images per step at each side of the default schedule of 32x32 images: R/s times `batch`."""
    from training import patch
    return {side: batch * (32 // side) for side in patch.default_patch_sizes(32)}


def measure_steps(configs, batch, device, repeats, probes, dtypes):
    """Prints seconds per step and GFLOP/s for each configuration, patch side and dtype, and the
    patch/full ratio those steps give under the default schedule."""
    from training import training_loop
    print(f'\nsteps: median of {repeats} optimizer steps, batch {batch} image slots (R/s times the images at side s)')
    print(f'{"config":<8s} {"params":>10s} {"side":>4s} {"images":>6s} {"GFLOP":>7s} ' +
          ' '.join(f'{d + " s":>8s} {d + " %probe":>10s}' for d in dtypes) + ('  bf16 speed-up' if len(dtypes) == 2 else ''))
    for name, config in configs.items():
        by_side, images_by_side = {dtype: {} for dtype in dtypes}, side_images(batch)
        for side, images in images_by_side.items():
            row, seconds = [], {}
            for dtype in dtypes:
                net = build_net(config, dtype == 'bf16', device)
                optimizer = training_loop.build_optimizer(net, dict(class_name='torch.optim.Adam', lr=1e-4))
                step = step_fn(net, optimizer, side, images, device)
                flops = count_flops(step)
                seconds[dtype] = by_side[dtype][side] = median_seconds(step, device, repeats)
                share = flops / seconds[dtype] / 1e9 / probes[dtype] * 100
                row.append(f'{seconds[dtype]:8.3f} {share:9.0f}%')
            params = sum(p.numel() for p in net.parameters())
            speedup = f'  {seconds["fp32"] / seconds["bf16"]:.2f}x' if len(dtypes) == 2 else ''
            print(f'{name:<8s} {params:>10,d} {side:>4d} {images:>6d} {flops / 1e9:7.1f} ' + ' '.join(row) + speedup, flush=True)
        ratios = ', '.join(f'{dtype} {schedule_ratio(by_side[dtype], images_by_side):.2f}x' for dtype in dtypes)
        print(f'{name:<8s} patch/full by the default schedule (real_p 0.5; compute ratio '
              f'{schedule_ratio({s: s * s * images_by_side[s] for s in images_by_side}, images_by_side):.2f}): {ratios}', flush=True)
        if len(dtypes) == 2:
            patches = scheduled_seconds_per_image(by_side['fp32'], images_by_side) / scheduled_seconds_per_image(by_side['bf16'], images_by_side)
            full = max(images_by_side)
            print(f'{name:<8s} bf16 speed-up by the default schedule: patches {patches:.2f}x, '
                  f'full images {by_side["fp32"][full] / by_side["bf16"][full]:.2f}x', flush=True)


CONV_OPS = ('aten::convolution_backward', 'aten::mkldnn_convolution', 'aten::_convolution')


def profile_split(step, repeats):
    """(step, convolutions, layout copies) in ms of self time per optimizer step, from the torch
    profiler over `repeats` steps after three untimed ones."""
    from torch.profiler import profile, ProfilerActivity
    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            step()
    events = prof.key_averages()
    per_step = lambda keep: sum(e.self_cpu_time_total for e in events if keep(e.key)) / repeats / 1e3
    return per_step(lambda key: True), per_step(lambda key: key in CONV_OPS), per_step(lambda key: key == 'aten::copy_')


def split_ceiling(fp32_by_side, bf16_by_side, images_by_side):
    """bf16 speed-up of patch training by the default schedule, as measured and if everything but
    the convolutions cost in bf16 what it costs in fp32; each argument maps side → (step ms,
    convolution ms, ...)."""
    fp32 = scheduled_seconds_per_image({s: v[0] for s, v in fp32_by_side.items()}, images_by_side)
    bf16 = scheduled_seconds_per_image({s: v[0] for s, v in bf16_by_side.items()}, images_by_side)
    rest_at_fp32 = {s: bf16_by_side[s][1] + fp32_by_side[s][0] - fp32_by_side[s][1] for s in fp32_by_side}
    return fp32 / bf16, fp32 / scheduled_seconds_per_image(rest_at_fp32, images_by_side)


def measure_split(configs, batch, device, repeats, dtypes):
    """Prints, per configuration, side and dtype, where a step's time goes: convolutions, layout
    copies and the rest; with bf16, what its speed-up would be with the rest at fp32's cost."""
    from training import training_loop
    print(f'\nsplit: self time per optimizer step (torch profiler, mean of {repeats}), batch {batch} image slots')
    for name, config in configs.items():
        images_by_side, by_dtype = side_images(batch), {dtype: {} for dtype in dtypes}
        for side, images in images_by_side.items():
            for dtype in dtypes:
                net = build_net(config, dtype == 'bf16', device)
                optimizer = training_loop.build_optimizer(net, dict(class_name='torch.optim.Adam', lr=1e-4))
                total, conv, copy = by_dtype[dtype][side] = profile_split(step_fn(net, optimizer, side, images, device), repeats)
                print(f'{name:<8s} side {side:>3d} {dtype}: step {total:7.1f} ms, convolutions {conv:7.1f}, '
                      f'copies {copy:6.1f}, rest {total - conv - copy:7.1f}', flush=True)
        if len(dtypes) == 2:
            measured, ceiling = split_ceiling(by_dtype['fp32'], by_dtype['bf16'], images_by_side)
            print(f'{name:<8s} bf16 speed-up of patches by the default schedule: {measured:.2f}x; with everything but '
                  f'the convolutions at its fp32 cost: {ceiling:.2f}x', flush=True)


def make_dataset(path, channels):
    """32x32 digits from the bundled MNIST sample (2,000 images are plenty for timing)."""
    cmd = [sys.executable, os.path.join(ROOT, 'dataset_tool.py'), 'convert', f'--source={ROOT}/data/mnist-10k-28x28.npz',
           f'--dest={path}', '--resolution=32x32', f'--channels={channels}', '--max-images=2000']
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)


def loop_args(config, batch):
    """train.py options of the timed loop: the configuration at `batch` image slots per step."""
    return train_args(config) + [f'--batch={batch}', '--workers=1', '--lr-rampup=0.01', '--duration=1']


def run_child(spec):
    """Child process: trains one mode and prints a JSON line with its tick timings."""
    import dnnlib
    import train
    from torch_utils import distributed as dist
    from training import training_loop
    torch.set_num_threads(spec['threads'])
    args = ['--outdir', 'unused', '--data', spec['data'], f'--real-p={spec["real_p"]}', f'--tick={spec["tick"]}', f'--seed={spec["seed"]}',
            f'--precision={"bf16" if spec["bf16"] else "fp32"}', f'--compile={int(spec["compile"])}'] + loop_args(spec['config'], spec['batch'])
    if spec['device']:
        args.append(f'--device={spec["device"]}')
    opts = dnnlib.EasyDict(train.main.make_context('train.py', args).params)
    device = dist.init(opts.device)
    c, _desc = train.build_config(opts, 1)
    c.pop('time_limit_min', None)  # the demo preset's limit; the bench stops at its image count
    if spec['compile']:  # compiles every patch size in a first run; the timed run then reuses the graphs
        with tempfile.TemporaryDirectory() as run_dir:
            training_loop.training_loop(**dict(c, run_dir=run_dir, total_kimg=2 if spec['real_p'] < 1 else 0.2, snapshot_ticks=None,
                                               state_dump_ticks=None, sample_grid=False), device=device)
    marks = []  # (step, seconds, images seen) after every step

    def step_callback(info):
        marks.append((info.step, time.perf_counter(), info.nimg))

    with tempfile.TemporaryDirectory() as run_dir:
        c.update(run_dir=run_dir, total_kimg=spec['kimg'], snapshot_ticks=None, state_dump_ticks=None, sample_grid=False,
                 step_callback=step_callback)
        training_loop.training_loop(**c, device=device)
        with open(os.path.join(run_dir, 'stats.jsonl')) as f:
            ticks = [json.loads(line) for line in f]
    step_seconds = {}  # images in the step → seconds of each step after the first tick
    for (_, t0, n0), (step, t1, n1) in zip(marks, marks[1:]):
        if step > ticks[0]['step']:
            step_seconds.setdefault(n1 - n0, []).append(t1 - t0)
    print('RESULT ' + json.dumps(dict(seconds=sum(t['sec_per_tick'] for t in ticks[1:]), kimg=ticks[-1]['kimg'] - ticks[0]['kimg'],
                                      steps=ticks[-1]['step'] - ticks[0]['step'], step_seconds=step_seconds,
                                      peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                                      gpumem_gb=ticks[-1].get('gpumem_gb'))))


def run_mode(spec):
    """Runs one mode in a fresh process (so its peak RSS is its own) and parses its result."""
    env = dict(os.environ, OMP_NUM_THREADS=str(spec['threads']))
    cmd = [sys.executable, os.path.abspath(__file__), '--child', json.dumps(spec)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, env=env).stdout
    return json.loads([ln for ln in out.splitlines() if ln.startswith('RESULT ')][-1][len('RESULT '):])


def median_step_seconds(results, images):
    """Median seconds of the loop steps that held `images` images, over all runs of a mode."""
    seconds = [t for r in results for t in r['step_seconds'].get(str(images), [])]
    return statistics.median(seconds) if seconds else None


def measure_loop(config_name, config, batch, threads, device, repeats, kimg_patch, kimg_full, tick, dtypes, compiles):
    """Prints s/kimg of the real training loop for patch and full-image mode in each dtype, eager
    and (with `compiles` [False, True]) compiled with --compile."""
    from training import patch
    variants = [(d, c) for c in compiles for d in dtypes]
    modes = [(m, d, c) for d, c in variants for m in ('patch', 'full')]
    runs = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, 'digits.zip')
        make_dataset(data, config['channels'])
        for rep in range(repeats):
            for mode, dtype, compiled in (modes if rep % 2 == 0 else modes[::-1]):
                spec = dict(data=data, real_p=0.5 if mode == 'patch' else 1.0, kimg=kimg_patch if mode == 'patch' else kimg_full,
                            tick=tick, threads=threads, device=device, seed=rep, bf16=dtype == 'bf16', compile=compiled,
                            config=config, batch=batch)
                runs[mode, dtype, compiled].append(run_mode(spec))
    print(f'\nloop: config {config_name}, batch {batch}, {repeats} runs per mode in ABBA order, first tick of each run not timed'
          + (' (compiled runs: after a first run that compiles every patch size)' if True in compiles else ''))
    name = {(d, c): d + (' compiled' if c else '') for d, c in variants}
    rate = {}
    for (mode, dtype, compiled), results in runs.items():
        seconds, kimg = sum(r['seconds'] for r in results), sum(r['kimg'] for r in results)
        rate[mode, dtype, compiled] = seconds / kimg
        gpu = results[-1].get('gpumem_gb')
        extra = f', peak GPU memory {gpu:.2f} GB' if gpu is not None else f', peak RSS {max(r["peak_rss_gb"] for r in results):.2f} GB'
        print(f'{mode:>5s} {name[dtype, compiled]:<13s}: {seconds / kimg:7.2f} s/kimg ({kimg / seconds:.3f} kimg/s), '
              f'{seconds / sum(r["steps"] for r in results):.3f} s/step, {kimg * 1e3 / sum(r["steps"] for r in results):.1f} images/step{extra}')
    images = side_images(batch)
    sides = list(images)
    probs = patch.patch_probabilities(len(sides), 0.5)
    print(f'(the default schedule averages {sum(p * images[s] for p, s in zip(probs, sides)):.1f} images per patch-mode step; '
          'a short run draws more or fewer small patches, so "by the schedule" weights the median loop step of each size '
          'by its probability instead)')
    scheduled = {}  # (mode, dtype, compiled) → s/kimg from median loop steps weighted by the schedule
    for variant in variants:
        patch_medians = [median_step_seconds(runs[('patch',) + variant], images[side]) for side in sides]
        full_median = median_step_seconds(runs[('full',) + variant], images[sides[-1]])
        if None not in patch_medians and full_median is not None:
            scheduled['patch', *variant] = scheduled_seconds_per_image(dict(zip(sides, patch_medians)), images) * 1e3
            scheduled['full', *variant] = full_median / images[sides[-1]] * 1e3

    def ratio(slow, fast):
        plain = f'{rate[slow] / rate[fast]:.2f}x'
        return plain + (f', by the schedule {scheduled[slow] / scheduled[fast]:.2f}x' if slow in scheduled and fast in scheduled
                        else ', by the schedule n/a (a size was never drawn)')

    for variant in variants:
        print(f'patch speed-up over full images, {name[variant]}: {ratio(("full",) + variant, ("patch",) + variant)}')
    for variant in variants[1:]:
        for mode in ('patch', 'full'):
            print(f'{name[variant]} speed-up over fp32, {mode}: {ratio((mode, "fp32", False), (mode,) + variant)}')


@click.command()
@click.option('--only', type=click.Choice(['steps', 'loop', 'split']), help='Run one measurement (`split` runs only when named)')
@click.option('--configs', default='bench,demo', show_default=True, help='Configurations for `steps` and `split`')
@click.option('--loop-config', default='bench', show_default=True, help='Configuration for `loop`')
@click.option('--batch', type=int, default=32, show_default=True, help='Image slots per step')
@click.option('--threads', type=int, default=2, show_default=True)
@click.option('--device', default=None, help='cpu or cuda  [default: CUDA if available]')
@click.option('--repeats', type=int, default=2, show_default=True, help='Loop runs per mode (ABBA order)')
@click.option('--step-repeats', type=int, default=5, show_default=True, help='Timed steps per measurement')
@click.option('--kimg-patch', type=float, default=2.0, show_default=True)
@click.option('--kimg-full', type=float, default=1.0, show_default=True)
@click.option('--tick', type=float, default=0.5, show_default=True, help='kimg per timed tick')
@click.option('--bf16', 'want_bf16', type=bool, default=True, show_default=True, help='Also bf16, where the CPU has it')
@click.option('--compile', 'compile_net', type=bool, default=False, show_default=True, help='`loop` also with --compile=1')
@click.option('--child', default=None, hidden=True)
def main(only, configs, loop_config, batch, threads, device, repeats, step_repeats, kimg_patch, kimg_full, tick, want_bf16, compile_net, child):
    """Training speed of this machine: see the module docstring."""
    if child:
        run_child(json.loads(child))
        return
    from torch_utils import misc
    torch.set_num_threads(threads)
    dev = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    if only == 'split' and dev.type != 'cpu':
        raise click.UsageError('--only=split: the split is of CPU time; use --device=cpu')
    model, flags = cpu_description()
    bf16 = want_bf16 and (misc.cpu_has_bf16() if dev.type == 'cpu' else True)
    print(f'CPU: {model}; flags: {" ".join(flags) or "none of " + ", ".join(CPU_FLAGS)}; {threads} threads; torch {torch.__version__}')
    limits = [f'{name}={os.environ[name]}' for name in ('ONEDNN_MAX_CPU_ISA', 'ATEN_CPU_CAPABILITY') if os.environ.get(name)]
    if limits:
        print(f'instruction sets limited by {" ".join(limits)}')
    if dev.type == 'cuda':
        print(f'GPU: {torch.cuda.get_device_name(dev)}')
    dtypes = ['fp32', 'bf16'] if bf16 else ['fp32']
    if want_bf16 and not bf16:
        print('bf16: this CPU has no native bfloat16 arithmetic; fp32 only')
    probes = {'fp32': conv_probe(torch.float32, dev)}
    if bf16:
        probes['bf16'] = conv_probe(torch.bfloat16, dev)
    print('probe (64-ch 3x3 conv, 32x32, batch 32, fwd+bwd): ' + ', '.join(f'{d} {g:.0f} GFLOP/s' for d, g in probes.items()))
    if only != 'loop' and dev.type == 'cpu':
        misc.keep_freed_memory()  # as the training loop does
    if only == 'split':
        measure_split(parse_configs(configs), batch, dev, step_repeats, dtypes)
        return
    if only != 'loop':
        measure_steps(parse_configs(configs), batch, dev, step_repeats, probes, dtypes)
    if only != 'steps':
        name, config = next(iter(parse_configs(loop_config).items()))
        measure_loop(name, config, batch, threads, device, repeats, kimg_patch, kimg_full, tick, dtypes, [False, True] if compile_net else [False])


if __name__ == '__main__':
    main()
