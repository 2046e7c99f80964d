"""Patch coordinates, cropping and the patch-size schedule (SPEC sections 3 and 4)."""

import math

import numpy as np
import pytest
import torch

from dnnlib.util import UserError
from torch_utils.misc import BatchRNG
from training import patch


def _ref_coords(resolution, rows, cols):
    """Spec formula in float64: (index / (R − 1) − 0.5)·2; channel 0 = x (column), 1 = y (row)."""
    ys = (np.asarray(rows, dtype=np.float64) / (resolution - 1) - 0.5) * 2
    xs = (np.asarray(cols, dtype=np.float64) / (resolution - 1) - 0.5) * 2
    return np.stack([np.broadcast_to(xs[None, :], (len(ys), len(xs))), np.broadcast_to(ys[:, None], (len(ys), len(xs)))])


def _offsets_from_coords(coords, resolution):
    """(row, col) of each patch's top-left pixel, recovered from its coordinate channels."""
    col = torch.round((coords[:, 0, 0, 0].double() + 1) * (resolution - 1) / 2).long()
    row = torch.round((coords[:, 1, 0, 0].double() + 1) * (resolution - 1) / 2).long()
    return row, col


# ----------------------------------------------------------------------------------------------
# coord_grid.

@pytest.mark.parametrize('resolution', [2, 3, 8, 16, 24, 32, 42, 48, 56, 64, 100, 128, 255, 256, 512])
def test_full_grid_spans_exactly_minus_one_to_one(resolution):
    grid = patch.coord_grid(resolution, resolution)
    assert grid.shape == (2, resolution, resolution) and grid.dtype == torch.float32
    np.testing.assert_allclose(grid.double().numpy(), _ref_coords(resolution, range(resolution), range(resolution)),
                               rtol=0, atol=1e-6)
    # Exact ends for every side (not just the powers of two): the spec's "exactly [−1, 1]".
    assert grid[0, 0, 0].item() == -1.0 and grid[0, 0, -1].item() == 1.0
    assert grid[1, 0, 0].item() == -1.0 and grid[1, -1, 0].item() == 1.0
    assert grid.min().item() == -1.0 and grid.max().item() == 1.0
    # Channel 0 varies along columns only, channel 1 along rows only.
    assert torch.equal(grid[0], grid[0, :1].expand(resolution, -1))
    assert torch.equal(grid[1], grid[1, :, :1].expand(-1, resolution))
    assert torch.equal(grid[0], grid[1].T)


def test_grid_with_offset_and_bigger_canvas_continues_linearly():
    resolution = 16
    step = 2 / (resolution - 1)
    # A 24x20 canvas starting 2 rows above and 3 columns left of the image.
    grid = patch.coord_grid(resolution, 24, 20, y_start=-2, x_start=-3)
    assert grid.shape == (2, 24, 20)
    np.testing.assert_allclose(grid.double().numpy(), _ref_coords(resolution, range(-2, 22), range(-3, 17)), atol=1e-6)
    assert grid[0, 0, 0].item() == pytest.approx(-1 - 3 * step)
    assert grid[1, -1, 0].item() == pytest.approx(-1 + 21 * step)
    assert grid[0].min() < -1 and grid[0].max() > 1 and grid[1].min() < -1 and grid[1].max() > 1
    np.testing.assert_allclose(np.diff(grid[0, 0].double().numpy()), step, rtol=1e-5)
    np.testing.assert_allclose(np.diff(grid[1, :, 0].double().numpy()), step, rtol=1e-5)
    # Inside the image the canvas agrees with the plain grid.
    assert torch.allclose(grid[:, 2:18, 3:19], patch.coord_grid(resolution, resolution), atol=1e-6)


