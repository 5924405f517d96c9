"""GIAS on the real face prior: the prior stays untouched, both phases, one generator copy per image."""

import copy

import pytest
import torch
from torch import nn

from gifd.attacks import ATTACKS, GradientMatcher, Target
from gifd.attacks.base import to_victim_images
from gifd.attacks.gias import GIAS, GIASConfig
from gifd.client import compute_update
from gifd.errors import GifdError
from gifd.priors import create_prior
from gifd.priors.base import StagedGenerator
from gifd.priors.dcgan import DCGANGenerator, DCGANPrior, init_dcgan_weights
from gifd.victims import create_victim
from tolerances import kernel_atol


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prior():
    return create_prior("digiface-dcgan64")


@pytest.fixture(scope="module")
def victim():
    return create_victim("lenet", resolution=32, num_classes=10, seed=0)


@pytest.fixture(scope="module")
def target(victim, cifar32) -> Target:
    """One real CIFAR image (a cat, far from the face prior: fine-tuning the generator must help)."""
    labels = torch.tensor([3])
    return Target(victim, compute_update(victim, cifar32[:1], labels), labels)


def run(prior, target, seed=0, **settings):
    config = {"steps": 20, "restarts": 2, "latent_fraction": 0.5, "log_every": 5, **settings}
    return GIAS(config, prior=prior, progress=False).run(target, torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def snapshot_and_result(prior, target):
    before = {k: v.clone() for k, v in prior.state_dict().items()}
    flags = [p.requires_grad for p in prior.parameters()]
    modes = [m.training for m in prior.modules()]
    result = run(prior, target)
    return before, flags, modes, result


def test_the_shared_prior_is_bit_identical_after_a_run(prior, snapshot_and_result) -> None:
    before, flags, modes, _ = snapshot_and_result
    after = prior.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert [p.requires_grad for p in prior.parameters()] == flags
    assert [m.training for m in prior.modules()] == modes


def test_both_phases_are_reported_and_the_answer_is_the_better_one(target, snapshot_and_result) -> None:
    result = snapshot_and_result[3]
    latent, tuned = result.stages
    assert [s.stage for s in result.stages] == [0, 1]
    assert [s.end_step for s in result.stages] == [10, 20]
    assert "latent" in latent.name and "fine-tune" in tuned.name
    matcher = GradientMatcher(target)
    for stage in result.stages:  # each phase's image has exactly the phase's best loss
        recomputed = float(matcher(target.victim.normalize(stage.images)).detach())
        assert recomputed == pytest.approx(stage.loss, rel=1e-4, abs=1e-6)
        assert stage.loss == min(stage.restart_losses)
    # A face prior cannot draw a cat from its latent alone; its fine-tuned copies can get closer
    # (measured: 0.136 -> 0.074).
    assert tuned.loss < 0.8 * latent.loss
    assert result.loss == min(latent.loss, tuned.loss)
    assert torch.equal(result.images, tuned.images)
    assert result.images.shape == (1, 3, 32, 32)
    assert float(result.images.min()) >= 0 and float(result.images.max()) <= 1
    assert result.steps == 20 and result.log_steps == [5, 10, 15, 20]
    assert len(result.loss_history) == 2 and all(len(h) == 4 for h in result.loss_history)
    assert result.restart_losses == tuned.restart_losses
    assert result.best_restart == tuned.restart_losses.index(min(tuned.restart_losses))


def test_same_seed_same_result(prior, target) -> None:
    first = run(prior, target, steps=6, seed=3)
    second = run(prior, target, steps=6, seed=3)
    other = run(prior, target, steps=6, seed=4)
    assert torch.equal(first.images, second.images)
    assert first.restart_losses == second.restart_losses
    assert first.loss_history == second.loss_history
    assert not torch.equal(first.images, other.images)


def test_each_image_is_fine_tuned_by_its_own_generator_copy(prior, victim, cifar32) -> None:
    """Against an independent reference: two deep copies of the generator, one Adam over both."""
    labels = torch.tensor([3, 8])
    target = Target(victim, compute_update(victim, cifar32[:2], labels), labels)
    lr, finetune_steps = 1e-3, 3
    settings = {"steps": 2 + finetune_steps, "restarts": 1, "latent_fraction": 0.4, "finetune_lr": lr}
    settings |= {"tv": 0.0, "norm": 0.0, "warmup": 0.0, "flat": 1.0}  # constant lr, loss = matching only
    attack = GIAS(settings, prior=prior, progress=False, keep_finetuned=True)
    assert attack.config.phase_steps() == (2, finetune_steps)
    attack.run(target, torch.Generator().manual_seed(0))
    tuned = attack.finetuned
    assert tuned is not None and tuned.batch_size == 2 and tuned.restarts == 1
    names = [k for k, _ in prior.named_parameters()]
    assert list(tuned.parameters) == names  # the DCGAN image depends on every parameter
    assert all(v.shape == (2, *prior.get_parameter(k).shape) for k, v in tuned.parameters.items())

    def fine_tune(generators):
        """`finetune_steps` Adam steps of the generators (one per image, or one for both) on the
        matching loss, from the attack's latents."""
        params = [p for g in generators for p in g.parameters()]
        optimizer = torch.optim.Adam(params, lr=lr)
        matcher = GradientMatcher(target)
        for _ in range(finetune_steps):
            if len(generators) == 2:
                images = torch.cat(
                    [g(0, {"z": tuned.latents["z"][i : i + 1]}, {}) for i, g in enumerate(generators)]
                )
            else:
                images = generators[0](0, {"z": tuned.latents["z"]}, {})
            loss = matcher(victim.normalize(to_victim_images(images, victim.resolution)))
            for p, grad in zip(params, torch.autograd.grad(loss, params), strict=True):
                p.grad = grad
            optimizer.step()

    copies = [copy.deepcopy(prior).requires_grad_(True) for _ in range(2)]
    shared = copy.deepcopy(prior).requires_grad_(True)
    fine_tune(copies)
    fine_tune([shared])
    for k in names:
        start = prior.get_parameter(k).detach()
        reference = torch.stack([g.get_parameter(k).detach() for g in copies]) - start
        moved = tuned.parameters[k] - start
        one_set = shared.get_parameter(k).detach().expand_as(reference) - start
        # Adam's normalised steps amplify float noise where a gradient entry is ~0, so the
        # displacements are compared as a whole (measured: relative error <= 1.4e-4 against the
        # reference; 0.64..1.02 for one shared parameter set).
        assert float((moved - reference).norm() / reference.norm()) < 1e-2, k
        assert float((one_set - reference).norm() / reference.norm()) > 0.3, k
        # The two copies went different ways: no single parameter set made both images.
        assert (tuned.parameters[k][0] - tuned.parameters[k][1]).abs().max() > 0.5 * lr
    # Rendering: each image from its own parameter copy. The reference loads copy i's parameters
    # into a plain generator (the independently fine-tuned copies above differ from them by the
    # float noise Adam amplified, which depends on the CPU's kernels).
    loaded = [copy.deepcopy(prior) for _ in range(2)]
    for i, g in enumerate(loaded):
        g.load_state_dict({**prior.state_dict(), **{k: v[i] for k, v in tuned.parameters.items()}})
    with torch.no_grad():
        rendered = attack.render(tuned.parameters, tuned.latents, tuned.context)
        expected = torch.cat([g(0, {"z": tuned.latents["z"][i : i + 1]}, {}) for i, g in enumerate(loaded)])
        one_by_one = attack.render(tuned.parameters, tuned.latents, tuned.context, batched=False)
    # Images in [-1, 1]; the largest reduction is the first transposed convolution's (512 input
    # channels x 4 x 4 taps), and the later ones are smaller: one layer of that size bounds it.
    atol = kernel_atol(torch.float32, terms=512 * 4 * 4)
    assert torch.allclose(rendered, expected, rtol=0, atol=atol)
    assert torch.allclose(one_by_one, rendered, rtol=0, atol=atol)


def test_settings_and_errors(prior) -> None:
    assert ATTACKS.get("gias") is GIAS and GIAS.needs_prior
    assert GIASConfig().phase_steps() == (1000, 8000)
    assert GIASConfig(steps=2, latent_fraction=0.01).phase_steps() == (1, 1)
    assert GIASConfig(steps=10, latent_fraction=0.99).phase_steps() == (9, 1)
    latent = GIAS({"steps": 90, "distance": "l2", "tv": 0.5, "latent_lr": 0.07}, prior=prior).latent_search()
    assert (latent.config.steps, latent.config.lr, latent.config.distance, latent.config.tv) == (
        10,
        0.07,
        "l2",
        0.5,
    )
    assert latent.stages() == [0] and not latent.config.ball
    # The fine-tune scores with GIAS's own settings (GenerativeAttack.restart_losses and
    # regularisers), the latent phase with its GIFD's: they must agree for both phases to score alike.
    scoring = {"tv": 0.3, "norm": 0.0, "batched": False}
    search = GIAS({"steps": 90, **scoring}, prior=prior).latent_search()
    assert {k: getattr(search.config, k) for k in scoring} == scoring
    with pytest.raises(GifdError, match="needs a generative prior"):
        GIAS({})
    with pytest.raises(GifdError, match="set latent_lr and finetune_lr"):
        GIAS({"lr": 0.1}, prior=prior)
    with pytest.raises(GifdError, match="steps"):
        GIAS({"steps": 1}, prior=prior)
    with pytest.raises(GifdError, match="latent_fraction"):
        GIAS({"latent_fraction": 1.0}, prior=prior)
    with pytest.raises(GifdError, match="finetune_lr"):
        GIAS({"finetune_lr": 0.0}, prior=prior)


class BranchingPrior(StagedGenerator):
    """A one-stage 8 px prior whose forward branches on a tensor's value, which vmap cannot batch."""

    resolution, latent_dim = 8, 4

    def __init__(self, with_parameters: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3 * 8 * 8) if with_parameters else None

    @property
    def num_stages(self) -> int:
        return 1

    def init_latent(self, n, labels=None, generator=None):
        return {"z": torch.randn(n, 4, generator=generator)}

    def forward(self, stage, variables, context):
        z = variables["z"]
        if float(z.detach().abs().max()) > 1e6:  # data-dependent control flow
            z = z / z.abs().max()
        out = self.linear(z) if self.linear is not None else z.repeat(1, 48)
        return torch.tanh(out).view(-1, 3, 8, 8)

    def advance(self, stage, variables, context):
        raise GifdError("one stage only")

    def default_radii(self):
        return [1.0]


def test_falls_back_to_one_copy_at_a_time_when_vmap_fails(target) -> None:
    prior = BranchingPrior().eval().requires_grad_(False)
    settings = {"steps": 4, "restarts": 2, "latent_fraction": 0.5, "finetune_lr": 1e-2}
    attack = GIAS(settings, prior=prior, progress=False)
    with pytest.warns(RuntimeWarning, match="cannot vmap the generator copies of BranchingPrior"):
        result = attack.run(target, torch.Generator().manual_seed(0))
    assert result.stages[1].loss < result.stages[0].loss
    with pytest.raises(GifdError, match="depends on none of its parameters"):
        GIAS({"steps": 4, "restarts": 1}, prior=BranchingPrior(False), progress=False).run(
            target, torch.Generator().manual_seed(0)
        )


def random_dcgan(scale: float = 1.0) -> DCGANPrior:
    """A small DCGAN with the DCGAN initialisation (kernels N(0, 0.02)), kernels times `scale`."""
    net = DCGANGenerator(nz=8, ngf=8, resolution=32)
    init_dcgan_weights(net, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim >= 2:
                p.mul_(scale)
    return DCGANPrior(net).requires_grad_(False)


def test_dcgan_fine_tune_lr_follows_the_weight_scale_rule() -> None:
    for scale in (1.0, 10.0):
        prior = random_dcgan(scale)
        kernels = torch.cat([p.flatten() for p in prior.parameters() if p.ndim >= 2]).double()
        expected = float(f"{2.5e-3 * float(kernels.pow(2).mean().sqrt()):.1g}")
        assert prior.gias_finetune_lr() == expected
    assert random_dcgan(1.0).gias_finetune_lr() == 5e-5  # rms 0.02 x 2.5e-3
    assert random_dcgan(10.0).gias_finetune_lr() == 5e-4


def test_fine_tune_uses_the_prior_default_unless_set_and_records_it(target) -> None:
    prior = random_dcgan()  # default 5e-5, not the single value 1e-4 every prior had before
    settings = {"steps": 6, "restarts": 1, "latent_fraction": 0.5, "log_every": 1}
    default = GIAS(settings, prior=prior, progress=False).run(target, torch.Generator().manual_seed(0))
    explicit = GIAS({**settings, "finetune_lr": 5e-5}, prior=prior, progress=False).run(
        target, torch.Generator().manual_seed(0)
    )
    other = GIAS({**settings, "finetune_lr": 1e-4}, prior=prior, progress=False).run(
        target, torch.Generator().manual_seed(0)
    )
    assert default.loss_history == explicit.loss_history
    assert default.loss_history != other.loss_history
    assert default.summary()["settings"] == {"finetune_lr": 5e-5}
    assert other.summary()["settings"] == {"finetune_lr": 1e-4}
