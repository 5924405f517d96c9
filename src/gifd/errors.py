"""The one exception users see: a problem with their input, and how to fix it."""

from __future__ import annotations


class GifdError(ValueError):
    """Bad input or a missing resource. The message names the problem and the fix.

    The CLI prints it as a single line and exits with code 2; the library raises it instead of
    letting a shape or type error surface from deep inside torch.
    """
