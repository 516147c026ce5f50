from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from vggexport.data.dataset import batch_indices, describe
from vggexport.data.idx import FASHION_CLASSES, read_idx
from vggexport.data.load import load_dataset
from vggexport.data.synthetic import make_synthetic
from vggexport.errors import DataNotFoundError, VggExportError
from vggexport.transforms import augment, preprocess, random_crop, random_erase


def write_idx(path: Path, array: np.ndarray, *, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def make_idx_root(root: Path, *, compress: bool, n_train: int = 50, n_test: int = 20) -> Path:
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), compress=compress)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, (n,)), compress=compress)
    return root


@pytest.mark.parametrize("compress", [False, True])
def test_loads_generated_idx(tmp_path: Path, compress: bool) -> None:
    data = load_dataset("fashion-mnist", make_idx_root(tmp_path, compress=compress))
    assert data.train_images.shape == (50, 1, 28, 28) and data.train_images.dtype == torch.uint8
    assert data.test_labels.shape == (20,) and data.test_labels.dtype == torch.int64
    assert data.class_names == FASHION_CLASSES and data.mean == (0.2860,) and data.hflip


def test_data_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VGGEXPORT_DATA_DIR", str(make_idx_root(tmp_path, compress=True)))
    data = load_dataset("fashion-mnist")
    assert len(data.train_labels) == 50
    assert describe(data, "test split") == (f"data: Fashion-MNIST test split from {tmp_path / 'FashionMNIST' / 'raw'} "
                                            "(found)")


