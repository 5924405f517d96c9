"""GIFD on the real face prior: stage bookkeeping, best-restart choice, constraints, schedule."""

import itertools
import math

import pytest
import torch

from gifd.attacks import ATTACKS, GradientMatcher
from gifd.attacks.generative import lr_factor
from gifd.attacks.gifd import GIFD
from gifd.errors import GifdError


def run(prior, target, attack="gifd", **settings):
    config = {"steps": 12, "restarts": 3, "log_every": 2, **settings}
    return ATTACKS.get(attack)(config, prior=prior, progress=False).run(
        target, torch.Generator().manual_seed(0)
    )


def test_each_stage_returns_its_best_restarts_image_and_the_answer_is_the_best_stage(prior, target) -> None:
    result = run(prior, target, stage_end=2)
    assert [s.stage for s in result.stages] == [0, 1, 2]
    matcher = GradientMatcher(target)
    for stage in result.stages:
        # The official code returned the last restart's image with the best restart's score:
        # here the stage's image must have exactly the stage's best loss.
        recomputed = float(matcher(target.victim.normalize(stage.images)).detach())
        assert recomputed == pytest.approx(stage.loss, rel=1e-4, abs=1e-6)
        assert stage.loss == min(stage.restart_losses)
    assert result.loss == min(s.loss for s in result.stages)
    best_stage = min(result.stages, key=lambda s: s.loss)
    assert torch.equal(result.images, best_stage.images)
    assert result.steps == 12 and result.log_steps[-1] == 12


def test_radius_zero_keeps_features_at_their_start(prior, target) -> None:
    result = run(prior, target, stage_end=2, radii=[0.0] * prior.num_stages, steps=9)
    first = result.stages[0]
    for stage in result.stages[1:]:
        assert torch.allclose(stage.images, first.images, atol=1e-5)


def test_feature_lr_steps_the_feature_stages_and_lr_the_latent_stage(prior, target) -> None:
    # A vanishing feature_lr leaves every feature stage's image at stage 0's (which moved at lr);
    # with the feature stages at lr the images move (so the setting is not ignored).
    still = run(prior, target, stage_end=2, ball=False, steps=9, restarts=1, feature_lr=1e-12)
    moving = run(prior, target, stage_end=2, ball=False, steps=9, restarts=1)
    assert torch.equal(still.stages[0].images, moving.stages[0].images)
    for stage in still.stages[1:]:
        assert torch.allclose(stage.images, still.stages[0].images, atol=1e-5)
    assert not torch.allclose(moving.stages[2].images, moving.stages[0].images, atol=1e-3)
    attack = GIFD({"lr": 0.2, "feature_lr": 0.01}, prior=prior, progress=False)
    assert [attack.stage_lr(s) for s in (0, 1, 4)] == [0.2, 0.01, 0.01]
    with pytest.raises(GifdError, match="feature_lr"):
        GIFD({"feature_lr": 0}, prior=prior, progress=False)


def test_no_ball_moves_features_further_than_the_ball(prior, target) -> None:
    tiny = [1.0] * prior.num_stages
    with_ball = run(prior, target, stage_start=3, stage_end=3, radii=tiny, restarts=1, steps=8)
    without = run(
        prior, target, stage_start=3, stage_end=3, radii=tiny, restarts=1, steps=8, attack="gifd-noball"
    )
    assert without.loss < with_ball.loss


def test_sphere_constraint_is_per_sample(prior) -> None:
    attack = GIFD({"restarts": 1}, prior=prior, progress=False)
    z = torch.randn(4, 100)
    origin = {"z": z.clone()}
    norms = {"z": z.norm(dim=1)}
    variables = {"z": z * torch.tensor([[0.5], [2.0], [1.0], [3.0]])}
    attack._constrain(variables, origin, ["z"], True, norms, 0.0)
    assert torch.allclose(variables["z"].norm(dim=1), norms["z"])


def test_budget_is_split_over_stages_and_checked(prior) -> None:
    attack = GIFD({"steps": 10, "stage_end": 2, "latent_fraction": None}, prior=prior, progress=False)
    assert attack.stage_budget(attack.stages()) == [4, 3, 3]
    with pytest.raises(GifdError, match="not within the prior's stages 0..4"):
        GIFD({"stage_end": 9}, prior=prior).stages()
    with pytest.raises(GifdError, match="needs a generative prior"):
        GIFD({})


@pytest.mark.parametrize("attack", ["gifd", "gifd-noball", "latent"])
def test_stage_steps_gives_every_stage_that_many_steps(prior, target, attack: str) -> None:
    settings = {"stage_steps": 3, "stage_end": 2, "restarts": 1, "log_every": 1}
    if attack == "latent":
        del settings["stage_end"]  # its one stage
    attacker = ATTACKS.get(attack)(settings, prior=prior, progress=False)
    result = attacker.run(target, torch.Generator().manual_seed(0))
    stages = 1 if attack == "latent" else 3
    assert [(s.budget, s.steps) for s in result.stages] == [(3, 3)] * stages
    assert [s.end_step for s in result.stages] == [3 * (k + 1) for k in range(stages)]
    assert result.steps == 3 * stages and result.log_steps == list(range(1, 3 * stages + 1))
    recorded = result.summary()["stages"]
    assert [(s["budget"], s["steps"]) for s in recorded] == [(3, 3)] * stages


