"""The one exception users see: a problem with their input, and how to fix it."""

from __future__ import annotations


class GifdError(ValueError):
    """Bad input or a missing resource. The message names the problem and the fix.

    The CLI prints it as a single line and exits with code 2; the library raises it instead of
    letting a shape or type error surface from deep inside torch.
    """


def list_some(keys: list[str], limit: int = 5) -> str:
    """`keys` for an error message: the first `limit` names and how many more, or "none"."""
    if not keys:
        return "none"
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more
