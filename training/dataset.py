"""Image data sets in EDM's format: a folder or an uncompressed zip of PNGs plus `dataset.json`.

Layout: `NNNNN/imgNNNNNNNN.png` (any nesting is accepted when reading), and optionally
`dataset.json` holding `{"labels": [["00000/img00000000.png", 6], ...]}` or `{"labels": null}`.
Items are `(uint8 CHW numpy array, float32 label)`; integer labels come out one-hot.

Class and keyword names are EDM's (`training.dataset.ImageFolderDataset(path, resolution,
max_size, use_labels, xflip, random_seed, cache)`), so `dataset_kwargs` in EDM's
`training_options.json` files construct the same data set here.

Subclasses (`ArrayFolderDataset` for float arrays and precomputed latents) override `_load_raw_image` and
`_load_raw_labels`, and may set `item_dtype` and override `_flip`; the base class handles
subsets, flipping, caching and labels.
"""

import io
import json
import math
import os
import struct
import warnings
import zipfile

import numpy as np
import PIL.Image
import torch

from dnnlib.util import FieldError, UserError
from torch_utils.png import PNG_SIGNATURE
from training import file_limits, patch

# Transparent pixels are composited on white: most sources with an alpha channel are icons and
# emoji drawn for a light page (the bundled emoji set was made the same way).
ALPHA_BACKGROUND = 255

# Images with more pixels are refused wherever images are decoded (data sets, dataset_tool.py,
# fid.py): one 8192x8192 RGB image is 200 MB decoded, and a few bytes of PNG can claim far more.
MAX_IMAGE_PIXELS = 8192 * 8192
MAX_CLASSES = 1 << 20  # class labels (and float label lengths) below this
FLOAT32_MAX = float(np.finfo(np.float32).max)

_GREY_MODES = ('1', 'L', 'LA', 'La', 'I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F')


def image_extensions():
    """File extensions (lower case, with the dot) that PIL can decode; used to find images.
    Formats PIL can only write (such as .pdf) are left out."""
    return {ext for ext, fmt in PIL.Image.registered_extensions().items() if fmt in PIL.Image.OPEN}


def is_hidden(name):
    """True for hidden files and macOS zip litter (`.name`, `__MACOSX/`), which are never images
    of a set even when their names say so."""
    return any(part.startswith('.') or part == '__MACOSX' for part in name.replace('\\', '/').split('/'))


def image_names(names):
    """The members among `names` (as `StoredFiles.names()` gives them) that are images, in order."""
    extensions = image_extensions()
    return [n for n in names if os.path.splitext(n)[1].lower() in extensions and not is_hidden(n)]


def mode_channels(mode):
    """Channel count (1 or 3) that an image of PIL mode `mode` becomes: grey kinds give 1,
    everything else (RGB, RGBA, palette, CMYK, YCbCr, ...) gives 3."""
    return 1 if mode in _GREY_MODES else 3


def convert_image(img, channels):
    """Returns `img` as an 8-bit PIL image of mode 'L' (channels=1) or 'RGB' (channels=3).

    Handles what real folders contain: 1-bit, 16- and 32-bit grey (scaled to 0..255, not
    clipped), palette (with or without transparency), CMYK and other colour spaces, and alpha
    (LA, RGBA, ...; composited on `ALPHA_BACKGROUND`). RGB becomes grey by ITU-R 601 luma, grey
    becomes RGB by repeating the channel."""
    assert channels in (1, 3)
    mode = img.mode
    if mode.startswith('I'):  # 16/32-bit integer grey: PNG 16-bit opens as I;16
        arr = np.asarray(img).astype(np.int64)
        arr = (np.clip(arr, 0, 65535) * 255 + 32767) // 65535
        img = PIL.Image.fromarray(arr.astype(np.uint8), 'L')
    elif mode == 'F':
        img = PIL.Image.fromarray(np.clip(np.asarray(img), 0, 255).round().astype(np.uint8), 'L')
    elif mode == '1':
        img = img.convert('L')
    elif mode == 'P':
        img = img.convert('RGBA' if 'transparency' in img.info else 'RGB')
    elif mode == 'PA':
        img = img.convert('RGBA')
    if img.mode in ('LA', 'La', 'RGBA', 'RGBa'):
        base = 'L' if img.mode.startswith('L') else 'RGB'
        if img.mode in ('La', 'RGBa'):  # premultiplied alpha: undo it first
            img = img.convert(base + 'A')
        background = PIL.Image.new(base + 'A', img.size, (ALPHA_BACKGROUND,) * (len(base) + 1))
        img = PIL.Image.alpha_composite(background, img).convert(base)
    target = 'L' if channels == 1 else 'RGB'
    if img.mode != target:
        img = img.convert(target)
    return img


