"""Bad input to the four scripts, as an adversarial user gives it: every case of the table ends
with exit status 1, one `Error:` line holding the expected words, no traceback, and nothing
changed on disk. Also: training states never unpickle code, atomic writes clean up, seeds are
lazy, and large images are bounded. Everything runs in-process through click's runner."""

import collections
import errno
import gzip
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import warnings
import zipfile
import zlib

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import dataset_tool
import dnnlib
import fid
import generate
import train
from conftest import DEAD_PID, assert_cleaned, plant_temps, sampling_net
from training import compile_cache
from training import dataset as dataset_lib
from training import metrics
from training import run_dir, run_files, training_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {'train': train.main, 'generate': generate.main, 'fid': fid.main, 'dataset_tool': dataset_tool.cli}
TRAIN = ['--outdir={tmp}/runs', '--data={digits}', '--batch=8', '--cbase=8', '--cres=1,2', '--workers=0']
GENERATE = ['--network={net}', '--device=cpu']
TINY_RUN = ['--duration=0.00002', '--tick=1', '--snap=1000', '--dump=1000', '--lr-rampup=0.000001', '--seed=1']

# ----------------------------------------------------------------------------------------------
# Fixture files.


def png_bytes(array):
    buf = io.BytesIO()
    PIL.Image.fromarray(array).save(buf, format='png')
    return buf.getvalue()


def bomb_png(width=12000, height=12000):
    """A PNG of a few bytes whose header claims width x height grey pixels (a decompression bomb:
    the pixels would be all zero)."""
    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    rows = zlib.compress(b'\0' * (width + 1) * 64)  # the first rows only: decoding must never start
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0))
            + chunk(b'IDAT', rows) + chunk(b'IEND', b''))


def write_zip(path, members, labels=None):
    with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
        z.writestr('dataset.json', json.dumps({'labels': labels}))
    return str(path)


def digit_images(count, size=16):
    data = np.load(os.path.join(ROOT, 'data', 'mnist-10k-28x28.npz'))
    return [np.asarray(PIL.Image.fromarray(img).resize((size, size), PIL.Image.LANCZOS)) for img in data['images'][:count]]


def image_members(images):
    return {f'00000/img{i:08d}.png': png_bytes(img) for i, img in enumerate(images)}


class Evil:
    """A pickle payload: unpickling it creates the folder `path` (harmless evidence of code run)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """Every input the table refers to, made once: data sets, a trained run with its state, a
    network snapshot, a detector, and files that are not what an option expects."""
    root = tmp_path_factory.mktemp('inputs')
    f = dnnlib.EasyDict(root=str(root))
    digits = digit_images(72)
    f.digits = write_zip(root / 'digits.zip', image_members(digits[:16]), [[f'00000/img{i:08d}.png', i % 3] for i in range(16)])
    members = image_members(digits)
    members['00000/img00000070.png'] = members['00000/img00000070.png'][:60]  # header intact, pixels cut off
    f.corrupt = write_zip(root / 'corrupt.zip', members)
    f.bombs = write_zip(root / 'bombs.zip', {f'00000/img{i:08d}.png': bomb_png() for i in range(8)})
    os.makedirs(root / 'bomb-folder')
    for i in range(3):
        (root / 'bomb-folder' / f'{i}.png').write_bytes(bomb_png())
    os.makedirs(root / 'huge-bomb')
    (root / 'huge-bomb' / 'huge.png').write_bytes(bomb_png(30000, 30000))  # PIL itself refuses this one
    os.makedirs(root / 'negative')
    for i, img in enumerate(digits[:4]):
        (root / 'negative' / f'{i}.png').write_bytes(png_bytes(img))
    (root / 'negative' / 'dataset.json').write_text(json.dumps({'labels': [[f'{i}.png', i - 2] for i in range(4)]}))
    f.negative = str(root / 'negative')
    f.npz = str(root / 'digits.npz')
    np.savez(f.npz, images=np.stack(digits[:4]))
    f.npz_bomb = str(root / 'npz_bomb.npz')
    np.savez_compressed(f.npz_bomb, images=np.zeros([1, 12000, 12000], np.uint8))  # 144 MB unpacked from 140 kB
    f.notes = str(root / 'notes.txt')
    (root / 'notes.txt').write_text('my notes\n')
    f.notes_zip = str(root / 'notes.zip')
    (root / 'notes.zip').write_text('my notes\n')
    f.foreign_zip = write_zip(root / 'foreign.zip', {'report.txt': b'not images'})
    f.folder = str(root / 'a-folder')
    os.makedirs(f.folder)

    result = CliRunner().invoke(train.main, [a.format(tmp=root, digits=f.digits) for a in TRAIN] + TINY_RUN)
    assert result.exit_code == 0, result.output
    (f.run,) = [str(p) for p in (root / 'runs').iterdir()]
    (f.state,) = [os.path.join(f.run, n) for n in os.listdir(f.run) if n.startswith('training-state-')]

    f.evil_marker = str(root / 'code-ran')
    f.evil_state = str(root / 'evil.pt')
    with open(f.evil_state, 'wb') as fp:
        pickle.dump(dict(net=Evil(f.evil_marker), nimg=0), fp)
    f.evil_run = str(root / 'evil-run')
    os.makedirs(f.evil_run)
    torch.save(dict(net=Evil(f.evil_marker), nimg=0), os.path.join(f.evil_run, 'training-state-000099.pt'))
    with open(os.path.join(f.evil_run, 'training-state-000000.pt'), 'wb') as fp:
        fp.write(open(f.state, 'rb').read())

    f.net = str(root / 'net.pkl')
    with open(f.net, 'wb') as fp:
        pickle.dump(dict(ema=sampling_net()), fp)
    f.det = str(root / 'standin.pt')
    torch.jit.script(StandIn()).save(f.det)
    f.stats = str(root / 'stats.npz')
    np.savez(f.stats, mu=np.zeros(2048), sigma=np.eye(2048))
    f.other_npz = str(root / 'other.npz')
    np.savez(f.other_npz, weights=np.zeros(3))
    return f


class StandIn(torch.nn.Module):
    """A detector with fid-helper's contract: (N, 3, 299, 299) → (N, 2048)."""

    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1).repeat(1, 683)[:, :2048]

# ----------------------------------------------------------------------------------------------
# The table: (id, script, arguments, words the one line must hold, and the one folder the case
# may leave: only a failure during training, after the run folder was made).


