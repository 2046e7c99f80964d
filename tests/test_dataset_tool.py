"""Tests of dataset_tool.py: every source kind, transforms, image modes, errors and the round trip
to training.dataset.ImageFolderDataset. Fixtures are tiny files made in tmp_path."""

import gzip
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner

import dataset_tool
from training import dataset_convert
from training.dataset import ArrayFolderDataset, ImageFolderDataset

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# Helpers.

def run_tool(*args):
    """Runs the command line in-process; returns click's Result."""
    return CliRunner().invoke(dataset_tool.cli, [str(a) for a in args], catch_exceptions=False)


def convert(source, dest, *options):
    result = run_tool('convert', f'--source={source}', f'--dest={dest}', *options)
    assert result.exit_code == 0, result.output
    return result


def convert_load(source, dest, *options):
    """Converts and loads the result (see `load`)."""
    convert(source, dest, *options)
    return load(dest)


def load(dest):
    """All items of a written data set: (N,C,H,W) uint8 images and raw labels (or None)."""
    ds = ImageFolderDataset(dest)
    images = np.stack([ds[i][0] for i in range(len(ds))])
    if zipfile.is_zipfile(dest):
        with zipfile.ZipFile(dest) as zf:
            meta = json.loads(zf.read('dataset.json'))
            assert all(info.compress_type == zipfile.ZIP_STORED for info in zf.infolist())
    else:
        meta = json.loads((Path(dest) / 'dataset.json').read_text())
    names = sorted(n for n in (ds._image_fnames))
    assert names == [f'{i // 1000:05d}/img{i:08d}.png' for i in range(len(ds))]
    labels = None if meta['labels'] is None else [label for _name, label in meta['labels']]
    return images, labels


def expect_error(result, *fragments):
    """Exit status 1, no traceback, and one `Error:` line holding every fragment."""
    assert result.exit_code == 1, result.output
    assert 'Traceback' not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith('Error:')]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert str(fragment) in lines[0], lines[0]
    return lines[0]


def png_bytes(img, fmt='png'):
    if isinstance(img, np.ndarray):
        img = PIL.Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def solid(value, size=(8, 8)):
    """A solid-colour uint8 image: grey for an int, RGB for a tuple."""
    shape = (size[1], size[0]) if np.isscalar(value) else (size[1], size[0], len(value))
    return np.full(shape, value, dtype=np.uint8)


def write_npz(path, images, labels=None):
    arrays = dict(images=images) if labels is None else dict(images=images, labels=labels)
    np.savez(path, **arrays)
    return path


# ----------------------------------------------------------------------------------------------
# Sources.

