"""Property-based fuzzing (hypothesis) of the parsers that take user input: the search-spec parser
(random YAML text; documents of the spec's own keys with random values of every type; the shipped
spaces with one to three keys edited, deleted or added, which reach the semantic checks), the image
decoder (random bytes, real PNGs/JPEGs truncated, with bytes flipped or spliced in, or with the
header's size or format fields edited) and the storage-path parser (random strings, URIs, `~user`).
Each input either works or raises UserError in one line, never another exception, within the
per-example deadline.

Examples: the `raydigits` profile (CI's default): FUZZ_EXAMPLES = 60 per fuzzer, derandomized (the
same examples on every run), no example database; `--hypothesis-show-statistics` shows how many were
accepted and refused. HYPOTHESIS_PROFILE=long runs 1000 random ones each for a deeper search. What a
fuzzer found stays as an explicit @example."""

from __future__ import annotations

import copy
import os
import struct
import zlib
from datetime import timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, currently_in_test_context, event, example, given, settings
from hypothesis import strategies as st

from raydigits.config import TrainConfig, load_yaml_file
from raydigits.data.decode import Decoded, decode
from raydigits.errors import UserError
from raydigits.spec.kinds import DISTRIBUTIONS
from raydigits.spec.load import SEARCH_SPACES_DIR, parse_spec
from raydigits.spec.model import SCHEDULERS, AuditSpec, Param, Resources, SchedulerSpec, SearchSpec

# the storage-path parser: one import, so that a rename on the paths branch changes one line
from raydigits.storage import Location

parse_location = Location.parse

FUZZ_EXAMPLES = 60
COMMON = dict(
    deadline=timedelta(seconds=5),  # generous: the machine is shared; a hang or a bomb takes far longer
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,  # the same examples on every run: CI is reproducible; `long` explores
    print_blob=True,
)
settings.register_profile("raydigits", max_examples=FUZZ_EXAMPLES, database=None, **COMMON)
settings.register_profile("long", max_examples=1000, **{**COMMON, "derandomize": False})
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "raydigits"))

# ------------------------------------------------------------------ values of every type
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["", "auto", "sgd", "adamw", "cosine", "mnist", "~", "data/mnist", "-1", "1e-3", "null"]),
)
anything = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=8,
)
small_numbers = st.one_of(st.integers(-3, 40), st.floats(-2.0, 50.0), st.sampled_from([1e-4, 1e-2, 0.5]))
config_keys = st.sampled_from(sorted(TrainConfig.model_fields))


def keyed(model, special: dict | None = None):
    """A dict of some of `model`'s keys (and now and then an unknown one), each with a random value."""
    special = special or {}
    fields = {k: st.one_of(special[k], anything) if k in special else anything for k in model.model_fields}
    return st.fixed_dictionaries({}, optional={**fields, "unknown_key": anything})


params = keyed(
    Param,
    {
        "values": st.lists(st.one_of(small_numbers, scalars), min_size=0, max_size=4),
        "distribution": st.sampled_from(sorted(DISTRIBUTIONS)),
        **{k: small_numbers for k in ("min", "max", "q", "mu", "sigma", "value")},
        "when": st.dictionaries(config_keys, st.one_of(scalars, st.lists(scalars, max_size=3)), max_size=2),
        "key": config_keys,
    },
)
spec_documents = keyed(
    SearchSpec,
    {
        "name": st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True),
        "num_samples": st.integers(-1, 5),
        "scheduler": keyed(SchedulerSpec, {"type": st.sampled_from(SCHEDULERS), "max_t": st.integers(0, 5)}),
        "resources": keyed(Resources),
        "audit": keyed(AuditSpec),
        "fixed": st.dictionaries(config_keys, st.one_of(small_numbers, anything), max_size=4),
        "parameters": st.dictionaries(st.one_of(config_keys, st.text(max_size=6)), params, max_size=4),
    },
)


# ------------------------------------------------------------------ the search-spec parser
def parse_yaml_text(text: str, folder: Path):
    """What `launch.py --search-space FILE` does with a file's text: load it, then parse the spec."""
    path = folder / "space.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return parse_spec(load_yaml_file(path), str(path))


def works_or_user_error(fn, *args):
    try:
        got = fn(*args)
    except UserError as exc:
        text = str(exc).strip()
        assert text and "\n" not in text and "\r" not in text, repr(text)  # one line
        if currently_in_test_context():  # --hypothesis-show-statistics counts each side
            event("refused (UserError)")
        return None
    if currently_in_test_context():
        event("accepted")
    return got


