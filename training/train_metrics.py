"""FID and KID while training: every few ticks, images from the EMA network (and from each tracked
post-hoc EMA profile) with fixed seeds, scored against reference statistics of the training data
set that are computed once and cached next to it (`<data set>.fid-ref.npz`)."""

import json
import os

import numpy as np

from dnnlib.util import FieldError
from torch_utils import distributed as dist
from training import encoders
from training import metrics as metrics_lib

METRICS = ('fid', 'kid')
REF_FEATURES = 5000  # per-image features kept in the cache for KID (its subsets take 1000)


def parse_metrics(text):
    """'kid,fid' → ['fid', 'kid'], checked, in the order of METRICS (the first one is plotted in metrics.png)."""
    names = [name.strip().lower() for name in str(text).split(',') if name.strip()]
    unknown = [name for name in names if name not in METRICS]
    if not names or unknown:
        raise FieldError('metrics', f'"{text}" is not a list of {", ".join(METRICS)}')
    return [name for name in METRICS if name in names]


def check_data(dataset_kwargs):
    """Raises FieldError unless the data set holds images the detector can score."""
    if dataset_kwargs['class_name'] != 'training.dataset.ImageFolderDataset':
        raise FieldError('metrics', f'"{dataset_kwargs["path"]}" holds arrays or latents, not images; FID/KID need images')


def ref_path(data_path, ref_num=None):
    """Where the reference statistics of a data set (or of a subset of `ref_num` images) are
    cached: beside it, never inside a folder."""
    return os.path.normpath(data_path) + ('.fid-ref.npz' if ref_num is None else f'.fid-ref-{ref_num}.npz')


def ref_key(data_path, detector, with_features):
    """What the cached statistics depend on: the data set file or folder (size and time), the
    detector file, and whether features for KID are kept."""
    def signature(path):
        info = os.stat(path)
        return [os.path.basename(os.path.normpath(path)), info.st_size, int(info.st_mtime)]
    return json.dumps(dict(data=signature(data_path), detector=signature(detector.source), features=bool(with_features)))


def load_cached(path, key):
    """(mu, sigma, features or None) from the cache when it exists and matches `key`, else None."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if 'key' not in data.files or str(data['key']) != key:
                return None
            return data['mu'], data['sigma'], (data['features'] if 'features' in data.files else None)
    except (OSError, ValueError):  # damaged: computed again
        return None


def save_cached(path, key, mu, sigma, features=None):
    """Writes the cache atomically, in the npz format of `fid.py ref` plus its key."""
    import dnnlib
    arrays = dict(mu=mu, sigma=sigma, key=np.array(key))
    if features is not None:
        arrays['features'] = np.asarray(features, np.float32)
    with dnnlib.util.atomic_write(path, 'wb') as f:
        np.savez(f, **arrays)


class TickMetrics:
    """Scores networks at ticks. Collective: every rank generates a share of the images; rank 0
    computes the scores and every rank returns them."""

    def __init__(self, dataset_kwargs, metrics=('fid',), num=1000, every=1, detector=None, batch=64, device=None,
                 encoder=encoders.PIXELS, ref_num=None):
        check_data(dataset_kwargs)
        if num < 2:
            raise FieldError('num', f'{num}: at least 2 images are needed for a covariance')
        self.metrics, self.num, self.every, self.batch = list(metrics), int(num), int(every), int(batch)
        self.device, self.encoder = device, encoder
        self.detector = metrics_lib.load_detector(detector, device=device)
        self.ref = self.reference(dataset_kwargs['path'], ref_num)

    def reference(self, data_path, ref_num=None):
        """(mu, sigma, features) of the data set's images (all, or a random `ref_num`, as `fid.py ref
        --num`) on rank 0 (None elsewhere), from the cache or computed."""
        path, key = ref_path(data_path, ref_num), ref_key(data_path, self.detector, 'kid' in self.metrics)
        cached = load_cached(path, key) if dist.get_rank() == 0 else None
        if dist.broadcast_object(cached is not None):
            dist.print0(f'Reference statistics: {path}')
            return cached
        dist.print0(f'Computing reference statistics of "{data_path}" for {", ".join(self.metrics)} (cached as {path})...')
        mu, sigma, feats = metrics_lib.calculate_inception_stats(data_path, num_expected=ref_num, detector=self.detector,
                                                                 num_workers=0, return_features=True, verbose=False)
        if 'kid' in self.metrics:
            feats = feats[metrics_lib.select_indices(len(feats), min(len(feats), REF_FEATURES))]
        else:
            feats = None
        if dist.get_rank() == 0:
            save_cached(path, key, mu, sigma, feats)
        return (mu, sigma, feats) if dist.get_rank() == 0 else None

    def due(self, tick, done):
        """Whether this tick is scored: every `every` ticks after the first, and the last."""
        return done or (tick > 0 and tick % self.every == 0)

    def statistics(self, net):
        """(mu, sigma, features or None without KID) of `num` images of `net` (seeds 0..num−1,
        class labels drawn per seed, as generate.py samples them), on every rank."""
        return metrics_lib.network_features(net, self.num, self.detector, batch_size=self.batch, device=self.device,
                                            decoder=self.encoder, keep_features='kid' in self.metrics, verbose=False)

    def scores(self, stats):
        """{'fid': ..., 'kid': ...} of `statistics`' result against the reference (rank 0)."""
        mu_ref, sigma_ref, feats_ref = self.ref
        ref = dict(mu=mu_ref, sigma=sigma_ref, features=feats_ref)
        scores = metrics_lib.score_features(*stats, ref, self.metrics)
        return {name: scores[name] for name in self.metrics}

    def score(self, run_dir, ema, phema=None, records=()):
        """Scores of the EMA network (names 'fid', 'kid') and of each profile ('fid/ema-0.100'),
        on every rank; rank 0 redraws `metrics.png` from `records` (the last one this tick's)."""
        nets = [('', ema)]
        if phema is not None:
            nets += [(f'/ema-{std:.3f}', phema.network(i, ema)) for i, std in enumerate(phema.stds)]
        results = {}
        for suffix, net in nets:
            stats = self.statistics(net)
            if dist.get_rank() == 0:
                results.update({name + suffix: value for name, value in self.scores(stats).items()})
        results = dist.broadcast_object(results)
        if dist.get_rank() == 0:
            records = list(records)
            records[-1] = dict(records[-1], metrics=results)
            write_plots(run_dir, records, self.metrics, self.num)
        return results


def write_plots(run_dir, records, metrics, num):
    """`metrics.png` (FID, or KID when only KID is scored) and, with both, `metrics-kid.png`:
    each network's score against kimg."""
    from dnnlib import plot
    for index, metric in enumerate(metrics):
        series = {}
        for record in records:
            for name, value in record.get('metrics', {}).items():
                if name.split('/')[0] == metric:
                    label = 'ema' if '/' not in name else name.split('/', 1)[1]
                    series.setdefault(label, []).append((record['kimg'], value))
        name = 'metrics.png' if index == 0 else f'metrics-{metric}.png'
        plot.line_plot(os.path.join(run_dir, name), series, xlabel='kimg', ylabel=metric.upper(),
                       title=f'{metric.upper()} of {num} generated images')

