"""bench/digit_score.py: the demo's digit score (the classifier's training is too slow for the
suite; its parts and the score's formula are tested here)."""

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

from conftest import load_bench


@pytest.fixture(scope='module')
def ds():
    return load_bench('digit_score')


class FixedLogits(torch.nn.Module):
    """Stands in for the classifier: the same 11 logits for every image."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.as_tensor(logits, dtype=torch.float32)

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


def test_score_counts_confident_digits_only(ds):
    images = [np.zeros((28, 28), np.uint8)] * 4
    confident_seven = [0.0] * 11
    confident_seven[7] = 10.0
    score, counts = ds.digit_score(images, FixedLogits(confident_seven))
    assert score == 1.0 and counts[7] == 4 and sum(counts) == 4
    not_a_digit = [0.0] * 11
    not_a_digit[ds.NOT_A_DIGIT] = 10.0
    assert ds.digit_score(images, FixedLogits(not_a_digit))[0] == 0.0
    unsure = [0.0] * 11
    unsure[3] = unsure[5] = 5.0  # p = 0.5 each: below the threshold
    assert ds.digit_score(images, FixedLogits(unsure), threshold=0.9)[0] == 0.0


def test_inputs_are_grey_32x32_in_minus_one_to_one(ds):
    rgb = np.full((2, 40, 40, 3), 255, np.uint8)
    x = ds.to_input(rgb)
    assert x.shape == (2, 1, 32, 32) and torch.allclose(x, torch.ones_like(x))
    assert ds.classifier()(x).shape == (2, 11)


def test_non_digits_are_images_in_range(ds):
    gen = torch.Generator().manual_seed(0)
    digits = ds.to_input(np.load(ds.DIGITS)['images'][:20])
    neg = ds.non_digits(digits, 30, gen)
    assert neg.shape == (30, 1, 32, 32) and neg.min() >= -1 and neg.max() <= 1
    scrambled = neg[20:]  # the last third: a digit's 8x8 tiles in another order, so its very pixels
    sources = digits.flatten(1).sort(1).values
    for image in scrambled:
        assert any(torch.equal(image.flatten().sort().values, source) for source in sources)
        assert not any(torch.equal(image, digit) for digit in digits)


def test_folder_errors_are_one_line(ds, tmp_path):
    result = CliRunner().invoke(ds.main, [str(tmp_path / 'missing')])
    assert result.exit_code == 1 and 'is not a folder' in result.output and 'Traceback' not in result.output
    result = CliRunner().invoke(ds.main, [str(tmp_path)])
    assert result.exit_code == 1 and 'holds no .png' in result.output


def test_reads_images_of_a_folder(ds, tmp_path):
    for i in range(3):
        PIL.Image.fromarray(np.full((32, 32), i * 50, np.uint8)).save(tmp_path / f'{i}.png')
    images = ds.read_images(str(tmp_path))
    assert len(images) == 3 and images[2].mean() == 100
