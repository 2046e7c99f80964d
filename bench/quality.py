"""Image quality at equal wall-clock time: Patch Diffusion versus full-image EDM training.

The paper's claim under test: training on patches (real_p 0.5) reaches a given FID in about half
the training time of full-image EDM, and does better on small data sets. Each method trains the
same network (by default the CPU bench configuration of SPEC section 9: DDPM++, 32 channels,
mult [1,2,2], batch 32) with the real training loop (`train.build_config` +
`training_loop.training_loop`) for the SAME wall-clock budget. For fairness on a shared machine the
methods train CONCURRENTLY, each in its own process with one thread, so background load hits
them alike. Each training process saves the EMA network at `--points` evenly spaced wall-clock
points of its budget (budget/points, 2·budget/points, ..., budget) and stops at the budget. The
snapshots are then scored with FID-N (the same N seeds for every snapshot, sampled with
`training.sampler.sample_images`, 18 EDM steps) against reference statistics of the data set,
again one process (one thread) per method running concurrently.

Methods: `patch` (real_p 0.5, or --real-p), `full` (--real_p=1: full images, the same network with
coordinate channels), `edm` (--patch=0: plain EDM without coordinate channels). Augmentation is
off for all of them (it is off by default with patches), so every method trains the same network.

    python bench/quality.py --smoke                                   # end-to-end check, ~11 min on a loaded 2-core CPU
    python bench/quality.py --data mnist --budget-min 8 --points 4 --fid-num 500
    python bench/quality.py --data mnist --max-images 1000 --budget-min 8 --points 3 --fid-num 500
    python bench/quality.py --data fashion --methods patch,full,edm

Data: `mnist` (the bundled 10,000 digits, data/mnist-10k-28x28.npz, resized to 32x32), `fashion`
(Fashion-MNIST from `apt-get install dataset-fashion-mnist`, zero-padded to 32x32), or a data-set
zip/folder made by dataset_tool.py. `--max-images N` trains on N images drawn at random (by
`--seed`; not the first N, which in the bundled MNIST are all zeros); the FID
reference is always computed from the whole data set (up to --ref-num images), so the small-data
runs are judged against the distribution, not against the images they saw. Data sets and
reference statistics are cached in `--cache`.

`--eval-only` scores the snapshots in `--out` that have no score yet (an evaluation cut short
resumes where it stopped) and reports; `--report-only` redraws the table and plot.

Output (`--out`): `results.json`, `quality.png` (FID against training seconds, one line per
method), `samples-point<last>.png` (the last snapshots' sample grids side by side, in --methods
order), the training runs (`train-<method>/`: stats.jsonl, log, `point-<i>.pkl` snapshots,
`samples-point<i>.png` grids of the first 64 FID samples) and a printed table.

The wall clock: the training loop's `step_callback` sees every optimizer step with the time since
training began; it saves the EMA network when the next point is reached and ends training at the
budget. Time spent saving is not counted as training time.
"""

import argparse
import copy
import json
import os
import pickle
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

FASHION_SOURCE = '/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz'
MNIST_SOURCE = os.path.join(ROOT, 'data', 'mnist-10k-28x28.npz')
METHODS = {
    'patch': dict(label='patch (real_p {real_p})', args=['--patch=1']),
    'full': dict(label='full images (real_p 1)', args=['--patch=1', '--real_p=1']),
    'edm': dict(label='plain EDM (--patch=0)', args=['--patch=0']),
}


def log(text):
    print(text, flush=True)


def one_thread():
    """One compute thread in this process (the children are started with OMP_NUM_THREADS=1 too)."""
    import torch
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set; harmless
        pass


def child_env(threads=1):
    env = dict(os.environ)
    for name in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS'):
        env[name] = str(threads)
    return env

# ----------------------------------------------------------------------------------------------
# Data and reference statistics.


