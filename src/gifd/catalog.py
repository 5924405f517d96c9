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
