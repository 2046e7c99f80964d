"""torch_utils.distributed without a GPU: which GPU each torchrun process takes (device count
monkeypatched), the one-line errors when ranks would share a GPU, and process-group arguments
that every supported torch version accepts."""

import inspect

import pytest
import torch

from dnnlib.util import UserError
from torch_utils import distributed


@pytest.fixture
def gpus(monkeypatch):
    """Pretends this machine has `n` visible GPUs and runs as local rank `rank` of `procs`
    torchrun processes (`procs=None`: no torchrun)."""
    def setup(n, rank=None, procs=None):
        monkeypatch.setattr(torch.cuda, 'is_available', lambda: n > 0)
        monkeypatch.setattr(torch.cuda, 'device_count', lambda: n)
        for key in ('LOCAL_RANK', 'LOCAL_WORLD_SIZE', 'WORLD_SIZE', 'RANK'):
            monkeypatch.delenv(key, raising=False)
        if procs is not None:
            monkeypatch.setenv('LOCAL_RANK', str(rank))
            monkeypatch.setenv('LOCAL_WORLD_SIZE', str(procs))
    return setup


def test_each_local_rank_takes_its_own_gpu(gpus):
    for rank in range(4):
        gpus(4, rank, 4)
        assert distributed.pick_device() == torch.device('cuda', rank)
        assert distributed.pick_device('cuda') == torch.device('cuda', rank)
    gpus(8, 1, 2)
    assert distributed.pick_device() == torch.device('cuda', 1)


def test_one_process_takes_the_named_or_first_gpu(gpus):
    gpus(2)
    assert distributed.pick_device() == torch.device('cuda', 0)
    assert distributed.pick_device('cuda:1') == torch.device('cuda', 1)
    assert distributed.pick_device('cpu') == torch.device('cpu')
    gpus(2, 0, 1)
    assert distributed.pick_device('cuda:1') == torch.device('cuda', 1)


@pytest.mark.parametrize('name', [None, 'cuda'])
def test_more_processes_than_gpus_is_an_error(gpus, name):
    gpus(2, 2, 3)
    with pytest.raises(UserError, match=r'--nproc_per_node=3: only 2 GPU') as err:
        distributed.pick_device(name)
    assert '\n' not in str(err.value.message)
    gpus(2, 0, 3)  # rank 0 would fit, but must fail too rather than wait for the others
    with pytest.raises(UserError):
        distributed.pick_device(name)
    assert distributed.pick_device('cpu') == torch.device('cpu')


def test_one_gpu_number_for_several_processes_is_an_error(gpus):
    gpus(8, 1, 2)
    with pytest.raises(UserError, match=r'^device=cuda:3: names one GPU for all 2 processes'):
        distributed.pick_device('cuda:3')


def test_bad_device_names_are_one_line_errors(gpus):
    gpus(1)
    with pytest.raises(UserError, match=r'^device=cuda:1: only 1 GPU'):
        distributed.pick_device('cuda:1')
    with pytest.raises(UserError, match=r'^device=gpu: not a device name'):
        distributed.pick_device('gpu')
    gpus(0)
    with pytest.raises(UserError, match=r'^device=cuda: CUDA is not available'):
        distributed.pick_device('cuda')


def _init_process_group_of_torch_2_1(backend=None, init_method=None, timeout=None, world_size=-1, rank=-1,
                                     store=None, group_name='', pg_options=None):
    """The signature of `torch.distributed.init_process_group` in torch 2.1 (no device_id)."""


def test_process_group_arguments_suit_torch_2_1(gpus, monkeypatch):
    """init() on a GPU under torchrun calls init_process_group with arguments torch 2.1 accepts
    (requirements allow >= 2.1; device_id came in 2.3) and selects nccl."""
    gpus(2, 1, 2)
    monkeypatch.setenv('WORLD_SIZE', '2')
    calls = []
    signature = inspect.signature(_init_process_group_of_torch_2_1)

    def fake_init(*args, **kwargs):
        signature.bind(*args, **kwargs)  # TypeError for arguments torch 2.1 does not know
        calls.append(signature.bind(*args, **kwargs).arguments)

    monkeypatch.setattr(torch.cuda, 'set_device', lambda dev: calls.append(('set_device', dev)))
    monkeypatch.setattr(torch.distributed, 'is_initialized', lambda: False)
    monkeypatch.setattr(torch.distributed, 'init_process_group', fake_init)
    monkeypatch.setattr(distributed, '_device', None)
    assert distributed.init() == torch.device('cuda', 1)
    assert calls == [('set_device', torch.device('cuda', 1)), {'backend': 'nccl'}]
