"""The names a user types that must be checked before torch is imported (3-5 s on a CPU
machine): the registered models. :mod:`cifar_resnet.models` registers exactly these (a test
holds them equal), so that ``--model ResNet20`` is refused at once, with the nearest name."""

from __future__ import annotations

import difflib

from .errors import UsageError

MODEL_NAMES = (
    "seed",
    *(f"resnet{d}{b}" for d in (20, 32, 44, 56, 110) for b in ("", "b")),
    "fastnet",
    "fastnet-s",
)


def nearest(name: str, valid: tuple[str, ...] | list[str]) -> str:
    """``; did you mean 'x'?`` for the valid name nearest ``name`` (case and dashes ignored),
    or ``""`` when none is near."""
    folded = {v.lower().replace("-", ""): v for v in valid}
    key = name.lower().replace("-", "").replace("_", "")
    match = difflib.get_close_matches(key, list(folded), n=1, cutoff=0.85)
    return f"; did you mean {folded[match[0]]!r}?" if match else ""


def check_model(name: str) -> None:
    """A UsageError naming the nearest and listing the valid models, for an unknown ``name``."""
    if name not in MODEL_NAMES:
        raise UsageError(
            f"unknown model {name!r}{nearest(name, MODEL_NAMES) or ';'} valid models: "
            f"{', '.join(MODEL_NAMES)}"
        )