def test_coord_features_are_sin_cos_at_octave_frequencies():
    coords = patch.coord_grid(16, 8, y_start=3, x_start=5).unsqueeze(0)
    assert torch.equal(patch.coord_features(coords, 0), coords)
    feats = patch.coord_features(coords, 3)
    assert feats.shape == (1, 12, 8, 8)
    assert patch.coord_channels(True, 3) == 12 and patch.coord_channels(True, 0) == 2 and patch.coord_channels(False, 3) == 0
    expected = []
    c = coords.double()
    for fn in (torch.sin, torch.cos):
        for axis in range(2):
            for k in range(3):
                expected.append(fn(2 ** k * math.pi * c[0, axis]))
    # Every expected map appears exactly once among the channels (the order is the module's).
    for e in expected:
        matches = [i for i in range(12) if torch.allclose(feats[0, i].double(), e, atol=1e-5)]
        assert len(matches) == 1


# ----------------------------------------------------------------------------------------------
# extract_patches.

def _unique_images(n, channels, resolution):
    """Images whose every pixel value is distinct, so a crop identifies its position."""
    return torch.arange(n * channels * resolution * resolution, dtype=torch.float32).reshape(n, channels, resolution, resolution)


@pytest.mark.parametrize('resolution,size', [(16, 4), (16, 8), (24, 6), (24, 12), (32, 8), (48, 12), (48, 16)])
def test_extract_patches_equals_slicing_at_coordinate_offsets(resolution, size):
    images = _unique_images(16, 3, resolution)
    rng = BatchRNG(range(100, 116))
    patches, coords = patch.extract_patches(images, size, rng)
    assert patches.shape == (16, 3, size, size) and coords.shape == (16, 2, size, size)
    assert coords.dtype == torch.float32
    rows, cols = _offsets_from_coords(coords, resolution)
    for i in range(16):
        r, c = int(rows[i]), int(cols[i])
        assert 0 <= r <= resolution - size and 0 <= c <= resolution - size
        assert torch.equal(patches[i], images[i, :, r:r + size, c:c + size])
        assert torch.equal(coords[i], patch.coord_grid(resolution, size, y_start=r, x_start=c))
        np.testing.assert_allclose(coords[i].double().numpy(), _ref_coords(resolution, range(r, r + size), range(c, c + size)),
                                   atol=1e-6)


def test_extract_patches_rows_depend_only_on_their_seed():
    images = _unique_images(4, 1, 16)
    p1, c1 = patch.extract_patches(images, 4, BatchRNG([7, 8, 9, 10]))
    p2, c2 = patch.extract_patches(images[[2, 3]], 4, BatchRNG([9, 10]))
    assert torch.equal(c1[2:], c2) and torch.equal(p1[2:], p2)


def test_offsets_cover_full_range_inclusive():
    """Top-left rows and columns are uniform over 0..R−s inclusive: both ends are reached, and
    rows and columns are drawn independently."""
    torch.manual_seed(1)
    resolution, size, n = 16, 4, 4000
    images = torch.zeros(n, 1, resolution, resolution)
    _, coords = patch.extract_patches(images, size)
    rows, cols = _offsets_from_coords(coords, resolution)
    k = resolution - size + 1
    for values in (rows, cols):
        counts = np.bincount(values.numpy(), minlength=k)
        assert len(counts) == k, 'offset beyond R - s'
        expected = n / k
        # 5-sigma bounds per bin: every position is reachable and none is favoured.
        assert np.all(np.abs(counts - expected) < 5 * math.sqrt(expected)), counts
    assert not torch.equal(rows, cols)
    assert abs(np.corrcoef(rows.numpy(), cols.numpy())[0, 1]) < 0.1

    # Same through a BatchRNG.
    _, coords = patch.extract_patches(torch.zeros(600, 1, 8, 8), 2, BatchRNG(range(600)))
    rows, cols = _offsets_from_coords(coords, 8)
    assert set(rows.tolist()) == set(range(7)) and set(cols.tolist()) == set(range(7))


