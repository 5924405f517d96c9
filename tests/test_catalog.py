"""The help texts' component names (gifd.catalog) are the registered ones, and the command line
starts without importing torch."""

import dataclasses
import subprocess
import sys

from gifd import catalog
from gifd.attacks import ATTACKS, LABEL_RULES
from gifd.data import builtin_sources
from gifd.priors import PRIORS
from gifd.priors.training import LOSSES, TrainPriorConfig
from gifd.victims import NORMALIZATIONS, victim_names


def test_catalog_names_equal_the_registries() -> None:
    assert sorted(catalog.VICTIMS) == sorted(victim_names())
    assert list(catalog.NORMALIZATIONS) == list(NORMALIZATIONS)
    assert sorted(catalog.IMAGE_SOURCES) == sorted(builtin_sources())
    assert sorted(catalog.ATTACKS) == sorted(ATTACKS.names())
    assert list(catalog.LABEL_RULES) == list(LABEL_RULES)
    assert sorted(catalog.PRIORS) == sorted(PRIORS)
    fields = {f.name: f.default for f in dataclasses.fields(TrainPriorConfig)}
    assert {k: v for k, v in fields.items() if k not in ("data", "out", "device")} == catalog.TRAIN_PRIOR_DEFAULTS
    assert catalog.TRAIN_PRIOR_LOSSES == LOSSES


def test_catalog_executors_are_the_built_in_ones() -> None:
    """`gifd sweep --executor` offers gifd's own executors (a test may register more)."""
    from gifd.sweep import EXECUTORS

    built_in = [name for name in EXECUTORS if EXECUTORS.get(name).__module__.startswith("gifd.")]
    assert sorted(catalog.EXECUTORS) == built_in == ["local", "ray"]


def test_help_imports_neither_torch_nor_pydantic() -> None:
    """`gifd --help` and each fast command's --help load no heavy module (what makes them slow)."""
    for args in ([], ["attack"], ["demo"], ["report"], ["sweep"], ["reproduce"], ["priors"], ["train-prior"]):
        code = (
            "import sys\nfrom gifd.cli import main\n"
            "try:\n    main([*sys.argv[1:], '--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'pydantic', 'numpy', 'matplotlib') if m in sys.modules)\n"
            "print('HEAVY', heavy)\n"
        )
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
        assert "usage: gifd" in out.stdout, args
        assert out.stdout.strip().splitlines()[-1] == "HEAVY []", (args, out.stdout[-300:])