def test_data_dir_is_the_root_never_a_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A --data-dir without the data is an error even when $VGGEXPORT_DATA_DIR and the cache hold it."""
    monkeypatch.setenv("VGGEXPORT_DATA_DIR", str(make_idx_root(tmp_path / "env", compress=False)))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    make_idx_root(tmp_path / "cache" / "vggexport" / "data", compress=False)
    with pytest.raises(DataNotFoundError, match=r"not found in .*typo \(--data-dir\) and downloads are off") as info:
        load_dataset("fashion-mnist", tmp_path / "typo")
    assert str(tmp_path / "env") not in str(info.value) and "cache" not in str(info.value)
    assert info.value.exit_code == 2 and not (tmp_path / "typo").exists()


def test_environment_root_without_the_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$VGGEXPORT_DATA_DIR is the root when no --data-dir is given: the cache is not consulted either."""
    monkeypatch.setenv("VGGEXPORT_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    make_idx_root(tmp_path / "cache" / "vggexport" / "data", compress=False)
    with pytest.raises(DataNotFoundError, match=r"empty \(\$VGGEXPORT_DATA_DIR\)"):
        load_dataset("fashion-mnist")


def test_cache_is_the_root_without_data_dir_or_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VGGEXPORT_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cache = make_idx_root(tmp_path / "cache" / "vggexport" / "data", compress=True)
    data = load_dataset("fashion-mnist")
    assert data.folder == cache / "FashionMNIST" / "raw" and data.origin == "found"


def test_failed_download_into_the_root_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Downloads go into the root itself: one that cannot hold folders fails before any network access."""
    monkeypatch.setenv("VGGEXPORT_OFFLINE", "0")
    monkeypatch.setenv("VGGEXPORT_DATA_DIR", str(make_idx_root(tmp_path / "env", compress=False)))
    root = tmp_path / "a-file"
    root.write_text("not a folder")
    with pytest.raises(DataNotFoundError, match=r"a-file \(--data-dir\) and downloading it there failed"):
        load_dataset("fashion-mnist", root)


def test_cifar10_root_is_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "env" / "cifar-10-batches-py").mkdir(parents=True)
    monkeypatch.setenv("VGGEXPORT_DATA_DIR", str(tmp_path / "env"))
    with pytest.raises(DataNotFoundError, match=r"cifar10 not found in .*nowhere \(--data-dir\)"):
        load_dataset("cifar10", tmp_path / "nowhere")
    # The batches folder is there but empty: one line naming the root, not torchvision's traceback.
    with pytest.raises(DataNotFoundError, match=r"env \(\$VGGEXPORT_DATA_DIR\) and its batches are unreadable"):
        load_dataset("cifar10")


def test_generated_data_says_so() -> None:
    assert describe(make_synthetic(train=8, test=8), "test split") == "data: synthetic data (generated)"


def test_missing_data_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("VGGEXPORT_DATA_DIR", raising=False)
    with pytest.raises(DataNotFoundError, match="--data-dir") as info:
        load_dataset("fashion-mnist", tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value) and "--data-dir" in str(info.value)
    assert info.value.exit_code == 2


def test_truncated_idx_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x-idx"
    write_idx(path, np.zeros((4, 28, 28)), compress=False)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(VggExportError, match="truncated"):
        read_idx(path)


def test_foreign_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x-idx"
    path.write_bytes(b"PK\x03\x04 not an idx file")
    with pytest.raises(VggExportError, match="not an unsigned-byte IDX"):
        read_idx(path)


def test_unknown_dataset() -> None:
    with pytest.raises(VggExportError, match="unknown dataset"):
        load_dataset("imagenet-22k")


def ramp_coordinates(n_in: int, n_out: int) -> np.ndarray:
    """Where each of ``n_out`` resized pixels samples an ``n_in``-pixel axis: half-pixel centres, clamped.

    A linear ramp through a bilinear resize (align_corners=False) is the same ramp at these coordinates;
    antialiasing only widens the filter when shrinking, so this holds for any enlargement.
    """
    return np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)


def ramp_photo(width: int, height: int, blue: int) -> np.ndarray:
    """(H, W, 3) uint8: red rises 5 a column, green 6 a row, blue names the class."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([5 * xs, 6 * ys, np.full_like(xs, blue)], axis=-1).astype(np.uint8)


def test_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    expected: dict[str, list[np.ndarray]] = {"dark": [], "light": []}
    for split in ("train", "val"):
        for label, blue in (("dark", 20), ("light", 230)):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for i in range(3):
                width = 40 + i
                Image.fromarray(ramp_photo(width, 30, blue)).save(folder / f"{i}.png")
                # By hand: the shorter side 30 -> 37 (the longer truncated), then the centre 32x32.
                new_width = width * 37 // 30
                top, left = round((37 - 32) / 2), round((new_width - 32) / 2)
                red = 5 * ramp_coordinates(width, new_width)[left:left + 32]
                green = 6 * ramp_coordinates(30, 37)[top:top + 32]
                expected[label].append(np.stack([np.broadcast_to(red, (32, 32)),
                                                 np.broadcast_to(green[:, None], (32, 32)),
                                                 np.full((32, 32), float(blue))]))
            (folder / "notes.txt").write_text("not an image")
    data = load_dataset("imagefolder", tmp_path, image_size=32, channels=3)
    assert data.class_names == ("dark", "light") and data.resize_size == 37
    assert describe(data, "test split") == f"data: image folder test split from {tmp_path} (found)"
    assert data.train_images.shape == (6, 3, 32, 32) and len(data.test_labels) == 6
    for images, labels, first in ((data.train_images, data.train_labels, 0), (data.test_images, data.test_labels, 3)):
        for image, label in zip(images.numpy(), labels.tolist()):
            wanted = expected[data.class_names[label]]
            # Within one grey level of some photo of its class (of this split): rounding to uint8 is all that differs.
            assert any(np.abs(image - w).max() <= 1 for w in wanted[first:first + 3]), label


@pytest.mark.realdata
def test_real_fashion_mnist(real_data_dir: Path) -> None:
    data = load_dataset("fashion-mnist", real_data_dir)
    assert data.train_images.shape == (60_000, 1, 28, 28) and data.test_images.shape == (10_000, 1, 28, 28)
    assert torch.bincount(data.test_labels).tolist() == [1000] * 10
    assert abs(data.train_images.float().div(255).mean().item() - 0.2860) < 1e-3


def test_batch_indices_shuffle_per_epoch_and_shard() -> None:
    first = torch.cat(list(batch_indices(100, 10, seed=1, epoch=0)))
    again = torch.cat(list(batch_indices(100, 10, seed=1, epoch=0)))
    second = torch.cat(list(batch_indices(100, 10, seed=1, epoch=1)))
    assert torch.equal(first, again) and not torch.equal(first, second)
    assert sorted(first.tolist()) == list(range(100))
    shards = [torch.cat(list(batch_indices(100, 10, seed=1, epoch=0, rank=r, world_size=2))) for r in (0, 1)]
    assert set(shards[0].tolist()).isdisjoint(shards[1].tolist())


def test_preprocess_resizes_and_normalizes() -> None:
    # A ramp in both directions: a resize that shifted, flipped or blurred it would change the values.
    ys, xs = np.mgrid[0:28, 0:28]
    ramp = 4 * xs + 5 * ys
    images = torch.from_numpy(np.stack([ramp, 243 - ramp])[:, None].astype(np.uint8))
    out = preprocess(images, image_size=32, mean=(0.5,), std=(0.25,))
    assert out.shape == (2, 1, 32, 32)
    at = ramp_coordinates(28, 32)
    resized = 4 * at[None, :] + 5 * at[:, None]
    expected = (np.stack([resized, 243 - resized])[:, None] / 255 - 0.5) / 0.25
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


def test_augment_keeps_shape_and_content() -> None:
    x = torch.rand(8, 1, 32, 32)
    out = augment(x, crop_padding=2, hflip=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.equal(random_crop(x, 0), x)
    # a crop only shifts: each output row is a (shifted) slice of an input row or padding
    assert out.abs().sum() <= x.abs().sum() + 1e-4


def test_random_erase_zeroes_one_rectangle_per_chosen_image() -> None:
    x = torch.ones(256, 2, 32, 32)
    out = random_erase(x, 0.5, torch.Generator().manual_seed(0))
    erased = out == 0
    assert torch.equal(erased[:, 0], erased[:, 1])  # every channel of the same pixels
    fractions = erased[:, 0].float().mean((1, 2))
    chosen = fractions > 0
    assert 0.35 < chosen.float().mean() < 0.65
    assert fractions.max() <= 0.3 and fractions[chosen].min() >= 0.005
    for mask in erased[chosen, 0][:20]:  # a rectangle: its bounding box is exactly the erased set
        rows, cols = mask.nonzero(as_tuple=True)
        assert mask.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert torch.equal(random_erase(x, 0.0), x)


def test_synthetic_is_deterministic() -> None:
    assert torch.equal(make_synthetic().train_images, make_synthetic().train_images)
