"""Named sets of train.py options (`train.py --preset=NAME`); options given on the command line
override them.

Each preset maps option names, as spelled on the command line without the dashes, to values as
they would be written there. The recipes of the original Patch Diffusion release (CelebA-64,
FFHQ-64, LSUN and ImageNet latents) are its README's; the others are EDM's recipes with patches,
or this project's demo and benchmark configurations."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Preset:
    """A recipe: what it trains (one line, for --help and --dry-run) and its options."""
    summary: str
    options: dict


PRESETS = {
    # scripts/demo.sh on a CPU: a small fast class-conditional network (four resolutions down to
    # 4x4, one residual block each, no attention, 1.7M parameters), noise levels centred higher than
    # EDM's (whole digits before fine strokes), bf16 where the CPU computes it natively, at most 8
    # minutes (docs/results.md, "The demo").
    'demo-cpu': Preset('the demo on a CPU: 32x32 digits, 1.7M parameters, at most 8 minutes', {
        'cbase': 32, 'cres': '1,2,2,2', 'blocks': 1, 'attn': 'none', 'cond': True, 'label-dropout': 0.1,
        'batch': 32, 'duration': 0.4, 'time-limit': 8, 'lr': 2e-3, 'lr-rampup': 0.002, 'lr-decay': 0.02,
        'dropout': 0, 'loss-norm': 'mean', 'p-mean': 0, 'precision': 'bf16', 'tick': 5, 'snap': 20, 'dump': 40,
    }),
    # scripts/demo.sh with a CUDA GPU: a wider network, larger batches, about ten times the images.
    'demo-gpu': Preset('the demo on a GPU: 32x32 digits, 64 channels, 1 Mimg', {
        'cbase': 64, 'cres': '1,2,2', 'batch': 128, 'duration': 1.0, 'lr': 1e-3, 'lr-rampup': 0.02,
        'dropout': 0, 'tick': 20, 'snap': 25, 'dump': 50,
    }),
    # bench/train_speed.py's default configuration (SPEC section 9: DDPM++ with 32 channels on
    # [1,2,2], 4 blocks, attention at 16, batch 32, patches with real_p 0.5).
    'bench': Preset('the speed benchmark: DDPM++ 32 channels on [1,2,2], batch 32', {
        'arch': 'ddpmpp', 'cbase': 32, 'cres': '1,2,2', 'blocks': 4, 'attn': '16', 'dropout': 0.13,
        'batch': 32, 'duration': 1, 'lr-rampup': 0.01, 'real-p': 0.5,
    }),
    # EDM's CIFAR-10 recipe (DDPM++, 55.7M parameters, augmentation 0.12), trained with patches;
    # add --cond=1 for the class-conditional model and --patch=0 for EDM's own.
    'cifar10': Preset("CIFAR-10 32x32: EDM's DDPM++ recipe, with patches", {
        'arch': 'ddpmpp', 'batch': 512, 'lr': 1e-3, 'dropout': 0.13, 'augment': 0.12, 'real-p': 0.5,
    }),
    # The original release's CelebA-64 recipe (augmentation 0).
    'celeba64': Preset('CelebA 64x64: the original release\'s recipe', {
        'arch': 'ddpmpp', 'cres': '1,2,2,2', 'batch': 256, 'lr': 2e-4, 'dropout': 0.05, 'augment': 0,
        'real-p': 0.5,
    }),
    # The original release's FFHQ-64 recipe (EDM's, with patches).
    'ffhq64': Preset('FFHQ 64x64: the original release\'s recipe', {
        'arch': 'ddpmpp', 'cres': '1,2,2,2', 'batch': 256, 'lr': 2e-4, 'dropout': 0.05, 'augment': 0.15,
        'real-p': 0.5,
    }),
    # The paper's small-data setting (AFHQv2 64x64, a few thousand images per class). The original
    # release gives no recipe for it: this is EDM's AFHQv2-64 recipe (dropout 0.25, augmentation
    # 0.15) with patches, an assumption to check against the paper.
    'afhq64': Preset('AFHQv2 64x64, the paper\'s small-data setting: EDM\'s recipe with patches', {
        'arch': 'ddpmpp', 'cres': '1,2,2,2', 'batch': 256, 'lr': 2e-4, 'dropout': 0.25, 'augment': 0.15,
        'real-p': 0.5,
    }),
    # The original release's LSUN-bedroom latent recipe: ADM on Stable Diffusion VAE latents, EMA
    # half-life 50 Mimg, fp16 with loss scaling 100. The duration is EDM's default (200 Mimg), not
    # checked against the original README.
    'lsun256-latent': Preset('LSUN bedroom 256x256 on VAE latents: the original release\'s recipe', {
        'arch': 'adm', 'latents': True, 'batch': 1024, 'lr': 1e-4, 'dropout': 0.1, 'ema': 50,
        'precision': 'fp16', 'ls': 100, 'augment': 0, 'real-p': 0.5,
    }),
    # The original release's ImageNet latent recipe: class-conditional, batch 4096. It drops no
    # labels: add --label-dropout=0.1 to sample with guidance (generate.py --cfg). The duration is
    # EDM's default (200 Mimg), not checked against the original README.
    'imagenet256-latent': Preset('ImageNet 256x256 on VAE latents, class-conditional: the original release\'s recipe', {
        'arch': 'adm', 'latents': True, 'cond': True, 'batch': 4096, 'lr': 1e-4, 'dropout': 0.1, 'ema': 50,
        'precision': 'fp16', 'ls': 100, 'augment': 0, 'real-p': 0.5,
    }),
}

