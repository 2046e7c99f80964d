"""Repairs TorchInductor's on-disk cache before `--compile=1` uses it. The compiler writes a
kernel's shared library straight under its final name, so a compile killed meanwhile leaves a
truncated `.so` that every later compiled run loads and dies on ("invalid ELF header"). Such
files are found by their ELF headers and removed; Inductor then builds them again."""

import os
import stat
import struct
import sys

from dnnlib.util import FieldError

_ELF_MAGIC = b'\x7fELF'
_PT_LOAD = 1


def cache_dir():
    """TorchInductor's cache folder (its TORCHINDUCTOR_CACHE_DIR, by default under the temp dir)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir as inductor_cache_dir
    return inductor_cache_dir()


def is_intact_elf(path):
    """True when `path` is an ELF file whose headers and loadable segments all lie within the
    file: a file cut short while being written fails this."""
    try:
        size = os.path.getsize(path)
        with open(path, 'rb') as f:
            ident = f.read(64)
            if len(ident) < 52 or ident[:4] != _ELF_MAGIC or ident[4] not in (1, 2) or ident[5] not in (1, 2):
                return False
            wide, order = ident[4] == 2, '<' if ident[5] == 1 else '>'
            if wide and len(ident) < 64:
                return False
            fields = struct.unpack_from(order + ('QQQIHHHHHH' if wide else 'IIIIHHHHHH'), ident, 24)
            phoff, shoff = fields[1], fields[2]
            phentsize, phnum, shentsize, shnum = fields[5], fields[6], fields[7], fields[8]
            if phoff + phnum * phentsize > size or shoff + shnum * shentsize > size:
                return False
            for index in range(phnum):
                f.seek(phoff + index * phentsize)
                header = f.read(phentsize)
                if wide:
                    kind, _flags, offset, _vaddr, _paddr, filesz = struct.unpack_from(order + 'IIQQQQ', header)
                else:
                    kind, offset, _vaddr, _paddr, filesz = struct.unpack_from(order + 'IIIII', header)
                if kind == _PT_LOAD and offset + filesz > size:
                    return False
        return True
    except (OSError, struct.error):
        return False


def _is_regular(path):
    """True for a regular file that is not a link: a pipe named like a kernel would block the
    check forever, and a link's target is not the cache's to delete."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def remove_broken_entries(folder=None):
    """Deletes the truncated shared libraries and object files under Inductor's cache `folder`
    (default: its own) and returns their paths. Only on Linux, where they are ELF files."""
    if not sys.platform.startswith('linux'):
        return []
    folder = cache_dir() if folder is None else folder
    removed = []
    for root, _dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if name.endswith(('.so', '.o')) and _is_regular(path) and not is_intact_elf(path):
                try:
                    os.remove(path)
                    removed.append(path)
                except FileNotFoundError:  # another process removed it first
                    pass
    return removed


def repair(print_fn=print):
    """`remove_broken_entries` with one line saying what was removed, if anything. A cache folder
    that cannot be made or read (TORCHINDUCTOR_CACHE_DIR naming a file, say) is a FieldError of
    `compile_network`."""
    try:
        removed = remove_broken_entries()
    except OSError as err:
        raise FieldError('compile_network', f'the compile cache {os.environ.get("TORCHINDUCTOR_CACHE_DIR") or "folder"} cannot '
                         f'be used ({err.strerror or err}); set TORCHINDUCTOR_CACHE_DIR to a writable folder') from None
    if removed:
        print_fn(f'Removed {len(removed)} truncated kernel librar{"ies" if len(removed) > 1 else "y"} from the compile cache '
                 f'{cache_dir()} (left by a killed compile, e.g. {removed[0]}); they are compiled again')
    return removed