def test_full_size_patch_is_the_image_with_full_grid():
    for resolution in (16, 48):
        images = torch.randn(3, 2, resolution, resolution)
        patches, coords = patch.extract_patches(images, resolution, BatchRNG([1, 2, 3]))
        assert torch.equal(patches, images)
        grid = patch.coord_grid(resolution, resolution)
        for i in range(3):
            assert torch.equal(coords[i], grid)
        assert coords.min().item() == -1.0 and coords.max().item() == 1.0


def test_extract_patches_rejects_oversized_patch():
    with pytest.raises(ValueError):
        patch.extract_patches(torch.zeros(1, 1, 8, 8), 16)


# ----------------------------------------------------------------------------------------------
# Probabilities and schedule.

@pytest.mark.parametrize('p', [0.0, 0.2, 0.5, 0.75, 1.0])
def test_probabilities_three_and_two_sizes(p):
    assert patch.patch_probabilities(3, p) == pytest.approx([(1 - p) * 2 / 5, (1 - p) * 3 / 5, p], abs=1e-12)
    assert patch.patch_probabilities(2, p) == pytest.approx([1 - p, p], abs=1e-12)
    assert sum(patch.patch_probabilities(3, p)) == pytest.approx(1.0, abs=1e-12)
    schedule = patch.PatchSchedule(32, [8, 16, 32], real_p=p)
    assert schedule.probs == pytest.approx([(1 - p) * 2 / 5, (1 - p) * 3 / 5, p], abs=1e-12)


def test_default_patch_sizes():
    assert patch.default_patch_sizes(64) == [16, 32, 64]
    assert patch.default_patch_sizes(32, latent=True) == [16, 32]
    assert patch.parse_patch_sizes(None, 64, 4) == [16, 32, 64]
    assert patch.parse_patch_sizes('', 32, 2, latent=True) == [16, 32]
    # Unsorted input, full size added.
    assert patch.parse_patch_sizes('16,8', 32, 4) == [8, 16, 32]
    assert patch.parse_patch_sizes('12,24', 48, 4) == [12, 24, 48]


@pytest.mark.parametrize('p,sizes,seed,steps', [(0.5, [8, 16, 32], 0, 20000), (0.2, [8, 16, 32], 5, 6000),
                                                 (0.7, [16, 32], 3, 6000)])
def test_schedule_empirical_frequencies(p, sizes, seed, steps):
    schedule = patch.PatchSchedule(32, sizes, real_p=p, seed=seed)
    draws = np.array([schedule.size_for_step(k) for k in range(steps)])
    assert set(draws.tolist()) <= set(sizes)
    for size, prob in zip(sizes, schedule.probs):
        count = int((draws == size).sum())
        sd = math.sqrt(steps * prob * (1 - prob))
        assert abs(count - steps * prob) <= 4 * sd + 1, (size, count, steps * prob)


@pytest.mark.parametrize('p,expected', [(0.0, {8, 16}), (1.0, {32})])
def test_schedule_extreme_probabilities(p, expected):
    schedule = patch.PatchSchedule(32, [8, 16, 32], real_p=p, seed=1)
    assert {schedule.size_for_step(k) for k in range(400)} == expected


def test_size_for_step_identical_across_schedule_objects_and_deterministic():
    """Fix 2: every rank builds its own schedule with the run seed and must agree every step."""
    a = patch.PatchSchedule(64, [16, 32, 64], real_p=0.5, seed=1234)
    b = patch.PatchSchedule(64, [16, 32, 64], real_p=0.5, seed=1234)
    steps = list(range(1000))
    seq_a = [a.size_for_step(k) for k in steps]
    # b is queried in reverse order (and a second time): the answer depends on the step alone.
    seq_b = [b.size_for_step(k) for k in reversed(steps)][::-1]
    assert seq_a == seq_b
    assert [a.size_for_step(k) for k in steps] == seq_a
    assert a.size_for_step(777) == seq_a[777]
    assert len(set(seq_a)) == 3
    other = patch.PatchSchedule(64, [16, 32, 64], real_p=0.5, seed=1235)
    assert [other.size_for_step(k) for k in steps] != seq_a


