"""Bad input on a held-out set: builds, in a temporary folder, well over a hundred bad inputs of
the families that tests/test_errors.py covers (none of them one of its cases), runs each as a
subprocess of the real script under a 4 GiB address-space limit and limits on CPU time, and
classifies what happened.

    python bench/adversarial.py                  # every case (about 25 minutes on 2 busy cores)
    python bench/adversarial.py --only=pickle    # one family (--only=pickle,bombs for several)
    python bench/adversarial.py --cases='r3-*'   # cases by id or shell pattern (the fresh round: r3-*)
    python bench/adversarial.py --list           # the cases, without building or running anything

Outcomes, from good to bad: `one line` (exit 1 and one `Error:` line), `usage` (exit 2, click's
usage error), `ok` (accepted where accepting is right: a resume falling back, a race won twice),
`refused` (one line where the input should have been accepted), `unclear` (an error that is not
one line, or one that does not name what it should), `accepted` (exit 0 on bad input: silent
garbage or damage), `traceback`, `hang` (see `run_processes`), `memory` (killed by a signal or dead of a
failed allocation), `damaged` (a file that existed before changed or vanished), `online` (a
connection to the proxy every case runs behind, where the input did not ask for a download) and
`code ran` (a pickle's payload made its canary folder). Cases that need a small file system
(`disk`) mount a 1 MiB tmpfs and are skipped where mounting is not allowed."""

import builtins
import collections
import fnmatch
import functools
import gzip
import hashlib
import io
import json
import os
import pickle
import resource
import shutil
import signal
import socket
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

import click

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MEMORY_LIMIT = 4 << 30     # RLIMIT_AS of every case
Limits = collections.namedtuple('Limits', 'cpu stall wall')
LIMITS = Limits(cpu=60, stall=30, wall=900)        # seconds: see `run_processes`
TRAIN_LIMITS = Limits(cpu=150, stall=30, wall=1200)  # cases that really train
HUB_VAE = 'someone/their-vae'

FAMILIES = {
    'dest': 'user files an output option could replace or delete',
    'pickle': 'code in pickles, npz object arrays and CIFAR batches',
    'online': 'files naming a VAE on the hub',
    'pairs': 'snapshot pairs from different saves, profiles of another network',
    'race': 'two processes on one output, run-folder names',
    'bombs': 'decompression and header bombs, enormous sizes',
    'special': 'named pipes, devices, symlink loops',
    'stats': 'nonsense reference statistics and features',
    'zip': 'encrypted, Deflate64 and broken zip members outside images',
    'disk': 'full file systems and file-size limits',
    'names': 'names longer than the file system takes',
    'state': 'broken training states and profiles',
    'options': 'out-of-range seeds, devices and option values',
    'garbage': 'values that would give garbage silently',
    'cache': 'the TorchInductor cache',
    'temps': 'temporary files of killed writers',
    'resume': 'resume fallback over run folders',
}

OUTCOMES = ['one line', 'usage', 'ok', 'refused', 'unclear', 'accepted', 'traceback', 'hang', 'memory', 'damaged',
            'online', 'code ran']
BAD = {'traceback', 'hang', 'memory', 'damaged', 'code ran', 'online'}


class Case:
    """One bad input: the script and its arguments (`{d}` is the case's own folder, other
    `{names}` the shared inputs), what to make first, and what counts as right."""

    def __init__(self, id, family, script, args, setup=None, expect='refuse', words=(), limits=LIMITS, check=None,
                 parallel=1, env=None, fsize=None, full_disk=False, may_change=()):
        assert family in FAMILIES and expect in ('refuse', 'accept', 'either'), id
        self.id, self.family, self.script, self.args = id, family, script, list(args)
        self.setup, self.expect, self.words, self.limits, self.check = setup, expect, tuple(words), limits, check
        self.parallel, self.env, self.fsize, self.full_disk = parallel, dict(env or {}), fsize, full_disk
        self.may_change = tuple(may_change)  # paths whose change or removal is the job (stale temporary files, --overwrite)

# ----------------------------------------------------------------------------------------------
# Payloads and file builders.


class Payload:
    """Unpickling it runs code that makes the folder `marker` (the canary), in one of several ways."""

    def __init__(self, kind, marker):
        self.kind, self.marker = kind, marker

    def __reduce__(self):
        marker = self.marker
        if self.kind == 'exec':
            return builtins.exec, (f'import os; os.mkdir({marker!r})',)
        if self.kind == 'eval':
            return builtins.eval, (f'__import__("os").mkdir({marker!r})',)
        if self.kind == 'subprocess':
            return subprocess.call, (['mkdir', marker],)
        if self.kind == 'system':
            return os.system, (f'mkdir "{marker}"',)
        if self.kind == 'partial':
            return functools.partial(os.mkdir, marker), ()
        return os.mkdir, (marker,)


def canary(d):
    return os.path.join(CANARY_DIR, os.path.basename(d))


CANARY_DIR = None  # set by `run_cases`


def dump_pickle(path, obj, protocol=pickle.DEFAULT_PROTOCOL):
    with open(path, 'wb') as f:
        pickle.dump(obj, f, protocol=protocol)
    return str(path)


def png_bytes(array):
    import PIL.Image
    buf = io.BytesIO()
    PIL.Image.fromarray(array).save(buf, format='png')
    return buf.getvalue()


def digit_images(count, size=16, offset=0):
    import numpy as np
    import PIL.Image
    with np.load(os.path.join(ROOT, 'data', 'mnist-10k-28x28.npz')) as data:
        images = data['images'][offset:offset + count]
    return [np.asarray(PIL.Image.fromarray(img).resize((size, size), PIL.Image.LANCZOS)) for img in images]


def write_zip(path, members, labels=None, json_text=None, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, 'w', compression=compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
        if json_text is not False:
            z.writestr('dataset.json', json_text if json_text is not None else json.dumps({'labels': labels}))
    return str(path)


def image_members(images):
    return {f'00000/img{i:08d}.png': png_bytes(img) for i, img in enumerate(images)}


def patch_zip_member(path, name, offset, fmt, value, local=True):
    """Overwrites a field of member `name` in the central directory (and in its local header, at
    the same field, when `local`) of a zip."""
    data = bytearray(open(path, 'rb').read())
    entry = data.index(b'PK\x01\x02')
    while data[entry + 46:entry + 46 + len(name)] != name.encode():
        entry = data.index(b'PK\x01\x02', entry + 4)
    struct.pack_into(fmt, data, entry + offset, value)
    if local:
        (local_offset,) = struct.unpack_from('<I', data, entry + 42)
        struct.pack_into(fmt, data, local_offset + offset - 2, value)
    open(path, 'wb').write(bytes(data))


def npy_bytes(array, allow_pickle=False):
    import numpy as np
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def npz_claiming(path, key, shape, dtype='<f8'):
    """An .npz whose member `key` declares `shape` but holds a few bytes."""
    import numpy as np
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, dict(descr=dtype, fortran_order=False, shape=shape))
    with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(key + '.npy', header.getvalue() + b'\0' * 64)
    return str(path)


def object_array(payload):
    import numpy as np
    array = np.empty(2, dtype=object)
    array[0], array[1] = payload, 1
    return array


def jpeg_claiming(width, height):
    """A JPEG whose frame header says width x height (the scan itself is missing)."""
    sof = b'\xff\xc0' + struct.pack('>HBHHB', 11, 8, height, width, 1) + b'\x01\x11\x00'
    return b'\xff\xd8' + sof + b'\xff\xd9'


def gif_claiming(width, height):
    return b'GIF89a' + struct.pack('<HHBBB', width, height, 0, 0, 0) + b',' + struct.pack('<HHHHB', 0, 0, width, height, 0) + b'\x02\x02D\x01\x00;'


