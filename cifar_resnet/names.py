"""The names a user types that must be checked before torch is imported (3-5 s on a CPU
machine): the registered models. :mod:`cifar_resnet.models` registers exactly these (a test
holds them equal), so that ``--model ResNet20`` is refused at once, with the nearest name."""

from __future__ import annotations

import difflib

from .errors import UsageError

MODEL_NAMES = (
    "seed",
    *(f"resnet{d}{b}" for d in (20, 32, 44, 56, 110) for b in ("", "b")),
    "resnet18",
    "resnet34",
    "preact-resnet18",
    "fastnet",
    "fastnet-s",
)
_REGISTERED: set[str] = set()  # models.register_model's names (a user's own models too)
WRN_MAX_DEPTH = 100  # WRN-100-K: 16 blocks a stage; deeper is not a CIFAR baseline
WRN_MAX_WIDTH = 16  # WRN-28-16 already has ~93M parameters


def parse_wrn(name: str) -> tuple[int, int] | None:
    """``(depth, width)`` of a ``wrn-D-K`` name, None for other names; ValueError with the
    reason for a ``wrn-`` name that is not a valid Wide ResNet."""
    if not name.startswith("wrn-"):
        return None
    parts = name[4:].split("-")
    if len(parts) != 2 or not all(p.isdigit() and len(p) <= 4 for p in parts):
        raise ValueError(f"{name!r} is not wrn-D-K (D the depth, K the width), e.g. wrn-28-10")
    depth, width = int(parts[0]), int(parts[1])
    if (depth - 4) % 6 or not 10 <= depth <= WRN_MAX_DEPTH:
        raise ValueError(
            f"a Wide ResNet's depth is 6n+4 from 10 to {WRN_MAX_DEPTH} (16, 22, 28, 40, ...), "
            f"got {depth}"
        )
    if not 1 <= width <= WRN_MAX_WIDTH:
        raise ValueError(f"a Wide ResNet's width is 1 to {WRN_MAX_WIDTH}, got {width}")
    return depth, width


def nearest(name: str, valid: tuple[str, ...] | list[str]) -> str:
    """``; did you mean 'x'?`` for the valid name nearest ``name`` (case and dashes ignored),
    or ``""`` when none is near."""
    folded = {v.lower().replace("-", ""): v for v in valid}
    key = name.lower().replace("-", "").replace("_", "")
    match = difflib.get_close_matches(key, list(folded), n=1, cutoff=0.85)
    return f"; did you mean {folded[match[0]]!r}?" if match else ""


def add_model_name(name: str) -> None:
    """Known from now on: ``models.register_model`` calls it for every model it registers."""
    _REGISTERED.add(name)


def check_model(name: str) -> None:
    """A UsageError naming the nearest and listing the valid models, for an unknown ``name``
    (the built-in names, a valid ``wrn-D-K``, or any name registered in this process)."""
    if name in MODEL_NAMES or name in _REGISTERED:
        return
    try:
        if parse_wrn(name) is not None:
            return
    except ValueError as e:
        raise UsageError(str(e)) from None
    raise UsageError(
        f"unknown model {name!r}{nearest(name, MODEL_NAMES) or ';'} valid models: "
        f"{', '.join(MODEL_NAMES)}, wrn-D-K"
    )
