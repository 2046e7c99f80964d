"""How many generated images are clearly digits, by an independent digit classifier.

A small CNN is trained on the bundled MNIST digits (data/mnist-10k-28x28.npz, resized to 32x32 as
dataset_tool.py does), 9,000 for training and a seeded random 1,000 held out, plus an eleventh
class of non-digits (speckle, noise, scrambled digit tiles); its held-out accuracy is printed when
it is trained and must reach 97%. The weights are cached as safetensors
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
NOT_A_DIGIT = 10


def classifier():
    """Two conv layers and a two-layer head on 32x32 grey images in [-1, 1]."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Dropout(0.3), torch.nn.Linear(64 * 8 * 8, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, 11))


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


def non_digits(digits, count, gen):
    """Images that are not digits, as an eleventh class so that speckle and scrambled strokes are
    not forced into a digit class: binary speckle of random density (sharp or blurred), Gaussian
    noise, and digits cut into 8x8 tiles put back in random order (strokes without a digit)."""
    third = count // 3
    density = torch.rand(third, 1, 1, 1, generator=gen) * 0.35 + 0.03
    speckle = (torch.rand(third, 1, SIDE, SIDE, generator=gen) < density).float()
    blurred = F.avg_pool2d(speckle, 3, stride=1, padding=1)
    speckle = torch.where(torch.rand(third, 1, 1, 1, generator=gen) < 0.5, speckle, (blurred * 2).clamp(max=1))
    noise = (torch.randn(third, 1, SIDE, SIDE, generator=gen) * 0.5 + torch.rand(third, 1, 1, 1, generator=gen) * 0.6).clamp(0, 1)
    picks = digits[torch.randint(len(digits), [count - 2 * third], generator=gen)]
    tiles = picks.unfold(2, 8, 8).unfold(3, 8, 8).reshape(len(picks), 16, 8, 8)
    order = torch.argsort(torch.rand(len(picks), 16, generator=gen), dim=1)
    tiles = torch.gather(tiles, 1, order[:, :, None, None].expand(-1, -1, 8, 8))
    scrambled = tiles.reshape(len(picks), 4, 4, 8, 8).permute(0, 1, 3, 2, 4).reshape(len(picks), 1, SIDE, SIDE)
    return torch.cat([speckle * 2 - 1, noise * 2 - 1, scrambled])


def train_classifier(epochs=6, seed=0):
    """Trains the classifier on 9,000 bundled digits and 4,500 non-digits; returns it with its
    held-out digit accuracy and the share of held-out non-digits it takes for digits."""
    data = np.load(DIGITS)
    x, y = to_input(data['images']), torch.as_tensor(data['labels'].astype(np.int64))
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=gen)
    test, train = order[:1000], order[1000:]
    negatives = non_digits(x[train], 5000, gen)
    neg_test, negatives = negatives[:500], negatives[500:]
    x_train = torch.cat([x[train], negatives])
    y_train = torch.cat([y[train], torch.full([len(negatives)], NOT_A_DIGIT)])
    torch.manual_seed(seed)
    net = classifier()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * (len(x_train) // 128 + 1))
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(x_train), generator=gen).split(128):
            loss = F.cross_entropy(net(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(x[test]).argmax(1) == y[test]).float().mean().item()
        false_digits = (net(neg_test).argmax(1) != NOT_A_DIGIT).float().mean().item()
    return net, accuracy, false_digits


def load_classifier(weights):
    """The cached classifier, trained (and cached) on first use."""
    from safetensors.torch import load_file, save
    net = classifier()
    if os.path.isfile(weights):
        net.load_state_dict(load_file(weights))
        return net.eval()
    print('Training the digit classifier on the bundled MNIST digits (once; later runs load its weights)...', flush=True)
    net, accuracy, false_digits = train_classifier()
    print(f'Held-out accuracy: {accuracy:.4f} (1,000 digits); non-digits taken for digits: {false_digits:.4f} (500)', flush=True)
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
    """Share of images the classifier puts in one digit class with probability >= threshold, and
    the histogram of the digits it picked for those."""
    with torch.no_grad():
        probs = torch.cat([net(batch).softmax(1) for batch in to_input(images).split(256)])[:, :NOT_A_DIGIT]
    confident = probs.max(1).values >= threshold
    counts = torch.bincount(probs.argmax(1)[confident], minlength=NOT_A_DIGIT).tolist()
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
