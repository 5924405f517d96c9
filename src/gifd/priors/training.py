"""Training the project's own DCGAN prior (`gifd train-prior`).

Generator: `DCGANGenerator` (BatchNorm, as in the face prior, so a trained generator becomes a
`DCGANPrior` with the same stages). Discriminator: the mirrored DCGAN discriminator with spectral
normalisation on every convolution and no BatchNorm. Spectral norm instead of BatchNorm keeps the
discriminator Lipschitz-bounded (stable on the tiny data sets this command is meant for) and makes
its output for one image independent of the rest of the batch, so real and fake batches need not be
mixed. Loss: the non-saturating logistic loss by default (hinge available). Augmentation:
DiffAugment (Zhao et al. 2020: colour, translation, cutout), differentiable and applied to real and
generated images alike, for both the D and the G update, which is what lets a GAN train on a few
hundred images without the discriminator memorising them.

Reproducibility: all randomness comes from explicit CPU generators. Initial weights come from
generators seeded from `seed`; the batches of iteration k are a pure function of (seed, k); the
latents and augmentations come from one training generator whose state is saved in every
checkpoint, with the optimisers, so `resume` continues exactly as an uninterrupted run would (on
the CPU bit for bit; on CUDA up to the non-determinism of its kernels). The global torch RNGs are
neither used nor touched.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from gifd.device import resolve_device
from gifd.errors import GifdError, load_torch_file
from gifd.imageio import save_grid, write_atomically
from gifd.priors.dcgan import (
    CHECKPOINT_FORMAT,
    FORMAT_VERSION,
    GENERATOR_FORMAT,
    SUPPORTED_RESOLUTIONS,
    DCGANGenerator,
    init_dcgan_weights,
)

CHECKPOINT_NAME = "checkpoint.pt"
GENERATOR_NAME = "generator.pt"
SAMPLES_DIR = "samples"
LOSSES = ("nonsaturating", "hinge")
AUGMENTATIONS = ("color", "translation", "cutout")
#: Fields that define the training run; on resume they must equal the checkpoint's.
TRAINING_FIELDS = (
    "data", "resolution", "nz", "ngf", "ndf", "batch_size", "lr", "beta1", "beta2", "loss", "augment", "seed",
)  # fmt: skip
#: How often (iterations) losses are read back from the device for the progress bar.
LOG_EVERY = 10
#: Number of fixed latents shown in each sample grid.
NUM_GRID_SAMPLES = 64


@dataclass
class TrainPriorConfig:
    """Everything `train_prior` needs. Only `iterations`, `checkpoint_every`, `sample_every` and
    `device` may change when a run is resumed."""

    data: str
    out: Path
    iterations: int = 5000
    batch_size: int = 64
    resolution: int = 64
    nz: int = 100
    ngf: int = 64
    ndf: int = 64
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    loss: str = "nonsaturating"
    #: Comma-separated DiffAugment policy: any of color, translation, cutout ("" for none).
    augment: str = "color,translation,cutout"
    seed: int = 0
    checkpoint_every: int = 500
    sample_every: int = 500
    device: str | None = None

    def validate(self) -> None:
        """Raise a GifdError naming the first invalid field and its valid range."""
        if self.resolution not in SUPPORTED_RESOLUTIONS:
            raise GifdError(
                f"--resolution must be one of {list(SUPPORTED_RESOLUTIONS)}, got {self.resolution}"
            )
        positive = ("iterations", "batch_size", "nz", "ngf", "ndf", "checkpoint_every", "sample_every")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise GifdError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise GifdError(f"--lr must be positive, got {self.lr}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise GifdError(f"Adam betas must lie in [0, 1), got {self.beta1}, {self.beta2}")
        if self.loss not in LOSSES:
            raise GifdError(f"--loss must be one of {list(LOSSES)}, got {self.loss!r}")
        augment_policy(self.augment)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (stored in checkpoints, loadable with weights_only=True)."""
        values = dataclasses.asdict(self)
        values["out"] = str(self.out)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainPriorConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in names}
        kwargs["out"] = Path(kwargs["out"])
        return cls(**kwargs)


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced."""

    generator_path: Path
    checkpoint_path: Path
    iteration: int
    d_loss: float
    g_loss: float


# ---------------------------------------------------------------------------------------------
# Models and losses


class DCGANDiscriminator(nn.Module):
    """Mirror of `DCGANGenerator`: stride-2 4x4 convolutions halve the side down to 4x4 (channels
    ndf, 2 ndf, ...), LeakyReLU(0.2), then a 4x4 convolution to one logit. Spectral norm on every
    convolution, no BatchNorm."""

    def __init__(
        self, ndf: int = 64, resolution: int = 64, nc: int = 3, init_generator: torch.Generator | None = None
    ) -> None:
        """`init_generator`: draw the DCGAN initialisation from it (before spectral norm is attached,
        so the norm's power iteration starts from the final weights)."""
        super().__init__()
        if resolution not in SUPPORTED_RESOLUTIONS:
            raise GifdError(f"discriminator resolution must be one of {list(SUPPORTED_RESOLUTIONS)}")
        num_down = resolution.bit_length() - 3
        convs = []
        in_channels = nc
        for b in range(num_down):
            convs.append(nn.Conv2d(in_channels, ndf * 2**b, 4, 2, 1))
            in_channels = ndf * 2**b
        convs.append(nn.Conv2d(in_channels, 1, 4, 1, 0))
        layers: list[nn.Module] = []
        for i, conv in enumerate(convs):
            if init_generator is not None:
                init_dcgan_weights(conv, init_generator)
            layers.append(spectral_norm(conv))
            if i < num_down:
                layers.append(nn.LeakyReLU(0.2))
        self.main = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """One logit per image, shape (N,)."""
        return self.main(x).flatten()


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor, kind: str = "nonsaturating") -> Tensor:
    """Non-saturating logistic: softplus(-D(x)) + softplus(D(G(z)));
    hinge: relu(1 - D(x)) + relu(1 + D(G(z)))."""
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: Tensor, kind: str = "nonsaturating") -> Tensor:
    """Non-saturating: softplus(-D(G(z))); hinge: -D(G(z))."""
    if kind == "hinge":
        return -fake_logits.mean()
    return F.softplus(-fake_logits).mean()


