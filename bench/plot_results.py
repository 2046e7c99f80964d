"""The figures of README.md, docs/results.md and docs/benchmarks.md, redrawn from their numbers.

The measured points live in docs/plots.json (one entry per PNG: a title and panels of series, each
series a method, a label and its [x, y] points; a log-scale x axis is labelled at its points or at
its `xticks`, a log-scale y axis (`logy`) at its `yticks`), so a new measurement is a JSON edit
and a rerun; nothing is trained or measured here. The method figure (docs/method.png) is drawn
from a bundled emoji with the project's own crop and coordinate formula
(`training.patch.coord_grid`).

    python bench/plot_results.py                      # every figure into docs/
    python bench/plot_results.py --only=method.png    # one of them

Needs matplotlib (not a requirement of the project: pip install matplotlib).
"""

import json
import os
import sys

import click
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dnnlib.util import UserError, atomic_write  # noqa: E402

DEFAULT_JSON = os.path.join(ROOT, 'docs', 'plots.json')
METHOD_FIGURE = 'method.png'
EMOJI = os.path.join(ROOT, 'data', 'noto-emoji-32x32.npz')
EMOJI_NAME = '1f98a.png'  # a fox: recognisable at 32x32
COLOURS = {'patch': '#1f77b4', 'full': '#d62728', 'reference': '#7f7f7f'}


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or one line saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise UserError('bench/plot_results.py needs matplotlib: pip install matplotlib') from None
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def save(fig, path):
    """Writes the figure as a PNG through a temporary name, so a killed run leaves no half file."""
    with atomic_write(path, 'wb') as f:
        fig.savefig(f, format='png', dpi=100, bbox_inches='tight')


def draw_series(ax, series):
    """One method's measured points: every point marked, joined unless `connect` is false."""
    colour = COLOURS[series['method']]
    points = np.asarray(series['points'], dtype=float)
    order = np.argsort(points[:, 0], kind='stable')
    xs, ys = points[order, 0], points[order, 1]
    line = '--' if series.get('dashed') or series['method'] == 'reference' else '-'
    marker = None if series['method'] == 'reference' else series.get('marker', 'o')
    face = 'white' if series.get('hollow') else colour
    ax.plot(xs, ys, linestyle=line if series.get('connect', True) else 'none', marker=marker, color=colour,
            markerfacecolor=face, markersize=7, linewidth=1.8, label=series['label'])


def draw_figure(plt, spec, path):
    """A figure of `spec` (title, panels side by side) with a legend in every panel."""
    panels = spec['panels']
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for series in panel['series']:
            draw_series(ax, series)
        if panel.get('logx'):
            ax.set_xscale('log')
            xs = panel.get('xticks') or sorted({x for series in panel['series'] for x, _y in series['points']})
            ax.set_xticks(xs, [f'{x:,.0f}' for x in xs])
            ax.minorticks_off()
        if panel.get('logy'):
            ax.set_yscale('log')
            if panel.get('yticks'):
                ax.set_yticks(panel['yticks'], [f'{y:g}' for y in panel['yticks']])
                ax.minorticks_off()
        ax.set_xlabel(panel['xlabel'])
        ax.set_ylabel(panel['ylabel'])
        if panel.get('subtitle'):
            ax.set_title(panel['subtitle'], fontsize=11)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8.5)
    fig.suptitle(spec['title'], fontsize=12)
    fig.tight_layout()
    save(fig, path)
    plt.close(fig)


def draw_method(plt, path):
    """A 32x32 image with its R/4, R/2 and R crops, and each crop's pixels and coordinate channels."""
    from training import patch
    data = np.load(EMOJI)
    image = data['images'][list(map(str, data['names'])).index(EMOJI_NAME)]
    side = image.shape[0]
    crops = [(side // 4, 4, 18), (side // 2, 14, 2), (side, 0, 0)]  # (side, top, left)
    colours = ['#ff7f0e', '#2ca02c', '#9467bd']
    fig = plt.figure(figsize=(11, 6.6))
    grid = fig.add_gridspec(3, 4, width_ratios=[2.2, 1, 1, 1])
    ax = fig.add_subplot(grid[:, 0])
    ax.imshow(image, interpolation='nearest')
    for (size, top, left), colour in zip(crops, colours):
        ax.add_patch(plt.Rectangle((left - 0.5, top - 0.5), size, size, fill=False, edgecolor=colour, linewidth=3))
    ax.set_title(f'training image, R = {side}\ncrops of side R/4, R/2 and R')
    ax.axis('off')
    for row, ((size, top, left), colour) in enumerate(zip(crops, colours)):
        coords = patch.coord_grid(side, size, size, y_start=top, x_start=left).numpy()
        share = {side // 4: 'R/4: 4x the images per step', side // 2: 'R/2: 2x the images', side: 'R: the full image'}[size]
        cells = [(image[top:top + size, left:left + size], f'{share}\n{size}x{size} pixels'),
                 (coords[0], 'x channel'), (coords[1], 'y channel')]
        for col, (cell, label) in enumerate(cells):
            cax = fig.add_subplot(grid[row, col + 1])
            if col == 0:
                cax.imshow(cell, interpolation='nearest')
                for spine in cax.spines.values():
                    spine.set_edgecolor(colour)
                    spine.set_linewidth(3)
                cax.set_xticks([])
                cax.set_yticks([])
            else:
                shown = cax.imshow(cell, cmap='coolwarm', vmin=-1, vmax=1, interpolation='nearest')
                cax.axis('off')
            cax.set_title(label, fontsize=9)
    fig.colorbar(shown, ax=fig.axes[-6:], shrink=0.6, label='coordinate: -1 at the left / top edge, +1 at the right / bottom')
    fig.suptitle('Patch Diffusion: the denoiser sees random crops plus their pixel coordinates in the full image', fontsize=12)
    save(fig, path)
    plt.close(fig)


@click.command()
@click.option('--json', 'json_path', help='Figures and their measured points', metavar='PATH', default=DEFAULT_JSON, show_default=True)
@click.option('--outdir', help='Where the PNG files go', metavar='DIR', default=os.path.join(ROOT, 'docs'), show_default=True)
@click.option('--only', help='Draw only this file name', metavar='NAME')
def main(json_path, outdir, only):
    """Redraws the documentation's figures from the measured points in --json."""
    try:
        with open(json_path, encoding='utf-8') as f:
            figures = json.load(f)
    except (OSError, ValueError) as err:
        raise UserError(f'--json: cannot read "{json_path}" ({err})') from None
    names = [METHOD_FIGURE, *figures]
    if only is not None and only not in names:
        raise UserError(f'--only: "{only}" is none of {", ".join(names)}')
    if not os.path.isdir(outdir):
        raise UserError(f'--outdir: "{outdir}" is not a folder')
    plt = pyplot()
    for name in names:
        if only is not None and name != only:
            continue
        path = os.path.join(outdir, name)
        if name == METHOD_FIGURE:
            draw_method(plt, path)
        else:
            draw_figure(plt, figures[name], path)
        click.echo(path)


if __name__ == '__main__':
    main()
