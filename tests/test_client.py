import pytest
import torch
import torch.nn.functional as F

from gifd.client import Update, compute_update, load_update, save_update, validate_update
from gifd.errors import GifdError
from gifd.victims import create_victim


def test_update_is_the_gradient_of_the_mean_cross_entropy(lenet32, cifar32) -> None:
    images, labels = cifar32[:4], torch.tensor([0, 1, 2, 3])
    update = compute_update(lenet32, images, labels)
    # Independent reference: the mean of the per-sample gradients.
    per_sample = []
    for i in range(4):
        lenet32.model.zero_grad()
        F.cross_entropy(lenet32.model(lenet32.normalize(images[i : i + 1])), labels[i : i + 1]).backward()
        per_sample.append(lenet32.model.fc.weight.grad.clone())
    assert torch.allclose(update.tensors["fc.weight"], torch.stack(per_sample).mean(0), atol=1e-6)
    assert update.batch_size == 4 and update.labels is None
    assert set(update.tensors) == {n for n, _ in lenet32.model.named_parameters()}


def test_labels_are_sent_only_when_disclosed(lenet32, cifar32) -> None:
    update = compute_update(lenet32, cifar32[:2], torch.tensor([4, 5]), disclose_labels=True)
    assert update.labels.tolist() == [4, 5]


def test_save_load_round_trip(tmp_path, lenet32, cifar32) -> None:
    update = compute_update(lenet32, cifar32[:2], torch.tensor([4, 5]), disclose_labels=True)
    path = save_update(update, tmp_path / "u.pt")
    loaded = load_update(path)
    assert (
        loaded.batch_size == 2 and loaded.labels.tolist() == [4, 5] and loaded.metadata["victim"] == "lenet"
    )
    assert all(torch.equal(loaded.tensors[k], update.tensors[k]) for k in update.tensors)
    assert [p.name for p in tmp_path.iterdir()] == ["u.pt"]  # no temporary file left


def test_plain_gradient_dict_needs_a_batch_size(tmp_path, lenet32, cifar32) -> None:
    update = compute_update(lenet32, cifar32[:1], torch.tensor([1]))
    torch.save(update.tensors, tmp_path / "g.pt")
    with pytest.raises(GifdError, match="pass --batch-size"):
        load_update(tmp_path / "g.pt")
    assert load_update(tmp_path / "g.pt", batch_size=1).batch_size == 1


def test_corrupt_and_foreign_files_are_refused(tmp_path) -> None:
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(GifdError, match="corrupt or not a torch file"):
        load_update(tmp_path / "bad.pt")
    torch.save({"a": 1}, tmp_path / "other.pt")
    with pytest.raises(GifdError, match="neither a gifd update"):
        load_update(tmp_path / "other.pt")
    with pytest.raises(GifdError, match="not found"):
        load_update(tmp_path / "missing.pt")


def test_update_from_another_architecture_is_named(lenet32, cifar32) -> None:
    update = compute_update(lenet32, cifar32[:1], torch.tensor([1]))
    with pytest.raises(GifdError, match="does not fit victim 'convnet' \\(it was made for victim 'lenet'\\)"):
        validate_update(update, create_victim("convnet"))


def test_nan_and_shape_mismatch_name_the_parameter(lenet32, cifar32) -> None:
    update = compute_update(lenet32, cifar32[:1], torch.tensor([1]))
    bad = Update(dict(update.tensors), 1)
    bad.tensors["body.2.bias"] = bad.tensors["body.2.bias"].clone()
    bad.tensors["body.2.bias"][0] = float("nan")
    with pytest.raises(GifdError, match="body.2.bias contains NaN"):
        validate_update(bad, lenet32)
    with pytest.raises(
        GifdError, match=r"fc.weight has shape \(10, 768\) but victim 'lenet' has \(10, 3072\)"
    ):
        validate_update(update, create_victim("lenet", resolution=64))


def test_bad_private_batches_are_refused(lenet32, cifar32) -> None:
    with pytest.raises(GifdError, match="images are 64x64 but the victim takes 32x32"):
        compute_update(lenet32, torch.rand(1, 3, 64, 64), torch.tensor([0]))
    with pytest.raises(GifdError, match="labels must be integers in 0..9"):
        compute_update(lenet32, cifar32[:1], torch.tensor([10]))
    with pytest.raises(GifdError, match=r"in \[0, 1\]"):
        compute_update(lenet32, cifar32[:1] * 2 - 1, torch.tensor([0]))
