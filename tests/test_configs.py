"""The example configs in configs/ are valid, and invalid configs fail with one-line messages."""

from pathlib import Path

import pytest

from gifd.config import read_yaml
from gifd.errors import GifdError
from gifd.experiment import experiment_config

CONFIGS = sorted(
    p for p in (Path(__file__).parents[1] / "configs").glob("*.yaml") if not p.name.startswith(("sweep", "reproduce"))
)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_configs_validate(path: Path) -> None:
    config = experiment_config(read_yaml(path), str(path))
    assert config.attacks


def test_unknown_key_suggests_the_closest() -> None:
    with pytest.raises(GifdError, match="x.yaml: unknown key 'restart': did you mean 'restarts'"):
        experiment_config({"restart": 2}, "x.yaml")


def test_wrong_type_names_key_and_value() -> None:
    with pytest.raises(GifdError, match="x.yaml: resolution = 'big' is invalid"):
        experiment_config({"resolution": "big"}, "x.yaml")


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("- a\n- b\n")
    with pytest.raises(GifdError, match="must hold a mapping"):
        read_yaml(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("a: [\n")
    with pytest.raises(GifdError, match="not valid YAML"):
        read_yaml(tmp_path / "d.yaml")


def test_prior_without_weights_names_the_flag() -> None:
    from gifd.experiment import run_experiment

    config = experiment_config({"victim": "lenet", "attacks": ["gifd"], "prior": "stylegan2", "steps": 1})
    with pytest.raises(GifdError, match="stylegan2 prior has no default weights.*--prior-weights"):
        run_experiment(config, None, progress=False)
