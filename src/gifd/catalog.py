"""The names of the built-in components, for the command line's help texts, without importing
them (importing torch costs seconds; `gifd --help` must not).

Each registry stays the authority: tests/test_catalog.py checks that these names equal the
registered ones, so the two cannot drift apart. Add a component's name here when you register it.
"""

from __future__ import annotations

#: gifd.victims' built-in architectures.
VICTIMS = ("convnet", "lenet", "resnet18")
#: gifd.victims.NORMALIZATIONS.
NORMALIZATIONS = ("imagenet", "cifar10", "cifar100", "none")
#: gifd.data's built-in image sources (builtin:NAME).
IMAGE_SOURCES = ("cifar10", "cifar100", "fashion_mnist", "imagenet", "lfw_faces", "mnist", "photos")
#: gifd.attacks.ATTACKS.
ATTACKS = ("ggl", "gi", "gias", "gifd", "gifd-noball", "ig", "latent")
#: gifd.attacks.labels.LABEL_RULES.
LABEL_RULES = ("unique", "count", "paper")
#: gifd.priors.PRIORS.
PRIORS = ("biggan-deep-128", "biggan-deep-256", "biggan-deep-512", "dcgan", "digiface-dcgan64", "stylegan2")
#: gifd.sweep.EXECUTORS (`gifd sweep --executor`).
EXECUTORS = ("local", "ray")
#: gifd.priors.training.TrainPriorConfig's defaults, for `gifd train-prior --help`.
TRAIN_PRIOR_DEFAULTS = {
    "iterations": 5000,
    "batch_size": 64,
    "resolution": 64,
    "nz": 100,
    "ngf": 64,
    "ndf": 64,
    "lr": 2e-4,
    "beta1": 0.5,
    "beta2": 0.999,
    "loss": "nonsaturating",
    "augment": "color,translation,cutout",
    "seed": 0,
    "checkpoint_every": 500,
    "sample_every": 500,
}
#: gifd.priors.training.LOSSES.
TRAIN_PRIOR_LOSSES = ("nonsaturating", "hinge")