def bmp_claiming(width, height):
    info = struct.pack('<IiiHHIIiiII', 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b'BM' + struct.pack('<IHHI', 14 + 40 + 16, 0, 0, 54) + info + b'\0' * 16


def png_with_ztxt(text_bytes):
    """A 16x16 PNG with a zTXt chunk that inflates to `text_bytes` bytes."""
    import numpy as np
    base = png_bytes(np.zeros((16, 16), np.uint8))
    data = b'Comment\0\0' + zlib.compress(b' ' * text_bytes, 9)
    chunk = struct.pack('>I', len(data)) + b'zTXt' + data + struct.pack('>I', zlib.crc32(b'zTXt' + data))
    return base[:33] + chunk + base[33:]


def deflate_bomb_member(z, name, size, head=b'', tail=b''):
    """Adds member `name` of `size` bytes (`head`, spaces, `tail`), deflated as it streams."""
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    with z.open(info, 'w', force_zip64=True) as f:
        f.write(head)
        block = b' ' * (1 << 24)
        left = size - len(head) - len(tail)
        while left > 0:
            f.write(block[:min(left, len(block))])
            left -= len(block)
        f.write(tail)


def tar_member_claiming(path, name, size):
    """A .tar.gz with one member whose header declares `size` bytes (a few are there)."""
    info = tarfile.TarInfo(name)
    info.size = size
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    with gzip.open(path, 'wb') as f:
        f.write(header + b'\0' * 1024)
    return str(path)


def cifar_archive(path, batch):
    """cifar-10-python.tar.gz whose data_batch_1 holds the bytes `batch`."""
    with tarfile.open(path, 'w:gz') as tar:
        info = tarfile.TarInfo('cifar-10-batches-py/data_batch_1')
        info.size = len(batch)
        tar.addfile(info, io.BytesIO(batch))
    return str(path)


def copy_run(f, d, name='run'):
    dest = os.path.join(d, name)
    shutil.copytree(f.run, dest, symlinks=True)
    return dest


def state_path(run):
    return os.path.join(run, next(n for n in sorted(os.listdir(run)) if n.startswith('training-state-')))


def edit_state(f, d, change, name='state.pt'):
    """A copy of the fixture training state with `change(state)` applied, saved as `d/name`."""
    import torch
    state = torch.load(f.state, map_location='cpu', weights_only=True)
    change(state)
    path = os.path.join(d, name)
    torch.save(state, path)
    return path


def edit_safetensors(src, dst, change):
    """A copy of a .safetensors network file whose metadata dict passes through `change`."""
    from safetensors import safe_open
    from safetensors.torch import save
    from training import checkpoints
    with safe_open(src, 'pt') as fh:
        meta = dict(fh.metadata())
        tensors = {key: fh.get_tensor(key) for key in fh.keys()}
    record = json.loads(meta[checkpoints.METADATA_KEY])
    change(record)
    meta[checkpoints.METADATA_KEY] = json.dumps(record)
    with open(dst, 'wb') as fp:
        fp.write(save(tensors, metadata=meta))
    return str(dst)


def resave_snapshot(f, d, change):
    """A copy of the fixture run whose network snapshot (pickle and .safetensors) holds the
    snapshot dict after `change(data)`."""
    from training import checkpoints
    run = copy_run(f, d)
    path = os.path.join(run, os.path.basename(f.net))
    data = checkpoints.load_snapshot(path)
    change(data)
    checkpoints.save_snapshot_pair(path, data)
    return run


def set_kwargs(**values):
    return lambda record: record['init_kwargs'].update(values)


def tiny_net(label_dim=0, channels=1, resolution=16, seed=0, model_channels=8):
    import torch
    from training import networks
    torch.manual_seed(seed)
    return networks.EDMPrecond(img_resolution=resolution, img_channels=channels, label_dim=label_dim, use_coords=True,
                               model_type='SongUNet', model_channels=model_channels, channel_mult=[1, 2], num_blocks=1,
                               attn_resolutions=[resolution // 2], dropout=0).eval()


def stale_pair(d):
    """network-snapshot-000004.pkl and a .safetensors beside it from an earlier save."""
    from training import checkpoints
    path = os.path.join(d, 'network-snapshot-000004.pkl')
    checkpoints.save_snapshot_pair(path, dict(ema=tiny_net(seed=1)))
    stale = open(checkpoints.safetensors_path(path), 'rb').read()
    checkpoints.save_snapshot_pair(path, dict(ema=tiny_net(seed=2)))
    open(checkpoints.safetensors_path(path), 'wb').write(stale)
    return checkpoints.safetensors_path(path)


def mkfifo(path):
    os.mkfifo(path)
    return str(path)


def old(path, seconds=3600):
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


def float_npz(path, images):
    import numpy as np
    np.savez(path, images=np.asarray(images, np.float32))
    return str(path)

# ----------------------------------------------------------------------------------------------
# The cases.


TRAIN = ['{train}', '--outdir={d}/runs', '--data={digits}', '--batch=8', '--cbase=8', '--cres=1,2', '--workers=0',
         '--device=cpu']
TINY = ['--duration=0.00002', '--tick=1', '--snap=1000', '--dump=1000', '--lr-rampup=0.000001', '--seed=1']
GEN = ['{generate}', '--device=cpu', '--steps=2', '--seeds=0-1']
FID = ['--detector={det}', '--device=cpu', '--workers=0']
TOOL = ['{dataset_tool}']
CONVERT = ['{convert_network}']
PHEMA = ['{reconstruct_phema}']


def case_list():
    """Every case, in family order."""
    import numpy as np
    cases = []
    add = lambda *a, **k: cases.append(Case(*a, **k))  # noqa: E731

    # --- dest: nothing of the user's is replaced or deleted --------------------------------------
    def ds_with_note(d, f):
        shutil.copytree(f.dsfolder, f'{d}/ds')
        open(f'{d}/ds/.notes.txt', 'w').write('my notes')
    add('dest-tool-dataset-with-hidden-note', 'dest', 'dataset_tool', TOOL + ['--source={npz}', '--dest={d}/ds', '--overwrite'],
        ds_with_note, words=['--dest'])

    def zip_with_readme(d, f):
        shutil.copy(f.dszip, f'{d}/ds.zip')
        with zipfile.ZipFile(f'{d}/ds.zip', 'a') as z:
            z.writestr('README.txt', 'what these images are')
    add('dest-tool-zip-with-readme', 'dest', 'dataset_tool', TOOL + ['--source={npz}', '--dest={d}/ds.zip', '--overwrite'],
        zip_with_readme, words=['--dest'])

    def ds_copy(d, f):
        shutil.copytree(f.dsfolder, f'{d}/ds')
    add('dest-tool-source-is-dest-folder', 'dest', 'dataset_tool', TOOL + ['--source={d}/ds', '--dest={d}/ds', '--overwrite',
                                                                          '--resolution=8x8'], ds_copy, words=['--dest'])

    def zip_copy(d, f):
        shutil.copy(f.dszip, f'{d}/ds.zip')
    add('dest-tool-source-is-dest-zip', 'dest', 'dataset_tool', TOOL + ['--source={d}/ds.zip', '--dest={d}/ds.zip', '--overwrite',
                                                                       '--max-images=2'], zip_copy, words=['--dest'])

    def link_to_notes(name):
        def setup(d, f):
            open(f'{d}/notes.txt', 'w').write('my notes')
            os.symlink(f'{d}/notes.txt', f'{d}/{name}')
        return setup
    add('dest-tool-zip-symlink-to-notes', 'dest', 'dataset_tool', TOOL + ['--source={npz}', '--dest={d}/out.zip', '--overwrite'],
        link_to_notes('out.zip'), words=['--dest'])

    def ds_with_linked_photos(d, f):
        shutil.copytree(f.dsfolder, f'{d}/ds')
        os.makedirs(f'{d}/photos')
        open(f'{d}/photos/holiday.jpg', 'wb').write(b'\xff\xd8 a photo')
        os.symlink(f'{d}/photos', f'{d}/ds/00001')
    add('dest-tool-dataset-with-linked-folder', 'dest', 'dataset_tool', TOOL + ['--source={npz}', '--dest={d}/ds', '--overwrite'],
        ds_with_linked_photos, words=['--dest'])

    def config_folder(d, f):
        os.makedirs(f'{d}/project')
        open(f'{d}/project/dataset.json', 'w').write(json.dumps({'name': 'my experiment', 'labels': None}))
    add('dest-tool-folder-with-foreign-dataset-json', 'dest', 'dataset_tool',
        TOOL + ['--source={npz}', '--dest={d}/project', '--overwrite'], config_folder, words=['--dest'])

    add('dest-convert-symlink-to-notes', 'dest', 'convert_network', CONVERT + ['--network={net}', '--dest={d}/x.safetensors'],
        link_to_notes('x.safetensors'), words=['--dest'])

    def stats_with_extra(d, f):
        np.savez(f'{d}/ref.npz', mu=np.zeros(2048), sigma=np.eye(2048), thesis=np.arange(10))
    add('dest-fid-ref-stats-with-extra-array', 'dest', 'fid', ['{fid}', 'ref', '--data={digits}', '--dest={d}/ref.npz'] + FID,
        stats_with_extra, words=['--dest'])

    def jpeg_named_png(d, f):
        open(f'{d}/photo.png', 'wb').write(jpeg_claiming(16, 16))
    add('dest-mem-pairs-over-a-jpeg', 'dest', 'fid', ['{fid}', 'mem', '--images={images}', '--data={digits}',
                                                      '--pairs={d}/photo.png', '--device=cpu', '--workers=0'],
        jpeg_named_png, words=['--pairs'])
    add('dest-mem-pairs-over-notes', 'dest', 'fid', ['{fid}', 'mem', '--images={images}', '--data={digits}',
                                                     '--pairs={d}/notes.png', '--device=cpu', '--workers=0'],
        link_to_notes('notes.png'), words=['--pairs'])

    def notes(d, f):
        open(f'{d}/notes.txt', 'w').write('my notes')
    add('dest-phema-outdir-is-a-file', 'dest', 'reconstruct_phema', PHEMA + ['--indir={run}', '--outdir={d}/notes.txt',
                                                                            '--outstd=0.07'], notes, words=['--outdir'])

    def run_copy(d, f):
        copy_run(f, d)
    add('dest-train-nosubdir-into-another-run', 'dest', 'train', TRAIN + TINY + ['--outdir={d}/run', '--nosubdir'], run_copy,
        words=['--outdir'], limits=TRAIN_LIMITS)
    add('dest-generate-outdir-symlink-to-file', 'dest', 'generate', GEN + ['--network={net}', '--outdir={d}/out'],
        link_to_notes('out'), words=['--outdir'])

    # --- pickle: nothing in a file runs ------------------------------------------------------------
    def evil_pkl(name, kind, wrap=lambda p: dict(ema=p)):
        def setup(d, f):
            dump_pickle(f'{d}/{name}', wrap(Payload(kind, canary(d))))
        return setup
    add('pickle-fid-gen-network-exec', 'pickle', 'fid', ['{fid}', 'gen', '--network={d}/net.pkl', '--ref={ref}', '--num=2',
                                                         '--steps=2'] + FID[:2], evil_pkl('net.pkl', 'exec'), words=['--network'])
    add('pickle-generate-guide-eval', 'pickle', 'generate', GEN + ['--network={net}', '--outdir={d}/out',
                                                                   '--guide-network={d}/guide.pkl', '--guidance=2'],
        evil_pkl('guide.pkl', 'eval'), words=['--guide-network'])

    def nested(d, f):
        from training import checkpoints
        data = checkpoints.load_snapshot(f.net, 'network')
        data['loss_fn'] = Payload('subprocess', canary(d))
        dump_pickle(f'{d}/net.pkl', data)
    add('pickle-generate-payload-beside-real-network', 'pickle', 'generate', GEN + ['--network={d}/net.pkl', '--outdir={d}/out'],
        nested, expect='either')

    def torch_zip(d, f):
        import torch
        torch.save(dict(ema=Payload('system', canary(d))), f'{d}/net.pkl')
    add('pickle-transfer-torch-zip-pickle', 'pickle', 'train', TRAIN + ['--transfer={d}/net.pkl', '-n'], torch_zip,
        words=['--transfer'])
    add('pickle-convert-functools-partial', 'pickle', 'convert_network', CONVERT + ['--network={d}/net.pkl',
                                                                                    '--dest={d}/net.safetensors'],
        evil_pkl('net.pkl', 'partial'), words=['--network'])

    def evil_phema(d, f):
        import torch
        run = copy_run(f, d)
        name = next(n for n in os.listdir(run) if n.startswith('phema-'))
        torch.save(dict(step=1, gamma=[6.9], averages=[Payload('mkdir', canary(d))]), os.path.join(run, name))
    add('pickle-phema-profile', 'pickle', 'reconstruct_phema', PHEMA + ['--indir={d}/run', '--outdir={d}/out', '--outstd=0.07'],
        evil_phema, words=['phema-'])

    def legacy_state(d, f):
        import torch
        run = copy_run(f, d)
        torch.save(dict(net=Payload('subprocess', canary(d)), nimg=0), os.path.join(run, 'training-state-000099.pt'),
                   _use_new_zipfile_serialization=False)
    add('pickle-resume-legacy-format-state', 'pickle', 'train', TRAIN + TINY + ['--resume={d}/run'], legacy_state,
        words=['--resume'])

    def cifar_evil(d, f):
        cifar_archive(f'{d}/cifar-10-python.tar.gz', pickle.dumps({b'data': Payload('exec', canary(d)), b'labels': []}))
    add('pickle-cifar-batch', 'pickle', 'dataset_tool', TOOL + ['--source={d}/cifar-10-python.tar.gz', '--dest={d}/c.zip'],
        cifar_evil, words=['cifar-10-python.tar.gz'])

    def npz_object(d, f):
        import numpy as np
        np.savez(f'{d}/obj.npz', images=object_array(Payload('mkdir', canary(d))))
    add('pickle-npz-object-images', 'pickle', 'dataset_tool', TOOL + ['--source={d}/obj.npz', '--dest={d}/o.zip'], npz_object,
        words=['obj.npz'])

    def npy_object(d, f):
        import numpy as np
        np.save(f'{d}/obj.npy', object_array(Payload('eval', canary(d))), allow_pickle=True)
    add('pickle-npy-object-images', 'pickle', 'dataset_tool', TOOL + ['--source={d}/obj.npy', '--dest={d}/o.zip'], npy_object,
        words=['obj.npy'])

    def feats_object(d, f):
        import numpy as np
        np.savez(f'{d}/feats.npz', features=object_array(Payload('exec', canary(d))))
    add('pickle-kid-features-object-array', 'pickle', 'fid', ['{fid}', 'kid', '--images={d}/feats.npz', '--ref={feats}'] + FID,
        feats_object, words=['feats.npz'])

    def ref_object(d, f):
        import numpy as np
        np.savez(f'{d}/ref.npz', mu=object_array(Payload('system', canary(d))), sigma=np.eye(2048))
    add('pickle-calc-ref-object-array', 'pickle', 'fid', ['{fid}', 'calc', '--images={images}', '--ref={d}/ref.npz', '--num=4']
        + FID, ref_object, words=['ref.npz'])

    def arrays_object(d, f):
        shutil.copy(f.arrays, f'{d}/arrays.zip')
        with zipfile.ZipFile(f.arrays) as src, zipfile.ZipFile(f'{d}/arrays.zip', 'w') as dst:
            for info in src.infolist():
                data = src.read(info)
                if info.filename == '00000/img00000001.npy':
                    data = npy_bytes(object_array(Payload('subprocess', canary(d))), allow_pickle=True)
                dst.writestr(info.filename, data)
    add('pickle-train-array-member-object', 'pickle', 'train', TRAIN + TINY + ['--data={d}/arrays.zip', '--patch=0'],
        arrays_object, words=['img00000001.npy'], limits=TRAIN_LIMITS)

    def detector_torch_zip(d, f):
        import torch
        torch.save(Payload('mkdir', canary(d)), f'{d}/det.pt')
    add('pickle-detector-torch-zip', 'pickle', 'fid', ['{fid}', 'ref', '--data={digits}', '--dest={d}/r.npz',
                                                       '--detector={d}/det.pt', '--device=cpu', '--workers=0'],
        detector_torch_zip, words=['--detector'])
    add('pickle-kid-detector-exec', 'pickle', 'fid', ['{fid}', 'kid', '--images={images}', '--ref={images}',
                                                      '--detector={d}/det.pkl', '--device=cpu', '--workers=0'],
        evil_pkl('det.pkl', 'exec', wrap=lambda p: p), words=['--detector'])
    add('pickle-transfer-pickle-named-safetensors', 'pickle', 'train', TRAIN + ['--transfer={d}/net.safetensors', '-n'],
        evil_pkl('net.safetensors', 'eval'), words=['--transfer'])

    def guide_module_source(d, f):
        from torch_utils import persistence
        src = f'import os\nos.mkdir({canary(d)!r})\nclass EDMPrecond:\n    pass\n'
        record = (persistence._reconstruct_persistent_obj,
                  (dict(type='class', version=6, module_src=src, class_name='EDMPrecond', state=dict(_init_args=[], _init_kwargs={})),))
        dump_pickle(f'{d}/guide.pkl', dict(ema=Reduced(record)))
    add('pickle-guide-module-source', 'pickle', 'generate', GEN + ['--network={net}', '--outdir={d}/out',
                                                                   '--guide-network={d}/guide.pkl', '--guidance=2'],
        guide_module_source, words=['--guide-network'])
    add('pickle-protocol-0-text-pickle', 'pickle', 'generate', GEN + ['--network={d}/net.pkl', '--outdir={d}/out'],
        lambda d, f: dump_pickle(f'{d}/net.pkl', dict(ema=Payload('system', canary(d))), protocol=0), words=['--network'])

    # --- online: a file never makes the program download ------------------------------------------
    add('online-generate-pickle-with-hub-vae', 'online', 'generate', GEN + ['--network={latent_pkl}', '--outdir={d}/out'],
        words=['--network'])
    add('online-fid-gen-safetensors-with-hub-vae', 'online', 'fid', ['{fid}', 'gen', '--network={latent_st}', '--ref={ref}',
                                                                     '--num=2', '--steps=2'] + FID[:2], words=['--network'])
    add('online-convert-pickle-with-hub-vae', 'online', 'convert_network', CONVERT + ['--network={latent_pkl}',
                                                                                      '--dest={d}/l.safetensors'],
        expect='accept')

    def latents_naming(vae):
        """A setup: the latent data set as latents.zip, its dataset.json naming `vae`."""
        def setup(d, f):
            with zipfile.ZipFile(f.latents) as src, zipfile.ZipFile(f'{d}/latents.zip', 'w') as dst:
                for info in src.infolist():
                    data = src.read(info)
                    if info.filename == 'dataset.json':
                        meta = json.loads(data)
                        meta['latents']['vae'] = vae
                        data = json.dumps(meta)
                    dst.writestr(info.filename, data)
        return setup

    hub_latents = latents_naming(HUB_VAE)
    add('online-train-latents-naming-hub-vae-dry', 'online', 'train',
        TRAIN + ['--data={d}/latents.zip', '--cres=1', '--attn=none', '-n'], hub_latents, expect='either')
    add('online-train-latents-naming-hub-vae', 'online', 'train',
        TRAIN + TINY + ['--data={d}/latents.zip', '--cres=1', '--attn=none'], hub_latents, words=['--data'],
        limits=TRAIN_LIMITS)
    add('online-transfer-safetensors-with-hub-vae', 'online', 'train', TRAIN + ['--transfer={latent_st}', '-n'],
        words=['--transfer'])
    add('online-guide-with-hub-vae', 'online', 'generate', GEN + ['--network={latent_st_local}', '--outdir={d}/out',
                                                                  '--guide-network={latent_st}', '--guidance=2'],
        expect='either')

    # --- pairs: a .safetensors is never served beside a newer pickle ------------------------------
    add('pairs-transfer-stale-safetensors', 'pairs', 'train', TRAIN + ['--transfer={d}/network-snapshot-000004.safetensors', '-n'],
        lambda d, f: stale_pair(d), words=['--transfer', 'different saves'])
    add('pairs-fid-gen-stale-safetensors', 'pairs', 'fid', ['{fid}', 'gen', '--network={d}/network-snapshot-000004.safetensors',
                                                            '--ref={ref}', '--num=2', '--steps=2'] + FID[:2],
        lambda d, f: stale_pair(d), words=['--network', 'different saves'])
    add('pairs-guide-stale-safetensors', 'pairs', 'generate', GEN + ['--network={net}', '--outdir={d}/out', '--guidance=2',
                                                                     '--guide-network={d}/network-snapshot-000004.safetensors'],
        lambda d, f: stale_pair(d), words=['--guide-network'])

    def truncated_pkl(d, f):
        stale_pair(d)
        path = f'{d}/network-snapshot-000004.pkl'
        data = open(path, 'rb').read()
        open(path, 'wb').write(data[:len(data) // 3])
    add('pairs-safetensors-beside-truncated-pickle', 'pairs', 'generate',
        GEN + ['--network={d}/network-snapshot-000004.safetensors', '--outdir={d}/out'], truncated_pkl, expect='either')

    def phema_other_network(d, f):
        from training import checkpoints
        run = copy_run(f, d)
        name = next(n for n in os.listdir(run) if n.startswith('network-snapshot-') and n.endswith('.pkl'))
        checkpoints.save_snapshot_pair(os.path.join(run, name), dict(ema=tiny_net(seed=3)))
    add('pairs-phema-beside-another-network', 'pairs', 'reconstruct_phema', PHEMA + ['--indir={d}/run', '--outdir={d}/out',
                                                                                     '--outstd=0.07'],
        phema_other_network, words=['--indir'])

    # --- race: processes sharing an output, run-folder names -----------------------------------------
    def two_runs(d, f, results):
        runs = sorted(os.listdir(f'{d}/runs')) if os.path.isdir(f'{d}/runs') else []
        done = [r for r in runs if any(n.startswith('network-snapshot-') for n in os.listdir(f'{d}/runs/{r}'))]
        return None if len(done) == 2 and len({r[:5] for r in runs}) == len(runs) else f'run folders {runs}, finished {done}'
    add('race-two-trainings-one-outdir', 'race', 'train', TRAIN + TINY + ['--desc=same'], parallel=2, expect='accept',
        check=two_runs, limits=TRAIN_LIMITS)

    def one_valid_dataset(path, count):
        def check(d, f, results):
            from training import dataset
            try:
                found = len(dataset.ImageFolderDataset(path.format(d=d)))
            except Exception as err:  # noqa: BLE001 (whatever it is, the result is broken)
                return f'{path.format(d=d)}: {err}'
            wins = sum(r.returncode == 0 for r in results)
            return None if found == count and wins >= 1 else f'{found} images, {wins} processes succeeded'
        return check
    add('race-two-conversions-one-zip', 'race', 'dataset_tool', TOOL + ['--source={npz}', '--dest={d}/out.zip'], parallel=2,
        expect='either', check=one_valid_dataset('{d}/out.zip', 8))
    add('race-two-conversions-one-folder', 'race', 'dataset_tool', TOOL + ['--source={npz}', '--dest={d}/out'], parallel=2,
        expect='either', check=one_valid_dataset('{d}/out', 8))

    def loads(path, loader):
        """A check that the file at `path` ('{d}' for the case folder) loads with `loader`."""
        def check(d, f, results):
            try:
                loader()(path.format(d=d))
            except Exception as err:  # noqa: BLE001
                return str(err)
            return None
        return check

    def stats_loader():
        from training import metrics
        return metrics.load_stats

    add('race-two-references-one-dest', 'race', 'fid', ['{fid}', 'ref', '--data={digits}', '--dest={d}/r.npz'] + FID,
        parallel=2, expect='either', check=loads('{d}/r.npz', stats_loader))
    def stays_inside(d, f, results):
        folders = [line.split(':', 1)[1].strip() for line in results[0].stdout.splitlines() if line.startswith('Output directory:')]
        inside = folders and os.path.dirname(os.path.realpath(folders[0])) == os.path.realpath(f'{d}/runs')
        return None if inside else f'the run folder {folders} is not a folder of {d}/runs'
    add('race-desc-dotdot', 'race', 'train', TRAIN + ['--desc=..', '-n'], expect='either', check=stays_inside, words=['--desc'])
    for name, desc in (('absolute', '/tmp/escaped-run'), ('backslash', 'a\\..\\b'), ('tab', 'a\tb'),
                       ('newline', 'a\nb'), ('slash-inside', 'x/../../y')):
        add(f'race-desc-{name}', 'race', 'train', TRAIN + [f'--desc={desc}', '-n'], words=['--desc'])

    def taken_names(d, f):
        os.makedirs(f'{d}/runs')
        open(f'{d}/runs/00000-file', 'w').write('a file')
        os.symlink('/nonexistent', f'{d}/runs/00001-dangling')
        os.makedirs(f'{d}/runs/00002-real')
    add('race-ids-taken-by-files-and-links', 'race', 'train', TRAIN + TINY, taken_names, expect='accept',
        check=lambda d, f, r: None if any(n.startswith('00003-') for n in os.listdir(f'{d}/runs')) else 'no run 00003',
        limits=TRAIN_LIMITS)

    # --- bombs ---------------------------------------------------------------------------------
    def folder_with(name, data):
        def setup(d, f):
            os.makedirs(f'{d}/src')
            for i, img in enumerate(digit_images(2)):
                open(f'{d}/src/{i}.png', 'wb').write(png_bytes(img))
            open(f'{d}/src/{name}', 'wb').write(data() if callable(data) else data)
        return setup
    add('bombs-tool-jpeg-header', 'bombs', 'dataset_tool', TOOL + ['--source={d}/src', '--dest={d}/o.zip'],
        folder_with('big.jpg', jpeg_claiming(60000, 60000)), words=['big.jpg'])
    add('bombs-tool-gif-header', 'bombs', 'dataset_tool', TOOL + ['--source={d}/src', '--dest={d}/o.zip'],
        folder_with('big.gif', gif_claiming(65535, 65535)), words=['big.gif'])
    add('bombs-tool-bmp-header', 'bombs', 'dataset_tool', TOOL + ['--source={d}/src', '--dest={d}/o.zip'],
        folder_with('big.bmp', bmp_claiming(50000, 50000)), words=['big.bmp'])
    add('bombs-tool-png-text-chunk', 'bombs', 'dataset_tool', TOOL + ['--source={d}/src', '--dest={d}/o.zip'],
        folder_with('text.png', lambda: png_with_ztxt(64 << 20)), words=['text.png'])

    def json_bomb(d, f):
        with zipfile.ZipFile(f'{d}/bomb.zip', 'w', compression=zipfile.ZIP_DEFLATED) as z:
            for name, data in image_members(digit_images(8)).items():
                z.writestr(name, data)
            deflate_bomb_member(z, 'dataset.json', 3 << 30, b'{"labels": null', b'}')
    add('bombs-train-dataset-json-3gb-unused', 'bombs', 'train', TRAIN + ['--data={d}/bomb.zip', '-n'], json_bomb, expect='either')
    add('bombs-train-dataset-json-3gb-labels', 'bombs', 'train', TRAIN + ['--data={d}/bomb.zip', '--cond=1', '-n'], json_bomb,
        words=['dataset.json'])
    add('bombs-kid-features-header', 'bombs', 'fid', ['{fid}', 'kid', '--images={d}/f.npz', '--ref={feats}'] + FID,
        lambda d, f: npz_claiming(f'{d}/f.npz', 'features', (10**8, 2048), '<f4'), words=['f.npz'])

    def idx_labels_bomb(d, f):
        import numpy as np
        with gzip.open(f'{d}/t-images-idx3-ubyte.gz', 'wb') as fp:
            fp.write(b'\0\0\x08\x03' + struct.pack('>III', 2, 28, 28) + np.zeros(2 * 28 * 28, np.uint8).tobytes())
        with gzip.open(f'{d}/t-labels-idx1-ubyte.gz', 'wb') as fp:
            fp.write(b'\0\0\x08\x01' + struct.pack('>I', 4 * 10**9) + b'\0' * 16)
    add('bombs-tool-idx-labels-header', 'bombs', 'dataset_tool', TOOL + ['--source={d}/t-images-idx3-ubyte.gz', '--dest={d}/o.zip'],
        idx_labels_bomb, words=['labels-idx1-ubyte'])
    add('bombs-tool-cifar-member-header', 'bombs', 'dataset_tool', TOOL + ['--source={d}/cifar-10-python.tar.gz', '--dest={d}/o.zip'],
        lambda d, f: tar_member_claiming(f'{d}/cifar-10-python.tar.gz', 'cifar-10-batches-py/data_batch_1', 10**11),
        words=['cifar-10-python.tar.gz'])

    def safetensors_header_claim(d, f):
        open(f'{d}/net.safetensors', 'wb').write(struct.pack('<Q', 1 << 60) + b'{}')
    add('bombs-generate-safetensors-header-length', 'bombs', 'generate', GEN + ['--network={d}/net.safetensors', '--outdir={d}/out'],
        safetensors_header_claim, words=['--network'])

    def safetensors_shape_claim(d, f):
        header = json.dumps({'w': {'dtype': 'F32', 'shape': [10**6, 10**6], 'data_offsets': [0, 4 * 10**12]},
                             '__metadata__': {}}).encode()
        open(f'{d}/net.safetensors', 'wb').write(struct.pack('<Q', len(header)) + header + b'\0' * 64)
    add('bombs-generate-safetensors-tensor-claim', 'bombs', 'generate', GEN + ['--network={d}/net.safetensors', '--outdir={d}/out'],
        safetensors_shape_claim, words=['--network'])
    add('bombs-generate-metadata-resolution', 'bombs', 'generate', GEN + ['--network={d}/net.safetensors', '--outdir={d}/out'],
        lambda d, f: edit_safetensors(f.net_st, f'{d}/net.safetensors', set_kwargs(img_resolution=10**6)), words=['--network'])
    add('bombs-generate-metadata-label-dim', 'bombs', 'generate', GEN + ['--network={d}/net.safetensors', '--outdir={d}/out'],
        lambda d, f: edit_safetensors(f.net_st, f'{d}/net.safetensors', set_kwargs(label_dim=10**9)), words=['--network'])
    add('bombs-generate-metadata-attention-list', 'bombs', 'generate', GEN + ['--network={d}/net.safetensors', '--outdir={d}/out'],
        lambda d, f: edit_safetensors(f.net_st, f'{d}/net.safetensors', set_kwargs(attn_resolutions=list(range(10**6)))),
        expect='either')
    add('bombs-generate-metadata-channel-mult', 'bombs', 'generate', GEN + ['--network={d}/net.safetensors', '--outdir={d}/out'],
        lambda d, f: edit_safetensors(f.net_st, f'{d}/net.safetensors', set_kwargs(channel_mult=[1] * 5000)), words=['--network'])

    def pickle_resolution(d, f):
        net = tiny_net()
        net._init_kwargs['img_resolution'] = 10**6
        dump_pickle(f'{d}/net.pkl', dict(ema=net))
    add('bombs-generate-pickle-resolution', 'bombs', 'generate', GEN + ['--network={d}/net.pkl', '--outdir={d}/out'],
        pickle_resolution, words=['--network'])
    add('bombs-train-batch-ten-million', 'bombs', 'train', TRAIN + TINY + ['--batch=10000000'], words=['--batch'])
    add('bombs-train-blocks-twenty-thousand', 'bombs', 'train', TRAIN + ['--blocks=20000', '-n'], words=['--blocks'])
    add('bombs-train-pos-embed-million', 'bombs', 'train', TRAIN + ['--pos-embed=1000000', '-n'], words=['--pos-embed'])
    add('bombs-generate-canvas-within-free-memory', 'bombs', 'generate',
        GEN + ['--network={net}', '--outdir={d}/out', '--image_size=2048', '--seeds=0-3', '--batch=4'], words=['--batch'])
    add('bombs-generate-steps-int32', 'bombs', 'generate', GEN + ['--network={net}', '--outdir={d}/out', '--steps=2147483647'],
        words=['--steps'])
    add('bombs-kid-billion-subsets', 'bombs', 'fid', ['{fid}', 'kid', '--images={feats}', '--ref={feats}',
                                                      '--subsets=1000000000'] + FID, words=['--subsets'])
    add('bombs-fid-gen-ten-trillion-images', 'bombs', 'fid', ['{fid}', 'gen', '--network={net}', '--ref={ref}', '--num=10000000000000',
                                                              '--steps=2'] + FID[:2], words=['--num'])
    add('bombs-mem-block-trillion', 'bombs', 'fid', ['{fid}', 'mem', '--images={images}', '--data={digits}',
                                                     '--batch=1000000000000', '--device=cpu', '--workers=0'], expect='either')
    add('bombs-calc-batch-trillion', 'bombs', 'fid', ['{fid}', 'calc', '--images={images}', '--ref={ref}', '--num=4',
                                                      '--batch=1000000000000'] + FID, expect='either')

    # --- special files ---------------------------------------------------------------------------
    add('special-generate-network-fifo', 'special', 'generate', GEN + ['--network={d}/net.pkl', '--outdir={d}/out'],
        lambda d, f: mkfifo(f'{d}/net.pkl'), words=['net.pkl'])
    add('special-generate-network-dev-urandom', 'special', 'generate', GEN + ['--network={d}/net.safetensors', '--outdir={d}/out'],
        lambda d, f: os.symlink('/dev/urandom', f'{d}/net.safetensors'), words=['net.safetensors'])
    add('special-convert-network-dev-zero', 'special', 'convert_network', CONVERT + ['--network={d}/net.pkl',
                                                                                     '--dest={d}/n.safetensors'],
        lambda d, f: os.symlink('/dev/zero', f'{d}/net.pkl'), words=['net.pkl'])
    add('special-resume-state-fifo', 'special', 'train', TRAIN + TINY + ['--resume={d}/training-state-000001.pt'],
        lambda d, f: mkfifo(f'{d}/training-state-000001.pt'), words=['--resume'])
    add('special-kid-features-fifo', 'special', 'fid', ['{fid}', 'kid', '--images={d}/f.npz', '--ref={feats}'] + FID,
        lambda d, f: mkfifo(f'{d}/f.npz'), words=['f.npz'])

    def phema_fifo(d, f):
        run = copy_run(f, d)
        name = next(n for n in os.listdir(run) if n.startswith('phema-'))
        os.remove(os.path.join(run, name))
        mkfifo(os.path.join(run, name))
    add('special-phema-profile-fifo', 'special', 'reconstruct_phema', PHEMA + ['--indir={d}/run', '--outdir={d}/out',
                                                                               '--outstd=0.07'], phema_fifo, words=['phema-'])

    def data_json_fifo(d, f):
        os.makedirs(f'{d}/data')
        for i, img in enumerate(digit_images(8)):
            open(f'{d}/data/{i}.png', 'wb').write(png_bytes(img))
        mkfifo(f'{d}/data/dataset.json')
    add('special-train-dataset-json-fifo-unused', 'special', 'train', TRAIN + ['--data={d}/data', '-n'], data_json_fifo,
        expect='either')
    add('special-train-dataset-json-fifo-labels', 'special', 'train', TRAIN + ['--data={d}/data', '--cond=1', '-n'], data_json_fifo,
        words=['dataset.json'])
    add('special-train-data-dev-zero-zip', 'special', 'train', TRAIN + ['--data={d}/data.zip', '-n'],
        lambda d, f: os.symlink('/dev/zero', f'{d}/data.zip'), words=['data.zip'])

    def folder_loop(d, f):
        os.makedirs(f'{d}/src/sub')
        for i, img in enumerate(digit_images(2)):
            open(f'{d}/src/{i}.png', 'wb').write(png_bytes(img))
        os.symlink('..', f'{d}/src/sub/loop')
    add('special-tool-symlink-loop-in-source', 'special', 'dataset_tool', TOOL + ['--source={d}/src', '--dest={d}/o.zip'],
        folder_loop, expect='either')
    add('special-tool-image-linked-to-dev-zero', 'special', 'dataset_tool', TOOL + ['--source={d}/src', '--dest={d}/o.zip'],
        lambda d, f: (folder_with('2.png', b'')(d, f), os.remove(f'{d}/src/2.png'), os.symlink('/dev/zero', f'{d}/src/2.png')),
        words=['2.png'])
    add('special-mem-images-fifo-member', 'special', 'fid', ['{fid}', 'mem', '--images={d}/src', '--data={digits}',
                                                             '--device=cpu', '--workers=0'],
        lambda d, f: (folder_with('2.png', b'')(d, f), os.remove(f'{d}/src/2.png'), mkfifo(f'{d}/src/2.png')), words=['2.png'])

    def resume_options_fifo(d, f):
        run = copy_run(f, d)
        os.remove(os.path.join(run, 'training_options.json'))
        mkfifo(os.path.join(run, 'training_options.json'))
    add('special-resume-run-with-options-fifo', 'special', 'train', TRAIN + ['--resume={d}/run', '-n'], resume_options_fifo,
        expect='either')

    # --- stats -------------------------------------------------------------------------------
    def stats(**arrays):
        def setup(d, f):
            import numpy as np
            values = {k: (v() if callable(v) else v) for k, v in arrays.items()}
            np.savez(f'{d}/ref.npz', **values)
        return setup
    calc = ['{fid}', 'calc', '--images={images}', '--ref={d}/ref.npz', '--num=4'] + FID
    add('stats-mu-infinite', 'stats', 'fid', calc,
        stats(mu=lambda: np.where(np.arange(2048) == 5, np.inf, 0.0), sigma=lambda: np.eye(2048)),
        words=['ref.npz'])
    add('stats-sigma-complex', 'stats', 'fid', calc, stats(mu=lambda: np.zeros(2048), sigma=lambda: np.eye(2048) * (1 + 1j)),
        words=['ref.npz'])
    add('stats-sigma-overflowing-trace', 'stats', 'fid', calc, stats(mu=lambda: np.zeros(2048),
                                                                     sigma=lambda: np.eye(2048) * 1e305), words=['ref.npz'])
    add('stats-mu-column', 'stats', 'fid', calc, stats(mu=lambda: np.zeros((2048, 1)), sigma=lambda: np.eye(2048)),
        words=['ref.npz'])
    add('stats-mu-bool', 'stats', 'fid', calc, stats(mu=lambda: np.zeros(2048, bool), sigma=lambda: np.eye(2048)),
        words=['ref.npz'])
    add('stats-sigma-float16-overflow', 'stats', 'fid', calc,
        stats(mu=lambda: np.zeros(2048), sigma=lambda: np.diag(np.full(2048, np.float16(np.inf)))), words=['ref.npz'])
    add('stats-ref-is-npy', 'stats', 'fid', ['{fid}', 'calc', '--images={images}', '--ref={d}/ref.npz', '--num=4'] + FID,
        lambda d, f: open(f'{d}/ref.npz', 'wb').write(npy_bytes(np.eye(3))), words=['ref.npz'])
    add('stats-kid-one-reference-row', 'stats', 'fid', ['{fid}', 'kid', '--images={feats}', '--ref={d}/one.npz'] + FID,
        lambda d, f: np.savez(f'{d}/one.npz', features=np.ones((1, 2048), 'float32')),
        words=['one.npz'])
    add('stats-pr-two-reference-rows', 'stats', 'fid', ['{fid}', 'calc', '--images={images}', '--ref={d}/two.npz', '--num=4',
                                                        '--metrics=pr'] + FID,
        lambda d, f: np.savez(f'{d}/two.npz', mu=np.zeros(2048), sigma=np.eye(2048),
                                               features=np.random.default_rng(0).random((2, 2048)).astype('float32')),
        words=['two.npz'])

    def one_image_zip(d, f):
        write_zip(f'{d}/one.zip', image_members(digit_images(1)))
    add('stats-mem-one-training-image', 'stats', 'fid', ['{fid}', 'mem', '--images={images}', '--data={d}/one.zip',
                                                         '--device=cpu', '--workers=0'], one_image_zip, words=['--data'])
    add('stats-kid-features-int8', 'stats', 'fid', ['{fid}', 'kid', '--images={d}/i8.npz', '--ref={feats}'] + FID,
        lambda d, f: np.savez(f'{d}/i8.npz', features=np.ones((4, 2048), 'int8')),
        expect='either')

    # --- zip ---------------------------------------------------------------------------------
    def npz_member_flag(name, key, offset, fmt, value, **arrays):
        def setup(d, f):
            import numpy as np
            np.savez(f'{d}/{name}', **{k: v() for k, v in arrays.items()})
            patch_zip_member(f'{d}/{name}', key + '.npy', offset, fmt, value)
        return setup
    good_ref = dict(mu=lambda: np.zeros(2048), sigma=lambda: np.eye(2048))
    add('zip-ref-encrypted-sigma', 'zip', 'fid', calc, npz_member_flag('ref.npz', 'sigma', 8, '<H', 1, **good_ref), words=['ref.npz'])
    add('zip-ref-deflate64-mu', 'zip', 'fid', calc, npz_member_flag('ref.npz', 'mu', 10, '<H', 9, **good_ref), words=['ref.npz'])
    add('zip-kid-features-deflate64', 'zip', 'fid', ['{fid}', 'kid', '--images={d}/f.npz', '--ref={feats}'] + FID,
        npz_member_flag('f.npz', 'features', 10, '<H', 9, features=lambda: np.ones((4, 2048), 'float32')),
        words=['f.npz'])
    add('zip-tool-npz-images-deflate64', 'zip', 'dataset_tool', TOOL + ['--source={d}/s.npz', '--dest={d}/o.zip'],
        npz_member_flag('s.npz', 'images', 10, '<H', 9, images=lambda: np.zeros((2, 16, 16), 'uint8')), words=['s.npz'])
    add('zip-tool-npz-labels-encrypted', 'zip', 'dataset_tool', TOOL + ['--source={d}/s.npz', '--dest={d}/o.zip'],
        npz_member_flag('s.npz', 'labels', 8, '<H', 1, images=lambda: np.zeros((2, 16, 16), 'uint8'),
                        labels=lambda: np.arange(2)), words=['s.npz'])
    add('zip-tool-npz-images-bzip2', 'zip', 'dataset_tool', TOOL + ['--source={d}/s.npz', '--dest={d}/o.zip'],
        npz_member_flag('s.npz', 'images', 10, '<H', 12, images=lambda: np.zeros((2, 16, 16), 'uint8')), words=['s.npz'])

    def data_json_flag(offset, value):
        def setup(d, f):
            write_zip(f'{d}/data.zip', image_members(digit_images(8)), labels=[[f'00000/img{i:08d}.png', i % 2] for i in range(8)])
            patch_zip_member(f'{d}/data.zip', 'dataset.json', offset, '<H', value)
        return setup
    add('zip-train-dataset-json-encrypted', 'zip', 'train', TRAIN + ['--data={d}/data.zip', '--cond=1', '-n'], data_json_flag(8, 1),
        words=['dataset.json'])
    add('zip-train-dataset-json-deflate64-unused', 'zip', 'train', TRAIN + ['--data={d}/data.zip', '-n'], data_json_flag(10, 9),
        expect='either')
    add('zip-train-dataset-json-deflate64-labels', 'zip', 'train', TRAIN + ['--data={d}/data.zip', '--cond=1', '-n'],
        data_json_flag(10, 9), words=['dataset.json'])
    add('zip-fid-ref-dataset-json-encrypted', 'zip', 'fid', ['{fid}', 'ref', '--data={d}/data.zip', '--dest={d}/r.npz'] + FID,
        data_json_flag(8, 1), expect='either')

    def truncated_zip(d, f):
        data = open(f.digits, 'rb').read()
        open(f'{d}/data.zip', 'wb').write(data[:-30])
    add('zip-train-central-directory-cut', 'zip', 'train', TRAIN + ['--data={d}/data.zip', '-n'], truncated_zip, words=['data.zip'])

    def state_member_flag(d, f):
        shutil.copy(f.state, f'{d}/state.pt')
        with zipfile.ZipFile(f'{d}/state.pt') as z:
            name = next(n for n in z.namelist() if n.endswith('data.pkl'))
        patch_zip_member(f'{d}/state.pt', name, 8, '<H', 1)
    add('zip-resume-state-member-encrypted', 'zip', 'train', TRAIN + TINY + ['--resume={d}/state.pt'], state_member_flag,
        expect='either', limits=TRAIN_LIMITS)

    def state_cut(d, f):
        data = open(f.state, 'rb').read()
        open(f'{d}/state.pt', 'wb').write(data[:len(data) - 200])
    add('zip-resume-state-central-directory-cut', 'zip', 'train', TRAIN + TINY + ['--resume={d}/state.pt'], state_cut,
        words=['--resume'])

    # --- disk: full file systems and file-size limits -------------------------------------------------------
    add('disk-tool-zip-onto-full-fs', 'disk', 'dataset_tool', TOOL + ['--source={noise_npz}', '--dest={d}/full/o.zip'],
        full_disk=True, words=['o.zip', 'space'])
    add('disk-tool-folder-onto-full-fs', 'disk', 'dataset_tool', TOOL + ['--source={noise_npz}', '--dest={d}/full/o'],
        full_disk=True, words=['space'])
    add('disk-fid-ref-onto-full-fs', 'disk', 'fid', ['{fid}', 'ref', '--data={digits}', '--dest={d}/full/r.npz'] + FID,
        full_disk=True, words=['r.npz', 'space'])
    add('disk-generate-onto-full-fs', 'disk', 'generate', GEN + ['--network={net}', '--outdir={d}/full/out', '--seeds=0-199',
                                                                '--image_size=64'], full_disk=True, words=['space'])
    add('disk-generate-grid-onto-full-fs', 'disk', 'generate', GEN + ['--network={net}', '--grid={d}/full/g.png', '--seeds=0-3',
                                                                     '--image_size=160', '--steps=1'], full_disk=True,
        words=['g.png', 'space'])
    add('disk-train-onto-full-fs', 'disk', 'train', TRAIN + TINY + ['--outdir={d}/full/runs'], full_disk=True, words=['space'],
        limits=TRAIN_LIMITS)
    add('disk-convert-onto-full-fs', 'disk', 'convert_network', CONVERT + ['--network={big_net}', '--dest={d}/full/n.safetensors'],
        full_disk=True, words=['space'])
    add('disk-phema-onto-full-fs', 'disk', 'reconstruct_phema', PHEMA + ['--indir={run}', '--outdir={d}/full/out', '--outstd=0.07'],
        full_disk=True, words=['space'])
    add('disk-tool-file-size-limit', 'disk', 'dataset_tool', TOOL + ['--source={noise_npz}', '--dest={d}/o.zip'], fsize=32 << 10,
        words=['o.zip'])
    add('disk-fid-ref-file-size-limit', 'disk', 'fid', ['{fid}', 'ref', '--data={digits}', '--dest={d}/r.npz'] + FID,
        fsize=1 << 20, words=['r.npz'])
    add('disk-train-file-size-limit', 'disk', 'train', TRAIN + TINY, fsize=64 << 10, words=[], limits=TRAIN_LIMITS)

    # --- names -------------------------------------------------------------------------------
    add('names-mem-pairs-250-bytes', 'names', 'fid', ['{fid}', 'mem', '--images={images}', '--data={digits}',
                                                      '--pairs={d}/' + 'p' * 246 + '.png', '--device=cpu', '--workers=0'],
        words=['--pairs'])
    add('names-convert-dest-245-bytes', 'names', 'convert_network', CONVERT + ['--network={net}', '--dest={d}/' + 'c' * 233 + '.safetensors'],
        words=['--dest'])
    add('names-tool-dest-folder-250-bytes', 'names', 'dataset_tool', TOOL + ['--source={npz}', '--dest={d}/' + 'f' * 250],
        words=['--dest'])
    add('names-fid-ref-dest-utf8-254-bytes', 'names', 'fid', ['{fid}', 'ref', '--data={digits}', '--dest={d}/' + 'é' * 125 + '.npz']
        + FID, words=['--dest'])
    add('names-grid-utf8-258-bytes', 'names', 'generate', GEN + ['--network={net}', '--grid={d}/' + 'ü' * 127 + '.png'],
        words=['--grid'])
    add('names-train-outdir-256-bytes', 'names', 'train', TRAIN + ['--outdir={d}/' + 'o' * 256, '-n'], words=['--outdir'])
    add('names-train-desc-utf8', 'names', 'train', TRAIN + ['--desc=' + 'ä' * 110, '-n'], words=['--desc'])
    add('names-phema-outdir-256-bytes', 'names', 'reconstruct_phema', PHEMA + ['--indir={run}', '--outdir={d}/' + 'r' * 256,
                                                                              '--outstd=0.07'], words=['--outdir'])
    add('names-generate-outdir-255-bytes', 'names', 'generate', GEN + ['--network={net}', '--outdir={d}/' + 'g' * 255],
        expect='accept')

    # --- state: broken training states and profiles -------------------------------------------------
    def state_case(id, change, expect='refuse', real=False, words=('--resume',)):
        def setup(d, f):
            edit_state(f, d, change)
        add(f'state-{id}', 'state', 'train', TRAIN + TINY + ['--resume={d}/state.pt'] + ([] if real else ['-n']), setup,
            expect=expect, words=words, limits=TRAIN_LIMITS)

    def nan_weights(state):
        for tensor in state['net'].values():
            if tensor.is_floating_point():
                tensor.fill_(float('nan'))
    state_case('nan-weights', nan_weights, real=True)
    state_case('nan-ema', lambda s: [t.fill_(float('inf')) for t in s['ema'].values() if t.is_floating_point()], real=True)
    state_case('negative-nimg', lambda s: s.update(nimg=-1000), real=True)
    state_case('huge-nimg', lambda s: s.update(nimg=2**70), real=True)
    state_case('nimg-text', lambda s: s.update(nimg='many'), real=True)
    state_case('step-float', lambda s: s.update(step=1.5), real=True, expect='either')
    state_case('no-optimizer', lambda s: s.pop('optimizer_state', None), real=True)
    state_case('rng-states-text', lambda s: s.update(rng_states='none'), real=True)
    state_case('net-empty', lambda s: s.update(net={}))
    state_case('batch-size-text', lambda s: s.update(batch_size='eight'))
    state_case('network-kwargs-list', lambda s: s.update(network_kwargs=[1, 2]))
    state_case('blocks-consumed-negative', lambda s: s.update(blocks_consumed=-5), real=True)
    add('state-resume-a-snapshot', 'state', 'train', TRAIN + TINY + ['--resume={net}'], words=['--resume'])
    add('state-resume-a-safetensors', 'state', 'train', TRAIN + TINY + ['--resume={net_st}'], words=['--resume'])

    def phema_change(change):
        def setup(d, f):
            import torch
            run = copy_run(f, d)
            name = next(n for n in os.listdir(run) if n.startswith('phema-'))
            state = torch.load(os.path.join(run, name), weights_only=True)
            change(state)
            torch.save(state, os.path.join(run, name))
        return setup
    phema_args = PHEMA + ['--indir={d}/run', '--outdir={d}/out', '--outstd=0.07']
    add('state-phema-gamma-nan', 'state', 'reconstruct_phema', phema_args,
        phema_change(lambda s: s.update(gamma=[float('nan')] * len(s['gamma']))), words=['phema-'])
    add('state-phema-averages-missing', 'state', 'reconstruct_phema', phema_args,
        phema_change(lambda s: s.update(averages=s['averages'][:1])), words=['phema-'])
    add('state-phema-step-negative', 'state', 'reconstruct_phema', phema_args, phema_change(lambda s: s.update(step=-10)),
        words=['phema-'])
    add('state-phema-text-file', 'state', 'reconstruct_phema', phema_args,
        lambda d, f: (copy_run(f, d), open(os.path.join(d, 'run', next(n for n in os.listdir(f'{d}/run') if n.startswith('phema-'))),
                                           'w').write('not a profile')), words=['phema-'])

    # --- options ----------------------------------------------------------------------------------
    for script, args in (('fid', ['{fid}', 'gen', '--network={net}', '--ref={ref}', '--num=2', '--steps=2', '--detector={det}']),
                         ('fid', ['{fid}', 'mem', '--images={images}', '--data={digits}', '--workers=0']),
                         ('fid', ['{fid}', 'ref', '--data={digits}', '--dest={d}/r.npz', '--detector={det}', '--workers=0']),
                         ('fid', ['{fid}', 'kid', '--images={feats}', '--ref={feats}', '--detector={det}'])):
        add(f'options-{script}-{args[1]}-device-meta', 'options', script, args + ['--device=meta'], words=['--device'])
    add('options-generate-device-cuda-absent', 'options', 'generate', GEN[:1] + ['--network={net}', '--outdir={d}/out',
                                                                                 '--device=cuda'], words=['--device'])
    add('options-train-device-cuda-7', 'options', 'train', TRAIN + ['--device=cuda:7', '-n'], words=['--device'])
    add('options-calc-device-empty', 'options', 'fid', ['{fid}', 'calc', '--images={images}', '--ref={ref}', '--num=4',
                                                        '--detector={det}', '--device=', '--workers=0'], words=['--device'])
    add('options-generate-device-mps', 'options', 'generate', GEN[:1] + ['--network={net}', '--outdir={d}/out', '--device=mps'],
        words=['--device'])
    add('options-train-device-xpu', 'options', 'train', TRAIN[:-1] + ['--device=xpu', '-n'], words=['--device'])
    add('options-train-seed-2^64', 'options', 'train', TRAIN + TINY[:-1] + ['--seed=18446744073709551616'], words=['--seed'])
    add('options-fid-gen-first-seed-2^64', 'options', 'fid', ['{fid}', 'gen', '--network={net}', '--ref={ref}', '--num=2',
                                                              '--steps=2', '--first-seed=18446744073709551615'] + FID[:2],
        words=['--first-seed'])
    add('options-generate-class-2^70', 'options', 'generate', GEN + ['--network={cond_net}', '--outdir={d}/out',
                                                                     '--class=1180591620717411303424'], words=['--class'])
    add('options-generate-class-beyond-labels', 'options', 'generate', GEN + ['--network={cond_net}', '--outdir={d}/out',
                                                                              '--class=7'], words=['--class'])
    add('options-generate-seeds-empty', 'options', 'generate', GEN[:-1] + ['--network={net}', '--outdir={d}/out', '--seeds='],
        words=['--seeds'])
    add('options-generate-seeds-open-range', 'options', 'generate', GEN[:-1] + ['--network={net}', '--outdir={d}/out', '--seeds=5-'],
        words=['--seeds'])
    add('options-generate-solver-bogus', 'options', 'generate', GEN + ['--network={net}', '--outdir={d}/out', '--solver=rk45'],
        words=['--solver'])
    for value in ('0', '7', '16x0', '-4', '999999', 'nan'):
        add(f'options-train-patch-sizes-{value}', 'options', 'train', TRAIN + [f'--patch-sizes={value}', '-n'], words=['--patch-sizes'])
    for value in ('nan', '0.5', '-0.1', ''):
        add(f'options-train-ema-std-{value or "empty"}', 'options', 'train', TRAIN + [f'--ema-std={value}', '-n'], words=['--ema-std'])
    add('options-train-metrics-bogus', 'options', 'train', TRAIN + ['--metrics=fid,inception', '-n'], words=['--metrics'])
    add('options-train-fp16-on-cpu', 'options', 'train', TRAIN + TINY + ['--precision=fp16'], expect='either',
        check=lambda d, f, r: None if r[0].returncode != 0 or 'fp16' in r[0].stdout.split('Training options:')[0]
        else 'trains in fp32 under the name fp16 without a word', limits=TRAIN_LIMITS)
    add('options-calc-num-trillion', 'options', 'fid', ['{fid}', 'calc', '--images={images}', '--ref={ref}',
                                                        '--num=1000000000000'] + FID, expect='either')
    add('options-phema-outkimg-huge', 'options', 'reconstruct_phema', PHEMA + ['--indir={run}', '--outdir={d}/out', '--outstd=0.07',
                                                                              '--outkimg=1000000000000000000000000000000'],
        words=['--outkimg'])
    for value in ('0x0', 'abc', '16x16x3', '-16x16'):
        add(f'options-tool-resolution-{value}', 'options', 'dataset_tool', TOOL + ['--source={npz}', '--dest={d}/o.zip',
                                                                                   f'--resolution={value}'], words=['--resolution'])
    add('options-tool-channels-2', 'options', 'dataset_tool', TOOL + ['--source={npz}', '--dest={d}/o.zip', '--channels=2'],
        words=['--channels'])
    add('options-tool-transform-bogus', 'options', 'dataset_tool', TOOL + ['--source={npz}', '--dest={d}/o.zip',
                                                                           '--transform=fisheye'], words=['--transform'])
    add('options-convert-dest-empty', 'options', 'convert_network', CONVERT + ['--network={net}', '--dest='], words=['--dest'])
    add('options-convert-network-ftp-url', 'options', 'convert_network', CONVERT + ['--network=ftp://example.com/n.pkl',
                                                                                    '--dest={d}/n.safetensors'], words=['--network'])
    add('options-generate-network-folder', 'options', 'generate', GEN + ['--network={d}', '--outdir={d}/out'], words=['--network'])
    add('options-generate-network-empty-file', 'options', 'generate', GEN + ['--network={d}/empty.pkl', '--outdir={d}/out'],
        lambda d, f: open(f'{d}/empty.pkl', 'wb').close(), words=['--network'])
    add('options-convert-pickle-of-a-list', 'options', 'convert_network', CONVERT + ['--network={d}/l.pkl', '--dest={d}/l.safetensors'],
        lambda d, f: dump_pickle(f'{d}/l.pkl', [1, 2, 3]), words=['--network'])
    add('options-generate-pickle-ema-tensor', 'options', 'generate', GEN + ['--network={d}/t.pkl', '--outdir={d}/out'],
        lambda d, f: dump_pickle(f'{d}/t.pkl', dict(ema=np.zeros(3))), words=['--network'])

    # --- garbage: values that would make garbage silently -------------------------------------------------
    add('garbage-generate-rho-tiny', 'garbage', 'generate', GEN + ['--network={net}', '--outdir={d}/out', '--rho=1e-30'],
        words=['--rho'])
    add('garbage-generate-rho-huge', 'garbage', 'generate', GEN + ['--network={net}', '--outdir={d}/out', '--rho=1e300'],
        words=['--rho'])
    add('garbage-generate-sigma-min-underflow', 'garbage', 'generate', GEN + ['--network={net}', '--outdir={d}/out',
                                                                              '--sigma_min=1e-50'], words=['--sigma_min'])
    add('garbage-generate-cfg-1e30', 'garbage', 'generate', GEN + ['--network={cond_net}', '--outdir={d}/out', '--cfg=1e30'],
        words=['--cfg'])
    add('garbage-generate-guidance-1e30', 'garbage', 'generate', GEN + ['--network={net}', '--outdir={d}/out', '--guide-network={net}',
                                                                        '--guidance=1e30'], words=['--guidance'])
    add('garbage-generate-s-max-below-s-min', 'garbage', 'generate', GEN + ['--network={net}', '--outdir={d}/out', '--S_churn=10',
                                                                           '--S_min=50', '--S_max=1'], expect='either')
    add('garbage-train-p-mean-100', 'garbage', 'train', TRAIN + ['--p-mean=100', '-n'], words=['--p-mean'])
    add('garbage-train-p-std-1e10', 'garbage', 'train', TRAIN + ['--p-std=1e10', '-n'], words=['--p-std'])
    add('garbage-train-sigma-data-1e30', 'garbage', 'train', TRAIN + ['--sigma-data=1e30', '-n'], words=['--sigma-data'])
    add('garbage-train-ls-1e-45', 'garbage', 'train', TRAIN + ['--ls=1e-45', '-n'], words=['--ls'])
    add('garbage-train-lr-1e39', 'garbage', 'train', TRAIN + ['--lr=1e39', '-n'], words=['--lr'])
    add('garbage-tool-float-nan-pixels', 'garbage', 'dataset_tool', TOOL + ['--source={d}/f.npz', '--dest={d}/o.zip', '--range=0,1'],
        lambda d, f: float_npz(f'{d}/f.npz', np.full((2, 8, 8, 2), np.nan)), words=['f.npz'])
    add('garbage-tool-range-empty', 'garbage', 'dataset_tool', TOOL + ['--source={d}/f.npz', '--dest={d}/o.zip', '--range=1,1'],
        lambda d, f: float_npz(f'{d}/f.npz', np.ones((2, 8, 8, 2))), words=['--range'])
    add('garbage-tool-range-infinite', 'garbage', 'dataset_tool', TOOL + ['--source={d}/f.npz', '--dest={d}/o.zip', '--range=0,inf'],
        lambda d, f: float_npz(f'{d}/f.npz', np.ones((2, 8, 8, 2))), words=['--range'])
    add('garbage-tool-vector-labels-inf', 'garbage', 'dataset_tool', TOOL + ['--source={d}/l.npz', '--dest={d}/o.zip'],
        lambda d, f: np.savez(f'{d}/l.npz', images=np.zeros((2, 16, 16), 'uint8'),
                                       labels=np.array([[0.0, -np.inf], [1.0, 2.0]])), words=['l.npz'])

    def json_inf_labels(d, f):
        members = image_members(digit_images(8))
        text = json.dumps({'labels': [[n, [1.0, float('inf')]] for n in members]})
        write_zip(f'{d}/data.zip', members, json_text=text)
    add('garbage-train-json-vector-labels-inf', 'garbage', 'train', TRAIN + ['--data={d}/data.zip', '--cond=1', '-n'],
        json_inf_labels, words=['dataset.json'])

    def json_ragged_labels(d, f):
        members = image_members(digit_images(8))
        text = json.dumps({'labels': [[n, [1.0] * (1 + i % 3)] for i, n in enumerate(members)]})
        write_zip(f'{d}/data.zip', members, json_text=text)
    add('garbage-train-json-ragged-labels', 'garbage', 'train', TRAIN + ['--data={d}/data.zip', '--cond=1', '-n'],
        json_ragged_labels, words=['dataset.json'])

    def json_deep(d, f):
        members = image_members(digit_images(4))
        write_zip(f'{d}/data.zip', members, json_text='{"labels": ' + '[' * 100000 + ']' * 100000 + '}')
    add('garbage-train-json-nested-100000-deep-unused', 'garbage', 'train', TRAIN + ['--data={d}/data.zip', '-n'], json_deep,
        expect='either')
    add('garbage-train-json-nested-100000-deep-labels', 'garbage', 'train', TRAIN + ['--data={d}/data.zip', '--cond=1', '-n'],
        json_deep, words=['dataset.json'])

    def json_string_labels(d, f):
        members = image_members(digit_images(8))
        write_zip(f'{d}/data.zip', members, json_text=json.dumps({'labels': [[n, 'three'] for n in members]}))
    add('garbage-tool-json-string-labels', 'garbage', 'dataset_tool', TOOL + ['--source={d}/data.zip', '--dest={d}/o.zip'],
        json_string_labels, words=['dataset.json'])
    add('garbage-phema-outstd-tiny', 'garbage', 'reconstruct_phema', PHEMA + ['--indir={run}', '--outdir={d}/out',
                                                                              '--outstd=0.00001'], words=['--outstd'])
    add('garbage-phema-outstd-ten', 'garbage', 'reconstruct_phema', PHEMA + ['--indir={run}', '--outdir={d}/out', '--outstd=10'],
        words=['--outstd'])
    add('garbage-tool-mixed-image-sizes', 'garbage', 'train', TRAIN + ['--data={d}/mixed.zip', '-n'],
        lambda d, f: write_zip(f'{d}/mixed.zip', {**image_members(digit_images(3)),
                                                   '00000/img00000009.png': png_bytes(digit_images(1, size=32)[0])}),
        words=['mixed.zip'])

    # --- cache: TorchInductor's cache ----------------------------------------------------------------
    def cache_with_fifo(d, f):
        os.makedirs(f'{d}/inductor/ab')
        mkfifo(f'{d}/inductor/ab/kernel.so')
    add('cache-fifo-named-like-a-kernel', 'cache', 'train', TRAIN + ['--compile=1', '-n'], cache_with_fifo, expect='either',
        env=dict(TORCHINDUCTOR_CACHE_DIR='{d}/inductor'))

    def cache_with_cut_object(d, f):
        import _ctypes
        library = open(os.path.realpath(_ctypes.__file__), 'rb').read()
        os.makedirs(f'{d}/inductor/cd/ef')
        open(f'{d}/inductor/cd/ef/kernel.o', 'wb').write(library[:len(library) // 2])
        open(f'{d}/inductor/cd/ef/whole.so', 'wb').write(library)
    add('cache-truncated-object-file', 'cache', 'train', TRAIN + ['--compile=1', '-n'], cache_with_cut_object, expect='accept',
        env=dict(TORCHINDUCTOR_CACHE_DIR='{d}/inductor'), may_change=['{d}/inductor/cd/ef/kernel.o'],
        check=lambda d, f, r: None if not os.path.exists(f'{d}/inductor/cd/ef/kernel.o') and os.path.exists(f'{d}/inductor/cd/ef/whole.so')
        else 'the truncated kernel.o is still there, or whole.so is gone')
    add('cache-dir-is-a-file', 'cache', 'train', TRAIN + ['--compile=1', '-n'], notes, expect='either',
        env=dict(TORCHINDUCTOR_CACHE_DIR='{d}/notes.txt'))

    # --- temps: temporary files of killed writers ----------------------------------------------------
    def temp_with_pid(pid, name='.o.zip.{pid}.abcdef12.tmp'):
        def setup(d, f):
            path = os.path.join(d, name.format(pid=pid))
            open(path, 'w').write('half a file')
            old(path)
        return setup
    add('temps-pid-beyond-64-bits', 'temps', 'dataset_tool', TOOL + ['--source={npz}', '--dest={d}/o.zip'],
        temp_with_pid('9' * 30), expect='accept', may_change=['{d}/.o.zip.' + '9' * 30 + '.abcdef12.tmp'])
    add('temps-pid-zero', 'temps', 'dataset_tool', TOOL + ['--source={npz}', '--dest={d}/o.zip'], temp_with_pid(0), expect='accept')

    def temp_link_to_folder(d, f):
        os.makedirs(f'{d}/mine')
        open(f'{d}/mine/thesis.tex', 'w').write('four years of work')
        link = f'{d}/.r.npz.{2**22 + 77}.abcdef12.tmp'
        os.symlink(f'{d}/mine', link)
        old(link)
    add('temps-stale-name-linking-to-a-folder', 'temps', 'fid', ['{fid}', 'ref', '--data={digits}', '--dest={d}/r.npz'] + FID,
        temp_link_to_folder, expect='accept', may_change=[f'{{d}}/.r.npz.{2**22 + 77}.abcdef12.tmp'])

    def temp_fifo(d, f):
        path = f'{d}/.g.png.{2**22 + 78}.abcdef12.tmp'
        mkfifo(path)
        old(path)
    add('temps-stale-name-is-a-fifo', 'temps', 'generate', GEN + ['--network={net}', '--grid={d}/g.png'], temp_fifo, expect='accept',
        may_change=[f'{{d}}/.g.png.{2**22 + 78}.abcdef12.tmp'])

    def aside_and_dest(d, f):
        shutil.copytree(f.dsfolder, f'{d}/ds')
        shutil.copytree(f.dsfolder, f'{d}/.ds.{2**22 + 79}.old.tmp')
        old(f'{d}/.ds.{2**22 + 79}.old.tmp')
    add('temps-moved-aside-beside-a-new-dataset', 'temps', 'dataset_tool', TOOL + ['--source={npz}', '--dest={d}/ds', '--overwrite',
                                                                                  '--max-images=2'],
        aside_and_dest, expect='either', may_change=[f'{{d}}/.ds.{2**22 + 79}.old.tmp', '{d}/ds'])

    # --- resume: the newest state that loads and fits -------------------------------------------------
    def run_with(name, make):
        def setup(d, f):
            run = copy_run(f, d)
            make(os.path.join(run, name))
        return setup
    resume = TRAIN + ['--resume={d}/run', '-n']
    add('resume-newest-state-is-a-fifo', 'resume', 'train', resume, run_with('training-state-000099.pt', mkfifo), expect='accept')
    add('resume-newest-state-links-dev-zero', 'resume', 'train', resume,
        run_with('training-state-000099.pt', lambda p: os.symlink('/dev/zero', p)), expect='accept')
    add('resume-newest-state-is-a-folder', 'resume', 'train', resume, run_with('training-state-000099.pt', os.makedirs),
        expect='accept')
    add('resume-newest-state-empty', 'resume', 'train', resume,
        run_with('training-state-000099.pt', lambda p: open(p, 'wb').close()), expect='accept')
    add('resume-newest-state-symlink-loop', 'resume', 'train', resume,
        run_with('training-state-000099.pt', lambda p: os.symlink(os.path.basename(p), p)), expect='accept')

    def nan_state_in_run(p):
        import torch
        state = torch.load(state_path(os.path.dirname(p)), weights_only=True)
        nan_weights(state)
        torch.save(state, p)
    def resumed_from_finite(d, f, results):
        chosen = [line for line in results[0].stdout.splitlines() if '"resume_state":' in line]
        return 'resumes from the state of NaN weights' if chosen and 'training-state-000099.pt' in chosen[0] else None
    add('resume-newest-state-nan-weights', 'resume', 'train', resume, run_with('training-state-000099.pt', nan_state_in_run),
        expect='accept', check=resumed_from_finite)
    add('resume-state-name-without-number', 'resume', 'train', resume,
        run_with('training-state-latest.pt', lambda p: shutil.copy(state_path(os.path.dirname(p)), p)), expect='accept')
    add('resume-only-profiles', 'resume', 'train', TRAIN + ['--resume={d}/run', '-n'],
        lambda d, f: (copy_run(f, d), [os.remove(os.path.join(d, 'run', n)) for n in os.listdir(f'{d}/run')
                                       if n.startswith('training-state-')]), words=['--resume'])

    # --- r3: a fresh held-out round, one or more cases in each family -----------------------------
    def user_folder(name):
        def setup(d, f):
            os.makedirs(f'{d}/{name}')
            open(f'{d}/{name}/keep.txt', 'w').write('my notes')
        return setup
    add('r3-dest-tool-overwrite-zip-name-is-a-folder', 'dest', 'dataset_tool',
        TOOL + ['--source={npz}', '--dest={d}/out.zip', '--overwrite'], user_folder('out.zip'), words=['--dest'])
    add('r3-dest-tool-overwrite-dest-inside-source', 'dest', 'dataset_tool',
        TOOL + ['--source={d}/ds', '--dest={d}/ds/00000', '--overwrite', '--max-images=2'], ds_copy, words=['--dest'])

    def net_and_link(link):
        def setup(d, f):
            shutil.copy(f.net, f'{d}/net.pkl')
            os.symlink(f'{d}/net.pkl', f'{d}/{link}')
        return setup
    add('r3-dest-convert-dest-links-to-its-network', 'dest', 'convert_network',
        CONVERT + ['--network={d}/net.pkl', '--dest={d}/n.safetensors'], net_and_link('n.safetensors'), words=['--dest'])
    add('r3-dest-grid-links-to-the-network', 'dest', 'generate', GEN + ['--network={d}/net.pkl', '--grid={d}/g.png'],
        net_and_link('g.png'), words=['--grid'])

    def data_and_link(d, f):
        shutil.copy(f.digits, f'{d}/data.zip')
        os.symlink(f'{d}/data.zip', f'{d}/r.npz')
    add('r3-dest-fid-ref-dest-links-to-its-data', 'dest', 'fid', ['{fid}', 'ref', '--data={d}/data.zip', '--dest={d}/r.npz'] + FID,
        data_and_link, words=['--dest'])
    add('r3-dest-mem-pairs-is-a-folder', 'dest', 'fid', ['{fid}', 'mem', '--images={images}', '--data={digits}',
                                                         '--pairs={d}/p.png', '--device=cpu', '--workers=0'],
        user_folder('p.png'), words=['--pairs'])
    add('r3-dest-phema-outdir-unwritable', 'dest', 'reconstruct_phema', PHEMA + ['--indir={run}', '--outdir=/sys/r3-phema',
                                                                                '--outstd=0.07'], words=['--outdir'])
    add('r3-dest-convert-dest-unwritable', 'dest', 'convert_network', CONVERT + ['--network={net}', '--dest=/proc/r3.safetensors'],
        words=['--dest'])
    add('r3-dest-phema-outdir-is-its-indir', 'dest', 'reconstruct_phema', PHEMA + ['--indir={d}/run', '--outdir={d}/run',
                                                                                   '--outstd=0.07'],
        run_copy, expect='either')

    # pickle: other opcodes and allowed-looking globals
    def raw_pickle(name, body):
        def setup(d, f):
            open(f'{d}/{name}', 'wb').write(body(canary(d)))
        return setup
    inst = lambda m: b'(dp0\nVema\np1\n(V' + m.encode() + b'\nios\nmkdir\np2\nsb.'  # noqa: E731 (protocol 0, INST)
    add('r3-pickle-inst-opcode', 'pickle', 'generate', GEN + ['--network={d}/net.pkl', '--outdir={d}/out'],
        raw_pickle('net.pkl', inst), words=['--network'])
    obj = lambda m: (b'\x80\x02}q\x00X\x03\x00\x00\x00emaq\x01(cos\nsystem\nX' + struct.pack('<I', len(f'mkdir "{m}"'))  # noqa: E731
                     + f'mkdir "{m}"'.encode() + b'ou.')
    add('r3-pickle-obj-opcode', 'pickle', 'convert_network', CONVERT + ['--network={d}/net.pkl', '--dest={d}/n.safetensors'],
        raw_pickle('net.pkl', obj), words=['--network'])

    def odd_tensor_args(d, f):
        import torch
        tensor = Reduced((torch._utils._rebuild_tensor_v2, ('not a storage', 0, (4,), (1,), False, collections.OrderedDict())))
        dump_pickle(f'{d}/net.pkl', dict(ema=tensor))
    add('r3-pickle-rebuild-tensor-odd-args', 'pickle', 'generate', GEN + ['--network={d}/net.pkl', '--outdir={d}/out'],
        odd_tensor_args, words=['--network'])

    def numpy_reconstruct(d, f):
        dump_pickle(f'{d}/net.pkl', dict(ema=np.zeros(3)), protocol=2)
    add('r3-pickle-numpy-reconstruct-as-network', 'pickle', 'fid', ['{fid}', 'gen', '--network={d}/net.pkl', '--ref={ref}',
                                                                    '--num=2', '--steps=2'] + FID[:2],
        numpy_reconstruct, words=['--network'])

    def edm_record(class_name, module_src='class X: pass\n', **state):
        from torch_utils import persistence
        meta = dict(type='class', version=6, module_src=module_src, class_name=class_name,
                    state=dict(dict(_init_args=[], _init_kwargs={}), **state))
        return Reduced((persistence._reconstruct_persistent_obj, (meta,)))
    add('r3-pickle-edm-record-wrong-class-name', 'pickle', 'generate', GEN + ['--network={d}/net.pkl', '--outdir={d}/out'],
        lambda d, f: dump_pickle(f'{d}/net.pkl', dict(ema=edm_record('EDMPrecondX'))), words=['--network'])
    add('r3-pickle-edm-record-release-class-bad-channels', 'pickle', 'convert_network',
        CONVERT + ['--network={d}/net.pkl', '--dest={d}/n.safetensors'],
        lambda d, f: dump_pickle(f'{d}/net.pkl', dict(ema=edm_record('Patch_EDMPrecond', img_channels='five', out_channels=[3]))),
        words=['--network'])
    add('r3-pickle-loss-record-of-os-class', 'pickle', 'reconstruct_phema', PHEMA + ['--indir={d}/run', '--outdir={d}/out',
                                                                                    '--outstd=0.07'],
        lambda d, f: resave_snapshot(f, d, lambda data: data.update(loss_fn=edm_record('EDMLoss', _init_kwargs={'P_mean': 'os'}))),
        expect='either')

    def deep_plain(d, f):
        depth = 200000
        body = b'\x80\x04}\x8c\x03ema' + b']' * depth + b'a' * (depth - 1) + b's.'
        open(f'{d}/net.pkl', 'wb').write(body)
    add('r3-pickle-plain-data-200000-deep', 'pickle', 'convert_network', CONVERT + ['--network={d}/net.pkl',
                                                                                   '--dest={d}/n.safetensors'],
        deep_plain, words=['--network'])

    def state_old_global(d, f):
        import torch
        run = copy_run(f, d)
        state = torch.load(state_path(run), weights_only=True)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # TypedStorage is deprecated, which is what this case wants
            state['net'] = {k: Reduced((torch._utils._rebuild_tensor, (v.storage(), 0, tuple(v.shape), tuple(v.stride()))))
                            for k, v in state['net'].items()}
        torch.save(state, os.path.join(run, 'training-state-000099.pt'))
        for name in os.listdir(run):
            if name.startswith('training-state-') and not name.endswith('000099.pt'):
                os.remove(os.path.join(run, name))
    add('r3-pickle-state-older-tensor-global', 'pickle', 'train', TRAIN + TINY + ['--resume={d}/run/training-state-000099.pt'],
        state_old_global, expect='accept', limits=TRAIN_LIMITS)

    # online: URLs where a file names its VAE
    add('r3-online-generate-safetensors-vae-url', 'online', 'generate', GEN + ['--network={d}/l.safetensors', '--outdir={d}/out'],
        lambda d, f: edit_safetensors(f.latent_st, f'{d}/l.safetensors',
                                      lambda r: r['encoder'].update(vae_name='https://example.com/vae/model.safetensors')),
        words=['--network'])

    add('r3-online-fid-ref-latents-vae-url', 'online', 'fid', ['{fid}', 'ref', '--data={d}/latents.zip', '--dest={d}/r.npz'] + FID,
        latents_naming('http://example.com/vae'), expect='either')

    # pairs
    def pair_linked_to_other(d, f):
        from training import checkpoints
        path = f'{d}/network-snapshot-000004.pkl'
        checkpoints.save_snapshot_pair(path, dict(ema=tiny_net(seed=4)))
        os.makedirs(f'{d}/other')
        checkpoints.save_snapshot_pair(f'{d}/other/network-snapshot-000004.pkl', dict(ema=tiny_net(seed=5)))
        os.remove(checkpoints.safetensors_path(path))
        os.symlink(f'{d}/other/network-snapshot-000004.safetensors', checkpoints.safetensors_path(path))
    add('r3-pairs-safetensors-links-to-another-save', 'pairs', 'generate',
        GEN + ['--network={d}/network-snapshot-000004.safetensors', '--outdir={d}/out'], pair_linked_to_other, words=['--network'])

    def pair_without_id(d, f):
        from training import checkpoints
        stale_pair(d)
        path = f'{d}/network-snapshot-000004.safetensors'
        edit_safetensors(path, path + '.new', lambda r: r.pop(checkpoints.SNAPSHOT_ID_KEY, None))
        os.replace(path + '.new', path)
    add('r3-pairs-stale-safetensors-without-id', 'pairs', 'fid', ['{fid}', 'gen', '--network={d}/network-snapshot-000004.safetensors',
                                                                  '--ref={ref}', '--num=2', '--steps=2'] + FID[:2],
        pair_without_id, expect='either')

    # race
    def valid_png(path):
        def check(d, f, results):
            import PIL.Image
            try:
                with PIL.Image.open(path.format(d=d)) as img:
                    img.load()
            except Exception as err:  # noqa: BLE001
                return f'{path.format(d=d)}: {err}'
            return None if any(r.returncode == 0 for r in results) else 'neither process succeeded'
        return check
    add('r3-race-two-grids-one-file', 'race', 'generate', GEN + ['--network={net}', '--grid={d}/g.png'], parallel=2,
        expect='either', check=valid_png('{d}/g.png'))

    def safetensors_loader():
        from training import checkpoints
        return checkpoints.load_safetensors

    add('r3-race-two-conversions-one-safetensors', 'race', 'convert_network', CONVERT + ['--network={net}', '--dest={d}/n.safetensors'],
        parallel=2, expect='either', check=loads('{d}/n.safetensors', safetensors_loader))
    add('r3-race-desc-dot', 'race', 'train', TRAIN + ['--desc=.', '-n'], expect='either', check=stays_inside, words=['--desc'])

    # bombs
    add('r3-bombs-calc-ref-mu-header', 'bombs', 'fid', calc, lambda d, f: npz_claiming(f'{d}/ref.npz', 'mu', (10**10,)),
        words=['ref.npz'])
    add('r3-bombs-tool-npz-images-header', 'bombs', 'dataset_tool', TOOL + ['--source={d}/s.npz', '--dest={d}/o.zip'],
        lambda d, f: npz_claiming(f'{d}/s.npz', 'images', (10**6, 1024, 1024), '|u1'), words=['s.npz'])

    def tiff_claiming(width, height):
        entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8), (277, 3, 1),
                   (278, 4, height), (279, 4, 1)]
        ifd = struct.pack('<H', len(entries)) + b''.join(struct.pack('<HHII', tag, kind, 1, value) for tag, kind, value in entries)
        return b'II*\x00' + struct.pack('<I', 8) + ifd + b'\0\0\0\0'
    add('r3-bombs-tool-tiff-header', 'bombs', 'dataset_tool', TOOL + ['--source={d}/src', '--dest={d}/o.zip'],
        folder_with('big.tif', tiff_claiming(60000, 60000)), words=['big.tif'])

    def strided_network(d, f):
        import torch
        from training import checkpoints
        kwargs = dict(img_resolution=16, img_channels=1, label_dim=0, use_coords=True, model_type='SongUNet', model_channels=4096,
                      channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0)
        from training import networks
        shapes = checkpoints.planned_shapes(networks.EDMPrecond, [], kwargs, 10**12, 10**5)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            storage = torch.zeros(1).storage()
        tensors = {name: Reduced((torch._utils._rebuild_tensor_v2, (storage, 0, shape, (0,) * len(shape), False,
                                                                   collections.OrderedDict()))) for name, shape in shapes.items()}
        dump_pickle(f'{d}/net.pkl', dict(ema=edm_record('EDMPrecond', _init_kwargs=kwargs, _parameters=tensors)))
    add('r3-bombs-generate-stride-zero-weights', 'bombs', 'generate', GEN + ['--network={d}/net.pkl', '--outdir={d}/out'],
        strided_network, words=['--network'])

    def laughs(width, depth):
        value = [0]
        for _ in range(depth):
            value = [value] * width
        return value

    def kwargs_laughs(d, f):
        net = tiny_net()
        net._init_kwargs = dict(net._init_kwargs, extra=laughs(50, 12))
        dump_pickle(f'{d}/net.pkl', dict(ema=net))
    add('r3-bombs-generate-kwargs-shared-lists', 'bombs', 'generate', GEN + ['--network={d}/net.pkl', '--outdir={d}/out'],
        kwargs_laughs, words=['--network'])
    add('r3-bombs-phema-snapshot-shared-lists', 'bombs', 'reconstruct_phema', PHEMA + ['--indir={d}/run', '--outdir={d}/out',
                                                                                      '--outstd=0.07'],
        lambda d, f: resave_snapshot(f, d, lambda data: data.update(notes=laughs(50, 25))), expect='either')

    def zip_size_lie(d, f):
        write_zip(f'{d}/data.zip', image_members(digit_images(8)))
        patch_zip_member(f'{d}/data.zip', '00000/img00000003.png', 24, '<I', 0xFFFFFFF0, local=False)
    add('r3-bombs-train-central-directory-size-lie', 'bombs', 'train', TRAIN + TINY + ['--data={d}/data.zip', '--patch=0'],
        zip_size_lie, words=['data.zip'], limits=TRAIN_LIMITS)
    add('r3-bombs-tool-central-directory-size-lie', 'bombs', 'dataset_tool', TOOL + ['--source={d}/data.zip', '--dest={d}/o.zip'],
        zip_size_lie, words=['img00000003.png'])

    def safetensors_overlap(d, f):
        header = json.dumps({'a': {'dtype': 'F32', 'shape': [4], 'data_offsets': [0, 16]},
                             'b': {'dtype': 'F32', 'shape': [4], 'data_offsets': [8, 24]}, '__metadata__': {}}).encode()
        open(f'{d}/net.safetensors', 'wb').write(struct.pack('<Q', len(header)) + header + b'\0' * 24)
    add('r3-bombs-generate-safetensors-overlapping-tensors', 'bombs', 'generate',
        GEN + ['--network={d}/net.safetensors', '--outdir={d}/out'], safetensors_overlap, words=['--network'])

    # special
    def socket_member(d, f):
        folder_with('1.png', b'')(d, f)
        os.remove(f'{d}/src/1.png')
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(f'{d}/src/1.png')
        sock.close()
    add('r3-special-tool-image-is-a-socket', 'special', 'dataset_tool', TOOL + ['--source={d}/src', '--dest={d}/o.zip'],
        socket_member, words=['1.png'])
    add('r3-special-resume-run-folder-is-a-file', 'special', 'train', TRAIN + TINY + ['--resume={d}/notes.txt/'], notes,
        words=['--resume'])
    add('r3-special-generate-network-dev-null', 'special', 'generate', GEN + ['--network=/dev/null', '--outdir={d}/out'],
        words=['--network'])
    add('r3-special-tool-source-npz-links-dev-zero', 'special', 'dataset_tool', TOOL + ['--source={d}/x.npz', '--dest={d}/o.zip'],
        lambda d, f: os.symlink('/dev/zero', f'{d}/x.npz'), words=['x.npz'])
    add('r3-special-calc-ref-is-proc-file', 'special', 'fid', ['{fid}', 'calc', '--images={images}', '--ref=/proc/self/environ',
                                                               '--num=4'] + FID, words=['environ'])

    # stats
    add('r3-stats-sigma-not-symmetric', 'stats', 'fid', calc,
        stats(mu=lambda: np.zeros(2048), sigma=lambda: np.eye(2048) + np.triu(np.ones((2048, 2048)), 1)), words=['ref.npz'])
    add('r3-stats-sigma-negative', 'stats', 'fid', calc, stats(mu=lambda: np.zeros(2048), sigma=lambda: -np.eye(2048)),
        words=['ref.npz'])
    add('r3-stats-mu-2047', 'stats', 'fid', calc, stats(mu=lambda: np.zeros(2047), sigma=lambda: np.eye(2048)), words=['ref.npz'])
    add('r3-stats-mu-strings', 'stats', 'fid', calc, stats(mu=lambda: np.array(['0.0'] * 2048), sigma=lambda: np.eye(2048)),
        words=['ref.npz'])

    # zip
    def duplicate_json(d, f):
        members = image_members(digit_images(8))
        write_zip(f'{d}/data.zip', members, json_text=json.dumps({'labels': None}))
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            with zipfile.ZipFile(f'{d}/data.zip', 'a') as z:
                z.writestr('dataset.json', json.dumps({'labels': [[n, 99] for n in members]}))
    add('r3-zip-train-duplicate-dataset-json', 'zip', 'train', TRAIN + ['--data={d}/data.zip', '--cond=1', '-n'], duplicate_json,
        words=['dataset.json'])

    def duplicate_image(d, f):
        members = image_members(digit_images(4))
        write_zip(f'{d}/data.zip', members)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            with zipfile.ZipFile(f'{d}/data.zip', 'a') as z:
                z.writestr('00000/img00000000.png', png_bytes(digit_images(1, size=32)[0]))
    add('r3-zip-tool-duplicate-image-member', 'zip', 'dataset_tool', TOOL + ['--source={d}/data.zip', '--dest={d}/o.zip'],
        duplicate_image, expect='either')

    def encrypted_image(d, f):
        write_zip(f'{d}/data.zip', image_members(digit_images(4)))
        patch_zip_member(f'{d}/data.zip', '00000/img00000002.png', 8, '<H', 1)
    add('r3-zip-tool-image-member-encrypted', 'zip', 'dataset_tool', TOOL + ['--source={d}/data.zip', '--dest={d}/o.zip'],
        encrypted_image, words=['img00000002.png'])
    add('r3-zip-ref-sigma-lzma-flag', 'zip', 'fid', calc, npz_member_flag('ref.npz', 'sigma', 10, '<H', 14, **good_ref),
        words=['ref.npz'])

    # disk
    add('r3-disk-convert-file-size-limit', 'disk', 'convert_network', CONVERT + ['--network={big_net}', '--dest={d}/n.safetensors'],
        fsize=16 << 10, words=['n.safetensors'])
    add('r3-disk-grid-file-size-limit', 'disk', 'generate', GEN + ['--network={net}', '--grid={d}/g.png', '--seeds=0-15'],
        fsize=1 << 10, words=['g.png'])

    # names
    add('r3-names-tool-dest-zip-256-bytes', 'names', 'dataset_tool', TOOL + ['--source={npz}', '--dest={d}/' + 'z' * 252 + '.zip'],
        words=['--dest'])
    add('r3-names-grid-path-beyond-4096', 'names', 'generate', GEN + ['--network={net}', '--grid={d}/' + 'a/' * 2100 + 'g.png'],
        words=['--grid'])

    # state
    def wrong_optimizer_shapes(state):
        for value in state['optimizer_state']['state'].values():
            for key, tensor in value.items():
                if key.startswith('exp_avg'):
                    value[key] = tensor.flatten()[:1].clone()
    def float_rng_states(state):
        import torch
        state['rng_states'] = [torch.zeros(5)]
    for id, change, real in (('optimizer-moments-wrong-shape', wrong_optimizer_shapes, True),
                             ('ema-key-missing', lambda s: s['ema'].pop(next(iter(s['ema']))), False),
                             ('rng-state-float-tensor', float_rng_states, True)):
        add(f'r3-state-{id}', 'state', 'train', TRAIN + TINY + ['--resume={d}/state.pt'] + ([] if real else ['-n']),
            functools.partial(lambda change, d, f: edit_state(f, d, change), change), words=['--resume'], limits=TRAIN_LIMITS)

    # options
    add('r3-options-generate-sigma-max-1e400', 'options', 'generate', GEN + ['--network={net}', '--outdir={d}/out',
                                                                             '--sigma_max=1e400'], words=['--sigma_max'])
    add('r3-options-train-real-p-string-inf', 'options', 'train', TRAIN + ['--real-p=inf', '-n'], words=['--real-p'])
    add('r3-options-generate-batch-zero', 'options', 'generate', GEN + ['--network={net}', '--outdir={d}/out', '--batch=0'],
        words=['--batch'])
    add('r3-options-generate-class-minus-one', 'options', 'generate', GEN + ['--network={cond_net}', '--outdir={d}/out',
                                                                             '--class=-1'], words=['--class'])
    add('r3-options-kid-subsets-zero', 'options', 'fid', ['{fid}', 'kid', '--images={feats}', '--ref={feats}', '--subsets=0'] + FID,
        words=['--subsets'])
    add('r3-options-tool-max-images-negative', 'options', 'dataset_tool', TOOL + ['--source={npz}', '--dest={d}/o.zip',
                                                                                  '--max-images=-1'], words=['--max-images'])
    add('r3-options-train-tick-zero', 'options', 'train', TRAIN + ['--tick=0', '-n'], words=['--tick'])
    add('r3-options-train-batch-arabic-digits', 'options', 'train', TRAIN[:-4] + ['--batch=\u0668', '--cbase=8', '--cres=1,2',
                                                                                 '--workers=0', '--device=cpu', '-n'],
        expect='either')
    add('r3-options-train-cres-5000-levels', 'options', 'train', TRAIN[:-3] + ['--cres=' + ','.join(['1'] * 5000), '--workers=0',
                                                                              '--device=cpu', '-n'], words=['--cres'])
    add('r3-options-generate-seeds-20000-duplicates', 'options', 'generate', GEN[:-1] + ['--network={net}', '--outdir={d}/out',
                                                                                         '--seeds=' + ','.join(['7'] * 20000)],
        expect='either')

    # garbage
    def labels_json(labels_of):
        def setup(d, f):
            members = image_members(digit_images(8))
            write_zip(f'{d}/data.zip', members, json_text=json.dumps({'labels': labels_of(list(members))}))
        return setup
    add('r3-garbage-train-labels-fewer-than-images', 'garbage', 'train', TRAIN + ['--data={d}/data.zip', '--cond=1', '-n'],
        labels_json(lambda names: [[n, 1] for n in names[:5]]), words=['dataset.json'])
    add('r3-garbage-train-labels-booleans', 'garbage', 'train', TRAIN + ['--data={d}/data.zip', '--cond=1', '-n'],
        labels_json(lambda names: [[n, i % 2 == 0] for i, n in enumerate(names)]), words=['dataset.json'])
    add('r3-garbage-train-labels-single-floats', 'garbage', 'train', TRAIN + ['--data={d}/data.zip', '--cond=1', '-n'],
        labels_json(lambda names: [[n, 2.5] for n in names]), expect='accept')
    add('r3-garbage-tool-npz-labels-wrong-length', 'garbage', 'dataset_tool', TOOL + ['--source={d}/l.npz', '--dest={d}/o.zip'],
        lambda d, f: np.savez(f'{d}/l.npz', images=np.zeros((4, 16, 16), 'uint8'), labels=np.arange(3)), words=['l.npz'])

    def cifar_short_labels(d, f):
        batch = pickle.dumps({b'data': np.zeros((10, 3072), np.uint8), b'labels': [1, 2, 3]}, protocol=2)
        with tarfile.open(f'{d}/cifar-10-python.tar.gz', 'w:gz') as tar:
            for i in range(1, 6):
                info = tarfile.TarInfo(f'cifar-10-batches-py/data_batch_{i}')
                info.size = len(batch)
                tar.addfile(info, io.BytesIO(batch))
    add('r3-garbage-tool-cifar-labels-shorter', 'garbage', 'dataset_tool', TOOL + ['--source={d}/cifar-10-python.tar.gz',
                                                                                   '--dest={d}/o.zip'],
        cifar_short_labels, words=['cifar-10-python.tar.gz'])
    add('r3-garbage-generate-sigma-max-below-min', 'garbage', 'generate', GEN + ['--network={net}', '--outdir={d}/out',
                                                                                 '--sigma_min=1', '--sigma_max=0.001'],
        words=['--sigma_max'])
    add('r3-garbage-train-duration-minus-zero', 'garbage', 'train', TRAIN + ['--duration=-0', '-n'], words=['--duration'])
    add('r3-garbage-phema-outstd-minus-zero', 'garbage', 'reconstruct_phema', PHEMA + ['--indir={run}', '--outdir={d}/out',
                                                                                      '--outstd=-0'], words=['--outstd'])

    # cache
    add('r3-cache-dir-symlink-loop', 'cache', 'train', TRAIN + ['--compile=1', '-n'],
        lambda d, f: os.symlink(f'{d}/inductor', f'{d}/inductor'), expect='either', env=dict(TORCHINDUCTOR_CACHE_DIR='{d}/inductor'))

    def cache_entry_dev_zero(d, f):
        os.makedirs(f'{d}/inductor/ab')
        os.symlink('/dev/zero', f'{d}/inductor/ab/kernel.so')
    add('r3-cache-kernel-links-dev-zero', 'cache', 'train', TRAIN + ['--compile=1', '-n'], cache_entry_dev_zero, expect='either',
        env=dict(TORCHINDUCTOR_CACHE_DIR='{d}/inductor'))

    # temps
    def temp_named_folder(d, f):
        path = f'{d}/.o.zip.{2**22 + 80}.abcdef12.tmp'
        os.makedirs(path)
        open(f'{path}/thesis.tex', 'w').write('four years of work')
        old(path)
    add('r3-temps-folder-named-like-a-temp', 'temps', 'dataset_tool', TOOL + ['--source={npz}', '--dest={d}/o.zip'],
        temp_named_folder, expect='accept')
    add('r3-temps-fresh-temp-of-a-live-process', 'temps', 'fid', ['{fid}', 'ref', '--data={digits}', '--dest={d}/r.npz'] + FID,
        temp_with_pid(1, '.r.npz.{pid}.abcdef12.tmp'), expect='accept',
        check=lambda d, f, r: None if os.path.exists(f'{d}/.r.npz.1.abcdef12.tmp') else 'removed the temporary file of pid 1')

    # resume
    def truncated_state(p):
        data = open(state_path(os.path.dirname(p)), 'rb').read()
        open(p, 'wb').write(data[:len(data) // 2])
    add('r3-resume-newest-state-truncated', 'resume', 'train', resume, run_with('training-state-000099.pt', truncated_state),
        expect='accept')

    def only_broken_states(d, f):
        run = copy_run(f, d)
        for name in os.listdir(run):
            if name.startswith('training-state-'):
                open(os.path.join(run, name), 'wb').write(b'PK\x03\x04 not a state')
    add('r3-resume-every-state-broken', 'resume', 'train', resume, only_broken_states, words=['--resume'])
    return cases


class Reduced:
    """An object that pickles as the given (callable, args) pair."""

    def __init__(self, reduced):
        self.reduced = reduced

    def __reduce__(self):
        return self.reduced

# ----------------------------------------------------------------------------------------------
# Shared inputs.


def run_checked(cmd, **kwargs):
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f'{" ".join(cmd)} failed:\n{result.stdout}\n{result.stderr}')
    return result


def build_inputs(root, env, need_latents=True):
    """The files the cases share: data sets, a trained run with post-hoc EMA profiles, networks,
    a stand-in detector and statistics. Returns {name: path}."""
    import numpy as np
    import torch
    from training import checkpoints, encoders
    torch.set_num_threads(1)
    os.makedirs(root)
    f = {'root': root}
    python = sys.executable
    digits = digit_images(24)
    f['digits'] = write_zip(os.path.join(root, 'digits.zip'), image_members(digits[:16]),
                            [[f'00000/img{i:08d}.png', i % 3] for i in range(16)])
    f['npz'] = os.path.join(root, 'digits.npz')
    np.savez(f['npz'], images=np.stack(digits[:8]))
    f['noise_npz'] = os.path.join(root, 'noise.npz')
    np.savez(f['noise_npz'], images=np.random.default_rng(0).integers(0, 256, (400, 32, 32, 3), dtype=np.uint8))
    f['images'] = os.path.join(root, 'images')
    os.makedirs(f['images'])
    for i, img in enumerate(digit_images(16, offset=100)):
        open(os.path.join(f['images'], f'{i:06d}.png'), 'wb').write(png_bytes(img))
    f['det'] = os.path.join(root, 'standin.pt')
    torch.jit.script(standin_detector()).save(f['det'])
    f['ref'] = os.path.join(root, 'ref.npz')
    np.savez(f['ref'], mu=np.zeros(2048), sigma=np.eye(2048))
    f['feats'] = os.path.join(root, 'feats.npz')
    np.savez(f['feats'], features=np.random.default_rng(1).random((16, 2048)).astype(np.float32))
    f['dsfolder'], f['dszip'] = os.path.join(root, 'ds'), os.path.join(root, 'ds.zip')
    for dest in (f['dsfolder'], f['dszip']):
        run_checked([python, os.path.join(ROOT, 'dataset_tool.py'), f'--source={f["npz"]}', f'--dest={dest}'], env=env)
    floats = float_npz(os.path.join(root, 'floats.npz'), np.random.default_rng(2).random((8, 16, 16, 2)))
    f['arrays'] = os.path.join(root, 'arrays.zip')
    run_checked([python, os.path.join(ROOT, 'dataset_tool.py'), f'--source={floats}', f'--dest={f["arrays"]}', '--range=0,1'], env=env)
    run_checked([python, os.path.join(ROOT, 'train.py'), f'--outdir={root}/runs', f'--data={f["digits"]}', '--batch=8', '--cbase=8',
                 '--cres=1,2', '--workers=0', '--device=cpu', '--ema-std=0.05,0.1'] + TINY, env=env)
    (run,) = os.listdir(os.path.join(root, 'runs'))
    f['run'] = os.path.join(root, 'runs', run)
    f['state'] = state_path(f['run'])
    f['net'] = os.path.join(f['run'], next(n for n in sorted(os.listdir(f['run'])) if n.startswith('network-snapshot-') and n.endswith('.pkl')))
    f['net_st'] = checkpoints.safetensors_path(f['net'])
    f['cond_net'] = dump_pickle(os.path.join(root, 'cond.pkl'), dict(ema=tiny_net(label_dim=3)))
    f['big_net'] = dump_pickle(os.path.join(root, 'big.pkl'), dict(ema=tiny_net(model_channels=64)))
    latent = tiny_net(channels=4, resolution=8)
    f['latent_pkl'] = dump_pickle(os.path.join(root, 'latent.pkl'), dict(ema=latent, encoder=encoders.StabilityVAEEncoder(vae_name=HUB_VAE)))
    f['latent_st'] = os.path.join(root, 'latent.safetensors')
    checkpoints.save_safetensors(f['latent_st'], latent, encoders.StabilityVAEEncoder(vae_name=HUB_VAE))
    f['latent_st_local'] = os.path.join(root, 'latent-local.safetensors')
    checkpoints.save_safetensors(f['latent_st_local'], latent, encoders.StabilityVAEEncoder(vae_name=os.path.join(root, 'tiny-vae')))
    if need_latents:
        from diffusers import AutoencoderKL
        torch.manual_seed(0)
        AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=4,
                      down_block_types=('DownEncoderBlock2D',) * 4, up_block_types=('UpDecoderBlock2D',) * 4,
                      block_out_channels=(8, 8, 8, 8), sample_size=64).save_pretrained(os.path.join(root, 'tiny-vae'))
        colour = np.stack([np.stack([img.repeat(4, 0).repeat(4, 1)] * 3, axis=-1) for img in digits[:8]])
        source = os.path.join(root, 'colour.npz')
        np.savez(source, images=colour)
        f['latents'] = os.path.join(root, 'latents.zip')
        run_checked([python, os.path.join(ROOT, 'dataset_tool.py'), f'--source={source}', f'--dest={f["latents"]}',
                     '--encoder=vae', f'--vae={root}/tiny-vae'], env=env)
    return f


def standin_detector():
    """A detector with fid-helper's contract, (N, 3, 299, 299) → (N, 2048), defined when torch is
    imported (--list does not import it)."""
    import torch

    class Detector(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1).repeat(1, 683)[:, :2048]
    return Detector()

# ----------------------------------------------------------------------------------------------
# Running and judging.


class ProxyCanary:
    """A local TCP listener that every case's HTTP(S) proxy points to: a connection means the
    program tried to go online. It records the time and the first bytes, and closes."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(('127.0.0.1', 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.hits = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    first = conn.recv(200)
                except OSError:
                    first = b''
                self.hits.append(first.split(b'\r\n', 1)[0].decode(errors='replace'))


def disk_state(folders):
    """{path: (kind, content hash or link target)} of everything under `folders` (links not followed)."""
    state = {}
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                if os.path.islink(path):
                    state[path] = ('link', os.readlink(path))
                elif os.path.isdir(path):
                    state[path] = ('dir',)
                elif st.st_mode & 0o170000 == 0o100000:
                    with open(path, 'rb') as fp:
                        state[path] = ('file', hashlib.sha1(fp.read()).hexdigest())
                else:
                    state[path] = ('special', st.st_mode & 0o170000)
    return state


def can_mount():
    """True when a tmpfs can be mounted here (root with the capability)."""
    if os.geteuid() != 0:
        return False
    with tempfile.TemporaryDirectory() as folder:
        if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', folder], capture_output=True).returncode != 0:
            return False
        subprocess.run(['umount', folder], capture_output=True)
    return True


def mount_full(folder, size=1 << 20, free=24 << 10):
    """Mounts a tmpfs of `size` bytes at `folder` and fills it up to `free` bytes left."""
    os.makedirs(folder)
    subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', folder], check=True, capture_output=True)
    with open(os.path.join(folder, '.filler'), 'wb') as fp:
        fp.write(b'\0' * (size - free))


Result = collections.namedtuple('Result', 'returncode stdout stderr hung seconds')


def preexec(fsize):
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if fsize:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    return limit


def group_cpu_seconds(pgid):
    """CPU seconds used so far by the processes of process group `pgid` (read from /proc)."""
    total = 0
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat', 'rb') as fp:
                fields = fp.read().rsplit(b')', 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf('SC_CLK_TCK')


def run_processes(cmd, cwd, env, limits, parallel, fsize):
    """Runs `parallel` copies of `cmd` at once, each in its own process group. A copy hangs when
    it has used `limits.cpu` CPU seconds, used none for `limits.stall` seconds (blocked, e.g. on
    a pipe), or run for `limits.wall` seconds; it is then killed with its group. CPU time, not
    wall time, tells a hang from slowness on a busy machine."""
    started = time.time()
    procs = [subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              preexec_fn=preexec(fsize), start_new_session=True) for _ in range(parallel)]
    outputs = [None] * parallel
    readers = [threading.Thread(target=lambda i=i, p=p: outputs.__setitem__(i, p.communicate()), daemon=True)
               for i, p in enumerate(procs)]
    for reader in readers:
        reader.start()
    hung = [None] * parallel
    progress = [(0.0, started)] * parallel
    while any(p.poll() is None for p in procs):
        time.sleep(1)
        now = time.time()
        for i, proc in enumerate(procs):
            if proc.poll() is not None or hung[i]:
                continue
            cpu = group_cpu_seconds(proc.pid)
            if cpu > progress[i][0] + 0.05:
                progress[i] = (cpu, now)
            reason = ('used its CPU limit' if cpu > limits.cpu else f'no CPU for {limits.stall} s' if now - progress[i][1] > limits.stall
                      else 'ran past the wall limit' if now - started > limits.wall else None)
            if reason:
                hung[i] = f'{reason} ({cpu:.0f} CPU s, {now - started:.0f} s)'
                os.killpg(proc.pid, signal.SIGKILL)
    results = []
    for i, (proc, reader) in enumerate(zip(procs, readers)):
        reader.join()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # workers it left behind
        except ProcessLookupError:
            pass
        out, err = outputs[i]
        results.append(Result(proc.returncode, out.decode(errors='replace'), err.decode(errors='replace'), hung[i],
                              time.time() - started))
    return results


MEMORY_WORDS = ('MemoryError', "can't allocate memory", 'std::bad_alloc', 'Cannot allocate memory', 'out of memory')


def judge_process(case, result):
    """The outcome of one process and the line that shows it."""
    text = result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith('Error:')]
    last = (result.stderr.strip().splitlines() or result.stdout.strip().splitlines() or [''])[-1][:160]
    if result.hung:
        return 'hang', f'{result.hung}: {last}'
    if result.returncode < 0:
        return 'memory', f'killed by signal {-result.returncode}: {last}'
    if result.returncode != 0 and any(word in text for word in MEMORY_WORDS) and len(errors) != 1:
        return 'memory', last
    if 'Traceback (most recent call last)' in text:
        return 'traceback', last
    if result.returncode == 0:
        return ('accepted' if case.expect == 'refuse' else 'ok'), last
    if result.returncode in (1, 2) and len(errors) == 1:
        if case.expect == 'accept':
            return 'refused', errors[0]
        missing = [w for w in case.words if w not in errors[0]]
        if missing:
            return 'unclear', f'{errors[0][:160]} (does not name {", ".join(missing)})'
        return ('one line' if result.returncode == 1 else 'usage'), errors[0][:160]
    return 'unclear', f'exit {result.returncode}: {last}'


def judge(case, results, damaged, code_ran, hits, problem):
    """The worst outcome of a case and what shows it."""
    if code_ran:
        return 'code ran', 'the payload made its canary folder'
    if damaged:
        return 'damaged', '; '.join(damaged[:3])
    if hits:
        return 'online', f'{len(hits)} connection(s): {hits[0][:100]}'
    outcomes = [judge_process(case, r) for r in results]
    order = {name: i for i, name in enumerate(OUTCOMES)}
    outcome, line = max(outcomes, key=lambda o: order[o[0]])
    if problem and order[outcome] < order['accepted']:
        return 'accepted', problem
    return outcome, line


def fill(template, d, f):
    return template.format(d=d, **f)


def run_case(case, f, scripts, root, proxy, base_env, mountable, pristine):
    """Sets up, runs and judges one case; returns (outcome, line, seconds)."""
    d = os.path.join(root, 'cases', case.id)
    os.makedirs(d)
    if case.full_disk and not mountable:
        return 'skipped', 'cannot mount a tmpfs here', 0.0
    if case.setup is not None:
        case.setup(d, f)
    if case.full_disk:
        mount_full(os.path.join(d, 'full'))
    cmd = [sys.executable] + [fill(a, d, dict(f, **scripts)) for a in case.args]
    env = dict(base_env, **{k: fill(v, d, f) for k, v in case.env.items()})
    watched = [f['root'], d]
    before = disk_state(watched)
    hits_before = len(proxy.hits)
    results = run_processes(cmd, d, env, case.limits, case.parallel, case.fsize)
    after = disk_state(watched)
    changeable = tuple(fill(path, d, f) for path in case.may_change)
    damaged = [f'{os.path.relpath(p, root)} {"changed" if p in after else "vanished"}' for p, v in before.items()
               if after.get(p) != v and not p.endswith('.filler')
               and not any(p == r or p.startswith(r + os.sep) for r in changeable)]
    code_ran = bool(os.listdir(CANARY_DIR))
    hits = proxy.hits[hits_before:]
    problem = case.check(d, f, results) if case.check is not None and not code_ran else None
    outcome = judge(case, results, damaged, code_ran, hits, problem)
    if case.full_disk:
        subprocess.run(['umount', os.path.join(d, 'full')], capture_output=True)
    for name in os.listdir(CANARY_DIR):
        shutil.rmtree(os.path.join(CANARY_DIR, name), ignore_errors=True)
    if any(p.startswith(f['root'] + os.sep) for p, v in before.items() if after.get(p) != v):
        restore(f['root'], pristine)
    return outcome[0], outcome[1], max(r.seconds for r in results)


class EasyView(dict):
    """The shared inputs, by key or attribute."""

    def __getattr__(self, name):
        return self[name]


def restore(root, pristine):
    """Puts the shared inputs back from the copy made when they were built."""
    for name in os.listdir(pristine):
        target = os.path.join(root, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        elif os.path.lexists(target):
            os.remove(target)
        source = os.path.join(pristine, name)
        shutil.copytree(source, target, symlinks=True) if os.path.isdir(source) else shutil.copy2(source, target)


def case_env(root, proxy):
    """The environment of every case: behind the canary proxy, with caches in the temporary folder."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ('no_proxy', 'hf_hub_offline', 'transformers_offline')}
    proxy_url = f'http://127.0.0.1:{proxy.port}'
    for key in ('http_proxy', 'https_proxy', 'all_proxy'):
        env[key] = env[key.upper()] = proxy_url
    env.update(HF_HOME=os.path.join(root, 'hf'), DNNLIB_CACHE_DIR=os.path.join(root, 'dnnlib'), HF_HUB_DISABLE_TELEMETRY='1',
               TORCHINDUCTOR_CACHE_DIR=os.path.join(root, 'inductor'), PYTHONDONTWRITEBYTECODE='1', MPLBACKEND='Agg',
               TORCH_HOME=os.path.join(root, 'torch-home'), OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    return env


def table(rows):
    """Counts per outcome, overall and per family."""
    counts = collections.Counter(outcome for _case, outcome, _line, _s in rows)
    lines = ['| outcome | cases |', '| --- | ---: |']
    lines += [f'| {name} | {counts[name]} |' for name in OUTCOMES + ['skipped'] if counts[name] or name in BAD]
    lines.append(f'| total | {len(rows)} |')
    return '\n'.join(lines)


def run_cases(cases, keep):
    global CANARY_DIR
    root = tempfile.mkdtemp(prefix='adversarial-')
    CANARY_DIR = os.path.join(root, 'canary')
    os.makedirs(CANARY_DIR)
    proxy = ProxyCanary()
    env = case_env(root, proxy)
    scripts = {name: os.path.join(ROOT, f'{name}.py') for name in ('train', 'generate', 'fid', 'dataset_tool', 'convert_network',
                                                                    'reconstruct_phema')}
    started = time.time()
    rows = []
    try:
        print(f'Building the shared inputs in {root} ...', flush=True)
        f = build_inputs(os.path.join(root, 'inputs'), env, need_latents=any(c.family == 'online' for c in cases))
        pristine = os.path.join(root, 'pristine')
        shutil.copytree(f['root'], pristine, symlinks=True)
        print(f'  done in {time.time() - started:.0f} s', flush=True)
        mountable = any(c.full_disk for c in cases) and can_mount()
        for i, case in enumerate(cases):
            try:
                outcome, line, seconds = run_case(case, EasyView(f), scripts, root, proxy, env, mountable, pristine)
            except Exception as err:  # a broken setup is the bench's fault: say so, go on
                outcome, line, seconds = 'skipped', f'setup failed: {type(err).__name__}: {err}', 0.0
            rows.append((case, outcome, line, seconds))
            print(f'[{i + 1:3d}/{len(cases)}] {outcome:9s} {seconds:5.1f} s  {case.id}: {line}', flush=True)
    finally:
        for case in cases:
            full = os.path.join(root, 'cases', case.id, 'full')
            if os.path.ismount(full):
                subprocess.run(['umount', full], capture_output=True)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    return rows, time.time() - started


@click.command()
@click.option('--only', help='Comma-separated families to run (default: all)', metavar='LIST')
@click.option('--cases', 'patterns', help="Comma-separated case ids or shell patterns to run (e.g. 'r3-*')", metavar='LIST')
@click.option('--list', 'list_only', help='List the cases and exit', is_flag=True)
@click.option('--keep', help='Keep the temporary folder', is_flag=True)
def main(only, patterns, list_only, keep):
    """Runs the held-out bad inputs and prints the table of outcomes and every case that did not
    end in one clear line (or, where accepting is right, in success)."""
    cases = case_list()
    if only:
        unknown = sorted(set(only.split(',')) - set(FAMILIES))
        if unknown:
            raise click.BadParameter(f'unknown families {", ".join(unknown)} (known: {", ".join(FAMILIES)})', param_hint='--only')
        cases = [c for c in cases if c.family in only.split(',')]
    if patterns:
        cases = [c for c in cases if any(fnmatch.fnmatchcase(c.id, p) for p in patterns.split(','))]
        if not cases:
            raise click.BadParameter(f'no case matches {patterns!r} (--list shows them)', param_hint='--cases')
    if list_only:
        for family, text in FAMILIES.items():
            members = [c for c in cases if c.family == family]
            if members:
                click.echo(f'{family} ({len(members)}): {text}')
                for c in members:
                    click.echo(f'  {c.id}  [{c.script}; {c.expect}]')
        click.echo(f'{len(cases)} cases')
        return
    rows, seconds = run_cases(cases, keep)
    click.echo()
    click.echo(table(rows))
    click.echo(f'\n{len(rows)} cases in {seconds / 60:.1f} min')
    others = [(c, o, line) for c, o, line, _s in rows if o not in ('one line', 'usage', 'ok')]
    if others:
        click.echo('\nNot one clear line (or not accepted where accepting is right):')
        for c, o, line in others:
            click.echo(f'  {o:9s} {c.id} [{c.script}]: {line}')


if __name__ == '__main__':
    main()