def test_batch_mul_is_integer_ratio():
    """Fix 1: computed as R // s (the original crashed for 32x32 with 8-pixel patches)."""
    schedule = patch.PatchSchedule(32, [8, 16, 32])
    assert [schedule.batch_mul(s) for s in (8, 16, 32)] == [4, 2, 1]
    schedule = patch.PatchSchedule(48, [12, 24, 48])
    assert [schedule.batch_mul(s) for s in (12, 24, 48)] == [4, 2, 1]
    schedule = patch.PatchSchedule(48, [16, 48])
    assert [schedule.batch_mul(s) for s in (16, 48)] == [3, 1]
    schedule = patch.PatchSchedule(256, [32, 64, 128, 256])
    assert [schedule.batch_mul(s) for s in (32, 64, 128, 256)] == [8, 4, 2, 1]
    schedule = patch.PatchSchedule(24, [8, 24])
    assert schedule.batch_mul(8) == 3
    p = 0.5
    schedule = patch.PatchSchedule(32, [8, 16, 32], real_p=p)
    assert schedule.expected_batch_mul() == pytest.approx((1 - p) * 2 / 5 * 4 + (1 - p) * 3 / 5 * 2 + p * 1)


@pytest.mark.parametrize('p', [0.5, 0.2])
def test_progressive_schedule_orders_sizes_by_progress(p):
    schedule = patch.PatchSchedule(32, [8, 16, 32], real_p=p, progressive=True)
    probs = [(1 - p) * 2 / 5, (1 - p) * 3 / 5, p]
    progress = np.linspace(0, 1, 1001)
    sizes = [schedule.size_for_step(k, progress=float(f)) for k, f in enumerate(progress)]
    assert sizes == sorted(sizes)
    for f, s in zip(progress, sizes):
        if f < probs[0] - 1e-9:
            assert s == 8
        elif probs[0] + 1e-9 < f < probs[0] + probs[1] - 1e-9:
            assert s == 16
        elif f > probs[0] + probs[1] + 1e-9:
            assert s == 32
    assert sizes[0] == 8 and sizes[-1] == 32
    # The fraction of training on each size equals its probability.
    counts = [sizes.count(s) / len(sizes) for s in (8, 16, 32)]
    assert counts == pytest.approx(probs, abs=2e-3)
    # Progress alone decides, not the step index.
    assert schedule.size_for_step(0, progress=0.99) == 32 and schedule.size_for_step(10 ** 6, progress=0.0) == 8


def test_progressive_without_full_images_never_draws_them_before_the_end():
    schedule = patch.PatchSchedule(32, [8, 16, 32], real_p=0.0, progressive=True)
    sizes = [schedule.size_for_step(0, progress=f) for f in np.linspace(0, 1, 1001)[:-1]]
    assert set(sizes) == {8, 16} and sizes == sorted(sizes)


def test_progressive_with_full_images_only():
    schedule = patch.PatchSchedule(32, [8, 16, 32], real_p=1.0, progressive=True)
    assert {schedule.size_for_step(0, progress=f) for f in np.linspace(0, 1, 11)} == {32}


def test_real_p_end_moves_the_probabilities_linearly_with_progress():
    schedule = patch.PatchSchedule(32, [8, 16, 32], real_p=0.2, real_p_end=0.8)
    for f in (0.0, 0.25, 0.5, 1.0):
        q = 0.2 + 0.6 * f
        assert schedule.probs_at(f) == pytest.approx([(1 - q) * 2 / 5, (1 - q) * 3 / 5, q], abs=1e-12)
    assert schedule.probs_at(1.5) == pytest.approx(schedule.probs_at(1.0))  # a run trained past --duration


