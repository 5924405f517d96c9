import pytest
import torch

from gifd.errors import GifdError
from gifd.victims import NORMALIZATIONS, create_victim, victim_names


@pytest.mark.parametrize("name", ["lenet", "convnet", "resnet18"])
@pytest.mark.parametrize("resolution", [32, 64])
def test_victims_take_any_size_and_class_count(name: str, resolution: int) -> None:
    victim = create_victim(name, resolution=resolution, num_classes=7, seed=1)
    logits = victim.model(victim.normalize(torch.rand(2, 3, resolution, resolution)))
    assert logits.shape == (2, 7)
    assert not victim.model.training  # untrained and in eval mode, as in the paper
    assert victim.model.get_submodule(victim.classifier).out_features == 7


def test_registry_lists_the_three_victims() -> None:
    assert {"lenet", "convnet", "resnet18"} <= set(victim_names())


def test_seed_fixes_the_random_init() -> None:
    a = create_victim("convnet", seed=3).model.state_dict()
    b = create_victim("convnet", seed=3).model.state_dict()
    c = create_victim("convnet", seed=4).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["body.0.weight"], c["body.0.weight"])


def test_resnet18_is_the_cifar_variant() -> None:
    model = create_victim("resnet18", resolution=64, num_classes=10).model
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    # 11.17 M parameters with a 10-class head, the standard CIFAR ResNet-18 count.
    assert sum(p.numel() for p in model.parameters()) == 11_173_962
    bn = model.layer1[0].bn1
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_normalize_round_trip() -> None:
    victim = create_victim("lenet", normalization="cifar10")
    x = torch.rand(3, 3, 32, 32)
    assert torch.allclose(victim.denormalize(victim.normalize(x)), x, atol=1e-6)
    mean, std = NORMALIZATIONS["cifar10"]
    assert torch.allclose(
        victim.normalize(torch.ones(1, 3, 1, 1)).flatten(), (1 - torch.tensor(mean)) / torch.tensor(std)
    )


def test_weights_load_from_file_and_mismatch_is_named(tmp_path) -> None:
    trained = create_victim("convnet", seed=5)
    path = tmp_path / "victim.pt"
    torch.save(trained.model.state_dict(), path)
    loaded = create_victim("convnet", seed=0, weights=path)
    assert torch.equal(loaded.model.state_dict()["fc.weight"], trained.model.state_dict()["fc.weight"])
    with pytest.raises(GifdError, match=r"fc.weight has shape \(10, 2048\).*expects \(5, 2048\)"):
        create_victim("convnet", num_classes=5, weights=path)
    with pytest.raises(GifdError, match="do not fit 'lenet': missing body.0.bias.*unexpected body.1.bias"):
        create_victim("lenet", weights=path)
    with pytest.raises(GifdError, match="not found"):
        create_victim("lenet", weights=tmp_path / "nope.pt")


def test_unknown_victim_suggests_the_closest() -> None:
    with pytest.raises(GifdError, match="unknown victim 'resnet19'. Did you mean 'resnet18'"):
        create_victim("resnet19")
