"""PNG writing of uint8 images and grids (torch_utils.png)."""

import numpy as np
import PIL.Image
import torch

from torch_utils import png


def test_grid_layout_and_size(tmp_path):
    images = torch.randint(0, 256, (5, 3, 4, 6), dtype=torch.uint8)
    png.save_image_grid(images, tmp_path / 'grid.png')
    with PIL.Image.open(tmp_path / 'grid.png') as img:
        assert img.mode == 'RGB' and img.size == (3 * 6, 2 * 4)
        pixels = np.asarray(img)
    assert np.array_equal(pixels[4:8, 6:12], images[4].permute(1, 2, 0).numpy())
    assert (pixels[4:8, 12:18] == 0).all()
    png.save_image_grid(images[:, :1], tmp_path / 'row.png', cols=5)
    with PIL.Image.open(tmp_path / 'row.png') as img:
        assert img.mode == 'L' and img.size == (30, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['grid.png', 'row.png']  # no temporaries left