def test_real_p_end_draws_follow_the_moving_probability():
    """Rising from 0 to 1: the first tenth of training is almost all patches, the last tenth
    almost all full images, and the draw still depends on (step, progress) alone."""
    schedule = patch.PatchSchedule(32, [8, 16, 32], real_p=0.0, real_p_end=1.0, seed=3)
    steps = 2000
    draws = [schedule.size_for_step(k, progress=k / steps) for k in range(steps)]
    early, late = draws[:steps // 10], draws[-steps // 10:]
    assert early.count(32) / len(early) < 0.15 and late.count(32) / len(late) > 0.85
    again = patch.PatchSchedule(32, [8, 16, 32], real_p=0.0, real_p_end=1.0, seed=3)
    assert [again.size_for_step(k, progress=k / steps) for k in reversed(range(steps))][::-1] == draws


def test_real_p_end_equal_to_real_p_is_the_constant_schedule():
    constant = patch.PatchSchedule(32, [8, 16, 32], real_p=0.5, seed=4)
    same = patch.PatchSchedule(32, [8, 16, 32], real_p=0.5, real_p_end=0.5, seed=4)
    assert [constant.size_for_step(k, k / 500) for k in range(500)] == [same.size_for_step(k, k / 500) for k in range(500)]


# ----------------------------------------------------------------------------------------------
# User errors.

@pytest.mark.parametrize('text,resolution,down', [('12', 32, 1), ('6,16', 32, 2), ('64', 32, 1), ('0,16', 32, 1),
                                                  ('-8', 32, 1), ('10,20', 48, 2)])
def test_parse_patch_sizes_rejects_non_divisors(text, resolution, down):
    with pytest.raises(UserError, match='^patch_sizes: '):
        patch.parse_patch_sizes(text, resolution, down)


@pytest.mark.parametrize('text,resolution,down', [('4,16', 32, 8), ('8', 32, 16), ('6,12', 24, 4), ('12', 48, 8)])
def test_parse_patch_sizes_rejects_sizes_not_divisible_by_down_factor(text, resolution, down):
    with pytest.raises(UserError, match='^patch_sizes: ') as info:
        patch.parse_patch_sizes(text, resolution, down)
    assert 'down-sampling' in str(info.value)


def test_parse_patch_sizes_rejects_garbage():
    with pytest.raises(UserError, match='^patch_sizes: '):
        patch.parse_patch_sizes('8,sixteen', 32, 1)


@pytest.mark.parametrize('p', [-0.1, 1.5, float('nan')])
def test_real_p_outside_unit_interval_is_user_error(p):
    with pytest.raises(UserError, match='^real_p: '):
        patch.PatchSchedule(32, [8, 16, 32], real_p=p)


@pytest.mark.parametrize('kwargs,match', [(dict(real_p_end=1.2), 'outside'), (dict(real_p_end=0.9, progressive=True), 'progressive')])
def test_bad_real_p_end_is_user_error(kwargs, match):
    with pytest.raises(UserError, match=f'^real_p_end: .*{match}'):
        patch.PatchSchedule(32, [8, 16, 32], real_p=0.5, **kwargs)


# ----------------------------------------------------------------------------------------------
# Rectangles (issue 20): x runs over the width, y over the height.


def test_coord_grid_rectangle_per_axis():
    grid = patch.coord_grid((4, 8), 4, 8)
    assert torch.equal(grid[0, 0], torch.tensor(_ref_coords(8, [0], range(8))[0, 0], dtype=torch.float32))
    assert torch.equal(grid[1, :, 0], torch.tensor(_ref_coords(4, range(4), [0])[1, :, 0], dtype=torch.float32))
    assert torch.equal(patch.coord_grid((16, 16), 16), patch.coord_grid(16, 16))


def test_extract_patches_rectangle_coords_match_grid():
    images = torch.arange(2 * 8 * 16, dtype=torch.float32).reshape(2, 1, 8, 16)
    full = patch.coord_grid((8, 16), 8, 16)
    for rng in (None, BatchRNG([1, 2], 1, 'cpu')):
        patches, coords = patch.extract_patches(images, (4, 8), rng)
        assert patches.shape == (2, 1, 4, 8) and coords.shape == (2, 2, 4, 8)
        for i in range(2):
            col = int(round((coords[i, 0, 0, 0].item() + 1) * 15 / 2))
            row = int(round((coords[i, 1, 0, 0].item() + 1) * 7 / 2))
            assert torch.equal(patches[i, 0], images[i, 0, row:row + 4, col:col + 8])
            assert torch.equal(coords[i], full[:, row:row + 4, col:col + 8])


def test_patch_sizes_of_rectangles():
    assert patch.parse_patch_sizes(None, (32, 64), 2) == [(8, 16), (16, 32), (32, 64)]
    assert patch.parse_patch_sizes(None, (32, 64), 2, latent=True) == [(16, 32), (32, 64)]
    assert patch.parse_patch_sizes('8x8,16x16', (32, 64), 2) == [(8, 8), (16, 16), (32, 64)]
    assert patch.parse_patch_sizes('8,16x16', 32, 2) == [8, 16, 32]
    for text, message in (('8x128', 'does not fit'), ('6x6', 'down-sampling factor'), ('4x', 'WxH')):
        with pytest.raises(UserError, match=message):
            patch.parse_patch_sizes(text, (32, 64), 4)


def test_patch_sizes_are_written_width_first_like_every_size_on_the_command_line():
    """`--patch-sizes=32x8` on 64-wide, 32-high images is a strip 32 wide and 8 high, as
    `dataset_tool.py --resolution=64x32` and `generate.py --image_size=64x32` read their sizes;
    messages and stat names write sizes the same way."""
    assert patch.parse_patch_sizes('32x8', (32, 64), 4) == [(8, 32), (32, 64)]
    assert patch.parse_patch_size('64x32') == (32, 64)
    assert patch.shape_name((32, 64)) == '64x32' and patch.shape_name(16) == '16'
    assert [patch.shape_name(s) for s in patch.default_patch_sizes((32, 64))] == ['16x8', '32x16', '64x32']
    with pytest.raises(UserError, match=r'8x64 \(WxH\) does not fit in the 64x32 images'):
        patch.parse_patch_sizes('8x64', (32, 64), 4)


def test_batch_mul_of_rectangles_is_computed_from_pixels():
    keep = patch.PatchSchedule((32, 64), [(8, 16), (16, 32), (32, 64)], loss_norm='mean')
    assert [keep.batch_mul(s) for s in keep.patch_sizes] == [4, 2, 1]
    assert [keep.loss_weight(s) for s in keep.patch_sizes] == [16, 4, 1]
    squares = patch.PatchSchedule((32, 64), [(8, 8), (16, 16), (32, 64)])
    assert [squares.batch_mul(s) for s in squares.patch_sizes] == [5, 2, 1]  # floor(sqrt(32)), floor(sqrt(8))
    square = patch.PatchSchedule(32, [8, 16, 32])
    assert [square.batch_mul(s) for s in square.patch_sizes] == [4, 2, 1]


def _blank_with_square(n=3, side=16, square=4):
    """Images at -1 (background) with one bright square each at a different place."""
    images = -torch.ones(n, 1, side, side)
    for i in range(n):
        images[i, :, 2 * i:2 * i + square, 3 * i:3 * i + square] = 1
    return images


def test_content_crop_probs_favour_content_and_sum_to_one():
    images = _blank_with_square()
    probs = patch.content_crop_probs(images, 4, uniform_share=0.5)
    positions = 13 * 13
    assert probs.shape == (3, positions)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(3))
    # Positions whose crop is one flat colour get exactly the uniform share, all others more.
    pool = torch.nn.functional.max_pool2d
    flat = (pool(images, 4, stride=1) == -pool(-images, 4, stride=1)).flatten(1)
    torch.testing.assert_close(probs[flat], torch.full_like(probs[flat], 0.5 / positions))
    assert (probs[~flat] > 0.5 / positions).all()
    # An image without any structure falls back to uniform.
    torch.testing.assert_close(patch.content_crop_probs(torch.zeros(1, 3, 8, 8), 4), torch.full((1, 25), 1 / 25))


