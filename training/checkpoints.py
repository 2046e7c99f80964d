"""Network files in, networks out: the one loader of generate.py, train.py --transfer and the benches.

Accepted files, told apart by what they hold:
- this project's snapshots: a pickle of {'ema': network, 'encoder': latent decoder (latent runs), ...};
- EDM's pickles (same dict layout), whose networks take `net(x, sigma_tensor, class_labels, ...)`;
- the original Patch Diffusion release's pickles, whose networks take
  `net(x, sigma, x_pos=coordinate channels, class_labels=...)`, count the coordinate channels in
  `img_channels` and the data channels in `out_channels`;
- `.safetensors` files (`save_safetensors`: weights plus the class name and constructor arguments
  as JSON metadata), rebuilt from this project's own classes without unpickling anything.
Foreign networks are wrapped in `ForeignNetwork`, so the samplers see one interface.

Unpickling runs code from the file. A pickle that would import anything is announced with one
line unless it lies in a train.py run folder (next to `training_options.json`), and a
`.safetensors` file beside a pickle is read instead of it.
"""

import inspect
import json
import os
import pickle
import pickletools
import re
import struct

import torch

import dnnlib
from dnnlib.util import UserError, atomic_write
from torch_utils import distributed as dist
from training import patch

NETWORK_CLASSES = ('EDMPrecond', 'VPPrecond', 'VEPrecond', 'iDDPMPrecond')  # in training.networks
ENCODER_CLASS = 'training.encoders.StabilityVAEEncoder'
METADATA_KEY = 'patch_diffusion_network'
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


def for_sampling(net):
    """`net` itself if it is one of ours, else wrapped in `ForeignNetwork`."""
    return net if is_ours(net) else ForeignNetwork(net)


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


