"""The one decoder for every image file a user gives: the image folders `prepare` reads and the
folder `export --images` predicts. Bytes in; a uint8 array out, or a `BadImage` saying why not.

The rules (each stated in the summary of the command that used them):
- Only PNG and JPEG content is read (what the folder listing admits by suffix); anything else,
  an empty file, a truncated one (a PNG without its IEND chunk, a JPEG without its end marker
  after the image data) or one that declares more than MAX_PIXELS pixels in its header (a
  decompression bomb, refused before a byte is decoded) is refused.
- 16-bit PNGs are scaled to 8 bits over their full range (v * 255 / 65535, rounded), not cut.
- Transparency: the digits are assumed white on black (MNIST). An alpha channel that is opaque
  everywhere is dropped. When every visible pixel has the same colour (a drawing in one ink, often
  black strokes on a transparent canvas), the shape is in the alpha channel alone, so alpha becomes
  the intensity (white digit on black). Otherwise the image is composited onto black.
- A colour image whose three channels are equal everywhere is grey; the result is (H, W, 1) for
  grey images and (H, W, 3) RGB for colour ones (`to_channels` converts, saying so).
- JPEG orientation tags are applied (as cv2 does by default); PNG ones are not."""

from __future__ import annotations

import contextlib
import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import UserError

MAX_PIXELS = 1 << 26  # 67 Mpx: a 48 Mpx photo passes; a 100k x 100k header is refused unread
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_IEND = b"\x00\x00\x00\x00IEND"
JPEG_SOI, JPEG_EOI = b"\xff\xd8", b"\xff\xd9"
# markers that carry no length (TEM, RST0-7); SOFn are C0-CF except DHT (C4), JPG (C8) and DAC (CC)
JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}
JPEG_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}

# what decoding did to an image, counted in the summaries
SCALED_16BIT = "16-bit image(s) scaled to 8-bit"
ALPHA_DROPPED = "image(s) with an opaque alpha channel (dropped)"
ALPHA_AS_INTENSITY = "image(s) drawn in one colour on a transparent canvas (alpha used as the intensity)"
ALPHA_COMPOSITED = "image(s) with transparency composited onto black"
TO_GREY = "colour image(s) converted to grey"
TO_RGB = "grey image(s) copied into 3 equal channels"


class BadImage(UserError):
    """One image file that cannot be used, and why (the caller names the file)."""


@dataclass(frozen=True)
class Header:
    kind: str  # "PNG" or "JPEG"
    width: int
    height: int
    data_at: int = 0  # JPEG: where the image data (the first SOS segment) starts


@dataclass(frozen=True)
class Decoded:
    image: np.ndarray  # (H, W, 1) grey or (H, W, 3) RGB, uint8
    notes: tuple[str, ...]  # what decoding did (the constants above)


def _png_header(data: bytes) -> Header:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise BadImage("truncated or damaged PNG (no IHDR header)")
    width, height = struct.unpack(">II", data[16:24])
    return Header("PNG", width, height)


def _jpeg_header(data: bytes) -> Header:
    """The frame header (SOFn) and where the image data starts (the first SOS), found by walking
    the marker segments (an EXIF thumbnail inside APP1 is skipped as a whole)."""
    i, size = 2, None
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise BadImage(f"damaged JPEG (no marker at byte {i})")
        while i < len(data) - 1 and data[i] == 0xFF:  # fill bytes
            i += 1
        marker, i = data[i], i + 1
        if marker in JPEG_STANDALONE:
            continue
        if marker == 0xD9:
            break
        if marker == 0xDA:
            if size is None:
                break
            return Header("JPEG", *size, data_at=i - 2)
        seglen = int.from_bytes(data[i : i + 2], "big")
        if seglen < 2:
            raise BadImage(f"damaged JPEG (segment of length {seglen} at byte {i})")
        if marker in JPEG_SOF and seglen >= 8 and i + 7 <= len(data):
            height, width = struct.unpack(">HH", data[i + 3 : i + 7])
            size = (width, height)
        i += seglen
    if size is None:
        raise BadImage("truncated or damaged JPEG (no frame header)")
    raise BadImage("truncated JPEG (no image data after its header)")


