"""Image quality against training compute: Patch Diffusion, its knobs and variants, versus
full-image EDM.

The claim under test (Wang et al. 2023): training on patches reaches a given FID with less
training than full images, and does better on small data sets. Every method trains the same
network (--preset=cpu/gpu: the study network, DDPM++ with 16 channels, mult [1,2], one block per
resolution, no attention, batch 32 on CPUs and 256 on a GPU) with the real training loop for the
SAME training compute, counted in full-image step equivalents: each step's network FLOPs (3x the
forward FLOPs of its batch at its patch size, counted by torch's FlopCounterMode; backward is about
twice the forward) divided by the FLOPs of a full-image step of the network with coordinate
channels. A step of side-s patches costs about s/R of a full step. Training wall seconds are
recorded too.

Methods (--methods):
  patch, patch-0.25, patch-0.75   random patch sizes with real_p 0.5, 0.25, 0.75 (the paper's knob)
  progressive                     smallest patches first, full images last (real_p 0.5)
  full                            full images only (--real-p=1): the same network, with coordinates
  edm                             plain EDM without coordinate channels (--patch=0)
  sum-loss                        real_p 0.5 with the original release's per-image sum loss (--loss-norm=sum)
  rising                          real_p rising from 0 to 1 over training (--real-p-end=1)
  content                         real_p 0.5, crops drawn where the image has content (--crop-sampler=content)

Each (method, seed) run trains in segments, one per evaluation point (--points, evenly spaced
over --budget): a segment resumes from the previous segment's training state, stops when its
compute reaches the point, and leaves the training loop's own snapshot and state. Training resumes
after the last finished point and scoring after the last scored one, so a study can be stopped and
continued (across sittings: rerun the same command; workers end within a second of their driver,
even one killed alone), extended to a larger --budget with the same spacing, and run folders
trained on other machines can be copied into --out (the compute axis does not depend on a
machine's speed). A run resumes when its training configuration is the same,
whatever the spelling of the options. Schedules that follow the training progress (progressive,
rising) are given the duration, in images, at which their compute reaches the budget, found by
replaying the schedule; they cannot be extended.

Post-hoc EMA (Karras et al. 2024): every run tracks the --ema-std profiles and saves them about
four times per segment; at each point the network of every --ema-search width is reconstructed
from all profiles saved until then, and the width with the lowest FID of --ema-search-num samples
(the same seeds for every width and method) is the one scored. So neither method is judged at an
EMA length chosen in advance. --ema-std=none scores the classic EMA of the snapshot instead.
--score-points scores only some points (--preset=cpu and gpu: six, log-spaced; on CPUs with a
smaller search and bf16 features, since there scoring a point costs more than training to it).

Scoring, of the chosen network: FID of --fid-num samples (seeds 0..N-1, --solver in --steps
steps) against the Inception statistics of --ref-num images of the WHOLE data set; KID and
precision/recall (k=3) against the same reference features; the memorisation share (a sample
whose nearest training image is closer than a third of its second nearest, Gu et al. 2023)
against the images the run trained on, with the closest pairs drawn. --bf16-features computes the
Inception features of reference and samples in bfloat16 (faster on CPUs with AVX512-BF16 or AMX;
FID moves slightly, so such scores are kept apart). --max-images N trains on N images drawn at
random (not the first N: the bundled MNIST starts with a thousand zeros), judged
against the whole data set. The report prints, per method, how much FID improved over the last
third of its compute (under 5%: a plateau; 5% or more worse: past its best) and the compute each
method needs to reach the best FID of full images, as a multiple of what full images needed.

Data (--data): mnist (the bundled 10,000 digits, 32x32), fashion (Fashion-MNIST, from
`apt-get install dataset-fashion-mnist`, 32x32), emoji (the bundled colour emoji, 32x32), emoji64
(the 3,786 emoji at 64x64 of noto-emoji-64x64.npz, in data/ or the shared data folder beside the
checkout), an .npz of uint8 images, or a data-set zip/folder made by dataset_tool.py. Data sets and
reference statistics are cached in --cache.

    python bench/quality.py --smoke
    python bench/quality.py --preset=cpu --out=runs/quality-mnist                  # the study, resumable
    python bench/quality.py --preset=gpu --out=runs/quality-mnist-gpu              # the same on one GPU
    python bench/quality.py --preset=cpu --max-images=1000 --out=runs/quality-mnist-1000
    python bench/quality.py --preset=cpu --data=emoji64 --cres=1,2,2 --out=runs/quality-emoji64
    python bench/quality.py --preset=cpu --train-only --out=runs/quality-mnist     # train now, score later
    python bench/quality.py --report-only --preset=cpu --out=runs/quality-mnist

Output (--out): a folder per run (`<method>-seed<k>/`: run.json, points.json, scores.json,
train.log, eval.log, `point-<i>/` with the loop's stats.jsonl, snapshot and post-hoc EMA profiles
(and, for the last point, its training state), `samples-point<i>.png` and `closest-point<i>.png`),
quality-compute.png (FID against compute, log scale, every point of every seed) and
quality-seconds.png (against training wall seconds), samples-point<last>.png and
closest-point<last>.png (the first seed's grids side by side, in --methods order), results.json
and a printed table.
"""

import concurrent.futures
import contextlib
import glob
import json
import math
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import click

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import dnnlib  # noqa: E402
from dnnlib.util import UserError, atomic_write  # noqa: E402

SOURCES = {
    'mnist': os.path.join(ROOT, 'data', 'mnist-10k-28x28.npz'),
    'fashion': '/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz',
    'emoji': os.path.join(ROOT, 'data', 'noto-emoji-32x32.npz'),
    'emoji64': 'noto-emoji-64x64.npz',  # 3,786 emoji at 64x64: data/ or the shared data folder beside the checkout
}
SHARED_DATA = (os.path.join(ROOT, 'data'), os.path.join(os.path.dirname(ROOT), 'shared', 'data'),
               os.path.join(os.path.dirname(os.path.dirname(ROOT)), 'shared', 'data'))