def spec_round_trips(text: str, folder: Path) -> None:
    got = works_or_user_error(parse_yaml_text, text, folder)
    if got is not None:
        assert isinstance(got, SearchSpec)
        assert parse_spec(got.to_dict(), saved=True) == got  # what an experiment saves reads back


@given(doc=spec_documents)
# found: a key holding a line break was quoted as written, breaking the one-line message
@example(doc={"scheduler": {"\r": None}})
@example(doc={"name": "x", "parameters": {"lr\nx": {"value": 0.1}}})
@example(doc={"name": "x", "parameters": {"lr": {"value": 0.1, "when": {"optimizer\r": "sgd"}}}})
def test_spec_parser_on_documents_of_its_own_keys(warm, tmp_path, doc):
    spec_round_trips(yaml.safe_dump(doc, allow_unicode=True), tmp_path)


@given(text=st.one_of(st.text(max_size=200), st.builds(yaml.safe_dump, anything)))
@example(text='"\\r": null\n')  # found: the same, through YAML's escapes
def test_spec_parser_on_random_yaml_text(tmp_path, text):
    works_or_user_error(parse_yaml_text, text, tmp_path)


SHIPPED = {p.stem: yaml.safe_load(p.read_text()) for p in sorted(SEARCH_SPACES_DIR.glob("*.yaml"))}
SECTIONS = {"scheduler": SchedulerSpec, "resources": Resources, "audit": AuditSpec}
any_value = st.one_of(small_numbers, scalars, anything)


@st.composite
def edited_shipped_specs(draw):
    """A shipped search space with one to three edits: a key of any section (top level, scheduler,
    resources, audit, fixed, a parameter's field) set to a random value, a parameter added or a key
    deleted. Most documents of random keys fail the structure check; these reach the semantic ones."""
    doc = copy.deepcopy(SHIPPED[draw(st.sampled_from(sorted(SHIPPED)))])
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["top", *SECTIONS, "fixed", "parameter", "new parameter", "delete"]))
        if how == "top":
            doc[draw(st.sampled_from(sorted(SearchSpec.model_fields)))] = draw(any_value)
        elif how in SECTIONS:
            section = doc[how] if isinstance(doc.get(how), dict) else {}
            key = draw(st.sampled_from(sorted(SECTIONS[how].model_fields)))
            section[key] = draw(st.sampled_from(SCHEDULERS)) if key == "type" else draw(any_value)
            doc[how] = section
        elif how == "fixed" and isinstance(doc.get("fixed"), dict):
            doc["fixed"][draw(config_keys)] = draw(any_value)
        elif how == "parameter" and isinstance(doc.get("parameters"), dict) and doc["parameters"]:
            param = doc["parameters"][draw(st.sampled_from(sorted(doc["parameters"])))]
            if isinstance(param, dict):
                field = draw(st.sampled_from(sorted(Param.model_fields)))
                param[field] = draw(params).get(field, draw(any_value))
        elif how == "new parameter" and isinstance(doc.get("parameters"), dict):
            doc["parameters"][draw(config_keys)] = draw(params)
        elif how == "delete" and doc:
            doc.pop(draw(st.sampled_from(sorted(doc))))
    return doc


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """The first semantic check imports torch's model registries (seconds): done once, before the
    deadline applies, by parsing every shipped space."""
    folder = tmp_path_factory.mktemp("warm")
    return {name: parse_yaml_text(yaml.safe_dump(doc), folder) for name, doc in SHIPPED.items()}


def test_every_shipped_space_loads_unedited(warm):
    """The edits start from valid specs (else the fuzzer would only reach the structure checks)."""
    assert sorted(warm) == sorted(SHIPPED) and len(warm) >= 5
    assert all(isinstance(spec, SearchSpec) for spec in warm.values())


@given(doc=edited_shipped_specs())
def test_spec_parser_on_edited_shipped_spaces(warm, tmp_path, doc):
    spec_round_trips(yaml.safe_dump(doc, allow_unicode=True), tmp_path)


# ------------------------------------------------------------------ the image decoder
def _encoded(kind: str, shape: tuple, dtype=np.uint8) -> bytes:
    rng = np.random.default_rng(sum(shape))
    img = rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)
    ok, buf = cv2.imencode(kind, img)
    assert ok
    return buf.tobytes()


VALID = [
    _encoded(".png", (12, 9)),
    _encoded(".png", (7, 8, 3)),
    _encoded(".png", (6, 6, 4)),
    _encoded(".png", (5, 4), np.uint16),
    _encoded(".png", (4, 5, 4), np.uint16),
    _encoded(".jpg", (16, 16)),
    _encoded(".jpg", (9, 17, 3)),
]


