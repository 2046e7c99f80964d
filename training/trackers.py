"""The `training_state.Tracker`s of a run, built from the training loop's `phema_kwargs`,
`metrics_kwargs` and `logger_kwargs`: post-hoc EMA profiles (`training.phema`), metrics at ticks
(`training.train_metrics`) and live logs (`training.live_log`)."""

import os

from torch_utils import distributed as dist
from training import live_log, train_metrics
from training import phema as phema_lib
from training.training_state import Tracker


class PowerEMATracker(Tracker):
    """Power-function EMA profiles updated after every step, saved in the training state (as
    'phema') and as `phema-<kimg>.pt` beside every snapshot (`reconstruct_phema.py` reads them)."""

    def __init__(self, net, stds):
        self.profiles = phema_lib.PowerEMA(net, stds)
        self.step = 0

    def update(self, net, step, nimg):
        self.profiles.update(net, step)
        self.step = step

    def state_dict(self):
        return self.profiles.state_dict(self.step)

    def load_state_dict(self, state):
        self.profiles.load_state_dict(state)
        self.step = int(state['step'])

    def snapshot(self, run_dir, kimg, nimg):
        if dist.get_rank() == 0:
            self.profiles.save(run_dir, kimg, self.step, nimg)


class MetricsTracker(Tracker):
    """Scores the EMA network (and the EMA profiles) at the ticks `TickMetrics` says are due,
    into the record's 'metrics'. Collective: every rank takes part."""

    def __init__(self, scorer, run_dir, ema, profiles=None):
        self.scorer, self.run_dir, self.ema, self.profiles = scorer, run_dir, ema, profiles

    def tick(self, record, records, done):
        if self.scorer.due(record['tick'], done):
            record['metrics'] = self.scorer.score(self.run_dir, self.ema, self.profiles, list(records) + [record])


class LiveLogTracker(Tracker):
    """Sends every tick's record and new sample grid to TensorBoard or wandb (rank 0)."""

    def __init__(self, logger):
        self.logger = logger

    def after_tick(self, record, run_dir):
        grid = os.path.join(run_dir, f'samples-{int(round(record["kimg"] * 1000)) // 1000:06d}.png')
        self.logger.log(record, grid)

    def close(self):
        self.logger.close()


def state_parts(net, phema_kwargs=None):
    """{name: tracker} of the trackers whose state the training state holds."""
    return dict(phema=PowerEMATracker(net, **phema_kwargs)) if phema_kwargs else {}


def reporters(run_dir, dataset_kwargs, device, encoder, ema, parts, resume_nimg=None, metrics_kwargs=None,
              logger_kwargs=None):
    """The trackers without state: metrics (of `ema` and the profiles in `parts`) and the live log
    (`resume_nimg`: where a resumed run continues, so that the log drops what came after)."""
    found = []
    if metrics_kwargs:
        scorer = train_metrics.TickMetrics(dataset_kwargs, device=device, encoder=encoder, **metrics_kwargs)
        profiles = parts['phema'].profiles if 'phema' in parts else None
        found.append(MetricsTracker(scorer, run_dir, ema, profiles))
    logger = live_log.open_logger(run_dir, resume_nimg=resume_nimg, **logger_kwargs) if logger_kwargs else None
    if logger is not None:
        found.append(LiveLogTracker(logger))
    return found