METHODS = {
    'patch': ('patch (real_p 0.5)', ['--real-p=0.5']),
    'patch-0.25': ('patch (real_p 0.25)', ['--real-p=0.25']),
    'patch-0.75': ('patch (real_p 0.75)', ['--real-p=0.75']),
    'progressive': ('progressive (real_p 0.5)', ['--real-p=0.5', '--progressive=1']),
    'full': ('full images (real_p 1)', ['--real-p=1']),
    'edm': ('plain EDM (--patch=0)', ['--patch=0']),
    'sum-loss': ('patch, per-image sum loss', ['--real-p=0.5', '--loss-norm=sum']),
    'rising': ('patch, real_p 0 -> 1', ['--real-p=0', '--real-p-end=1']),
    'content': ('patch, content-weighted crops', ['--real-p=0.5', '--crop-sampler=content']),
}
PROFILE_SAVES = 4  # post-hoc EMA profile files per segment
RUN_NAME = re.compile(r'^(?P<method>[\w.-]+)-seed(?P<seed>\d+)$')


# The study's network: small enough that a CPU core trains it for thousands of steps an hour and a
# GPU towards its plateau in minutes (docs/results.md, "At the plateau").
STUDY = dict(data='mnist', cbase=16, cres='1,2', batch=32, lr=2e-3, lr_rampup=2, dropout=0.0,
             train_options='--blocks=1 --attn=none', tick=2, seeds='0,1', budget=8000, points=16, fid_num=5000,
             ref_num=10000)
PRESETS = {
    # On CPUs scoring costs more than training: six log-spaced points, four EMA widths judged on 250
    # samples each, Inception features in bfloat16 (docs/results.md, "At the plateau").
    'cpu': dict(STUDY, jobs=2, threads=1, score_points='0,1,3,7,11,15', ema_search='0.03,0.06,0.10,0.15',
                ema_search_num=250, bf16_features=True),
    # On a GPU a step of this network costs its kernel launches, not its arithmetic, up to batch 256
    # (docs/gpu.md), so the GPU study trains at batch 256. Eight points, six of them scored; five EMA
    # widths on 500 samples each.
    'gpu': dict(STUDY, device='cuda', jobs=4, threads=2, batch=256, budget=4000, points=8, score_points='0,1,2,3,5,7',
                gen_batch=1000, ema_search='0.03,0.06,0.10,0.15,0.20', ema_search_num=500),
}
SMOKE = dict(score_points=None, budget=20, points=2, seeds='0', fid_num=64, ref_num=64, tick=0.1, ema_search='0.05,0.10', ema_search_num=64)


def run_name(method, seed):
    """The folder of a run in --out."""
    return f'{method}-seed{seed}'


def log(text):
    print(text, flush=True)


def read_json(path, default=None):
    """The JSON in `path`, or `default` if there is no such file."""
    if not os.path.exists(path):
        return default
    with open(path, encoding='utf-8') as f:
        return json.load(f)


def write_json(path, data):
    """Writes `data` to `path` as JSON, atomically (a study may be interrupted at any time)."""
    with atomic_write(path, 'w', encoding='utf-8') as f:
        json.dump(data, f, indent=2)

# ----------------------------------------------------------------------------------------------
# Data and reference statistics.


def prepare_data(data, max_images, cache):
    """(training data set, whole data set for the reference), both built once into `cache`."""
    os.makedirs(cache, exist_ok=True)
    if data in SOURCES:
        source = find_source(data)
        full = os.path.join(cache, f'{data}.zip' if data == 'emoji64' else f'{data}-32x32.zip')
        build_zip(source, full)
    elif data.endswith('.npz'):
        if not os.path.isfile(data):
            raise UserError(f'--data: {data} does not exist')
        full = os.path.join(cache, os.path.splitext(os.path.basename(data))[0] + '.zip')
        build_zip(data, full)
    else:
        full = os.path.abspath(data)
        if not os.path.exists(full):
            raise UserError(f'--data: {full} does not exist')
    if max_images is None:
        return full, full
    name = os.path.splitext(os.path.basename(full))[0]
    subset = os.path.join(cache, f'{name}-random{max_images}-seed0.zip')
    build_random_subset(full, subset, max_images, seed=0)
    return subset, full


def find_source(data):
    """The file of a named data set; the 64x64 emoji are looked for in data/ and in the shared data
    folder beside the checkout."""
    source = SOURCES[data]
    if not os.path.isabs(source):
        found = [os.path.join(folder, source) for folder in SHARED_DATA if os.path.exists(os.path.join(folder, source))]
        if not found:
            raise UserError(f'--data={data}: {source} is in none of {", ".join(SHARED_DATA)}')
        return found[0]
    if not os.path.exists(source):
        hint = ' (apt-get install -y dataset-fashion-mnist)' if data == 'fashion' else ''
        raise UserError(f'--data={data}: {source} not found{hint}')
    return source


def build_random_subset(full, dest, count, seed):
    """A data set of `count` images drawn at random (without replacement, by `seed`) from the data
    set `full`. Not the first `count`: MNIST files are often sorted by class."""
    if os.path.exists(dest):
        return
    import numpy as np
    from training.dataset import ImageFolderDataset
    dataset = ImageFolderDataset(full)
    if count > len(dataset):
        raise UserError(f'--max-images: {count} is more than the {len(dataset)} images of {full}')
    picks = np.random.default_rng(seed).choice(len(dataset), size=count, replace=False)
    images = np.stack([dataset[int(i)][0] for i in picks]).transpose(0, 2, 3, 1)
    source = dest + '.source.npz'
    np.savez(source, images=images[..., 0] if images.shape[3] == 1 else images)
    try:
        build_zip(source, dest)
    finally:
        os.remove(source)


def build_zip(source, dest):
    """dataset_tool.py convert of `source` into a zip (MNIST's 28x28 digits are resized to 32x32;
    dataset_tool pads Fashion-MNIST's idx files itself; other images keep their size)."""
    if os.path.exists(dest):
        return
    cmd = [sys.executable, os.path.join(ROOT, 'dataset_tool.py'), 'convert', f'--source={source}', f'--dest={dest}']
    if source == SOURCES['mnist']:
        cmd.append('--resolution=32x32')
    log(f'building {dest} ...')
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def reference_stats(full, ref_num, cache, threads, device=None, bf16=False):
    """Inception statistics and features of `ref_num` images of the whole data set (a random
    subset, seed 0; all of it if smaller), cached by name and count, computed on `device` (the
    study's: CUDA where there is one); the features serve KID and precision/recall."""
    import torch
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    from training import metrics
    name = os.path.splitext(os.path.basename(full))[0]
    num = min(ref_num, len(metrics.list_image_files(full)[1]))
    path = os.path.join(cache, f'{name}-ref{num}{"-bf16" if bf16 else ""}-features.npz')
    if not os.path.exists(path):
        log(f'reference statistics: Inception features of {num} images of {full} ...')
        torch.set_num_threads(threads)
        start = time.time()
        mu, sigma, feats = metrics.calculate_inception_stats(full, num_expected=num, seed=0, device=device, num_workers=0, bf16=bf16,
                                                         return_features=True)
        metrics.save_stats(path, mu, sigma, feats)
        log(f'  {time.time() - start:.0f} s -> {path}')
    return path, int(num)

