"""Tests of training/dataset.py: EDM's data-set format, options, errors and DataLoader workers."""

import io
import json
import os
import pickle
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch

import dnnlib
from dnnlib.util import UserError
from training.dataset import ALPHA_BACKGROUND, Dataset, ImageFolderDataset, convert_image


def png_bytes(arr, mode=None):
    """Encodes an HW or HWC uint8 array (or a PIL image) as PNG bytes."""
    img = arr if isinstance(arr, PIL.Image.Image) else PIL.Image.fromarray(arr, mode)
    buf = io.BytesIO()
    img.save(buf, format='png')
    return buf.getvalue()


def random_images(n, res=8, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n, res, res, channels) if channels > 1 else (n, res, res)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def edm_name(i):
    return f'{i // 1000:05d}/img{i:08d}.png'


def write_edm(path, images, labels=None, as_zip=False, label_json=True):
    """Writes images in EDM's layout to a folder or zip; `labels` None gives {"labels": null}."""
    files = {edm_name(i): png_bytes(img) for i, img in enumerate(images)}
    if label_json:
        entries = None if labels is None else [[edm_name(i), lab] for i, lab in enumerate(labels)]
        files['dataset.json'] = json.dumps({'labels': entries}).encode()
    if as_zip:
        with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_STORED) as zf:
            for name, data in files.items():
                zf.writestr(name, data)
    else:
        for name, data in files.items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data)
    return path


def test_folder_with_labels(tmp_path):
    images = random_images(5, channels=3)
    labels = [3, 0, 1, 3, 2]
    ds = ImageFolderDataset(write_edm(tmp_path / 'myset', images, labels), use_labels=True)
    assert len(ds) == 5 and ds.name == 'myset'
    assert ds.image_shape == [3, 8, 8] and ds.num_channels == 3 and ds.resolution == 8
    assert ds.label_shape == [4] and ds.label_dim == 4 and ds.has_labels and ds.has_onehot_labels
    for i in range(5):
        image, label = ds[i]
        assert image.dtype == np.uint8 and image.shape == (3, 8, 8)
        np.testing.assert_array_equal(image, images[i].transpose(2, 0, 1))
        assert label.dtype == np.float32
        np.testing.assert_array_equal(label, np.eye(4, dtype=np.float32)[labels[i]])
        np.testing.assert_array_equal(ds.get_label(i), label)


def test_zip_grey_unlabelled(tmp_path):
    images = random_images(4, channels=1)
    ds = ImageFolderDataset(write_edm(tmp_path / 'grey.zip', images, None, as_zip=True))
    assert ds.name == 'grey' and ds.image_shape == [1, 8, 8]
    assert ds.label_shape == [0] and ds.label_dim == 0 and not ds.has_labels
    image, label = ds[2]
    np.testing.assert_array_equal(image[0], images[2])
    assert label.shape == (0,) and label.dtype == np.float32


def test_float_labels_and_any_nesting(tmp_path):
    folder = tmp_path / 'nested'
    names = ['a/b/c/one.png', 'two.png']
    for name, img in zip(names, random_images(2)):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(png_bytes(img))
    (folder / 'dataset.json').write_text(json.dumps({'labels': [['two.png', [0.5, 1.0]], ['a/b/c/one.png', [2.0, -1.0]]]}))
    ds = ImageFolderDataset(folder, use_labels=True)
    assert ds.label_shape == [2] and not ds.has_onehot_labels
    np.testing.assert_array_equal(ds[0][1], [2.0, -1.0])  # names sort: a/b/c/one.png first
    np.testing.assert_array_equal(ds[1][1], [0.5, 1.0])


