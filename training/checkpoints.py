"""Network files in, networks out: the one loader of generate.py, train.py --transfer and the benches.

Accepted files, told apart by what they hold:
- this project's snapshots: a pickle of {'ema': network, 'encoder': latent decoder (latent runs), ...};
- EDM's pickles (same dict layout), whose networks take `net(x, sigma_tensor, class_labels, ...)`;
- the original Patch Diffusion release's pickles, whose networks take
  `net(x, sigma, x_pos=coordinate channels, class_labels=...)`, count the coordinate channels in
  `img_channels` and the data channels in `out_channels`;
- `.safetensors` files (`save_safetensors`: weights plus the class name and constructor arguments
  as JSON metadata), rebuilt from this project's own classes without unpickling anything.

Pickles are read by `persistence.restricted_loads`, which runs nothing from the file: the
networks are rebuilt from their class names, constructor arguments and weights onto the classes
of `training/networks.py` (EDM's and the original release's included), after their planned
shapes were checked against the file's tensors. Only `trust=True` (`--trust-pickle`) unpickles
fully, which runs the code a pickle carries; foreign networks loaded that way are wrapped in
`ForeignNetwork`, so the samplers see one interface. A file never names a VAE to download: hub
ids come only from `--vae`.
"""

import inspect
import json
import math
import os
import pickle
import pickletools
import re
import secrets
import struct

import torch

import dnnlib
from dnnlib.util import FieldError, UserError, atomic_write
from torch_utils import persistence
from torch_utils.persistence import ModuleRecord, PersistentRecord
from training import encoders, file_limits, patch

NETWORK_CLASSES = ('EDMPrecond', 'VPPrecond', 'VEPrecond', 'iDDPMPrecond')  # in training.networks
ENCODER_CLASS = 'training.encoders.StabilityVAEEncoder'
METADATA_KEY = 'patch_diffusion_network'
SNAPSHOT_ID_KEY = 'snapshot_id'  # one random id in the .pkl and the .safetensors of one snapshot
TRUST_HINT = 'pass `trust` to unpickle it fully, which runs code from the file, only if you trust it'
# Pickle opcodes that import or call something: a pickle without them holds only plain data.
_CODE_OPCODES = {'GLOBAL', 'STACK_GLOBAL', 'INST', 'OBJ', 'REDUCE', 'NEWOBJ', 'NEWOBJ_EX', 'BUILD',
                 'EXT1', 'EXT2', 'EXT4', 'PERSID', 'BINPERSID'}

# ----------------------------------------------------------------------------------------------
# The adapter.