Case = collections.namedtuple('Case', 'id script args words leaves', defaults=[None])
CASES = [
    # train.py: outputs and options, checked before any work.
    Case('train-outdir-file', 'train', TRAIN + ['--outdir={notes}', '-n'], ['--outdir', 'is a file']),
    Case('train-outdir-under-file', 'train', TRAIN + ['--outdir={notes}/runs', '-n'], ['--outdir', 'is a file']),
    Case('train-outdir-read-only', 'train', TRAIN + ['--outdir={readonly}/runs', '-n'], ['--outdir', 'not writable']),
    Case('train-duration-nan', 'train', TRAIN + ['--duration=nan', '-n'], ['--duration', 'finite']),
    Case('train-duration-inf', 'train', TRAIN + ['--duration=inf', '-n'], ['--duration', 'finite']),
    Case('train-lr-nan', 'train', TRAIN + ['--lr=nan', '-n'], ['--lr', 'finite']),
    Case('train-cres-zero', 'train', TRAIN + ['--cres=0,0', '-n'], ['--cres=0,0']),
    Case('train-device-bogus', 'train', TRAIN + ['--device=bogus', '-n'], ['--device=bogus']),
    Case('train-patch-option-without-patches', 'train', TRAIN + ['--patch=0', '--real_p=0.3', '-n'],
         ['--real-p', 'only applies to patches']),
    Case('train-fp16-and-bf16', 'train', TRAIN + ['--fp16=1', '--bf16=1', '-n'], ['--fp16=1 and --bf16=1', 'choose one']),
    Case('train-precision-and-alias', 'train', TRAIN + ['--precision=fp16', '--bf16=1', '-n'], ['--bf16=1', '--precision=fp16']),
    Case('train-pedm-without-patches', 'train', TRAIN + ['--precond=pedm', '--patch=0', '-n'], ['--precond=pedm', '--patch=0']),
    # train.py: data and resume file load before the run folder is made (no -n: nothing may exist).
    Case('train-data-bombs', 'train', TRAIN + TINY_RUN + ['--data={bombs}'], ['bombs.zip', '12000x12000', 'limit']),
    Case('train-resume-other-network', 'train', TRAIN + TINY_RUN + ['--cbase=16', '--resume={state}'],
         ['--resume', 'model_channels 8 (now 16)']),
    Case('train-resume-other-batch', 'train', TRAIN + TINY_RUN + ['--batch=16', '--resume={run}'], ['--resume', '--batch 8 (now 16)']),
    Case('train-resume-text', 'train', TRAIN + TINY_RUN + ['--resume={notes}'], ['--resume', 'not a readable training state']),
    Case('train-resume-code-file', 'train', TRAIN + TINY_RUN + ['--resume={evil_state}'], ['--resume', 'not a readable training state']),
    Case('train-corrupt-image-in-worker', 'train', TRAIN + TINY_RUN + ['--data={corrupt}', '--workers=1', '--patch=0',
                                                                      '--duration=0.0001'],
         ['corrupt.zip', 'img00000070.png'], leaves='{tmp}/runs'),
    Case('train-resume-code-run-dir', 'train', TRAIN + TINY_RUN + ['--resume={evil_run}'],
         ['--resume', 'training-state-000099.pt', 'posix.mkdir', 'refused']),
    # generate.py
    Case('generate-seeds-huge', 'generate', GENERATE + ['--outdir={tmp}/out', '--seeds=0-99999999999'], ['--seeds', '2^32']),
    Case('generate-seed-2^32', 'generate', GENERATE + ['--outdir={tmp}/out', '--seeds=4294967296'], ['--seeds', '4294967296']),
    Case('generate-outdir-file', 'generate', GENERATE + ['--outdir={notes}'], ['--outdir', 'is a file']),
    Case('generate-outdir-read-only', 'generate', GENERATE + ['--outdir={readonly}/out'], ['--outdir', 'not writable']),
    Case('generate-grid-folder', 'generate', GENERATE + ['--grid={folder}'], ['--grid', '.png']),
    Case('generate-grid-folder-png', 'generate', GENERATE + ['--grid={tmp}/dir.png'], ['--grid', 'is a folder']),
    Case('generate-grid-not-png', 'generate', GENERATE + ['--grid={tmp}/fake.png'], ['--grid', 'not a PNG']),
    Case('generate-grid-too-large', 'generate', GENERATE + ['--grid={tmp}/g.png', '--seeds=0-999999'], ['--grid', 'limit']),
    Case('generate-image-size', 'generate', GENERATE + ['--outdir={tmp}/out', '--image_size=100000'], ['--image_size', 'limit']),
    Case('generate-resolution', 'generate', GENERATE + ['--outdir={tmp}/out', '--resolution=100000'], ['--resolution', 'limit']),
    Case('generate-sigma-nan', 'generate', GENERATE + ['--outdir={tmp}/out', '--sigma_max=nan'], ['--sigma_max', 'finite']),
    Case('generate-cfg-inf', 'generate', GENERATE + ['--outdir={tmp}/out', '--cfg=inf'], ['--cfg', 'finite']),
    Case('generate-device-bogus', 'generate', GENERATE + ['--outdir={tmp}/out', '--device=bogus'], ['--device=bogus']),
    # fid.py ref
    Case('fid-dest-folder', 'fid', ['ref', '--data={digits}', '--dest={folder}', '--detector={det}'], ['--dest', '.npz']),
    Case('fid-dest-folder-npz', 'fid', ['ref', '--data={digits}', '--dest={tmp}/dir.npz', '--detector={det}'], ['--dest', 'is a folder']),
    Case('fid-dest-not-stats', 'fid', ['ref', '--data={digits}', '--dest={other_npz}', '--detector={det}'], ['--dest', 'not replacing']),
    Case('fid-dest-under-file', 'fid', ['ref', '--data={digits}', '--dest={notes}/ref.npz', '--detector={det}'], ['--dest', 'is a file']),
    Case('fid-dest-read-only', 'fid', ['ref', '--data={digits}', '--dest={readonly}/ref.npz', '--detector={det}'], ['--dest', 'not writable']),
    Case('fid-bombs', 'fid', ['ref', '--data={bombs}', '--dest={tmp}/ref.npz', '--detector={det}', '--workers=0'],
         ['img00000000.png', '12000x12000', 'limit']),
    Case('fid-corrupt-in-worker', 'fid', ['ref', '--data={corrupt}', '--dest={tmp}/ref.npz', '--detector={det}', '--workers=1'],
         ['img00000070.png', 'not a readable image']),
    # dataset_tool.py
    Case('tool-resolution-huge', 'dataset_tool', ['--source={npz}', '--dest={tmp}/d.zip', '--resolution=200000x200000'],
         ['--resolution', 'limit']),
    Case('tool-npz-bomb', 'dataset_tool', ['--source={npz_bomb}', '--dest={tmp}/d.zip'], ['npz_bomb.npz', '12000x12000', 'limit']),
    Case('tool-negative-label', 'dataset_tool', ['--source={negative}', '--dest={tmp}/d.zip'], ['dataset.json', '-2', '0 or more']),
    Case('tool-bombs', 'dataset_tool', ['--source={bombs}', '--dest={tmp}/d.zip'], ['img00000000.png', '12000x12000', 'limit']),
    Case('tool-bomb-beyond-pil', 'dataset_tool', ['--source={root}/huge-bomb', '--dest={tmp}/d.zip'], ['huge.png', 'limit']),
    Case('tool-bombs-skipped', 'dataset_tool', ['--source={root}/bomb-folder', '--dest={tmp}/d.zip', '--skip-bad'],
         ['no readable images']),
    Case('tool-overwrite-text-file', 'dataset_tool', ['--source={npz}', '--dest={notes}', '--overwrite'], ['--dest', 'is a file']),
    Case('tool-overwrite-text-as-zip', 'dataset_tool', ['--source={npz}', '--dest={notes_zip}', '--overwrite'],
         ['--dest', 'not a data set']),
    Case('tool-overwrite-foreign-zip', 'dataset_tool', ['--source={npz}', '--dest={foreign_zip}', '--overwrite'],
         ['--dest', 'not a data set']),
    Case('tool-dest-under-file', 'dataset_tool', ['--source={npz}', '--dest={notes}/d.zip'], ['--dest', 'is a file']),
    Case('tool-dest-read-only', 'dataset_tool', ['--source={npz}', '--dest={readonly}/d.zip'], ['--dest', 'not writable']),
    Case('tool-dest-folder-zip', 'dataset_tool', ['--source={npz}', '--dest={tmp}/dir.zip'], ['--dest', 'is a folder']),
]


def disk_state(*folders):
    """{path: (kind, size, content hash)} of everything under `folders`."""
    state = {}
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in dirnames:
                state[os.path.join(dirpath, name)] = ('dir',)
            for name in filenames:
                path = os.path.join(dirpath, name)
                with open(path, 'rb') as fp:
                    state[path] = ('file', hashlib.sha1(fp.read()).hexdigest())
    return state


def unwritable_folder(tmp_path):
    """A folder this process cannot write into: a read-only folder, or for root (whom permission
    bits do not stop) /sys, where the kernel refuses new files; None if there is neither."""
    if os.geteuid() != 0:
        os.makedirs(tmp_path / 'readonly')
        os.chmod(tmp_path / 'readonly', 0o555)
        return tmp_path / 'readonly'
    try:
        with tempfile.TemporaryFile(dir='/sys'):
            return None
    except OSError:
        return '/sys'


@pytest.mark.parametrize('case', CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_line_and_changes_nothing(case, files, tmp_path):
    readonly = unwritable_folder(tmp_path)
    if 'readonly' in ''.join(case.args) and readonly is None:
        pytest.skip('no folder here that this user cannot write into')
    os.makedirs(tmp_path / 'dir.png')
    os.makedirs(tmp_path / 'dir.npz')
    os.makedirs(tmp_path / 'dir.zip' / 'sub')
    (tmp_path / 'fake.png').write_text('not a picture')
    args = [a.format(tmp=tmp_path, readonly=readonly, **files) for a in case.args]
    before = disk_state(tmp_path, files.root)
    result = CliRunner().invoke(SCRIPTS[case.script], args)
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert 'Traceback' not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith('Error:')]
    assert len(lines) == 1, result.output
    for word in case.words:
        assert word in lines[0], lines[0]
    after = disk_state(tmp_path, files.root)
    if case.leaves is not None:
        left = case.leaves.format(tmp=tmp_path)
        after = {path: value for path, value in after.items() if not path.startswith(left)}
    assert after == before
    assert not os.path.exists(files.evil_marker)


# ----------------------------------------------------------------------------------------------
# Training states hold data only.


def test_training_state_loads_without_unpickling_code(files):
    state = training_state.load_state(files.state)
    assert state['batch_size'] == 8 and state['network_kwargs']['model_channels'] == 8
    training_state.check_resume_state(files.state, state['network_kwargs'], 8)  # its own options fit
    for path in (files.evil_state, os.path.join(files.evil_run, 'training-state-000099.pt')):
        with pytest.raises(dnnlib.util.UserError, match='not a readable training state|could run code'):
            training_state.load_state(path)
    assert not os.path.exists(files.evil_marker)

# ----------------------------------------------------------------------------------------------
# Atomic writes.


def test_atomic_write_removes_its_temp_file_when_the_rename_fails(tmp_path):
    target = tmp_path / 'taken'
    os.makedirs(target / 'inside')  # os.replace cannot put a file over a non-empty folder
    with pytest.raises(OSError):
        with dnnlib.util.atomic_write(target, 'wb') as fp:
            fp.write(b'data')
    assert sorted(os.listdir(tmp_path)) == ['taken']


def test_stale_temp_files_are_removed_on_the_next_write(tmp_path):
    dead_pid = 2**22 + 12345  # above the largest pid Linux allows: no such process
    stale = tmp_path / f'.ref.npz.{dead_pid}.abcd1234.tmp'
    stale.write_bytes(b'half a file')
    old = time.time() - 2 * dnnlib.util.STALE_TEMP_SECONDS
    os.utime(stale, (old, old))
    fresh = tmp_path / f'.ref.npz.{dead_pid}.ef015678.tmp'  # its writer may live on another machine
    fresh.write_bytes(b'being written')
    live = tmp_path / f'.ref.npz.{os.getpid()}.12349012.tmp'
    live.write_bytes(b'being written')
    os.utime(live, (old, old))
    other = tmp_path / f'.other.npz.{dead_pid}.a0b1c2d3.tmp'
    other.write_bytes(b'of another file')
    os.utime(other, (old, old))
    aside = tmp_path / f'.data.{dead_pid}.old.tmp'  # a data set that dataset_tool.py puts back
    os.makedirs(aside)
    os.utime(aside, (old, old))
    with dnnlib.util.atomic_write(tmp_path / 'ref.npz', 'wb') as fp:
        fp.write(b'new')
    assert sorted(os.listdir(tmp_path)) == sorted([fresh.name, live.name, aside.name, 'ref.npz'])


