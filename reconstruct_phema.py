"""Reconstruct post-hoc EMA networks of any width and end time from the profiles that a run saved
with its snapshots (train.py --ema-std): Karras et al. 2024, section 3."""

import os

import click
import numpy as np
import torch

import dnnlib
from dnnlib.util import UserError
from training import checkpoints, phema, run_files


MAX_RESIDUAL = 0.5  # relative L2 error of the reconstructed profile: beyond, its weights sum far below 1


def output_name(kimg, std):
    """`network-snapshot-<kimg>-ema-<std>.pkl`: an ordinary snapshot whose name says its EMA."""
    return f'network-snapshot-{int(kimg):06d}-ema-{std:.3f}.pkl'


def pick_end(saved, outkimg):
    """The kimg of the profiles the reconstructions end at: `outkimg`, or the latest."""
    if outkimg is None:
        return max(saved)
    if outkimg not in saved:
        raise UserError(f'--outkimg={outkimg}: no profiles saved at that kimg (saved: {", ".join(map(str, saved))})')
    return outkimg


def load_sources(saved, end_kimg):
    """[(step, γ, file, index in file)] of every saved profile that ends at or before `end_kimg`'s step."""
    end_step = phema.load_saved(saved[end_kimg])['step']
    sources = []
    for path in saved.values():
        state = phema.load_saved(path)
        if state['step'] <= end_step:
            sources += [(state['step'], gamma, path, i) for i, gamma in enumerate(state['gamma'])]
    return end_step, sources


def combine(sources, weights):
    """Σ wᵢ θ̂ᵢ per parameter (float64 sums), one dict per column of `weights` (sources x outputs);
    each saved file is read once."""
    sums = [None] * weights.shape[1]
    for path in dict.fromkeys(source[2] for source in sources):
        averages = phema.load_saved(path)['averages']
        for row, (_step, _gamma, src_path, index) in enumerate(sources):
            if src_path != path:
                continue
            for col in range(weights.shape[1]):
                if sums[col] is None:
                    sums[col] = {name: torch.zeros_like(t, dtype=torch.float64) for name, t in averages[index].items()}
                for name, tensor in averages[index].items():
                    sums[col][name] += weights[row, col] * tensor.to(torch.float64)
    return sums


def reconstruct(indir, outstd, outkimg=None):
    """(end kimg, [(std, weights of the parameters, relative residual)]) for the target widths."""
    saved = phema.list_saved(indir)
    if not saved:
        raise UserError(f'--indir: "{indir}" holds no phema-*.pt files (train with --ema-std to save profiles)')
    end_kimg = pick_end(saved, outkimg)
    end_step, sources = load_sources(saved, end_kimg)
    t_src = np.array([s[0] for s in sources], np.float64)
    gamma_src = np.array([s[1] for s in sources], np.float64)
    solved = [phema.solve_weights(t_src, gamma_src, end_step, phema.std_to_exp(std)) for std in outstd]
    sums = combine(sources, np.stack([weights for weights, _ in solved], axis=1))
    return end_kimg, [(std, params, residual) for std, params, (_w, residual) in zip(outstd, sums, solved)]


def load_template(indir, kimg, trust_pickle=False):
    """The run's snapshot dict at `kimg` (network, loss, augmentation, data-set options, encoder),
    rebuilt without running code from the file unless `trust_pickle`."""
    path = os.path.join(indir, run_files.snapshot_name(kimg))
    if not os.path.isfile(path):
        raise UserError(f'--indir: "{path}" is missing; the profiles at kimg {kimg} need the snapshot saved with them')
    with dnnlib.util.option_errors(names={'indir': '--indir', 'trust': '--trust-pickle'}):
        return checkpoints.load_snapshot(path, 'indir', trust=trust_pickle)


def check_fits(net, params, indir, kimg):
    """Raises UserError unless the averaged parameters `params` are those of `net`, the snapshot
    saved with the profiles: same names, same shapes (a snapshot of another run fails here)."""
    shapes = {name: tuple(param.shape) for name, param in net.named_parameters()}
    if {name: tuple(t.shape) for name, t in params.items()} != shapes:
        raise UserError(f'--indir: the profiles of "{indir}" at kimg {kimg} average another network than '
                        f'{run_files.snapshot_name(kimg)} beside them (parameter names or shapes differ)')


@click.command(context_settings=dict(show_default=True, max_content_width=100))
@click.option('--indir', help='Run folder of train.py --ema-std', metavar='DIR', type=str, required=True)
@click.option('--outdir', help='Where to write the reconstructed snapshots', metavar='DIR', type=str, required=True)
@click.option('--outstd', help='Relative EMA widths to reconstruct, e.g. 0.030,0.060', metavar='LIST', type=str, required=True)
@click.option('--outkimg', help='End the profiles at this snapshot  [default: the latest]', metavar='KIMG', type=click.IntRange(min=0))
@click.option('--trust-pickle', 'trust_pickle', help='Unpickle the run\'s snapshot fully, running code it carries (only for files you trust)', is_flag=True)
def main(indir, outdir, outstd, outkimg, trust_pickle):
    """Reconstruct EMA networks of other widths from a run's saved EMA profiles.

    \b
    Writes network-snapshot-<kimg>-ema-<std>.pkl and .safetensors files, which generate.py,
    fid.py and train.py --transfer take like any snapshot.

    \b
    Examples:
    python train.py --outdir=runs --data=datasets/mnist-32x32.zip --ema-std=0.050,0.100 ...
    python reconstruct_phema.py --indir=runs/00000-mnist-... --outdir=phema --outstd=0.030,0.075,0.150
    """
    if not os.path.isdir(indir):
        raise UserError(f'--indir: "{indir}" is not a folder')
    dnnlib.util.check_output_dir(outdir, '--outdir')
    with dnnlib.util.option_errors(main, names=dict(std='--outstd', stds='--outstd')):
        stds = phema.parse_stds(outstd)
    with dnnlib.util.option_errors(main):
        end_kimg, results = reconstruct(indir, stds, outkimg)
    for std, _params, residual in results:
        if residual > MAX_RESIDUAL:
            raise UserError(f'--outstd={std:g}: the saved profiles cannot form this width (relative residual {residual:.2f}, '
                            f'more than {MAX_RESIDUAL}); the weights would be shrunk towards zero. Choose widths near those '
                            f'tracked with --ema-std')
    template = load_template(indir, end_kimg, trust_pickle)
    check_fits(template['ema'], results[0][1], indir, end_kimg)
    os.makedirs(outdir, exist_ok=True)
    for std, params, residual in results:
        net = phema.network_with(template['ema'], params)
        name = output_name(end_kimg, std)
        run_files.save_snapshot(outdir, end_kimg, net, template.get('loss_fn'), template.get('augment_pipe'),
                                template.get('dataset_kwargs', {}), template.get('encoder'), name=name)
        print(f'{os.path.join(outdir, name)}: EMA width {std:.3f} (exponent {phema.std_to_exp(std):.2f}), '
              f'profile fit residual {residual:.1e}', flush=True)


if __name__ == '__main__':
    main()