def check_image_pixels(width, height, where):
    """Raises UserError naming `where` when a width x height image exceeds MAX_IMAGE_PIXELS."""
    if width * height > MAX_IMAGE_PIXELS:
        raise UserError(f'{where}: image is {width}x{height}, more than the limit of {MAX_IMAGE_PIXELS:,} pixels '
                        f'(a decompression bomb, or an image to downscale first)')


def open_image(data, where):
    """Opens encoded image bytes as a PIL image (pixels not decoded yet) after checking its size
    against MAX_IMAGE_PIXELS; PIL's own decompression-bomb error gives the same UserError (its
    warning is left out: the size check here says more). Other decoding errors propagate."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', PIL.Image.DecompressionBombWarning)
        try:
            img = PIL.Image.open(io.BytesIO(data))
        except PIL.Image.DecompressionBombError:
            raise UserError(f'{where}: image is larger than the limit of {MAX_IMAGE_PIXELS:,} pixels '
                            f'(a decompression bomb, or an image to downscale first)') from None
    check_image_pixels(*img.size, where)
    return img


def decode_image(data, where, channels=None):
    """Decodes image bytes into a uint8 CHW array with `channels` (1 or 3; None: as the image's
    mode has them); UserError naming `where` for an image above the pixel limit."""
    with open_image(data, where) as img:
        image = np.asarray(convert_image(img, channels or mode_channels(img.mode)), dtype=np.uint8)
    return image[np.newaxis] if image.ndim == 2 else image.transpose(2, 0, 1)


def _json_label(path, name, label):
    """A dataset.json label as the writer stores it: an int class, or a list of floats (a single
    float becomes a one-element list, so the loader's label_shape is [1], not [])."""
    if isinstance(label, int) and not isinstance(label, bool):
        if label < 0:
            raise UserError(f'{path}: dataset.json label of {name} is {label}; class labels must be 0 or more')
        if label >= MAX_CLASSES:
            raise UserError(f'{path}: dataset.json label of {name} is {label}; class labels must be less than {MAX_CLASSES:,} '
                            f'(a one-hot vector of that length goes with every image)')
        return label
    if isinstance(label, float):
        label = [label]
    if isinstance(label, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in label):
        if not all(math.isfinite(v) and abs(v) <= FLOAT32_MAX for v in label) or len(label) > MAX_CLASSES:
            raise UserError(f'{path}: dataset.json label of {name} must be finite float32 numbers, at most {MAX_CLASSES:,} of them')
        return [float(v) for v in label]
    raise UserError(f'{path}: dataset.json label of {name} is {label!r}; expected an int or a list of numbers')


def parse_labels(path, data, names):
    """The labels of `names` in a dataset.json (its bytes): {name: int class or list of floats}, or
    None for `{"labels": null}`; UserError naming `path` when the file is malformed or a name has
    no label."""
    try:
        labels = json.loads(data)['labels']
        if labels is None:
            return None
        labels = {str(k).replace('\\', '/'): v for k, v in labels}
    except (ValueError, KeyError, TypeError, RecursionError) as err:  # RecursionError: arrays nested too deep to parse
        raise UserError(f'{path}: dataset.json is not {{"labels": [[name, label], ...]}} ({err})') from None
    missing = [n for n in names if n not in labels]
    if missing:
        raise UserError(f'{path}: dataset.json has no label for {missing[0]} ({len(missing)} unlabelled)')
    return {n: _json_label(path, n, labels[n]) for n in names}


def label_array(path, labels):
    """Parsed labels, one per item, as the int64 (N,) or float32 (N, K) array `Dataset` takes."""
    try:
        labels = np.array(labels)
    except ValueError:  # class numbers mixed with lists, or lists of different lengths
        labels = np.array([], dtype=object)
    if labels.dtype.kind not in 'iuf':
        raise UserError(f'{path}: dataset.json labels must be all class numbers or all lists of numbers of one length')
    return labels.astype(np.int64 if labels.dtype.kind in 'iu' else np.float32)


def probe_png_header(head):
    """Returns `(width, height, channels)` from the first 26 bytes of a PNG file, or None when
    `head` is not the start of a PNG."""
    if len(head) < 26 or head[:8] != PNG_SIGNATURE or head[12:16] != b'IHDR':
        return None
    width, height = struct.unpack('>II', head[16:24])
    colour_type = head[25]
    return width, height, (1 if colour_type in (0, 4) else 3)


def probe_image(file):
    """Returns `(width, height, channels)` of an image file object without decoding pixels.

    PNG headers are parsed directly (a few bytes), which keeps checking every image of a large
    data set fast; other formats go through PIL's lazy open. Raises OSError for unreadable files."""
    found = probe_png_header(file.read(26))
    if found is not None:
        return found
    file.seek(0)
    with warnings.catch_warnings():  # callers check the size against MAX_IMAGE_PIXELS themselves
        warnings.simplefilter('ignore', PIL.Image.DecompressionBombWarning)
        with PIL.Image.open(file) as img:
            return img.size[0], img.size[1], mode_channels(img.mode)


class Dataset(torch.utils.data.Dataset):
    """Base of all data sets: subset selection, x-flips, labels and an in-memory cache.

    `raw_shape` is [N, C, H, W] of the raw items. Subclasses implement `_load_raw_image(raw_idx)`
    (returning an array of shape `raw_shape[1:]` and dtype `item_dtype`) and
    `_load_raw_labels()` (returning an int64 (N,) or float32 (N, ...) array, or None)."""

    item_dtype = np.uint8

    def __init__(self, name, raw_shape, max_size=None, use_labels=False, xflip=False, random_seed=0, cache=False):
        self._name = name
        self._raw_shape = list(raw_shape)
        self._use_labels = use_labels
        self._cache = cache
        self._cached_images = {}
        self._raw_labels = None
        self._label_shape = None

        # A subset picked by a seeded generator, so every run and every rank sees the same one.
        self._raw_idx = np.arange(self._raw_shape[0], dtype=np.int64)
        if max_size is not None and self._raw_idx.size > max_size:
            rng = np.random.RandomState(random_seed % (1 << 31))
            self._raw_idx = np.sort(rng.permutation(self._raw_idx)[:max_size])

        # x-flips double the set: the second half repeats the first, mirrored.
        self._xflip = np.zeros(self._raw_idx.size, dtype=np.uint8)
        if xflip:
            self._raw_idx = np.tile(self._raw_idx, 2)
            self._xflip = np.concatenate([self._xflip, np.ones_like(self._xflip)])

        if use_labels:
            self._get_raw_labels()  # fail now, not in a DataLoader worker

    def _get_raw_labels(self):
        """Labels of all raw items, loaded once: zeros of shape (N, 0) when labels are off."""
        if self._raw_labels is None:
            labels = self._load_raw_labels() if self._use_labels else None
            if labels is None:
                if self._use_labels:
                    raise UserError(f'{self._where()}: `use_labels`=True but the data set has no labels')
                labels = np.zeros([self._raw_shape[0], 0], dtype=np.float32)
            labels = np.asarray(labels)
            if labels.shape[0] != self._raw_shape[0]:
                raise UserError(f'{self._where()}: {labels.shape[0]} labels for {self._raw_shape[0]} items')
            if labels.dtype.kind in 'iu':
                labels = labels.astype(np.int64)
                if labels.ndim != 1 or (labels.size and labels.min() < 0):
                    raise UserError(f'{self._where()}: integer labels must be class indices >= 0')
            else:
                labels = labels.astype(np.float32)
            self._raw_labels = labels
        return self._raw_labels

    def _where(self):
        """What error messages name: the data set's path where it has one."""
        return self._name

    def close(self):
        """Releases open files; the data set reopens them when read again."""

    def _load_raw_image(self, raw_idx):
        """Returns raw item `raw_idx` as an array of shape `raw_shape[1:]` (CHW)."""
        raise NotImplementedError

    def _load_raw_labels(self):
        """Returns the labels of all raw items, or None when the data set has none."""
        raise NotImplementedError

    def encoder_kwargs(self):
        """The `training.encoders` class that turns items into what the denoiser sees, when the run
        names none: pixels (uint8 images scaled to [-1, 1], float items as they are)."""
        return dict(class_name='training.encoders.PixelEncoder')

    def _flip(self, image):
        """Mirrors a CHW item left to right; a subclass whose items do not flip this way overrides it."""
        return image[:, :, ::-1]

    def __getstate__(self):
        return dict(self.__dict__)

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to release
            pass

    def __len__(self):
        return self._raw_idx.size

    def __getitem__(self, idx):
        raw_idx = int(self._raw_idx[idx])
        image = self._cached_images.get(raw_idx)
        if image is None:
            image = self._load_raw_image(raw_idx)
            if self._cache:
                self._cached_images[raw_idx] = image
        assert isinstance(image, np.ndarray)
        assert list(image.shape) == self.image_shape, (image.shape, self.image_shape)
        assert image.dtype == self.item_dtype
        if self._xflip[idx]:
            image = self._flip(image)
        return image.copy(), self.get_label(idx)

    def get_label(self, idx):
        """Label of item `idx` as float32: one-hot for integer labels, empty when labels are off."""
        label = self._get_raw_labels()[self._raw_idx[idx]]
        if label.dtype == np.int64:
            onehot = np.zeros(self.label_shape, dtype=np.float32)
            onehot[label] = 1
            label = onehot
        return label.copy()

    def get_details(self, idx):
        """Where item `idx` comes from: raw index, whether it is flipped, and its raw label."""
        return dict(raw_idx=int(self._raw_idx[idx]), xflip=bool(self._xflip[idx]),
                    raw_label=self._get_raw_labels()[self._raw_idx[idx]].copy())

    @property
    def name(self):
        return self._name

    @property
    def image_shape(self):
        """[C, H, W] of every item."""
        return list(self._raw_shape[1:])

    @property
    def num_channels(self):
        return self.image_shape[0]

    @property
    def resolution(self):
        """The side of square items (an int, as in EDM), (H, W) for rectangular ones."""
        return patch.as_resolution(self.image_shape[1], self.image_shape[2])

    @property
    def label_shape(self):
        """[label_dim] for class labels (max + 1), the label array's shape for float labels."""
        if self._label_shape is None:
            raw_labels = self._get_raw_labels()
            if raw_labels.dtype == np.int64:
                self._label_shape = [int(raw_labels.max()) + 1 if raw_labels.size else 0]
            else:
                self._label_shape = list(raw_labels.shape[1:])
        return list(self._label_shape)

    @property
    def label_dim(self):
        assert len(self.label_shape) == 1
        return self.label_shape[0]

    @property
    def has_labels(self):
        return any(x != 0 for x in self.label_shape)

    @property
    def has_onehot_labels(self):
        return self._get_raw_labels().dtype == np.int64


def _check_unique_members(path, archive):
    """Raises UserError (closing `archive`) for a zip with two members of one name: readers differ
    in which one they take, so the images or labels it holds would be ambiguous."""
    names, seen = archive.namelist(), set()
    twice = next((n for n in names if n in seen or seen.add(n)), None)
    if twice is not None:
        archive.close()
        raise UserError(f'{path}: holds more than one member named {twice}; which one is meant is ambiguous')


class StoredFiles:
    """The members of a data set stored as a folder or a zip: `type` is 'dir' or 'zip', member
    names are relative and '/'-separated.

    A zip is opened once per process: a handle shared across fork would share its file offset
    between DataLoader workers, so a forked worker opens its own, and a pickled copy (what spawned
    workers receive) carries no handle and opens the zip when first read."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self._zip = None
        self._zip_pid = None
        if os.path.isdir(self.path):
            self.type = 'dir'
        elif os.path.isfile(self.path):
            self.type = 'zip'
            self.zipfile()  # a file that is not a zip fails here, not in a worker
        elif os.path.exists(self.path):
            raise UserError(f'{self.path}: neither a folder nor a zip file')
        else:
            raise UserError(f'{self.path}: no such data set (expected a folder or a .zip)')

    def zipfile(self):
        """The `zipfile.ZipFile` of this process."""
        assert self.type == 'zip'
        if self._zip is None or self._zip_pid != os.getpid():
            try:
                archive = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as err:
                raise UserError(f'{self.path}: not a readable zip file ({err})') from None
            _check_unique_members(self.path, archive)
            self._zip, self._zip_pid = archive, os.getpid()
        return self._zip

    def names(self):
        """Sorted names of all members (files only, at any depth)."""
        if self.type == 'dir':
            return sorted(os.path.relpath(os.path.join(root, fname), start=self.path).replace(os.sep, '/')
                          for root, _dirs, files in os.walk(self.path) for fname in files)
        return sorted(n for n in self.zipfile().namelist() if not n.endswith('/'))

    def open(self, name):
        """Opens member `name` for binary reading; UserError for one that must not be read
        (`file_limits.check_stored_member`)."""
        if self.type == 'dir':
            return open(file_limits.check_stored_member(self, name), 'rb')
        return self.zipfile().open(file_limits.check_stored_member(self, name), 'r')

    def read(self, name):
        """All bytes of member `name`."""
        with self.open(name) as f:
            return f.read()

    def stored_heads(self, size):
        """First `size` bytes of every uncompressed zip member, read straight from the archive:
        much faster than opening each member through `zipfile`, which matters for the
        header check of a million-image zip. Compressed members are left out, and so is every
        member of a folder ({} is returned)."""
        heads = {}
        if self.type != 'zip':
            return heads
        with open(self.path, 'rb') as f:
            for info in self.zipfile().infolist():
                if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:  # stored, not encrypted
                    continue
                f.seek(info.header_offset)
                local = f.read(30)
                if len(local) < 30 or local[:4] != b'PK\x03\x04':
                    continue
                name_len, extra_len = struct.unpack('<HH', local[26:30])
                f.seek(name_len + extra_len, os.SEEK_CUR)
                heads[info.filename] = f.read(min(size, info.file_size))
        return heads

    def close(self):
        """Closes this process's zip handle; the next read reopens it."""
        try:
            if self._zip is not None and self._zip_pid == os.getpid():
                self._zip.close()
        finally:
            self._zip = None
            self._zip_pid = None

    def __getstate__(self):
        return dict(self.__dict__, _zip=None, _zip_pid=None)


class ImageFolderDataset(Dataset):
    """EDM's image data set: a folder or a zip of images (any nesting) plus `dataset.json`.

    Every image is checked when the data set is opened (header only): all must be the same size
    (any width and height), else a `UserError` names the file. Images are decoded to grey when all of them are
    grey and to RGB otherwise. A zip is opened lazily in each process, so the data set works in
    DataLoader workers whether they are forked or spawned."""

    def __init__(self, path, resolution=None, **super_kwargs):
        self._path = os.fspath(path)
        self._files = StoredFiles(self._path)
        self._all_fnames = self._files.names()

        self._image_fnames = image_names(self._all_fnames)
        if not self._image_fnames:
            raise UserError(f'{self._path}: no image files found')

        width, height, channels = self._probe_all()
        raw_shape = [len(self._image_fnames), channels, height, width]
        if resolution is not None and (height, width) != patch.image_hw(resolution):
            raise UserError(f'{self._path}: images are {width}x{height}, not the requested resolution {patch.shape_name(resolution)}')
        name = os.path.splitext(os.path.basename(self._path.rstrip('/\\')))[0]
        super().__init__(name=name, raw_shape=raw_shape, **super_kwargs)
        self.close()  # after the labels are read: reopening a large zip costs seconds

    def _probe_all(self):
        """Reads every image's header: returns the common (width, height) and the channel count,
        and raises a `UserError` naming the first image that is differently sized."""
        size = None
        channels = 1
        heads = self._files.stored_heads(26)
        for fname in self._image_fnames:
            try:
                found = probe_png_header(heads.get(fname, b''))
                if found is None:
                    with self._files.open(fname) as f:
                        found = probe_image(f)
                width, height, chans = found
            except (OSError, SyntaxError, ValueError, zipfile.BadZipFile, PIL.Image.DecompressionBombError) as err:
                raise UserError(f'{self._path}: cannot read {fname} ({err})') from None
            check_image_pixels(width, height, f'{self._path}: {fname}')
            if size is None:
                size = (width, height)
            elif (width, height) != size:
                raise UserError(f'{self._path}: {fname} is {width}x{height}, but {self._image_fnames[0]} is {size[0]}x{size[1]}; all images must be the same size')
            channels = max(channels, chans)
        return size[0], size[1], channels

    def _where(self):
        return self._path

    def close(self):
        self._files.close()

    def _load_raw_image(self, raw_idx):
        fname = self._image_fnames[raw_idx]
        try:
            image = decode_image(self._files.read(fname), f'{self._path}: {fname}', self._raw_shape[1])
        except (OSError, SyntaxError, ValueError) as err:
            raise UserError(f'{self._path}: cannot decode {fname} ({err})') from None
        if list(image.shape) != self._raw_shape[1:]:
            raise UserError(f'{self._path}: {fname} changed size since the data set was opened')
        return image

    def _load_raw_labels(self):
        if 'dataset.json' not in self._all_fnames:
            return None
        try:
            data = self._files.read('dataset.json')
        except (OSError, zipfile.BadZipFile) as err:
            raise UserError(f'{self._path}: cannot read dataset.json ({err})') from None
        labels = parse_labels(self._path, data, self._image_fnames)
        return None if labels is None else label_array(self._path, [labels[f] for f in self._image_fnames])


# ----------------------------------------------------------------------------------------------
# Arrays that PNG cannot hold, and precomputed latents.


def _description(path, key):
    """Entry `key` of the dataset.json of the data set at `path` when it is a dict, else None
    (also for an unreadable set: the image loader then reports the problem)."""
    try:
        files = StoredFiles(path)
        try:
            meta = json.loads(files.read('dataset.json'))
        finally:
            files.close()
    except (UserError, OSError, KeyError, ValueError, RecursionError, zipfile.BadZipFile):
        return None
    info = meta.get(key) if isinstance(meta, dict) else None
    return info if isinstance(info, dict) else None


def latent_info(path):
    """The `latents` description in the dataset.json of the data set at `path` (written by
    `dataset_tool.py --encoder=vae`), or None when it is an image data set (or unreadable: the
    image loader then reports the problem)."""
    return _description(path, 'latents')


def array_info(path):
    """The `arrays` description in the dataset.json of the data set at `path` (written by
    dataset_tool.py for float data or channel counts PNG cannot hold), or None."""
    return _description(path, 'arrays')


class ArrayFolderDataset(Dataset):
    """Float items that PNG cannot hold, as written by dataset_tool.py: EDM's layout with
    `NNNNN/imgNNNNNNNN.npy` members and a description in dataset.json, one of
    - `arrays` (float data or channel counts PNG cannot hold): each member a (C, H, W) float32 array
      already mapped to [-1, 1]; `xflip=True` mirrors them as the base class mirrors images;
    - `latents` (`--encoder=vae`): each member a (K, 8, r, r) float16/float32 array, channels 0-3
      the posterior mean and 4-7 the posterior std of the raw VAE latent of one image (K = 1), and
      of its mirror image too (K = 2, `--xflip` at conversion); items are (8, r, r) and
      `training.encoders` draws a posterior sample from them. `xflip=True` doubles the set with the
      stored latents of the mirrored images (a mirrored latent is not the latent of the mirrored
      image, so latents are never flipped here); a set converted without `--xflip` refuses it.
    Items are float32 arrays."""

    item_dtype = np.float32

    def __init__(self, path, resolution=None, xflip=False, **super_kwargs):
        self._path = os.fspath(path)
        self._kind, self._info = 'latents', latent_info(self._path)
        if self._info is None:
            self._kind, self._info = 'arrays', array_info(self._path)
        if self._info is None:
            raise UserError(f'{self._path}: not a data set of arrays or latents (no "arrays" or "latents" in dataset.json)')
        self._files = StoredFiles(self._path)
        self._fnames = sorted(n for n in self._files.names() if n.endswith('.npy'))
        if not self._fnames:
            raise UserError(f'{self._path}: no .npy {self._kind} found')
        shape = [int(v) for v in self._info['shape']]
        if resolution is not None and tuple(shape[1:]) != patch.image_hw(resolution):
            raise UserError(f'{self._path}: {self._kind} are {shape[2]}x{shape[1]}, not the requested resolution '
                            f'{patch.shape_name(resolution)}')
        self._stored_flips = int(self._info.get('flips', 1)) if self._kind == 'latents' else None
        self._copies = 1
        if xflip and self._stored_flips is not None:
            if self._stored_flips < 2:
                raise FieldError('xflip', f'{self._path} holds no latents of mirrored images; '
                                f'convert it with dataset_tool.py --encoder=vae --xflip')
            self._copies, xflip = 2, False
        name = os.path.splitext(os.path.basename(self._path.rstrip('/\\')))[0]
        super().__init__(name=name, raw_shape=[len(self._fnames) * self._copies] + shape, xflip=xflip, **super_kwargs)
        self.close()

    @property
    def latent_info(self):
        """The `latents` description of dataset.json (VAE, shape, statistics, ...); None for arrays."""
        return dict(self._info) if self._kind == 'latents' else None

    @property
    def latent_stats(self):
        """{'mean': [4], 'std': [4]} of posterior samples of the raw latents over the whole set (latents only)."""
        return self._info.get('stats') if self._kind == 'latents' else None

    def encoder_kwargs(self):
        """Latents are decoded by the VAE that wrote them; arrays are pixels."""
        if self._kind != 'latents':
            return super().encoder_kwargs()
        kwargs = dict(class_name='training.encoders.StabilityVAEEncoder')
        if 'vae' in self._info:
            kwargs['vae_name'] = self._info['vae']
        return kwargs

    def _where(self):
        return self._path

    def close(self):
        self._files.close()

    def _load_raw_image(self, raw_idx):
        """Raw item i < N is member i; for latents with mirrors, item N + i is row 1 of member i."""
        count = len(self._fnames)
        fname = self._fnames[raw_idx % count]
        try:
            array = np.load(io.BytesIO(self._files.read(fname)), allow_pickle=False)
        except (OSError, ValueError) as err:
            raise UserError(f'{self._path}: cannot read {fname} ({err})') from None
        rows = [] if self._stored_flips is None else [self._stored_flips]
        if list(array.shape[len(rows):]) != self._raw_shape[1:] or array.ndim != len(rows) + 3 or \
                (rows and array.shape[0] < self._copies):
            raise UserError(f'{self._path}: {fname} has shape {list(array.shape)}, expected {rows + self._raw_shape[1:]}')
        return np.ascontiguousarray(array[raw_idx // count] if rows else array, dtype=np.float32)

    def _load_raw_labels(self):
        labels = parse_labels(self._path, self._files.read('dataset.json'), self._fnames)
        return None if labels is None else label_array(self._path, [labels[f] for f in self._fnames] * self._copies)


# The class name that training_options.json of earlier runs give for data sets of latents.
LatentFolderDataset = ArrayFolderDataset
