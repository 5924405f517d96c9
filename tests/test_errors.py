"""gifd.errors: `list_some` and the shared torch-file loader `load_torch_file`."""

import argparse
import re
from pathlib import Path

import pytest
import torch

from gifd.errors import GifdError, list_some, load_torch_file

FIX = "pass the path of a file written by torch.save"


def test_list_some() -> None:
    assert list_some([]) == "none"
    assert list_some(["a", "b"]) == "a, b"
    assert list_some([str(i) for i in range(7)], limit=3) == "0, 1, 2 (+4 more)"


def test_missing_file_names_the_file_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "absent.pt"
    with pytest.raises(GifdError) as info:
        load_torch_file(path, "victim weights", FIX)
    assert str(info.value) == f"victim weights {path} not found: {FIX}"


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(GifdError) as info:
        load_torch_file(tmp_path, "update file", FIX)
    assert str(info.value) == f"update file {tmp_path} is a directory, not a file: {FIX}"


def test_garbage_bytes_name_the_file_the_problem_the_exception_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"\x00\x01 certainly not a torch file \xff" * 10)
    with pytest.raises(GifdError) as info:
        load_torch_file(path, "update file", FIX)
    message = str(info.value)
    assert message.startswith(
        f"update file {path} could not be read because it is corrupt or not a torch file ("
    )
    assert message.endswith(f"): {FIX}")
    cause = info.value.__cause__
    assert cause is not None and f"({type(cause).__name__}" in message
    assert "weights_only=False" not in message  # torch's unsafe advice is cut off
    assert "\n" not in message  # one line for the CLI


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.pt"
    torch.save({"w": torch.arange(1000.0)}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(
        GifdError,
        match=rf"^BigGAN weights {re.escape(str(path))} could not be read because it is corrupt or not a torch file \(\w+",
    ):
        load_torch_file(path, "BigGAN weights", FIX)


@pytest.mark.parametrize("mmap", [False, True])
def test_valid_file_round_trips(tmp_path: Path, mmap: bool) -> None:
    path = tmp_path / "state.pt"
    state = {"weight": torch.randn(3, 4), "bias": torch.zeros(3), "step": 7, "name": "lenet"}
    torch.save(state, path)
    loaded = load_torch_file(str(path), "victim weights", FIX, mmap=mmap)
    assert set(loaded) == set(state) and loaded["step"] == 7 and loaded["name"] == "lenet"
    assert torch.equal(loaded["weight"], state["weight"]) and torch.equal(loaded["bias"], state["bias"])


def test_safe_globals_are_allowed_for_that_load_only(tmp_path: Path) -> None:
    path = tmp_path / "with_args.pt"
    torch.save({"args": argparse.Namespace(size=32), "w": torch.ones(1)}, path)
    with pytest.raises(GifdError, match=rf"could not be read .*\(UnpicklingError.*: {FIX}$"):
        load_torch_file(path, "checkpoint", FIX)  # the weights-only unpickler refuses Namespace
    loaded = load_torch_file(path, "checkpoint", FIX, safe_globals=[argparse.Namespace])
    assert loaded["args"].size == 32
    with pytest.raises(GifdError):
        load_torch_file(path, "checkpoint", FIX)  # and refuses it again afterwards
