"""The training-state file (`training-state-<kimg>.pt`) in one place: what it holds, how it is
written and read, and which runs may resume from it.

A state holds the network, its EMA, the optimizer, the counters (images, steps, ticks, data-loader
blocks consumed), every rank's global RNG states, the stats records so far, the network options and
batch size it was trained with, and the `state_dict()` of every extra part (e.g. more EMA
trackers) under the part's name. Only tensors, numbers, strings and containers: it loads with
`weights_only=True`."""

import glob
import json
import os
import pickle
import re
import warnings

import numpy as np
import torch

import dnnlib
from dnnlib.util import FieldError, atomic_write
from torch_utils import distributed as dist
from training import file_limits

# Network options that may differ on resume: they do not change the weights.
RESUMABLE_CHANGES = ('use_fp16', 'use_bf16')
_OWN_KEYS = ('net', 'ema', 'optimizer_state', 'nimg', 'step', 'tick', 'blocks_consumed', 'rng_states', 'stats',
             'network_kwargs', 'batch_size')


def state_name(kimg):
    return f'training-state-{int(kimg):06d}.pt'


def find_resume_state(path):
    """The training-state file to resume from: `path` itself, or the latest state in a run folder."""
    if os.path.isdir(path):
        states = sorted(glob.glob(os.path.join(path, 'training-state-*.pt')), key=_kimg_of)
        if not states:
            raise FieldError('resume_state', f'run folder "{path}" holds no training-state-*.pt file')
        return states[-1]
    if not os.path.lexists(path):
        raise FieldError('resume_state', f'"{path}" does not exist')
    return path


def _kimg_of(path):
    match = re.search(r'-(\d+)\.\w+$', os.path.basename(path))
    return int(match.group(1)) if match else -1


def load_state(path):
    """The dict of a training-state file, with a clear error for anything else. A file whose
    unpickling would run code (or build any object but tensors and containers) is refused unread,
    and so is anything but a regular file (a pipe would block the read forever)."""
    with dnnlib.util.field_of('resume_state'):
        file_limits.check_regular_file(path, f'"{path}"')
    try:
        with warnings.catch_warnings():  # e.g. about the pickle protocol of a foreign file: the error says enough
            warnings.simplefilter('ignore')
            state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:
        found = re.search(r'GLOBAL ([\w.]+)', str(err)) if isinstance(err, pickle.UnpicklingError) else None
        if found:
            raise FieldError('resume_state', f'"{path}" holds a {found.group(1)}, which training states of this version never do; '
                            f'refused unread, since loading it could run code') from None
        raise FieldError('resume_state', f'"{path}" is not a readable training state ({type(err).__name__})') from None
    if not isinstance(state, dict) or 'net' not in state or 'nimg' not in state:
        raise FieldError('resume_state', f'"{path}" is not a training-state file written by train.py')
    return state


def check_resume_state(path, network_kwargs, batch_size):
    """Loads the state at `path` and raises a FieldError of `resume_state` naming every network
    option and the batch size that differ from this run's, before a run folder is made for a
    resume that cannot work.
    Returns the loaded state."""
    state = load_state(path)
    if not isinstance(state.get('network_kwargs') or {}, dict):
        raise FieldError('resume_state', f'"{path}" is not a training-state file written by train.py (its network_kwargs '
                        f'are not options)')
    stored = dict(state.get('network_kwargs') or {})
    wanted = _plain(network_kwargs)
    differ = [f'{key} {stored.get(key)!r} (now {wanted.get(key)!r})' for key in sorted(set(stored) | set(wanted))
              if key not in RESUMABLE_CHANGES and stored.get(key) != wanted.get(key)]
    if state.get('batch_size', batch_size) != batch_size:
        differ.append(f'`batch_size` {state["batch_size"]} (now {batch_size})')
    if differ:
        raise FieldError('resume_state', f'"{path}" was trained with other options: {", ".join(differ)}')
    return state


def _plain(value):
    """`value` as JSON would give it back (EasyDicts and tuples become dicts and lists)."""
    return json.loads(json.dumps(value))


def rng_state(device):
    """This process's global RNG states (used by dropout and the data-loader workers' seeds): the
    CPU's and, on a GPU, that GPU's only, so a run can resume on a machine with fewer GPUs."""
    _name, key, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = dict(torch=torch.get_rng_state(), numpy_key=torch.from_numpy(key.astype(np.int64)), numpy_pos=int(pos),
                 numpy_has_gauss=int(has_gauss), numpy_cached_gaussian=float(cached_gaussian))
    if device.type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device):
    torch.set_rng_state(state['torch'])
    np.random.set_state(('MT19937', state['numpy_key'].numpy().astype(np.uint32), state['numpy_pos'],
                         state['numpy_has_gauss'], state['numpy_cached_gaussian']))
    if 'cuda' in state and device.type == 'cuda':
        torch.cuda.set_rng_state(state['cuda'], device)


