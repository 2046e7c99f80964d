"""Milliseconds per optimizer step of the quality study's network (bench/quality.py) at several
batch sizes, with several training processes at once, as a study runs them.

On a GPU a step of a network this small costs its kernel launches rather than its arithmetic, so a
larger batch can cost no more time a step; this measures where that stops under the load of the
study's processes, which is how `--preset=gpu` got its batch of 256 (docs/gpu.md). Each process
trains one method through the real training loop at each batch size in turn: `--warmup` steps,
then `--steps` timed ones (the device synchronised at both ends). It prints one line per process
and batch, then the mean per method and batch with the images per second that gives.

    python bench/step_time.py --device=cuda                           # 2 x patch, 2 x full, batch 32-256
    python bench/step_time.py --device=cpu --batches=8,16 --copies=1 --steps=5
"""

import collections
import concurrent.futures
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time

import click

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'bench'))

import dnnlib  # noqa: E402
import quality  # noqa: E402


def time_steps(method, device, batches, warmup, steps, threads, cache, preset):
    """[{method, batch, ms, img_s}] of one process training `method` at each batch size in turn."""
    import torch
    from training import training_loop
    torch.set_num_threads(threads)
    data, _ = quality.prepare_data('mnist', None, cache)
    rows = []
    for batch in batches:
        cfg = quality.apply_preset(dnnlib.EasyDict(preset=preset, smoke=False, train_options=None), set())
        cfg.batch, cfg.ema_std = batch, '0.05,0.1'  # the study's post-hoc EMA profiles are updated every step too
        c = quality.loop_config(quality.method_options(cfg, method), data, 0)
        never = 1 << 40
        c.update(run_dir=tempfile.mkdtemp(prefix='step-time-'), total_kimg=1e9, snapshot_ticks=never, state_dump_ticks=never,
                 sample_grid=False, kimg_per_tick=1e9)
        now = dict(n=0)

        def at_step(info):
            now['n'] += 1
            if now['n'] in (warmup, warmup + steps):
                if device == 'cuda':
                    torch.cuda.synchronize()
                now[now['n']] = (time.perf_counter(), info.nimg)
            return now['n'] >= warmup + steps

        training_loop.training_loop(**c, device=torch.device(device), step_callback=at_step)
        (t0, n0), (t1, n1) = now[warmup], now[warmup + steps]
        rows.append(dict(method=method, batch=batch, ms=(t1 - t0) / steps * 1e3, img_s=(n1 - n0) / (t1 - t0)))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def summary(rows):
    """{(method, batch): (mean ms per step, mean images per second)} over the processes."""
    groups = collections.defaultdict(list)
    for r in rows:
        groups[r['method'], r['batch']].append(r)
    return {k: (statistics.mean(r['ms'] for r in group), statistics.mean(r['img_s'] for r in group))
            for k, group in sorted(groups.items())}


@click.command(context_settings=dict(show_default=True))
@click.option('--device', help='cpu or cuda', default='cuda')
@click.option('--methods', help='Methods of bench/quality.py, one process each per copy', default='patch,full')
@click.option('--copies', help='Processes per method', type=click.IntRange(min=1), default=2)
@click.option('--batches', help='Batch sizes, timed in this order by every process', default='32,64,128,256')
@click.option('--warmup', help='Steps before the timed ones', type=click.IntRange(min=1), default=20)
@click.option('--steps', help='Timed steps', type=click.IntRange(min=1), default=50)
@click.option('--threads', help='Threads per process', type=click.IntRange(min=1), default=2)
@click.option('--preset', help='bench/quality.py preset whose network and schedule are timed', default='gpu',
              type=click.Choice(list(quality.PRESETS)))
@click.option('--cache', help='Data sets (as bench/quality.py --cache)', default=os.path.join(ROOT, 'runs', 'quality-cache'))
def main(device, methods, copies, batches, warmup, steps, threads, preset, cache):
    """Milliseconds per training step of the quality study network at several batch sizes."""
    methods = quality.parse_list('--methods', methods, choices=list(quality.METHODS))
    batches = quality.parse_list('--batches', batches, kind=int)
    cache = os.path.abspath(cache)
    quality.prepare_data('mnist', None, cache)  # once, before the processes read it
    jobs = [m for _ in range(copies) for m in methods]
    context = multiprocessing.get_context('spawn')
    with concurrent.futures.ProcessPoolExecutor(len(jobs), mp_context=context) as pool:
        futures = [pool.submit(time_steps, m, device, batches, warmup, steps, threads, cache, preset) for m in jobs]
        rows = [row for f in futures for row in f.result()]
    print(f'\n{"method":8s} {"batch":>6s} {"ms/step":>8s} {"img/s":>8s}  ({len(jobs)} processes at once on {device})')
    for (method, batch), (ms, img_s) in summary(rows).items():
        print(f'{method:8s} {batch:6d} {ms:8.1f} {img_s:8.0f}')


if __name__ == '__main__':
    main()
