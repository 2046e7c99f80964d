"""Converts image collections into the EDM data-set format that training/dataset.py reads.

    python dataset_tool.py convert --source=data/mnist-10k-28x28.npz --dest=datasets/mnist-32x32.zip --resolution=32x32

`convert` may be left out (`python dataset_tool.py --source=... --dest=...`).
"""

import os
import sys

import click
from tqdm import tqdm

from dnnlib.util import UserError, option_errors
from training.dataset_convert import (DatasetWriter, _array_source, check_dest_apart, is_png_data, iterate_images, parse_range,
                                      read_arrays, write_array_items)

LATENT_DTYPES = ('float16', 'float32')


def convert_arrays(writer, source, images, labels, max_images, value_range, transform, resolution, channels, encoder):
    """The `convert` of arrays that PNG cannot hold (float data, or channel counts other than 1, 3
    and 4): stored as they are, so the image options do not apply."""
    for name, value in (('--transform', transform), ('--resolution', resolution), ('--channels', channels), ('--encoder', encoder)):
        if value is not None:
            raise UserError(f'{name}: does not apply to {images.dtype} data with {images.shape[3]} channels, '
                            f'which is stored as .npy arrays')
    lo, hi = parse_range(value_range, images)
    with writer:
        write_array_items(writer, images, labels, (lo, hi), max_images, source)
        if writer.count == 0:
            raise UserError(f'--source={source}: no items')
    height, width, chans = images.shape[1:]
    click.echo(f'Wrote {writer.count} arrays, {width}x{height}, {chans} channel{"s" if chans > 1 else ""}, '
               f'{images.dtype} mapped from [{lo:g}, {hi:g}] to [-1, 1], '
               f'{"labelled" if labels is not None else "no labels"} to {writer.dest}')


def _describe(count, stream, labels):
    """One-line summary: count, resolution, channels and labels."""
    width, height = stream.output_size
    text = f'{count} images, {width}x{height}, {stream.channels} channel{"s" if stream.channels > 1 else ""}, '
    kinds = {type(label) for _name, label in labels}
    if not labels or kinds == {type(None)}:
        text += 'no labels'
    elif kinds == {int}:
        present = len({label for _name, label in labels})
        label_dim = max(label for _name, label in labels) + 1
        text += f'{present} classes' if present == label_dim else f'{present} classes (label_dim {label_dim})'
    else:
        text += 'float labels'
    if stream.skipped:
        text += f', {len(stream.skipped)} unreadable image{"s" if len(stream.skipped) > 1 else ""} skipped'
    return text


def _counted(items, bar):
    """Yields `items`, advancing the progress bar by one for each."""
    for item in items:
        yield item
        bar.update(1)


class _DefaultCommandGroup(click.Group):
    """A group with one command that may be left out: `dataset_tool.py --source=...` runs
    `convert`, and `dataset_tool.py --help` shows convert's help."""

    def parse_args(self, ctx, args):
        if not args or args[0] not in self.commands:
            args = ['convert'] + list(args)
        return super().parse_args(ctx, args)


_CONTEXT = dict(terminal_width=100, max_content_width=100)


@click.group(cls=_DefaultCommandGroup, context_settings=_CONTEXT)
def cli():
    """Data-set tool of patch-diffusion."""


@cli.command(context_settings=_CONTEXT)
@click.option('--source', help='Folder, .zip, .npz, cifar-10-python.tar.gz, *-images-idx3-ubyte.gz or LSUN *_lmdb folder', metavar='PATH', type=str, required=True)
@click.option('--dest', help='Output: a .zip, or a folder for any other name', metavar='PATH', type=str, required=True)
@click.option('--max-images', help='Convert at most this many images', metavar='INT', type=click.IntRange(min=1))
@click.option('--transform', help='Crop before resizing (default: resize only)', metavar='center-crop|center-crop-wide', type=str)
@click.option('--resolution', help='Output size, e.g. 32x32 (default: keep the source size)', metavar='WxH', type=str)
@click.option('--channels', help='1 (grey) or 3 (RGB)  [default: as the source]', metavar='1|3', type=int)
@click.option('--range', 'value_range', help='Value range of float arrays, mapped to [-1, 1]', metavar='LO,HI', type=str)
@click.option('--skip-bad', help='Skip unreadable images instead of stopping', is_flag=True)
@click.option('--overwrite', help='Replace a data set that already exists at --dest', is_flag=True)
@click.option('--encoder', help='Store VAE latents (posterior mean and std) instead of images', type=click.Choice(['vae']))
@click.option('--vae', help='VAE for --encoder: hub id or local folder  [default: stabilityai/sd-vae-ft-ema]', metavar='ID|DIR', type=str)
@click.option('--xflip', help='With --encoder: also store the latents of the mirrored images', is_flag=True)
@click.option('--latent-dtype', 'latent_dtype', help='With --encoder: storage precision', type=click.Choice(LATENT_DTYPES),
              default='float16', show_default=True)