class Tracker:
    """Something that follows the training beside the EMA (`training.trackers`: post-hoc EMA
    profiles, metrics at ticks, live logs). The loop calls `update` after every optimizer step;
    at every tick `tick` (before the record is printed and appended to stats.jsonl; it may add
    fields), `snapshot` when a snapshot is written and `after_tick` once the tick's files are
    written; `close` at the end. A tracker with state is a part of the `TrainingState`: its
    `state_dict()` is saved under its name. Every rank calls every hook. The defaults do nothing."""

    def update(self, net, step, nimg):
        """After optimizer step `step` (1, 2, ...), with `nimg` images trained on so far."""

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        """Continues from what `state_dict` gave; `state` is None where the saved run had no such part."""

    def tick(self, record, records, done):
        """At the end of a tick: its `record`, the `records` of the ticks before, and whether it is the last."""

    def snapshot(self, run_dir, kimg, nimg):
        """When `network-snapshot-<kimg>.pkl` is written."""

    def after_tick(self, record, run_dir):
        """Once the tick's record, snapshot and sample grid are written."""

    def close(self):
        """At the end of training."""


class TrainingState:
    """What a run carries from one step to the next and across a resume: the network, its EMA, the
    optimizer, `parts` (a dict of `Tracker`s with state, saved under their names), the counters and the stats records of the ticks so far."""

    def __init__(self, net, ema, optimizer, network_kwargs, batch_size, parts=None):
        self.net, self.ema, self.optimizer = net, ema, optimizer
        self.network_kwargs, self.batch_size = network_kwargs, batch_size
        self.parts = dict(parts or {})
        assert not set(self.parts) & set(_OWN_KEYS), 'a part would overwrite the state\'s own entries'
        self.nimg = self.step = self.tick = self.blocks_consumed = 0
        self.stats = []

    def save(self, path, device):
        """Writes the state to `path` atomically (rank 0); every rank calls it, for its RNG state."""
        rng_states = dist.all_gather_object(rng_state(device))
        if dist.get_rank() != 0:
            return
        state = dict(net=self.net.state_dict(), ema=self.ema.state_dict(), optimizer_state=self.optimizer.state_dict(),
                     nimg=self.nimg, step=self.step, tick=self.tick, blocks_consumed=self.blocks_consumed,
                     rng_states=rng_states, stats=_plain(self.stats), network_kwargs=_plain(self.network_kwargs),
                     batch_size=self.batch_size)
        state.update({name: part.state_dict() for name, part in self.parts.items()})
        with atomic_write(path, 'wb') as f:
            torch.save(state, f)

    def load(self, path, device):
        """Continues from the state file at `path`: weights, optimizer, parts, counters, stats and
        this rank's RNG states (a rank the saving run did not have keeps its own)."""
        state = load_state(path)
        try:
            self.net.load_state_dict(state['net'])
            self.ema.load_state_dict(state['ema'])
            load_optimizer_state(self.optimizer, state['optimizer_state'])
            for name, part in self.parts.items():
                part.load_state_dict(state.get(name))
        except (RuntimeError, ValueError, KeyError) as err:
            raise FieldError('resume_state', f'"{path}" does not fit this network ({str(err).strip().splitlines()[0]})') from None
        self.nimg, self.step, self.tick, self.blocks_consumed = state['nimg'], state['step'], state['tick'], state['blocks_consumed']
        self.stats = list(state.get('stats', []))
        rng_states = state.get('rng_states', [])
        if dist.get_rank() < len(rng_states):
            set_rng_state(rng_states[dist.get_rank()], device)


def load_optimizer_state(optimizer, state):
    """Loads a saved optimizer state but keeps this run's choice of kernel, which the saved groups
    (EDM's have no `fused`) would otherwise overwrite."""
    kernels = {key: optimizer.defaults[key] for key in ('fused', 'foreach') if key in optimizer.defaults}
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        group.update(kernels)
    check_optimizer_moments(optimizer)


def check_optimizer_moments(optimizer):
    """Raises ValueError unless every per-parameter tensor of a loaded optimizer state (Adam's
    moments) has its parameter's shape and dtype, and every `step` is one number: the fused
    kernels read them without checking and crash the process on a mismatch."""
    for group in optimizer.param_groups:
        for index, param in enumerate(group['params']):
            for key, value in optimizer.state.get(param, {}).items():
                if key == 'step':
                    if isinstance(value, torch.Tensor) and value.numel() != 1 or not isinstance(value, (int, float, torch.Tensor)):
                        raise ValueError(f'optimizer "step" of parameter {index} is not one number')
                elif not isinstance(value, torch.Tensor) or value.shape != param.shape or value.dtype != param.dtype:
                    got = f'{tuple(value.shape)} {value.dtype}' if isinstance(value, torch.Tensor) else type(value).__name__
                    raise ValueError(f'optimizer "{key}" of parameter {index} is {got}, not {tuple(param.shape)} {param.dtype}')
