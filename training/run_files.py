"""What a training run writes besides its state: network snapshots, `stats.jsonl` with one record
per tick, the tick's status line, `loss.png`, and the image grids `reals.png` and
`samples-<kimg>.png`."""

import copy
import json
import os
import time

import numpy as np
import psutil
import torch

from dnnlib.util import atomic_write
from torch_utils import distributed as dist
from torch_utils import misc, png, training_stats
from training import checkpoints
from training import patch as patch_lib

# ----------------------------------------------------------------------------------------------
# Snapshots.


def snapshot_name(kimg):
    return f'network-snapshot-{int(kimg):06d}.pkl'


def save_snapshot(run_dir, kimg, ema, loss_fn, augment_pipe, dataset_kwargs, decoder=None, name=None):
    """`network-snapshot-<kimg>.pkl` (or `name`): the EMA network (eval, CPU), what generate.py
    needs, the latent `decoder` where there is one (`encoder.snapshot_decoder()`), and the EMA
    network as `.safetensors` (weights and constructor arguments; loading runs no code). Every
    rank calls it; rank 0 writes."""
    data = dict(ema=ema, loss_fn=loss_fn, augment_pipe=augment_pipe, dataset_kwargs=dict(dataset_kwargs))
    if decoder is not None:
        data['encoder'] = decoder
    for key, value in list(data.items()):
        if isinstance(value, torch.nn.Module):
            value = copy.deepcopy(value).eval().requires_grad_(False)
            misc.check_ddp_consistency(value)
            data[key] = value.cpu()
    path = os.path.join(run_dir, name or snapshot_name(kimg))
    if dist.get_rank() == 0:
        checkpoints.save_snapshot_pair(path, data)
    return path


# ----------------------------------------------------------------------------------------------
# Tick records.


class LossStats:
    """The per-image losses of the steps of a tick, overall and per patch size, through
    `training_stats` (so that they are averaged over all ranks), read back by size."""

    def __init__(self):
        self._stat_of_size = {}  # patch size name ('16' or '16x32') → training_stats name

    def report(self, loss, patch_size):
        """Reports the per-image means of `loss` (N, C, H, W) of a step with `patch_size` (None: full images)."""
        per_image = loss.detach().mean(dim=(1, 2, 3))
        training_stats.report('Loss/loss', per_image)
        if patch_size is not None:
            name = patch_lib.shape_name(patch_size)
            training_stats.report(self._stat_of_size.setdefault(name, f'Loss/patch{name}'), per_image)

    def collect(self, collector):
        """{'loss': mean, 'loss_by_patch': {size name: mean}} of the sizes trained since the last update."""
        by_size = {size: collector.mean(stat) for size, stat in sorted(self._stat_of_size.items(), key=lambda kv: _size_order(kv[0]))
                   if collector.num(stat) > 0}
        return dict(loss=collector.mean('Loss/loss'), loss_by_patch=by_size)


class TickClock:
    """Wall-clock times of the run and of the current tick, and the time spent between ticks
    (snapshots, states, grids)."""

    def __init__(self, start_time, nimg):
        self.start_time = start_time
        self.tick_start_time = time.time()
        self.tick_start_nimg = nimg
        self.maintenance_time = self.tick_start_time - start_time
        self.tick_end_time = None

    def end_tick(self, nimg):
        """The timing fields of the tick that ends now, after `nimg` images."""
        self.tick_end_time = time.time()
        sec_per_tick = self.tick_end_time - self.tick_start_time
        return dict(time=self.tick_end_time - self.start_time, sec_per_tick=sec_per_tick,
                    sec_per_kimg=sec_per_tick / max(nimg - self.tick_start_nimg, 1) * 1e3, maintenance_sec=self.maintenance_time)

    def start_tick(self, nimg):
        self.tick_start_time = time.time()
        self.tick_start_nimg = nimg
        self.maintenance_time = self.tick_start_time - self.tick_end_time


