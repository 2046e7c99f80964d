"""Live logs of a run: every number of a `stats.jsonl` line and the sample grids, written as
TensorBoard events or to wandb (offline) in the run folder while training runs. Rank 0 only."""

import importlib.util
import math
import os

import numpy as np
from PIL import Image

from dnnlib.util import FieldError
from torch_utils import distributed as dist

KINDS = ('none', 'tensorboard', 'wandb')


def check_kind(kind):
    """Raises FieldError for an unknown logger or one whose package is missing, before a run starts."""
    if kind not in KINDS:
        raise FieldError('kind', f'"{kind}" is not one of {", ".join(KINDS)}')
    if kind == 'wandb' and importlib.util.find_spec('wandb') is None:
        raise FieldError('kind', 'wandb is not installed (pip install wandb), or use tensorboard')
    if kind == 'tensorboard' and importlib.util.find_spec('tensorboard') is None:
        raise FieldError('kind', 'tensorboard is not installed (pip install tensorboard)')


def flatten(fields, prefix=''):
    """{'loss_by_patch': {'16': 0.2}, 'lr': 1e-3, ...} → {'loss_by_patch/16': 0.2, 'lr': 1e-3}: the
    finite numbers of a stats line under slash-separated names (None and text are left out)."""
    flat = {}
    for key, value in fields.items():
        name = f'{prefix}{key}'
        if isinstance(value, dict):
            flat.update(flatten(value, name + '/'))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            flat[name] = float(value)
    return flat


def read_grid(path):
    """A PNG grid as uint8 HWC RGB."""
    with Image.open(path) as img:
        return np.asarray(img.convert('RGB'))


class _Logger:
    """Common part: the x axis is images shown (nimg), and a grid file is sent once per version."""

    def __init__(self):
        self.sent = set()

    def log(self, fields, grid_path=None):
        """Sends a tick's stats and, when `grid_path` exists and is new, its sample grid."""
        step = int(round(fields['kimg'] * 1000))
        self.scalars(flatten(fields), step)
        if grid_path is not None and os.path.isfile(grid_path):
            key = (grid_path, os.path.getmtime(grid_path))
            if key not in self.sent:
                self.sent.add(key)
                self.image('samples', read_grid(grid_path), step)


class TensorBoardLogger(_Logger):
    """Events files in the run folder (`tensorboard --logdir=RUN`); a resumed run hides the events
    the first run wrote after the resumed tick, as stats.jsonl drops its lines."""

    def __init__(self, run_dir, resume_nimg=None):
        super().__init__()
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(run_dir, purge_step=resume_nimg + 1 if resume_nimg is not None else None)

    def scalars(self, values, step):
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def image(self, tag, image, step):
        self.writer.add_image(tag, image, step, dataformats='HWC')
        self.writer.flush()

    def close(self):
        self.writer.close()


class WandbLogger(_Logger):
    """wandb in offline mode, files under the run folder (`wandb sync` uploads them later)."""

    def __init__(self, run_dir, resume_nimg=None):
        super().__init__()
        import wandb
        self.wandb = wandb
        self.run = wandb.init(mode='offline', dir=run_dir, name=os.path.basename(os.path.abspath(run_dir)))

    def scalars(self, values, step):
        self.run.log(values, step=step)

    def image(self, tag, image, step):
        self.run.log({tag: self.wandb.Image(image)}, step=step)

    def close(self):
        self.run.finish()


def open_logger(run_dir, kind='none', resume_nimg=None):
    """The logger of `kind` on rank 0, None elsewhere and for 'none'."""
    check_kind(kind)
    if kind == 'none' or dist.get_rank() != 0:
        return None
    return (TensorBoardLogger if kind == 'tensorboard' else WandbLogger)(run_dir, resume_nimg)