# ----------------------------------------------------------------------------------------------
# Training configuration and compute.


def method_options(cfg, method):
    """train.py options of a method, without the machine-specific ones (--data, --device): the
    bench preset with this study's network and schedule, no augmentation (so every method trains
    the same network), then --train-options, the method's own options, and the post-hoc EMA
    profiles to track last."""
    return ['--preset=bench', f'--cbase={cfg.cbase}', f'--cres={cfg.cres}', f'--batch={cfg.batch}', f'--lr={cfg.lr}',
            f'--lr-rampup={cfg.lr_rampup / 1000}', f'--dropout={cfg.dropout}', '--augment=0', f'--tick={cfg.tick}',
            '--workers=0'] + (cfg.get('train_options') or '').split() + METHODS[method][1] + \
        ([f'--ema-std={cfg.ema_std}'] if cfg.get('ema_std') else [])


def loop_config(options, data, seed):
    """The training loop's keyword arguments for `options`, validated by train.py itself."""
    import train
    argv = ['--outdir=unused', f'--data={data}'] + options
    c, _desc = train.build_config(dnnlib.EasyDict(train.main.make_context('train.py', argv).params), 1)
    c.seed = seed
    return c


def step_flops(c):
    """{patch side: FLOPs of one training step} of the network of `c`: 3x the forward FLOPs of
    the step's batch (batch x R/s patches of side s)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from training import patch as patch_lib
    dataset = dnnlib.construct_class_by_name(**c.dataset_kwargs)
    res, channels = dataset.resolution, dataset.num_channels
    net = dnnlib.construct_class_by_name(**c.network_kwargs, img_resolution=res, img_channels=channels, label_dim=0)
    flops = {}
    for side in (c.patch_kwargs.patch_sizes if c.patch_kwargs else [res]):
        n = res // side
        coords = patch_lib.coord_grid(res, side).unsqueeze(0).expand(n, -1, -1, -1) if net.use_coords else None
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net(torch.zeros(n, channels, side, side), torch.ones(n), coords=coords)
        flops[side] = 3 * counter.get_total_flops() * c.batch_size
    return flops


def images_for_budget(c, cost, budget):
    """Images a run of `c` consumes until its compute (`cost`: full-step equivalents per patch
    side) reaches `budget`, by replaying its patch schedule. A schedule that follows the progress
    (images seen / total) depends on the total it is given, so iterate to a fixed point."""
    from training import patch as patch_lib
    res = max(cost)
    if not c.patch_kwargs:
        return math.ceil(budget / cost[res] - 1e-9) * c.batch_size
    schedule = patch_lib.PatchSchedule(res, seed=c.seed, **c.patch_kwargs)
    total = budget / cost[res] * c.batch_size
    for _ in range(10):
        nimg, spent, step = 0, 0.0, 0
        while spent < budget - 1e-9:
            side = schedule.size_for_step(step, nimg / total)
            nimg, spent, step = nimg + c.batch_size * schedule.batch_mul(side), spent + cost[side], step + 1
        if nimg == total:
            break
        total = nimg
    return int(total)


def follows_progress(c):
    """Whether the patch schedule of `c` depends on the fraction of training done."""
    return bool(c.patch_kwargs) and (c.patch_kwargs.progressive or c.patch_kwargs.real_p_end is not None)


def full_step_flops(cfg, data):
    """FLOPs of a full-image step of the network with coordinates: the unit of compute."""
    c = loop_config(method_options(cfg, 'full'), data, 0)
    return step_flops(c)[c.dataset_kwargs.resolution]


def run_spec(cfg, method, seed, data, full_flops):
    """What defines a run: its options, compute targets, duration and step costs."""
    options = method_options(cfg, method)
    c = loop_config(options, data, seed)
    flops = step_flops(c)
    cost = {side: value / full_flops for side, value in flops.items()}
    targets = [cfg.budget * (i + 1) / cfg.points for i in range(cfg.points)]
    total = images_for_budget(c, cost, cfg.budget)
    res = max(cost)
    return dict(method=method, seed=seed, options=options, config=training_signature(c), targets=targets, total_kimg=total / 1000,
                follows_progress=follows_progress(c), full_step_flops=full_flops,
                cost={str(c.batch_size * (res // side)): value for side, value in cost.items()})


def training_signature(c):
    """The training loop's configuration as JSON, less what does not change the training (where
    the data set lies, loader workers, the duration that each segment sets): two runs with the same
    signature train alike whatever the spelling of their options."""
    c = json.loads(json.dumps(c))
    c['dataset_kwargs'].pop('path', None)
    for key in ('data_loader_kwargs', 'total_kimg', 'kimg_per_tick', 'run_dir'):
        c.pop(key, None)
    return c


def check_resumable(run_dir, new):
    """The run in `run_dir` may go on under `new` if it has no finished point, or was trained
    with the same training configuration (the same options, for runs that did not record it) and
    its finished points are the first points of `new`; a schedule that follows the progress also
    needs the same duration."""
    old = read_json(os.path.join(run_dir, 'run.json'))
    done = len(read_json(os.path.join(run_dir, 'points.json'), []))
    if old is None or not done:
        return
    name = os.path.basename(run_dir)
    if ('config' in old and old['config'] != new['config']) or ('config' not in old and old['options'] != new['options']):
        raise UserError(f'--out: run {name} was trained with other options ({" ".join(old["options"])}); use another --out')
    if any(not math.isclose(a, b) for a, b in zip(old['targets'][:done], new['targets'])) or done > len(new['targets']):
        raise UserError(f'--budget/--points: run {name} has points at {old["targets"][:done]} full steps, not at the '
                        'first points of this budget; keep the spacing or use another --out')
    if old['follows_progress'] and not math.isclose(old['total_kimg'], new['total_kimg']):
        raise UserError(f'--budget: run {name} follows its training progress and cannot be extended; use another --out')

# ----------------------------------------------------------------------------------------------
# Workers (one process each, `--threads` threads).


def worker_init(threads, driver):
    """Each worker process computes with `threads` threads and ends with its driver."""
    import torch
    torch.set_num_threads(threads)
    threading.Thread(target=exit_without_driver, args=(driver,), daemon=True).start()


def exit_without_driver(driver, interval=1.0):
    """Ends this worker once the driver process `driver` is gone (killed without its workers, by
    SIGTERM or SIGKILL), so a restarted study never shares a run folder with a stale writer."""
    while os.getppid() == driver:
        time.sleep(interval)
    os._exit(1)


@contextlib.contextmanager
def logged_to(path):
    """stdout and stderr of this worker into `path` (appended)."""
    with open(path, 'a', encoding='utf-8') as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        yield


def train_run(cfg, spec, run_dir, data):
    """Worker: trains a run to each of its points in turn, after the last finished one."""
    os.makedirs(run_dir, exist_ok=True)
    points = read_json(os.path.join(run_dir, 'points.json'), [])
    write_json(os.path.join(run_dir, 'run.json'), spec)
    with logged_to(os.path.join(run_dir, 'train.log')):
        import torch_utils.distributed as dist
        device = dist.init(cfg.device)
        for index in range(len(points), len(spec['targets'])):
            points.append(train_segment(cfg, spec, run_dir, data, index, points[-1] if points else None, device))
            write_json(os.path.join(run_dir, 'points.json'), points)
            if len(points) > 1 and os.path.exists(os.path.join(run_dir, points[-2]['state'])):
                os.remove(os.path.join(run_dir, points[-2]['state']))  # only the last state is resumed from
    return points


def train_segment(cfg, spec, run_dir, data, index, previous, device):
    """Trains from the previous point's state until the compute reaches point `index`; returns
    the point (paths relative to the run folder, so that run folders can move)."""
    from training import run_files, training_loop, training_state
    segment = os.path.join(run_dir, f'point-{index}')
    shutil.rmtree(segment, ignore_errors=True)  # an interrupted segment starts over
    os.makedirs(segment)
    c = loop_config(spec['options'], data, spec['seed'])
    never = 1 << 40
    c.update(run_dir=segment, total_kimg=spec['total_kimg'], snapshot_ticks=profile_ticks(c, spec), state_dump_ticks=never,
             sample_grid=False, resume_state=os.path.join(run_dir, previous['state']) if previous else None)
    now = dict(nimg=0, compute=0.0, seconds=0.0, steps=0) if previous is None else \
        {k: previous[k] for k in ('nimg', 'compute', 'seconds', 'steps')}
    start_seconds, target = now['seconds'], spec['targets'][index]

    def at_step(info):
        now['compute'] += spec['cost'][str(info.nimg - now['nimg'])]
        now.update(nimg=info.nimg, steps=info.step, seconds=start_seconds + info.seconds)
        return now['compute'] >= target - 1e-9

    training_loop.training_loop(**c, device=device, step_callback=at_step)
    kimg = now['nimg'] // 1000
    snapshot = os.path.join(segment, run_files.snapshot_name(kimg))
    for extra in glob.glob(os.path.join(segment, 'network-snapshot-*')):
        if os.path.splitext(extra)[0] != os.path.splitext(snapshot)[0]:
            os.remove(extra)  # snapshots saved with the intermediate profiles; the profiles stay
    log(f'point {index}: {now["compute"]:.1f} full steps, {now["steps"]} steps, {now["nimg"] / 1e3:.2f} kimg, '
        f'{now["seconds"]:.0f} s')
    return dict(now, point=index, kimg=now['nimg'] / 1e3, snapshot=os.path.relpath(snapshot, run_dir),
                state=os.path.relpath(os.path.join(segment, training_state.state_name(kimg)), run_dir))


def profile_ticks(c, spec):
    """Ticks between saves of the post-hoc EMA profiles: about PROFILE_SAVES per segment, so that
    every point's reconstruction has profiles of several ages to combine, and at least a kimg apart
    (the files are named by kimg); never without profiles."""
    if not c.get('phema_kwargs'):
        return 1 << 40
    segment_kimg = spec['total_kimg'] / len(spec['targets'])
    return max(math.ceil(1 / c.kimg_per_tick), round(segment_kimg / PROFILE_SAVES / c.kimg_per_tick))


def scoring(cfg):
    """What a score depends on besides the point and the reference: sample count, solver and EMA search."""
    how = dict(fid_num=cfg.fid_num, solver=cfg.solver, steps=cfg.steps, ema_search=cfg.ema_search or None,
               ema_search_num=cfg.ema_search_num if cfg.ema_search else None)
    if cfg.get('bf16_features'):
        how['bf16_features'] = True
    return how


def score_key(point, how, ref_path):
    """What a score is valid for: the point's snapshot, the reference and `scoring(cfg)`."""
    return [point['point'], point['snapshot'], os.path.basename(ref_path), how]


