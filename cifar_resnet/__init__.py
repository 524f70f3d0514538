"""cifar-resnet: train ResNets on CIFAR-10/100 and small colour image folders."""

from .config import PRESETS, TrainConfig, resolve_config
from .errors import CifarResnetError
from .evaluate import load_model
from .models import create_model, list_models, register_model
from .train import evaluate, fit

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "TrainConfig",
    "resolve_config",
    "CifarResnetError",
    "load_model",
    "create_model",
    "list_models",
    "register_model",
    "evaluate",
    "fit",
    "load_data",
]


def load_data(*args, **kwargs):
    """See :func:`cifar_resnet.data.load_data`."""
    from .data import load_data as _load

    return _load(*args, **kwargs)
