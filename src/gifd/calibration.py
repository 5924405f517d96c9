"""Calibrated l1-ball radii for GIFD: pick the schedule that reconstructs public images best.

The attacker may simulate clients on public data. `calibrate` does: it computes the FedSGD update
of each public calibration image (`gifd.client.compute_update`, labels inferred from the update as
in an experiment), runs GIFD with every candidate radius schedule from the same seeded start, and
scores each schedule by its mean PSNR against the known images. Never calibrate on the images you
evaluate: `builtin:photos` (the benchmarks' evaluation set) is refused. For a DCGAN prior the
stage cut (`DCGANSettings.cut`) is a second dimension of the grid (`cuts`).

The candidate schedules (`Schedule`) and the radii file a calibration returns (its format, table,
reading and writing) are in `gifd.radii`. `radii: auto` in a run's attack_settings is resolved by `resolve_auto_radii`, which calibrates for the run's own prior,
victim, resolution, GIFD budget and seed, or reuses the file cached for exactly that key under
`cache_dir()` (GIFD_CACHE_DIR, else $XDG_CACHE_HOME/gifd, else ~/.cache/gifd; subfolder
calibration/).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gifd.attacks.labels import LabelRule
from gifd.config import Count, DeviceName, Index, Seed, VictimName, build_config
from gifd.errors import GifdError
from gifd.radii import (
    RADII_FORMAT,
    RADII_VERSION,
    Schedule,
    _json_radii,
    format_table,
    load_radii,
    read_radii_file,
    write_radii_file,
)

if TYPE_CHECKING:
    import torch

    from gifd.experiment import ExperimentConfig
    from gifd.priors import StagedGenerator
    from gifd.victims import Victim

#: Public calibration images (the default set) and the evaluation set that is refused.
CALIBRATION_IMAGES = ("builtin:imagenet", "builtin:cifar10")
EVALUATION_IMAGES = ("builtin:photos",)
#: The default grid: no ball, three constant fractions (0.1 = the DCGANs' default), five linear
#: schedules (linear:0.5 is the official [500, 1000, 1500, 2000] shape on the face prior).
DEFAULT_SCHEDULES = (
    "none",
    "fraction:0.05",
    "fraction:0.1",
    "fraction:0.3",
    "linear:0.125",
    "linear:0.25",
    "linear:0.5",
    "linear:1",
    "linear:2",
)
#: The GIFD settings a calibration sets itself (the rest are the attack's budget and regularisers).
CALIBRATED_KEYS = ("radii", "ball")


def _is_evaluation_set(spec: str) -> bool:
    return spec.strip().lower() in EVALUATION_IMAGES


class CalibrationSettings(BaseModel):
    """What a calibration measures on: prior, victim, images, candidates, GIFD's budget, seed."""

    model_config = ConfigDict(extra="forbid")

    prior: str = "digiface-dcgan64"
    prior_weights: str | None = None
    victim: VictimName = "convnet"
    victim_weights: str | None = None
    resolution: Annotated[int, Field(ge=8, le=1024)] = 64
    num_classes: Annotated[int, Field(ge=2)] = 10
    normalization: str = "imagenet"
    #: Image sources (builtin:NAME, a folder, files); each gives the images `indices` or its first `count`.
    images: list[str] = Field(default_factory=lambda: list(CALIBRATION_IMAGES))
    indices: list[Index] | None = None
    count: Count = 2
    schedules: list[str] = Field(default_factory=lambda: list(DEFAULT_SCHEDULES))
    #: DCGAN stage cuts to measure (None: only the prior's own setting).
    cuts: list[str] | None = None
    #: GIFD's settings other than the radii (steps, restarts, preset, stage_steps, ...).
    gifd: dict[str, Any] = Field(default_factory=dict)
    label_inference: LabelRule = "unique"
    #: After each image but the last, keep only the better half of the candidates (by mean PSNR).
    prune: bool = False
    seed: Seed = 0
    device: DeviceName = "auto"
    #: torch CPU threads during the calibration (None: leave torch's setting).
    threads: Count | None = None

    @field_validator("images")
    @classmethod
    def _public_images(cls, images: list[str]) -> list[str]:
        if not images:
            raise GifdError(
                "no calibration images: pass --images (default builtin:imagenet and builtin:cifar10)"
            )
        for spec in images:
            if _is_evaluation_set(spec):
                raise GifdError(
                    f"{spec} is the evaluation set: calibrate on public calibration images "
                    f"({' and '.join(CALIBRATION_IMAGES)}, or your own folder), never on the images you evaluate"
                )
        return images

    @model_validator(mode="after")
    def _check(self) -> CalibrationSettings:
        """Schedules, cuts and GIFD settings valid before any compute."""
        from gifd.priors import prior_settings

        if not self.schedules:
            raise GifdError("no radius schedules: pass --schedules (e.g. none,fraction:0.1,linear:0.5)")
        specs = [Schedule.parse(s).spec() for s in self.schedules]
        if len(set(specs)) < len(specs):
            raise GifdError(f"radius schedules {self.schedules} name one schedule twice: name each once")
        object.__setattr__(self, "schedules", specs)
        fixed = [key for key in CALIBRATED_KEYS if key in self.gifd]
        if fixed:
            raise GifdError(
                f"the calibration chooses {', '.join(fixed)} itself: drop them from the GIFD settings"
            )
        self.gifd_budget()
        for cut in self.cuts or []:
            prior_settings(self.prior, {"cut": cut})
        if self.cuts is not None and len(set(self.cuts)) < len(self.cuts):
            raise GifdError(f"cuts {self.cuts} name one cut twice: name each once")
        return self

    def gifd_budget(self) -> dict[str, Any]:
        """GIFD's settings with its defaults filled in, radii and ball aside (what a calibration
        holds fixed across its candidates); a one-line GifdError if they are invalid."""
        from gifd.attacks.gifd import GIFDConfig

        config = build_config(GIFDConfig, self.gifd, "GIFD settings")
        return config.model_dump(mode="json", exclude=set(CALIBRATED_KEYS))


