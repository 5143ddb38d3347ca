"""Images decoded as they are, by the one decoder (`raydigits/data/decode.py`) that both `prepare`
(image folders) and `export --images` use: transparency, 16-bit, colour over every image, and
empty, truncated, foreign and oversized files refused per file (skipped with --skip-corrupt,
counted and named in the summary)."""

from __future__ import annotations

import json
import struct
import zlib

import cv2
import numpy as np
import pytest

from raydigits import cli
from raydigits.data import load_dataset, prepare_folder
from raydigits.data.decode import ALPHA_AS_INTENSITY, ALPHA_COMPOSITED, ALPHA_DROPPED, MAX_PIXELS, BadImage, decode
from raydigits.errors import UserError


def png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def jpeg(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_declaring(width: int, height: int) -> bytes:
    """A well-formed PNG header (grey, 8-bit) declaring width x height, with one row of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (min(width, 4096) + 1))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real 8x8 JPEG whose frame header is edited to declare width x height."""
    blob = bytearray(jpeg(np.zeros((8, 8), np.uint8)))
    sof = blob.index(b"\xff\xc0")
    blob[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(blob)


@pytest.fixture(scope="module")
def digit(mnist):
    return mnist.images["train"][0, :, :, 0]  # a real 5: white on black


# ---------------------------------------------------------------- the rules, on bytes
def test_digit_only_in_the_alpha_channel_becomes_a_white_digit(digit):
    """Black strokes on a transparent canvas (a drawing app's export): compositing onto black would
    give an all-black image; the alpha channel is the digit."""
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 3] = digit
    got = decode(png(rgba))
    assert got.image.shape == (28, 28, 1) and np.array_equal(got.image[..., 0], digit)
    rgba[..., :3] = 255  # transparent pixels stored white, visible strokes black: still one ink
    rgba[digit > 0, :3] = 0
    assert np.array_equal(decode(png(rgba)).image[..., 0], digit)


def test_transparency_in_a_many_coloured_image_is_composited_onto_black(digit):
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 200, 100, digit  # BGR: red = the digit
    rgba[..., 3] = 128
    got = decode(png(rgba))
    expect = (np.dstack([digit, np.full_like(digit, 100), np.full_like(digit, 200)]).astype(int) * 128 + 127) // 255
    assert got.image.shape == (28, 28, 3) and np.array_equal(got.image, expect)
    rgba[..., 3] = 255  # opaque everywhere: the alpha channel is dropped, the colours kept
    assert np.array_equal(decode(png(rgba)).image, rgba[..., 2::-1])


def test_16_bit_images_are_scaled_over_their_full_range():
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    got = decode(png(values))
    assert got.image.dtype == np.uint8
    assert np.array_equal(got.image[..., 0], np.rint(values / 257).astype(np.uint8))  # not values >> 8


def test_grey_content_in_colour_files_is_grey_and_colour_is_kept(digit):
    assert decode(jpeg(np.dstack([digit] * 3))).image.shape == (28, 28, 1)
    colour = np.dstack([digit, digit, digit // 2])  # BGR
    got = decode(png(colour)).image
    assert got.shape == (28, 28, 3) and np.array_equal(got, colour[..., ::-1])


@pytest.mark.parametrize(
    "case",
    ["empty", "png cut in its header", "png cut in its data", "png without IEND", "jpeg cut in its data",
     "jpeg cut in its header", "jpeg without its end marker", "gif", "text", "png 0x0",
     "png bomb", "jpeg bomb"],
)  # fmt: skip
def test_unusable_files_are_refused_with_the_reason(case, digit):
    good_png, good_jpeg = png(digit), jpeg(digit)
    blob, words = {
        "empty": (b"", "empty file (0 bytes)"),
        "png cut in its header": (good_png[:20], "truncated or damaged PNG"),
        "png cut in its data": (good_png[: len(good_png) // 2], "truncated PNG"),
        "png without IEND": (good_png[:-12], "truncated PNG (no IEND chunk)"),
        "jpeg cut in its data": (good_jpeg[: len(good_jpeg) - 40], "truncated JPEG (no end-of-image marker"),
        "jpeg cut in its header": (good_jpeg[:100], "truncated JPEG (no image data"),
        "jpeg without its end marker": (good_jpeg[:-2], "truncated JPEG"),
        "gif": (b"GIF89a" + bytes(40), "not a PNG or JPEG (starts with b'GIF89a"),
        "text": (b"hello", "not a PNG or JPEG"),
        "png 0x0": (png_declaring(0, 0), "declares 0x0 pixels"),
        "png bomb": (png_declaring(100_000, 100_000), f"declares 100000x100000 pixels, over the {MAX_PIXELS:,}"),
        "jpeg bomb": (jpeg_declaring(65_000, 65_000), "JPEG header declares 65000x65000 pixels"),
    }[case]
    with pytest.raises(BadImage, match=".") as err:
        decode(blob)
    assert words in str(err.value) and isinstance(err.value, UserError)


def test_a_bomb_is_refused_from_its_header_without_decoding(monkeypatch):
    def no_decoding(*a, **k):
        raise AssertionError("cv2.imdecode called on a decompression bomb")

    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    for blob in (png_declaring(9000, 9000), jpeg_declaring(9000, 9000)):  # 81 Mpx, cv2 would try
        with pytest.raises(BadImage, match="over the"):
            decode(blob)


# ---------------------------------------------------------------- prepare
def _folder(root, digit, n=3):
    for split in ("train", "val"):
        for cname in ("a", "b"):
            (root / split / cname).mkdir(parents=True)
            for i in range(n):
                (root / split / cname / f"g{i}.png").write_bytes(png(digit))
    return root


BAD_FILES = {
    "empty.png": b"",
    "cut.png": None,  # a real PNG cut in half
    "bomb.png": png_declaring(100_000, 100_000),
    "notes.jpg": b"this is text",
}


WHY = {  # each bad file's reason, as the one line gives it
    "empty.png": "empty file (0 bytes)",
    "cut.png": "truncated PNG",
    "bomb.png": f"PNG header declares 100000x100000 pixels, over the {MAX_PIXELS:,}-pixel limit",
    "notes.jpg": "not a PNG or JPEG",
}


def _bad_files(folder, digit, names=tuple(BAD_FILES)):
    for name in names:
        blob = BAD_FILES[name]
        (folder / name).write_bytes(png(digit)[:150] if blob is None else blob)


def test_prepare_refuses_or_skips_each_unusable_file_and_names_it(tmp_path, digit, capsys):
    root = _folder(tmp_path / "imgs", digit)
    _bad_files(root / "val" / "b", digit)
    with pytest.raises(
        UserError, match=r"bomb\.png: PNG header declares 100000x100000 .* \(use --skip-corrupt to skip it\)"
    ):
        prepare_folder(root, tmp_path / "s1", size=28)
    assert not (tmp_path / "s1").exists()
    manifest = prepare_folder(root, tmp_path / "s2", size=28, skip_corrupt=True)
    out = capsys.readouterr().out
    assert sorted(manifest["splits"]["val"]["skipped"]) == sorted(f"b/{n}" for n in BAD_FILES)
    assert manifest["splits"]["val"]["count"] == 6
    assert "val/: 6 images; skipped 4 unreadable: " in out
    for name, why in (("empty.png", "empty file"), ("cut.png", "truncated PNG"), ("bomb.png", "100000x100000")):
        assert f"b/{name} (" in out and why in out


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_prepare_cli_refuses_a_lone_unusable_file_unless_told_to_skip_it(tmp_path, digit, capsys, name):
    """Each kind alone (a 0-byte PNG, a cut one, a bomb, text named .jpg), through the CLI's flag:
    without --skip-corrupt one line naming the file and why, exit 2, no store; with it the store is
    written without that file, which the manifest and the summary name."""
    from raydigits.data.__main__ import main

    root = _folder(tmp_path / "imgs", digit)
    _bad_files(root / "train" / "a", digit, [name])
    args = ["prepare", "--folder", str(root), "--size", "28", "--out"]
    assert main([*args, str(tmp_path / "s1")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {root / 'train' / 'a' / name}: {WHY[name]}"), err
    assert err[0].endswith("(use --skip-corrupt to skip it)") and not (tmp_path / "s1").exists()
    assert main([*args, str(tmp_path / "s2"), "--skip-corrupt"]) == 0
    assert json.loads((tmp_path / "s2" / "manifest.json").read_text())["splits"]["train"]["skipped"] == [f"a/{name}"]
    assert f"train/: 6 images; skipped 1 unreadable: a/{name} ({WHY[name]}" in capsys.readouterr().out


def test_prepare_stores_alpha_digits_and_16_bit_images_as_they_look(tmp_path, digit, capsys):
    root = _folder(tmp_path / "imgs", digit)
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 3] = digit
    (root / "train" / "a" / "g0.png").write_bytes(png(rgba))
    deep = digit.astype(np.uint16) * 256 + 255  # neither its high byte nor its low byte is the answer
    (root / "train" / "a" / "g1.png").write_bytes(png(deep))
    prepare_folder(root, tmp_path / "s", size=28)
    ds = load_dataset(tmp_path / "s")
    assert ds.images["train"].shape[-1] == 1
    assert np.array_equal(ds.images["train"][0, ..., 0], digit)  # not all black
    assert np.array_equal(ds.images["train"][1, ..., 0], np.rint(deep / 257))  # scaled: v * 255 / 65535
    out = capsys.readouterr().out
    assert "1 16-bit image(s) scaled to 8-bit" in out and "1 image(s) drawn in one colour" in out


def test_one_colour_image_after_many_grey_ones_makes_the_store_colour(tmp_path, digit, capsys):
    root = _folder(tmp_path / "imgs", digit, n=101)  # 202 grey training images come first
    colour = np.dstack([digit, digit, digit // 2])
    (root / "val" / "b" / "zz.png").write_bytes(png(colour))
    prepare_folder(root, tmp_path / "s", size=28)
    ds = load_dataset(tmp_path / "s")
    assert ds.images["train"].shape[-1] == 3 and np.array_equal(ds.images["val"][-1], colour[..., ::-1])
    out = capsys.readouterr().out
    assert "channels: 3 (RGB: 1 of 405 images are colour)" in out
    assert "train/: 202 images; 202 grey image(s) copied into 3 equal channels" in out
    prepare_folder(root, tmp_path / "grey", size=28, channels=1, force=True)
    assert "1 colour image(s) converted to grey" in capsys.readouterr().out


# ---------------------------------------------------------------- export --images
def test_export_images_decodes_as_prepare_does(tmp_path, small_mnist, digit, capsys):
    from support.helpers import REPO, tiny_cfg

    from raydigits.experiment.completion import write_marker
    from raydigits.experiment.layout import SPEC_FILE
    from raydigits.inference import save_models
    from raydigits.trainer import Trainer

    exp = tmp_path / "exp"  # final/ marked complete, for an experiment of no trials
    (exp / "final").mkdir(parents=True)
    (exp / SPEC_FILE).write_text((REPO / "search_spaces" / "smoke.yaml").read_text())
    save_models(exp / "final", Trainer(tiny_cfg(epochs=1), small_mnist).state_dict(), [28, 28, 1])
    write_marker(exp / "final", [])
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": []}')  # Tune's, no trials
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 3] = digit
    (imgs / "alpha.png").write_bytes(png(rgba))
    (imgs / "colour.png").write_bytes(png(np.dstack([digit, digit, digit // 2])))
    (imgs / "deep.png").write_bytes(png(digit.astype(np.uint16) * 257))
    _bad_files(imgs, digit)
    assert cli.main(["export", str(exp), "--images", str(imgs)]) == 2
    err = capsys.readouterr().err
    assert "bomb.png: PNG header declares 100000x100000" in err and len(err.strip().splitlines()) == 1, err
    out_file = tmp_path / "pre.csv"
    assert cli.main(["export", str(exp), "--images", str(imgs), "--out", str(out_file), "--skip-corrupt"]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "3 predictions (the model takes 1 channel(s))" in out
    assert "skipped 4 unreadable: " in out and "empty.png (empty file (0 bytes))" in out
    assert "1 colour image(s) converted to grey" in out and "1 16-bit image(s) scaled to 8-bit" in out
    assert "1 image(s) drawn in one colour on a transparent canvas (alpha used as the intensity)" in out
    assert out_file.read_text().count("\n") == 4  # header + 3
    for name in BAD_FILES:  # each kind alone (a 0-byte PNG first): refused in one line naming it
        for other in BAD_FILES:
            (imgs / other).unlink(missing_ok=True)
        _bad_files(imgs, digit, [name])
        assert cli.main(["export", str(exp), "--images", str(imgs), "--out", str(tmp_path / "x.csv")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {imgs / name}: {WHY[name]}"), err
        assert err[0].endswith("(use --skip-corrupt to skip it)") and not (tmp_path / "x.csv").exists()


def test_damaged_jpeg_segments_are_refused_with_the_reason_and_an_empty_one_is_legal(digit):
    """The JPEG marker walk: no marker where one must be, a segment length under 2, image data before
    any frame header, a run of fill bytes to the end of the file, a file cut inside its frame header:
    each a BadImage naming the damage, never another exception; an empty APP segment (length 2,
    legal) is skipped."""
    good = jpeg(digit)
    sof = good.index(b"\xff\xc0")
    for blob, words in [
        (b"\xff\xd8" + bytes(10), "damaged JPEG (no marker at byte 2)"),
        (b"\xff\xd8\xff\xe0\x00\x01" + bytes(10), "damaged JPEG (segment of length 1 at byte 4)"),
        (b"\xff\xd8\xff\xda\x00\x08" + bytes(10), "truncated or damaged JPEG (no frame header)"),  # data first
        (b"\xff\xd8" + b"\xff" * 6, "JPEG"),
        (good[: sof + 6], "JPEG"),  # cut inside the frame header's size fields
        (good[: sof + 9], "truncated JPEG (no image data after its header)"),  # cut just after them
    ]:
        with pytest.raises(BadImage) as err:
            decode(blob)
        assert words in str(err.value)
    assert np.array_equal(decode(good[:2] + b"\xff\xe1\x00\x02" + good[2:]).image, decode(good).image)


def test_a_jpeg_cut_in_its_data_is_refused_even_with_an_end_marker_in_its_header(digit):
    """An EXIF thumbnail (in APP1) ends with its own end-of-image marker: only one after the image
    data shows that the file is whole."""
    good = jpeg(digit)
    app1 = b"Exif\x00\x00" + jpeg(np.zeros((8, 8), np.uint8))  # a thumbnail, FF D9 at its end
    blob = good[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + good[2:]
    assert decode(blob).image.shape == (28, 28, 1)  # whole, with a thumbnail
    with pytest.raises(BadImage, match="truncated JPEG"):
        decode(blob[:-40])


def test_the_transparency_rule_at_its_edges():
    """Fully transparent: black. One visible pixel: one ink. A pixel at alpha 1 is visible (its colour
    counts). Compositing rounds to nearest (254 at alpha 128 is 127.5 - 0.002: 127) and stays uint8.
    What was done is noted (the summaries count it)."""
    rgba = np.zeros((4, 4, 4), np.uint8)
    got = decode(png(rgba))
    assert got.image.shape == (4, 4, 1) and not got.image.any() and got.notes == (ALPHA_AS_INTENSITY,)
    rgba[1, 2] = (0, 0, 200, 90)
    got = decode(png(rgba))
    assert got.notes == (ALPHA_AS_INTENSITY,) and got.image[1, 2, 0] == 90 and got.image.sum() == 90
    rgba[0, 0] = (0, 255, 0, 1)  # barely visible, another colour
    assert decode(png(rgba)).notes == (ALPHA_COMPOSITED,)
    rgba[3, 3] = (0, 0, 254, 128)
    got = decode(png(rgba))
    assert got.notes == (ALPHA_COMPOSITED,) and got.image.dtype == np.uint8
    assert got.image[3, 3].tolist() == [127, 0, 0] and got.image[0, 0].tolist() == [0, 1, 0]
    rgba[..., 3] = 255
    assert decode(png(rgba)).notes == (ALPHA_DROPPED,)