@option_errors(names={'vae_name': '--vae'})
def convert(source, dest, max_images, transform, resolution, channels, value_range, skip_bad, overwrite, encoder, vae, xflip,
            latent_dtype):
    """Convert an image collection into an EDM-format data set (PNG images + dataset.json).

    The word `convert` may be left out: `python dataset_tool.py --source=... --dest=...`.
    A --dest ending in .zip gets an uncompressed zip, any other name a folder.

    \b
    The kind of --source is told by its name:
      folder                      images found recursively; labels from its dataset.json,
                                  else from top-level sub-folder names (two or more)
      *.zip                       the same rules as a folder
      *.npz, *.npy                'images' (N,H,W), (N,H,W,C) or (N,C,H,W), optional 'labels'
                                  (.npz only); uint8 with 1, 3 or 4 channels become PNGs,
                                  anything else (float data with --range, any C) float32
                                  .npy items in [-1, 1] (see docs/data.md)
      cifar-10-python.tar.gz      the 50,000 CIFAR-10 training images with labels
      *-images-idx3-ubyte.gz      MNIST / Fashion-MNIST, labels from *-labels-idx1-ubyte.gz,
                                  28x28 zero-padded to 32x32
      *_lmdb folder               LSUN (needs the optional 'lmdb' package)

    \b
    Images may have any width and height (all the same, or resized by --resolution=WxH).
    Transforms: none (Lanczos resize to --resolution if given); center-crop (crop the centre to
    the W:H aspect, then resize); center-crop-wide (the same, pasted into the middle of a black
    WxW square). Transparent pixels become white. Output is
    written to a temporary name and renamed when complete.

    \b
    With --encoder=vae the data set holds Stable Diffusion VAE latents instead of PNGs: for every
    image, the posterior mean and std (NNNNN/imgNNNNNNNN.npy, shape (1 or 2, 8, R/8, R/8)), and
    with --xflip those of its mirror image too; train.py recognises such a set and draws a
    posterior sample per step instead of running the encoder (see docs/latents.md).

    \b
    Examples:
      python dataset_tool.py convert --source=data/mnist-10k-28x28.npz \\
          --dest=datasets/mnist-32x32.zip --resolution=32x32
      python dataset_tool.py convert --source=downloads/imagenet/train --dest=datasets/in256-sd.zip \\
          --transform=center-crop --resolution=256x256 --encoder=vae --xflip
    """
    if encoder is None:
        for name, value in (('--vae', vae), ('--xflip', xflip)):
            if value:
                raise UserError(f'{name}: only applies with --encoder=vae')
    else:
        from training.encoders import DEFAULT_VAE, check_vae_name, write_latents
        vae = check_vae_name(vae or DEFAULT_VAE)  # a missing folder fails before any work
    check_dest_apart(source, dest)
    writer = DatasetWriter(dest, overwrite=overwrite)  # refuse an existing --dest before any work
    if source.lower().endswith(('.npy', '.npz')) and os.path.isfile(source):
        images, labels = read_arrays(source)
        if not is_png_data(images):
            convert_arrays(writer, source, images, labels, max_images, value_range, transform, resolution, channels, encoder)
            return
        source = _array_source(source, images, labels, max_images)
    if value_range is not None:
        raise UserError('--range: only applies to .npy/.npz sources of float data or channel counts other than 1, 3 and 4')
    stream = iterate_images(source, max_images=max_images, transform=transform, resolution=resolution,
                            channels=channels, skip_bad=skip_bad)
    if encoder is not None:
        with writer, tqdm(total=len(stream), unit='img', file=sys.stderr, dynamic_ncols=True) as bar:
            write_latents(writer, _counted(stream, bar), vae, xflip, latent_dtype)
            if writer.count == 0:
                raise UserError(f'--source={source}: no readable images')
        info = writer.meta['latents']
        click.echo(f'Wrote the latents of {_describe(writer.count, stream, writer.labels)} to {writer.dest}: '
                   f'{info["channels"]}x{info["shape"][1]}x{info["shape"][2]} posterior mean and std, '
                   f'{"with" if xflip else "without"} mirrored copies, {latent_dtype}')
        return
    with writer, tqdm(total=len(stream), unit='img', file=sys.stderr, dynamic_ncols=True) as bar:
        for _name, image, label in stream:
            writer.add_image(image, label)
            bar.update(1)
        if writer.count == 0:
            raise UserError(f'--source={source}: no readable images')
    click.echo(f'Wrote {_describe(writer.count, stream, writer.labels)} to {writer.dest}')


if __name__ == '__main__':
    cli()
