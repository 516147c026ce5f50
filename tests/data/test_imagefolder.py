"""Your own photos: decoded at the model's input size by the resize/crop policy the ONNX graph serves with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from tests.conftest import tiny_config
from vggexport.data.load import load_dataset
from vggexport.errors import VggExportError
from vggexport.data.imagefolder import default_resize, fit_to_model, photo_batches, raw_photos
from vggexport.transforms import centre_offset, resize_crop, resized_size

MODES = ("RGB", "L", "RGBA", "P")
SIZES = ((61, 40), (40, 61), (33, 33), (90, 47))


def photo(size: tuple[int, int], mode: str, seed: int) -> Image.Image:
    """A smooth random picture (noise would make every resize look alike), in ``mode``."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
    return small.convert(mode) if mode != "P" else small.quantize(64)


def write_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 4) -> list[Path]:
    written = []
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            mode, size = MODES[i % len(MODES)], SIZES[(i + c) % len(SIZES)]
            path = root / name / f"{i}.{'jpg' if mode in ('RGB', 'L') else 'png'}"
            photo(size, mode, seed=10 * c + i).save(path)
            written.append(path)
        (root / name / "notes.txt").write_text("not an image: ignored")
    return written


def test_policy_is_torchvisions_resize_and_centre_crop() -> None:
    rng = torch.Generator().manual_seed(0)
    for height, width in ((300, 229), (229, 300), (256, 256), (257, 1000), (100, 90)):
        x = torch.rand(2, 3, height, width, generator=rng)
        expected = TF.center_crop(TF.resize(x, [256], antialias=True), [224])
        torch.testing.assert_close(resize_crop(x, image_size=224, resize_size=256), expected, atol=0, rtol=0)


def test_centre_offset_rounds_halves_to_even_like_python() -> None:
    for size in range(224, 300):
        assert centre_offset(size, 224) == int(round((size - 224) / 2.0))
    assert resized_size(480, 640, 256) == (256, 341) and resized_size(1000, 257, 256) == (996, 256)


def test_stretch_policy_is_kept_for_older_models() -> None:
    x = torch.rand(1, 1, 28, 40)
    out = resize_crop(x, image_size=32, resize_size=0)
    expected = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True)
    torch.testing.assert_close(out, expected)


def test_folder_decodes_every_mode_at_the_model_size_with_the_serving_policy(tmp_path: Path) -> None:
    files = write_folder(tmp_path)
    data = load_dataset("imagefolder", tmp_path, image_size=32, channels=3)
    assert data.class_names == ("cat", "dog") and data.resize_size == default_resize(32) == 37
    images = torch.cat([data.train_images, data.test_images])
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.uint8
    # Every photo, whatever its mode and size, is exactly torchvision's resize (shorter side 37) and centre
    # crop (32) of PIL's RGB conversion: expected values from neither vggexport's decoder nor its resize.
    expected = set()
    for path in files:
        with Image.open(path) as image:
            pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)[None].float() / 255
        reference = TF.center_crop(TF.resize(pixels, [37], antialias=True), [32])
        expected.add(tuple(reference.mul(255).round().clamp(0, 255).to(torch.uint8).flatten().tolist()))
    assert len(expected) == len(files)  # the photos differ, so matching them one to one means something
    assert {tuple(image.flatten().tolist()) for image in images} == expected


def test_greyscale_model_reads_colour_photos_as_luminance(tmp_path: Path) -> None:
    write_folder(tmp_path)
    data = load_dataset("imagefolder", tmp_path, image_size=32, channels=1)
    assert data.train_images.shape[1:] == (1, 32, 32)


def test_corrupt_files_are_named(tmp_path: Path) -> None:
    files = write_folder(tmp_path)
    good = files[0].read_bytes()
    (tmp_path / "cat" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "dog" / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "dog" / "empty.jpeg").write_bytes(b"")
    with pytest.raises(VggExportError, match="3 unreadable") as caught:
        load_dataset("imagefolder", tmp_path, image_size=32, channels=3)
    message = str(caught.value)
    assert "3 unreadable" in message and "\n" not in message
    for name in ("truncated.jpg", "garbage.png", "empty.jpeg"):
        assert name in message


def test_decompression_bombs_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_folder(tmp_path)
    photo((400, 300), "RGB", 1).save(tmp_path / "dog" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)  # 400 x 300 is now a bomb; the others are not
    with pytest.raises(VggExportError, match="huge.png"):
        load_dataset("imagefolder", tmp_path, image_size=32, channels=3)


@pytest.mark.parametrize("layout, message", [("one class", "needs at least two class sub-folders, found 1"),
                                             ("no images", r"no image files \(\.bmp, .*\) under"),
                                             ("not a folder", "needs --data-dir pointing at a folder of class")])
def test_unusable_folders(tmp_path: Path, layout: str, message: str) -> None:
    if layout == "one class":
        write_folder(tmp_path, classes=("cat",))
    elif layout == "no images":
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            (tmp_path / name / "readme.txt").write_text("x")
    target = tmp_path / "missing" if layout == "not a folder" else tmp_path
    with pytest.raises(VggExportError, match=message):
        load_dataset("imagefolder", target, image_size=32, channels=3)


def test_photo_batches_labelled_by_class_name(tmp_path: Path) -> None:
    write_folder(tmp_path / "val", classes=("dog", "cat"), per_class=3)
    config = tiny_config(in_channels=3, num_classes=3, mean=(0.5,) * 3, std=(0.5,) * 3, resize_size=37,
                         class_names=("bird", "cat", "dog"))
    batches = list(photo_batches(config, tmp_path, batch_size=4))
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    assert images.shape == (6, 3, 32, 32) and images.dtype == np.uint8 and [len(b[0]) for b in batches] == [4, 2]
    assert sorted(labels.tolist()) == [1, 1, 1, 2, 2, 2]
    raw = list(raw_photos(config, tmp_path))  # the same photos, same order, before the resize and crop
    assert [label for _, label in raw] == labels.tolist()
    for (pixels, _), fitted in zip(raw, images):
        assert pixels.dtype == np.uint8 and pixels.shape[:2] == (1, 3) and pixels.shape[2:] != (32, 32)
        assert np.array_equal(fit_to_model(pixels[0].transpose(1, 2, 0), image_size=32, resize_size=37).numpy(), fitted)


def test_photo_batches_unlabelled_and_refusals(tmp_path: Path) -> None:
    config = tiny_config(in_channels=3, num_classes=2, mean=(0.5,) * 3, std=(0.5,) * 3, class_names=("a", "b"))
    for i, mode in enumerate(MODES):
        photo(SIZES[i], mode, i).save(tmp_path / f"{i}.png")
    ((images, labels),) = list(photo_batches(config, tmp_path))
    assert images.shape == (4, 3, 32, 32) and labels is None
    (tmp_path / "zebra").mkdir()
    photo((40, 40), "RGB", 9).save(tmp_path / "zebra" / "z.png")
    with pytest.raises(VggExportError, match="mixes"):
        list(photo_batches(config, tmp_path))
    for loose in tmp_path.glob("*.png"):
        loose.unlink()
    with pytest.raises(VggExportError, match="zebra"):
        list(photo_batches(config, tmp_path))
