"""Run folders of train.py: claimed atomically under a safe name, and resumed from the newest
training state that loads and fits, so that neither a start race nor a killed writer costs a run."""

import contextlib
import glob
import json
import os
import re

import torch
from torch.utils._device import _device_constructors  # the factories `with torch.device(...)` redirects

import dnnlib
from dnnlib.util import FieldError, UserError
from torch_utils import distributed as dist
from torch_utils import misc
from training import file_limits
from training import patch as patch_lib
from training import encoders, training_state

_RUN_ID = re.compile(r'^(\d+)-')


def check_desc(desc, outdir):
    """Raises UserError unless the run-folder description `desc` is one plain name that fits the
    file system of `outdir`: no path separators, no '..', no control characters, so that the run
    stays inside `outdir`."""
    if desc in ('', '.', '..') or any(sep and sep in desc for sep in ('/', '\\', os.sep, os.altsep)) or \
            any(ord(ch) < 32 or ord(ch) == 127 for ch in desc):
        raise FieldError('desc', value=repr(desc), detail='must be a plain name, without "/", "\\", ".." or control characters '
                        f'(it becomes part of the run folder\'s name inside `outdir`)')
    dnnlib.util.check_name_lengths(os.path.join(outdir, f'{next_run_id(outdir):05d}-{desc}'), 'desc', reserve=0)


_RUN_FILE = re.compile(r'^(training_options\.json|log\.txt|stats\.jsonl|(network-snapshot|training-state|phema|samples)-.*)$')


def check_nosubdir(outdir, resume_state=None):
    """Raises a FieldError of `outdir` when `nosubdir` would write a run into a folder holding the
    files of another one, whose snapshots, states and log it would replace; continuing the run of
    that folder (`resume_state` inside it) is allowed."""
    found = sorted(n for n in (os.listdir(outdir) if os.path.isdir(outdir) else []) if _RUN_FILE.match(n))
    if not found or resume_state is not None and os.path.samefile(os.path.dirname(os.path.abspath(resume_state)), outdir):
        return
    raise FieldError('outdir', value=outdir, detail=f'holds the files of another run ({", ".join(found[:3])}{", ..." if len(found) > 3 else ""}), '
                     f'which `nosubdir` would replace; give a new folder, or continue that run with `resume`={outdir}')


def next_run_id(outdir):
    """One more than the largest id of the run folders `<id>-<desc>` in `outdir` (0 if none)."""
    ids = [int(m.group(1)) for name in (os.listdir(outdir) if os.path.isdir(outdir) else [])
           if (m := _RUN_ID.match(name)) and os.path.isdir(os.path.join(outdir, name))]
    return max(ids, default=-1) + 1


