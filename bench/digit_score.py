"""How many generated images are clearly digits, by an independent digit classifier.

A small CNN is trained on the bundled MNIST digits (data/mnist-10k-28x28.npz, resized to 32x32 as
dataset_tool.py does), 9,000 for training and a seeded random 1,000 held out; its held-out
accuracy is printed when it is trained and must reach 97%. The weights are cached as safetensors
(no pickle) and reused. The score of a folder of images is the share that the classifier assigns
to one class with probability >= 0.9: real digits score about 0.97, noise and speckle near 0.

    python bench/digit_score.py IMAGES_DIR [--threshold 0.9] [--weights .cache/digit-classifier.safetensors]
"""

import os
import sys

import click
import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dnnlib.util import UserError, atomic_write  # noqa: E402

DIGITS = os.path.join(ROOT, 'data', 'mnist-10k-28x28.npz')
DEFAULT_WEIGHTS = os.path.join(ROOT, '.cache', 'digit-classifier.safetensors')
SIDE = 32
MIN_ACCURACY = 0.97


def classifier():
    """Two conv layers and a two-layer head on 32x32 grey images in [-1, 1]."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Dropout(0.3), torch.nn.Linear(64 * 8 * 8, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, 10))


def to_input(images):
    """uint8 images (N, H, W) or (N, H, W, C) of any size → float (N, 1, 32, 32) in [-1, 1]."""
    out = []
    for img in images:
        pil = PIL.Image.fromarray(img)
        if pil.mode != 'L':
            pil = pil.convert('L')
        if pil.size != (SIDE, SIDE):
            pil = pil.resize((SIDE, SIDE), PIL.Image.LANCZOS)
        out.append(np.asarray(pil))
    return torch.from_numpy(np.stack(out)).float().div(127.5).sub(1).unsqueeze(1)


def train_classifier(epochs=6, seed=0):
    """Trains the classifier on 9,000 bundled digits; returns it with its held-out accuracy."""
    data = np.load(DIGITS)
    x, y = to_input(data['images']), torch.as_tensor(data['labels'].astype(np.int64))
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=gen)
    test, train = order[:1000], order[1000:]
    torch.manual_seed(seed)
    net = classifier()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * (len(train) // 128 + 1))
    for _ in range(epochs):
        net.train()
        for idx in train[torch.randperm(len(train), generator=gen)].split(128):
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(x[test]).argmax(1) == y[test]).float().mean().item()
    return net, accuracy


def load_classifier(weights):
    """The cached classifier, trained (and cached) on first use."""
    from safetensors.torch import load_file, save
    net = classifier()
    if os.path.isfile(weights):
        net.load_state_dict(load_file(weights))
        return net.eval()
    print('Training the digit classifier on the bundled MNIST digits (once, about a minute)...', flush=True)
    net, accuracy = train_classifier()
    print(f'Held-out accuracy: {accuracy:.4f} (1,000 digits)', flush=True)
    if accuracy < MIN_ACCURACY:
        raise RuntimeError(f'digit classifier reached only {accuracy:.4f} held-out accuracy (< {MIN_ACCURACY})')
    os.makedirs(os.path.dirname(os.path.abspath(weights)), exist_ok=True)
    tensors = {k: v.contiguous() for k, v in net.state_dict().items()}
    with atomic_write(weights, 'wb') as f:
        f.write(save(tensors))
    return net.eval()


def read_images(folder):
    """Every PNG/JPEG under `folder` as uint8 arrays."""
    if not os.path.isdir(folder):
        raise UserError(f'IMAGES_DIR: "{folder}" is not a folder')
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(folder) for f in files
                   if f.lower().endswith(('.png', '.jpg', '.jpeg')))
    if not paths:
        raise UserError(f'IMAGES_DIR: "{folder}" holds no .png or .jpg images')
    return [np.asarray(PIL.Image.open(p).convert('L')) for p in paths]


def digit_score(images, net, threshold=0.9):
    """Share of images the classifier puts in one class with probability >= threshold, and the
    histogram of the classes it picked for those."""
    with torch.no_grad():
        probs = torch.cat([net(batch).softmax(1) for batch in to_input(images).split(256)])
    confident = probs.max(1).values >= threshold
    counts = torch.bincount(probs.argmax(1)[confident], minlength=10).tolist()
    return confident.float().mean().item(), counts


@click.command()
@click.argument('images_dir', metavar='IMAGES_DIR')
@click.option('--threshold', help='Confidence that counts as recognised', type=click.FloatRange(0, 1), default=0.9, show_default=True)
@click.option('--weights', help='Cached classifier weights (trained if missing)', metavar='FILE', default=DEFAULT_WEIGHTS, show_default=True)
def main(images_dir, threshold, weights):
    """Prints the share of images in IMAGES_DIR that are clearly digits."""
    images = read_images(images_dir)
    net = load_classifier(weights)
    score, counts = digit_score(images, net, threshold)
    print(f'digit score {score:.3f} ({len(images)} images recognised with confidence >= {threshold}; per digit {counts})')


if __name__ == '__main__':
    main()
