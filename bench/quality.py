"""Image quality against training compute: Patch Diffusion, its knobs and two variants, versus
full-image EDM.

The claim under test (Wang et al. 2023): training on patches reaches a given FID with less
training than full images, and does better on small data sets. Every method trains the same
network (by default the CPU bench configuration: DDPM++, 32 channels, mult [1,2,2], batch 32)
with the real training loop for the SAME training compute, counted in full-image step
equivalents: each step's network FLOPs (3x the forward FLOPs of its batch at its patch size,
counted by torch's FlopCounterMode; backward is about twice the forward) divided by the FLOPs of
a full-image step of the network with coordinate channels. A step of side-s patches costs about
s/R of a full step. Training wall seconds are recorded too.

Methods (--methods):
  patch, patch-0.25, patch-0.75   random patch sizes with real_p 0.5, 0.25, 0.75 (the paper's knob)
  progressive                     smallest patches first, full images last (real_p 0.5)
  full                            full images only (--real-p=1): the same network, with coordinates
  edm                             plain EDM without coordinate channels (--patch=0)
  sum-loss                        real_p 0.5 with the original release's per-image sum loss (--loss-norm=sum)
  rising                          real_p rising from 0 to 1 over training (--real-p-end=1)

Each (method, seed) run trains in segments, one per evaluation point (--points, evenly spaced
over --budget): a segment resumes from the previous segment's training state, stops when its
compute reaches the point, and leaves the training loop's own snapshot and state. Training resumes
after the last finished point and scoring after the last scored one, so a study can be stopped and
continued, extended to a larger --budget with the same spacing, and run folders trained on other
machines can be copied into --out (the compute axis does not depend on a machine's speed).
Schedules that follow the training progress (progressive, rising) are given the duration, in
images, at which their compute reaches the budget, found by replaying the schedule; they cannot
be extended.

Scoring: FID of --fid-num samples (seeds 0..N-1, --steps EDM steps) against the Inception
statistics of --ref-num images of the WHOLE data set, and KID against the same reference
features. --max-images N trains on N images drawn at random (not the first N: the bundled MNIST
starts with a thousand zeros), judged against the whole data set.

Data (--data): mnist (the bundled 10,000 digits, 32x32), fashion (Fashion-MNIST, from
`apt-get install dataset-fashion-mnist`, 32x32), emoji (the bundled colour emoji, 32x32), or a
data-set zip/folder made by dataset_tool.py. Data sets and reference statistics are cached in
--cache.

    python bench/quality.py --smoke
    python bench/quality.py --data=mnist --methods=patch,full,edm --seeds=0,1 --budget=4000 --points=8 --fid-num=5000
    python bench/quality.py --data=mnist --max-images=1000 --methods=patch,full
    python bench/quality.py --report-only --out=runs/quality-mnist --methods=patch,full,edm

Output (--out): a folder per run (`<method>-seed<k>/`: run.json, points.json, scores.json,
train.log, eval.log, `point-<i>/` with the loop's stats.jsonl and snapshot (and, for the last
point, its training state), and `samples-point<i>.png`), quality-compute.png and
quality-seconds.png (FID against compute and against training wall seconds, mean over seeds),
samples-point<last>.png (the first seed's grids side by side, in --methods order), results.json
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
}
METHODS = {
    'patch': ('patch (real_p 0.5)', ['--real-p=0.5']),
    'patch-0.25': ('patch (real_p 0.25)', ['--real-p=0.25']),
    'patch-0.75': ('patch (real_p 0.75)', ['--real-p=0.75']),
    'progressive': ('progressive (real_p 0.5)', ['--real-p=0.5', '--progressive=1']),
    'full': ('full images (real_p 1)', ['--real-p=1']),
    'edm': ('plain EDM (--patch=0)', ['--patch=0']),
    'sum-loss': ('patch, per-image sum loss', ['--real-p=0.5', '--loss-norm=sum']),
    'rising': ('patch, real_p 0 -> 1', ['--real-p=0', '--real-p-end=1']),
}
RUN_NAME = re.compile(r'^(?P<method>[\w.-]+)-seed(?P<seed>\d+)$')


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
        source = SOURCES[data]
        if not os.path.exists(source):
            hint = ' (apt-get install -y dataset-fashion-mnist)' if data == 'fashion' else ''
            raise UserError(f'--data={data}: {source} not found{hint}')
        full = os.path.join(cache, f'{data}-32x32.zip')
        build_zip(source, full)
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
    """dataset_tool.py convert of `source` into a 32x32 zip (MNIST's 28x28 digits are resized;
    dataset_tool pads Fashion-MNIST's idx files itself)."""
    if os.path.exists(dest):
        return
    cmd = [sys.executable, os.path.join(ROOT, 'dataset_tool.py'), 'convert', f'--source={source}', f'--dest={dest}']
    if source == SOURCES['mnist']:
        cmd.append('--resolution=32x32')
    log(f'building {dest} ...')
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def reference_stats(full, ref_num, cache, threads):
    """Inception statistics and features of `ref_num` images of the whole data set (a random
    subset, seed 0; all of it if smaller), cached by name and count; the features serve KID."""
    import torch
    from training import metrics
    name = os.path.splitext(os.path.basename(full))[0]
    num = min(ref_num, len(metrics.list_image_files(full)[1]))
    path = os.path.join(cache, f'{name}-ref{num}-features.npz')
    if not os.path.exists(path):
        log(f'reference statistics: Inception features of {num} images of {full} ...')
        torch.set_num_threads(threads)
        start = time.time()
        mu, sigma, feats = metrics.calculate_inception_stats(full, num_expected=num, seed=0, device='cpu', num_workers=0,
                                                         return_features=True)
        metrics.save_stats(path, mu, sigma, feats)
        log(f'  {time.time() - start:.0f} s -> {path}')
    return path, int(num)

# ----------------------------------------------------------------------------------------------
# Training configuration and compute.


def method_options(cfg, method):
    """train.py options of a method, without the machine-specific ones (--data, --device): the
    bench preset with this study's network and schedule, no augmentation (so every method trains
    the same network), then --train-options, the method's own options last."""
    return ['--preset=bench', f'--cbase={cfg.cbase}', f'--cres={cfg.cres}', f'--batch={cfg.batch}', f'--lr={cfg.lr}',
            f'--lr-rampup={cfg.lr_rampup / 1000}', f'--dropout={cfg.dropout}', '--augment=0', f'--tick={cfg.tick}',
            '--workers=0'] + (cfg.get('train_options') or '').split() + METHODS[method][1]


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
    return dict(method=method, seed=seed, options=options, targets=targets, total_kimg=total / 1000,
                follows_progress=follows_progress(c), full_step_flops=full_flops,
                cost={str(c.batch_size * (res // side)): value for side, value in cost.items()})


def check_resumable(run_dir, new):
    """The run in `run_dir` may go on under `new` if it has no finished point, or was trained
    with the same options and its finished points are the first points of `new`; a schedule that
    follows the progress also needs the same duration."""
    old = read_json(os.path.join(run_dir, 'run.json'))
    done = len(read_json(os.path.join(run_dir, 'points.json'), []))
    if old is None or not done:
        return
    name = os.path.basename(run_dir)
    if old['options'] != new['options']:
        raise UserError(f'--out: run {name} was trained with other options ({" ".join(old["options"])}); use another --out')
    if any(not math.isclose(a, b) for a, b in zip(old['targets'][:done], new['targets'])) or done > len(new['targets']):
        raise UserError(f'--budget/--points: run {name} has points at {old["targets"][:done]} full steps, not at the '
                        'first points of this budget; keep the spacing or use another --out')
    if old['follows_progress'] and not math.isclose(old['total_kimg'], new['total_kimg']):
        raise UserError(f'--budget: run {name} follows its training progress and cannot be extended; use another --out')

# ----------------------------------------------------------------------------------------------
# Workers (one process each, `--threads` threads).


def worker_init(threads):
    """Each worker process computes with `threads` threads."""
    import torch
    torch.set_num_threads(threads)


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
    c.update(run_dir=segment, total_kimg=spec['total_kimg'], snapshot_ticks=never, state_dump_ticks=never,
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
    for extra in glob.glob(os.path.join(segment, 'network-snapshot-*.pkl')):
        if extra != snapshot:
            os.remove(extra)  # the loop's tick-0 snapshot
    log(f'point {index}: {now["compute"]:.1f} full steps, {now["steps"]} steps, {now["nimg"] / 1e3:.2f} kimg, '
        f'{now["seconds"]:.0f} s')
    return dict(now, point=index, kimg=now['nimg'] / 1e3, snapshot=os.path.relpath(snapshot, run_dir),
                state=os.path.relpath(os.path.join(segment, training_state.state_name(kimg)), run_dir))


def score_key(point, fid_num, ref_path):
    """What a score is valid for: the point's snapshot, the sample count and the reference."""
    return [point['point'], point['snapshot'], fid_num, os.path.basename(ref_path)]


def points_to_score(run_dir, scores, fid_num, ref_path):
    """The points of a run without a score for this snapshot, --fid-num and reference, last first."""
    done = [s['key'] for s in scores]
    points = read_json(os.path.join(run_dir, 'points.json'), [])
    return [p for p in reversed(points) if score_key(p, fid_num, ref_path) not in done]


def score_run(cfg, run_dir, ref_path):
    """Worker: FID and KID of every point of a run not scored yet with this --fid-num and
    reference, the last point first (the key comparison if time runs short)."""
    if not os.path.isdir(run_dir):
        log(f'{os.path.basename(run_dir)}: not trained yet')
        return []
    with logged_to(os.path.join(run_dir, 'eval.log')):
        import numpy as np
        import torch
        from training import metrics
        from torch_utils import png
        from training import checkpoints, sampler
        device = torch.device(cfg.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
        scores = read_json(os.path.join(run_dir, 'scores.json'), [])
        todo = points_to_score(run_dir, scores, cfg.fid_num, ref_path)
        if not todo:
            return scores
        ref = np.load(ref_path)
        detector = metrics.load_detector(device=device)
        for point in todo:
            start = time.time()
            net = checkpoints.load_network(os.path.join(run_dir, point['snapshot']))[0].to(device)
            images = sampler.sample_images(net, list(range(cfg.fid_num)), device=device, batch_size=64,
                                           num_steps=cfg.steps)
            sample_sec = time.time() - start
            png.save_image_grid(images[:64], os.path.join(run_dir, f'samples-point{point["point"]}.png'))
            feats = metrics.compute_features(detector, images)
            mu, sigma = metrics.stats_from_features(feats)
            kid, kid_std = metrics.compute_kid(feats, ref['features'], seed=0)
            scores.append(dict(key=score_key(point, cfg.fid_num, ref_path), point=point['point'],
                               fid=float(metrics.calculate_fid_from_inception_stats(mu, sigma, ref['mu'], ref['sigma'])),
                               kid=float(kid), kid_std=float(kid_std), sample_sec=sample_sec,
                               eval_sec=time.time() - start))
            write_json(os.path.join(run_dir, 'scores.json'), scores)
            log(f'point {point["point"]}: {metrics.fid_label(cfg.fid_num)} {scores[-1]["fid"]:.2f}, '
                f'KID {scores[-1]["kid"] * 1e3:.1f}e-3 ({sample_sec:.0f} s sampling)')
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
                                                initargs=(cfg.threads,)) as pool:
        pending = {}
        for name, spec in runs.items():
            run_dir = os.path.join(cfg.out, name)
            if cfg.eval_only:
                pending[pool.submit(score_run, cfg, run_dir, ref_path)] = (name, 'scoring', run_dir)
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
                if what == 'training':
                    pending[pool.submit(score_run, cfg, run_dir, ref_path)] = (name, 'scoring', run_dir)
    if failed:
        raise UserError(f'--out: {len(failed)} run(s) failed: {", ".join(failed)}')


def collect(out, methods, fid_num, ref_path):
    """{method: [{point, seeds, compute, seconds, kimg, steps, fid, fid_min, fid_max, kid}]}: the
    scored points of every run folder in `out` (whatever machine trained it), mean over seeds."""
    table = {}
    for run_dir in sorted(glob.glob(os.path.join(out, '*-seed*'))):
        match = RUN_NAME.match(os.path.basename(run_dir))
        if not match or match['method'] not in methods:
            continue
        points = {p['point']: p for p in read_json(os.path.join(run_dir, 'points.json'), [])}
        for score in read_json(os.path.join(run_dir, 'scores.json'), []):
            point = points.get(score['point'])
            if point is not None and score['key'] == score_key(point, fid_num, ref_path):
                table.setdefault(match['method'], {}).setdefault(score['point'], []).append(dict(point, **score))
    result = {}
    for method in methods:
        rows = []
        for index, runs in sorted(table.get(method, {}).items()):
            mean = {k: sum(r[k] for r in runs) / len(runs) for k in ('compute', 'seconds', 'kimg', 'steps', 'fid', 'kid')}
            rows.append(dict(mean, point=index, seeds=len(runs), fid_min=min(r['fid'] for r in runs),
                             fid_max=max(r['fid'] for r in runs)))
        result[method] = rows
    return result


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
    """The table, the two plots, the side-by-side grids and results.json of what is scored."""
    from training import metrics
    from dnnlib import plot
    label = metrics.fid_label(cfg.fid_num)
    table = collect(cfg.out, methods, cfg.fid_num, ref_path)
    log(f'\n{"method":<12s} {"point":>5s} {"seeds":>5s} {"full steps":>10s} {"train s":>8s} {"kimg":>8s} '
        f'{label:>9s} {"(min-max)":>15s} {"KID x1e3":>8s}')
    for method, rows in table.items():
        for r in rows:
            log(f'{method:<12s} {r["point"]:>5d} {r["seeds"]:>5d} {r["compute"]:>10.0f} {r["seconds"]:>8.0f} '
                f'{r["kimg"]:>8.2f} {r["fid"]:>9.2f} {r["fid_min"]:>7.2f}-{r["fid_max"]:<7.2f} {r["kid"] * 1e3:>8.2f}')
    subset = f', {cfg.max_images} random images' if cfg.max_images else ''
    title = f'{label} vs training: {os.path.basename(train_data)}{subset}, DDPM++ {cfg.cbase} ch [{cfg.cres}], batch {cfg.batch}'
    for axis, xlabel in (('compute', 'training compute (full-image step equivalents)'),
                         ('seconds', 'training wall-clock seconds (machines may differ)')):
        series = {METHODS[m][0]: [(r[axis], r['fid']) for r in rows] for m, rows in table.items()}
        plot.line_plot(os.path.join(cfg.out, f'quality-{axis}.png'), series, xlabel=xlabel, ylabel=label, title=title)
    last = max((r['point'] for rows in table.values() for r in rows), default=None)
    if last is not None:
        grids = [os.path.join(cfg.out, run_name(m, cfg.seeds[0]), f'samples-point{last}.png') for m in methods]
        side_by_side([g for g in grids if os.path.exists(g)], os.path.join(cfg.out, f'samples-point{last}.png'))
    write_json(os.path.join(cfg.out, 'results.json'),
               dict(config={k: v for k, v in cfg.items() if k not in ('eval_only', 'report_only')}, train_data=train_data,
                    reference=dict(path=ref_path, num=ref_num), methods=table, command=' '.join(sys.argv)))
    log(f'plots: {os.path.join(cfg.out, "quality-compute.png")}, quality-seconds.png\n'
        f'results: {os.path.join(cfg.out, "results.json")}')


def parse_list(option, text, choices=None, kind=str):
    try:
        items = [kind(t.strip()) for t in text.split(',') if t.strip()]
    except ValueError:
        raise UserError(f'{option}: "{text}" is not a comma-separated list of {kind.__name__}s') from None
    unknown = [i for i in items if choices is not None and i not in choices]
    if unknown or not items:
        raise UserError(f'{option}: unknown or missing "{",".join(map(str, unknown))}" (choose from {", ".join(choices or [])})')
    return items


@click.command(context_settings=dict(show_default=True, max_content_width=100))
@click.option('--data', help='mnist, fashion, emoji, or a data-set zip/folder', metavar='NAME|PATH', default='mnist')
@click.option('--max-images', 'max_images', help='Train on N random images of the data set (judged against all of it)',
              metavar='N', type=click.IntRange(min=1))
@click.option('--methods', help=f'Comma list of {", ".join(METHODS)}', metavar='LIST', default='patch,full')
@click.option('--seeds', help='Training seeds, one run per method and seed', metavar='LIST', default='0,1')
@click.option('--budget', help='Training compute per run, in full-image step equivalents', metavar='STEPS',
              type=click.FloatRange(min=0, min_open=True), default=2000)
@click.option('--points', help='Evaluation points, evenly spaced over the budget', metavar='N', type=click.IntRange(min=1), default=4)
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
@click.option('--steps', help='Sampling steps', metavar='INT', type=click.IntRange(min=1), default=18)
@click.option('--jobs', help='Processes at once (runs train and score concurrently)', metavar='N', type=click.IntRange(min=1), default=2)
@click.option('--threads', help='Threads per process', metavar='N', type=click.IntRange(min=1), default=1)
@click.option('--device', help='cpu or cuda  [default: cuda if available]', metavar='STR')
@click.option('--out', help='Output folder  [default: runs/quality-<data>[-<max-images>]]', metavar='DIR')
@click.option('--cache', help='Data sets and reference statistics', metavar='DIR', default=os.path.join(ROOT, 'runs', 'quality-cache'))
@click.option('--smoke', help='Tiny end-to-end check: budget 20, 2 points, one seed, FID-64 against 64 images', is_flag=True)
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
    cfg = dnnlib.EasyDict(kwargs)
    if cfg.smoke:
        cfg.update(budget=20, points=2, seeds='0', fid_num=64, ref_num=64, tick=0.1)
    methods = parse_list('--methods', cfg.methods, choices=list(METHODS))
    cfg.seeds = parse_list('--seeds', cfg.seeds, kind=int)
    if cfg.out is None:
        tag = os.path.splitext(os.path.basename(cfg.data))[0] + (f'-{cfg.max_images}' if cfg.max_images else '')
        cfg.out = os.path.join(ROOT, 'runs', f'quality-{tag}' + ('-smoke' if cfg.smoke else ''))
    cfg.out, cfg.cache = os.path.abspath(cfg.out), os.path.abspath(cfg.cache)
    os.makedirs(cfg.out, exist_ok=True)

    start = time.time()
    train_data, full_data = prepare_data(cfg.data, cfg.max_images, cfg.cache)
    ref_path, ref_num = reference_stats(full_data, cfg.ref_num, cfg.cache, cfg.jobs * cfg.threads)
    if not cfg.report_only:
        pairs = [(m, s) for m in methods for s in cfg.seeds]
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
    report(cfg, methods, train_data, ref_path, ref_num)
    log(f'total {(time.time() - start) / 60:.1f} min')


if __name__ == '__main__':
    main()
