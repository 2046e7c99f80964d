"""Converting image collections into EDM-format data sets, the library behind dataset_tool.py.

Three parts, so that other writers (the one of VAE latents in `training.encoders`) reuse the
first two: `open_source` reads any supported source into a stream of decoded images,
`iterate_images` turns that into processed `(name, HWC uint8 array, label)` items, and
`DatasetWriter` stores items under a temporary name and renames it when complete.
`read_arrays` opens a .npy/.npz by its headers and streams its images (`ArrayImages`), so that
arrays larger than the memory convert; those that PNG cannot hold (float data, other channel
counts) take a side path: `write_array_items` stores their items as float32 .npy files.
"""

import contextlib
import glob
import gzip
import io
import json
import os
import pickle
import re
import shutil
import sys
import tarfile
import zipfile
import zlib

import numpy as np
import PIL.Image
from tqdm import tqdm

import dnnlib
from dnnlib.util import FieldError, UserError
from torch_utils.png import PNG_SIGNATURE
from training import file_limits
from training.dataset import FLOAT32_MAX, MAX_CLASSES, MAX_IMAGE_PIXELS, StoredFiles, convert_image, image_names, open_image, parse_labels, probe_image

TRANSFORMS = ('center-crop', 'center-crop-wide')

# Errors PIL raises for files that are not images or are damaged (truncated, bad CRC, ...).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zipfile.BadZipFile)


class BadImage(Exception):
    """One source item could not be decoded; `iterate_images` skips it or stops with its message."""


# ----------------------------------------------------------------------------------------------
# Sources: each yields (name, decoder, label); decoder() returns a PIL image or raises BadImage.

class Source:
    """A source of images: `len()` items (already limited by max_images) and `channels` (1 or 3,
    what the images naturally have). Iterating gives `(name, decode, label)` where `decode()`
    returns a PIL image or raises `BadImage`, so that a bad file costs only itself; label is an
    int class, a list of floats, or None."""

    def __init__(self, path, items, count, channels):
        self.path = path
        self._items = items
        self._count = count
        self.channels = channels

    def __len__(self):
        return self._count

    def __iter__(self):
        return iter(self._items())


def _decode_bytes(name, data):
    """Decodes an encoded image (PNG, JPEG, WebP, ...) fully, so truncation is found now; one
    above the pixel limit is a bad image too."""
    try:
        img = open_image(data, name)
        img.load()
        return img
    except UserError as err:
        raise BadImage(err.message) from None
    except PIL.UnidentifiedImageError:
        raise BadImage(f'{name}: not an image, or its header is damaged') from None
    except _DECODE_ERRORS as err:
        raise BadImage(f'{name}: unreadable or truncated image ({err})') from None


def _array_to_pil(arr):
    """HW, HW1, HW3 or HW4 uint8 array => PIL image (L, RGB or RGBA)."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    return PIL.Image.fromarray(np.ascontiguousarray(arr))


def _limit(count, max_images):
    return count if max_images is None else min(count, max_images)


def _file_source(path, names, read, labels, max_images, display):
    """A folder or zip: `names` are the image members, `read(name)` returns their bytes and
    `display(name)` how messages name them."""
    names = names[:_limit(len(names), max_images)]
    channels = 1
    for name in names:  # headers only: the default channel count is 3 if any image is colour
        try:
            with io.BytesIO(read(name)) as f:
                channels = max(channels, probe_image(f)[2])
        except _DECODE_ERRORS + (BadImage, PIL.Image.DecompressionBombError):
            pass  # reported properly when the image itself is decoded
        if channels == 3:
            break

    def items():
        for name in names:
            shown = display(name)
            yield shown, (lambda name=name, shown=shown: _decode_bytes(shown, read(name))), labels.get(name) if labels else None
    return Source(path, items, len(names), channels)


def _labels_for(path, names, label_json):
    """Labels of a folder or zip: its dataset.json when there is one, else the index of each
    image's top-level sub-folder among the sorted sub-folder names (two or more, and every
    image inside one), else none. EDM's own NNNNN/ folders are not classes."""
    if label_json is not None:
        return parse_labels(path, label_json, names)
    tops = [n.split('/')[0] if '/' in n else None for n in names]
    classes = sorted(set(tops) - {None})
    if None in tops or len(classes) < 2 or all(re.fullmatch(r'\d{5}', c) for c in classes):
        return None
    index = {c: i for i, c in enumerate(classes)}
    return {n: index[t] for n, t in zip(names, tops)}