def test_stage_steps_a_count_or_one_per_stage_and_never_with_steps(prior) -> None:
    assert GIFD({"stage_steps": 7}, prior=prior).stage_budget([0, 1, 2, 3, 4]) == [7] * 5
    assert GIFD({"stage_steps": [1, 2], "stage_end": 1}, prior=prior).stage_budget([0, 1]) == [1, 2]
    both = "^gifd settings: steps and stage_steps both set the budget: give steps"
    with pytest.raises(GifdError, match=both):
        GIFD({"steps": 10, "stage_steps": 2}, prior=prior)
    invalid = r"^latent settings: stage_steps .* is invalid: give a step count >= 1"
    for bad in (0, -1, [2, 0], 2.5, True):
        with pytest.raises(GifdError, match=invalid):
            ATTACKS.get("latent")({"stage_steps": bad}, prior=prior)


def test_latent_fraction_gives_stage_zero_its_share_and_splits_the_rest(prior, target) -> None:
    def budget(**settings):
        attack = GIFD(settings, prior=prior)
        return attack.stage_budget(attack.stages())

    # 300 / 9 = 33.3 -> 33 to the latent stage, 267 = 67 + 67 + 67 + 66 over the four feature stages.
    assert budget(steps=300, latent_fraction=1 / 9) == [33, 67, 67, 67, 66]
    assert budget(steps=300, latent_fraction=0.5) == [150, 38, 38, 37, 37]
    assert budget(steps=300, latent_fraction=None) == [60] * 5
    assert budget(steps=300) == [33, 67, 67, 67, 66]  # the default: 1/9
    # Without the latent stage the default share has nowhere to go: an even split.
    assert budget(steps=30, stage_start=2) == [10, 10, 10]
    # Every feature stage keeps a step, the latent stage at least one; one stage takes them all.
    assert budget(steps=6, latent_fraction=0.99, stage_end=4) == [2, 1, 1, 1, 1]
    assert budget(steps=6, latent_fraction=0.01) == [1, 2, 1, 1, 1]
    assert ATTACKS.get("latent")({"steps": 50, "latent_fraction": 0.2}, prior=prior).stage_budget([0]) == [50]
    with pytest.raises(GifdError, match="^gifd settings: latent_fraction splits steps, but stage_steps"):
        GIFD({"stage_steps": 3, "latent_fraction": 0.2}, prior=prior)
    with pytest.raises(GifdError, match="starts at stage 2: set stage_start 0 or drop latent_fraction"):
        budget(steps=30, latent_fraction=0.2, stage_start=2)
    # One lone stage (the ablation's "layer k alone") takes every step, whatever the share.
    assert budget(steps=30, latent_fraction=0.2, stage_start=2, stage_end=2) == [30]
    # No more steps than stages (smoke tests): one step each to the first stages, as without the share.
    assert budget(steps=3) == [1, 1, 1, 0, 0]
    for bad in (0, 1, -0.1):
        with pytest.raises(GifdError, match="latent_fraction"):
            GIFD({"latent_fraction": bad}, prior=prior)
    # The run follows the split, stage by stage.
    result = run(prior, target, steps=10, latent_fraction=0.6, stage_end=2, restarts=1)
    assert [(s.budget, s.steps) for s in result.stages] == [(6, 6), (2, 2), (2, 2)] and result.steps == 10
    assert [s.end_step for s in result.stages] == [6, 8, 10]


def test_latent_ablation_runs_stage_zero_only(prior, target) -> None:
    result = run(prior, target, attack="latent", restarts=2)
    assert [s.stage for s in result.stages] == [0]


def test_schedule_warms_up_stays_flat_then_decays_to_zero() -> None:
    total = 100
    factors = [lr_factor(s, total, 0.05, 0.25) for s in range(total)]
    assert factors[0] == pytest.approx(0.2) and factors[4] == pytest.approx(1.0)
    assert all(f == 1.0 for f in factors[5:25])
    assert factors[62] == pytest.approx(0.5 * (1 + math.cos(math.pi * 37 / 75)))
    assert factors[-1] < 0.001 and all(a >= b for a, b in itertools.pairwise(factors[25:]))


@pytest.mark.parametrize("total", [1, 2, 10, 19, 33, 300])
def test_schedule_never_exceeds_the_flat_lr(total: int) -> None:
    # 0.05 x 10 = 0.5 warm-up steps (step 0 was 2.0); 0.05 x 33 = 1.65 (step 1 was 1.21).
    factors = [lr_factor(s, total, 0.05, 0.25) for s in range(total)]
    assert max(factors) == 1.0
    assert all(a <= b for a, b in itertools.pairwise(factors[: max(1, math.ceil(0.25 * total))]))