def test_max_size_is_a_seeded_subset(tmp_path):
    images = random_images(20, res=4)
    path = write_edm(tmp_path / 'set', images, list(range(20)))
    a = ImageFolderDataset(path, max_size=7, use_labels=True, random_seed=1)
    b = ImageFolderDataset(path, max_size=7, use_labels=True, random_seed=1)
    c = ImageFolderDataset(path, max_size=7, use_labels=True, random_seed=2)
    idx_a = [a.get_details(i)['raw_idx'] for i in range(len(a))]
    assert len(a) == 7 and idx_a == sorted(set(idx_a))
    assert idx_a == [b.get_details(i)['raw_idx'] for i in range(7)]
    assert idx_a != [c.get_details(i)['raw_idx'] for i in range(7)]
    for i, raw in enumerate(idx_a):
        np.testing.assert_array_equal(a[i][0], images[raw].transpose(2, 0, 1))
        assert a[i][1].argmax() == raw
    assert len(ImageFolderDataset(path, max_size=100)) == 20


def test_xflip_doubles_and_mirrors(tmp_path):
    images = random_images(3)
    ds = ImageFolderDataset(write_edm(tmp_path / 'set', images, [0, 1, 2]), xflip=True, use_labels=True)
    assert len(ds) == 6
    for i in range(3):
        np.testing.assert_array_equal(ds[i + 3][0], ds[i][0][:, :, ::-1])
        np.testing.assert_array_equal(ds[i + 3][1], ds[i][1])
        assert ds.get_details(i + 3)['xflip'] and not ds.get_details(i)['xflip']


def test_cache_decodes_once(tmp_path, monkeypatch):
    ds = ImageFolderDataset(write_edm(tmp_path / 'set', random_images(2), None), cache=True)
    calls = []
    original = ImageFolderDataset._load_raw_image
    monkeypatch.setattr(ImageFolderDataset, '_load_raw_image', lambda self, i: calls.append(i) or original(self, i))
    first = ds[1][0]
    second = ds[1][0]
    np.testing.assert_array_equal(first, second)
    assert calls == [1]
    first[:] = 0  # items are copies: changing one leaves the cache intact
    assert ds[1][0].any()


