"""The allocator tuning is an opt-in of the CLI: using the library never changes malloc."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from gifd.runtime import reuse_large_allocations

#: The tuning is skipped where the user set the thresholds: run the children without those.
_ENV = {
    k: v
    for k, v in os.environ.items()
    if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
}


def _child(code: str) -> str:
    """Run `code` in a fresh interpreter (a process whose malloc nothing has tuned yet)."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=_ENV, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_running_an_attack_through_the_library_leaves_malloc_alone() -> None:
    out = _child(
        """
        import torch
        import gifd.runtime
        from gifd.attacks import ATTACKS, GradientMatcher, Target
        from gifd.client import compute_update
        from gifd.victims import create_victim

        victim = create_victim("lenet", resolution=16, num_classes=4, seed=0)
        labels = torch.tensor([1])
        target = Target(victim, compute_update(victim, torch.rand(1, 3, 16, 16), labels), labels)
        GradientMatcher(target)(victim.normalize(torch.rand(1, 3, 16, 16)))
        ATTACKS.get("ig")({"steps": 2, "restarts": 2}, progress=False).run(target, torch.Generator())
        print(gifd.runtime.large_allocations_reused())
        """
    )
    assert out == "False"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tuning is Linux-only")
def test_the_cli_turns_the_tuning_on() -> None:
    out = _child(
        """
        import contextlib, io
        import gifd.runtime
        from gifd.cli import main

        before = gifd.runtime.large_allocations_reused()
        with contextlib.redirect_stdout(io.StringIO()):
            code = main(["priors"])
        print(before, code, gifd.runtime.large_allocations_reused())
        """
    )
    assert out == "False 0 True"


def test_user_thresholds_are_respected(monkeypatch: pytest.MonkeyPatch) -> None:
    import gifd.runtime

    monkeypatch.setattr(gifd.runtime, "_malloc_tuned", False)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert reuse_large_allocations() is False
    assert gifd.runtime.large_allocations_reused() is False