def read_bytes(url, option):
    """The whole file at a path or URL; a missing or unreadable one is a one-line UserError."""
    try:
        with dnnlib.util.open_url(url) as f:
            return f.read()
    except (OSError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise UserError(f'{option}: cannot open "{url}": {reason}') from None


def read_pickle(url, option):
    """The bytes of the network pickle at a path or URL, checked without unpickling: a
    missing file, a text file, a truncated or damaged pickle, or a pickle of plain data (which can
    hold no network) is a one-line UserError naming `option`."""
    data = read_bytes(url, option)
    try:
        opcodes = {op.name for op, _arg, _pos in pickletools.genops(data)}
    except Exception as err:  # genops reports damage as ValueError, struct or unicode errors
        raise UserError(f'{option}: "{url}" is not a network pickle: {_describe_bad_pickle(data, err)}') from None
    if not opcodes & _CODE_OPCODES:
        try:
            held = type(pickle.loads(data)).__name__  # plain data: safe to load
        except Exception as err:  # opcodes that parse but do not make a valid pickle (e.g. some text)
            raise UserError(f'{option}: "{url}" is not a network pickle: {_describe_bad_pickle(data, err)}') from None
        raise UserError(f'{option}: "{url}" is a pickle of a {held}, not a network snapshot (a dict with an "ema" network)')
    return data


def in_run_folder(url):
    """True for a local file in a folder that train.py made (it holds `training_options.json`)."""
    if re.match(r'^[a-z][a-z0-9+.-]*://', url):
        return False
    return os.path.isfile(os.path.join(os.path.dirname(os.path.abspath(url)), 'training_options.json'))


def unpickle_network(url, option):
    """(network, decoder or None) from a pickle, announcing first that a file from outside a run
    folder runs code when loaded."""
    data = read_pickle(url, option)
    if not in_run_folder(url):
        dist.print0(f'{option}: "{url}" is a pickle, which runs code when loaded; load only files you trust '
                    f'(a .safetensors file does not; see convert_network.py)')
    try:
        obj = pickle.loads(data)
    except Exception as err:  # foreign code can fail in any way while unpickling
        raise UserError(f'{option}: "{url}" is not a readable network pickle ({type(err).__name__}: {err})'.replace('\n', ' ')) from None
    net = obj.get('ema') if isinstance(obj, dict) else None
    if not isinstance(net, torch.nn.Module) or not all(hasattr(net, a) for a in ('img_resolution', 'img_channels', 'label_dim')):
        raise UserError(f'{option}: "{url}" is a pickle but not a network snapshot (no "ema" network in it)')
    decoder = obj.get('encoder')
    if decoder is not None and not hasattr(decoder, 'decode'):
        raise UserError(f'{option}: the "encoder" in "{url}" has no decode() method')
    return net, decoder

# ----------------------------------------------------------------------------------------------
# safetensors.


def safetensors_path(url):
    """The `.safetensors` name of a network file (the same name with the other suffix)."""
    return re.sub(r'\.pkl$', '', url) + '.safetensors'


def network_source(url):
    """The file `load_network(url)` reads: the `.safetensors` file beside a local pickle if there is one."""
    if url.endswith('.pkl') and os.path.isfile(safetensors_path(url)):
        return safetensors_path(url)
    return url


def describe(net):
    """(class name in training.networks, init_args, init_kwargs) of one of our classes that
    computes what `net` (ours, EDM's or the original release's, possibly adapted) computes."""
    net = unwrap(net)
    name = type(net).__name__
    kwargs = getattr(net, 'init_kwargs', None)
    if kwargs is None:
        raise UserError(f'the {name} network records no constructor arguments, so it cannot be rebuilt')
    args, kwargs = list(getattr(net, 'init_args', [])), dict(kwargs)
    if 'x_pos' in inspect.signature(net.forward).parameters:  # the original release
        name = name.removeprefix('Patch_')
        coord_channels = net.img_channels - net.out_channels
        kwargs.update(img_channels=net.out_channels, use_coords=True, pos_embed=coord_channels // 4 if coord_channels != 2 else 0)
        kwargs.pop('out_channels', None)
    if name not in NETWORK_CLASSES:
        raise UserError(f'the network class {name} has no counterpart in training/networks.py ({", ".join(NETWORK_CLASSES)})')
    return f'training.networks.{name}', args, kwargs


def save_safetensors(path, net, encoder=None):
    """Writes the weights of `net` and, as JSON metadata, its class and constructor arguments
    (and the latent decoder's settings), atomically."""
    from safetensors.torch import save
    class_name, args, kwargs = describe(net)
    meta = dict(class_name=class_name, init_args=args, init_kwargs=kwargs)
    if encoder is not None:
        meta['encoder'] = dict(class_name=ENCODER_CLASS, vae_name=encoder.vae_name, latent_norm=encoder.latent_norm,
                               scale=encoder.scale, channel_mean=encoder.channel_mean, channel_std=encoder.channel_std)
    tensors = {name: t.detach().cpu().contiguous() for name, t in unwrap(net).state_dict().items()}
    blob = save(tensors, metadata={METADATA_KEY: json.dumps(meta)})
    with atomic_write(path, 'wb') as f:
        f.write(blob)


def _read_safetensors_metadata(data):
    """The JSON header's `__metadata__` of a safetensors file (its first 8 bytes give the length)."""
    (length,) = struct.unpack('<Q', data[:8])
    if length > len(data) - 8:
        raise ValueError('the header runs past the end of the file (truncated?)')
    header = json.loads(data[8:8 + length])
    return json.loads(header.get('__metadata__', {}).get(METADATA_KEY, 'null'))


def load_safetensors(url, option):
    """(network, decoder or None) rebuilt from this project's classes and the weights of a
    `.safetensors` file written by `save_safetensors`; nothing is unpickled."""
    from safetensors.torch import load
    data = read_bytes(url, option)
    try:
        meta = _read_safetensors_metadata(data)
        tensors = load(data)
    except Exception as err:  # safetensors, struct and json report damage differently
        raise UserError(f'{option}: "{url}" is not a readable .safetensors file ({type(err).__name__}: {err})'.replace('\n', ' ')) from None
    if not isinstance(meta, dict) or meta.get('class_name') not in [f'training.networks.{n}' for n in NETWORK_CLASSES]:
        raise UserError(f'{option}: "{url}" does not describe a network of this project (no "{METADATA_KEY}" metadata '
                        f'naming one of {", ".join(NETWORK_CLASSES)}); convert pickles with convert_network.py')
    try:
        net = dnnlib.util.construct_class_by_name(*meta.get('init_args', []), class_name=meta['class_name'], **meta['init_kwargs'])
        net.load_state_dict(tensors)
    except Exception as err:  # wrong arguments or weights for the class
        raise UserError(f'{option}: "{url}": the weights do not fit {meta["class_name"]} ({type(err).__name__}: {err})'.replace('\n', ' ')[:400]) from None
    decoder = None
    if meta.get('encoder') is not None:
        settings = dict(meta['encoder'])
        if settings.pop('class_name') != ENCODER_CLASS:
            raise UserError(f'{option}: "{url}" names an unknown latent decoder')
        decoder = dnnlib.util.construct_class_by_name(class_name=ENCODER_CLASS, **settings)
    return net.eval().requires_grad_(False), decoder

# ----------------------------------------------------------------------------------------------
# Entry points.


def load_network(url, option='--network'):
    """(network with this project's sampling interface, latent decoder or None) from any file
    the module docstring lists. Every problem with the file is a one-line UserError naming `option`."""
    source = network_source(url)
    if source.endswith('.safetensors'):
        net, decoder = load_safetensors(source, option)
    else:
        net, decoder = unpickle_network(source, option)
    return for_sampling(net), decoder


def check_network_file(url, option):
    """Validates a network file without loading its network (no code runs): for command lines
    that load it later."""
    source = network_source(url)
    if source.endswith('.safetensors'):
        load_safetensors(source, option)
    else:
        read_pickle(source, option)


def transfer_weights(source, net, option='--transfer'):
    """Copies the parameters and buffers of `source` into `net` by name. A convolution that reads
    the network input and has `net.coord_channels` more input channels than the source's (a patch
    model initialised from a plain EDM model) gets zero weights for the coordinate channels, so
    `net` computes exactly what `source` did. Any other shape mismatch is a UserError."""
    src = dict(unwrap(source).named_parameters())
    src.update(unwrap(source).named_buffers())
    extra = getattr(net, 'coord_channels', 0)
    with torch.no_grad():
        for name, tensor in list(net.named_parameters()) + list(net.named_buffers()):
            if name not in src:
                continue
            value = src[name].to(tensor.device, tensor.dtype)
            if value.shape == tensor.shape:
                tensor.copy_(value)
            elif (extra and value.ndim == 4 and value.shape[1] + extra == tensor.shape[1]
                  and value.shape[0] == tensor.shape[0] and value.shape[2:] == tensor.shape[2:]):
                tensor.zero_()
                tensor[:, :value.shape[1]].copy_(value)
            else:
                raise UserError(f'{option}: "{name}" has shape {tuple(value.shape)} in the source network but '
                                f'{tuple(tensor.shape)} here (use the architecture options it was trained with)')