def tick_record(tick, nimg, step, timing, losses, lr, device):
    """One line of `stats.jsonl` (field names are read by users' scripts)."""
    record = dict(tick=tick, kimg=nimg / 1e3, step=step, **timing,
                  cpumem_gb=psutil.Process(os.getpid()).memory_info().rss / 2**30,
                  gpumem_gb=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == 'cuda' else None,
                  loss=losses['loss'], lr=lr, loss_by_patch=losses['loss_by_patch'], timestamp=time.time())
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    return record


def format_tick_line(fields):
    """The status line printed every tick."""
    parts = [f'tick {fields["tick"]:<5d}', f'kimg {fields["kimg"]:<9.3f}', f'time {_fmt_time(fields["time"]):<12s}',
             f'sec/tick {fields["sec_per_tick"]:<7.1f}', f'sec/kimg {fields["sec_per_kimg"]:<7.2f}',
             f'cpumem {fields["cpumem_gb"]:<5.2f}']
    if fields.get('gpumem_gb') is not None:
        parts.append(f'gpumem {fields["gpumem_gb"]:<5.2f}')
    parts.append(f'loss {fields["loss"]:<8.4f}')
    for size, value in sorted(fields.get('loss_by_patch', {}).items(), key=lambda kv: _size_order(kv[0])):
        parts.append(f'loss@{size} {value:<8.4f}')
    parts.extend(f'{name} {value:<8.4g}' for name, value in fields.get('metrics', {}).items())
    return ' '.join(parts)


def _size_order(name):
    """Sort key of a patch size's name ('16' or '16x32'): its pixel count."""
    return patch_lib.patch_pixels(patch_lib.parse_patch_size(name))


def _fmt_time(seconds):
    seconds = int(round(seconds))
    if seconds < 60:
        return f'{seconds}s'
    if seconds < 3600:
        return f'{seconds // 60}m {seconds % 60:02d}s'
    if seconds < 86400:
        return f'{seconds // 3600}h {(seconds // 60) % 60:02d}m'
    return f'{seconds // 86400}d {(seconds // 3600) % 24:02d}h'


def write_stats(run_dir, records):
    """Rewrites `stats.jsonl` atomically with the records so far: at the start of a run, so that a
    resume truncates it to the resumed tick."""
    with atomic_write(os.path.join(run_dir, 'stats.jsonl'), 'w', encoding='utf-8') as f:
        for record in records:
            f.write(json.dumps(record) + '\n')


def append_stats(run_dir, record):
    """Appends one tick's line to `stats.jsonl`, as EDM does, so `tail -f` follows the run."""
    with open(os.path.join(run_dir, 'stats.jsonl'), 'a', encoding='utf-8') as f:
        f.write(json.dumps(record) + '\n')


def write_loss_plot(run_dir, records):
    """`loss.png`: total loss and loss per patch side against kimg."""
    from dnnlib import plot
    if len(records) < 2:
        return
    series = {'all': [(r['kimg'], r['loss']) for r in records if np.isfinite(r['loss'])]}
    sizes = sorted({s for r in records for s in r.get('loss_by_patch', {})}, key=_size_order)
    for size in sizes:
        points = [(r['kimg'], r['loss_by_patch'][size]) for r in records if size in r.get('loss_by_patch', {})]
        series[f'patch {size}'] = points
    plot.line_plot(os.path.join(run_dir, 'loss.png'), series, xlabel='kimg', ylabel='loss', title='training loss', logy=True)


# ----------------------------------------------------------------------------------------------
# Image grids.


def save_sample_grid(run_dir, kimg, ema, device, encoder, num_images=64):
    """`samples-<kimg>.png`: a grid from the EMA network with fixed seeds (the sampler of
    generate.py, 18 steps)."""
    from training import sampler
    images = sampler.sample_images(ema, seeds=list(range(num_images)), device=device, decoder=encoder)
    png.save_image_grid(images, os.path.join(run_dir, f'samples-{int(kimg):06d}.png'))


def save_reals_grid(run_dir, dataset, encoder, num_images=64):
    """`reals.png`: the first training items as images, for comparison with the sample grids."""
    count = min(num_images, len(dataset))
    items = torch.as_tensor(np.stack([dataset[i][0] for i in range(count)]))
    png.save_image_grid(encoder.items_to_images(items), os.path.join(run_dir, 'reals.png'))
