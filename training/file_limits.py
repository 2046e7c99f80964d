"""Limits on what input files may make the programs read or allocate: only regular files are
opened (a named pipe would block forever, a device never ends), sizes come from headers (zip
central directory, npy and IDX headers, tar members) and are checked before anything is read,
and what must be held in memory is compared with the memory this machine has free."""

import os
import stat
import zipfile

from dnnlib.util import UserError

# The largest single image file (PNG, JPEG, ...) read into memory: far above any image within the
# pixel limit, far below a zip member of gigabytes of zeros behind a small PNG.
MAX_IMAGE_FILE_BYTES = 1 << 30
_ZIP_METHODS = {zipfile.ZIP_STORED: 'stored', zipfile.ZIP_DEFLATED: 'Deflate', zipfile.ZIP_BZIP2: 'BZIP2',
                zipfile.ZIP_LZMA: 'LZMA'}


def check_regular_file(path, where=None):
    """Raises UserError unless `path` (after symlinks) is a regular file: named pipes, devices
    and sockets are refused before they are opened."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UserError(f'{where or path}: no such file') from None
    except OSError as err:
        raise UserError(f'{where or path}: cannot be read ({err.strerror or err})') from None
    if not stat.S_ISREG(mode):
        kind = ('a named pipe' if stat.S_ISFIFO(mode) else 'a device' if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else 'a socket' if stat.S_ISSOCK(mode) else 'a folder' if stat.S_ISDIR(mode) else 'not a regular file')
        raise UserError(f'{where or path}: is {kind}; only regular files are read')


def check_file_size(size, limit, where):
    """Raises UserError when a file of `size` bytes is larger than `limit`."""
    if size > limit:
        raise UserError(f'{where}: is {size:,} bytes, more than the {limit:,} bytes such a file may have')


def check_zip_member(info, where):
    """Raises UserError for a zip member that cannot be read: encrypted, or compressed with a
    method Python's zipfile lacks (Deflate64, ...)."""
    if info.flag_bits & 0x1:
        raise UserError(f'{where}: is encrypted; store the data set unencrypted')
    if info.compress_type not in _ZIP_METHODS:
        raise UserError(f'{where}: uses zip compression method {info.compress_type} (e.g. Deflate64), which cannot be '
                        f'read here; store it or use Deflate')


def available_memory():
    """Bytes of memory this process may still allocate: MemAvailable of /proc/meminfo, lowered
    to the headroom of a cgroup (container) limit and to that of the process's address-space
    limit (`ulimit -v`) when they are set; None where none is known."""
    free = None
    try:
        with open('/proc/meminfo', encoding='ascii') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    free = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    if free is None:
        try:
            free = os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
        except (ValueError, OSError, AttributeError):
            pass
    for limit_file, usage_file in (('/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory.current'),
                                   ('/sys/fs/cgroup/memory/memory.limit_in_bytes', '/sys/fs/cgroup/memory/memory.usage_in_bytes')):
        try:
            with open(limit_file, encoding='ascii') as f:
                limit = f.read().strip()
            with open(usage_file, encoding='ascii') as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < (1 << 60):
            headroom = max(int(limit) - usage, 0)
            free = headroom if free is None else min(free, headroom)
        break
    headroom = _address_space_headroom()
    if headroom is not None:
        free = headroom if free is None else min(free, headroom)
    return free


def _address_space_headroom():
    """Bytes of address space left under RLIMIT_AS (None without a limit): an allocation beyond
    it fails however much memory the machine has free."""
    try:
        import resource
        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit == resource.RLIM_INFINITY:
            return None
        with open('/proc/self/status', encoding='ascii') as f:
            used = next(int(line.split()[1]) * 1024 for line in f if line.startswith('VmSize:'))
    except (ImportError, OSError, ValueError, StopIteration):
        return None
    return max(limit - used, 0)


def free_memory(device=None):
    """Bytes free for new tensors on `device` (a torch device; None or CPU: main memory); None
    where it cannot be known."""
    if device is not None and getattr(device, 'type', device) == 'cuda':
        import torch
        return torch.cuda.mem_get_info(device)[0]
    if device is not None and getattr(device, 'type', device) != 'cpu':
        return None
    return available_memory()


def check_memory(nbytes, what, device=None):
    """Raises UserError when `what` needs `nbytes` of memory and `device` (None: main memory) has
    less free, so that the program stops with a message instead of being killed silently."""
    free = free_memory(device)
    if free is not None and nbytes > free:
        where = '' if device is None or getattr(device, 'type', device) == 'cpu' else f' on {device}'
        raise UserError(f'{what}: needs at least {_gib(nbytes)} of memory{where}, but {_gib(free)} are free')


def full_resolution_channels(net):
    """Output channels of the first convolution of `net` (its input layer, at full resolution):
    with the batch and image size a lower bound of the memory its activations take."""
    return next((p.shape[0] for p in net.parameters() if p.ndim == 4), 1)


def skip_elements_per_pixel(net):
    """Elements per pixel of the full image of the encoder outputs that one of this project's
    U-Nets (`net.model.enc`) keeps for its decoder, all alive at the decoder's start: a lower
    bound of its activations that grows with the depth as well as the width; 0 for other networks."""
    enc = getattr(getattr(net, 'model', None), 'enc', None)
    total, scale = 0.0, 1.0
    for name, module in (enc.items() if hasattr(enc, 'items') else ()):
        if name.endswith('_down'):
            scale /= 4
        if 'aux' not in name:
            total += getattr(module, 'out_channels', 0) * scale
    return total


def _gib(nbytes):
    return f'{nbytes / (1 << 30):.1f} GiB'


def check_stored_member(files, name):
    """Checks member `name` of a `training.dataset.StoredFiles` before it is opened and returns
    what to open: the file's path in a folder (a regular file of at most MAX_IMAGE_FILE_BYTES),
    the `ZipInfo` in a zip (readable, and declaring at most MAX_IMAGE_FILE_BYTES: zipfile never
    reads past the declared size)."""
    if files.type == 'dir':
        path = os.path.join(files.path, *name.split('/'))
        check_regular_file(path)
        check_file_size(os.path.getsize(path), MAX_IMAGE_FILE_BYTES, path)
        return path
    where = f'{files.path}: {name}'
    info = files.zipfile().getinfo(name)
    check_zip_member(info, where)
    check_file_size(info.file_size, MAX_IMAGE_FILE_BYTES, where)
    return info
