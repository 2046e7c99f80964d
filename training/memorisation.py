"""Memorisation check (Gu et al. 2023, "On Memorization in Diffusion Models"): a generated image x
counts as memorised when its nearest training image is closer than a third of its second nearest,
d₁ < d₂/3, with L2 distances on pixels in [0, 1]. The two nearest neighbours are kept by a running
top-2 over blocks of training images, so no generated × training distance matrix is ever built."""

from typing import NamedTuple

import numpy as np
import torch

from dnnlib.util import FieldError
from torch_utils import png
from training.dataset import ImageFolderDataset

MEMORISED_RATIO = 1 / 3


class Neighbours(NamedTuple):
    """Per generated image: distances to and indices of its nearest and second-nearest training
    images (float64 and int64 arrays of length N)."""
    d1: np.ndarray
    i1: np.ndarray
    d2: np.ndarray
    i2: np.ndarray

    def memorised(self):
        """Boolean mask of the memorised images, d₁ < d₂/3."""
        return self.d1 < MEMORISED_RATIO * self.d2


def _flat01(images, device):
    """uint8 (B, C, H, W) → float32 (B, C·H·W) in [0, 1] on `device`."""
    return torch.as_tensor(images).to(device).flatten(1).to(torch.float32) / 255


class RunningTop2:
    """The two smallest squared distances (and their key indices) of every query seen so far,
    updated one block of keys at a time."""

    def __init__(self, queries, device, query_chunk=4096):
        self.queries = torch.as_tensor(queries)  # uint8 on the CPU: converted chunk by chunk
        self.device = torch.device(device)
        self.query_chunk = query_chunk
        n = len(self.queries)
        self.dist = torch.full([n, 2], float('inf'), dtype=torch.float32, device=self.device)
        self.index = torch.full([n, 2], -1, dtype=torch.int64, device=self.device)

    def update(self, keys, first_index):
        """Folds in a block of keys (uint8, same shape as the queries) numbered from `first_index`."""
        k = _flat01(keys, self.device)
        k_sq = (k * k).sum(1)
        key_index = torch.arange(first_index, first_index + len(k), device=self.device)
        for start in range(0, len(self.queries), self.query_chunk):
            stop = start + self.query_chunk
            q = _flat01(self.queries[start:stop], self.device)
            block = ((q * q).sum(1, keepdim=True) - 2 * q @ k.T + k_sq).clamp_(min=0)
            cand_dist = torch.cat([self.dist[start:stop], block], 1)
            cand_index = torch.cat([self.index[start:stop], key_index.expand(len(q), -1)], 1)
            best, where = cand_dist.topk(min(2, cand_dist.shape[1]), dim=1, largest=False)
            self.dist[start:stop, :best.shape[1]] = best
            self.index[start:stop, :best.shape[1]] = cand_index.gather(1, where)


def nearest_two(queries, key_blocks, device='cpu'):
    """`Neighbours` of uint8 `queries` (N, C, H, W) among the keys yielded in blocks by
    `key_blocks` (uint8 (B, C, H, W) each). The distances of the two chosen neighbours are
    recomputed exactly (float64 differences), so a copy is at distance 0."""
    top = RunningTop2(queries, device)
    seen = 0
    kept = {}  # the keys that are some query's current neighbour, for the exact distances
    for block in key_blocks:
        block = torch.as_tensor(block)
        top.update(block, seen)
        wanted = set(top.index.flatten().tolist())
        kept = {i: key for i, key in kept.items() if i in wanted}
        kept.update({i: block[i - seen].clone() for i in wanted if seen <= i < seen + len(block)})
        seen += len(block)
    if seen < 2:
        raise FieldError('data', f'the memorisation check needs at least two training images, got {seen}')
    index = top.index.cpu().numpy()
    q = torch.as_tensor(queries).flatten(1).to(torch.float64) / 255
    exact = np.zeros(index.shape)
    for col in range(2):
        keys = torch.stack([kept[int(i)] for i in index[:, col]]).flatten(1).to(torch.float64) / 255
        exact[:, col] = (q - keys).norm(dim=1).numpy()
    order = np.argsort(exact, axis=1, kind='stable')  # float32 ranking may swap near ties
    exact, index = np.take_along_axis(exact, order, 1), np.take_along_axis(index, order, 1)
    return Neighbours(exact[:, 0], index[:, 0], exact[:, 1], index[:, 1])


def dataset_blocks(dataset, block_size, num_workers=0):
    """uint8 (B, C, H, W) tensors of consecutive images of a `training.dataset.Dataset`."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=block_size, shuffle=False, num_workers=num_workers)
    for images, _labels in loader:
        yield images


def load_images(path):
    """All images of a folder or zip as uint8 (N, C, H, W), through the data-set reader (so folders of
    generated PNGs and dataset_tool.py zips read alike)."""
    dataset = ImageFolderDataset(path)
    images = torch.as_tensor(np.stack([dataset[i][0] for i in range(len(dataset))]))
    dataset.close()
    return images


def check_same_shape(generated, dataset):
    """Raises FieldError('images') unless the generated images have the training images' shape."""
    if list(generated.shape[1:]) != list(dataset.image_shape):
        c, h, w = generated.shape[1:]
        tc, th, tw = dataset.image_shape
        raise FieldError('images', f'the generated images are {w}x{h} with {c} channel(s), the training images '
                                   f'{tw}x{th} with {tc}; compare images of the same size')


def pairs_grid(generated, neighbours, dataset, count, path):
    """Writes the `count` generated images closest to a training image (smallest d₁), each beside
    its nearest training image, as one PNG: pairs in rows of four."""
    order = np.argsort(neighbours.d1, kind='stable')[:count]
    tiles = []
    for i in order:
        tiles.append(generated[i])
        tiles.append(torch.as_tensor(dataset[int(neighbours.i1[i])][0]))
    png.save_image_grid(torch.stack(tiles), path, cols=min(8, len(tiles)))
    return order