def prepare_data(args):
    """(training data set, full data set for the reference), both 32x32 zips, built once."""
    os.makedirs(args.cache, exist_ok=True)
    if args.data in ('mnist', 'fashion'):
        source = MNIST_SOURCE if args.data == 'mnist' else FASHION_SOURCE
        if not os.path.exists(source):
            hint = ' (apt-get install -y dataset-fashion-mnist)' if args.data == 'fashion' else ''
            sys.exit(f'--data {args.data}: {source} not found{hint}')
        full = os.path.join(args.cache, f'{args.data}-32x32.zip')
        build_zip(source, full)
    else:
        full = os.path.abspath(args.data)
        if not os.path.exists(full):
            sys.exit(f'--data: {full} does not exist')
    if args.max_images is None:
        return full, full
    name = os.path.splitext(os.path.basename(full))[0]
    subset = os.path.join(args.cache, f'{name}-random{args.max_images}-seed{args.seed}.zip')
    build_random_subset(full, subset, args.max_images, args.seed)
    return subset, full


def build_random_subset(full, dest, count, seed):
    """A data set of `count` images drawn at random (without replacement, by `seed`) from the data
    set `full`. Not the first `count`: MNIST files are often sorted by class, and the first 1,000
    bundled digits are all zeros."""
    if os.path.exists(dest):
        return
    import numpy as np
    from training.dataset import ImageFolderDataset
    dataset = ImageFolderDataset(full)
    if count > len(dataset):
        sys.exit(f'--max-images: {count} is more than the {len(dataset)} images of {full}')
    picks = np.random.default_rng(seed).choice(len(dataset), size=count, replace=False)
    images = np.stack([dataset[int(i)][0] for i in picks]).transpose(0, 2, 3, 1)
    source = dest + '.source.npz'
    np.savez(source, images=images[..., 0] if images.shape[3] == 1 else images)
    try:
        build_zip(source, dest)
    finally:
        os.remove(source)


def build_zip(source, dest):
    if os.path.exists(dest):
        return
    cmd = [sys.executable, os.path.join(ROOT, 'dataset_tool.py'), 'convert', f'--source={source}', f'--dest={dest}']
    if source == MNIST_SOURCE:  # 28x28 digits, resized; dataset_tool pads Fashion-MNIST's idx files itself
        cmd.append('--resolution=32x32')
    log(f'building {dest} ...')
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def reference_stats(args, full):
    """Inception statistics and features of `--ref-num` images of the whole data set (a random
    subset, seed 0), cached by name and count; the features serve KID."""
    import fid
    import torch
    name = os.path.splitext(os.path.basename(full))[0]
    num = min(args.ref_num or args.fid_num, len(fid.list_image_files(full)[1]))
    path = os.path.join(args.cache, f'{name}-ref{num}-features.npz')
    if not os.path.exists(path):
        log(f'reference statistics: Inception features of {num} images of {full} ...')
        torch.set_num_threads(args.threads)
        start = time.time()
        mu, sigma, feats = fid.calculate_inception_stats(full, num_expected=num, seed=0, device='cpu', num_workers=0,
                                                         return_features=True)
        fid.save_stats(path, mu, sigma, feats)
        log(f'  {time.time() - start:.0f} s -> {path}')
    return path, int(num)


# ----------------------------------------------------------------------------------------------
# Training process (one method).


def train_args(args, method, data, run_dir):
    """train.py options of one method (the bench configuration unless overridden)."""
    opts = ['--outdir', run_dir, '--data', data, '--arch=ddpmpp', f'--cbase={args.cbase}', f'--cres={args.cres}',
            f'--batch={args.batch}', '--workers=0', f'--seed={args.seed}', f'--lr={args.lr}',
            f'--lr-rampup={args.lr_rampup}', f'--dropout={args.dropout}', '--augment=0', f'--tick={args.tick}', f'--real_p={args.real_p}']
    if args.device:
        opts.append(f'--device={args.device}')
    return opts + METHODS[method]['args']