def test_content_crops_are_importance_weighted_to_the_uniform_objective():
    images = _blank_with_square(n=2)
    probs = patch.content_crop_probs(images, (4, 8))
    positions = probs.shape[1]
    # Exact: sum_k q_k * w_k * L_k equals the uniform mean of any per-position quantity L.
    values = torch.randn(2, positions)
    torch.testing.assert_close((probs * (1 / (positions * probs)) * values).sum(1), values.mean(1))
    # Drawn: crops, coordinates and weights agree with the positions they came from.
    rng = BatchRNG([11, 12], rows_per_seed=1)
    patches, coords, weights = patch.extract_content_patches(images, (4, 8), rng)
    assert patches.shape == (2, 1, 4, 8) and coords.shape == (2, 2, 4, 8) and weights.shape == (2, 1, 1, 1)
    for i in range(2):
        col = int(round((coords[i, 0, 0, 0].item() + 1) / 2 * 15))
        row = int(round((coords[i, 1, 0, 0].item() + 1) / 2 * 15))
        torch.testing.assert_close(patches[i], images[i, :, row:row + 4, col:col + 8])
        q = probs[i, row * (16 - 8 + 1) + col]
        torch.testing.assert_close(weights[i].reshape(()), 1 / (positions * q))
    assert (weights <= 2 + 1e-6).all()
    # The same seeds draw the same crops.
    again = patch.extract_content_patches(images, (4, 8), BatchRNG([11, 12], rows_per_seed=1))
    torch.testing.assert_close(again[0], patches)