def test_stale_temps_are_judged_by_their_writer_and_machine(tmp_path):
    """A temporary file of a gone process here goes after a minute, one of another machine after
    a day; a folder counts as changed when anything inside it changed; other names stay."""
    gone, kept = plant_temps(tmp_path, 'ref.npz')
    other_host = 'ffffffff' if dnnlib.util.HOST_TAG != 'ffffffff' else '00000000'
    day_old = tmp_path / f'.ref.npz.{DEAD_PID}-{other_host}.00000001.tmp'
    day_old.write_bytes(b'left by another machine')
    old = time.time() - 2 * dnnlib.util.FOREIGN_TEMP_SECONDS
    os.utime(day_old, (old, old))
    busy = tmp_path / f'.d.{DEAD_PID}.00000002.tmp'  # a data set written into its sub-folders from elsewhere
    os.makedirs(busy / '00001')
    (busy / '00001' / 'img00001000.png').write_bytes(b'just written')
    old = time.time() - 2 * dnnlib.util.STALE_TEMP_SECONDS
    os.utime(busy, (old, old))
    removed = dnnlib.util.remove_stale_temps(str(tmp_path))
    assert sorted(os.path.basename(p) for p in removed) == sorted(gone + [day_old.name])
    assert_cleaned(tmp_path, gone + [day_old.name], kept + [busy.name])


def test_a_new_run_removes_stale_temps_from_the_other_run_folders(tmp_path):
    gone, kept = plant_temps(tmp_path / '00003-old-run', 'training-state-000100.pt')
    other_gone, _ = plant_temps(tmp_path / 'notes', 'draft.txt')  # not a run folder: never looked into
    assert run_dir.claim_run_dir(str(tmp_path), 'new', dry_run=True).endswith('00004-new')
    assert_cleaned(tmp_path / '00003-old-run', [], gone + kept)
    assert run_dir.claim_run_dir(str(tmp_path), 'new').endswith('00004-new')
    assert_cleaned(tmp_path / '00003-old-run', gone, kept)
    assert_cleaned(tmp_path / 'notes', [], other_gone)


def test_dataset_zip_is_replaced_in_one_step(files, tmp_path, monkeypatch):
    dest = str(tmp_path / 'd.zip')
    assert CliRunner().invoke(dataset_tool.cli, [f'--source={files.npz}', f'--dest={dest}']).exit_code == 0
    monkeypatch.setattr(os, 'rename', None)  # only os.replace may move the new zip in
    result = CliRunner().invoke(dataset_tool.cli, [f'--source={files.npz}', f'--dest={dest}', '--overwrite', '--max-images=2'])
    assert result.exit_code == 0, result.output
    assert len(dataset_lib.ImageFolderDataset(dest)) == 2
    assert os.listdir(tmp_path) == ['d.zip']


def test_data_set_folder_moved_aside_by_a_killed_run_is_put_back(files, tmp_path):
    dest = tmp_path / 'd'
    assert CliRunner().invoke(dataset_tool.cli, [f'--source={files.npz}', f'--dest={dest}']).exit_code == 0
    dead_pid = 2**22 + 12345
    os.rename(dest, tmp_path / f'.d.{dead_pid}.old.tmp')  # a kill between the two renames
    half = tmp_path / f'.d.{dead_pid}.abcd1234.tmp'
    os.makedirs(half / '00000')
    old = time.time() - 2 * dnnlib.util.STALE_TEMP_SECONDS
    for path in (half / '00000', half):
        os.utime(path, (old, old))
    gone, kept = plant_temps(tmp_path, 'd.zip')
    result = CliRunner().invoke(dataset_tool.cli, [f'--source={files.npz}', f'--dest={dest}'])
    assert result.exit_code == 1 and 'already exists' in result.output  # the old data set is back
    assert sorted(os.listdir(tmp_path)) == sorted(['d'] + kept) and len(dataset_lib.ImageFolderDataset(dest)) == 4

# ----------------------------------------------------------------------------------------------
# Seeds and image sizes.


def test_seed_ranges_are_lazy_and_keep_order_without_duplicates():
    seeds = generate.parse_seeds('0-4294967295')
    assert len(seeds) == 2**32 and seeds[-1] == 2**32 - 1 and seeds[123456789] == 123456789
    assert len(seeds[1::3]) == (2**32 - 1 + 2) // 3 and seeds[1::3][2] == 7
    assert list(generate.parse_seeds('5,3-7,1,6,0-2')) == [5, 3, 4, 6, 7, 1, 0, 2]
    mixed = generate.parse_seeds('10-20,0-30,15')
    assert list(mixed) == list(range(10, 21)) + list(range(0, 10)) + list(range(21, 31))
    assert list(mixed[1::4]) == list(mixed)[1::4]


def test_large_images_are_shrunk_before_batching(tmp_path):
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (640, 640, 3), dtype=np.uint8)
    small = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    folder = tmp_path / 'images'
    os.makedirs(folder)
    for name, img in (('big.png', big), ('small.png', small)):
        PIL.Image.fromarray(img).save(folder / name)
    items = metrics.ImageFiles(str(folder))
    _, shrunk, _ = items[0]
    _, kept, _ = items[1]
    assert shrunk.shape == (3, 299, 299) and shrunk.dtype == np.float32
    assert kept.dtype == np.uint8 and kept.shape == (3, 32, 32)
    resized_in_batch = metrics.nvidia_resize(torch.from_numpy(big.transpose(2, 0, 1)).unsqueeze(0).float())[0]
    torch.testing.assert_close(torch.from_numpy(shrunk), resized_in_batch)


def test_detector_pickle_given_by_the_user_loads_only_when_trusted(files, tmp_path):
    path = tmp_path / 'det.pkl'
    marker = str(tmp_path / 'code-ran')
    with open(path, 'wb') as fp:
        pickle.dump(Evil(marker), fp)
    args = ['ref', '--data', files.digits, '--dest', str(tmp_path / 'ref.npz'), '--detector', str(path), '--workers=0']
    line = one_error_line(CliRunner().invoke(fid.main, args))
    assert line.startswith('Error: --detector') and 'det.pkl' in line and '--trust-pickle' in line, line
    assert not os.path.exists(marker) and not os.path.exists(tmp_path / 'ref.npz')
    with open(path, 'wb') as fp:
        pickle.dump(torch.nn.Identity(), fp)
    assert isinstance(metrics._load_network_file(str(path), given=True, trust_pickle=True), torch.nn.Identity)
    assert isinstance(metrics._load_network_file(str(path), given=False), torch.nn.Identity)  # EDM's, downloaded by the program


# ----------------------------------------------------------------------------------------------
# Network files run no code and name no download: pickles are rebuilt onto our classes.


