"""Image bytes -> uint8 (1, C, H, W) pixels, safely: size checked from the header before decoding.

Only the formats a browser or camera sends are opened (PIL otherwise guesses among
dozens). ``max_pixels`` is checked on the lazily opened header, so a decompression
bomb is refused (413) before a byte of it is inflated; truncated or corrupt files
are a 400. Resizing and normalizing are the preprocessing graph's job, not ours.
"""

from __future__ import annotations

import base64
import io
import struct
import warnings

import numpy as np

from vggexport.serve.errors import PayloadTooLargeError, ProtocolError

FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")


def decode_image(raw: bytes, *, channels: int, max_pixels: int) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not raw:
        raise ProtocolError("empty image body")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw), formats=FORMATS) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise PayloadTooLargeError(f"{width}x{height} image exceeds --max-image-pixels {max_pixels}")
                image.load()  # decode now, inside the try: truncated data raises here
                upright = ImageOps.exif_transpose(image)
                pixels = np.asarray(upright.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    except PayloadTooLargeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PayloadTooLargeError("the image is a decompression bomb (too many pixels)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, struct.error):
        raise ProtocolError(f"the body is not a readable image ({', '.join(FORMATS)}), or it is truncated") from None
    pixels = pixels.reshape(pixels.shape[0], pixels.shape[1], channels)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])


def png_data_url(pixels: np.ndarray) -> str:
    """(C, H, W) uint8 -> "data:image/png;base64,...": lossless, so the page shows exactly these pixels."""
    from PIL import Image

    hwc = np.ascontiguousarray(pixels.transpose(1, 2, 0))
    image = Image.fromarray(hwc[..., 0] if hwc.shape[2] == 1 else hwc)  # 2-D: L, (H, W, 3): RGB
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