def _open_stored(path, max_images):
    """A folder or zip of images at any depth, labelled as `_labels_for` says."""
    files = StoredFiles(path)
    all_names = files.names()
    names = image_names(all_names)
    try:
        label_json = files.read('dataset.json') if 'dataset.json' in all_names else None
    except (zipfile.BadZipFile, OSError) as err:
        raise UserError(f'{path}: cannot read dataset.json ({err})') from None
    labels = _labels_for(path, names, label_json)
    display = (lambda name: os.path.join(path, name)) if files.type == 'dir' else (lambda name: f'{path}: {name}')

    def read(name):
        try:
            return files.read(name)
        except UserError as err:
            raise BadImage(err.message) from None
        except (zipfile.BadZipFile, OSError) as err:
            raise BadImage(f'{display(name)}: unreadable file or damaged zip member ({err})') from None
    return _file_source(path, names, read, labels, max_images, display)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10 batches (dicts of numpy arrays and lists) and nothing that could run
    code: a downloaded pickle is untrusted input."""

    _ALLOWED = {('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
                ('numpy', 'ndarray'), ('numpy', 'dtype'), ('_codecs', 'encode')}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f'refusing to load {module}.{name}')
        if module == 'numpy.core.multiarray':
            module = 'numpy._core.multiarray' if hasattr(np, '_core') else module
        return super().find_class(module, name)


_CIFAR_BATCH_BYTES = 1 << 28  # a data_batch_N pickle holds 10,000 32x32 images: about 30 MB


def _open_cifar10(path, max_images):
    """`cifar-10-python.tar.gz`: the 50,000 training images of data_batch_1..5 with labels."""
    images, labels = [], []
    try:
        with tarfile.open(path, 'r:gz') as tar:
            for batch in range(1, 6):
                info = tar.getmember(f'cifar-10-batches-py/data_batch_{batch}')
                file_limits.check_file_size(info.size, _CIFAR_BATCH_BYTES, f'{path}: {info.name}')
                member = tar.extractfile(info)
                if member is None:
                    raise KeyError(f'data_batch_{batch}')
                data = _NumpyOnlyUnpickler(member, encoding='bytes').load()
                data = {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}
                images.append(np.asarray(data['data'], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
                labels.append(np.asarray(data['labels'], dtype=np.int64))
    except (tarfile.TarError, OSError, EOFError, KeyError, pickle.UnpicklingError, ValueError, AttributeError) as err:
        raise UserError(f'{path}: not a CIFAR-10 python archive ({type(err).__name__}: {err})') from None
    return _array_source(path, np.concatenate(images), np.concatenate(labels), max_images)


def _read_idx(path):
    """Reads an IDX file (MNIST's format, gzip'd or not) into a numpy array. The shape comes from
    the header first: images beyond the pixel limit and arrays larger than the free memory are
    refused, and no more than the declared bytes are ever inflated."""
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: '>i2', 0x0C: '>i4', 0x0D: '>f4', 0x0E: '>f8'}
    opener = gzip.open if path.endswith('.gz') else open
    file_limits.check_regular_file(path)
    try:
        with opener(path, 'rb') as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in dtypes:
                raise ValueError('bad magic number')
            dims = f.read(4 * magic[3])
            if len(dims) != 4 * magic[3]:
                raise ValueError('header cut short')
            shape = tuple(int.from_bytes(dims[4 * i: 4 * i + 4], 'big') for i in range(magic[3]))
            dtype = np.dtype(dtypes[magic[2]])
            if len(shape) == 3 and shape[1] * shape[2] > MAX_IMAGE_PIXELS:
                raise UserError(f'{path}: images are {shape[2]}x{shape[1]}, more than the limit of {MAX_IMAGE_PIXELS:,} pixels')
            nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
            file_limits.check_memory(nbytes, f'{path} (an IDX array of shape {shape})')
            data = f.read(nbytes)
        if len(data) != nbytes:
            raise ValueError(f'{len(data):,} bytes of data where the header declares {nbytes:,}')
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    except (OSError, EOFError, ValueError, zlib.error) as err:
        raise UserError(f'{path}: not a readable IDX file ({err})') from None


def _open_mnist(path, max_images):
    """MNIST-format `*-images-idx3-ubyte[.gz]` (MNIST, Fashion-MNIST, ...), labels from the
    sibling `*-labels-idx1-ubyte[.gz]`; 28x28 digits are zero-padded to 32x32 as in EDM."""
    images = _read_idx(path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise UserError(f'{path}: expected a 3-D uint8 IDX array, got {images.dtype} {images.shape}')
    label_path = path.replace('-images-idx3-ubyte', '-labels-idx1-ubyte')
    labels = None
    if os.path.isfile(label_path):
        labels = _read_idx(label_path).astype(np.int64)
        if labels.shape != images.shape[:1]:
            raise UserError(f'{label_path}: {labels.shape[0]} labels for {images.shape[0]} images')
    if images.shape[1:] == (28, 28):
        images = np.pad(images, [(0, 0), (2, 2), (2, 2)])
    return _array_source(path, images, labels, max_images)


def _open_npz(path, max_images):
    """A numpy .npz whose `images` are uint8 with 1, 3 or 4 channels, with optional `labels`
    ((N,) integers for classes, or (N,) / (N,K) floats), streamed as `read_arrays` reads it."""
    images, labels = read_arrays(path)
    if not is_png_data(images):
        raise UserError(f'{path}: "images" must be uint8 (N,H,W) or (N,H,W,C) with C 1, 3 or 4; got {images.dtype} '
                        f'{images.stored_shape}')
    return _array_source(path, images, labels, max_images)


def _check_label_values(path, labels):
    """UserError for class labels below 0 or from MAX_CLASSES on, and float labels that are not
    finite in float32 (what training reads them as)."""
    if labels is None or not labels.size:
        return
    if labels.dtype.kind in 'iu' and (labels.min() < 0 or labels.max() >= MAX_CLASSES):
        bad = labels.min() if labels.min() < 0 else labels.max()
        raise UserError(f'{path}: "labels" holds {bad}; class labels must be 0 or more and less than {MAX_CLASSES:,}')
    if labels.dtype.kind == 'f' and not (np.isfinite(labels).all() and np.abs(labels).max() <= FLOAT32_MAX):
        raise UserError(f'{path}: "labels" holds NaN, infinite or float32-overflowing values')


# Array data read at once from a .npy or .npz (one item when an item is larger): with one item being
# converted, what a conversion of numpy arrays holds in memory, whatever the size of the array.
STREAM_BYTES = 1 << 24
_READ_BYTES = 1 << 20  # what one read asks for, so that zipfile never joins the pieces of a larger request
_MAX_NPY_HEADER = 1 << 16  # numpy writes headers of a few hundred bytes
_NUMPY_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def _read_npy_header(f):
    """(shape, fortran order, dtype) of the npy header at the start of `f`; its length is checked
    before the header is read."""
    version = np.lib.format.read_magic(f)
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise ValueError(f'npy format version {version[0]}.{version[1]} is not supported')
    size = 2 if version == (1, 0) else 4
    length_field = f.read(size)
    if len(length_field) != size:
        raise ValueError('npy header cut short')
    length = int.from_bytes(length_field, 'little')
    if length > _MAX_NPY_HEADER:
        raise ValueError(f'npy header of {length:,} bytes')
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return read_header(io.BytesIO(length_field + f.read(length)))


class NumpyArray:
    """One array of a .npy file (`member` None) or of an .npz (`member` its `ZipInfo`), known by its
    header: `shape`, `dtype`, `fortran`. A header that declares another size than the file or the
    unpacked zip member has (a truncated file, a zip bomb), and arrays of Python objects, are
    refused when it is opened, before any data is read. `read()` loads the array after checking
    that it fits the free memory; `rows(count)` streams its first rows."""

    def __init__(self, path, member=None):
        self.path = path
        self.member = member
        self.where = path if member is None else f'{path}: "{member.filename[:-4]}"'
        if member is not None:
            file_limits.check_zip_member(member, f'{path}: {member.filename}')
        with self._open() as f:
            self.shape, self.fortran, self.dtype = _read_npy_header(f)
            self._offset = f.tell()
        if self.dtype.hasobject:
            raise UserError(f'{self.where}: holds Python objects, which are never loaded (loading them could run code)')
        self.nbytes = int(np.prod(self.shape, dtype=object)) * self.dtype.itemsize
        size = os.path.getsize(path) if member is None else member.file_size
        if size != self._offset + self.nbytes:
            held = 'the file has' if member is None else 'the zip member unpacks to'
            raise UserError(f'{self.where}: not a readable array: its npy header declares {self._offset + self.nbytes:,} '
                            f'bytes ({self.dtype} {self.shape}), {held} {size:,}')

    @contextlib.contextmanager
    def _open(self):
        """The file object of the array's bytes, from the start of its npy header."""
        if self.member is None:
            with open(self.path, 'rb') as f:
                yield f
        else:
            with zipfile.ZipFile(self.path) as z, z.open(self.member) as f:
                yield f

    def _fill(self, f, buf, done):
        """Fills the uint8 array `buf` with the next bytes of `f`, `done` bytes of data in."""
        view = memoryview(buf)
        pos = 0
        try:
            while pos < len(view):
                piece = f.read(min(_READ_BYTES, len(view) - pos))
                if not piece:
                    raise UserError(f'{self.where}: not a readable array: its data ends after {done + pos:,} of the '
                                    f'{self.nbytes:,} bytes its npy header declares')
                view[pos:pos + len(piece)] = piece
                pos += len(piece)
        except _NUMPY_READ_ERRORS as err:
            raise UserError(f'{self.where}: not a readable array ({err})') from None

    def read(self):
        """The whole array, after checking that it fits the free memory."""
        file_limits.check_memory(self.nbytes, f'{self.where} ({self.dtype} {self.shape})')
        buf = np.empty(self.nbytes, np.uint8)
        with self._open() as f:
            f.seek(self._offset)
            self._fill(f, buf, 0)
        return np.ndarray(self.shape, self.dtype, buffer=buf, order='F' if self.fortran else 'C')

    def rows(self, count):
        """Yields the first `count` entries along axis 0 as consecutive arrays of at most
        STREAM_BYTES each (one entry when an entry is larger), all views of one buffer that the
        next overwrites. Fortran-order arrays, whose entries are not contiguous, are read whole."""
        if self.fortran:
            yield self.read()[:count]
            return
        row_bytes = self.nbytes // self.shape[0]
        step = max(1, STREAM_BYTES // max(row_bytes, 1))
        buf = np.empty(min(step, count) * row_bytes, np.uint8)
        with self._open() as f:
            f.seek(self._offset)
            for start in range(0, count, step):
                part = buf[:min(step, count - start) * row_bytes]
                self._fill(f, part, start * row_bytes)
                yield part.view(self.dtype).reshape((-1,) + tuple(self.shape[1:]))


class ArrayImages:
    """The images of an (N,H,W), (N,H,W,C) or (N,C,H,W) array held in memory or a `NumpyArray`
    streamed from its file: `shape` is (N,H,W,C), `stored_shape` the array's, and `items(count)`
    yields the first `count` images as (H,W,C) arrays of their own. Of (N,A,B,C) the smaller of
    axes 1 and 3 is the channel axis (the last one when equal)."""

    def __init__(self, array):
        self._array = array
        self.stored_shape = stored = tuple(array.shape)
        self.dtype = array.dtype
        self._channels_first = len(stored) == 4 and stored[1] < stored[3]
        if len(stored) == 3:
            self.shape = stored + (1,)
        else:
            self.shape = (stored[0], stored[2], stored[3], stored[1]) if self._channels_first else stored

    def __len__(self):
        return self.shape[0]

    def items(self, count=None):
        """The first `count` (all when None) images as (H,W,C) arrays."""
        count = len(self) if count is None else min(count, len(self))
        chunks = self._array.rows(count) if isinstance(self._array, NumpyArray) else [self._array[:count]]
        for chunk in chunks:
            chunk = chunk.transpose(0, 2, 3, 1) if self._channels_first else chunk.reshape(chunk.shape[:3] + (-1,))
            for item in chunk:
                yield item.copy()


def read_arrays(path):
    """(images, labels) of a .npy (the images alone) or an .npz ('images', optional 'labels'): an
    `ArrayImages` read from the file as it is iterated, so that arrays larger than the memory
    convert with the usual peak, and the (N[,K]) labels loaded whole, or None. Shapes, types and
    sizes come from the npy headers and are checked before any data is read."""
    file_limits.check_regular_file(path)
    try:
        if path.lower().endswith('.npy'):
            images, labels = NumpyArray(path), None
        else:
            with zipfile.ZipFile(path) as z:
                members = {info.filename[:-4]: info for info in z.infolist() if info.filename.endswith('.npy')}
            if 'images' not in members:
                raise UserError(f'{path}: no "images" array (found: {", ".join(members) or "nothing"})')
            images = NumpyArray(path, members['images'])
            labels = NumpyArray(path, members['labels']) if 'labels' in members else None
        _check_array_shape(path, images.shape)
        if images.dtype.kind not in 'uif':
            raise UserError(f'{path}: images must be numbers; got {images.dtype}')
        if labels is not None:
            if labels.shape[:1] != images.shape[:1] or labels.dtype.kind not in 'iuf' or len(labels.shape) > 2:
                raise UserError(f'{path}: "labels" must be (N,) or (N,K) numbers for the {images.shape[0]} images; '
                                f'got {labels.dtype} {labels.shape}')
            labels = labels.read()
    except _NUMPY_READ_ERRORS as err:
        raise UserError(f'{path}: not a readable numpy file ({err})') from None
    _check_label_values(path, labels)
    return ArrayImages(images), labels


def _check_array_shape(path, shape):
    """Raises a UserError for shapes other than (N,H,W), (N,H,W,C), (N,C,H,W) or beyond the pixel limit."""
    if len(shape) not in (3, 4) or min(shape) < 1:
        raise UserError(f'{path}: images must have shape (N,H,W), (N,H,W,C) or (N,C,H,W); got {tuple(shape)}')
    height, width = shape[1:3] if len(shape) == 3 or shape[1] >= shape[3] else shape[2:4]
    if height * width > MAX_IMAGE_PIXELS:
        raise UserError(f'{path}: images are {width}x{height}, more than the limit of {MAX_IMAGE_PIXELS:,} pixels')


def is_png_data(images):
    """True for uint8 images with 1, 3 or 4 channels, which go through the PNG path."""
    return images.dtype == np.uint8 and images.shape[3] in (1, 3, 4)


def parse_range(text, images):
    """(lo, hi) of `--range=LO,HI` for non-PNG arrays: needed for anything but uint8, whose range
    is (0, 255) without it."""
    if text is None:
        if images.dtype != np.uint8:
            raise FieldError('value_range', f'{images.dtype} data needs its value range, e.g. `value_range`=-1,1 '
                                            f'(mapped to [-1, 1] for training)')
        return 0.0, 255.0
    try:
        lo, hi = (float(v) for v in text.split(','))
    except ValueError:
        raise FieldError('value_range', value=text, detail='expected LO,HI, for example -1,1') from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise FieldError('value_range', value=text, detail='LO must be less than HI, both finite')
    return lo, hi


def write_array_items(writer, images, labels, value_range, max_images, source='source'):
    """Stores each (H,W,C) item of the `ArrayImages` `images` as a float32 (C,H,W) `.npy` mapped
    from `value_range` to [-1, 1] (values outside it are kept, not clipped), with its label;
    dataset.json gets an "arrays" description that `training.dataset.ArrayFolderDataset` reads.
    An item with NaN or infinite values (in float32, after the mapping) is a FieldError of
    `source`: training on it would be garbage."""
    lo, hi = value_range
    count = _limit(len(images), max_images)
    label_of = _array_label(labels)
    for i, item in enumerate(tqdm(images.items(count), total=count, unit='img', file=sys.stderr, dynamic_ncols=True)):
        item = (item.astype(np.float64) - lo) / (hi - lo) * 2 - 1
        with np.errstate(over='ignore'):
            if not np.isfinite(item.astype(np.float32)).all():
                raise FieldError('source', value=source, detail=f'item {i} holds NaN or infinite values (in float32, after '
                                 f'mapping `value_range` to [-1, 1])')
        writer.add_array(np.ascontiguousarray(item.transpose(2, 0, 1), dtype=np.float32), label_of(i))
    height, width, channels = images.shape[1:]
    writer.meta['arrays'] = dict(shape=[channels, height, width], dtype='float32', range=[lo, hi],
                                 layout='(C, H, W) float32: the source values mapped from range to [-1, 1]')


def _array_label(labels):
    """label_of(i) for an (N[,K]) label array or None: an int class or a list of floats (label
    shape [K], never [])."""
    def label_of(i):
        if labels is None:
            return None
        if labels.dtype.kind in 'iu':
            return int(labels[i])
        return np.atleast_1d(np.asarray(labels[i], dtype=np.float64)).tolist()
    return label_of


def _array_source(path, images, labels, max_images):
    """Images of an `ArrayImages` or of an (N,H,W[,C]) uint8 array in memory, labels in an (N[,K])
    array or None. The items are read in order as they are iterated."""
    if isinstance(images, np.ndarray):
        images = ArrayImages(images)
    if labels is not None and len(labels) != len(images):
        raise UserError(f'{path}: holds {len(labels):,} labels for {len(images):,} images; every image needs one')
    count = _limit(len(images), max_images)
    channels = 1 if images.shape[3] == 1 else 3
    label_of = _array_label(labels)

    def items():
        for i, item in enumerate(images.items(count)):
            yield f'{path}[{i}]', (lambda item=item: _array_to_pil(item)), label_of(i)
    return Source(path, items, count, channels)


def _open_lsun(path, max_images):
    """An LSUN `*_lmdb` folder: encoded images (WebP/JPEG) as the values of an LMDB database."""
    try:
        import lmdb
    except ImportError:
        raise UserError(f'{path}: reading LSUN *_lmdb folders needs the optional "lmdb" package (pip install lmdb)') from None
    try:
        env = lmdb.open(path, readonly=True, lock=False, readahead=False, max_readers=1, subdir=True)
        count = env.stat()['entries']
    except lmdb.Error as err:
        raise UserError(f'{path}: not a readable LMDB database ({err})') from None
    count = _limit(count, max_images)

    def items():
        with env.begin(write=False) as txn:
            for i, (key, value) in enumerate(txn.cursor()):
                if i >= count:
                    break
                name = f'{path}: {key.decode(errors="replace")}'
                yield name, (lambda name=name, value=value: _decode_bytes(name, value)), None
    return Source(path, items, count, 3)


def open_source(source, max_images=None):
    """Opens `source` by its name (a folder, `*_lmdb` folder, `.zip`, `cifar-10-python.tar.gz`,
    `*-images-idx3-ubyte[.gz]`, `.npz`) and returns a `Source`; raises `UserError` otherwise."""
    source = os.fspath(source)
    base = os.path.basename(source.rstrip('/\\'))
    if os.path.isdir(source):
        return _open_lsun(source, max_images) if base.endswith('_lmdb') else _open_stored(source, max_images)
    if not os.path.exists(source):
        raise FieldError('source', value=source, detail='no such file or folder')
    with dnnlib.util.field_of('source'):
        file_limits.check_regular_file(source)
    if base == 'cifar-10-python.tar.gz':
        return _open_cifar10(source, max_images)
    if re.search(r'-images-idx3-ubyte(\.gz)?$', base):
        return _open_mnist(source, max_images)
    if base.lower().endswith('.zip'):
        return _open_stored(source, max_images)
    if base.lower().endswith('.npz'):
        return _open_npz(source, max_images)
    raise FieldError('source', value=source, detail='unknown kind of source (expected a folder, .zip, .npz, '
                    'cifar-10-python.tar.gz, *-images-idx3-ubyte.gz or an LSUN *_lmdb folder)')


# ----------------------------------------------------------------------------------------------
# Processing: transform, resize and channel conversion.

def parse_resolution(text):
    """'WxH', 'W,H' or 'N' => (W, H); None stays None."""
    if text is None:
        return None
    m = re.fullmatch(r'\s*(\d+)\s*(?:[x,]\s*(\d+)\s*)?', text)
    if not m or int(m.group(1)) < 1 or (m.group(2) is not None and int(m.group(2)) < 1):
        raise FieldError('resolution', value=text, detail='expected WxH, for example 32x32')
    width = int(m.group(1))
    height = int(m.group(2) or width)
    if max(width, height) ** 2 > MAX_IMAGE_PIXELS:  # center-crop-wide makes WxW images
        raise FieldError('resolution', value=text, detail=f'more than the limit of {MAX_IMAGE_PIXELS:,} pixels per image')
    return width, height


def _resize(img, size):
    return img if img.size == size else img.resize(size, PIL.Image.LANCZOS)


def _center_crop(img, out_w, out_h):
    """The largest centred region of `img` with the aspect out_w:out_h."""
    width, height = img.size
    crop_w, crop_h = width, round(width * out_h / out_w)
    if crop_h > height:  # wider than the target: crop the width instead
        crop_h, crop_w = height, round(height * out_w / out_h)
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return img.crop((left, top, left + crop_w, top + crop_h))


def transform_image(img, transform, resolution):
    """Applies `transform` (None, 'center-crop', 'center-crop-wide') to a PIL image.

    None resizes to `resolution` (W, H) when given. 'center-crop' crops the centre to the aspect
    W:H (the centred square of the shorter side for square outputs), then resizes.
    'center-crop-wide' does the same and pastes the result into the middle of a black WxW canvas."""
    if transform is None:
        return img if resolution is None else _resize(img, resolution)
    img = _resize(_center_crop(img, *resolution), resolution)
    if transform == 'center-crop':
        return img
    assert transform == 'center-crop-wide'
    out_w, out_h = resolution
    canvas = PIL.Image.new(img.mode, (out_w, out_w))
    canvas.paste(img, (0, (out_w - out_h) // 2))
    return canvas


class ImageStream:
    """What `iterate_images` returns: iterate for `(name, HWC uint8 array, label)`; `len()` is
    the number of items expected (fewer come when bad images are skipped). `output_size` is the
    (W, H) of the images produced (known up front when a resolution was given, else after the
    first image), and after iteration `skipped` lists the messages of skipped images."""

    def __init__(self, source, transform, resolution, channels, skip_bad):
        self.source = source
        self.transform = transform
        self.resolution = resolution
        self.channels = channels
        self.skip_bad = skip_bad
        self.skipped = []
        self.output_size = None
        if resolution is not None:  # center-crop-wide pads WxH to a WxW square
            self.output_size = (resolution[0], resolution[0]) if transform == 'center-crop-wide' else resolution

    def __len__(self):
        return len(self.source)

    def __iter__(self):
        for name, decode, label in self.source:
            try:
                img = decode()
            except BadImage as err:
                if not self.skip_bad:
                    raise UserError(f'{err} (pass `skip_bad` to skip such images)') from None
                self.skipped.append(str(err))
                tqdm.write(f'skipped {err}', file=sys.stderr)
                continue
            img = transform_image(convert_image(img, self.channels), self.transform, self.resolution)
            if self.output_size is None:
                self.output_size = img.size
            elif img.size != self.output_size:
                raise UserError(f'{name}: image is {img.size[0]}x{img.size[1]}, but earlier images are '
                                f'{self.output_size[0]}x{self.output_size[1]}; give `resolution`=WxH to resize all of them')
            arr = np.asarray(img, dtype=np.uint8)
            yield name, (arr[:, :, np.newaxis] if arr.ndim == 2 else arr), label


def iterate_images(source, max_images=None, transform=None, resolution=None, channels=None, skip_bad=False):
    """The reusable front half of dataset_tool: opens `source` (path or `Source`) and returns an
    `ImageStream` of `(name, HWC uint8 array with C = channels, label)` after `transform` and
    resizing. `resolution` is (W, H) or 'WxH'; `channels` 1 or 3 (None: the source's); label is
    an int class, a list of floats, or None. Options are checked here and raise `UserError`."""
    if transform is not None and transform not in TRANSFORMS:
        raise FieldError('transform', value=transform, detail=f'unknown transform; use {" or ".join(TRANSFORMS)}')
    if isinstance(resolution, str):
        resolution = parse_resolution(resolution)
    if channels is not None and channels not in (1, 3):
        raise FieldError('channels', value=channels, detail='must be 1 or 3')
    if transform is not None and resolution is None:
        raise FieldError('transform', value=transform, detail='needs `resolution`=WxH')
    if resolution is not None and transform == 'center-crop-wide' and resolution[1] > resolution[0]:
        raise FieldError('resolution', value=f'{resolution[0]}x{resolution[1]}', detail='center-crop-wide needs width >= height')
    if not isinstance(source, Source):
        source = open_source(source, max_images)
    if len(source) == 0:
        raise FieldError('source', value=source.path, detail='no images found')
    return ImageStream(source, transform, resolution, channels or source.channels, skip_bad)


# ----------------------------------------------------------------------------------------------
# Output: a zip or folder written under a temporary name and renamed when complete.

def _is_replaceable_dataset(path):
    """True when `path` holds only a data set as this tool writes it, judged by contents at every
    depth: a dataset.json as this tool writes it (see `_has_member_contents`), and otherwise only
    NNNNN/imgNNNNNNNN.png or .npy files that begin as PNGs and npy arrays do (as a zip, or a folder
    without links or other files). --overwrite may replace those, never a folder holding anything
    else, such as '12345/thesis.tex' or '.'."""
    if os.path.islink(path):
        return False
    if os.path.isfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                members = {info.filename: info for info in z.infolist()}
                if not ('dataset.json' in members and all(_is_dataset_member(n) for n in members)):
                    return False
                return all(_has_member_contents(name, lambda name=name: _zip_head(z, members[name]))
                           for name in members if not name.endswith('/'))
        except (zipfile.BadZipFile, OSError, UserError):
            return False
    if not os.path.isdir(path):
        return False
    names = []
    for root, dirs, files in os.walk(path):
        for entry in dirs + files:
            full = os.path.join(root, entry)
            if os.path.islink(full) or not (os.path.isdir(full) or os.path.isfile(full)):
                return False
        names += [os.path.relpath(os.path.join(root, f), path).replace(os.sep, '/') for f in files]
        names += [os.path.relpath(os.path.join(root, d), path).replace(os.sep, '/') + '/' for d in dirs]
    if not names:
        return True
    if 'dataset.json' not in names or not all(_is_dataset_member(n) for n in names):
        return False
    return all(_has_member_contents(n, lambda n=n: _file_head(os.path.join(path, *n.split('/')), n)) for n in names
               if not n.endswith('/'))


_JSON_HEAD = 1 << 20  # dataset.json is parsed whole only up to this size; larger ones are judged by their start


def _zip_head(z, info):
    """The first bytes of a zip member (all of a small dataset.json), to recognise what it is."""
    file_limits.check_zip_member(info, info.filename)
    with z.open(info) as f:
        return f.read(_JSON_HEAD if info.filename == 'dataset.json' else 8)


def _file_head(full, name):
    """The first bytes of a file of a data-set folder (all of a small dataset.json)."""
    with open(full, 'rb') as f:
        return f.read(_JSON_HEAD if name == 'dataset.json' else 8)


_DATASET_JSON_KEYS = {'labels', 'arrays', 'latents'}  # all that `DatasetWriter` puts in dataset.json


def _has_member_contents(name, read_head):
    """True when member `name` begins as this tool writes it: for dataset.json a JSON object with
    "labels" and no keys this tool does not write (a project's own dataset.json is not a data
    set), a PNG signature or the npy magic for images and arrays."""
    head = read_head()
    if name == 'dataset.json':
        if len(head) >= _JSON_HEAD:
            return head.lstrip().startswith(b'{"labels"')
        try:
            meta = json.loads(head)
        except (ValueError, RecursionError):
            return False
        return isinstance(meta, dict) and 'labels' in meta and set(meta) <= _DATASET_JSON_KEYS
    return head.startswith(PNG_SIGNATURE if name.endswith('.png') else b'\x93NUMPY')


def _is_dataset_member(name):
    """True for the members (and folders) this tool writes."""
    return name == 'dataset.json' or re.fullmatch(r'\d{5}/(img\d{8}\.(png|npy))?', name) is not None


def _restore_moved_aside(dest):
    """Puts back a data set that a killed run had moved aside to replace `dest` with a folder
    (two renames), or deletes it when the new one is in place; then deletes the temporary files
    that killed runs left beside `dest`."""
    folder, name = os.path.split(os.path.abspath(dest))
    for aside in glob.glob(os.path.join(glob.escape(folder), f'.{glob.escape(name)}.*.old.tmp')):
        pid = re.fullmatch(r'(\d+)\.old\.tmp', aside[len(os.path.join(folder, name)) + 2:])
        if pid is None or dnnlib.util.process_exists(int(pid.group(1))):
            continue
        if not os.path.lexists(dest):
            os.rename(aside, dest)
        else:
            shutil.rmtree(aside)
    dnnlib.util.remove_stale_temps(folder)


def check_dest_apart(source, dest):
    """Raises a FieldError of `dest` when `dest` is `source` or a folder holding it: replacing
    `dest` would delete the data being converted (an overwrite of a data set by itself)."""
    src, dst = os.path.realpath(source), os.path.realpath(dest)
    if os.path.lexists(dest) and (src == dst or src.startswith(dst.rstrip(os.sep) + os.sep)):
        raise FieldError('dest', value=dest, detail=f'{"is" if src == dst else "holds"} the `source` {source}, which replacing '
                         'it would delete; write the converted data set to another name')


class DatasetWriter:
    """Writes a data set to `dest` (a zip when it ends in .zip, else a folder) atomically.

    Use as a context manager: files go to a hidden temporary zip or folder beside `dest`, which
    replaces `dest` only when the block ends without error; on error the temporary output is
    deleted and whatever was at `dest` is untouched. `dest` holding something already is refused
    unless `overwrite`. `add_image` names images `NNNNN/imgNNNNNNNN.png`; `add_file` stores
    any other member (other writers, such as one of latents, use it)."""

    def __init__(self, dest, overwrite=False):
        self.dest = os.fspath(dest).rstrip('/\\') or os.fspath(dest)
        self.is_zip = self.dest.lower().endswith('.zip')
        self.count = 0
        self.labels = []
        self.meta = {}  # further top-level entries of dataset.json (e.g. "latents")
        if self.is_zip:
            dnnlib.util.check_output_file(self.dest, 'dest')
        else:
            dnnlib.util.check_output_dir(self.dest, 'dest')
            dnnlib.util.check_name_lengths(self.dest, 'dest')  # written as a temporary folder first
        _restore_moved_aside(self.dest)
        if os.path.lexists(self.dest):
            empty_dir = os.path.isdir(self.dest) and not os.listdir(self.dest)
            if not empty_dir and not overwrite:
                raise FieldError('dest', value=self.dest, detail='already exists; pass `overwrite` to replace it')
            if not empty_dir and not _is_replaceable_dataset(self.dest):
                raise FieldError('dest', value=self.dest, detail='is not a data set written by this tool; not replacing it')
        self._tmp = None
        self._zip = None

    def __enter__(self):
        parent = os.path.dirname(os.path.abspath(self.dest))
        os.makedirs(parent, exist_ok=True)
        self._tmp = dnnlib.util.temp_path_for(self.dest)
        if self.is_zip:
            self._zip = zipfile.ZipFile(self._tmp, 'x', compression=zipfile.ZIP_STORED)
        else:
            os.mkdir(self._tmp)
        return self

    def add_file(self, name, data):
        """Stores `data` (bytes) as member `name` ('/'-separated) of the data set."""
        if self._zip is not None:
            self._zip.writestr(name, data)
        else:
            path = os.path.join(self._tmp, *name.split('/'))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, 'wb') as f:
                f.write(data)

    def add_array(self, array, label=None):
        """Stores a numpy array as the next item `NNNNN/imgNNNNNNNN.npy`, with its label (or None)."""
        idx = f'{self.count:08d}'
        name = f'{idx[:5]}/img{idx}.npy'
        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=False)
        self.add_file(name, buf.getvalue())
        self.labels.append([name, label])
        self.count += 1
        return name

    def add_image(self, image, label=None):
        """Stores an HWC uint8 image (C = 1 or 3) as the next PNG, with its label (or None)."""
        idx = f'{self.count:08d}'
        name = f'{idx[:5]}/img{idx}.png'
        buf = io.BytesIO()
        _array_to_pil(image).save(buf, format='png', compress_level=6)
        self.add_file(name, buf.getvalue())
        self.labels.append([name, label])
        self.count += 1
        return name

    def _write_labels(self):
        """dataset.json: `{"labels": [[name, label], ...]}`, or `{"labels": null}` if unlabelled."""
        has = [label is not None for _name, label in self.labels]
        if any(has) and not all(has):
            raise FieldError('dest', value=self.dest, detail='some images have labels and some do not')
        labels = self.labels if self.labels and all(has) else None
        self.add_file('dataset.json', json.dumps({'labels': labels, **self.meta}).encode('utf-8'))

    def __exit__(self, exc_type, exc, _tb):
        try:
            with dnnlib.util.disk_full_errors(self.dest):
                try:
                    if exc_type is None:
                        self._write_labels()
                    if self._zip is not None:
                        self._zip.close()
                finally:
                    if exc is not None:
                        dnnlib.util.raise_if_disk_full(exc, self.dest)
                if exc_type is None:
                    self._commit()
        finally:
            if self._tmp is not None and os.path.lexists(self._tmp):
                shutil.rmtree(self._tmp) if os.path.isdir(self._tmp) else os.remove(self._tmp)
        return False

    def _commit(self):
        """Moves the finished output to `dest`. Over nothing or a zip this is one `os.replace`; a
        folder at `dest` cannot be replaced in one step, so it is moved aside first (and put back
        by the next run if this one is killed in between), then deleted."""
        if not os.path.isdir(self.dest):
            if os.path.isdir(self._tmp) and os.path.lexists(self.dest):
                os.remove(self.dest)  # a folder cannot replace a file
            os.replace(self._tmp, self.dest)
            self._tmp = None
            return
        old = os.path.join(os.path.dirname(self._tmp), f'.{os.path.basename(self.dest)}.{os.getpid()}.old.tmp')
        os.rename(self.dest, old)
        try:
            os.rename(self._tmp, self.dest)
        except BaseException:
            os.rename(old, self.dest)
            raise
        self._tmp = None
        shutil.rmtree(old)