def run_training(args):
    """Child: trains one method for `--budget-min` minutes, saving the EMA network at the points."""
    one_thread()
    import torch  # noqa: F401
    import dnnlib
    import train
    from dnnlib.util import atomic_write
    from torch_utils import distributed as dist
    from training import training_loop

    run_dir = args.run_dir
    os.makedirs(run_dir, exist_ok=True)
    ctx = train.main.make_context('train.py', train_args(args, args.child_train, args.train_data, run_dir))
    opts = dnnlib.EasyDict(ctx.params)
    device = dist.init(opts.device)
    c, desc = train.build_config(opts, 1)
    c.update(run_dir=run_dir, seed=args.seed, total_kimg=1e9, snapshot_ticks=None, state_dump_ticks=None,
             sample_grid=False)
    with open(os.path.join(run_dir, 'training_options.json'), 'w') as f:
        json.dump(dict(c, desc=desc, method=args.child_train), f, indent=2)

    budget = args.budget_min * 60
    targets = [budget * (i + 1) / args.points for i in range(args.points)]
    clock = dict(paused=0.0)
    points = []

    def at_step(info):
        """Saves the EMA network whenever the training clock (saving time excluded) passes the next
        point; ends training at the last one."""
        seconds = info.seconds - clock['paused']
        while len(points) < len(targets) and seconds >= targets[len(points)]:
            pause = time.perf_counter()
            index = len(points)
            path = os.path.join(run_dir, f'point-{index}.pkl')
            snapshot = copy.deepcopy(info.ema).eval().requires_grad_(False).cpu()
            with atomic_write(path, 'wb') as f:
                pickle.dump(dict(ema=snapshot, loss_fn=None, augment_pipe=None, dataset_kwargs=dict(c.dataset_kwargs)), f)
            points.append(dict(point=index, seconds=seconds, kimg=info.nimg / 1e3, steps=info.step, snapshot=path))
            log(f'[{args.child_train}] point {index}: {seconds:.0f} s, {info.nimg / 1e3:.2f} kimg, {info.step} steps')
            clock['paused'] += time.perf_counter() - pause
        return len(points) == len(targets)

    training_loop.training_loop(**c, device=device, step_callback=at_step)
    if len(points) != len(targets):
        sys.exit('training ended before the budget')
    with open(os.path.join(run_dir, 'points.json'), 'w') as f:
        json.dump(points, f, indent=2)

# ----------------------------------------------------------------------------------------------
# Evaluation process (one method).


def points_to_score(run_dir):
    """The training points of a run, carrying the scores already in its fid.json, so that an
    evaluation that was cut short resumes where it stopped instead of starting over."""
    with open(os.path.join(run_dir, 'points.json')) as f:
        points = json.load(f)
    scored_path = os.path.join(run_dir, 'fid.json')
    if os.path.exists(scored_path):
        with open(scored_path) as f:
            scored = {p['point']: p for p in json.load(f) if 'fid' in p}
        points = [scored.get(p['point'], p) if scored.get(p['point'], {}).get('snapshot') == p['snapshot'] else p
                  for p in points]
    return points