class ForeignNetwork(torch.nn.Module):
    """A network of EDM or of the original Patch Diffusion release behind this project's interface
    `net(x, sigma, class_labels=None, coords=None)`: σ becomes the tensor those networks need, and
    the coordinates become the `x_pos` channels of the original release's networks (their
    sin/cos features for networks trained with `--embed_fq`, zeros with `mask_pos`)."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.takes_x_pos = 'x_pos' in inspect.signature(net.forward).parameters
        self.img_resolution = net.img_resolution
        self.label_dim = net.label_dim
        self.sigma_min = float(getattr(net, 'sigma_min', 0))
        self.sigma_max = float(getattr(net, 'sigma_max', float('inf')))
        self.coord_channels = net.img_channels - net.out_channels if self.takes_x_pos else 0
        self.img_channels = net.img_channels - self.coord_channels
        self.use_coords = self.takes_x_pos
        self.pos_embed = self.coord_channels // 4 if self.coord_channels != 2 else 0
        self.mask_pos = False
        self.down_factor = _down_factor(net)

    def forward(self, x, sigma, class_labels=None, coords=None, **model_kwargs):
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(x.shape[0])
        if not self.takes_x_pos:
            return self.net(x, sigma, class_labels, **model_kwargs)
        if coords is None:
            coords = patch.coord_grid(self.img_resolution, x.shape[2], x.shape[3], device=x.device).expand(x.shape[0], -1, -1, -1)
        x_pos = patch.coord_features(coords.to(torch.float32), self.pos_embed)
        if self.mask_pos:
            x_pos = torch.zeros_like(x_pos)
        return self.net(x, sigma, x_pos=x_pos, class_labels=class_labels, **model_kwargs)

    def round_sigma(self, sigma):
        return self.net.round_sigma(sigma) if hasattr(self.net, 'round_sigma') else torch.as_tensor(sigma)


def _down_factor(net):
    """Image sides must be multiples of this: the full side over the smallest side of the U-Net's
    encoder levels (named `<height>x<width>_...` in EDM's networks and ours)."""
    enc = getattr(getattr(net, 'model', None), 'enc', None)
    sides = [int(m.group(1)) for key in (enc.keys() if enc is not None else []) if (m := re.match(r'(\d+)x\d+_', key))]
    return patch.image_hw(net.img_resolution)[0] // min(sides) if sides else 1


def is_ours(net):
    """True for this project's networks (their forward takes `coords`)."""
    return 'coords' in inspect.signature(net.forward).parameters


def is_foreign(net):
    """True for a network of EDM or of the original release: wrapped in `ForeignNetwork`, or
    rebuilt onto our class from such a pickle."""
    return isinstance(net, ForeignNetwork) or getattr(net, 'foreign', False)


def for_sampling(net):
    """`net` itself if it is one of ours, else wrapped in `ForeignNetwork`."""
    return net if is_ours(net) else ForeignNetwork(net)


def mask_coordinates(net):
    """Feeds zeros in place of the coordinate channels from now on (the original release's
    `--mask_pos`), for its networks run as ours or behind `ForeignNetwork`; False for a network
    without coordinates."""
    if not getattr(net, 'use_coords', False):
        return False
    if isinstance(net, ForeignNetwork):
        net.mask_pos = True
        return True
    channels = net.coord_channels

    def zero_coordinates(_module, args):
        x = args[0]
        return (torch.cat([x[:, :-channels], torch.zeros_like(x[:, -channels:])], dim=1), *args[1:])
    net.model.register_forward_pre_hook(zero_coordinates)
    return True


def unwrap(net):
    """The network inside a `ForeignNetwork` (the one whose parameter names are EDM's)."""
    return net.net if isinstance(net, ForeignNetwork) else net

# ----------------------------------------------------------------------------------------------
# Pickles.


def _describe_bad_pickle(data, err):
    """Why `data` is not a complete pickle, in a few words."""
    if not data:
        return 'the file is empty'
    head = data[:4096]
    try:
        text = head.decode('utf-8')
        if all(ch.isprintable() or ch.isspace() for ch in text):
            return f'it is a text file starting "{text.strip()[:40]}", not a pickle'
    except UnicodeDecodeError:
        pass
    if data[:1] == b'\x80':  # the protocol marker of every pickle written by EDM, the release or us
        return f'the pickle ends early or is damaged (an interrupted download?): {err}'
    return 'it is not a pickle'


def read_bytes(url):
    """The whole file at a path or URL; a missing or unreadable one is a one-line UserError, and
    so is one that is not a regular file (a pipe would block, a device never ends) or larger than
    the free memory."""
    try:
        path = dnnlib.util.open_url(url, return_filename=True)
        file_limits.check_regular_file(path, f'"{url}"')
        file_limits.check_memory(os.path.getsize(path), f'"{url}" ({os.path.getsize(path):,} bytes)')
        with open(path, 'rb') as f:
            return f.read()
    except (OSError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise UserError(f'cannot open "{url}": {reason}') from None


def read_pickle(url):
    """The bytes of the network pickle at a path or URL, checked without unpickling: a
    missing file, a text file, a truncated or damaged pickle, or a pickle of plain data (which can
    hold no network) is a one-line UserError naming the file."""
    data = read_bytes(url)
    try:
        opcodes = {op.name for op, _arg, _pos in pickletools.genops(data)}
    except Exception as err:  # genops reports damage as ValueError, struct or unicode errors
        raise UserError(f'"{url}" is not a network pickle: {_describe_bad_pickle(data, err)}') from None
    if not opcodes & _CODE_OPCODES:
        try:
            held = type(pickle.loads(data)).__name__  # plain data: safe to load
        except Exception as err:  # opcodes that parse but do not make a valid pickle (e.g. some text)
            raise UserError(f'"{url}" is not a network pickle: {_describe_bad_pickle(data, err)}') from None
        raise UserError(f'"{url}" is a pickle of a {held}, not a network snapshot (a dict with an "ema" network)')
    return data


def _restricted_object(data, url):
    """The object in the pickle `data` read by the restricted unpickler; a global or operation it
    does not allow is a one-line UserError naming the file and the global."""
    try:
        return persistence.restricted_loads(data)
    except persistence.RefusedPickle as err:
        raise UserError(f'"{url}" needs {err.what} to load, which could run code from the file; {TRUST_HINT}') from None
    except Exception as err:  # damaged opcodes surface as many error types
        raise UserError(f'"{url}" is not a readable network pickle ({type(err).__name__}: {err})'.replace('\n', ' ')[:400]) from None


def load_snapshot(url, field='network', trust=False):
    """The dict of a network pickle with its networks, decoder, loss and augmentation rebuilt onto
    this project's classes (restricted unpickling), or as pickled with `trust`. A problem with the
    file is a FieldError of `field`, the argument that named it."""
    with dnnlib.util.field_of(field):
        return _load_snapshot(url, trust)


def _load_snapshot(url, trust):
    data = read_pickle(url)
    if trust:
        return _trusted_object(data, url)
    obj = _restricted_object(data, url)
    if not isinstance(obj, dict):
        raise UserError(f'"{url}" is a pickle of a {type(obj).__name__}, not a network snapshot (a dict with an "ema" network)')
    where = f'"{url}"'
    return {key: rebuild(value, key, where) for key, value in obj.items()}


def _trusted_object(data, url):
    try:
        return pickle.loads(data)
    except Exception as err:  # foreign code can fail in any way while unpickling
        raise UserError(f'"{url}" is not a readable network pickle ({type(err).__name__}: {err})'.replace('\n', ' ')[:400]) from None


def unpickle_network(url, field='network', trust=False):
    """(network, decoder or None) from a pickle: rebuilt onto this project's classes without
    running code from the file, or, with `trust`, unpickled fully (EDM's and the original
    release's networks then run their own code). A problem with the file is a FieldError of `field`."""
    with dnnlib.util.field_of(field):
        return _unpickle_network(url, trust)


def _unpickle_network(url, trust):
    data = read_pickle(url)
    where = f'"{url}"'
    obj = _trusted_object(data, url) if trust else _restricted_object(data, url)
    net = obj.get('ema') if isinstance(obj, dict) else None
    if not trust:
        if not isinstance(net, PersistentRecord):
            raise UserError(f'{where} is a pickle but not a network snapshot (no "ema" network in it)')
        net = rebuild_network(net, where)
        decoder = rebuild_decoder(obj.get('encoder'), where)
        return net, decoder
    if not isinstance(net, torch.nn.Module) or not all(hasattr(net, a) for a in ('img_resolution', 'img_channels', 'label_dim')):
        raise UserError(f'{where} is a pickle but not a network snapshot (no "ema" network in it)')
    decoder = obj.get('encoder')
    if decoder is not None and not hasattr(decoder, 'decode'):
        raise UserError(f'the "encoder" in "{url}" has no decode() method')
    return net, decoder


def snapshot_id_of_pickle(url):
    """The `SNAPSHOT_ID_KEY` of a local pickle (restricted unpickling), None without one or when the
    file cannot be read."""
    try:
        with open(url, 'rb') as f:
            obj = persistence.restricted_loads(f.read())
    except Exception:  # an unreadable sibling has no id to compare
        return None
    value = obj.get(SNAPSHOT_ID_KEY) if isinstance(obj, dict) else None
    return value if isinstance(value, str) else None

# ----------------------------------------------------------------------------------------------
# Rebuilding pickled objects onto this project's classes.


def _counterpart(name, args, kwargs, release, img_channels=None, out_channels=None):
    """(class path in training.networks, init_args, init_kwargs) of our class computing what the
    network class `name` (ours, EDM's, or with `release` the original release's) computes. The
    original release counts the coordinate channels in `img_channels`, the data in `out_channels`."""
    args, kwargs = list(args), dict(kwargs)
    if release:
        name = name.removeprefix('Patch_')
        img_channels = kwargs.get('img_channels', img_channels)
        out_channels = kwargs.get('out_channels', out_channels)
        if not isinstance(img_channels, int) or not isinstance(out_channels, int) or args:
            raise UserError(f'the {name} network of the original release records no img_channels/out_channels')
        coord_channels = img_channels - out_channels
        kwargs.update(img_channels=out_channels, use_coords=True, pos_embed=coord_channels // 4 if coord_channels != 2 else 0)
        kwargs.pop('out_channels', None)
    if name not in NETWORK_CLASSES:
        raise UserError(f'the network class {name} has no counterpart in training/networks.py ({", ".join(NETWORK_CLASSES)})')
    return f'training.networks.{name}', args, kwargs


def record_tensors(record):
    """{state_dict name: tensor} of a pickled module record (parameters and persistent buffers of
    it and its sub-modules), like `state_dict()` of the module it describes."""
    out, seen = {}, set()

    def walk(node, prefix):
        if id(node) in seen:
            raise ValueError('a module that contains itself')
        seen.add(id(node))
        state = node.state
        skip = state.get('_non_persistent_buffers_set') or set()
        for kind in ('_parameters', '_buffers'):
            for key, value in (state.get(kind) or {}).items():
                if value is None or (kind == '_buffers' and key in skip):
                    continue
                if not isinstance(value, torch.Tensor):
                    raise ValueError(f'{prefix}{key} is a {type(value).__name__}, not a tensor')
                out[prefix + key] = value
        for key, sub in (state.get('_modules') or {}).items():
            if sub is None:
                continue
            if not isinstance(sub, (PersistentRecord, ModuleRecord)):
                raise ValueError(f'{prefix}{key} is a {type(sub).__name__}, not a module')
            walk(sub, f'{prefix}{key}.')
    walk(record, '')
    return out


def rebuild_network(record, where):
    """Our network computing what the pickled network `record` computes, with its weights."""
    name = record.class_name
    init_kwargs = record.state.get('_init_kwargs')
    if (not isinstance(init_kwargs, dict) or not all(isinstance(k, str) for k in init_kwargs)
            or not isinstance(record.state.get('_init_args', ()), (list, tuple))):
        raise UserError(f'{where}: the {name} network records no constructor arguments, so it cannot be rebuilt; {TRUST_HINT}')
    try:
        tensors = record_tensors(record)
    except Exception as err:  # whatever a crafted state holds where modules and tensors belong
        raise UserError(f'{where}: the {name} network is malformed ({type(err).__name__}: {err})'[:400]) from None
    try:
        class_path, args, kwargs = _counterpart(name, record.init_args, init_kwargs, name.startswith('Patch_'),
                                                record.state.get('img_channels'), record.state.get('out_channels'))
    except UserError as err:
        raise UserError(f'{where}: {err.message}; {TRUST_HINT}') from None
    try:
        net = build_network(class_path, args, kwargs, tensors, where)
    except UserError as err:
        raise UserError(f'{err.message}; {TRUST_HINT}') from None
    net.foreign = 'coord_channels' not in record.state  # EDM's or the original release's, not ours
    return net


def rebuild_decoder(record, where):
    """The latent decoder (`StabilityVAEEncoder`) of a pickled snapshot from its settings, or None."""
    if record is None:
        return None
    if not isinstance(record, PersistentRecord) or record.class_name != ENCODER_CLASS.rsplit('.', 1)[1]:
        raise UserError(f'{where}: the "encoder" is not a {ENCODER_CLASS} and cannot be rebuilt; {TRUST_HINT}')
    settings = {key: record.state.get(key) for key in _ENCODER_FIELDS if key in record.state}
    return make_decoder(dict(settings, class_name=ENCODER_CLASS), where)


_ENCODER_FIELDS = ('vae_name', 'latent_norm', 'scale', 'channel_mean', 'channel_std')
_OTHER_CLASSES = {'EDMLoss': 'training.loss.EDMLoss', 'VPLoss': 'training.loss.VPLoss', 'VELoss': 'training.loss.VELoss',
                  'AugmentPipe': 'training.augment.AugmentPipe'}


def rebuild(value, key, where):
    """A value of a pickled snapshot dict with its records rebuilt: networks and the decoder as
    above, the loss and the augmentation pipe of this project from their constructor arguments."""
    if key == 'ema' and isinstance(value, PersistentRecord):
        return rebuild_network(value, where)
    if key == 'encoder':
        return rebuild_decoder(value, where)
    if isinstance(value, PersistentRecord):
        class_path = _OTHER_CLASSES.get(value.class_name)
        if class_path is None:
            raise UserError(f'{where}: "{key}" is a {value.class_name}, which has no counterpart in this project; {TRUST_HINT}')
        try:
            return dnnlib.util.construct_class_by_name(*value.init_args, class_name=class_path, **value.init_kwargs)
        except Exception as err:  # arguments that do not fit the class
            raise UserError(f'{where}: "{key}" cannot be rebuilt as {class_path} ({type(err).__name__}: {err})'[:400]) from None
    if isinstance(value, ModuleRecord) or _holds_records(value):
        raise UserError(f'{where}: "{key}" holds objects that cannot be rebuilt; {TRUST_HINT}')
    return value


def _holds_records(value, depth=0, seen=None):
    """True when `value` holds a record within 20 levels; each container is looked into once, so
    a pickle that reuses one list at every level cannot make the walk exponential."""
    if isinstance(value, (PersistentRecord, ModuleRecord)):
        return True
    seen = set() if seen is None else seen
    if depth > 20 or not isinstance(value, (dict, list, tuple, set, frozenset)) or id(value) in seen:
        return False
    seen.add(id(value))
    items = value.values() if isinstance(value, dict) else value
    return any(_holds_records(v, depth + 1, seen) for v in items)

# ----------------------------------------------------------------------------------------------
# Building a network only after its size was checked.


class _OverBudget(Exception):
    pass


def planned_shapes(cls, args, kwargs, max_elements, max_modules):
    """{state_dict name: shape} of `cls(*args, **kwargs)` built on the meta device (no memory),
    abandoned with `_OverBudget` as soon as it would hold more than `max_elements` numbers or
    `max_modules` modules."""
    counts = dict(elements=0, modules=0)

    def count(kind, amount, limit):
        counts[kind] += amount
        if counts[kind] > limit:
            raise _OverBudget(f'more than {limit:,} {"numbers" if kind == "elements" else kind}')

    from torch.nn.modules import module as module_lib
    handles = [module_lib.register_module_parameter_registration_hook(lambda _m, _n, p: count('elements', p.numel() if p is not None else 0, max_elements)),
               module_lib.register_module_buffer_registration_hook(lambda _m, _n, b: count('elements', b.numel() if b is not None else 0, max_elements)),
               module_lib.register_module_module_registration_hook(lambda _m, _n, _s: count('modules', 1, max_modules))]
    net = cls.__new__(cls)
    try:
        with torch.device('meta'):
            try:
                cls.__init__(net, *args, **kwargs)
            except RuntimeError as err:  # VP and iDDPM read their σ range from tensors made after their layers
                if 'meta' not in str(err) or not hasattr(net, 'model'):
                    raise
    finally:
        for handle in handles:
            handle.remove()
    return {name: tuple(t.shape) for name, t in net.state_dict().items()}


def build_network(class_path, args, kwargs, tensors, where):
    """`class_path(*args, **kwargs)` with the weights `tensors`, built only once a copy on the meta
    device showed that it holds exactly those tensors' names and shapes (so arguments asking for a
    huge network never allocate it); every mismatch is a one-line UserError."""
    cls = dnnlib.util.get_obj_by_name(class_path)
    _check_weights_hold_their_numbers(tensors, where)
    file_elements = sum(t.numel() for t in tensors.values())
    for name, value in _integers(dict(enumerate(args)) | kwargs):
        if abs(value) > max(file_elements, 2**16):  # a count (σ levels, blocks, channels) beyond the file's weights
            raise UserError(f'{where}: the constructor argument {name}={value} of {class_path} is larger than the '
                            f'{file_elements:,} numbers the file holds')
    try:
        shapes = planned_shapes(cls, args, kwargs, max_elements=2 * file_elements + 2**20, max_modules=4 * len(tensors) + 64)
    except _OverBudget as err:
        raise UserError(f'{where}: the constructor arguments of {class_path} ask for a network far larger than the weights '
                        f'in the file ({err}; the file holds {file_elements:,})') from None
    except Exception as err:  # arguments the class rejects (TypeError, AssertionError, ValueError, ...)
        raise UserError(f'{where}: the constructor arguments do not fit {class_path} ({type(err).__name__}: {err})'.replace('\n', ' ')[:400]) from None
    got = {name: tuple(t.shape) for name, t in tensors.items()}
    if shapes != got:
        missing, extra = sorted(set(shapes) - set(got)), sorted(set(got) - set(shapes))
        wrong = [n for n in sorted(set(shapes) & set(got)) if shapes[n] != got[n]]
        detail = (f'"{wrong[0]}" has shape {got[wrong[0]]} in the file, {shapes[wrong[0]]} in the network' if wrong else
                  f'{len(missing)} tensors missing (e.g. "{missing[0]}")' if missing else f'{len(extra)} unexpected tensors (e.g. "{extra[0]}")')
        raise UserError(f'{where}: the weights do not fit {class_path}: {detail}')
    for name, tensor in tensors.items():
        if tensor.dtype.is_floating_point and not torch.isfinite(tensor).all():
            raise UserError(f'{where}: the weight "{name}" holds NaN or infinite values')
    file_limits.check_memory(sum(t.numel() * t.element_size() for t in tensors.values()), f'{where}: the network')
    net = cls(*args, **kwargs)
    net.load_state_dict(tensors)
    return net.eval().requires_grad_(False)


def _check_weights_hold_their_numbers(tensors, where):
    """Raises UserError when the weights' shapes ask for more numbers than their storages hold: a
    pickled tensor can repeat a few numbers (stride 0) or share them with another, so that a small
    file would make the network it describes, and the memory checks, count gigabytes."""
    storages = {}
    for tensor in tensors.values():
        storage = tensor.untyped_storage()
        storages[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
    claimed = sum(t.numel() * t.element_size() for t in tensors.values())
    held = sum(storages.values())
    if claimed > held:
        raise UserError(f'{where}: the weights ask for {claimed:,} bytes but their storages hold {held:,} (tensors that '
                        f'repeat or overlap their numbers, which saved weights never do)')


def _integers(value, name='', depth=0, seen=None):
    """(dotted name, integer) of every integer in nested dicts and lists of constructor arguments;
    a container met again (a pickle can reuse one list at every level) is not walked twice."""
    seen = set() if seen is None else seen
    if isinstance(value, int) and not isinstance(value, bool):
        yield name, value
    elif isinstance(value, (dict, list, tuple)) and depth < 8 and id(value) not in seen:
        seen.add(id(value))
        if isinstance(value, dict):
            for key, item in value.items():
                yield from _integers(item, f'{name}.{key}' if name else str(key), depth + 1, seen)
        else:
            for index, item in enumerate(value):
                yield from _integers(item, f'{name}[{index}]', depth + 1, seen)


def make_decoder(settings, where):
    """A `StabilityVAEEncoder` from the settings a file records, each checked first."""
    if not isinstance(settings, dict) or settings.get('class_name') != ENCODER_CLASS:
        raise UserError(f'{where} names an unknown latent decoder')
    settings = {k: v for k, v in settings.items() if k != 'class_name'}
    unknown = sorted(set(settings) - set(_ENCODER_FIELDS))
    if unknown:
        raise UserError(f'{where}: the latent decoder has unknown settings {", ".join(map(str, unknown))}')
    name = settings.get('vae_name')
    if not isinstance(name, str) or not name or len(name) > 4096 or '\0' in name:
        raise UserError(f'{where}: the latent decoder names no VAE')
    if settings.get('latent_norm', 'scale') not in ('scale', 'channel'):
        raise UserError(f'{where}: the latent decoder\'s latent_norm is not scale or channel')
    scale = settings.get('scale', encoders.SD_SCALE)
    if not _finite_number(scale) or scale <= 0:
        raise UserError(f'{where}: the latent decoder\'s scale is not a positive number')
    for key in ('channel_mean', 'channel_std'):
        values = settings.get(key)
        if values is not None and (not isinstance(values, list) or len(values) != encoders.LATENT_CHANNELS
                                   or not all(_finite_number(v) for v in values) or key == 'channel_std' and min(values) <= 0):
            raise UserError(f'{where}: the latent decoder\'s {key} is not {encoders.LATENT_CHANNELS} finite numbers'
                            f'{" above zero" if key == "channel_std" else ""}')
    if settings.get('latent_norm') == 'channel' and (settings.get('channel_mean') is None or settings.get('channel_std') is None):
        raise UserError(f'{where}: the latent decoder normalises per channel but records no channel_mean/channel_std')
    return encoders.StabilityVAEEncoder(**settings)


def _finite_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_file_vae(decoder, url, vae):
    """Sets the VAE of a latent network's `decoder`: `vae` from the caller (`--vae` on the command
    line) where given, else the one the network file names, used only if it is a local folder; a
    hub id in a file needs `vae`, so that a file never makes the program download anything."""
    if decoder is not None:
        decoder.vae_name = encoders.check_vae_name(vae) if vae is not None else \
            encoders.recorded_vae(decoder.vae_name, 'network', f'"{url}"')

# ----------------------------------------------------------------------------------------------
# safetensors.


def safetensors_path(url):
    """The `.safetensors` name of a network file (the same name with the other suffix)."""
    return re.sub(r'\.pkl$', '', url) + '.safetensors'


def describe(net):
    """(class name in training.networks, init_args, init_kwargs) of one of our classes that
    computes what `net` (ours, EDM's or the original release's, possibly adapted) computes."""
    net = unwrap(net)
    name = type(net).__name__
    kwargs = getattr(net, 'init_kwargs', None)
    if kwargs is None:
        raise UserError(f'the {name} network records no constructor arguments, so it cannot be rebuilt')
    release = 'x_pos' in inspect.signature(net.forward).parameters
    return _counterpart(name, getattr(net, 'init_args', []), kwargs, release,
                        getattr(net, 'img_channels', None), getattr(net, 'out_channels', None))


def save_safetensors(path, net, encoder=None, snapshot_id=None):
    """Writes the weights of `net` and, as JSON metadata, its class and constructor arguments
    (and the latent decoder's settings, and the id of the snapshot pair), atomically."""
    from safetensors.torch import save
    class_name, args, kwargs = describe(net)
    meta = dict(class_name=class_name, init_args=args, init_kwargs=kwargs)
    if encoder is not None:
        meta['encoder'] = dict(class_name=ENCODER_CLASS, vae_name=encoder.vae_name, latent_norm=encoder.latent_norm,
                               scale=encoder.scale, channel_mean=encoder.channel_mean, channel_std=encoder.channel_std)
    if snapshot_id is not None:
        meta[SNAPSHOT_ID_KEY] = snapshot_id
    tensors = {name: t.detach().cpu().contiguous() for name, t in unwrap(net).state_dict().items()}
    blob = save(tensors, metadata={METADATA_KEY: json.dumps(meta)})
    with atomic_write(path, 'wb') as f:
        f.write(blob)


def save_snapshot_pair(path, data):
    """Writes the snapshot dict `data` as the pickle `path` and its EMA network as the
    `.safetensors` beside it, both carrying one new random id: a kill between the two writes
    leaves a pair whose ids differ, which `load_safetensors` refuses instead of serving old weights."""
    snapshot_id = secrets.token_hex(16)
    with atomic_write(path, 'wb') as f:
        pickle.dump(dict(data, **{SNAPSHOT_ID_KEY: snapshot_id}), f)
    save_safetensors(safetensors_path(path), data['ema'], data.get('encoder'), snapshot_id=snapshot_id)


def _read_safetensors_metadata(data):
    """The JSON header's `__metadata__` of a safetensors file (its first 8 bytes give the length)."""
    (length,) = struct.unpack('<Q', data[:8])
    if length > len(data) - 8:
        raise ValueError('the header runs past the end of the file (truncated?)')
    header = json.loads(data[8:8 + length])
    return json.loads(header.get('__metadata__', {}).get(METADATA_KEY, 'null'))


def is_our_safetensors(path):
    """True for a local `.safetensors` file whose header holds this project's network metadata
    (only the header is read)."""
    try:
        with open(path, 'rb') as f:
            head = f.read(8)
            (length,) = struct.unpack('<Q', head)
            if length > 100 * 2**20:
                return False
            header = json.loads(f.read(length))
        return isinstance(json.loads(header['__metadata__'][METADATA_KEY]), dict)
    except Exception:  # anything unreadable is not ours
        return False


def load_safetensors(url):
    """(network, decoder or None) rebuilt from this project's classes and the weights of a
    `.safetensors` file written by `save_safetensors`; nothing is unpickled. A file of a snapshot
    pair whose pickle beside it carries another id (an interrupted save) is refused."""
    from safetensors.torch import load
    data = read_bytes(url)
    try:
        meta = _read_safetensors_metadata(data)
        tensors = load(data)
    except Exception as err:  # safetensors, struct and json report damage differently
        raise UserError(f'"{url}" is not a readable .safetensors file ({type(err).__name__}: {err})'.replace('\n', ' ')[:400]) from None
    if not isinstance(meta, dict) or meta.get('class_name') not in [f'training.networks.{n}' for n in NETWORK_CLASSES]:
        raise UserError(f'"{url}" does not describe a network of this project (no "{METADATA_KEY}" metadata '
                        f'naming one of {", ".join(NETWORK_CLASSES)}); convert pickles with convert_network.py')
    where = f'"{url}"'
    args, kwargs = meta.get('init_args', []), meta.get('init_kwargs')
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise UserError(f'{where}: the metadata holds no constructor arguments (init_args a list, init_kwargs a dict)')
    decoder = make_decoder(meta['encoder'], f'{where}: the "encoder" entry') if meta.get('encoder') is not None else None
    _check_pair(url, meta, where)
    return build_network(meta['class_name'], args, kwargs, tensors, where), decoder


def _check_pair(url, meta, where):
    """Refuses a snapshot's `.safetensors` whose `.pkl` beside it was written by another save."""
    pickle_path = re.sub(r'\.safetensors$', '', url) + '.pkl'
    if SNAPSHOT_ID_KEY not in meta or re.match(r'^[a-z][a-z0-9+.-]*://', url) or not os.path.isfile(pickle_path):
        return
    if snapshot_id_of_pickle(pickle_path) != meta[SNAPSHOT_ID_KEY]:
        raise UserError(f'{where} and "{pickle_path}" beside it come from different saves (one was interrupted); '
                        f'load "{pickle_path}" instead')

# ----------------------------------------------------------------------------------------------
# Entry points.


def load_network(url, field='network', trust=False):
    """(network with this project's sampling interface, latent decoder or None) from any file
    the module docstring lists; a pickle runs code from the file only with `trust`. Every problem
    with the file is a one-line FieldError of `field`, the argument that named the file."""
    with dnnlib.util.field_of(field):
        net, decoder = load_safetensors(url) if url.endswith('.safetensors') else _unpickle_network(url, trust)
    return for_sampling(net), decoder


def check_transfer(url, net, field, trust=False):
    """Loads the network file `url` (no code runs from it unless `trust`) and checks that its
    weights fit `net` (which may live on the meta device) as `transfer_weights` would copy them,
    so that --transfer fails before a run folder is made; a problem is a FieldError of `field`."""
    source, _decoder = load_network(url, field, trust)
    _transfer_pairs(source, net, field)


def _transfer_pairs(source, net, field):
    """[(tensor of `net`, tensor of `source`)] of every parameter and buffer of `net` that `source`
    has by name, each of the same shape or of a convolution reading the network input that has
    `net.coord_channels` more input channels; any other shape is a FieldError of `field`."""
    src = dict(unwrap(source).named_parameters())
    src.update(unwrap(source).named_buffers())
    extra = getattr(net, 'coord_channels', 0)
    pairs = []
    for name, tensor in list(net.named_parameters()) + list(net.named_buffers()):
        if name not in src:
            continue
        value = src[name]
        widened = (extra and value.ndim == 4 and value.shape[1] + extra == tensor.shape[1]
                   and value.shape[0] == tensor.shape[0] and value.shape[2:] == tensor.shape[2:])
        if value.shape != tensor.shape and not widened:
            raise FieldError(field, f'"{name}" has shape {tuple(value.shape)} in the source network but '
                            f'{tuple(tensor.shape)} here (use the architecture options it was trained with)')
        pairs.append((tensor, value))
    return pairs


def transfer_weights(source, net, field='resume_pkl'):
    """Copies the parameters and buffers of `source` into `net` by name. A convolution that reads
    the network input and has `net.coord_channels` more input channels than the source's (a patch
    model initialised from a plain EDM model) gets zero weights for the coordinate channels, so
    `net` computes exactly what `source` did. Any other shape mismatch is a FieldError of `field`."""
    with torch.no_grad():
        for tensor, value in _transfer_pairs(source, net, field):
            value = value.to(tensor.device, tensor.dtype)
            if value.shape == tensor.shape:
                tensor.copy_(value)
            else:
                tensor.zero_()
                tensor[:, :value.shape[1]].copy_(value)