def points_to_score(run_dir, scores, how, ref_path, first=None, only=None):
    """The points of a run without a score for this snapshot, scoring and reference, last first;
    with `first`, the points up to that index come before the later ones, so that runs trained to
    different points are compared at the last point they all reached before anything else; with
    `only`, just the point indices in it (a log-spaced curve costs a few points, not all)."""
    done = [s['key'] for s in scores]
    points = [p for p in reversed(read_json(os.path.join(run_dir, 'points.json'), []))
              if score_key(p, how, ref_path) not in done and (only is None or p['point'] in only)]
    if first is None:
        return points
    return [p for p in points if p['point'] <= first] + [p for p in points if p['point'] > first]


def last_common_point(run_dirs):
    """The last point index that every run folder has reached (None if one has none)."""
    reached = [len(read_json(os.path.join(run_dir, 'points.json'), [])) for run_dir in run_dirs]
    return min(reached) - 1 if reached and min(reached) else None


def profile_sources(run_dir, step):
    """[(step, exponent, file, index in file)] of the post-hoc EMA profiles that a run saved up to
    optimizer step `step`, in all its segments."""
    from training import phema
    sources = []
    for path in sorted(glob.glob(os.path.join(run_dir, 'point-*', 'phema-*.pt'))):
        state = phema.load_saved(path)
        if state['step'] <= step:
            sources += [(state['step'], gamma, path, i) for i, gamma in enumerate(state['gamma'])]
    return sources