def _with_png_size(blob: bytes, width: int, height: int) -> bytes:
    """The PNG with its IHDR declaring width x height, the chunk's CRC fixed so libpng believes it."""
    ihdr = blob[12:16] + struct.pack(">II", width, height) + blob[24:29]
    return blob[:16] + ihdr[4:] + struct.pack(">I", zlib.crc32(ihdr)) + blob[33:]


def _with_png_format(blob: bytes, depth: int, colour: int, interlace: int) -> bytes:
    """The PNG with its IHDR's bit depth, colour type and interlace method replaced (CRC fixed): the
    image data no longer matches what the header says it holds."""
    ihdr = blob[12:16] + blob[16:24] + bytes([depth, colour]) + blob[26:28] + bytes([interlace])
    return blob[:16] + ihdr[4:] + struct.pack(">I", zlib.crc32(ihdr)) + blob[33:]


def _with_jpeg_size(blob: bytes, width: int, height: int) -> bytes:
    sof = blob.find(b"\xff\xc0")
    return blob[: sof + 5] + struct.pack(">HH", height, width) + blob[sof + 9 :]


@st.composite
def image_bytes(draw):
    """Random bytes, or a real image truncated, with bytes flipped or spliced, or a header edited."""
    how = draw(st.sampled_from(["random", "truncated", "flipped", "spliced", "png size", "png format", "jpeg size"]))
    if how == "random":
        prefix = draw(st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8", b"\xff\xd8\xff\xc0"]))
        return prefix + draw(st.binary(max_size=300))
    blob = draw(st.sampled_from(VALID))
    if how == "truncated":
        return blob[: draw(st.integers(0, len(blob)))]
    if how == "flipped":
        out = bytearray(blob)
        for pos in draw(st.lists(st.integers(0, len(blob) - 1), min_size=1, max_size=6)):
            out[pos] = draw(st.integers(0, 255))
        return bytes(out)
    if how == "spliced":
        at = draw(st.integers(0, len(blob)))
        return blob[:at] + draw(st.binary(max_size=40)) + blob[at + draw(st.integers(0, 40)) :]
    size = st.one_of(st.integers(0, 70_000), st.integers(0, 2**32 - 1))
    if how.startswith("png"):
        png = draw(st.sampled_from([b for b in VALID if b.startswith(b"\x89PNG")]))
        if how == "png size":
            return _with_png_size(png, draw(size), draw(size))
        byte = st.one_of(st.sampled_from([0, 1, 2, 3, 4, 6, 8, 16]), st.integers(0, 255))
        return _with_png_format(png, draw(byte), draw(byte), draw(st.sampled_from([0, 1, 2, 255])))
    jpg = draw(st.sampled_from([b for b in VALID if b.startswith(b"\xff\xd8")]))
    return _with_jpeg_size(jpg, draw(st.integers(0, 65535)), draw(st.integers(0, 65535)))


@given(image_bytes())
def test_image_decoder_on_random_and_damaged_bytes(blob):
    got = works_or_user_error(decode, blob)
    if got is not None:
        assert isinstance(got, Decoded) and got.image.dtype == np.uint8
        assert got.image.ndim == 3 and got.image.shape[2] in (1, 3) and got.image.size > 0


def test_every_valid_fuzz_seed_decodes():
    """The fuzzer's seeds are images the decoder reads (else it would only fuzz the refusals)."""
    for blob in VALID:
        assert decode(blob).image.size > 0


# ------------------------------------------------------------------ the storage-path parser
uris = st.builds(
    lambda scheme, sep, rest, query: f"{scheme}{sep}{rest}{query}",
    st.one_of(
        st.sampled_from(["s3", "gs", "gcs", "file", "hdfs", "mock", "abfs", "http", "S3", ""]), st.text(max_size=6)
    ),
    st.sampled_from(["://", ":/", ":", ":///", "//"]),
    st.text(max_size=30),
    st.one_of(st.just(""), st.builds(lambda q: "?" + q, st.text(max_size=30))),
)


@given(st.one_of(st.text(max_size=60), uris, st.builds(lambda t: "~" + t, st.text(max_size=20))))
@example("~0")  # found: `~user` of no such user raised RuntimeError (pathlib's expanduser)
@example("~nosuchuser_raydigits/x")
@example("gopher://a\nb")  # found in review: the text, quoted as written, broke the one-line message
@example("s3://\r")
@example("file://rel\native")
def test_storage_path_parser_on_random_strings_and_uris(text):
    got = works_or_user_error(parse_location, text)
    if got is not None:
        assert str(got)  # a place, printable