def test_dataloader_workers_and_pickle(tmp_path):
    images = random_images(12, channels=3)
    path = write_edm(tmp_path / 'set.zip', images, list(range(12)), as_zip=True)
    ds = ImageFolderDataset(path, use_labels=True)
    ds[0]  # opens the zip in this process before the workers fork
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    batches = list(loader)
    got = torch.cat([b[0] for b in batches]).numpy()
    np.testing.assert_array_equal(got, images.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(torch.cat([b[1] for b in batches]).numpy().argmax(1), np.arange(12))
    clone = pickle.loads(pickle.dumps(ds))  # what spawned workers receive
    np.testing.assert_array_equal(clone[5][0], ds[5][0])


def test_edm_training_options_kwargs(tmp_path):
    path = write_edm(tmp_path / 'set.zip', random_images(4), [1, 0, 1, 0], as_zip=True)
    kwargs = dnnlib.EasyDict(class_name='training.dataset.ImageFolderDataset', path=str(path),
                             use_labels=True, xflip=False, cache=True, resolution=8, max_size=None)
    ds = dnnlib.util.construct_class_by_name(**kwargs)
    assert isinstance(ds, ImageFolderDataset) and ds.label_dim == 2 and ds.resolution == 8


def test_mixed_grey_and_colour_decode_to_rgb(tmp_path):
    folder = tmp_path / 'mixed'
    folder.mkdir()
    (folder / 'a.png').write_bytes(png_bytes(np.full((4, 4), 100, np.uint8)))
    (folder / 'b.png').write_bytes(png_bytes(np.full((4, 4, 3), 7, np.uint8)))
    ds = ImageFolderDataset(folder)
    assert ds.num_channels == 3
    assert (ds[0][0] == 100).all() and (ds[1][0] == 7).all()


def test_convert_image_modes():
    rgba = PIL.Image.fromarray(np.array([[[255, 0, 0, 255], [0, 0, 255, 0]]], np.uint8), 'RGBA')
    np.testing.assert_array_equal(np.asarray(convert_image(rgba, 3)), [[[255, 0, 0], [ALPHA_BACKGROUND] * 3]])
    grey16 = PIL.Image.fromarray(np.array([[0, 65535, 32896]], np.uint16))
    np.testing.assert_array_equal(np.asarray(convert_image(grey16, 1)), [[0, 255, 128]])
    pal = PIL.Image.fromarray(np.array([[[10, 20, 30]]], np.uint8)).convert('P', palette=PIL.Image.Palette.ADAPTIVE)
    np.testing.assert_array_equal(np.asarray(convert_image(pal, 3)), [[[10, 20, 30]]])
    cmyk = PIL.Image.new('CMYK', (1, 1), (0, 255, 255, 0))  # pure red
    np.testing.assert_array_equal(np.asarray(convert_image(cmyk, 3)), [[[255, 0, 0]]])
    la = PIL.Image.fromarray(np.array([[[50, 0]]], np.uint8), 'LA')
    assert np.asarray(convert_image(la, 1))[0, 0] == ALPHA_BACKGROUND
    assert np.asarray(convert_image(PIL.Image.new('L', (1, 1), 9), 3)).tolist() == [[[9, 9, 9]]]


def test_subclass_can_override_raw_loading():
    class Latents(Dataset):
        item_dtype = np.float32

        def __init__(self, **kwargs):
            self.data = np.arange(2 * 4 * 2 * 2, dtype=np.float32).reshape(2, 4, 2, 2)
            super().__init__(name='latents', raw_shape=self.data.shape, **kwargs)

        def _load_raw_image(self, raw_idx):
            return self.data[raw_idx]

        def _load_raw_labels(self):
            return np.array([1, 0])

    ds = Latents(use_labels=True, xflip=True)
    assert len(ds) == 4 and ds.image_shape == [4, 2, 2] and ds.label_dim == 2
    np.testing.assert_array_equal(ds[2][0], ds.data[0][:, :, ::-1])


def error_message(excinfo):
    message = str(excinfo.value)
    assert '\n' not in message
    return message


@pytest.mark.parametrize('case', ['missing', 'badzip', 'empty', 'mixed', 'resolution', 'nolabels', 'nulllabels', 'badjson', 'unlabelled'])
def test_errors(tmp_path, case):
    path = tmp_path / 'set'
    expect = str(path)
    kwargs = {}
    if case == 'missing':
        expect = 'no such data set'
    elif case == 'badzip':
        path = tmp_path / 'set.zip'
        path.write_bytes(b'this is not a zip file')
        expect = 'not a readable zip'
    elif case == 'empty':
        (path / 'sub').mkdir(parents=True)
        (path / 'notes.txt').write_text('hello')
        expect = 'no image files'
    elif case == 'mixed':
        path.mkdir()
        (path / 'a.png').write_bytes(png_bytes(np.zeros((4, 4), np.uint8)))
        (path / 'b.png').write_bytes(png_bytes(np.zeros((6, 6), np.uint8)))
        expect = 'b.png is 6x6'
    elif case == 'resolution':
        write_edm(path, random_images(1), None)
        kwargs = dict(resolution=16)
        expect = 'not the requested resolution 16'
    elif case == 'nolabels':
        write_edm(path, random_images(1), None, label_json=False)
        kwargs = dict(use_labels=True)
        expect = 'has no labels'
    elif case == 'nulllabels':
        write_edm(path, random_images(1), None)
        kwargs = dict(use_labels=True)
        expect = 'has no labels'
    elif case == 'badjson':
        write_edm(path, random_images(1), None)
        (path / 'dataset.json').write_text('{not json')
        kwargs = dict(use_labels=True)
        expect = 'dataset.json'
    elif case == 'unlabelled':
        write_edm(path, random_images(2), [0, 1])
        (path / 'dataset.json').write_text(json.dumps({'labels': [[edm_name(0), 0]]}))
        kwargs = dict(use_labels=True)
        expect = 'no label for 00000/img00000001.png'
    with pytest.raises(UserError) as excinfo:
        ImageFolderDataset(path, **kwargs)
    message = error_message(excinfo)
    assert expect in message and os.path.basename(str(path)) in message


@pytest.mark.parametrize('as_zip', [False, True])
def test_stored_files_folder_or_zip(tmp_path, as_zip):
    from training.dataset import StoredFiles
    images = random_images(2)
    files = StoredFiles(write_edm(tmp_path / ('set.zip' if as_zip else 'set'), images, [0, 1], as_zip=as_zip))
    assert files.type == ('zip' if as_zip else 'dir')
    assert files.names() == ['00000/img00000000.png', '00000/img00000001.png', 'dataset.json']
    assert files.read(edm_name(1)) == png_bytes(images[1])
    assert set(files.stored_heads(26)) == (set(files.names()) if as_zip else set())
    clone = pickle.loads(pickle.dumps(files))  # no handle travels; the copy opens its own
    assert clone._zip is None and json.loads(clone.read('dataset.json'))['labels'][1] == [edm_name(1), 1]
    if as_zip:
        handle = files.zipfile()
        files._zip_pid = -1  # as seen from a forked worker: the parent's handle is not reused
        assert files.zipfile() is not handle
        handle.close()
    files.close()
    clone.close()
    assert files.read(edm_name(0)) == png_bytes(images[0])  # reopens after close
    files.close()


def test_rectangular_images(tmp_path):
    """Images of any width and height are read; `resolution` is then (H, W)."""
    path = tmp_path / 'set'
    path.mkdir()
    image = np.arange(24, dtype=np.uint8).reshape(4, 6)
    (path / 'a.png').write_bytes(png_bytes(image))
    dataset = ImageFolderDataset(path, resolution=(4, 6))
    assert dataset.resolution == (4, 6) and dataset.image_shape == [1, 4, 6]
    assert (dataset[0][0][0] == image).all()
    with pytest.raises(UserError, match='images are 6x4, not the requested resolution 6'):
        ImageFolderDataset(path, resolution=6)


def test_one_reader_for_data_sets_fid_and_dataset_tool(tmp_path):
    """Data sets, fid.py and dataset_tool.py list the same images (hidden files and macOS litter
    left out), decode them alike (alpha on white) and parse dataset.json labels alike."""
    from training import dataset_convert, metrics
    rgba = PIL.Image.new('RGBA', (4, 4), (0, 255, 0, 0))
    path = write_edm(tmp_path / 'set', [np.zeros((4, 4, 3), np.uint8), np.asarray(rgba)], [0.5, 2.0])
    (path / '00000' / '._img00000000.png').write_bytes(b'AppleDouble')
    (path / '__MACOSX').mkdir()
    (path / '__MACOSX' / 'img.png').write_bytes(b'litter')
    ds = ImageFolderDataset(path, use_labels=True)
    files, names = metrics.list_image_files(str(path))
    source = dataset_convert.open_source(str(path))
    assert names == ds._image_fnames == [edm_name(0), edm_name(1)] and len(source) == 2
    image = metrics.ImageFiles(str(path))[1][1]
    assert np.array_equal(image, ds[1][0]) and (image == ALPHA_BACKGROUND).all()
    assert ds.label_shape == [1] and ds.get_label(1).tolist() == [2.0]
    assert [label for _name, _decode, label in source] == [[0.5], [2.0]]
    (path / 'dataset.json').write_text(json.dumps({'labels': [[edm_name(0), 1], [edm_name(1), -2]]}))
    for read in (lambda: ImageFolderDataset(path, use_labels=True), lambda: dataset_convert.open_source(str(path))):
        with pytest.raises(UserError, match='label of 00000/img00000001.png is -2; class labels must be 0 or more'):
            read()
    (path / 'dataset.json').write_text(json.dumps({'labels': [[edm_name(0), 1], [edm_name(1), [0.5]]]}))
    with pytest.raises(UserError, match='all class numbers or all lists'):
        ImageFolderDataset(path, use_labels=True)