def ema_candidates(stds, run_dir, point, net):
    """[(σ_rel, network, fit residual)]: for a run with post-hoc EMA profiles, the network of every
    width in `stds` reconstructed at the point's step from all profiles saved until then (Karras et
    al. 2024), with the relative L2 error of its profile's fit (narrow widths fit worse early, when
    few profiles are saved); else [(None, the snapshot's classic EMA network, None)]."""
    sources = profile_sources(run_dir, point['steps']) if stds else []
    if not sources:
        return [(None, net, None)]
    import numpy as np
    import reconstruct_phema
    from training import phema
    t_src = np.array([source[0] for source in sources], np.float64)
    gamma_src = np.array([source[1] for source in sources], np.float64)
    solved = [phema.solve_weights(t_src, gamma_src, point['steps'], phema.std_to_exp(std)) for std in stds]
    sums = reconstruct_phema.combine(sources, np.stack([weights for weights, _ in solved], axis=1))
    return [(std, phema.network_with(net, params), residual) for std, params, (_, residual) in zip(stds, sums, solved)]


def generate(cfg, net, num, device):
    """uint8 images of the seeds 0..num-1 (the same seeds for every network) by --solver in --steps steps."""
    from training import sampler
    return sampler.sample_images(net, list(range(num)), device=device, batch_size=cfg.gen_batch, solver=cfg.solver,
                                 num_steps=cfg.steps)


def fid_of(detector, images, ref):
    """FID of uint8 `images` against the reference dict (mu, sigma)."""
    from training import metrics
    mu, sigma = metrics.stats_from_features(metrics.compute_features(detector, images))
    return float(metrics.calculate_fid_from_inception_stats(mu, sigma, ref['mu'], ref['sigma']))


def memorisation(images, train_data, pairs_path, device, pairs=16):
    """(share of `images` that copy a training image, median distance ratio d1/d2) against the
    data set the run trained on (Gu et al. 2023: d1 < d2/3), and the closest pairs as a PNG."""
    import numpy as np
    from training import memorisation as mem
    from training.dataset import ImageFolderDataset
    dataset = ImageFolderDataset(train_data)
    neighbours = mem.nearest_two(images, mem.dataset_blocks(dataset, 4096), device=device)
    mem.pairs_grid(images, neighbours, dataset, min(pairs, len(images)), pairs_path)
    ratio = neighbours.d1 / np.maximum(neighbours.d2, 1e-12)
    return float(neighbours.memorised().mean()), float(np.median(ratio))


def score_point(cfg, run_dir, point, ref, detector, device, train_data):
    """The scores of one point: the best EMA width of the search by FID of --ema-search-num samples
    (the same seeds for every width and method), then FID, KID, precision/recall (k=3) and the
    memorisation share of --fid-num samples of that network; its samples and closest pairs as PNGs."""
    from training import checkpoints, metrics
    from torch_utils import png
    start = time.time()
    net = checkpoints.load_network(os.path.join(run_dir, point['snapshot']))[0].to(device)
    candidates = ema_candidates(cfg.ema_search, run_dir, point, net)
    search = {}
    if len(candidates) > 1:
        search = {f'{std:.3f}': fid_of(detector, generate(cfg, candidate, cfg.ema_search_num, device), ref)
                  for std, candidate, _ in candidates}
    std, net, residual = min(candidates, key=lambda c: search[f'{c[0]:.3f}']) if search else candidates[0]
    images = generate(cfg, net, cfg.fid_num, device)
    index = point['point']
    png.save_image_grid(images[:64], os.path.join(run_dir, f'samples-point{index}.png'))
    feats = metrics.compute_features(detector, images)
    mu, sigma = metrics.stats_from_features(feats)
    scores = {k: float(v) for k, v in metrics.score_features(mu, sigma, feats, ref, ('fid', 'kid', 'pr')).items()}
    memorised, ratio = memorisation(images, train_data, os.path.join(run_dir, f'closest-point{index}.png'), device)
    return dict(scores, point=index, ema_std=std, ema_residual=residual, ema_search=search, memorised=memorised, d1_d2=ratio,
                eval_sec=time.time() - start)