def probe(data: bytes) -> Header:
    """The format and declared size from the header alone, refusing what must not be decoded."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    if data.startswith(PNG_SIGNATURE):
        head = _png_header(data)
    elif data.startswith(JPEG_SOI):
        head = _jpeg_header(data)
    else:
        raise BadImage(f"not a PNG or JPEG (starts with {data[:8]!r})")
    if head.width == 0 or head.height == 0:
        raise BadImage(f"{head.kind} header declares {head.width}x{head.height} pixels (an empty image)")
    if head.width * head.height > MAX_PIXELS:
        raise BadImage(
            f"{head.kind} header declares {head.width}x{head.height} pixels, over the "
            f"{MAX_PIXELS:,}-pixel limit (a decompression bomb, or far larger than a digit needs); not decoded"
        )
    return head


def _complete(data: bytes, head: Header) -> None:
    """Refuse a file cut short (some cv2 builds decode a truncated JPEG, filling the rest grey)."""
    if head.kind == "PNG" and PNG_IEND not in data:
        raise BadImage("truncated PNG (no IEND chunk)")
    if head.kind == "JPEG" and data.rfind(JPEG_EOI) < head.data_at:
        raise BadImage("truncated JPEG (no end-of-image marker after the image data)")


@contextlib.contextmanager
def _quiet_cv2():
    """cv2 and libpng print warnings about damaged files to stderr; our one line says it instead."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is None:
        yield
        return
    level = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        logging.setLogLevel(level)


def _alpha(bgra: np.ndarray) -> tuple[np.ndarray, str]:
    """(H, W, 4) uint8 BGRA → RGB or grey, by the transparency rule in the module docstring."""
    alpha, rgb = bgra[..., 3], bgra[..., 2::-1]
    if (alpha == 255).all():
        return rgb, ALPHA_DROPPED
    visible = rgb[alpha > 0]
    if len(visible) == 0 or (visible == visible[0]).all():
        return alpha[..., None], ALPHA_AS_INTENSITY
    mixed = (rgb.astype(np.uint32) * alpha[..., None] + 127) // 255
    return mixed.astype(np.uint8), ALPHA_COMPOSITED


def decode(data: bytes) -> Decoded:
    """PNG/JPEG bytes → a uint8 (H, W, 1) grey or (H, W, 3) RGB image, or `BadImage`."""
    head = probe(data)
    _complete(data, head)
    flags = cv2.IMREAD_UNCHANGED if head.kind == "PNG" else cv2.IMREAD_COLOR
    try:
        with _quiet_cv2():
            img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as exc:
        raise BadImage(f"damaged {head.kind} ({str(exc).strip().splitlines()[-1][:120]})") from None
    if img is None or img.size == 0:
        raise BadImage(f"damaged {head.kind} (cv2 cannot decode it)")
    notes = []
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        notes.append(SCALED_16BIT)
    elif img.dtype != np.uint8:
        raise BadImage(f"{head.kind} of {img.dtype} pixels; only 8- and 16-bit images are read")
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[2] == 4:
        img, note = _alpha(img)
        notes.append(note)
    elif img.shape[2] == 3:
        img = img[..., ::-1]
    elif img.shape[2] != 1:
        raise BadImage(f"{head.kind} with {img.shape[2]} channels; expected grey, RGB or RGBA")
    if img.shape[2] == 3 and (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all():
        img = img[..., :1]
    return Decoded(np.ascontiguousarray(img), tuple(notes))


def decode_file(path: Path) -> Decoded:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BadImage(f"cannot read it ({exc.strerror or type(exc).__name__})") from None
    return decode(data)


def to_channels(img: np.ndarray, channels: int) -> tuple[np.ndarray, str | None]:
    """A decoded image with `channels` (1 grey, 3 RGB), and the conversion made if any."""
    if img.shape[2] == channels:
        return img, None
    if channels == 1:
        return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None], TO_GREY
    return np.repeat(img, 3, axis=2), TO_RGB
