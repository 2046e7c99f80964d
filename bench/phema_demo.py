"""FID against kimg of the demo network under EMA widths chosen after training (post-hoc EMA).

Trains the CPU demo's network (scripts/demo.sh's preset, sampled without guidance) on the bundled MNIST
digits with `--ema-std=0.050,0.100` and a snapshot every tick, then at every snapshot
reconstructs each width of `--widths` from the saved profiles (reconstruct_phema.py's function)
and scores it with FID-N against the reference statistics `--ref` (fid.py ref), sampling with
`--solver`/`--steps` (EDM's sampler by default). Writes `phema-demo.json` in the run folder and the plot `--plot`, titled with the CPU.

    python fid.py ref --data=datasets/mnist-32x32.zip --dest=ref-2000.npz --num=2000
    python bench/phema_demo.py --outdir=runs-phema --kimg=100 --tick=10 --ref=ref-2000.npz --num=512 \
        --plot=docs/phema-demo.png
    python bench/phema_demo.py --run=runs-phema/00000-... --ref=ref-2000.npz --num=512   # score a run again
"""

import glob
import json
import os
import subprocess
import sys

import click

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import dnnlib  # noqa: E402
import reconstruct_phema  # noqa: E402
from dnnlib import plot  # noqa: E402
from dnnlib.util import UserError  # noqa: E402
from torch_utils import misc  # noqa: E402
from training import metrics, phema, sampler  # noqa: E402

DATA = os.path.join(ROOT, 'datasets', 'mnist-32x32.zip')
DEMO = ['--preset=demo-cpu', '--seed=0']


def make_data(path):
    """The demo's data set (the bundled digits at 32x32), built once."""
    if not os.path.isfile(path):
        subprocess.run([sys.executable, os.path.join(ROOT, 'dataset_tool.py'), 'convert', '--source',
                        os.path.join(ROOT, 'data', 'mnist-10k-28x28.npz'), f'--dest={path}', '--resolution=32x32'], check=True)
    return path


def train(outdir, data, kimg, tick_kimg, device):
    """Runs train.py for `kimg` with two tracked profiles and returns the run folder."""
    subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'), f'--outdir={outdir}', f'--data={data}', '--desc=phema',
                    '--time-limit=100000', f'--duration={kimg / 1000}', f'--tick={tick_kimg}', '--snap=1', '--dump=1000',
                    '--ema-std=0.050,0.100', f'--device={device}', *DEMO], check=True, cwd=ROOT)
    return sorted(glob.glob(os.path.join(outdir, '*-phema')))[-1]


def score_run(run_dir, widths, ref, num, every=1, solver=None, steps=18, bf16_features=False, device='cpu'):
    """{width: [(kimg, FID)]} at every `every`-th snapshot after kimg 0 that has profiles saved
    with it: each width reconstructed there, sampled by `solver` in `steps` and scored against `ref`."""
    if not os.path.isfile(os.path.join(run_dir, 'training_options.json')):
        raise UserError(f'--run: "{run_dir}" is not a train.py run folder (no training_options.json)')
    reference = metrics.load_reference(ref)
    detector = metrics.load_detector(device=device, bf16=bf16_features)
    sampling = dict(num_steps=steps) if solver is None else dict(solver=solver, num_steps=steps)
    curves = {f'{w:.3f}': [] for w in widths}
    for kimg in [k for k in phema.list_saved(run_dir) if k > 0][every - 1::every]:  # kimg 0: the first step's weights
        _end, results = reconstruct_phema.reconstruct(run_dir, widths, outkimg=kimg)
        template = reconstruct_phema.load_template(run_dir, kimg)['ema'].to(device)
        for width, params, residual in results:
            net = phema.network_with(template, params)
            fid = metrics.score_network(net, reference, num, detector=detector, device=device, verbose=False, **sampling)['fid']
            curves[f'{width:.3f}'].append((kimg, fid))
            print(f'kimg {kimg:4d}  EMA width {width:.3f}  FID-{num} {fid:8.2f}  (profile fit residual {residual:.1e})', flush=True)
    return curves


@click.command()
@click.option('--outdir', help='Where the training run goes', metavar='DIR', type=str)
@click.option('--run', 'run_dir', help='Score this run folder instead of training one', metavar='DIR', type=str)
@click.option('--data', help='Data set (built from the bundled digits when missing)', metavar='ZIP', type=str, default=DATA, show_default=True)
@click.option('--kimg', help='Training length (a fixed length, unlike the demo\'s time limit, so the curve does not depend on the CPU)', metavar='KIMG', type=click.FloatRange(min=1), default=100, show_default=True)
@click.option('--tick', 'tick_kimg', help='kimg per tick (a snapshot each)', metavar='KIMG', type=click.FloatRange(min=1), default=2, show_default=True)
@click.option('--widths', help='EMA widths to reconstruct', metavar='LIST', type=str, default='0.030,0.150', show_default=True)
@click.option('--ref', help='Reference statistics (fid.py ref; with --bf16-features, computed with --bf16=1)', metavar='NPZ', type=str, required=True)
@click.option('--num', help='Generated images per FID', metavar='INT', type=click.IntRange(min=2), default=128, show_default=True)
@click.option('--every', help='Score every N-th snapshot', metavar='N', type=click.IntRange(min=1), default=1, show_default=True)
@click.option('--solver', help='Sampler (generate.py --solver)  [default: EDM\'s]', type=click.Choice(list(sampler.SOLVERS)))
@click.option('--steps', help='Sampling steps', metavar='INT', type=click.IntRange(min=1), default=18, show_default=True)
@click.option('--bf16-features', help='Inception features in bfloat16 (fid.py --bf16=1)', is_flag=True)
@click.option('--plot', 'plot_path', help='Where to draw FID against kimg  [default: RUN/phema-demo.png]', metavar='PNG', type=str)
@click.option('--device', help='Device', metavar='STR', type=str, default='cpu', show_default=True)
def main(outdir, run_dir, data, kimg, tick_kimg, widths, ref, num, every, solver, steps, bf16_features, plot_path, device):
    """FID against kimg for EMA widths reconstructed after training."""
    if (outdir is None) == (run_dir is None):
        raise UserError('--outdir or --run: give exactly one')
    with dnnlib.util.option_errors(main, names=dict(std='--widths', stds='--widths')):
        width_list = phema.parse_stds(widths)
    if not os.path.isfile(ref):
        raise UserError(f'--ref: "{ref}" is not a file; make it with fid.py ref')
    if run_dir is None:
        run_dir = train(outdir, make_data(data), kimg, tick_kimg, device)
    curves = score_run(run_dir, width_list, ref, num, every, solver, steps, bf16_features, device)
    cpu = misc.cpu_info()[0] or 'unknown CPU'
    with open(os.path.join(run_dir, 'phema-demo.json'), 'w', encoding='utf-8') as f:
        json.dump(dict(cpu=cpu, num=num, ref=ref, solver=solver or 'edm', steps=steps, bf16_features=bf16_features, fid=curves), f, indent=2)
    plot_path = plot_path or os.path.join(run_dir, 'phema-demo.png')
    plot.line_plot(plot_path, {f'EMA width {w}': points for w, points in curves.items()}, xlabel='kimg',
                   ylabel=f'FID-{num}', title=f'Post-hoc EMA widths of the demo network ({cpu})')
    print(f'Wrote {plot_path}')


if __name__ == '__main__':
    main()