def score_run(cfg, run_dir, ref_path, train_data, first=None):
    """Worker: scores every point of a run not scored yet with this scoring and reference, the
    last point first (the key comparison if time runs short; `first` as in `points_to_score`)."""
    if not os.path.isdir(run_dir):
        log(f'{os.path.basename(run_dir)}: not trained yet')
        return []
    with logged_to(os.path.join(run_dir, 'eval.log')):
        import numpy as np
        import torch
        from training import metrics
        device = torch.device(cfg.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
        scores = read_json(os.path.join(run_dir, 'scores.json'), [])
        how = scoring(cfg)
        todo = points_to_score(run_dir, scores, how, ref_path, first, cfg.get('score_points'))
        if not todo:
            return scores
        ref = dict(np.load(ref_path))
        detector = metrics.load_detector(device=device, bf16=cfg.bf16_features)
        for point in todo:
            scores.append(dict(score_point(cfg, run_dir, point, ref, detector, device, train_data),
                               key=score_key(point, how, ref_path)))
            write_json(os.path.join(run_dir, 'scores.json'), scores)
            s = scores[-1]
            width = 'classic EMA' if s['ema_std'] is None else f'EMA width {s["ema_std"]:.3f}, fit residual {s["ema_residual"]:.2f}'
            log(f'point {point["point"]}: {metrics.fid_label(cfg.fid_num)} {s["fid"]:.2f}, KID {s["kid"] * 1e3:.1f}e-3, '
                f'precision {s["precision"]:.3f}, recall {s["recall"]:.3f}, memorised {s["memorised"]:.1%} '
                f'({width}; {s["eval_sec"]:.0f} s)')
    return scores

# ----------------------------------------------------------------------------------------------
# Driver.


def run_all(cfg, runs, train_data, ref_path):
    """Trains the runs (unless --eval-only) and scores each as soon as its training is done, at
    most --jobs processes at once; raises a UserError naming the runs that failed."""
    failed = []
    os.environ.update(OMP_NUM_THREADS=str(cfg.threads), MKL_NUM_THREADS=str(cfg.threads))
    context = multiprocessing.get_context('spawn')
    with concurrent.futures.ProcessPoolExecutor(cfg.jobs, mp_context=context, initializer=worker_init,
                                                initargs=(cfg.threads, os.getpid())) as pool:
        pending = {}
        first = last_common_point([os.path.join(cfg.out, name) for name in runs]) if cfg.eval_only else None
        for name, spec in runs.items():
            run_dir = os.path.join(cfg.out, name)
            if cfg.eval_only:
                pending[pool.submit(score_run, cfg, run_dir, ref_path, train_data, first)] = (name, 'scoring', run_dir)
            else:
                pending[pool.submit(train_run, cfg, spec, run_dir, train_data)] = (name, 'training', run_dir)
        while pending:
            finished, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                name, what, run_dir = pending.pop(future)
                try:
                    future.result()
                except Exception as err:  # the run's log has the details; the others go on
                    failed.append(name)
                    log(f'{name}: {what} failed ({type(err).__name__}: {err}); see {run_dir}/'
                        f'{"train" if what == "training" else "eval"}.log')
                    continue
                log(f'{name}: {what} done')
                if what == 'training' and not cfg.train_only:
                    pending[pool.submit(score_run, cfg, run_dir, ref_path, train_data)] = (name, 'scoring', run_dir)
    if failed:
        raise UserError(f'--out: {len(failed)} run(s) failed: {", ".join(failed)}')


METRICS = ('fid', 'kid', 'precision', 'recall', 'memorised')


def collect(out, methods, how, ref_path):
    """{method: [{point, seeds, compute, seconds, kimg, steps, fid, fid_min, fid_max, kid, precision,
    recall, memorised, runs}]}: the points of every run folder in `out` (whatever machine trained
    it) scored with `how` against `ref_path`, mean over seeds; `runs` keeps each seed's row."""
    table = {}
    for run_dir in sorted(glob.glob(os.path.join(out, '*-seed*'))):
        match = RUN_NAME.match(os.path.basename(run_dir))
        if not match or match['method'] not in methods:
            continue
        points = {p['point']: p for p in read_json(os.path.join(run_dir, 'points.json'), [])}
        for score in read_json(os.path.join(run_dir, 'scores.json'), []):
            point = points.get(score['point'])
            if point is not None and score['key'] == score_key(point, how, ref_path):
                row = dict(point, **score, seed=int(match['seed']))
                table.setdefault(match['method'], {}).setdefault(score['point'], []).append(row)
    result = {}
    for method in methods:
        rows = []
        for index, runs in sorted(table.get(method, {}).items()):
            keys = ('compute', 'seconds', 'kimg', 'steps') + tuple(k for k in METRICS if all(k in r for r in runs))
            mean = {k: sum(r[k] for r in runs) / len(runs) for k in keys}
            rows.append(dict(mean, point=index, seeds=len(runs), fid_min=min(r['fid'] for r in runs),
                             fid_max=max(r['fid'] for r in runs),
                             runs=[{k: r.get(k) for k in ('seed', 'compute', 'seconds', 'fid', 'ema_std', 'ema_residual') + METRICS}
                                   for r in runs]))
        result[method] = rows
    return result


def last_third_gain(rows):
    """Relative FID improvement over the last third of a curve, (FID at 2/3 − FID at the end) /
    FID at 2/3, the FID at 2/3 of the last compute interpolated linearly in log compute; None with
    fewer than two points. Below 0.05 the curve counts as a plateau."""
    if len(rows) < 2:
        return None
    xs = [math.log(r['compute']) for r in rows]
    at = math.log(rows[-1]['compute'] * 2 / 3)
    if at < xs[0]:
        return None
    fid = interpolate(xs, [r['fid'] for r in rows], at)
    return (fid - rows[-1]['fid']) / fid


def plateau_verdict(gain):
    """What a last-third gain says: still improving (5% or more), past its best (5% or more
    worse: over-fitting), else a plateau."""
    if gain >= 0.05:
        return 'still improving'
    return 'past its best' if gain <= -0.05 else 'a plateau'


def interpolate(xs, ys, x):
    """y at `x` on the polyline through (xs, ys), xs increasing."""
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    raise ValueError(f'{x} is outside [{xs[0]}, {xs[-1]}]')


def compute_to_reach(rows, fid):
    """The compute at which a curve first reaches `fid`, interpolated in log compute between the
    scored points; None if it never does (or already had at its first point)."""
    for a, b in zip(rows, rows[1:]):
        if a['fid'] > fid >= b['fid']:
            t = (a['fid'] - fid) / (a['fid'] - b['fid'])
            return math.exp(math.log(a['compute']) + t * (math.log(b['compute']) - math.log(a['compute'])))
    return None


def best_point(rows):
    """The first scored point with the lowest FID: a curve's last while it improves, earlier once
    training over-fits (a model copying a small data set gets worse with more compute)."""
    return min(rows, key=lambda r: r['fid'])


def compute_ratios(table, reference='full'):
    """{method: compute to reach `reference`'s best FID / the compute at which `reference` reached
    it} (below 1: the method gets there with less) for every method that reaches it."""
    base = table.get(reference) or []
    if not base:
        return {}
    best = best_point(base)
    target, own = best['fid'], best['compute']
    ratios = {}
    for method, rows in table.items():
        reached = compute_to_reach(rows, target) if method != reference else own
        if reached is not None:
            ratios[method] = reached / own
    return ratios


def plot_series(table, axis):
    """{label: [(x, FID)]}: every scored point, one series per method and seed; x is `axis`."""
    series = {}
    for method, rows in table.items():
        for row in rows:
            for run in row['runs']:
                series.setdefault(f'{METHODS[method][0]}, seed {run["seed"]}', []).append((run[axis], run['fid']))
    return series


def side_by_side(paths, dest, gap=16):
    """One PNG with the images at `paths` left to right on a white background, so that the sample
    grids of the methods can be compared at a glance."""
    import PIL.Image
    if not paths:
        return
    images = [PIL.Image.open(p).convert('RGB') for p in paths]
    canvas = PIL.Image.new('RGB', (sum(i.width for i in images) + gap * (len(images) - 1), max(i.height for i in images)),
                           (255, 255, 255))
    x = 0
    for image in images:
        canvas.paste(image, (x, 0))
        x += image.width + gap
    with atomic_write(dest, 'wb') as f:
        canvas.save(f, format='PNG')


def report(cfg, methods, train_data, ref_path, ref_num):
    """The table, the plateau and compute-ratio lines, the plots, the side-by-side grids and
    results.json of what is scored."""
    from training import metrics
    from dnnlib import plot
    label = metrics.fid_label(cfg.fid_num)
    table = collect(cfg.out, methods, scoring(cfg), ref_path)
    log(f'\n{"method":<12s} {"point":>5s} {"seeds":>5s} {"full steps":>10s} {"train s":>8s} {"kimg":>8s} '
        f'{label:>9s} {"(min-max)":>15s} {"KID x1e3":>8s} {"prec.":>6s} {"recall":>6s} {"copies":>6s}')
    for method, rows in table.items():
        for r in rows:
            log(f'{method:<12s} {r["point"]:>5d} {r["seeds"]:>5d} {r["compute"]:>10.0f} {r["seconds"]:>8.0f} '
                f'{r["kimg"]:>8.2f} {r["fid"]:>9.2f} {r["fid_min"]:>7.2f}-{r["fid_max"]:<7.2f} {r.get("kid", math.nan) * 1e3:>8.2f} '
                f'{r.get("precision", math.nan):>6.3f} {r.get("recall", math.nan):>6.3f} {r.get("memorised", math.nan):>6.1%}')
    gains = {m: last_third_gain(rows) for m, rows in table.items()}
    for method, gain in gains.items():
        if gain is not None:
            log(f'{method}: FID {gain:.1%} better over the last third of its compute ({plateau_verdict(gain)})')
    ratios = compute_ratios(table)
    best = best_point(table['full']) if ratios else None
    for method, ratio in ratios.items():
        if method != 'full':
            log(f'{method}: {ratio:.2f}x the compute of full images to reach their best FID '
                f'({best["fid"]:.2f} at {best["compute"]:.0f})')
    subset = f', {cfg.max_images} random images' if cfg.max_images else ''
    title = f'{label} vs training: {os.path.basename(train_data)}{subset}, DDPM++ {cfg.cbase} ch [{cfg.cres}], batch {cfg.batch}'
    for axis, xlabel in (('compute', 'training compute (full-image step equivalents)'),
                         ('seconds', 'training wall-clock seconds (machines may differ)')):
        series = plot_series(table, axis)
        plot.line_plot(os.path.join(cfg.out, f'quality-{axis}.png'), series, xlabel=xlabel, ylabel=label, title=title,
                       logx=True)
    last = max((r['point'] for rows in table.values() for r in rows), default=None)
    if last is not None:
        for kind in ('samples', 'closest'):
            grids = [os.path.join(cfg.out, run_name(m, cfg.seeds[0]), f'{kind}-point{last}.png') for m in methods]
            side_by_side([g for g in grids if os.path.exists(g)], os.path.join(cfg.out, f'{kind}-point{last}.png'))
    write_json(os.path.join(cfg.out, 'results.json'),
               dict(config={k: v for k, v in cfg.items() if k not in ('eval_only', 'report_only')}, train_data=train_data,
                    reference=dict(path=ref_path, num=ref_num), methods=table, last_third_gain=gains,
                    compute_ratio_to_full=ratios, command=' '.join(sys.argv)))
    log(f'plots: {os.path.join(cfg.out, "quality-compute.png")}, quality-seconds.png\n'
        f'results: {os.path.join(cfg.out, "results.json")}')


def apply_preset(cfg, given):
    """`cfg` with the settings of --preset (then of --smoke) in place of every option not in
    `given`, the options named on the command line."""
    settings = dict(PRESETS[cfg.preset]) if cfg.preset else {}
    if cfg.smoke:
        settings.update(SMOKE)
    return dnnlib.EasyDict(cfg, **{k: v for k, v in settings.items() if k not in given})


def parse_list(option, text, choices=None, kind=str):
    try:
        items = [kind(t.strip()) for t in text.split(',') if t.strip()]
    except ValueError:
        raise UserError(f'{option}: "{text}" is not a comma-separated list of {kind.__name__}s') from None
    unknown = [i for i in items if choices is not None and i not in choices]
    if unknown or not items:
        raise UserError(f'{option}: unknown or missing "{",".join(map(str, unknown))}" (choose from {", ".join(choices or [])})')
    return items


def parse_score_points(text, points):
    """The point indices of --score-points (None: all), each one of the `points` points."""
    if text is None:
        return None
    indices = parse_list('--score-points', text, kind=int)
    if not all(0 <= i < points for i in indices):
        raise UserError(f'--score-points: indices must lie in 0..{points - 1} (--points={points})')
    return indices


@click.command(context_settings=dict(show_default=True, max_content_width=100))
@click.option('--data', help='mnist, fashion, emoji, or a data-set zip/folder', metavar='NAME|PATH', default='mnist')
@click.option('--max-images', 'max_images', help='Train on N random images of the data set (judged against all of it)',
              metavar='N', type=click.IntRange(min=1))
@click.option('--methods', help=f'Comma list of {", ".join(METHODS)}', metavar='LIST', default='patch,full')
@click.option('--seeds', help='Training seeds, one run per method and seed', metavar='LIST', default='0,1')
@click.option('--budget', help='Training compute per run, in full-image step equivalents', metavar='STEPS',
              type=click.FloatRange(min=0, min_open=True), default=2000)
@click.option('--points', help='Evaluation points, evenly spaced over the budget', metavar='N', type=click.IntRange(min=1), default=4)
@click.option('--score-points', 'score_points', help='Point indices to score (0 is the first), e.g. 0,1,3,7,11,15 of 16 for a log-spaced curve  [default: all]',
              metavar='LIST')
@click.option('--fid-num', 'fid_num', help='Samples per FID/KID evaluation', metavar='N', type=click.IntRange(min=2), default=1000)
@click.option('--ref-num', 'ref_num', help='Reference images of the whole data set (at most all of it)', metavar='N',
              type=click.IntRange(min=2), default=10000)
@click.option('--cbase', help='Channel multiplier', metavar='INT', type=click.IntRange(min=1), default=32)
@click.option('--cres', help='Channels per resolution', metavar='LIST', default='1,2,2')
@click.option('--batch', help='Batch size (image slots per step)', metavar='INT', type=click.IntRange(min=1), default=32)
@click.option('--lr', help='Learning rate', metavar='FLOAT', type=float, default=1e-3)
@click.option('--lr-rampup', 'lr_rampup', help='Learning-rate warm-up', metavar='KIMG', type=float, default=0.5)
@click.option('--dropout', help='Dropout probability', metavar='FLOAT', type=float, default=0.13)
@click.option('--train-options', 'train_options', help='More train.py options for every method, e.g. "--blocks=1 --attn=none --precision=bf16"',
              metavar='STR', default='')
@click.option('--tick', help='kimg per status line / stats.jsonl record', metavar='KIMG', type=float, default=0.5)
@click.option('--solver', help='Sampling solver (training.sampler)', metavar='NAME', default='dpmpp-2m')
@click.option('--steps', help='Sampling steps (noise levels)', metavar='INT', type=click.IntRange(min=1), default=15)
@click.option('--gen-batch', 'gen_batch', help='Images sampled at once', metavar='INT', type=click.IntRange(min=1), default=250)
@click.option('--ema-std', 'ema_std', help='Post-hoc EMA profiles tracked while training (train.py --ema-std); none: the classic EMA only',
              metavar='LIST', default='0.050,0.100')
@click.option('--ema-search', 'ema_search', help='EMA widths (sigma_rel) reconstructed at every point; the best by FID is scored',
              metavar='LIST', default='0.02,0.04,0.06,0.08,0.10,0.13,0.16')
@click.option('--ema-search-num', 'ema_search_num', help='Samples per width in the EMA search', metavar='N',
              type=click.IntRange(min=2), default=1000)
@click.option('--bf16-features', 'bf16_features', help='Inception features (reference and samples) in bfloat16 where the device computes it natively: faster, moves FID by a few per cent',
              is_flag=True)
@click.option('--jobs', help='Processes at once (runs train and score concurrently)', metavar='N', type=click.IntRange(min=1), default=2)
@click.option('--threads', help='Threads per process', metavar='N', type=click.IntRange(min=1), default=1)
@click.option('--device', help='cpu or cuda  [default: cuda if available]', metavar='STR')
@click.option('--out', help='Output folder  [default: runs/quality-<data>[-<max-images>]]', metavar='DIR')
@click.option('--cache', help='Data sets and reference statistics', metavar='DIR', default=os.path.join(ROOT, 'runs', 'quality-cache'))
@click.option('--preset', help=f'Study settings, overridden by explicit options: {", ".join(PRESETS)}', metavar='NAME',
              type=click.Choice(list(PRESETS)))
@click.option('--smoke', help='Tiny end-to-end check: budget 20, 2 points, one seed, FID-64 against 64 images', is_flag=True)
@click.option('--train-only', 'train_only', help='Only train (no reference statistics, no scoring): score later with --eval-only', is_flag=True)
@click.option('--eval-only', 'eval_only', help='No training: score the points in --out not scored yet, then report', is_flag=True)
@click.option('--report-only', 'report_only', help='Only redo the table, plots and results.json from --out', is_flag=True)
def main(**kwargs):
    """Image quality against training compute: patch training, its knobs and variants versus full
    images, several seeds each, resumable (details in the module docstring of bench/quality.py).

    \b
    Examples:
    \b
    python bench/quality.py --smoke
    python bench/quality.py --data=mnist --methods=patch,full,edm --budget=4000 --points=8 --fid-num=5000
    python bench/quality.py --data=emoji --max-images=1000 --methods=patch,full,rising,sum-loss
    python bench/quality.py --report-only --out=runs/quality-mnist --methods=patch,full,edm
    """
    ctx = click.get_current_context()
    cfg = apply_preset(dnnlib.EasyDict(kwargs), {k for k in kwargs if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE})
    methods = parse_list('--methods', cfg.methods, choices=list(METHODS))
    cfg.seeds = parse_list('--seeds', cfg.seeds, kind=int)
    cfg.score_points = parse_score_points(cfg.score_points, cfg.points)
    cfg.ema_std = None if cfg.ema_std == 'none' else ','.join(f'{std:g}' for std in parse_list('--ema-std', cfg.ema_std, kind=float))
    cfg.ema_search = parse_list('--ema-search', cfg.ema_search, kind=float) if cfg.ema_std else []
    if cfg.out is None:
        tag = os.path.splitext(os.path.basename(cfg.data))[0] + (f'-{cfg.max_images}' if cfg.max_images else '')
        cfg.out = os.path.join(ROOT, 'runs', f'quality-{tag}' + ('-smoke' if cfg.smoke else ''))
    cfg.out, cfg.cache = os.path.abspath(cfg.out), os.path.abspath(cfg.cache)
    os.makedirs(cfg.out, exist_ok=True)

    start = time.time()
    if cfg.train_only and (cfg.eval_only or cfg.report_only):
        raise UserError('--train-only: contradicts --eval-only and --report-only')
    train_data, full_data = prepare_data(cfg.data, cfg.max_images, cfg.cache)
    ref_path, ref_num = None, None
    if not cfg.train_only:
        ref_path, ref_num = reference_stats(full_data, cfg.ref_num, cfg.cache, cfg.jobs * cfg.threads, cfg.device,
                                            cfg.bf16_features)
    if not cfg.report_only:
        pairs = [(m, s) for s in cfg.seeds for m in methods]  # the first seed of every method first
        if cfg.eval_only:
            runs = {run_name(m, s): None for m, s in pairs}
        else:
            full_flops = full_step_flops(cfg, train_data)
            runs = {run_name(m, s): run_spec(cfg, m, s, train_data, full_flops) for m, s in pairs}
            for name, spec in runs.items():
                check_resumable(os.path.join(cfg.out, name), spec)
        what = 'scoring' if cfg.eval_only else f'{cfg.budget:g} full-step equivalents, {cfg.points} points each, of'
        log(f'{len(runs)} runs: {what} {", ".join(runs)} on {train_data}; {cfg.jobs} processes of {cfg.threads} thread(s)')
        run_all(cfg, runs, train_data, ref_path)
    if not cfg.train_only:
        report(cfg, methods, train_data, ref_path, ref_num)
    log(f'total {(time.time() - start) / 60:.1f} min')


if __name__ == '__main__':
    main()