def test_npz_round_trip_to_loader(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(13, 12, 12, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, size=13)
    dest = tmp_path / 'out.zip'
    result = convert(write_npz(tmp_path / 'rgb.npz', images, labels), dest)
    assert 'Wrote 13 images, 12x12, 3 channels, ' in result.output
    assert f'{len(set(labels.tolist()))} classes' in result.output
    ds = ImageFolderDataset(dest, use_labels=True)
    assert len(ds) == 13 and ds.image_shape == [3, 12, 12] and ds.label_dim == labels.max() + 1
    for i in range(13):
        image, label = ds[i]
        np.testing.assert_array_equal(image, images[i].transpose(2, 0, 1))
        assert label.argmax() == labels[i] and label.sum() == 1


def test_npz_grey_to_folder_unlabelled(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, size=(3, 5, 5), dtype=np.uint8)
    dest = tmp_path / 'grey'
    result = convert(write_npz(tmp_path / 'grey.npz', images), dest)
    assert 'Wrote 3 images, 5x5, 1 channel, no labels' in result.output
    got, labels = load(dest)
    assert labels is None
    np.testing.assert_array_equal(got[:, 0], images)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')], 'temporary files left behind'


def test_npz_float_labels_and_max_images(tmp_path):
    images = np.zeros((6, 4, 4, 1), np.uint8)
    labels = np.arange(12, dtype=np.float32).reshape(6, 2)
    result = convert(write_npz(tmp_path / 'f.npz', images, labels), tmp_path / 'o.zip', '--max-images=4')
    assert 'Wrote 4 images' in result.output and 'float labels' in result.output
    ds = ImageFolderDataset(tmp_path / 'o.zip', use_labels=True)
    assert len(ds) == 4 and ds.label_shape == [2]
    np.testing.assert_array_equal(ds[3][1], [6, 7])
    convert(write_npz(tmp_path / 's.npz', images, np.linspace(0, 1, 6)), tmp_path / 's.zip')
    ds = ImageFolderDataset(tmp_path / 's.zip', use_labels=True)
    assert ds.label_shape == [1] and ds[5][1].tolist() == [1.0]


def test_folder_with_subfolder_labels(tmp_path):
    src = tmp_path / 'animals'
    for cls, value in [('dogs', 200), ('cats', 100)]:
        for i in range(2):
            (src / cls / 'deep').mkdir(parents=True, exist_ok=True)
            (src / cls / 'deep' / f'{i}.png').write_bytes(png_bytes(solid(value + i)))
    (src / 'readme.txt').write_text('not an image')
    images, labels = convert_load(src, tmp_path / 'out.zip')
    assert labels == [0, 0, 1, 1]  # cats < dogs
    assert images[:, 0, 0, 0].tolist() == [100, 101, 200, 201]


@pytest.mark.parametrize('folders', [['only'], ['00000', '00001']])
def test_folders_that_are_not_classes(tmp_path, folders):
    """One sub-folder, or EDM's NNNNN/ layout without dataset.json: no labels."""
    src = tmp_path / 'src'
    for folder in folders:
        (src / folder).mkdir(parents=True)
        (src / folder / 'a.png').write_bytes(png_bytes(solid(1)))
    _images, labels = convert_load(src, tmp_path / 'o.zip')
    assert labels is None


def test_folder_with_dataset_json(tmp_path):
    src = tmp_path / 'src'
    (src / 'x').mkdir(parents=True)
    (src / 'y').mkdir()
    (src / 'x' / 'a.png').write_bytes(png_bytes(solid(10)))
    (src / 'y' / 'b.png').write_bytes(png_bytes(solid(20)))
    (src / 'dataset.json').write_text(json.dumps({'labels': [['y/b.png', 7], ['x/a.png', 3]]}))
    images, labels = convert_load(src, tmp_path / 'o')
    assert labels == [3, 7] and images[:, 0, 0, 0].tolist() == [10, 20]


def test_zip_source(tmp_path):
    src = tmp_path / 'src.zip'
    with zipfile.ZipFile(src, 'w') as zf:
        zf.writestr('b/one.png', png_bytes(solid((1, 2, 3))))
        zf.writestr('a/two.png', png_bytes(solid((4, 5, 6))))
        zf.writestr('a/three.jpg', png_bytes(solid((9, 9, 9)), 'jpeg'))
    images, labels = convert_load(src, tmp_path / 'o.zip')
    assert labels == [0, 0, 1]
    assert images[[1, 2], :, 0, 0].tolist() == [[4, 5, 6], [1, 2, 3]]  # a/three.jpg, a/two.png, b/one.png


def test_cifar10_archive(tmp_path):
    """A fake `cifar-10-python.tar.gz` with the real layout: five pickled batches of bytes-keyed
    dicts holding (N, 3072) uint8 rows (R, G, B planes) and a list of labels."""
    rng = np.random.default_rng(2)
    path = tmp_path / 'cifar-10-python.tar.gz'
    all_rows, all_labels = [], []
    with tarfile.open(path, 'w:gz') as tar:
        for batch in range(1, 6):
            rows = rng.integers(0, 256, size=(2, 3072), dtype=np.uint8)
            labels = rng.integers(0, 10, size=2).tolist()
            data = pickle.dumps({b'batch_label': b'training batch', b'labels': labels, b'data': rows,
                                 b'filenames': [b'a.png', b'b.png']}, protocol=2)
            info = tarfile.TarInfo(f'cifar-10-batches-py/data_batch_{batch}')
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            all_rows.append(rows)
            all_labels += labels
    images, labels = convert_load(path, tmp_path / 'c.zip')
    assert labels == all_labels
    np.testing.assert_array_equal(images, np.concatenate(all_rows).reshape(-1, 3, 32, 32))


def test_cifar10_refuses_code_in_pickle(tmp_path):
    path = tmp_path / 'cifar-10-python.tar.gz'
    data = pickle.dumps({b'data': os.getcwd}, protocol=2)  # a pickle that references a function
    with tarfile.open(path, 'w:gz') as tar:
        info = tarfile.TarInfo('cifar-10-batches-py/data_batch_1')
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    expect_error(run_tool(f'--source={path}', f'--dest={tmp_path / "o.zip"}'), 'cifar-10-python.tar.gz', 'refusing')


def write_idx(path, arr):
    magic = bytes([0, 0, 0x08, arr.ndim]) + b''.join(int(d).to_bytes(4, 'big') for d in arr.shape)
    with gzip.open(path, 'wb') as f:
        f.write(magic + arr.astype(np.uint8).tobytes())


def test_mnist_idx_padded_to_32(tmp_path):
    images = np.random.default_rng(3).integers(1, 256, size=(4, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / 'train-images-idx3-ubyte.gz', images)
    write_idx(tmp_path / 'train-labels-idx1-ubyte.gz', np.array([5, 0, 9, 5]))
    result = convert(tmp_path / 'train-images-idx3-ubyte.gz', tmp_path / 'm.zip')
    assert 'Wrote 4 images, 32x32, 1 channel, 3 classes (label_dim 10)' in result.output
    got, labels = load(tmp_path / 'm.zip')
    assert labels == [5, 0, 9, 5]
    np.testing.assert_array_equal(got[:, 0, 2:30, 2:30], images)
    assert got[:, :, :2].sum() == 0 and got[:, :, :, 30:].sum() == 0


def test_idx_without_labels_and_t10k_names(tmp_path):
    write_idx(tmp_path / 't10k-images-idx3-ubyte.gz', np.ones((2, 28, 28)))
    _images, labels = convert_load(tmp_path / 't10k-images-idx3-ubyte.gz', tmp_path / 'm.zip')
    assert labels is None


@pytest.mark.skipif(not Path('/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz').exists(),
                    reason='apt-get install dataset-fashion-mnist')
def test_real_fashion_mnist(tmp_path):
    result = convert('/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz', tmp_path / 'f.zip', '--max-images=50')
    assert 'Wrote 50 images, 32x32, 1 channel' in result.output
    ds = ImageFolderDataset(tmp_path / 'f.zip', use_labels=True)
    assert ds.label_dim <= 10 and ds[0][1].argmax() == 9  # the first test image is an ankle boot


def test_lsun_lmdb(tmp_path):
    lmdb = pytest.importorskip('lmdb')
    path = tmp_path / 'bedroom_train_lmdb'
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b'k1', png_bytes(solid((10, 20, 30), (12, 8)), 'webp' if PIL.features.check('webp') else 'png'))
        txn.put(b'k2', png_bytes(solid((40, 50, 60), (12, 8))))
    env.close()
    result = convert(path, tmp_path / 'l.zip', '--transform=center-crop', '--resolution=4x4')
    assert 'Wrote 2 images, 4x4, 3 channels, no labels' in result.output
    images, _labels = load(tmp_path / 'l.zip')
    assert abs(int(images[1, 0, 2, 2]) - 40) <= 2


def test_lsun_without_lmdb_package(tmp_path, monkeypatch):
    path = tmp_path / 'church_outdoor_train_lmdb'
    path.mkdir()
    monkeypatch.setitem(sys.modules, 'lmdb', None)  # makes `import lmdb` fail
    expect_error(run_tool(f'--source={path}', f'--dest={tmp_path / "o.zip"}'), 'church_outdoor_train_lmdb', 'lmdb', 'pip install lmdb')


# ----------------------------------------------------------------------------------------------
# Transforms, resizing, channels and image modes.

def test_resize_with_lanczos(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    img = np.random.default_rng(4).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    (src / 'a.png').write_bytes(png_bytes(img))
    images, _ = convert_load(src, tmp_path / 'o.zip', '--resolution=6x6')
    expected = np.asarray(PIL.Image.fromarray(img).resize((6, 6), PIL.Image.LANCZOS))
    np.testing.assert_array_equal(images[0], expected.transpose(2, 0, 1))


def test_center_crop(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    img = np.zeros((6, 10), np.uint8)
    img[:, 2:8] = 200  # the centred 6x6 square is all 200, the sides 0
    (src / 'wide.png').write_bytes(png_bytes(img))
    images, _ = convert_load(src, tmp_path / 'o.zip', '--transform=center-crop', '--resolution=3x3')
    assert images.shape == (1, 1, 3, 3) and (images == 200).all()


def test_center_crop_wide(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    (src / 'tall.png').write_bytes(png_bytes(solid((90, 90, 90), (8, 16))))
    images, _ = convert_load(src, tmp_path / 'o.zip', '--transform=center-crop-wide', '--resolution=8x4')
    assert images.shape == (1, 3, 8, 8)
    assert (images[0, :, :2] == 0).all() and (images[0, :, 6:] == 0).all()  # black bands
    assert (images[0, :, 2:6] == 90).all()


def test_channels_option(tmp_path):
    grey = write_npz(tmp_path / 'g.npz', np.full((2, 4, 4), 77, np.uint8))
    images, _ = convert_load(grey, tmp_path / 'rgb.zip', '--channels=3')
    assert images.shape == (2, 3, 4, 4) and (images == 77).all()
    rgb = write_npz(tmp_path / 'c.npz', np.tile(np.array([255, 0, 0], np.uint8), (2, 4, 4, 1)))
    images, _ = convert_load(rgb, tmp_path / 'grey.zip', '--channels=1')
    assert images.shape == (2, 1, 4, 4) and (images == 76).all()  # ITU-R 601 luma of pure red


def test_image_modes_in_a_folder(tmp_path):
    """16-bit grey, CMYK, palette, LA and RGBA files all become 8-bit RGB; alpha shows white."""
    src = tmp_path / 'src'
    src.mkdir()
    (src / 'a_grey16.png').write_bytes(png_bytes(PIL.Image.fromarray(np.full((4, 4), 65535, np.uint16))))
    (src / 'b_cmyk.tif').write_bytes(png_bytes(PIL.Image.new('CMYK', (4, 4), (0, 255, 255, 0)), 'tiff'))
    (src / 'c_palette.png').write_bytes(png_bytes(PIL.Image.new('RGB', (4, 4), (0, 0, 255)).convert('P')))
    (src / 'd_la.png').write_bytes(png_bytes(PIL.Image.new('LA', (4, 4), (0, 0))))
    (src / 'e_rgba.png').write_bytes(png_bytes(PIL.Image.new('RGBA', (4, 4), (0, 255, 0, 255))))
    result = convert(src, tmp_path / 'o.zip')
    assert '5 images, 4x4, 3 channels' in result.output
    images, _ = load(tmp_path / 'o.zip')
    assert images[:, :, 0, 0].tolist() == [[255] * 3, [255, 0, 0], [0, 0, 255], [255] * 3, [0, 255, 0]]


def test_iterate_images_api(tmp_path):
    """The reusable iterator yields (name, HWC uint8, label) after transforms."""
    path = write_npz(tmp_path / 'x.npz', np.full((3, 10, 10), 5, np.uint8), np.array([2, 1, 0]))
    stream = dataset_convert.iterate_images(str(path), max_images=2, resolution='4x4', channels=3)
    assert len(stream) == 2 and stream.channels == 3
    items = list(stream)
    assert [label for _n, _i, label in items] == [2, 1]
    assert all(img.shape == (4, 4, 3) and img.dtype == np.uint8 for _n, img, _l in items)
    assert items[0][0].endswith('x.npz[0]')


# ----------------------------------------------------------------------------------------------
# Errors and --dest safety.

def test_nonexistent_source(tmp_path):
    expect_error(run_tool('convert', f'--source={tmp_path / "nope"}', f'--dest={tmp_path / "o.zip"}'), 'nope', 'no such')


def test_unknown_source_kind(tmp_path):
    (tmp_path / 'x.txt').write_text('hi')
    expect_error(run_tool(f'--source={tmp_path / "x.txt"}', f'--dest={tmp_path / "o.zip"}'), 'x.txt', 'unknown kind')


def test_empty_source(tmp_path):
    (tmp_path / 'empty').mkdir()
    expect_error(run_tool(f'--source={tmp_path / "empty"}', f'--dest={tmp_path / "o.zip"}'), 'empty', 'no images')
    assert not (tmp_path / 'o.zip').exists()


def test_unknown_transform(tmp_path):
    src = write_npz(tmp_path / 'a.npz', np.zeros((1, 4, 4), np.uint8))
    expect_error(run_tool(f'--source={src}', f'--dest={tmp_path / "o.zip"}', '--transform=zoom', '--resolution=4x4'), '--transform=zoom')


@pytest.mark.parametrize('value', ['abc', '0x4'])
def test_bad_resolution(tmp_path, value):
    src = write_npz(tmp_path / 'a.npz', np.zeros((1, 4, 4), np.uint8))
    expect_error(run_tool(f'--source={src}', f'--dest={tmp_path / "o.zip"}', f'--resolution={value}'), f'--resolution={value}')


def test_bad_channels(tmp_path):
    src = write_npz(tmp_path / 'a.npz', np.zeros((1, 4, 4), np.uint8))
    expect_error(run_tool(f'--source={src}', f'--dest={tmp_path / "o.zip"}', '--channels=2'), '--channels=2')


def test_mixed_sizes_need_resolution(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    (src / 'a.png').write_bytes(png_bytes(solid(1, (8, 8))))
    (src / 'b.png').write_bytes(png_bytes(solid(2, (6, 6))))
    expect_error(run_tool(f'--source={src}', f'--dest={tmp_path / "o.zip"}'), str(src / 'b.png'), '6x6', '--resolution')
    assert not (tmp_path / 'o.zip').exists()
    images, _ = convert_load(src, tmp_path / 'o.zip', '--resolution=4x4')
    assert images.shape == (2, 1, 4, 4)


def test_non_square_kept_resized_and_cropped(tmp_path):
    """Any W and H (issue 20): kept as they are, resized to --resolution=WxH, or cropped to its
    aspect by center-crop."""
    wide = np.zeros((1, 4, 12), np.uint8)
    wide[:, :, 4:8] = 200
    src = write_npz(tmp_path / 'wide.npz', wide)
    images, _ = convert_load(src, tmp_path / 'a.zip')
    assert images.shape == (1, 1, 4, 12) and (images[0, 0] == wide[0]).all()
    images, _ = convert_load(src, tmp_path / 'b.zip', '--resolution=6x2')
    assert images.shape == (1, 1, 2, 6)
    images, _ = convert_load(src, tmp_path / 'c.zip', '--resolution=4x4', '--transform=center-crop')
    assert images.shape == (1, 1, 4, 4) and (images == 200).all()
    images, _ = convert_load(src, tmp_path / 'd.zip', '--resolution=8x4', '--transform=center-crop')
    assert images.shape == (1, 1, 4, 8) and (images[0, 0, :, 2:6] == 200).all() and (images[0, 0, :, 0] == 0).all()


def make_folder_with_bad_image(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    (src / 'a.png').write_bytes(png_bytes(solid(1)))
    good = png_bytes(np.random.default_rng(5).integers(0, 256, size=(8, 8), dtype=np.uint8))
    (src / 'b_truncated.png').write_bytes(good[:len(good) // 2])
    (src / 'c.png').write_bytes(png_bytes(solid(3)))
    return src


def test_truncated_image_is_named(tmp_path):
    src = make_folder_with_bad_image(tmp_path)
    expect_error(run_tool(f'--source={src}', f'--dest={tmp_path / "o.zip"}'), 'b_truncated.png', '--skip-bad')
    assert not (tmp_path / 'o.zip').exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')], 'temporary files left behind'


def test_skip_bad(tmp_path):
    src = make_folder_with_bad_image(tmp_path)
    result = convert(src, tmp_path / 'o.zip', '--skip-bad')
    assert 'b_truncated.png' in result.output
    assert 'Wrote 2 images' in result.output and '1 unreadable image skipped' in result.output
    images, _ = load(tmp_path / 'o.zip')
    assert images[:, 0, 0, 0].tolist() == [1, 3]


def test_decompression_bomb(tmp_path, monkeypatch):
    src = tmp_path / 'src'
    src.mkdir()
    (src / 'bomb.png').write_bytes(png_bytes(solid(0, (64, 64))))
    monkeypatch.setattr(PIL.Image, 'MAX_IMAGE_PIXELS', 1000)  # 4096 pixels > 2x the limit
    expect_error(run_tool(f'--source={src}', f'--dest={tmp_path / "o.zip"}'), 'bomb.png', 'decompression bomb')


def test_existing_dest_is_refused_and_untouched(tmp_path):
    src = write_npz(tmp_path / 'a.npz', np.zeros((2, 4, 4), np.uint8))
    dest = tmp_path / 'o.zip'
    dest.write_bytes(b'precious')
    expect_error(run_tool(f'--source={src}', f'--dest={dest}'), str(dest), '--overwrite')
    assert dest.read_bytes() == b'precious'


def test_overwrite_replaces_and_failure_keeps_old(tmp_path):
    dest = tmp_path / 'out'
    convert(write_npz(tmp_path / 'a.npz', np.full((2, 4, 4), 11, np.uint8)), dest)
    before = sorted(p.relative_to(dest) for p in dest.rglob('*'))
    expect_error(run_tool(f'--source={make_folder_with_bad_image(tmp_path)}', f'--dest={dest}', '--overwrite'), 'b_truncated.png')
    assert sorted(p.relative_to(dest) for p in dest.rglob('*')) == before
    assert (load(dest)[0] == 11).all()
    convert(write_npz(tmp_path / 'b.npz', np.full((3, 4, 4), 22, np.uint8)), dest, '--overwrite')
    images, _ = load(dest)
    assert images.shape[0] == 3 and (images == 22).all()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')], 'temporary files left behind'


def test_overwrite_never_replaces_a_folder_that_is_not_a_data_set(tmp_path):
    dest = tmp_path / 'home'
    dest.mkdir()
    (dest / 'thesis.tex').write_text('precious')
    src = write_npz(tmp_path / 'a.npz', np.zeros((1, 4, 4), np.uint8))
    expect_error(run_tool(f'--source={src}', f'--dest={dest}', '--overwrite'), 'not a data set')
    assert (dest / 'thesis.tex').read_text() == 'precious'


def test_empty_dest_folder_is_fine(tmp_path):
    (tmp_path / 'out').mkdir()
    convert(write_npz(tmp_path / 'a.npz', np.zeros((1, 4, 4), np.uint8)), tmp_path / 'out')
    assert (tmp_path / 'out' / 'dataset.json').exists()


# ----------------------------------------------------------------------------------------------
# The script itself.

def test_script_forms(tmp_path):
    """`python dataset_tool.py [convert] ...` both work (one subprocess: it pays for importing
    torch); `--help` with and without `convert` print the same text. docs/dataset_tool-help.txt
    is checked by tests/test_docs.py."""
    src = write_npz(tmp_path / 'a.npz', np.zeros((2, 4, 4), np.uint8), np.array([0, 1]))
    proc = subprocess.run([sys.executable, 'dataset_tool.py', f'--source={src}', f'--dest={tmp_path / "o.zip"}'],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f'Wrote 2 images, 4x4, 1 channel, 2 classes to {tmp_path / "o.zip"}\n'
    outputs = [CliRunner().invoke(dataset_tool.cli, args, prog_name='dataset_tool.py') for args in (['convert', '--help'], ['--help'])]
    assert all(r.exit_code == 0 for r in outputs) and outputs[0].output == outputs[1].output
    result = run_tool('convert', f'--source={src}', f'--dest={tmp_path / "o2.zip"}')
    assert result.exit_code == 0 and (tmp_path / 'o2.zip').exists()


def write_zeros_npz(path, shape, labels=None):
    """An .npz whose Deflate-compressed `images` member holds uint8 zeros of `shape`, written
    piece by piece, so that neither writing nor the file is as large as the array."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, dict(descr='|u1', fortran_order=False, shape=shape))
    with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open('images.npy', 'w', force_zip64=True) as f:
            f.write(header.getvalue())
            piece = bytes(int(np.prod(shape[1:])))
            for _ in range(shape[0]):
                f.write(piece)
        if labels is not None:
            with z.open('labels.npy', 'w') as f:
                np.save(f, labels)
    return path


def test_large_compressed_npz_converts_with_bounded_memory(tmp_path):
    """64 images of 2048x2048 (256 MiB unpacked, 1 MB compressed) convert while Python holds at
    most a small part of the array, since the member is read a bounded number of bytes at a time."""
    shape = (64, 2048, 2048)
    src = write_zeros_npz(tmp_path / 'large.npz', shape, labels=np.arange(64) % 3)
    tracemalloc.start()
    try:
        result = convert(src, tmp_path / 'out.zip', '--resolution=32x32')
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    array_bytes = int(np.prod(shape))
    assert 'Wrote 64 images, 32x32, 1 channel, 3 classes' in result.output
    assert peak < 2 * dataset_convert.STREAM_BYTES + 3 * shape[1] * shape[2] < array_bytes // 4, f'peak {peak:,} bytes'
    images, labels = load(tmp_path / 'out.zip')
    assert images.shape == (64, 1, 32, 32) and not images.any() and labels == (np.arange(64) % 3).tolist()


# ----------------------------------------------------------------------------------------------
# Arrays of any layout, type and channel count (issue 20).


def test_arrays_in_every_layout_become_the_same_pngs(tmp_path):
    """(N,H,W,C) and (N,C,H,W) in .npz (stored or compressed) or .npy (C or Fortran order) give
    the same PNG data set (uint8, 3 channels)."""
    images = np.random.default_rng(1).integers(0, 256, size=(3, 6, 10, 3), dtype=np.uint8)
    np.save(tmp_path / 'nchw.npy', images.transpose(0, 3, 1, 2))
    np.save(tmp_path / 'fortran.npy', np.asfortranarray(images))
    np.savez_compressed(tmp_path / 'packed.npz', images=images)
    expected = images.transpose(0, 3, 1, 2)
    for i, src in enumerate([write_npz(tmp_path / 'nhwc.npz', images), write_npz(tmp_path / 'nchw.npz', expected),
                             tmp_path / 'nchw.npy', tmp_path / 'fortran.npy', tmp_path / 'packed.npz']):
        loaded, _ = convert_load(src, tmp_path / f'o{i}.zip')
        np.testing.assert_array_equal(loaded, expected)


def test_float_and_many_channel_arrays_are_stored_as_npy(tmp_path):
    signals = np.random.default_rng(2).uniform(-4, 4, size=(3, 1, 4, 16)).astype(np.float32)
    src = tmp_path / 'signals.npy'
    np.save(src, signals)
    expect_error(run_tool(f'--source={src}', f'--dest={tmp_path / "a.zip"}'), '--range', 'float32 data needs')
    expect_error(run_tool(f'--source={src}', f'--dest={tmp_path / "a.zip"}', '--range=4,-4'), '--range=4,-4')
    expect_error(run_tool(f'--source={src}', f'--dest={tmp_path / "a.zip"}', '--range=-4,4', '--resolution=8x2'),
                 '--resolution', 'stored as .npy')
    result = convert(src, tmp_path / 'a.zip', '--range=-4,4')
    assert '16x4, 1 channel, float32 mapped from [-4, 4] to [-1, 1]' in result.output
    ds = ArrayFolderDataset(tmp_path / 'a.zip')
    assert ds.resolution == (4, 16) and ds[0][0].dtype == np.float32
    np.testing.assert_allclose(np.stack([ds[i][0] for i in range(3)]), signals / 4, atol=1e-6)

    many = np.random.default_rng(3).integers(0, 256, size=(2, 8, 8, 5), dtype=np.uint8)
    convert(write_npz(tmp_path / 'many.npz', many, np.array([1, 0])), tmp_path / 'many')
    ds = ArrayFolderDataset(tmp_path / 'many', use_labels=True)
    assert ds.image_shape == [5, 8, 8] and ds.label_dim == 2
    np.testing.assert_allclose(ds[1][0], many[1].transpose(2, 0, 1) / 127.5 - 1, atol=1e-6)
    expect_error(run_tool(f'--source={write_npz(tmp_path / "x.npz", many[..., :3])}', f'--dest={tmp_path / "b.zip"}',
                          '--range=0,1'), '--range', 'only applies')