def run_eval(args):
    """Child: FID of every point of one training run, the same seeds for every snapshot."""
    one_thread()
    import numpy as np
    import torch
    import fid
    from training import checkpoints, sampler

    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    run_dir = args.run_dir
    points = points_to_score(run_dir)
    ref = np.load(args.ref)
    detector = fid.load_detector(device=device)
    seeds = list(range(args.seed * 100000, args.seed * 100000 + args.fid_num))
    for point in reversed(points):  # the end of the budget first: the key comparison if time runs short
        if 'fid' in point:
            continue
        start = time.time()
        net = checkpoints.load_network(point['snapshot'])[0].to(device)
        images = sampler.sample_images(net, seeds, device=device, batch_size=64, num_steps=args.steps)
        sample_sec = time.time() - start
        sampler.save_image_grid(images[:64], os.path.join(run_dir, f'samples-point{point["point"]}.png'))
        feats = fid.compute_features(detector, images)
        mu, sigma = fid.stats_from_features(feats)
        point['fid'] = float(fid.calculate_fid_from_inception_stats(mu, sigma, ref['mu'], ref['sigma']))
        point['kid'], point['kid_std'] = (float(v) for v in fid.compute_kid(feats, ref['features'], seed=args.seed))
        point['sample_sec'] = sample_sec
        point['eval_sec'] = time.time() - start
        log(f'[{os.path.basename(run_dir)}] point {point["point"]}: {fid.fid_label(args.fid_num)} {point["fid"]:.2f}, '
            f'KID {point["kid"] * 1e3:.1f}e-3 '
            f'(sampling {sample_sec:.0f} s, total {point["eval_sec"]:.0f} s)')
        with open(os.path.join(run_dir, 'fid.json'), 'w') as f:
            json.dump(points, f, indent=2)

# ----------------------------------------------------------------------------------------------
# Driver.


def spawn(args, extra, log_path, mode='w'):
    cmd = [sys.executable, os.path.abspath(__file__)] + child_argv(args) + extra
    logf = open(log_path, mode)
    return subprocess.Popen(cmd, cwd=ROOT, env=child_env(1), stdout=logf, stderr=subprocess.STDOUT), logf


def child_argv(args):
    keys = ['budget_min', 'points', 'fid_num', 'seed', 'cbase', 'cres', 'batch', 'lr', 'lr_rampup', 'dropout', 'real_p', 'tick', 'steps']
    argv = [f'--{k.replace("_", "-")}={getattr(args, k)}' for k in keys]
    return argv + ([f'--device={args.device}'] if args.device else [])


def wait_all(procs, what):
    """Waits for the children, echoing their progress lines; exits if one fails."""
    failed = []
    for method, (proc, logf, log_path) in procs.items():
        proc.wait()
        logf.close()
        if proc.returncode != 0:
            failed.append(method)
            with open(log_path) as f:
                tail = f.read()[-3000:]
            log(f'--- {what} of {method} failed (exit {proc.returncode}); end of {log_path}:\n{tail}')
    if failed:
        sys.exit(f'{what} failed for: {", ".join(failed)}')


