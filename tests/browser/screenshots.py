"""Refresh docs/report.png and docs/page.png from a trained model folder (report.html and model.onnx in it).

    python -m tests.browser.screenshots artifacts/vgg11_bn --data-dir ../shared/data --out docs

docs/report.md and docs/serving.md show these; they are palette PNGs, well under 200 KB each.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from tests.browser.chromium import ARGS, CHROMIUM, watched_page
from tests.serve_process import ServerProcess


def small_png(png: bytes) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        palette = image.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def upload_image(data_dir: str | None, index: int, target: Path) -> Path:
    from PIL import Image

    from vggexport.data.load import load_dataset

    pixels = load_dataset("fashion-mnist", data_dir).test_images[index, 0].numpy()
    Image.fromarray(pixels, mode="L").resize((112, 112), Image.Resampling.LANCZOS).save(target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--image-index", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    image = upload_image(args.data_dir, args.image_index, args.out / ".upload.png")
    server = ServerProcess(args.model_dir / "model.onnx", "--provider", "cpu").wait_ready()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            report = watched_page(browser, 1200, 900)
            report.page.goto((args.model_dir / "report.html").resolve().as_uri())
            (args.out / "report.png").write_bytes(small_png(report.page.screenshot()))
            report.assert_clean()
            page = watched_page(browser, 1200, 960)
            page.page.goto(f"{server.url}/")
            page.page.wait_for_selector("body[data-ready='true']")
            page.page.set_input_files("#file", str(image))
            page.page.wait_for_selector("body[data-state='classified']")
            (args.out / "page.png").write_bytes(small_png(page.page.screenshot()))
            page.assert_clean()
            browser.close()
    finally:
        server.stop()
        image.unlink(missing_ok=True)
    for name in ("report.png", "page.png"):
        print(f"wrote {args.out / name} ({(args.out / name).stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