@contextlib.contextmanager
def _id_lock(outdir):
    """Holds an exclusive lock on the folder `outdir` itself where the platform has `fcntl`, so
    that two runs started at once with different descriptions still get different ids."""
    try:
        import fcntl
    except ImportError:  # the mkdir below still keeps two runs out of one folder
        yield
        return
    fd = os.open(outdir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def claim_run_dir(outdir, desc, dry_run=False):
    """Makes and returns the new run folder `<outdir>/<id:05d>-<desc>`, the id one more than the
    largest there. `os.mkdir` either creates the folder or fails, so two runs started at the same
    moment never share one: the loser takes the next id. The temporary files that killed writers
    left in the other run folders are removed then. With `dry_run` only the name is returned."""
    check_desc(desc, outdir)
    if dry_run:
        return os.path.join(outdir, f'{next_run_id(outdir):05d}-{desc}')
    os.makedirs(outdir, exist_ok=True)
    with _id_lock(outdir):
        run_id = next_run_id(outdir)
        while True:
            path = os.path.join(outdir, f'{run_id:05d}-{desc}')
            try:
                os.mkdir(path)
                break
            except FileExistsError:  # taken meanwhile, or a file of that name: the next id
                run_id = max(run_id + 1, next_run_id(outdir))
    remove_stale_temps_of_runs(outdir)
    return path


def remove_stale_temps_of_runs(outdir):
    """Removes the temporary files that killed writers left in the run folders `<id>-<desc>` of
    `outdir` (`dnnlib.util.remove_stale_temps`), so that they do not stay in runs never resumed."""
    for name in os.listdir(outdir):
        folder = os.path.join(outdir, name)
        if _RUN_ID.match(name) and os.path.isdir(folder) and not os.path.islink(folder):
            dnnlib.util.remove_stale_temps(folder)

# ----------------------------------------------------------------------------------------------
# Resuming.


MAX_COUNT = 2**53  # images, steps, ticks or blocks: beyond, float arithmetic on them loses whole counts


def check_state_fits(path, state, net):
    """Raises UserError naming what in the loaded training `state` does not fit `net` (built on
    the meta device, so this costs no memory) or this machine's random-number generators: found
    before a run folder is made instead of in the first seconds of training."""
    wanted = {name: tuple(t.shape) for name, t in net.state_dict().items()}
    for key in ('net', 'ema'):
        stored = state.get(key)
        if not isinstance(stored, dict):
            raise FieldError('resume_state', f'"{path}" holds no "{key}" weights')
        have = {name: tuple(t.shape) for name, t in stored.items() if isinstance(t, torch.Tensor)}
        missing, extra = sorted(set(wanted) - set(have)), sorted(set(have) - set(wanted))
        if missing or extra:
            raise FieldError('resume_state', f'"{path}" does not fit this network ("{key}" lacks {len(missing)} and has '
                            f'{len(extra)} unexpected tensors, e.g. {(missing + extra)[0]})')
        shapes = [name for name in wanted if have[name] != wanted[name]]
        if shapes:
            raise FieldError('resume_state', f'"{path}" does not fit this network ("{key}" {shapes[0]} has shape '
                            f'{have[shapes[0]]}, the network {wanted[shapes[0]]})')
        broken = next((name for name, t in stored.items() if t.is_floating_point() and not torch.isfinite(t).all()), None)
        if broken is not None:
            raise FieldError('resume_state', f'"{path}" holds NaN or infinite "{key}" weights (e.g. {broken}): the run had '
                            f'diverged or the file is damaged; resume from an earlier state')
    for key in ('nimg', 'step', 'tick', 'blocks_consumed'):
        if not isinstance(state.get(key), int) or not 0 <= state[key] <= MAX_COUNT:
            raise FieldError('resume_state', f'"{path}" has no valid "{key}" count')
    if not isinstance(state.get('optimizer_state'), dict):
        raise FieldError('resume_state', f'"{path}" holds no optimizer state')
    rng_size = torch.get_rng_state().numel()
    for rng in state.get('rng_states') or []:
        if not isinstance(rng, dict) or not isinstance(rng.get('torch'), torch.Tensor) or rng['torch'].numel() != rng_size \
                or not isinstance(rng.get('numpy_key'), torch.Tensor) or rng['numpy_key'].numel() != 624:
            raise FieldError('resume_state', f'"{path}" holds random-number states of another size than this PyTorch\'s '
                            f'({rng_size} bytes); it cannot continue the same random streams')


_meta_networks = {}  # options => (network on the meta device, its input resolution)


class _MetaWeights(torch.overrides.TorchFunctionMode):
    """Creates the tensors that factories make from sizes (weights, buffers) on the meta device,
    and those made from data (constants such as a preconditioner's sigma_min) as usual, so that
    a network is built at no memory cost and its constructor can still compute with constants."""

    _FROM_DATA = {torch.as_tensor, torch.asarray, torch.tensor, torch.scalar_tensor}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _SIZED_FACTORIES and kwargs.get('device') is None:
            kwargs['device'] = 'meta'
        return func(*args, **kwargs)


_SIZED_FACTORIES = {f for f in _device_constructors() if f not in _MetaWeights._FROM_DATA}


def meta_network(c):
    """The network train.py's options `c` build, on the meta device (shapes only, no memory), and
    its input resolution; the data set is opened once per set of options."""
    key = json.dumps([c.dataset_kwargs, c.encoder_kwargs, c.network_kwargs], sort_keys=True, default=str)
    if key not in _meta_networks:
        dataset = dnnlib.construct_class_by_name(**c.dataset_kwargs)
        try:
            resolution, channels = encoders.network_shape(dataset, c.encoder_kwargs)
            with _MetaWeights():
                net = dnnlib.construct_class_by_name(**c.network_kwargs, img_resolution=resolution, img_channels=channels,
                                                     label_dim=dataset.label_dim)
        except (RuntimeError, OverflowError, ValueError, TypeError) as err:  # sizes beyond int64, or beyond any memory
            raise FieldError('network_kwargs', f'the network cannot be built ({str(err).strip().splitlines()[0][:200]})') from None
        finally:
            if hasattr(dataset, 'close'):
                dataset.close()
        _meta_networks[key] = net, resolution
    return _meta_networks[key]


def check_training_memory(c, device):
    """Raises a FieldError of `network_kwargs` (its `pos_embed` too where set) and the batch
    (`batch_gpu` where set, else `batch_size`) when training with options `c` cannot fit on
    `device`: the weights, their EMA copy, gradients and Adam's two moments (5 x 4 bytes per
    parameter), plus the encoder outputs the U-Net keeps for its decoder and the output of its
    first convolution for one round of full images (a lower bound of the activations)."""
    net, resolution = meta_network(c)
    height, width = patch_lib.image_hw(resolution)
    batch_gpu = c.batch_gpu or c.batch_size // dist.get_world_size()
    weights = 20 * misc.count_parameters(net)
    per_pixel = file_limits.skip_elements_per_pixel(net) + 2 * file_limits.full_resolution_channels(net)
    activations = 4 * batch_gpu * per_pixel * height * width
    fields = ('network_kwargs',)
    if c.network_kwargs.get('pos_embed'):
        fields += ('network_kwargs.pos_embed',)
    with dnnlib.util.field_of(fields + ('batch_gpu' if c.batch_gpu else 'batch_size',)):
        file_limits.check_memory(weights + activations, f'{misc.count_parameters(net):,} parameters and batches of '
                                 f'{batch_gpu} images of {width}x{height}', device)


def state_files(folder):
    """The training-state files of a run folder, newest (largest kimg) first."""
    def kimg(path):
        match = re.search(r'-(\d+)\.pt$', os.path.basename(path))
        return int(match.group(1)) if match else -1
    return sorted(glob.glob(os.path.join(glob.escape(folder), 'training-state-*.pt')), key=kimg, reverse=True)


def pick_resume_state(path, c):
    """The training state for `--resume=path` that loads and fits train.py's options `c`: `path`
    itself, or in a run folder the newest such state, passing over (with one line each) states
    that a killed or full-disk writer left unreadable; one that holds code is refused outright.
    Temporary files that killed writers left in the folder are removed. Raises UserError saying
    why nothing can be resumed."""
    if not os.path.isdir(path):
        candidates = [training_state.find_resume_state(path)]
    else:
        dnnlib.util.remove_stale_temps(path)
        candidates = state_files(path)
        if not candidates:
            snapshots = glob.glob(os.path.join(glob.escape(path), 'network-snapshot-*.pkl'))
            hint = (f'; `resume_pkl`={sorted(snapshots)[-1]} starts a new run from its latest weights' if snapshots
                    else '; start it again without `resume_state`')
            raise FieldError('resume_state', f'run folder "{path}" holds no training state: the run stopped before its first '
                            f'one was written (one every `state_dump_ticks` ticks, and at the end){hint}')
    net = meta_network(c)[0]
    reasons = []
    for candidate in candidates:
        try:
            state = training_state.check_resume_state(candidate, c.network_kwargs, c.batch_size)
            check_state_fits(candidate, state, net)
            return candidate
        except UserError as err:
            if len(candidates) == 1 or 'could run code' in err.message:  # a planted file is no damage to pass over
                raise
            reasons.append(err)
            dist.print0(dnnlib.util.notice(f'Passing over {_reason(err)}'))
    raise FieldError('resume_state', f'no training state in "{path}" loads and fits this run; the newest: '
                    f'{_reason(reasons[0])}')


def _reason(err):
    """Why a training state cannot be resumed: the message of `err` without its `resume_state` head."""
    return err.detail if isinstance(err, FieldError) and err.field == 'resume_state' else err.message
