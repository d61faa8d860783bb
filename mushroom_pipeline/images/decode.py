"""Camera bytes → an upright RGB image, or a named reason why not.

Handled rather than failed: EXIF orientation, CMYK, grayscale, palette, alpha, 16-bit.
Rejected with a reason: empty files, bytes that are no image, images in another format than
JPEG or PNG (only those two decoders ever see camera bytes), truncated files, images over the
pixel limit (decompression bombs; real camera frames are far below it).

Safe in decode threads: no process-wide state is touched (no `warnings.catch_warnings()`, which
is not thread-safe; the pixel limit is checked on the header before any pixel is decoded).
"""

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = Image.MAX_IMAGE_PIXELS  # Pillow's own bomb threshold (about 89 M pixels)
DECODED_FORMATS = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG"}
# Recognised but not decoded: named in the failure row, so a camera switched to another format
# is told apart from garbage.
OTHER_FORMATS = {b"GIF8": "GIF", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF",
                 b"\x00\x00\x00\x0cjP  ": "JPEG 2000", b"\xff\x4f\xff\x51": "JPEG 2000"}


class ImageRejected(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image | None  # RGB, upright; None once only the tensor is still needed
    source_mode: str
    width: int
    height: int


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit (or 32-bit) gray: scale the full range to 8 bits; convert("RGB") would clip it.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0)
        image = Image.fromarray(np.clip(values / top * 255.0, 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        low, high = float(np.nanmin(values)), float(np.nanmax(values))
        image = Image.fromarray(((values - low) / max(high - low, 1e-12) * 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels on white, not on whatever colour they happen to hold.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def image_format(data: bytes) -> str:
    """'JPEG' or 'PNG' by the file's signature, else an ImageRejected naming what it is."""
    if not data:
        raise ImageRejected("empty", "zero-byte object")
    for signature, name in DECODED_FORMATS.items():
        if data.startswith(signature):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        other = "WebP"
    elif data[4:8] == b"ftyp":
        other = f"ISO media ({data[8:12].decode('ascii', 'replace').strip()})"  # HEIC, AVIF
    else:
        other = next((name for signature, name in OTHER_FORMATS.items() if data.startswith(signature)), None)
    if other:
        raise ImageRejected("unsupported_format", f"{other}: only JPEG and PNG are decoded")
    raise ImageRejected("not_an_image", f"neither JPEG nor PNG (starts with {data[:8]!r})")


def decode_image(data: bytes, min_side: int) -> DecodedImage:
    """`min_side`: the model's input size; a JPEG is decoded at reduced scale down to twice it."""
    fmt = image_format(data)
    try:
        image = Image.open(io.BytesIO(data), formats=[fmt])
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ImageRejected("too_large", f"{width}x{height} is over {MAX_PIXELS:,} pixels")
        source_mode = image.mode
        if image.format == "JPEG":
            image.draft(image.mode, (2 * min_side, 2 * min_side))
        image.load()
        image = ImageOps.exif_transpose(image)
        return DecodedImage(_to_rgb(image), source_mode, width, height)
    except ImageRejected:
        raise
    except UnidentifiedImageError as err:
        raise ImageRejected("corrupt", f"{fmt} signature, unreadable header: {err}") from None
    except Image.DecompressionBombError as err:
        raise ImageRejected("too_large", str(err)) from None
    except OSError as err:  # "image file is truncated", broken data streams
        reason = "truncated" if "truncated" in str(err) else "corrupt"
        raise ImageRejected(reason, str(err)) from None
    except Exception as err:  # a decoder bug on hostile bytes must not end the run
        raise ImageRejected("corrupt", f"{type(err).__name__}: {err}") from None
