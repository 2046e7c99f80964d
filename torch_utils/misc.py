"""Small tensor and module helpers used across training, sampling and evaluation."""

import contextlib
import ctypes
import functools
import os

import numpy as np
import torch


def seed_to_int(*parts):
    """Mixes any number of non-negative integers into one 63-bit seed (via numpy's SeedSequence),
    so that e.g. (run seed, block index) pairs give well-separated, reproducible streams."""
    return int(np.random.SeedSequence([int(p) % (1 << 63) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> 1)


class BatchRNG:
    """Draws random tensors row-block by row-block, each block from its own seeded generator.

    Row i of a draw comes from generator `seeds[i // rows_per_seed]`. Two uses:
    - sampling: one seed per image (`rows_per_seed=1`), so an image depends only on its seed and
      not on the batch it was drawn in;
    - training: one seed per data-loader block, so an image's noise, σ, crop and augmentation do
      not depend on which rank or accumulation round handles it (DDP with N ranks then computes
      the same step as one process on the same global batch, and a resumed run repeats exactly).
    """

    def __init__(self, seeds, rows_per_seed=1, device=torch.device('cpu')):
        self.device = torch.device(device)
        self.rows_per_seed = int(rows_per_seed)
        self.generators = []
        for seed in seeds:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(int(seed) % (1 << 64))
            self.generators.append(gen)

    @property
    def num_rows(self):
        return len(self.generators) * self.rows_per_seed

    def _draw(self, fn, shape, **kwargs):
        shape = tuple(shape)
        parts = [fn((self.rows_per_seed,) + shape, generator=gen, device=self.device, **kwargs) for gen in self.generators]
        return torch.cat(parts) if len(parts) != 1 else parts[0]

    def randn(self, *shape, dtype=torch.float32):
        """Standard normal tensor of shape (num_rows, *shape)."""
        return self._draw(torch.randn, _flat_shape(shape), dtype=dtype)

    def rand(self, *shape, dtype=torch.float32):
        """Uniform [0, 1) tensor of shape (num_rows, *shape)."""
        return self._draw(torch.rand, _flat_shape(shape), dtype=dtype)

    def randint(self, low, high, *shape):
        """Integers in [low, high) of shape (num_rows, *shape)."""
        shape = _flat_shape(shape)
        parts = [torch.randint(low, high, (self.rows_per_seed,) + shape, generator=gen, device=self.device) for gen in self.generators]
        return torch.cat(parts) if len(parts) != 1 else parts[0]

    def randn_like(self, x):
        """Like `torch.randn_like(x)` with x's first dimension being the rows."""
        assert x.shape[0] == self.num_rows
        return self.randn(*x.shape[1:], dtype=x.dtype if x.dtype.is_floating_point else torch.float32)


def _flat_shape(shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
        return tuple(shape[0])
    return tuple(shape)


class InfiniteSampler(torch.utils.data.Sampler):
    """Endless stream of data-set indices, cut into blocks of `block_size`, one rank's share.

    The global stream is the concatenation of per-epoch permutations (epoch e shuffled with seed
    (seed, e)), or of the plain order with `shuffle=False`. It is cut into blocks of `block_size`
    indices; rank r gets blocks r, r + world_size, r + 2·world_size, ... With a data loader whose
    batch size equals `block_size`, every batch is one block, and block b holds the same images
    whatever the number of ranks. `start_block` skips blocks already consumed (resume)."""

    def __init__(self, dataset_size, rank=0, world_size=1, seed=0, block_size=1, start_block=0, shuffle=True):
        assert dataset_size > 0 and 0 <= rank < world_size and block_size > 0
        self.dataset_size = int(dataset_size)
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.block_size = int(block_size)
        self.shuffle = shuffle
        first = int(start_block)
        self.start_block = first + (rank - first) % world_size

    def first_block(self):
        """Global index of the first block this rank yields."""
        return self.start_block

    def _epoch_order(self, epoch):
        if not self.shuffle:
            return np.arange(self.dataset_size)
        return np.random.default_rng([self.seed, epoch]).permutation(self.dataset_size)

    def __iter__(self):
        block = self.start_block
        cached_epoch, order = None, None
        while True:
            begin = block * self.block_size
            indices = []
            for pos in range(begin, begin + self.block_size):
                epoch, offset = divmod(pos, self.dataset_size)
                if epoch != cached_epoch:
                    cached_epoch, order = epoch, self._epoch_order(epoch)
                indices.append(int(order[offset]))
            yield from indices
            block += self.world_size


class BlockLoader:
    """This rank's endless stream of data-loader blocks (batches of `block_size` items of an
    `InfiniteSampler`), each with its global block id, which seeds the block's generator: block b
    holds the same items whatever the number of ranks and accumulation rounds. `start_block`
    continues a resumed run; `blocks_consumed` is where the next run continues, once every rank
    has taken as many blocks as this one."""

    def __init__(self, dataset, block_size, seed=0, rank=0, world_size=1, start_block=0, device=torch.device('cpu'),
                 loader_kwargs=None):
        sampler = InfiniteSampler(len(dataset), rank=rank, world_size=world_size, seed=seed, block_size=block_size,
                                  start_block=start_block)
        kwargs = dict(loader_kwargs or {})
        if torch.device(device).type != 'cuda':
            kwargs.pop('pin_memory', None)
        if not kwargs.get('num_workers'):
            kwargs.pop('prefetch_factor', None)
            kwargs.pop('persistent_workers', None)
        # A generator of its own keeps the loader from drawing on the global RNG (which dropout uses
        # and a resumed run restores) and makes worker seeds reproducible.
        generator = torch.Generator().manual_seed(seed_to_int(seed, 4, rank, start_block))
        loader = torch.utils.data.DataLoader(dataset=dataset, sampler=sampler, batch_size=block_size, generator=generator, **kwargs)
        self.block_size, self.device = int(block_size), torch.device(device)
        self._batches = iter(loader)
        self._next_block, self._world_size, self._start, self._taken = sampler.first_block(), world_size, int(start_block), 0

    def __iter__(self):
        return self

    def __next__(self):
        """(global block id, items, labels) of this rank's next block, on the host."""
        images, labels = next(self._batches)
        block, self._next_block = self._next_block, self._next_block + self._world_size
        self._taken += 1
        return block, images, labels

    def take(self, count):
        """(block ids, items, labels) of the next `count` blocks, items and labels on the device."""
        blocks = [next(self) for _ in range(count)]
        images, labels = blocks_to_device([block[1:] for block in blocks], self.device)
        return [block[0] for block in blocks], images, labels

    @property
    def blocks_consumed(self):
        return self._start + self._taken * self._world_size


def blocks_to_device(blocks, device):
    """(items, labels) of data-loader blocks, concatenated on the device. Each block is copied
    by itself: the loader's pinned blocks copy without waiting, a concatenation on the host
    would be pageable memory again."""
    images = torch.cat([block[0].to(device, non_blocking=True) for block in blocks])
    labels = torch.cat([block[1].to(device, non_blocking=True) for block in blocks])
    return images, labels


def named_params_and_buffers(module):
    return list(module.named_parameters()) + list(module.named_buffers())


@torch.no_grad()
def copy_params_and_buffers(src_module, dst_module, require_all=False):
    """Copies tensors by name from one module to another (used by --transfer and EMA set-up)."""
    src = dict(named_params_and_buffers(src_module))
    for name, tensor in named_params_and_buffers(dst_module):
        if name in src:
            if src[name].shape != tensor.shape:
                raise ValueError(f'cannot transfer "{name}": shape {tuple(src[name].shape)} vs {tuple(tensor.shape)}')
            tensor.copy_(src[name])
        elif require_all:
            raise ValueError(f'"{name}" is missing from the source network')


@contextlib.contextmanager
def ddp_sync(module, sync):
    """Lets DDP all-reduce gradients only when `sync` is true (the last accumulation round)."""
    if isinstance(module, torch.nn.parallel.DistributedDataParallel) and not sync:
        with module.no_sync():
            yield
    else:
        yield


def check_ddp_consistency(module, ignore_regex=None):
    """Asserts that every parameter and buffer is identical on all ranks (a cheap safety net
    before a snapshot is written)."""
    import re
    import torch.distributed as dist
    if not dist.is_initialized():
        return
    for name, tensor in named_params_and_buffers(module):
        if ignore_regex is not None and re.fullmatch(ignore_regex, name):
            continue
        other = tensor.detach().clone()
        dist.broadcast(tensor=other, src=0)
        assert (tensor.nan_to_num() == other.nan_to_num()).all(), f'DDP ranks disagree on {name}'


def count_parameters(module):
    """Number of trainable parameters (buffers such as Fourier frequencies are not counted)."""
    return sum(p.numel() for p in module.parameters())


def nan_to_num_(tensor):
    """Replaces NaN by 0 and ±inf by ±1e5, in place (done to gradients before Adam)."""
    return torch.nan_to_num(tensor, nan=0.0, posinf=1e5, neginf=-1e5, out=tensor)


def draw_keep_mask_(out: torch.Tensor, keep: int) -> None:
    """Fills the CPU tensor `out` with 1 where a 16-bit random draw is below `keep` (of 65536), else
    0; four draws come from one 64-bit random word (`training.networks.dropout`). A custom
    operator, so that torch.compile calls it as it is instead of breaking the graph at the in-place
    `random_` or lowering the mask to its own per-element generator (the costly draw this
    function replaces); as it writes into `out`, two calls are never merged into one draw."""
    words = torch.empty((out.numel() + 3) // 4, dtype=torch.int64).random_(-2**63, None)
    out.copy_(words.view(torch.int16)[:out.numel()].view(out.shape) < keep - 32768)


if hasattr(torch.library, 'custom_op'):  # PyTorch 2.4+; before, a plain function (compiling breaks the graph there)
    draw_keep_mask_ = torch.library.custom_op('patch_diffusion::draw_keep_mask_', draw_keep_mask_,
                                              mutates_args=('out',), device_types='cpu')


@functools.lru_cache(maxsize=None)
def cpu_info():
    """(model name, flags) of this CPU from /proc/cpuinfo; (None, []) where there is none."""
    model, flags = None, []
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            for line in f:
                if line.startswith('model name') and model is None:
                    model = line.split(':', 1)[1].strip()
                if line.startswith('flags'):
                    flags = line.split(':', 1)[1].split()
                    break
    except OSError:
        pass
    return model, flags


@functools.lru_cache(maxsize=None)
def keep_freed_memory():
    """Makes glibc's malloc keep freed blocks of any size for reuse instead of handing them back to
    the kernel. PyTorch's CPU allocator is plain malloc, so by default every activation above the
    mmap threshold is mapped afresh each step and pays a page fault per 4 KiB on first touch
    (docs/benchmarks.md measures the cost). The process then keeps
    its peak memory until it exits. Returns False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    mapped = mallopt(m_mmap_threshold, 1 << 30) or mallopt(m_mmap_threshold, 1 << 25)  # some glibc refuse more than 32 MiB
    return bool(mapped and mallopt(m_trim_threshold, 2 ** 31 - 1))


_cpu_has_bf16 = []
_ONEDNN_ISAS_WITHOUT_BF16 = {'SSE41', 'AVX', 'AVX2', 'AVX2_VNNI', 'AVX2_VNNI_2', 'AVX512_CORE', 'AVX512_CORE_VNNI'}


def cpu_has_bf16():
    """True if this CPU computes bfloat16 natively (AVX512-BF16 or AMX) and `ONEDNN_MAX_CPU_ISA`
    does not forbid those instructions; elsewhere oneDNN only emulates bf16, slower than float32.
    Cached in a plain list, which torch.compile reads as a constant (it traces through lru_cache
    and breaks the graph at the file read)."""
    if not _cpu_has_bf16:
        flags = cpu_info()[1]
        native = ('avx512_bf16' in flags or 'amx_bf16' in flags) if flags else \
            bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        limit = os.environ.get('ONEDNN_MAX_CPU_ISA', os.environ.get('DNNL_MAX_CPU_ISA', '')).strip().upper()
        _cpu_has_bf16.append(native and limit not in _ONEDNN_ISAS_WITHOUT_BF16)
    return _cpu_has_bf16[0]


def bf16_fallback_notice(device, doing):
    """The one line that asking for bfloat16 (the argument or option `bf16`) prints where `device`
    is a CPU without native bfloat16 and `doing` ('training', 'sampling') therefore stays in fp32;
    None where bf16 is native."""
    if device.type == 'cpu' and not cpu_has_bf16():
        from dnnlib.util import notice
        return notice(f'this CPU has no native bfloat16 arithmetic (AVX512-BF16 or AMX); {doing} in fp32', field='bf16')
    return None
