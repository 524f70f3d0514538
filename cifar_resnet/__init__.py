"""cifar-resnet: train ResNets on CIFAR-10/100 and small colour image folders."""

from .config import PRESETS, TrainConfig, resolve_config
from .errors import CifarResnetError

__version__ = "0.1.0"

# Names that need torch are imported on first use, so the command line starts (and its
# --time-budget clock starts) before torch is imported.
_LAZY = {
    "load_model": "checkpoint",
    "create_model": "models",
    "list_models": "models",
    "register_model": "models",
    "fit": "train",
    "RunOptions": "run",
    "fit_seeds": "seeds",
    "load_data": "data",
    "tune": "tuning",
}

__all__ = ["PRESETS", "TrainConfig", "resolve_config", "CifarResnetError", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'cifar_resnet' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