# ---------------------------------------------------------------------------------------------
# DiffAugment (Zhao et al. 2020), on images in [-1, 1]; random draws from a CPU generator


def _uniform(n: int, generator: torch.Generator, like: Tensor) -> Tensor:
    return torch.rand(n, 1, 1, 1, generator=generator).to(device=like.device, dtype=like.dtype)


def augment_color(x: Tensor, generator: torch.Generator) -> Tensor:
    """Random brightness (+U(-0.5, 0.5)), saturation (x U(0, 2)) and contrast (x U(0.5, 1.5)) per image."""
    n = x.shape[0]
    x = x + (_uniform(n, generator, x) - 0.5)
    gray = x.mean(dim=1, keepdim=True)
    x = (x - gray) * (_uniform(n, generator, x) * 2) + gray
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(n, generator, x) + 0.5) + mean


def augment_translation(x: Tensor, generator: torch.Generator, ratio: float = 0.125) -> Tensor:
    """Shift each image by a random integer offset of up to `ratio` of its size, filling with zeros."""
    n, c, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    if sy == 0 and sx == 0:
        return x
    dy = torch.randint(-sy, sy + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(-sx, sx + 1, (n,), generator=generator).to(x.device)
    padded = F.pad(x, [sx, sx, sy, sy])
    # out[y, x] = in[y - dy, x - dx] = padded[y - dy + sy, x - dx + sx]
    rows = torch.arange(h, device=x.device)[None, :] - dy[:, None] + sy  # (n, h)
    cols = torch.arange(w, device=x.device)[None, :] - dx[:, None] + sx  # (n, w)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def augment_cutout(x: Tensor, generator: torch.Generator, ratio: float = 0.5) -> Tensor:
    """Zero a square of side `ratio` x size at a random centre (clipped at the border) per image."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + 1, (n,), generator=generator).to(x.device)
    cx = torch.randint(0, w + 1, (n,), generator=generator).to(x.device)
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    inside_y = (ys >= (cy - ch // 2)[:, None]) & (ys < (cy - ch // 2 + ch)[:, None])  # (n, h)
    inside_x = (xs >= (cx - cw // 2)[:, None]) & (xs < (cx - cw // 2 + cw)[:, None])  # (n, w)
    keep = ~(inside_y[:, :, None] & inside_x[:, None, :])
    return x * keep[:, None].to(x.dtype)


_AUGMENT_FUNCTIONS: dict[str, Callable[[Tensor, torch.Generator], Tensor]] = {
    "color": augment_color,
    "translation": augment_translation,
    "cutout": augment_cutout,
}


def augment_policy(policy: str) -> list[str]:
    """The list of augmentations in a comma-separated policy string (validated)."""
    names = [p.strip() for p in policy.split(",") if p.strip()]
    unknown = [p for p in names if p not in _AUGMENT_FUNCTIONS]
    if unknown:
        raise GifdError(
            f"unknown augmentation {unknown[0]!r} in --augment: use a comma-separated subset of "
            f"{', '.join(AUGMENTATIONS)} (or '' for none)"
        )
    return names


def diff_augment(x: Tensor, policy: Sequence[str], generator: torch.Generator) -> Tensor:
    """Apply the augmentations of `policy` in order (differentiable in `x`)."""
    for name in policy:
        x = _AUGMENT_FUNCTIONS[name](x, generator)
    return x.contiguous()


# ---------------------------------------------------------------------------------------------
# Batches, files


def batch_indices(num_images: int, batch_size: int, iteration: int, seed: int) -> Tensor:
    """Indices of the images of `iteration`: consecutive slices of one random permutation per epoch.

    A pure function of its arguments, so a resumed run draws the same batches.
    """
    positions = torch.arange(iteration * batch_size, (iteration + 1) * batch_size)
    epochs = positions // num_images
    out = torch.empty(batch_size, dtype=torch.long)
    for epoch in epochs.unique().tolist():
        perm_gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7_919 + 12_345) % 2**63)
        perm = torch.randperm(num_images, generator=perm_gen)
        mask = epochs == epoch
        out[mask] = perm[positions[mask] % num_images]
    return out


def _atomic_torch_save(obj: Any, path: Path) -> None:
    write_atomically(path, lambda handle: torch.save(obj, handle))


def _cpu_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _load_training_images(config: TrainPriorConfig) -> Tensor:
    from gifd.data import load_images

    images = load_images(config.data, config.resolution).images
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[0] < 1:
        raise GifdError(f"--data {config.data!r} gave no RGB images (shape {tuple(images.shape)})")
    if tuple(images.shape[2:]) != (config.resolution, config.resolution):
        raise GifdError(
            f"--data {config.data!r} gave images of size {tuple(images.shape[2:])}, "
            f"expected {config.resolution}x{config.resolution}"
        )
    return images.float() * 2 - 1


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint written by `train_prior` (validated, tensors on the CPU)."""
    path = Path(path)
    fix = "pass the --out directory of an earlier `gifd train-prior` run, or start without --resume"
    if not path.is_file():  # worded for --resume in a directory without a checkpoint yet
        raise GifdError(f"no training checkpoint at {path}: {fix}")
    data = load_torch_file(path, "training checkpoint", fix)
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise GifdError(f"{path} is not a gifd DCGAN training checkpoint: {fix}")
    return data


def load_checkpoint_config(out: str | Path) -> TrainPriorConfig:
    """The configuration of the run whose checkpoint is in directory `out` (to resume it)."""
    data = read_checkpoint(Path(out) / CHECKPOINT_NAME)
    config = TrainPriorConfig.from_dict(data["config"])
    config.out = Path(out)
    return config


# ---------------------------------------------------------------------------------------------
# Training


def _build_models(config: TrainPriorConfig) -> tuple[DCGANGenerator, DCGANDiscriminator]:
    netg = DCGANGenerator(nz=config.nz, ngf=config.ngf, resolution=config.resolution, nc=3)
    init_dcgan_weights(netg, torch.Generator().manual_seed(config.seed))
    # spectral_norm draws its power-iteration vectors from the global RNG: seed it locally.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + 2)
        netd = DCGANDiscriminator(
            ndf=config.ndf, resolution=config.resolution, nc=3,
            init_generator=torch.Generator().manual_seed(config.seed + 1),
        )  # fmt: skip
    return netg, netd


def _write_samples(netg: DCGANGenerator, fixed_z: Tensor, path: Path) -> None:
    netg.eval()
    with torch.no_grad():
        images = netg(fixed_z)
    netg.train()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_grid((images + 1) / 2, path, nrow=8)


def train_prior(config: TrainPriorConfig, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train a DCGAN on `config.data` and write checkpoints, sample grids and `generator.pt`.

    With `resume`, continue from `config.out/checkpoint.pt` (the training fields of `config` must
    equal the checkpoint's); otherwise `config.out` must not hold a checkpoint yet.
    """
    config.validate()
    out = Path(config.out)
    checkpoint_path = out / CHECKPOINT_NAME
    device = resolve_device(config.device)
    checkpoint: dict[str, Any] | None = None
    if resume:
        checkpoint = read_checkpoint(checkpoint_path)
        saved = checkpoint["config"]
        for name in TRAINING_FIELDS:
            if saved.get(name) != getattr(config, name):
                flag = "--" + name.replace("_", "-")
                raise GifdError(
                    f"{flag} {getattr(config, name)!r} differs from the resumed run's {saved.get(name)!r}: "
                    f"drop {flag} (resume keeps the checkpoint's settings) or start a new run elsewhere"
                )
    elif checkpoint_path.exists():
        raise GifdError(
            f"{out} already holds a training checkpoint: pass --resume to continue it, or use another --out"
        )

    images = _load_training_images(config)
    netg, netd = _build_models(config)
    netg.to(device).train()
    netd.to(device).train()
    opt_g = torch.optim.Adam(netg.parameters(), lr=config.lr, betas=(config.beta1, config.beta2))
    opt_d = torch.optim.Adam(netd.parameters(), lr=config.lr, betas=(config.beta1, config.beta2))
    rng = torch.Generator().manual_seed(config.seed + 3)
    start = 0
    d_value = g_value = float("nan")
    if checkpoint is not None:
        netg.load_state_dict(checkpoint["generator"])
        netd.load_state_dict(checkpoint["discriminator"])
        opt_g.load_state_dict(checkpoint["optim_g"])
        opt_d.load_state_dict(checkpoint["optim_d"])
        rng.set_state(checkpoint["rng"]["train"])
        start = int(checkpoint["iteration"])
        d_value, g_value = float(checkpoint["losses"]["d"]), float(checkpoint["losses"]["g"])
    policy = augment_policy(config.augment)
    grid_gen = torch.Generator().manual_seed(config.seed + 4)
    fixed_z = torch.randn(NUM_GRID_SAMPLES, config.nz, generator=grid_gen).to(device)
    out.mkdir(parents=True, exist_ok=True)

    def save_checkpoint(iteration: int) -> None:
        _atomic_torch_save(
            {
                "format": CHECKPOINT_FORMAT,
                "version": FORMAT_VERSION,
                "arch": netg.arch,
                "config": config.to_dict(),
                "iteration": iteration,
                "generator": _cpu_state(netg),
                "discriminator": _cpu_state(netd),
                "optim_g": opt_g.state_dict(),
                "optim_d": opt_d.state_dict(),
                # The only random state training uses (the global RNGs are never drawn from).
                "rng": {"train": rng.get_state()},
                "losses": {"d": d_value, "g": g_value},
            },
            checkpoint_path,
        )

    from tqdm import tqdm

    bar = tqdm(
        total=config.iterations, initial=min(start, config.iterations), desc="train-prior", unit="it",
        disable=not progress, dynamic_ncols=True,
    )  # fmt: skip
    iteration = start
    try:
        for iteration in range(start + 1, config.iterations + 1):
            idx = batch_indices(images.shape[0], config.batch_size, iteration - 1, config.seed)
            real = images[idx].to(device)
            z = torch.randn(config.batch_size, config.nz, generator=rng).to(device)
            fake = netg(z)

            real_logits = netd(diff_augment(real, policy, rng))
            fake_logits = netd(diff_augment(fake.detach(), policy, rng))
            d_loss = discriminator_loss(real_logits, fake_logits, config.loss)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()

            g_loss = generator_loss(netd(diff_augment(fake, policy, rng)), config.loss)
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()

            bar.update(1)
            last = iteration == config.iterations
            if iteration % LOG_EVERY == 0 or last or iteration % config.checkpoint_every == 0:
                d_value, g_value = float(d_loss.detach()), float(g_loss.detach())
                if not (math.isfinite(d_value) and math.isfinite(g_value)):
                    raise GifdError(
                        f"training diverged at iteration {iteration} (D loss {d_value}, G loss {g_value}): "
                        "lower --lr, or resume from the last checkpoint with another --seed in a new run"
                    )
                bar.set_postfix_str(f"D {d_value:.3f}  G {g_value:.3f}")
            if iteration % config.sample_every == 0 or last:
                _write_samples(netg, fixed_z, out / SAMPLES_DIR / f"iter_{iteration:06d}.png")
            if iteration % config.checkpoint_every == 0 or last:
                save_checkpoint(iteration)
    finally:
        bar.close()

    generator_path = out / GENERATOR_NAME
    _atomic_torch_save(
        {
            "format": GENERATOR_FORMAT,
            "version": FORMAT_VERSION,
            "arch": netg.arch,
            "generator": _cpu_state(netg),
            "iteration": iteration,
            "data": config.data,
        },
        generator_path,
    )
    return TrainResult(generator_path, checkpoint_path, iteration, d_value, g_value)


__all__ = [
    "DCGANDiscriminator",
    "TrainPriorConfig",
    "TrainResult",
    "augment_color",
    "augment_cutout",
    "augment_translation",
    "batch_indices",
    "diff_augment",
    "discriminator_loss",
    "generator_loss",
    "load_checkpoint_config",
    "read_checkpoint",
    "train_prior",
]
