"""Adding an attack, a prior or a report section is one new definition plus one registration:
each is added here, in a test module, and runs through the public API with no other change.
(Defenses and sweep executors: tests/test_defense_plugin.py, tests/test_sweep_executor_plugin.py.)"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor

import gifd.report
from gifd.attacks import ATTACKS, Attack, AttackResult, GradientMatcher, Target
from gifd.attacks.base import register_attack
from gifd.experiment import ExperimentConfig, run_experiment
from gifd.priors import PRIORS, Context, PriorEntry, StagedGenerator, Variables, register_prior
from gifd.report import RunView, write_report
from gifd.results import RESULTS_NAME, read_results


class GrayGuess(Attack):
    """The prior-free floor: every image mid-gray (what an attacker gets without the update)."""

    name = "gray-guess"

    def run(self, target: Target, generator: torch.Generator) -> AttackResult:
        side, n = target.victim.resolution, target.batch_size
        images = torch.full((n, 3, side, side), 0.5, device=target.device)
        loss = float(GradientMatcher(target)(target.victim.normalize(images)).detach())
        return AttackResult(
            attack=self.name,
            images=images,
            labels=target.labels,
            restart_losses=[loss],
            best_restart=0,
            loss_history=[[loss]],
            log_steps=[0],
            steps=0,
            seconds=0.0,
        )


class LinearPrior(StagedGenerator):
    """A one-stage 'generator': a fixed random linear map of a 4-d latent to an 8 px image."""

    resolution, latent_dim, num_classes = 8, 4, None

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3 * 8 * 8)
        torch.nn.init.normal_(self.linear.weight, generator=torch.Generator().manual_seed(0))
        self.requires_grad_(False)

    @property
    def num_stages(self) -> int:
        return 1

    def init_latent(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None) -> Variables:
        return {"z": torch.randn(n, 4, generator=generator)}

    def forward(self, stage: int, variables: Variables, context: Context) -> Tensor:  # type: ignore[override]
        return torch.tanh(self.linear(variables["z"]).view(-1, 3, 8, 8))

    def advance(self, stage: int, variables: Variables, context: Context) -> Variables:
        raise NotImplementedError("one stage only")

    def default_radii(self) -> list[float]:
        return [1.0]


@pytest.fixture
def plugins() -> Iterator[None]:
    """Register the attack and the prior for one test (the registries are process-wide)."""
    register_attack(GrayGuess)
    register_prior(PriorEntry("linear-test", "a linear test prior", "built in the test", lambda _: LinearPrior()))
    yield
    ATTACKS.unregister(GrayGuess.name)  # the registries are process-wide: undo for other tests
    PRIORS.pop("linear-test")


def test_a_new_attack_and_prior_run_through_the_experiment(plugins: None, tmp_path: Path) -> None:
    config = ExperimentConfig(
        victim="lenet",
        resolution=16,
        images="builtin:cifar10",
        attacks=["gray-guess", "latent"],
        prior="linear-test",
        steps=3,
        restarts=1,
        seed=0,
    )
    run_experiment(config, tmp_path / "run", progress=False)
    results = read_results(tmp_path / "run" / RESULTS_NAME, tmp_path / "run")
    assert results.config["prior"] == "linear-test" and results.attacks["latent"].steps == 3
    # The gray guess's PSNR against the original, computed independently: 10 log10(1 / MSE).
    from gifd.data import load_images

    original = load_images("builtin:cifar10", 16, [0]).images
    mse = float(((original - 0.5) ** 2).mean())
    assert results.attacks["gray-guess"].psnr == pytest.approx(10 * math.log10(1 / mse), rel=1e-4)


def test_a_new_report_section_is_one_function_in_sections(
    plugins: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def attack_count(run: RunView) -> str:
        return f'<section id="count"><p>{len(run.attacks)} attacks ran</p></section>'

    monkeypatch.setattr(gifd.report, "SECTIONS", [*gifd.report.SECTIONS, attack_count])
    config = ExperimentConfig(victim="lenet", resolution=16, attacks=["gray-guess"], steps=1, restarts=1)
    run_experiment(config, tmp_path / "run", progress=False)
    page = write_report(tmp_path / "run").read_text()
    assert '<section id="count"><p>1 attacks ran</p></section>' in page