def calibration_settings(values: dict[str, Any], source: str = "calibration") -> CalibrationSettings:
    """Validate a dict of settings into CalibrationSettings (one-line errors)."""
    return build_config(CalibrationSettings, values, source)


@dataclass
class _Case:
    """One simulated client: its public image, the attacker's target and the image's name."""

    name: str
    image: torch.Tensor
    target: Any


def _cases(settings: CalibrationSettings, victim: Victim) -> list[_Case]:
    """The calibration images and each one's FedSGD update, as the attacker sees it."""
    import torch

    from gifd.attacks import Target, infer_labels
    from gifd.client import compute_update
    from gifd.data import load_images

    cases = []
    for spec in settings.images:
        indices = settings.indices if settings.indices is not None else list(range(settings.count))
        images = load_images(spec, settings.resolution, indices)
        for k in range(len(images)):
            # Any label fits a public image: the source's own, folded into the victim's classes.
            label = (
                int(images.labels[k]) % victim.num_classes
                if images.labels is not None
                else k % victim.num_classes
            )
            image = images.images[k : k + 1].to(victim.device)
            labels = torch.tensor([label], device=victim.device)
            update = compute_update(victim, image, labels)
            inferred = infer_labels(
                update,
                victim,
                settings.label_inference,
                generator=torch.Generator().manual_seed(settings.seed),
            )
            cases.append(
                _Case(f"{images.source}/{images.names[k]}", image.cpu(), Target(victim, update, inferred))
            )
    return cases


