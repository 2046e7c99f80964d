"""Times the fast exact trace of (Σ Σr)^½ used by fid.py against scipy.linalg.sqrtm.

Covariances come from synthetic 2048-d "features" shaped like Inception pool features
(non-negative, correlated through a low-dimensional latent plus noise), N images per set, so
the matrices are full-rank, ill-conditioned and non-commuting, as in real FID computations.
Prints both timings, both FID values and their relative difference (expected below 1e-6).

    python bench/fid_speed.py [--num 5000] [--dim 2048] [--seed 0]
"""

import argparse
import os
import sys
import time

import numpy as np
import scipy.linalg

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from training import metrics  # noqa: E402


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--num', type=int, default=5000, help='features per set')
    parser.add_argument('--dim', type=int, default=2048, help='feature dimension')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()

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


if __name__ == '__main__':
    main()
