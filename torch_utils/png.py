"""PNG writers for uint8 (C, H, W) images and grids of them: grey ('L') or RGB by channel count,
written atomically. Used by generate.py, the training loop's sample grids and the benchmarks."""

import math
import os

import torch

from dnnlib.util import UserError, atomic_write, check_output_file

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def _to_pil(image_chw):
    import PIL.Image
    array = image_chw.detach().cpu().to(torch.uint8).permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        return PIL.Image.fromarray(array[:, :, 0], 'L')
    if array.shape[2] == 3:
        return PIL.Image.fromarray(array, 'RGB')
    raise ValueError(f'cannot write an image with {array.shape[2]} channels as PNG')


def save_image(image_chw, path):
    """Writes one uint8 (C, H, W) image as a grey (C = 1) or RGB (C = 3) PNG, atomically."""
    with atomic_write(path, 'wb') as f:
        _to_pil(image_chw).save(f, format='PNG')


def check_png_dest(path, option):
    """Raises UserError unless `path` can take a PNG that `option` names: a writable .png name
    that is new or already a PNG file. Anything else there (a photo in another format, notes, a
    pipe or a device) is not replaced, nor opened unless it is a regular file."""
    if not path.lower().endswith('.png'):
        raise UserError(f'{option}={path}: the image is written as a .png file')
    check_output_file(path, option)
    if not os.path.exists(path):
        return
    if not os.path.isfile(path):
        raise UserError(f'{option}={path}: exists and is not a regular file; not replacing it')
    with open(path, 'rb') as f:
        if f.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
            raise UserError(f'{option}={path}: exists and is not a PNG image; not replacing it')


def grid_shape(num_images, cols=None):
    """(rows, cols) of a grid: `cols` columns (default ⌈√N⌉) and as many rows as needed."""
    cols = cols or max(1, math.ceil(math.sqrt(num_images)))
    return max(1, math.ceil(num_images / cols)), cols


def save_image_grid(images, path, cols=None):
    """Writes uint8 (N, C, H, W) images as one PNG grid, row-major, empty cells black, atomically.
    The grid is rows·H by cols·W pixels (see `grid_shape`); of channel counts other than 1 and 3
    (arrays) it shows the first channel in grey."""
    images = torch.as_tensor(images)
    if images.shape[1] not in (1, 3):
        images = images[:, :1]
    n, c, h, w = images.shape
    rows, cols = grid_shape(n, cols)
    canvas = torch.zeros([rows * cols, c, h, w], dtype=torch.uint8)
    canvas[:n] = images.cpu().to(torch.uint8)
    grid = canvas.reshape(rows, cols, c, h, w).permute(2, 0, 3, 1, 4).reshape(c, rows * h, cols * w)
    save_image(grid, path)
