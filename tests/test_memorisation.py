"""training/memorisation.py and `fid.py mem`: the block-wise top-2 against brute force, exact copies
reported as memorised and fresh images not, the pairs PNG, and user errors."""

import os

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import fid
from torch_utils import png
from training import memorisation


def random_images(n, seed, channels=3, side=8):
    return torch.randint(0, 256, (n, channels, side, side), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def brute_force(queries, keys):
    """Sorted distances of every query to every key, from the full matrix (small sets only)."""
    q = queries.flatten(1).double() / 255
    k = keys.flatten(1).double() / 255
    full = torch.cdist(q, k)
    dist, index = full.sort(dim=1)
    return dist[:, :2].numpy(), index[:, :2].numpy()


@pytest.mark.parametrize('block', [1, 3, 7, 50])
def test_blockwise_top2_equals_brute_force(block):
    keys, queries = random_images(50, 0), random_images(23, 1)
    found = memorisation.nearest_two(queries, (keys[i:i + block] for i in range(0, 50, block)))
    dist, index = brute_force(queries, keys)
    np.testing.assert_allclose(found.d1, dist[:, 0], rtol=1e-12)
    np.testing.assert_allclose(found.d2, dist[:, 1], rtol=1e-12)
    assert np.array_equal(found.i1, index[:, 0]) and np.array_equal(found.i2, index[:, 1])


def test_small_query_chunks_give_the_same_neighbours():
    keys, queries = random_images(40, 2), random_images(30, 3)
    top = memorisation.RunningTop2(queries, 'cpu', query_chunk=4)
    for start in range(0, 40, 16):
        top.update(keys[start:start + 16], start)
    _, index = brute_force(queries, keys)
    assert np.array_equal(top.index.numpy(), index)


def test_copies_are_memorised_and_fresh_samples_are_not():
    keys = random_images(60, 4)
    copies = torch.cat([keys[[5, 17, 42]], random_images(7, 5)])
    found = memorisation.nearest_two(copies, [keys[:32], keys[32:]])
    assert found.memorised().tolist() == [True] * 3 + [False] * 7
    assert found.d1[:3].tolist() == [0, 0, 0] and found.i1[:3].tolist() == [5, 17, 42]
    # A near copy (a few pixels changed) still counts; the boundary is d1 < d2/3.
    near = keys[[9]].clone()
    near[0, 0, :2, :2] = 255 - near[0, 0, :2, :2]
    found = memorisation.nearest_two(near, [keys])
    assert found.memorised()[0] and found.i1[0] == 9 and 0 < found.d1[0] < found.d2[0] / 3


def write_folder(folder, images):
    os.makedirs(folder, exist_ok=True)
    for i, image in enumerate(images):
        png.save_image(image, os.path.join(folder, f'{i:06d}.png'))
    return str(folder)


def test_fid_mem_reports_share_and_writes_pairs(tmp_path):
    train = random_images(40, 6, channels=1)
    data = write_folder(tmp_path / 'train', train)
    copied = write_folder(tmp_path / 'copied', torch.cat([train[[3, 30]], random_images(6, 7, channels=1)]))
    fresh = write_folder(tmp_path / 'fresh', random_images(8, 8, channels=1))

    res = CliRunner().invoke(fid.main, ['mem', '--images', copied, '--data', data, '--pairs', str(tmp_path / 'p.png'),
                                        '--num-pairs', 3, '--batch', 16, '--workers', 0, '--device', 'cpu'])
    assert res.exit_code == 0, res.output
    assert 'Memorised: 25.00% (2 of 8 generated images' in res.output and 'among 40 training images' in res.output
    with PIL.Image.open(tmp_path / 'p.png') as img:
        grid = np.asarray(img)
    assert grid.shape == (8, 6 * 8)  # three pairs in one row
    assert np.array_equal(grid[:, 0:8], grid[:, 8:16]) and np.array_equal(grid[:, 0:8], train[3, 0].numpy())

    res = CliRunner().invoke(fid.main, ['mem', '--images', fresh, '--data', data, '--workers', 0, '--device', 'cpu'])
    assert res.exit_code == 0, res.output
    assert 'Memorised: 0.00% (0 of 8' in res.output


def test_fid_mem_user_errors(tmp_path):
    data = write_folder(tmp_path / 'train', random_images(4, 9, channels=1))
    rgb = write_folder(tmp_path / 'rgb', random_images(2, 10, channels=3))
    for args, option in [(['--images', rgb, '--data', data], '--images'),
                         (['--images', data, '--data', data, '--pairs', str(tmp_path / 'p.jpg')], '--pairs'),
                         (['--images', data, '--data', write_folder(tmp_path / 'one', random_images(1, 11, 1))], '--data')]:
        res = CliRunner().invoke(fid.main, ['mem', '--workers', 0, '--device', 'cpu'] + args)
        assert res.exit_code == 1, res.output
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and option in lines[0], res.output
