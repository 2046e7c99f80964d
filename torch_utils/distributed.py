"""Process-group set-up that works the same on one CPU process, under torchrun on CPUs (gloo)
and under torchrun on GPUs (nccl). Nothing here assumes CUDA."""

import os
import sys

import torch
import torch.distributed as dist

from torch_utils import misc

_device = None


def pick_device(name=None):
    """Returns the device to run on: `name` if given ('cpu', 'cuda', 'cuda:1', 'mps'), else CUDA
    when available (GPU number LOCAL_RANK under torchrun), else MPS, else CPU.

    Two processes on one GPU make NCCL abort, so a UserError is raised when torchrun starts more
    processes on this machine than there are visible GPUs, or when `name` picks one GPU number
    for several processes."""
    from dnnlib.util import FieldError, UserError
    if name is not None and not name.strip():
        raise FieldError('device', value='', detail='is empty; name a device (cpu, cuda, cuda:1, mps) or leave the option out')
    if not name:
        if torch.cuda.is_available():
            name = 'cuda'
        elif getattr(torch.backends, 'mps', None) is not None and torch.backends.mps.is_available():
            return torch.device('mps')
        else:
            return torch.device('cpu')
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise FieldError('device', value=name, detail='not a device name (cpu, cuda, cuda:1, mps)') from None
    if dev.type == 'meta':
        raise FieldError('device', value=name, detail='holds shapes only and computes nothing; use cpu, cuda or mps')
    if dev.type == 'cpu':
        return dev
    if dev.type != 'cuda':
        backend = torch.backends.mps if dev.type == 'mps' else getattr(torch, dev.type, None)
        if not getattr(backend, 'is_available', lambda: False)():
            raise FieldError('device', value=name, detail=f'{dev.type} devices are not available on this machine (cpu, cuda, mps)')
        return dev
    if not torch.cuda.is_available():
        raise FieldError('device', value=name, detail='CUDA is not available on this machine')
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    local_procs = int(os.environ.get('LOCAL_WORLD_SIZE', str(local_rank + 1)))
    count = torch.cuda.device_count()
    if dev.index is not None:
        if local_procs > 1:
            raise FieldError('device', value=name, detail=f'names one GPU for all {local_procs} processes on this machine; '
                            f'use `device`=cuda (process i takes GPU i)')
        if dev.index >= count:
            raise FieldError('device', value=name, detail=f'only {count} GPU(s) are visible (cuda:0..cuda:{count - 1})')
        return dev
    if local_procs > count:
        raise UserError(f'torchrun --nproc_per_node={local_procs}: only {count} GPU(s) are visible on this machine; '
                        f'start at most {count} processes per machine, or pass `device`=cpu')
    return torch.device('cuda', local_rank)


def init(device=None):
    """Joins the torchrun process group if there is one and picks this rank's device.

    Uses nccl when the device is CUDA and gloo otherwise. Without torchrun (no WORLD_SIZE in the
    environment, or WORLD_SIZE=1) it runs as a single process and creates no group. Returns the
    device; call once at start-up, before anything else in this module. Off CUDA it also makes
    malloc keep freed memory (`misc.keep_freed_memory`), which spares every step its page faults."""
    global _device
    _device = pick_device(device)
    if _device.type == 'cuda':
        torch.cuda.set_device(_device)
    else:
        misc.keep_freed_memory()
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    if world_size > 1 and not dist.is_initialized():
        os.environ.setdefault('MASTER_ADDR', 'localhost')
        os.environ.setdefault('MASTER_PORT', '29500')
        # No device_id: torch < 2.3 rejects it and 2.7.0 can hang with it (EDM passes none);
        # set_device above is what nccl goes by.
        dist.init_process_group(backend='nccl' if _device.type == 'cuda' else 'gloo')
    return _device


def device():
    """This rank's device as chosen by `init()` (CPU if `init()` was never called)."""
    return _device if _device is not None else torch.device('cpu')


def get_rank():
    return dist.get_rank() if dist.is_initialized() else 0


def get_world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier():
    """Waits for every rank; on nccl it names this rank's GPU so that no other is guessed."""
    if dist.is_initialized():
        if dist.get_backend() == 'nccl':
            dist.barrier(device_ids=[device().index])
        else:
            dist.barrier()


def print0(*args, **kwargs):
    """`print` on rank 0 only, so that N processes do not print N copies."""
    if get_rank() == 0:
        print(*args, **kwargs)


def all_reduce_sum(tensor):
    """Sums `tensor` in place across ranks (no-op in a single process) and returns it.

    gloo cannot reduce CUDA tensors of every dtype and nccl cannot reduce CPU tensors, so the
    tensor is moved to the process group's device for the reduction and back."""
    if not dist.is_initialized():
        return tensor
    work_device = device() if dist.get_backend() == 'nccl' else torch.device('cpu')
    buf = tensor.to(work_device)
    dist.all_reduce(buf)
    tensor.copy_(buf)
    return tensor


def all_gather_object(obj):
    """Returns the list of `obj` from every rank (a one-element list in a single process)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src=0):
    """Returns rank `src`'s `obj` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shutdown():
    """Leaves the process group (call at the end of a script)."""
    if dist.is_initialized():
        barrier()
        dist.destroy_process_group()


def tqdm_disabled():
    """Progress bars are drawn by rank 0 only."""
    return get_rank() != 0
