"""Property-based tests: whatever a user feeds the config parser or the image decoder, the
answer is a valid value or the package's own one-line error, never another exception."""

import dataclasses
import io
import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cifar_resnet.config import (
    PRESETS,
    TrainConfig,
    config_to_toml,
    load_toml,
    resolve_config,
)
from cifar_resnet.data import decode_image
from cifar_resnet.errors import DataError, UsageError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]

# ----------------------------------------------------------------------------- config

# Values as TOML or argparse can produce them (TOML integers are 64-bit).
scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-3, 400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-2.0, 200.0),
    st.text(max_size=12),
    st.sampled_from(
        [
            "step",
            "multistep",
            "cosine",
            "onecycle",
            "constant",
            "auto",
            "on",
            "off",
            "fp32",
            "bf16",
            "half",
            "dataset",
            "A",
            "B",
            "",
            "val",
            "test",
            "seed",
            "resnet20",
            "paper",
        ]
    ),
    st.booleans(),
    st.none(),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=4),
    st.lists(st.integers(0, 10**6), min_size=1, max_size=3),
    st.dictionaries(st.text(max_size=4), scalars, max_size=2),
)
keys = st.one_of(
    st.sampled_from(FIELDS + ["preset"]),
    st.sampled_from([f.replace("_", "-") for f in FIELDS]),
    st.text(max_size=10),
)
overrides = st.dictionaries(keys, values, max_size=6)


def check_config(preset, file_values, flag_values):
    try:
        name, config = resolve_config(preset, file_values, flag_values)
    except UsageError as e:
        assert str(e) and "\n" not in str(e)
        return None
    assert name in PRESETS and isinstance(config, TrainConfig)
    assert config.validate() is config
    for f in dataclasses.fields(TrainConfig):
        value = getattr(config, f.name)
        assert type(value) is type(getattr(TrainConfig(), f.name)), (f.name, value)
        if isinstance(value, float):
            assert not math.isnan(value), f.name
    return name, config


@SETTINGS
@given(
    preset=st.one_of(st.none(), st.sampled_from(list(PRESETS)), st.text(max_size=8)),
    file_values=st.one_of(st.none(), overrides),
    flag_values=st.one_of(st.none(), overrides),
)
def test_resolve_config_returns_a_valid_config_or_usage_error(preset, file_values, flag_values):
    check_config(preset, file_values, flag_values)


@SETTINGS
@given(
    flag_values=st.fixed_dictionaries(
        {},
        optional={
            "epochs": st.integers(1, 500),
            "lr": st.floats(1e-6, 10.0),
            "momentum": st.floats(0, 1),
            "batch_size": st.integers(1, 4096),
            "schedule": st.sampled_from(["step", "cosine"]),
            "label_smoothing": st.floats(0, 0.99),
            "lr_milestones": st.lists(st.integers(1, 10**6)),
            "nesterov": st.booleans(),
            "time_budget": st.floats(0, 1e6),
            "seed": st.integers(0, 2**62),
            "model": st.sampled_from(["seed", "resnet20", "resnet56b"]),
        },
    ),
    preset=st.sampled_from(list(PRESETS)),
)
def test_valid_configs_round_trip_through_the_run_folders_toml(
    tmp_path_factory, flag_values, preset
):
    resolved = check_config(preset, None, flag_values)
    if resolved is None:
        return
    path = tmp_path_factory.mktemp("toml") / "config.toml"
    path.write_text(config_to_toml(*resolved))
    assert resolve_config(None, load_toml(str(path)), None) == resolved


toml_text = st.one_of(
    st.text(max_size=200),
    st.lists(
        st.tuples(
            keys,
            st.sampled_from(["=", " = ", ":", "= [", "= '", '= "', "=="]),
            st.text(max_size=12),
        ),
        max_size=6,
    ).map(lambda kvs: "\n".join(f"{k}{op}{v}" for k, op, v in kvs)),
    st.builds(
        lambda k, v: f"{k} = {v}\n",
        st.sampled_from(FIELDS),
        st.sampled_from(
            [
                "1",
                "-1",
                "0.5",
                "nan",
                "inf",
                "-inf",
                "true",
                '"x"',
                "[1, 2]",
                "[]",
                "{a = 1}",
                "1979-05-27",
                "1e999",
                "0x10",
                "9" * 30,
            ]
        ),
    ),
)


@SETTINGS
@given(text=st.one_of(toml_text, st.binary(max_size=200).map(bytes)))
def test_load_toml_gives_a_dict_or_usage_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("toml") / "c.toml"
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    else:
        path.write_bytes(text)
    try:
        values = load_toml(str(path))
    except UsageError as e:
        assert str(path) in str(e)
        return
    assert isinstance(values, dict)
    check_config(None, values, None)  # and whatever it holds, resolving it is safe too


def test_load_toml_missing_file_is_usage_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_toml(str(tmp_path / "nope.toml"))


# ----------------------------------------------------------------------------- images

# (format, mode) pairs Pillow writes.
FORMAT_MODES = (
    [("PNG", m) for m in ("L", "P", "RGB", "RGBA", "I;16", "LA", "1")]
    + [("JPEG", m) for m in ("L", "RGB", "CMYK")]
    + [("GIF", m) for m in ("L", "P")]
    + [("BMP", m) for m in ("L", "P", "RGB", "1")]
)


@st.composite
def image_bytes(draw):
    fmt, mode = draw(st.sampled_from(FORMAT_MODES))
    w, h = draw(st.integers(1, 20)), draw(st.integers(1, 20))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        raw = rng.integers(0, 65536, (h, w)).astype("<u2").tobytes()
        img = Image.frombytes("I;16", (w, h), raw)
    else:
        channels = {"L": 1, "P": 1, "1": 1, "LA": 2, "RGB": 3, "RGBA": 4, "CMYK": 4}[mode]
        raw = rng.integers(0, 256, (h, w, channels), dtype=np.uint8).tobytes()
        img = Image.frombytes({"P": "L", "1": "L"}.get(mode, mode), (w, h), raw)
        if mode in ("P", "1"):
            img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return fmt, mode, (w, h), buf.getvalue()


def check_decoded(data, image_size, size=None):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning and the like
            arr = decode_image(data, image_size=image_size)
    except DataError as e:
        assert "\n" not in str(e) and "<image bytes>" in str(e)
        return None
    assert isinstance(arr, np.ndarray) and arr.dtype == np.uint8
    assert arr.ndim == 3 and arr.shape[2] == 3
    if image_size is not None:
        assert arr.shape == (image_size, image_size, 3)
    elif size is not None:
        assert arr.shape == (size[1], size[0], 3)
    return arr


sizes = st.one_of(st.none(), st.integers(1, 16))


@SETTINGS
@given(data=st.binary(max_size=300), image_size=sizes)
def test_decode_arbitrary_bytes(data, image_size):
    check_decoded(data, image_size)


@SETTINGS
@given(image=image_bytes(), image_size=sizes)
def test_decode_valid_images_of_every_mode(image, image_size):
    fmt, mode, size, data = image
    arr = check_decoded(data, image_size, size)
    assert arr is not None, (fmt, mode, size)  # a valid image always decodes


@SETTINGS
@given(
    image=image_bytes(),
    image_size=sizes,
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=4),
)
def test_decode_truncated_or_corrupted_images(image, image_size, cut, flips):
    _, _, size, data = image
    data = bytearray(data[: int(len(data) * cut)] if not flips else data)
    for where, xor in flips:
        if data:
            data[min(int(where * len(data)), len(data) - 1)] ^= xor
    check_decoded(bytes(data), image_size, size if not flips and cut == 1 else None)