def load_average():
    try:
        return os.getloadavg()
    except OSError:
        return None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', default='mnist', help='mnist, fashion, or a data-set zip/folder')
    parser.add_argument('--max-images', type=int, default=None, help='train on N random images only (by --seed)')
    parser.add_argument('--methods', default='patch,full', help='comma list of patch, full, edm')
    parser.add_argument('--budget-min', type=float, default=8.0, help='training wall-clock minutes per method')
    parser.add_argument('--points', type=int, default=4, help='evaluation points, evenly spaced over the budget')
    parser.add_argument('--fid-num', type=int, default=1000, help='images per FID evaluation')
    parser.add_argument('--ref-num', type=int, default=None, help='images for the reference statistics [default: --fid-num]')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--cbase', type=int, default=32)
    parser.add_argument('--cres', default='1,2,2')
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--lr-rampup', type=float, default=0.5, help='learning-rate warm-up in kimg')
    parser.add_argument('--dropout', type=float, default=0.13, help='dropout probability of the network')
    parser.add_argument('--real-p', type=float, default=0.5, help='real_p of the patch method')
    parser.add_argument('--tick', type=float, default=0.5, help='kimg per status line / stats.jsonl record')
    parser.add_argument('--steps', type=int, default=18, help='sampling steps')
    parser.add_argument('--threads', type=int, default=2, help='threads of the reference-statistics pass')
    parser.add_argument('--device', default=None, help='cpu or cuda [default: cuda if available]')
    parser.add_argument('--out', default=None, help='output folder [default: runs/quality-<data>]')
    parser.add_argument('--cache', default=os.path.join(ROOT, 'runs', 'quality-cache'), help='data sets and reference statistics')
    parser.add_argument('--smoke', action='store_true', help='tiny check: 0.75-minute budget, 2 points, FID-64')
    parser.add_argument('--eval-only', action='store_true', help='no training: score the points in --out not scored yet, then report')
    parser.add_argument('--report-only', action='store_true', help='redo the table and plot from the fid.json files in --out')
    parser.add_argument('--child-train', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--child-eval', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--run-dir', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--train-data', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--ref', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child_train:
        run_training(args)
        return
    if args.child_eval:
        run_eval(args)
        return

    if args.smoke:
        args.budget_min, args.points, args.fid_num, args.tick = 0.75, 2, 64, 0.1
    methods = [m.strip() for m in args.methods.split(',') if m.strip()]
    for m in methods:
        if m not in METHODS:
            sys.exit(f'--methods: unknown method "{m}" (choose from {", ".join(METHODS)})')
    if args.out is None:
        tag = os.path.splitext(os.path.basename(args.data))[0] + (f'-{args.max_images}' if args.max_images else '')
        args.out = os.path.join(ROOT, 'runs', f'quality-{tag}' + ('-smoke' if args.smoke else ''))
    os.makedirs(args.out, exist_ok=True)
    args.cache = os.path.abspath(args.cache)

    t_start = time.time()
    train_data, full_data = prepare_data(args)
    if args.report_only:
        old = read_results(args.out)
        report(args, methods, train_data, full_data, old['reference']['path'], old['reference']['num'], old['load_average'],
               old['total_sec'])
        return
    ref_path, ref_num = reference_stats(args, full_data)
    if args.eval_only:
        old = read_results(args.out)
        if old['reference']['path'] != ref_path:
            sys.exit(f'--eval-only: {args.out} was scored against {old["reference"]["path"]}, not {ref_path}; '
                     'pass the same --data/--ref-num/--fid-num as before')
        loads, t_start = old['load_average'], t_start - old['total_sec']
    else:
        loads = train_all(args, methods, train_data)
        with open(os.path.join(args.out, 'results.json'), 'w') as f:  # what --report-only needs if evaluation is cut short
            json.dump(dict(reference=dict(path=ref_path, num=ref_num), load_average=loads, total_sec=time.time() - t_start), f)
    evaluate_all(args, methods, ref_path)
    loads['end_eval'] = load_average()

    report(args, methods, train_data, full_data, ref_path, ref_num, loads, time.time() - t_start)


def read_results(out):
    """The results.json of an earlier run in `out` (reference, load averages, time so far)."""
    path = os.path.join(out, 'results.json')
    if not os.path.exists(path):
        sys.exit(f'--out: {path} not found; train first (without --eval-only/--report-only)')
    with open(path) as f:
        return json.load(f)


def train_all(args, methods, train_data):
    """Trains the methods concurrently, one process each; returns the load averages seen."""
    loads = dict(before_training=load_average())
    log(f'training {", ".join(methods)} concurrently for {args.budget_min:g} min each (1 thread each) on {train_data}')
    procs = {}
    for m in methods:
        run_dir = os.path.join(args.out, f'train-{m}')
        for stale in ('points.json', 'fid.json'):
            if os.path.exists(os.path.join(run_dir, stale)):
                os.remove(os.path.join(run_dir, stale))
        os.makedirs(run_dir, exist_ok=True)
        log_path = os.path.join(run_dir, 'train.log')
        proc, logf = spawn(args, [f'--child-train={m}', f'--run-dir={run_dir}', f'--train-data={train_data}'], log_path)
        procs[m] = (proc, logf, log_path)
    mid = time.time() + args.budget_min * 30
    while any(p.poll() is None for p, _, _ in procs.values()) and time.time() < mid:
        time.sleep(2)
    loads['mid_training'] = load_average()
    wait_all(procs, 'training')
    loads['end_training'] = load_average()
    return loads


def evaluate_all(args, methods, ref_path):
    """Scores the points of every method not scored yet, one process per method, concurrently."""
    log(f'evaluating {args.points} points per method with FID-{args.fid_num} '
        f'({args.steps} sampling steps), one process per method')
    procs = {}
    for m in methods:
        run_dir = os.path.join(args.out, f'train-{m}')
        if not os.path.exists(os.path.join(run_dir, 'points.json')):
            sys.exit(f'--out: {run_dir}/points.json not found; the training of {m} did not finish')
        log_path = os.path.join(run_dir, 'eval.log')
        proc, logf = spawn(args, ['--child-eval', f'--run-dir={run_dir}', f'--ref={ref_path}'], log_path, mode='a')
        procs[m] = (proc, logf, log_path)
    wait_all(procs, 'evaluation')


def side_by_side(paths, dest, gap=16):
    """One PNG with the images at `paths` left to right (in method order) on a white background,
    so that the sample grids of the methods can be compared at a glance."""
    import PIL.Image
    from dnnlib.util import atomic_write
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


def report(args, methods, train_data, full_data, ref_path, ref_num, loads, total_sec):
    from dnnlib import plot
    label = f'FID-{args.fid_num}' if args.fid_num % 1000 else f'FID-{args.fid_num // 1000}k'
    rows, series = [], {}
    for m in methods:
        with open(os.path.join(args.out, f'train-{m}', 'fid.json')) as f:
            points = json.load(f)
        name = METHODS[m]['label'].format(real_p=args.real_p)
        points = sorted((p for p in points if 'fid' in p), key=lambda p: p['point'])
        series[name] = [(p['seconds'], p['fid']) for p in points]
        for p in points:
            rows.append(dict(method=m, **{k: p.get(k, float('nan')) for k in ('point', 'seconds', 'kimg', 'steps', 'fid', 'kid', 'kid_std', 'sample_sec')}))
    log('')
    log(f'{"method":<8s} {"point":>5s} {"train s":>8s} {"kimg":>7s} {"steps":>6s} {label:>9s} {"KID x1e3":>15s}')
    for r in rows:
        log(f'{r["method"]:<8s} {r["point"]:>5d} {r["seconds"]:>8.0f} {r["kimg"]:>7.2f} {r["steps"]:>6d} {r["fid"]:>9.2f} '
            f'{r["kid"] * 1e3:>7.1f} ± {r["kid_std"] * 1e3:<5.1f}')
    subset = f', first {args.max_images} images' if args.max_images else ''
    title = (f'{label} vs training time: {os.path.basename(train_data)}{subset}, '
             f'DDPM++ {args.cbase} ch [{args.cres}], batch {args.batch}, 1 thread each')
    png = os.path.join(args.out, 'quality.png')
    plot.line_plot(png, series, xlabel='training wall-clock seconds (1 CPU thread)', ylabel=label, title=title)
    last = max((r['point'] for r in rows), default=None)
    if last is not None:
        grids = [os.path.join(args.out, f'train-{m}', f'samples-point{last}.png') for m in methods]
        side_by_side([g for g in grids if os.path.exists(g)], os.path.join(args.out, f'samples-point{last}.png'))
    result = dict(args={k: v for k, v in vars(args).items() if not k.startswith('child') and k not in ('run_dir', 'ref', 'train_data')},
                  train_data=train_data, reference=dict(path=ref_path, data=full_data, num=ref_num),
                  rows=rows, load_average=loads, total_sec=total_sec, command=' '.join(sys.argv))
    with open(os.path.join(args.out, 'results.json'), 'w') as f:
        json.dump(result, f, indent=2)
    log(f'\nload average (1, 5, 15 min): ' + ', '.join(f'{k} {v[0]:.2f}/{v[1]:.2f}/{v[2]:.2f}' for k, v in loads.items() if v))
    log(f'plot: {png}\nresults: {os.path.join(args.out, "results.json")}\ntotal {total_sec / 60:.1f} min')


if __name__ == '__main__':
    main()