def test_content_sampler_draws_background_less_often():
    images = _blank_with_square(n=1).expand(4000, -1, -1, -1)
    _patches, coords, weights = patch.extract_content_patches(images, 4, BatchRNG(list(range(4000)), 1))
    uniform, _ = patch.extract_patches(images, 4, BatchRNG(list(range(4000)), 1))
    content, _, _ = patch.extract_content_patches(images, 4, BatchRNG(list(range(4000)), 1))
    assert (content.amax(dim=(1, 2, 3)) > 0).float().mean() > 2 * (uniform.amax(dim=(1, 2, 3)) > 0).float().mean()
    # Weighted, the share of crops touching the square estimates the uniform share without bias.
    touches = (content.amax(dim=(1, 2, 3)) > 0).float()
    exact = (torch.nn.functional.max_pool2d(images[:1], 4, stride=1) > 0).float().mean()
    assert abs((weights.flatten() * touches).mean() - exact) < 0.02


def test_loss_with_content_crops_and_bad_sampler_name():
    from dnnlib.util import FieldError
    from training import loss as loss_lib

    with pytest.raises(FieldError, match='crop_sampler'):
        loss_lib.EDMLoss(crop_sampler='edges')
    loss_fn = loss_lib.EDMLoss(crop_sampler='content')
    calls = []

    def net(x, sigma, labels, coords=None, augment_labels=None):
        calls.append(coords)
        return torch.zeros_like(x)

    images = _blank_with_square(n=2)
    out = loss_fn(net, images, patch_size=8, rng=BatchRNG([1, 2], 1))
    assert out.shape == (2, 1, 8, 8) and calls[0].shape == (2, 2, 8, 8)
    uniform = loss_lib.EDMLoss()(net, images, patch_size=8, rng=BatchRNG([1, 2], 1))
    assert uniform.shape == out.shape