class EvilRecord:
    """A network in EDM's persistence format whose module source creates the folder `path` when
    executed (what every EDM pickle's loader used to do with the source it carries)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        from torch_utils import persistence
        src = f'import os\nos.mkdir({self.path!r})\nclass EDMPrecond:\n    pass\n'
        return persistence._reconstruct_persistent_obj, (dict(type='class', version=6, module_src=src, class_name='EDMPrecond',
                                                              state=dict(_init_args=[], _init_kwargs={})),)


def one_error_line(result):
    """The one `Error:` line of a script that failed cleanly (exit 1, no traceback)."""
    return one_line(result)


def load_command(script, path, tmp_path, files, trust=False):
    import convert_network
    extra = ['--trust-pickle'] if trust else []
    if script == 'generate':
        return generate.main, ['--network', path, '--outdir', str(tmp_path / 'out'), '--device=cpu'] + extra
    if script == 'train':
        return train.main, [a.format(tmp=tmp_path, digits=files.digits) for a in TRAIN] + ['--transfer', path, '-n'] + extra
    return convert_network.main, ['--network', path, '--dest', str(tmp_path / 'out.safetensors')] + extra


@pytest.mark.parametrize('payload', ['reduce', 'module-source'])
@pytest.mark.parametrize('place', ['alone', 'beside-training-options', 'symlinked-into-run'])
@pytest.mark.parametrize('script', ['generate', 'train', 'convert'])
def test_malicious_pickle_is_refused_without_running_and_runs_only_when_trusted(files, tmp_path, payload, place, script):
    marker = str(tmp_path / 'code-ran')
    folder = tmp_path / 'downloads'
    folder.mkdir()
    path = folder / 'network-snapshot-000100.pkl'
    with open(path, 'wb') as fp:
        pickle.dump(dict(ema=Evil(marker) if payload == 'reduce' else EvilRecord(marker)), fp)
    if place == 'beside-training-options':
        (folder / 'training_options.json').write_text('{}')
    if place == 'symlinked-into-run':
        link = os.path.join(files.run, f'network-snapshot-{abs(hash(str(tmp_path))) % 10**6:06d}.pkl')
        os.symlink(path, link)
        path = link
    try:
        command, args = load_command(script, str(path), tmp_path, files)
        line = one_error_line(CliRunner().invoke(command, args))
        assert str(path) in line and '--trust-pickle' in line, line
        assert 'posix.mkdir' in line or payload != 'reduce', line
        assert not os.path.exists(marker)
        command, args = load_command(script, str(path), tmp_path, files, trust=True)
        CliRunner().invoke(command, args)
        assert os.path.isdir(marker)  # what --trust-pickle means
    finally:
        if place == 'symlinked-into-run':
            os.unlink(path)


def test_our_snapshot_loads_whole_through_the_restricted_unpickler(files):
    """Every value of a train.py snapshot (network, loss, augmentation, data set options, id) is
    rebuilt without running code from the file."""
    from torch_utils import persistence
    from training import checkpoints
    (snapshot,) = [os.path.join(files.run, n) for n in os.listdir(files.run) if n.startswith('network-snapshot-') and n.endswith('.pkl')]
    executed = set(persistence._modules_by_src)
    data = checkpoints.load_snapshot(snapshot, '--network')
    assert set(persistence._modules_by_src) == executed
    with open(snapshot, 'rb') as fp:
        full = pickle.load(fp)
    assert set(data) == set(full) and data['snapshot_id'] == full['snapshot_id']
    assert type(data['ema']).__module__ == 'training.networks' and type(data['loss_fn']).__module__ == 'training.loss'
    assert data['loss_fn'].init_kwargs == full['loss_fn'].init_kwargs and data['dataset_kwargs'] == full['dataset_kwargs']
    x, sigma = torch.randn(2, 1, 16, 16), torch.tensor([0.5, 5.0])
    assert torch.equal(data['ema'](x, sigma), full['ema'](x, sigma))


def write_network_safetensors(path, meta_changes=None, tensors=None, encoder=None):
    """A .safetensors network file whose metadata (our format) is changed by `meta_changes`."""
    from safetensors.torch import save
    from training import checkpoints
    net = sampling_net(use_coords=False)
    class_name, args, kwargs = checkpoints.describe(net)
    meta = dict(class_name=class_name, init_args=args, init_kwargs=kwargs)
    if encoder is not None:
        meta['encoder'] = encoder
    for key, value in (meta_changes or {}).items():
        meta[key] = value
    weights = {k: v.contiguous() for k, v in net.state_dict().items()} if tensors is None else tensors
    with open(path, 'wb') as fp:
        fp.write(save(weights, metadata={checkpoints.METADATA_KEY: json.dumps(meta)}))
    return str(path)


def latent_safetensors(path, **encoder):
    from safetensors.torch import save
    from training import checkpoints, encoders, networks
    net = networks.EDMPrecond(img_resolution=8, img_channels=4, model_type='SongUNet', model_channels=8, channel_mult=[1, 2],
                              num_blocks=1, attn_resolutions=[4], dropout=0)
    class_name, args, kwargs = checkpoints.describe(net)
    settings = dict(class_name=checkpoints.ENCODER_CLASS, vae_name=encoders.DEFAULT_VAE, latent_norm='scale', scale=0.18215,
                    channel_mean=None, channel_std=None)
    settings.update(encoder)
    meta = dict(class_name=class_name, init_args=args, init_kwargs=kwargs, encoder=settings)
    with open(path, 'wb') as fp:
        fp.write(save({k: v.contiguous() for k, v in net.state_dict().items()}, metadata={checkpoints.METADATA_KEY: json.dumps(meta)}))
    return str(path)


@pytest.mark.parametrize('vae_name,words', [('someone/their-vae', ['a hub id', '--vae=someone/their-vae']),
                                             ('/no/such/vae-folder', ['/no/such/vae-folder', 'holds no VAE here'])])
def test_hub_id_in_a_file_never_downloads(tmp_path, monkeypatch, vae_name, words):
    from training import encoders
    path = latent_safetensors(tmp_path / 'latent.safetensors', vae_name=vae_name)

    def no_download(*args, **kwargs):
        raise AssertionError(f'a download was attempted: {args}')
    open_url = dnnlib.util.open_url
    monkeypatch.setattr(encoders, 'load_vae', no_download)
    monkeypatch.setattr(dnnlib.util, 'open_url', lambda url, *a, **k: no_download(url) if '://' in url else open_url(url, *a, **k))
    line = one_error_line(CliRunner().invoke(generate.main, ['--network', path, '--outdir', str(tmp_path / 'out'), '--device=cpu']))
    assert line.startswith('Error: --network') and 'latent.safetensors' in line, line
    for word in words:
        assert word in line, line
    assert not os.path.exists(tmp_path / 'out')


def test_hub_id_in_a_latent_data_set_or_for_fid_gen_never_downloads(files, tmp_path, monkeypatch):
    from training import encoders
    monkeypatch.setattr(encoders, 'load_vae', lambda *args, **kwargs: pytest.fail(f'a download was attempted: {args}'))
    network = latent_safetensors(tmp_path / 'latent.safetensors', vae_name='someone/their-vae')
    line = one_line(CliRunner().invoke(fid.main, ['gen', f'--network={network}', f'--ref={files.stats}', '--num=2', '--steps=2',
                                                  f'--detector={files.det}', '--device=cpu']), '--network', 'a hub id')
    assert '--vae=someone/their-vae' in line, line
    data = tmp_path / 'latents.zip'
    latents = dict(encoder='vae', vae='someone/their-vae', shape=[8, 4, 4], channels=4, flips=1, dtype='float32')
    with zipfile.ZipFile(data, 'w') as z:
        for i in range(2):
            buf = io.BytesIO()
            np.save(buf, np.zeros((1, 8, 4, 4), np.float32))
            z.writestr(f'00000/img{i:08d}.npy', buf.getvalue())
        z.writestr('dataset.json', json.dumps(dict(labels=None, latents=latents)))
    args = [a.format(tmp=tmp_path, digits=data) for a in TRAIN] + ['--cres=1', '--attn=none', '-n']
    one_line(CliRunner().invoke(train.main, args), '--data', 'latents.zip', 'a hub id', '--vae=someone/their-vae')
    assert not os.path.exists(tmp_path / 'runs')


@pytest.mark.parametrize('change,words', [
    (dict(init_kwargs_update=dict(model_channels=8000)), ['far larger than the weights']),
    (dict(init_kwargs_update=dict(num_blocks=3000)), ['far larger than the weights', 'modules']),
    (dict(init_kwargs_update=dict(num_blocks=10**9)), ['num_blocks=1000000000', 'larger than']),
    (dict(init_kwargs_update=dict(model_channels=12)), ['do not fit', 'shape']),
    (dict(init_kwargs_update=dict(model_type='Bogus')), ['constructor arguments do not fit']),
    (dict(init_kwargs='nonsense'), ['no constructor arguments']),
    (dict(encoder='x'), ['unknown latent decoder']),
    (dict(encoder=dict(class_name='training.encoders.StabilityVAEEncoder', vae_name=5)), ['names no VAE']),
    (dict(encoder=dict(class_name='training.encoders.StabilityVAEEncoder', vae_name='v', channel_std=[0, 1, 1, 1],
                       channel_mean=[0] * 4, latent_norm='channel')), ['channel_std']),
    (dict(encoder=dict(class_name='training.encoders.StabilityVAEEncoder', vae_name='v', shell='rm')), ['unknown settings', 'shell']),
])
def test_malformed_safetensors_metadata_is_one_line_before_any_network_is_built(tmp_path, change, words):
    from torch.nn.modules import module as module_lib
    from training import checkpoints
    change = dict(change)
    update = change.pop('init_kwargs_update', None)
    if update is not None:
        kwargs = checkpoints.describe(sampling_net(use_coords=False))[2]
        change['init_kwargs'] = dict(kwargs, **update)
    path = write_network_safetensors(tmp_path / 'net.safetensors', change)
    real = []  # parameters allocated in memory (not on the meta device): none may be
    handle = module_lib.register_module_parameter_registration_hook(
        lambda _m, name, p: real.append(name) if p is not None and p.device.type != 'meta' else None)
    try:
        result = CliRunner().invoke(generate.main, ['--network', path, '--outdir', str(tmp_path / 'out'), '--device=cpu'])
    finally:
        handle.remove()
    line = one_error_line(result)
    assert line.startswith('Error: --network') and 'net.safetensors' in line, line
    for word in words:
        assert word in line, line
    assert real == [] and not os.path.exists(tmp_path / 'out')


def test_stale_snapshot_pair_is_refused_in_one_line(tmp_path):
    from training import checkpoints
    path = str(tmp_path / 'network-snapshot-000004.pkl')
    checkpoints.save_snapshot_pair(path, dict(ema=sampling_net(seed=1)))
    stale = open(checkpoints.safetensors_path(path), 'rb').read()
    checkpoints.save_snapshot_pair(path, dict(ema=sampling_net(seed=2)))
    with open(checkpoints.safetensors_path(path), 'wb') as fp:
        fp.write(stale)
    line = one_error_line(CliRunner().invoke(generate.main, ['--network', checkpoints.safetensors_path(path), '--outdir',
                                                             str(tmp_path / 'out'), '--device=cpu']))
    assert 'different saves' in line and 'network-snapshot-000004.pkl' in line, line
    assert not os.path.exists(tmp_path / 'out')


@pytest.mark.parametrize('dest', ['readme', 'input', 'pickle-name', 'foreign-safetensors'])
def test_convert_network_replaces_only_what_it_wrote(files, tmp_path, dest):
    import convert_network
    source = tmp_path / 'net.pkl'
    source.write_bytes(open(files.net, 'rb').read())
    ours = tmp_path / 'ours.safetensors'
    assert CliRunner().invoke(convert_network.main, ['--network', str(source), '--dest', str(ours)]).exit_code == 0
    target = {'readme': tmp_path / 'README.md', 'input': ours, 'pickle-name': source,
              'foreign-safetensors': tmp_path / 'other.safetensors'}[dest]
    network = str(ours) if dest == 'input' else str(source)
    if dest == 'readme':
        target.write_text('# my notes\n')
    if dest == 'foreign-safetensors':
        from safetensors.torch import save_file
        save_file({'w': torch.zeros(3)}, str(target))
    before = disk_state(tmp_path)
    line = one_error_line(CliRunner().invoke(convert_network.main, ['--network', network, '--dest', str(target)]))
    assert line.startswith(f'Error: --dest={target}'), line
    assert disk_state(tmp_path) == before
    again = CliRunner().invoke(convert_network.main, ['--network', str(source), '--dest', str(ours)])
    assert again.exit_code == 0, again.output  # its own earlier output is replaced


def test_pickle_asking_for_a_huge_network_is_refused_before_building_it(tmp_path):
    net = sampling_net(use_coords=False)
    net._init_kwargs['model_channels'] = 8000  # what the pickle records as constructor arguments
    path = tmp_path / 'huge.pkl'
    with open(path, 'wb') as fp:
        pickle.dump(dict(ema=net), fp)
    line = one_error_line(CliRunner().invoke(generate.main, ['--network', str(path), '--outdir', str(tmp_path / 'out'), '--device=cpu']))
    assert line.startswith('Error: --network') and 'huge.pkl' in line and 'far larger than the weights' in line, line



def test_pickled_weights_that_repeat_a_few_numbers_are_refused_before_building(tmp_path):
    net = sampling_net(use_coords=False)
    weight = next(p for p in net.parameters() if p.ndim == 4)
    weight.data = torch.zeros(1).expand(weight.shape)  # pickles as one number with stride 0
    path = tmp_path / 'strided.pkl'
    with open(path, 'wb') as fp:
        pickle.dump(dict(ema=net), fp)
    line = one_error_line(CliRunner().invoke(generate.main, ['--network', str(path), '--outdir', str(tmp_path / 'out'), '--device=cpu']))
    assert line.startswith('Error: --network') and 'strided.pkl' in line and 'repeat' in line, line


def shared_lists(width, depth):
    """Nested lists that reuse one list at every level: `width ** depth` leaves in a small pickle."""
    value = [0]
    for _ in range(depth):
        value = [value] * width
    return value


def test_shared_lists_in_a_pickle_are_walked_once(tmp_path):
    from training import checkpoints
    net = sampling_net(use_coords=False)
    net._init_kwargs['extra'] = shared_lists(50, 12)
    path = tmp_path / 'lists.pkl'
    with open(path, 'wb') as fp:
        pickle.dump(dict(ema=net), fp)
    line = one_error_line(CliRunner().invoke(generate.main, ['--network', str(path), '--outdir', str(tmp_path / 'out'), '--device=cpu']))
    assert line.startswith('Error: --network') and 'extra' in line, line
    with open(path, 'wb') as fp:
        pickle.dump(dict(ema=sampling_net(use_coords=False), notes=shared_lists(50, 25)), fp)
    assert len(checkpoints.load_snapshot(str(path))['notes']) == 50

def test_reconstruct_phema_reads_the_run_snapshot_without_running_code(tmp_path):
    import reconstruct_phema
    marker = str(tmp_path / 'code-ran')
    with open(tmp_path / run_files.snapshot_name(7), 'wb') as fp:
        pickle.dump(dict(ema=Evil(marker)), fp)
    with pytest.raises(dnnlib.util.UserError, match='--indir: .*posix.mkdir.*--trust-pickle'):
        reconstruct_phema.load_template(str(tmp_path), 7)
    assert not os.path.exists(marker)
    reconstruct_phema.load_template(str(tmp_path), 7, trust_pickle=True)
    assert os.path.isdir(marker)

def test_reconstruct_phema_refuses_broken_profiles_and_those_of_another_network(files, tmp_path):
    import reconstruct_phema
    from training import checkpoints, phema
    run = tmp_path / 'run'
    shutil.copytree(files.run, run)
    net = checkpoints.load_snapshot(str(run / run_files.snapshot_name(0)), 'network')['ema']
    profiles = str(run / phema.phema_name(0))
    phema.PowerEMA(net, [0.05, 0.1]).save(str(run), 0, 3, 24)
    good = torch.load(profiles, weights_only=True)
    args = [f'--indir={run}', f'--outdir={tmp_path}/out', '--outstd=0.07']
    assert CliRunner().invoke(reconstruct_phema.main, args).exit_code == 0
    marker = str(tmp_path / 'code-ran')
    broken = dict(nan=dict(good, gamma=[float('nan'), 1.0]), short=dict(good, averages=good['averages'][:1]),
                  negative=dict(good, step=-10), code=dict(good, averages=[Evil(marker)] * 2))
    for name, state in broken.items():
        torch.save(state, profiles)
        one_line(CliRunner().invoke(reconstruct_phema.main, args), '--indir', profiles,
                 'not a readable profile' if name == 'code' else 'not a profile file')
    assert not os.path.exists(marker)
    os.remove(profiles)
    os.mkfifo(profiles)
    one_line(CliRunner().invoke(reconstruct_phema.main, args), '--indir', 'named pipe')
    os.remove(profiles)
    phema.PowerEMA(sampling_net(img_channels=1), [0.05]).save(str(run), 0, 3, 24)
    one_line(CliRunner().invoke(reconstruct_phema.main, args), '--indir', 'another network')

# ----------------------------------------------------------------------------------------------
# Nothing lost, bounded, one line always: special files, bombs, reference statistics, full
# disks, long names, run folders, resume and the compile cache.


def one_line(result, *words, code=1):
    """Asserts that a click run ended with exit `code` and one `Error:` line holding `words`."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.output.splitlines() if line.startswith('Error:')]
    assert len(lines) == 1 and 'Traceback' not in result.output, result.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def npz_claiming(path, key, shape, compressed=True, dtype='|u1'):
    """An .npz whose member `key` declares `shape` in its header but holds a few bytes only."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, dict(descr=dtype, fortran_order=False, shape=shape))
    with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED) as z:
        z.writestr(key + '.npy', header.getvalue() + b'\0' * 64)
    return str(path)


def npy_bytes(array):
    """`array` as the bytes of a .npy file."""
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def patch_central_directory(path, name, offset, fmt, value):
    """Overwrites a field (at `offset` of the central-directory entry of member `name`) of a zip."""
    data = bytearray(open(path, 'rb').read())
    entry = data.index(b'PK\x01\x02')
    while data[entry + 46:entry + 46 + len(name)] != name.encode():
        entry = data.index(b'PK\x01\x02', entry + 4)
    struct.pack_into(fmt, data, entry + offset, value)
    open(path, 'wb').write(bytes(data))


@pytest.fixture(scope='module')
def special(tmp_path_factory):
    """Named pipes and device links, kept out of the folders `disk_state` reads."""
    root = tmp_path_factory.mktemp('special')
    os.mkfifo(root / 'pipe.npz')
    os.mkfifo(root / 'pipe-ref.npz')
    os.symlink('/dev/zero', root / 'zero.npz')
    os.makedirs(root / 'piped-images')
    for i, img in enumerate(digit_images(2)):
        (root / 'piped-images' / f'{i}.png').write_bytes(png_bytes(img))
    os.mkfifo(root / 'piped-images' / 'z.png')
    os.makedirs(root / 'piped-json')
    (root / 'piped-json' / '0.png').write_bytes(png_bytes(digit_images(1)[0]))
    os.mkfifo(root / 'piped-json' / 'dataset.json')
    return root


def test_special_files_are_refused_without_being_opened(special, files, tmp_path):
    runner = CliRunner()
    one_line(runner.invoke(dataset_tool.cli, [f'--source={special}/pipe.npz', f'--dest={tmp_path}/d.zip']), 'pipe.npz', 'named pipe')
    one_line(runner.invoke(dataset_tool.cli, [f'--source={special}/zero.npz', f'--dest={tmp_path}/d.zip']), 'zero.npz', 'device')
    one_line(runner.invoke(dataset_tool.cli, [f'--source={special}/piped-images', f'--dest={tmp_path}/d.zip']), 'z.png', 'named pipe')
    one_line(runner.invoke(dataset_tool.cli, [f'--source={special}/piped-json', f'--dest={tmp_path}/d.zip']), 'dataset.json', 'named pipe')
    one_line(runner.invoke(fid.main, ['calc', f'--images={files.digits}', f'--ref={special}/pipe-ref.npz', f'--detector={files.det}']),
             'pipe-ref.npz', 'named pipe')
    import convert_network
    one_line(runner.invoke(generate.main, [f'--network={special}/pipe.npz', f'--outdir={tmp_path}/out']), '--network', 'named pipe')
    one_line(runner.invoke(convert_network.main, [f'--network={special}/zero.npz', f'--dest={tmp_path}/n.safetensors']),
             '--network', 'device')
    with pytest.raises(dnnlib.util.UserError, match='named pipe'):
        dataset_lib.ImageFolderDataset(str(special / 'piped-images'))
    assert os.listdir(tmp_path) == []


def test_headers_are_sized_before_anything_is_read(files, tmp_path):
    runner = CliRunner()
    huge = npz_claiming(tmp_path / 'huge.npz', 'images', (10**9, 1000, 1000))  # 10^15 bytes from 1 kB
    one_line(runner.invoke(dataset_tool.cli, [f'--source={huge}', f'--dest={tmp_path}/d.zip']), 'huge.npz', 'header declares')
    lying = npz_claiming(tmp_path / 'lying.npz', 'images', (10**6, 64, 64), compressed=False)
    one_line(runner.invoke(dataset_tool.cli, [f'--source={lying}', f'--dest={tmp_path}/d.zip']), 'lying.npz', 'not a readable')
    labels = npz_claiming(tmp_path / 'labels.npz', 'labels', (10**12,), dtype='<i8')
    with zipfile.ZipFile(labels, 'a') as z:
        z.writestr('images.npy', npy_bytes(np.zeros((2, 4, 4), np.uint8)))
    one_line(runner.invoke(dataset_tool.cli, [f'--source={labels}', f'--dest={tmp_path}/d.zip']), 'labels.npz', '"labels"')
    idx = tmp_path / 'huge-images-idx3-ubyte.gz'
    with gzip.open(idx, 'wb') as fp:  # 4 billion 28x28 images declared, a few bytes given
        fp.write(b'\0\0\x08\x03' + struct.pack('>III', 4 * 10**9, 28, 28) + b'\0' * 100)
    one_line(runner.invoke(dataset_tool.cli, [f'--source={idx}', f'--dest={tmp_path}/d.zip']), 'idx3-ubyte.gz', 'needs at least')
    wide = tmp_path / 'wide-images-idx3-ubyte.gz'
    with gzip.open(wide, 'wb') as fp:
        fp.write(b'\0\0\x08\x03' + struct.pack('>III', 1, 10000, 10000))
    one_line(runner.invoke(dataset_tool.cli, [f'--source={wide}', f'--dest={tmp_path}/d.zip']), '10000x10000', 'limit')
    short = tmp_path / 'short-images-idx3-ubyte.gz'
    with gzip.open(short, 'wb') as fp:  # the declared 2 images, then 10 MB that are never inflated into memory
        fp.write(b'\0\0\x08\x03' + struct.pack('>III', 2, 28, 28) + b'\7' * (2 * 28 * 28) + b'\0' * 10**7)
    result = runner.invoke(dataset_tool.cli, [f'--source={short}', f'--dest={tmp_path}/short.zip'])
    assert result.exit_code == 0 and len(dataset_lib.ImageFolderDataset(str(tmp_path / 'short.zip'))) == 2, result.output
    os.remove(tmp_path / 'short.zip')

    bomb = tmp_path / 'bomb.zip'  # a PNG member whose central directory declares 3 GiB
    write_zip(bomb, image_members(digit_images(2)))
    patch_central_directory(bomb, '00000/img00000001.png', 24, '<I', 3 << 30)
    one_line(runner.invoke(dataset_tool.cli, [f'--source={bomb}', f'--dest={tmp_path}/d.zip']), 'img00000001.png', 'bytes')
    for offset, fmt, value, words in ((8, '<H', 1, 'encrypted'), (10, '<H', 9, 'Deflate64')):
        odd = tmp_path / f'odd{value}.zip'
        write_zip(odd, image_members(digit_images(2)))
        patch_central_directory(odd, '00000/img00000001.png', offset, fmt, value)
        one_line(runner.invoke(dataset_tool.cli, [f'--source={odd}', f'--dest={tmp_path}/d.zip']), 'img00000001.png', words)
        one_line(runner.invoke(train.main, [a.format(tmp=tmp_path, digits=odd) for a in TRAIN] + ['-n']), 'img00000001.png', words)
        one_line(runner.invoke(fid.main, ['ref', f'--data={odd}', f'--dest={tmp_path}/r.npz', f'--detector={files.det}',
                                          '--workers=0']), 'img00000001.png', words)
    assert sorted(os.listdir(tmp_path)) == sorted(['huge.npz', 'lying.npz', 'labels.npz', idx.name, wide.name, short.name, 'bomb.zip',
                                                   'odd1.zip', 'odd9.zip'])


@pytest.mark.parametrize('compression', [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED])
def test_npz_member_that_ends_before_its_header_says_is_one_line(tmp_path, compression):
    """A member whose npy header and zip sizes declare 8 images but whose data holds 3 (its CRC
    matches what is there) fails while streaming, and leaves nothing behind."""
    data = npy_bytes(np.zeros((8, 64, 64), np.uint8))[:-5 * 64 * 64]
    src = tmp_path / 'short.npz'
    with zipfile.ZipFile(src, 'w', compression=compression) as z:
        z.writestr('images.npy', data)
    patch_central_directory(src, 'images.npy', 24, '<I', len(data) + 5 * 64 * 64)  # the declared unpacked size
    line = one_line(CliRunner().invoke(dataset_tool.cli, [f'--source={src}', f'--dest={tmp_path}/d.zip']), 'short.npz', '"images"')
    assert f'ends after {3 * 64 * 64:,} of the {8 * 64 * 64:,} bytes' in line, line
    assert os.listdir(tmp_path) == ['short.npz']


def test_labels_that_would_be_garbage_or_huge_are_refused(tmp_path):
    runner = CliRunner()
    images = np.stack(digit_images(2))
    for name, labels, words in (('nan', np.array([0.5, np.nan]), 'NaN'), ('huge', np.array([0, 2**40]), 'less than'),
                                ('overflow', np.array([1e300, 0]), 'float32')):
        np.savez(tmp_path / f'{name}.npz', images=images, labels=labels)
        one_line(runner.invoke(dataset_tool.cli, [f'--source={tmp_path}/{name}.npz', f'--dest={tmp_path}/d.zip']), f'{name}.npz', words)
    for name, label, words in (('json-huge', 2**40, 'less than'), ('json-nan', float('nan'), 'finite')):
        members = image_members(digit_images(2))
        path = write_zip(tmp_path / f'{name}.zip', members, [[n, label] for n in members])
        with pytest.raises(dnnlib.util.UserError, match=words):
            dataset_lib.ImageFolderDataset(path, use_labels=True).get_label(0)
    assert not os.path.exists(tmp_path / 'd.zip')


def test_reference_statistics_are_validated_before_the_features(files, tmp_path):
    good = np.diag(np.random.default_rng(0).random(2048))
    cases = dict(nan=(np.zeros(2048), np.where(np.eye(2048) > 0, np.nan, good), 'NaN'),
                 negative=(np.zeros(2048), -np.eye(2048), 'negative eigenvalue'),
                 skewed=(np.zeros(2048), good + np.triu(np.ones((2048, 2048)), 1), 'not symmetric'),
                 small=(np.zeros(64), np.eye(64), 'expected (2048,)'), huge=(np.zeros(2048), np.eye(2048) * 1e305, 'beyond'))
    for name, (mu, sigma, words) in cases.items():
        path = str(tmp_path / f'{name}.npz')
        np.savez(path, mu=mu, sigma=sigma)
        with pytest.raises(dnnlib.util.UserError, match=re.escape(words)):
            metrics.load_stats(path)
    # The CLI reports it before the detector (here a missing file) is even looked at.
    one_line(CliRunner().invoke(fid.main, ['calc', f'--images={files.digits}', f'--ref={tmp_path}/negative.npz',
                                           f'--detector={tmp_path}/no-such-detector.pt']), 'negative.npz', 'negative eigenvalue')
    extra = npz_claiming(tmp_path / 'extra.npz', 'junk', (10**9, 10**6))  # a member that is never read
    with zipfile.ZipFile(extra, 'a') as z:
        for key, value in (('mu', np.zeros(2048)), ('sigma', good)):
            buf = io.BytesIO()
            np.save(buf, value)
            z.writestr(key + '.npy', buf.getvalue())
    mu, sigma = metrics.load_stats(extra)
    assert mu.shape == (2048,) and np.array_equal(sigma, good)


def test_features_too_few_for_a_metric_name_their_file(files, tmp_path):
    path = tmp_path / 'few.npz'
    np.savez(path, mu=np.zeros(2048), sigma=np.eye(2048), features=np.ones((3, 2048), np.float32))
    with pytest.raises(dnnlib.util.UserError, match='few.npz: holds the features of 3 images; precision/recall needs at least 4'):
        metrics.load_reference(str(path), ('fid', 'pr'))
    np.savez(path, features=np.ones((1, 2048), np.float32))
    one_line(CliRunner().invoke(fid.main, ['kid', f'--images={path}', f'--ref={files.digits}', f'--detector={files.det}']),
             'few.npz', 'KID needs at least 2')


def test_overwrite_judges_a_destination_by_its_contents(files, tmp_path):
    runner = CliRunner()
    dest = tmp_path / 'd'
    assert runner.invoke(dataset_tool.cli, [f'--source={files.npz}', f'--dest={dest}']).exit_code == 0
    os.makedirs(dest / '12345')
    (dest / '12345' / 'thesis.tex').write_text('four years of work')
    one_line(runner.invoke(dataset_tool.cli, [f'--source={files.npz}', f'--dest={dest}', '--overwrite']), '--dest', 'not a data set')
    assert (dest / '12345' / 'thesis.tex').read_text() == 'four years of work'
    os.remove(dest / '12345' / 'thesis.tex')
    (dest / '12345' / 'img00000000.png').write_text('a PNG by name only')
    one_line(runner.invoke(dataset_tool.cli, [f'--source={files.npz}', f'--dest={dest}', '--overwrite']), '--dest', 'not a data set')
    shutil.rmtree(dest / '12345')
    os.symlink(files.notes, dest / '00000' / 'img00000099.png')
    one_line(runner.invoke(dataset_tool.cli, [f'--source={files.npz}', f'--dest={dest}', '--overwrite']), '--dest', 'not a data set')
    os.remove(dest / '00000' / 'img00000099.png')
    result = runner.invoke(dataset_tool.cli, [f'--source={files.npz}', f'--dest={dest}', '--overwrite', '--max-images=2'])
    assert result.exit_code == 0, result.output  # what the tool wrote is still replaced
    assert len(dataset_lib.ImageFolderDataset(str(dest))) == 2
    fake = tmp_path / 'fake.zip'
    write_zip(fake, {'00000/img00000000.png': b'not a png'})
    one_line(runner.invoke(dataset_tool.cli, [f'--source={files.npz}', f'--dest={fake}', '--overwrite']), '--dest', 'not a data set')


def test_overwrite_spares_the_source_and_a_foreign_dataset_json(files, tmp_path):
    runner = CliRunner()
    folder, archive = tmp_path / 'd', tmp_path / 'd.zip'
    for dest in (folder, archive):
        assert runner.invoke(dataset_tool.cli, [f'--source={files.npz}', f'--dest={dest}']).exit_code == 0
    project = tmp_path / 'project'
    project.mkdir()
    (project / 'dataset.json').write_text(json.dumps({'name': 'my experiment', 'labels': None}))
    before = disk_state(tmp_path)
    for source, dest, words in ((folder, folder, 'is the --source'), (archive, archive, 'is the --source'),
                                (folder / '00000', folder, 'holds the --source'), (files.npz, project, 'not a data set')):
        one_line(runner.invoke(dataset_tool.cli, [f'--source={source}', f'--dest={dest}', '--overwrite', '--resolution=8x8']),
                 '--dest', words)
    assert disk_state(tmp_path) == before


def test_image_and_statistics_outputs_replace_only_their_own_kind(files, special, tmp_path):
    runner = CliRunner()
    ref = tmp_path / 'ref.npz'
    np.savez(ref, mu=np.zeros(2048), sigma=np.eye(2048), thesis=np.arange(3))
    (tmp_path / 'photo.png').write_bytes(b'\xff\xd8\xff\xe0 a JPEG named .png')
    os.mkfifo(special / 'grid.png')
    before = disk_state(tmp_path)
    one_line(runner.invoke(fid.main, ['ref', f'--data={files.digits}', f'--dest={ref}', f'--detector={files.det}']),
             '--dest', 'not replacing')
    one_line(runner.invoke(fid.main, ['mem', f'--images={files.digits}', f'--data={files.digits}', f'--pairs={tmp_path}/photo.png']),
             '--pairs', 'not a PNG')
    one_line(runner.invoke(generate.main, [f'--network={files.net}', f'--grid={special}/grid.png']), '--grid', 'not a regular file')
    assert disk_state(tmp_path) == before


def test_nosubdir_never_writes_over_another_run(files, tmp_path):
    run = tmp_path / 'run'
    shutil.copytree(files.run, run)
    before = disk_state(run)
    train_args = [a.format(tmp=tmp_path, digits=files.digits) for a in TRAIN] + TINY_RUN + [f'--outdir={run}', '--nosubdir']
    one_line(CliRunner().invoke(train.main, train_args), '--outdir', 'another run', f'--resume={run}')
    assert disk_state(run) == before
    result = CliRunner().invoke(train.main, train_args + [f'--resume={run}', '-n'])  # continuing it in place
    assert result.exit_code == 0, result.output


def test_a_full_disk_is_one_line_and_leaves_no_file(files, tmp_path, monkeypatch):
    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, 'No space left on device')
    with pytest.raises(dnnlib.util.UserError, match='no space left on the device'):
        with dnnlib.util.atomic_write(tmp_path / 'a.bin', 'wb') as fp:
            full(fp)
    with pytest.raises(dnnlib.util.UserError, match='a.bin: larger than the file-size limit'):
        with dnnlib.util.atomic_write(tmp_path / 'a.bin', 'wb') as fp:
            raise OSError(errno.EFBIG, 'File too large')
    assert os.listdir(tmp_path) == []
    log = dnnlib.util.Logger(file_name=str(tmp_path / 'log.txt'))
    try:
        monkeypatch.setattr(log, 'file', mock_file(full))
        with pytest.raises(dnnlib.util.UserError, match='log.txt: no space left'):
            log.write('a line\n')
        log.write('the console goes on\n')
    finally:
        log.close()
    runner = CliRunner()
    with monkeypatch.context() as patch:
        patch.setattr(dataset_tool.DatasetWriter, 'add_file', full)
        one_line(runner.invoke(dataset_tool.cli, [f'--source={files.npz}', f'--dest={tmp_path}/d.zip']), 'd.zip', 'no space left')
    with monkeypatch.context() as patch:
        patch.setattr(np, 'savez', full)
        one_line(runner.invoke(fid.main, ['ref', f'--data={files.digits}', f'--dest={tmp_path}/r.npz', f'--detector={files.det}',
                                          '--workers=0']), 'r.npz', 'no space left')
    with monkeypatch.context() as patch:
        patch.setattr(PIL.Image.Image, 'save', full)
        one_line(runner.invoke(generate.main, [f'--network={files.net}', f'--outdir={tmp_path}/out', '--seeds=0',
                                                              '--steps=2', '--device=cpu']), '000000.png', 'no space left')
    with monkeypatch.context() as patch:
        patch.setattr(run_files, 'append_stats', full)
        one_line(runner.invoke(train.main, [a.format(tmp=tmp_path, digits=files.digits) for a in TRAIN] + TINY_RUN), 'no space left')
    leftovers = [os.path.join(r, n) for r, _d, names in os.walk(tmp_path) for n in names if n.endswith('.tmp')]
    assert leftovers == [] and not os.path.exists(tmp_path / 'd.zip') and not os.path.exists(tmp_path / 'r.npz')


def mock_file(write):
    """A stand-in for an open file whose writes and flushes call `write`."""
    return type('Full', (), dict(name='log.txt', write=lambda self, *a: write(), flush=lambda self: write(),
                                 close=lambda self: None))()


def test_names_too_long_for_the_file_system_fail_first(files, tmp_path):
    runner = CliRunner()
    long = 'x' * 240
    one_line(runner.invoke(dataset_tool.cli, [f'--source={files.npz}', f'--dest={tmp_path}/{long}.zip']), '--dest', 'bytes')
    one_line(runner.invoke(fid.main, ['ref', f'--data={files.digits}', f'--dest={tmp_path}/{long}.npz', f'--detector={files.det}']),
             '--dest', 'bytes')
    one_line(runner.invoke(generate.main, [f'--network={files.net}', f'--grid={tmp_path}/{long}.png', '--device=cpu']), '--grid', 'bytes')
    one_line(runner.invoke(generate.main, [f'--network={files.net}', f'--outdir={tmp_path}/{"y" * 300}', '--device=cpu']), '--outdir', 'bytes')
    one_line(runner.invoke(train.main, [a.format(tmp=tmp_path, digits=files.digits) for a in TRAIN] + [f'--desc={long}', '-n']),
             '--desc', 'bytes')
    assert os.listdir(tmp_path) == []


OPTION_CASES = [  # (script, arguments, exit code, words)
    ('train', TRAIN + ['--desc=../escape', '-n'], 1, ['--desc', 'plain name']),
    ('train', TRAIN + ['--device=meta', '-n'], 1, ['--device=meta']),
    ('train', TRAIN + ['--cbase=100000000000000000000000', '-n'], 1, ['--cbase', 'cannot be built']),
    ('train', TRAIN + ['--cbase=1000000', '-n'], 1, ['--cbase/--cres/--blocks/--batch: ', 'needs at least']),
    ('train', TRAIN + ['--seed=-1', '-n'], 2, ['--seed']),
    ('train', TRAIN + ['--cbase=5', '-n'], 1, ['--cbase=5', 'even --cbase']),
    ('generate', GENERATE + ['--outdir={tmp}/out', '--sigma_max=1e39'], 1, ['--sigma_max', 'float32']),
    ('generate', GENERATE + ['--outdir={tmp}/out', '--S_noise=-1e30', '--S_churn=40'], 1, ['--S_noise', 'between 0']),
    ('generate', GENERATE + ['--outdir={tmp}/out', '--x_start=100000000000000000000'], 1, ['--x_start', '2^24']),
    ('generate', GENERATE + ['--outdir={tmp}/out', '--image_size=8000', '--batch=64'], 1, ['--batch/--image_size', 'needs at least']),
    ('generate', GENERATE + ['--outdir={tmp}/out', '--device=meta'], 1, ['--device=meta']),
    ('fid', ['calc', '--images={digits}', '--ref={stats}', '--device=meta', '--detector={det}'], 1, ['--device=meta']),
    ('fid', ['kid', '--images={digits}', '--ref={digits}', '--num=4', '--detector={det}', '--seed=-1'], 2, ['--seed']),
    ('train', TRAIN + ['--seed=18446744073709551616', '-n'], 2, ['--seed']),  # seeds mix modulo 2^63: 2^64 would be seed 0
    ('train', TRAIN + ['--blocks=20000', '-n'], 2, ['--blocks']),
    ('train', TRAIN + ['--device=xpu', '-n'], 1, ['--device=xpu', 'not available']),
    ('generate', GENERATE + ['--outdir={tmp}/out', '--device=mps'], 1, ['--device=mps', 'not available']),
    ('generate', GENERATE + ['--outdir={tmp}/out', '--steps=2147483647'], 2, ['--steps']),
    ('fid', ['calc', '--images={digits}', '--ref={stats}', '--detector={det}', '--device='], 1, ['--device', 'empty']),
    ('fid', ['kid', '--images={digits}', '--ref={digits}', '--subsets=1000000000', '--detector={det}'], 2, ['--subsets']),
    ('fid', ['gen', '--network={net}', '--ref={stats}', '--num=2', '--first-seed=4294967295', '--detector={det}', '--device=cpu'],
     1, ['--num', '2^32']),
    ('fid', ['gen', '--network={net}', '--ref={stats}', '--num=2', '--first-seed=18446744073709551615', '--detector={det}',
             '--device=cpu'], 1, ['--first-seed', '2^32']),
    ('train', TRAIN + ['--cres=' + ','.join(['1'] * 40), '-n'], 1, ['--cres', '39 times', 'at most 5 multipliers']),
    ('generate', GENERATE + ['--grid={tmp}/' + 'a/' * 2100 + 'g.png', '--seeds=0-1'], 1, ['--grid', 'paths of at most']),
    ('generate', GENERATE + ['--outdir={tmp}/' + 'b/' * 300 + 'out', '--seeds=0-1'], 1, ['--outdir', '301 nested folders']),
]


@pytest.mark.parametrize('script, args, code, words', OPTION_CASES, ids=[f'{c[0]}-{c[1][-2]}' for c in OPTION_CASES])
def test_option_values_beyond_what_works_are_refused(script, args, code, words, files, tmp_path):
    args = [a.format(tmp=tmp_path, **files) for a in args]
    one_line(CliRunner().invoke(SCRIPTS[script], args), *words, code=code)
    assert not os.path.exists(tmp_path / 'runs') and not os.path.exists(tmp_path / 'out')


def test_zip_with_two_members_of_one_name_is_refused(tmp_path):
    members = image_members(digit_images(4))
    path = write_zip(tmp_path / 'twice.zip', members, None)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # zipfile warns of the duplicate it is asked to write
        with zipfile.ZipFile(path, 'a') as z:
            z.writestr('dataset.json', json.dumps({'labels': [[n, 7] for n in members]}))
    args = [a.format(tmp=tmp_path, digits=path) for a in TRAIN] + ['--cond=1', '-n']
    one_line(CliRunner().invoke(train.main, args), 'twice.zip', 'more than one member named dataset.json')
    one_line(CliRunner().invoke(dataset_tool.cli, ['--source', path, '--dest', str(tmp_path / 'o.zip')]), 'dataset.json')
    assert not os.path.exists(tmp_path / 'runs') and not os.path.exists(tmp_path / 'o.zip')


def test_cifar_batch_with_fewer_labels_than_images_is_one_line(tmp_path):
    batch = pickle.dumps({b'data': np.zeros((10, 3072), np.uint8), b'labels': [1, 2, 3]}, protocol=2)
    path = tmp_path / 'cifar-10-python.tar.gz'
    with tarfile.open(path, 'w:gz') as tar:
        for i in range(1, 6):
            info = tarfile.TarInfo(f'cifar-10-batches-py/data_batch_{i}')
            info.size = len(batch)
            tar.addfile(info, io.BytesIO(batch))
    result = CliRunner().invoke(dataset_tool.cli, ['--source', str(path), '--dest', str(tmp_path / 'o.zip')])
    one_line(result, 'cifar-10-python.tar.gz', '15 labels for 50 images')


def test_optimizer_moments_of_another_shape_are_refused_before_a_step():
    param = torch.nn.Parameter(torch.zeros(3, 2))
    optimizer = torch.optim.Adam([param])
    param.grad = torch.ones(3, 2)
    optimizer.step()
    state = optimizer.state_dict()
    state['state'][0]['exp_avg'] = torch.zeros(1)
    with pytest.raises(ValueError, match=r'"exp_avg" of parameter 0 is \(1,\) torch.float32, not \(3, 2\)'):
        training_state.load_optimizer_state(optimizer, state)
    state['state'][0]['exp_avg'], state['state'][0]['step'] = torch.zeros(3, 2), torch.zeros(4)
    with pytest.raises(ValueError, match='"step" of parameter 0 is not one number'):
        training_state.load_optimizer_state(optimizer, state)


def test_fp16_on_a_cpu_says_it_trains_in_fp32(files, tmp_path):
    result = CliRunner().invoke(train.main, [a.format(tmp=tmp_path, digits=files.digits) for a in TRAIN] + ['--precision=fp16', '-n'])
    assert result.exit_code == 0 and '--precision=fp16: half precision runs on CUDA only; training in fp32' in result.output
    assert '"use_fp16": false' in result.output


def test_memory_checks_see_the_address_space_limit():
    code = ('import resource; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)); '
            'from training import file_limits; print(file_limits.available_memory())')
    free = int(subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    assert 0 < free < 3 << 30


def test_the_memory_bound_counts_the_encoder_outputs_a_unet_keeps():
    from training import file_limits
    # 16 channels at 16x16 (input conv, one block), then 32 at 8x8 (down block keeps 16): per pixel of the full image
    assert file_limits.skip_elements_per_pixel(sampling_net()) == 16 + 16 + 16 / 4 + 32 / 4
    assert file_limits.skip_elements_per_pixel(torch.nn.Conv2d(3, 8, 3)) == 0


def test_racing_runs_claim_distinct_folders(tmp_path):
    barrier = threading.Barrier(8)
    claimed = []

    def claim(desc):
        barrier.wait()
        claimed.append(run_dir.claim_run_dir(str(tmp_path), desc))
    threads = [threading.Thread(target=claim, args=('same' if i % 2 else f'desc{i}',)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = sorted(int(os.path.basename(path)[:5]) for path in claimed)
    assert ids == list(range(8)) and len(set(claimed)) == 8
    assert run_dir.claim_run_dir(str(tmp_path), 'dry', dry_run=True).endswith('00008-dry')
    assert not os.path.exists(tmp_path / '00008-dry')
    (tmp_path / '00008-file').write_text('a file, not a run')
    assert run_dir.claim_run_dir(str(tmp_path), 'file').endswith('00009-file')


def test_resume_falls_back_past_states_that_do_not_load_or_fit(files, tmp_path):
    runner = CliRunner()
    run = tmp_path / 'run'
    os.makedirs(run)
    shutil.copy(files.state, run / 'training-state-000000.pt')
    state = torch.load(files.state, weights_only=True)
    bad_rng = dict(state, rng_states=[dict(state['rng_states'][0], torch=torch.zeros(16, dtype=torch.uint8))])
    torch.save(bad_rng, run / 'training-state-000001.pt')
    missing = dict(state, net={k: v for i, (k, v) in enumerate(state['net'].items()) if i})
    torch.save(missing, run / 'training-state-000002.pt')
    (run / 'training-state-000003.pt').write_bytes(open(files.state, 'rb').read()[:1000])  # killed while written
    stale = run / f'.training-state-000004.pt.{2**22 + 12345}.abcd1234.tmp'
    stale.write_bytes(b'half a state')
    old = time.time() - 2 * dnnlib.util.STALE_TEMP_SECONDS
    os.utime(stale, (old, old))
    train_args = [a.format(tmp=tmp_path, digits=files.digits) for a in TRAIN]
    result = runner.invoke(train.main, train_args + [f'--resume={run}', '-n'])
    assert result.exit_code == 0, result.output
    assert result.output.count('Passing over') == 3 and '"resume_state":' in result.output
    assert f'{run}/training-state-000000.pt' in result.output.split('"resume_state":')[1].splitlines()[0]
    assert not stale.exists()
    one_line(runner.invoke(train.main, train_args + [f'--resume={run}/training-state-000001.pt', '-n']), '--resume', 'random-number')
    one_line(runner.invoke(train.main, train_args + [f'--resume={run}/training-state-000002.pt', '-n']), '--resume', 'does not fit')
    diverged = dict(state, ema={k: torch.full_like(v, float('nan')) if v.is_floating_point() else v for k, v in state['ema'].items()})
    torch.save(diverged, run / 'training-state-000005.pt')
    result = runner.invoke(train.main, train_args + [f'--resume={run}', '-n'])
    assert result.exit_code == 0 and 'Passing over' in result.output and 'NaN or infinite "ema"' in result.output, result.output
    one_line(runner.invoke(train.main, train_args + [f'--resume={run}/training-state-000005.pt', '-n']), '--resume', 'NaN')
    torch.save(dict(state, network_kwargs=[1, 2]), run / 'training-state-000005.pt')
    one_line(runner.invoke(train.main, train_args + [f'--resume={run}/training-state-000005.pt', '-n']), '--resume', 'network_kwargs')
    os.remove(run / 'training-state-000005.pt')
    os.remove(run / 'training-state-000000.pt')
    one_line(runner.invoke(train.main, train_args + [f'--resume={run}']), '--resume', 'no training state', 'loads and fits')
    empty = tmp_path / 'killed-early'
    os.makedirs(empty)
    (empty / 'training_options.json').write_text('{}')
    one_line(runner.invoke(train.main, train_args + [f'--resume={empty}']), '--resume', 'before its first')
    assert not os.path.exists(tmp_path / 'runs')


def test_truncated_compiled_kernels_are_removed_from_the_cache(tmp_path):
    import _ctypes
    library = open(os.path.realpath(_ctypes.__file__), 'rb').read()
    os.makedirs(tmp_path / 'ab')
    (tmp_path / 'ab' / 'intact.so').write_bytes(library)
    (tmp_path / 'ab' / 'cut.so').write_bytes(library[:len(library) * 2 // 3])  # a compile killed while writing
    (tmp_path / 'ab' / 'empty.so').write_bytes(b'')
    (tmp_path / 'ab' / 'kernel.py').write_text('# not a library')
    removed = compile_cache.remove_broken_entries(str(tmp_path))
    assert sorted(os.path.basename(p) for p in removed) == ['cut.so', 'empty.so']
    assert sorted(os.listdir(tmp_path / 'ab')) == ['intact.so', 'kernel.py']