def _fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 of a prior's state (names, shapes, float32 values; buffers included)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def calibrate(
    settings: CalibrationSettings,
    *,
    victim: Victim | None = None,
    prior: StagedGenerator | None = None,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every (cut, schedule) candidate on every calibration image; return the radii file's
    content (see the module doc). `victim` / `prior` reuse built ones (then `settings` only
    describes them; a given prior is measured with its own cut only). `echo` gets one line per
    finished GIFD run (default: stderr when `progress`). Runs with `settings.threads` torch threads.

    Every draw comes from a generator seeded from `settings.seed`; the global seeds are left
    alone (a `radii: auto` inside a server's audit keeps the server's own random state)."""
    from gifd.device import torch_threads

    with torch_threads(settings.threads):
        return _calibrate(settings, victim, prior, progress, echo)


def _calibrate(
    settings: CalibrationSettings,
    victim: Victim | None,
    prior: StagedGenerator | None,
    progress: bool,
    echo: Callable[[str], None] | None,
) -> dict[str, Any]:
    import torch

    from gifd.attacks.gifd import GIFD
    from gifd.client import weights_fingerprint
    from gifd.device import resolve_device
    from gifd.metrics.image import psnr
    from gifd.priors import create_prior
    from gifd.priors.base import radii_from_feature_norms
    from gifd.results import versions
    from gifd.victims import create_victim

    if echo is None:
        echo = (lambda line: print(line, file=sys.stderr, flush=True)) if progress else (lambda line: None)
    device = resolve_device(settings.device) if victim is None else victim.device
    if victim is None:
        victim = create_victim(
            settings.victim,
            resolution=settings.resolution,
            num_classes=settings.num_classes,
            seed=settings.seed,
            normalization=settings.normalization,
            weights=settings.victim_weights,
            device=device,
        )
    if victim.resolution != settings.resolution:
        raise GifdError(
            f"the victim takes {victim.resolution} px but the calibration is for {settings.resolution} px"
        )
    if prior is not None:
        priors = {getattr(prior, "cut", None): prior}
    else:
        cuts: list[str | None] = list(settings.cuts) if settings.cuts else [None]
        priors = {
            cut: create_prior(
                settings.prior, settings.prior_weights, device, None if cut is None else {"cut": cut}
            )
            for cut in cuts
        }
    cases = _cases(settings, victim)
    candidates = []
    for cut, staged in priors.items():
        norms = radii_from_feature_norms(staged, fraction=1.0)
        stage0 = staged.default_radii()[0]
        for spec in settings.schedules:
            radii = Schedule.parse(spec).radii(norms, stage0)
            candidates.append(
                {
                    "cut": getattr(staged, "cut", cut),
                    "schedule": spec,
                    "radii": radii,
                    "psnr": {},
                    "prior": staged,
                }
            )
    alive = list(range(len(candidates)))
    runs, done, start = len(candidates) * len(cases), 0, time.perf_counter()
    for k, case in enumerate(cases):
        for index in alive:
            candidate = candidates[index]
            attack = GIFD(
                {**settings.gifd, "radii": candidate["radii"]}, prior=candidate["prior"], progress=False
            )
            # The same seeded start for every candidate: the schedules are compared on equal terms.
            result = attack.run(case.target, torch.Generator().manual_seed(settings.seed + k))
            value = float(
                psnr(result.images.clamp(0, 1).to(torch.float64), case.image.to(torch.float64)).mean()
            )
            candidate["psnr"][case.name] = value
            done += 1
            elapsed = time.perf_counter() - start
            echo(
                f"[{done}/{runs}] {case.name} cut={candidate['cut']} {candidate['schedule']}: {value:.2f} dB "
                f"({elapsed:.0f} s, about {elapsed / done * (runs - done):.0f} s left)"
            )
        if settings.prune and k + 1 < len(cases) and len(alive) > 2:
            order = sorted(alive, key=lambda i: -_mean(list(candidates[i]["psnr"].values())))
            alive = sorted(order[: max(2, len(alive) // 2)])
            runs = done + len(alive) * (len(cases) - k - 1)
    table = [
        {
            "cut": c["cut"],
            "schedule": c["schedule"],
            "radii": _json_radii(c["radii"]),
            "psnr": c["psnr"],
            "mean_psnr": _mean(list(c["psnr"].values())),
            "complete": len(c["psnr"]) == len(cases),
        }
        for c in candidates
    ]
    complete = [row for row in table if row["complete"]]
    best = max(complete, key=lambda row: row["mean_psnr"])  # ties: the first in grid order
    return {
        "format": RADII_FORMAT,
        "version": RADII_VERSION,
        "prior": settings.prior,
        "prior_label": getattr(next(iter(priors.values())), "label", settings.prior),
        "num_stages": len(best["radii"]),
        "victim": settings.victim,
        "victim_fingerprint": weights_fingerprint(victim),
        "resolution": settings.resolution,
        "cut": best["cut"],
        "schedule": best["schedule"],
        "radii": best["radii"],
        "mean_psnr": best["mean_psnr"],
        "table": table,
        "images": [case.name for case in cases],
        "budget": settings.gifd_budget(),
        "settings": settings.model_dump(mode="json"),
        "seed": settings.seed,
        "seconds": round(time.perf_counter() - start, 1),
        "versions": versions(),
    }


def cache_dir() -> Path:
    """Where `radii: auto` keeps its calibrations: GIFD_CACHE_DIR, else $XDG_CACHE_HOME/gifd, else
    ~/.cache/gifd (subfolder calibration/)."""
    root = os.environ.get("GIFD_CACHE_DIR") or (
        Path(os.environ["XDG_CACHE_HOME"]) / "gifd"
        if os.environ.get("XDG_CACHE_HOME")
        else Path.home() / ".cache" / "gifd"
    )
    return Path(root) / "calibration"


def cache_path(settings: CalibrationSettings, victim: Victim, prior: StagedGenerator) -> Path:
    """The cache file of a calibration: named by a hash of the settings (device aside), the
    victim's and the prior's weights and the prior's cut."""
    from gifd.client import weights_fingerprint

    key = {
        "settings": settings.model_dump(mode="json", exclude={"device", "threads"}),
        # GIFD's settings with its defaults filled in: a changed default is another calibration
        "gifd": settings.gifd_budget(),
        "victim": weights_fingerprint(victim),
        "prior": _fingerprint(prior),
        "cut": getattr(prior, "cut", None),
        "format": RADII_VERSION,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir() / f"radii-{digest}.json"


def calibrate_cached(
    settings: CalibrationSettings, victim: Victim, prior: StagedGenerator, *, progress: bool = True
) -> tuple[dict[str, Any], Path]:
    """The calibration for `settings` from the cache if there, else computed and cached."""
    path = cache_path(settings, victim, prior)
    if path.is_file():
        try:
            return read_radii_file(path), path
        except GifdError:
            pass  # a damaged cache entry is computed again
    calibration = calibrate(settings, victim=victim, prior=prior, progress=progress)
    write_radii_file(calibration, path)
    return calibration, path


def resolve_auto_radii(
    config: ExperimentConfig, victim: Victim, prior: StagedGenerator | None, *, progress: bool = True
) -> ExperimentConfig:
    """`config` with every `radii: auto` of a GIFD-family attack replaced by its calibrated radii.

    The calibration runs for the run's prior, victim (its weights), resolution, label rule, seed
    and that attack's GIFD settings (its budget), on the default calibration images; a cached one
    for the same key is reused (`calibrate_cached`).
    """
    from gifd.attacks import ATTACKS
    from gifd.attacks.gifd import GIFD, LatentSearch

    settings = {name: dict(s) for name, s in config.attack_settings.items()}
    changed = False
    for name in config.attacks:
        own, cls = config.settings_for(name), ATTACKS.get(name)
        if own.get("radii") != "auto" or not issubclass(cls, GIFD):
            continue
        fixed = build_config(cls.Config, {k: v for k, v in own.items() if k != "radii"}, f"{name} settings")
        if issubclass(cls, LatentSearch) or not fixed.ball:
            # No feature stage is projected: the radii do not matter, the prior's defaults stand.
            settings.setdefault(name, {})["radii"] = None
            changed = True
            continue
        if prior is None:
            raise GifdError(f"{name}: radii: auto needs the run's prior")
        values = {
            "prior": config.prior,
            "prior_weights": config.prior_weights,
            "victim": config.victim,
            "victim_weights": config.victim_weights,
            "resolution": victim.resolution,
            "num_classes": victim.num_classes,
            "gifd": {k: v for k, v in own.items() if k not in CALIBRATED_KEYS},
            "label_inference": config.label_inference,
            "seed": config.seed,
            "threads": config.threads,
        }
        calibration, _ = calibrate_cached(
            calibration_settings(values, f"{name} radii: auto"), victim, prior, progress=progress
        )
        settings.setdefault(name, {})["radii"] = [math.inf if r is None else r for r in calibration["radii"]]
        changed = True
    return config.model_copy(update={"attack_settings": settings}) if changed else config


__all__ = [
    "CALIBRATION_IMAGES",
    "DEFAULT_SCHEDULES",
    "CalibrationSettings",
    "Schedule",
    "cache_dir",
    "calibrate",
    "calibrate_cached",
    "calibration_settings",
    "format_table",
    "load_radii",
    "read_radii_file",
    "resolve_auto_radii",
    "write_radii_file",
]
