"""Load CIFAR-10, CIFAR-100 or any image folder as uint8 arrays, decoded once and cached, and
choose the images a run trains, validates and tests on.

The modules, each with one job; imports go one way (decode <- cifar <- sources, download <-
cache <- this package; splits uses only sources' dataclasses), and none imports anything of
cifar_resnet but ``cifar_resnet.errors``:

- ``decode``: one image file or its bytes to uint8 RGB (the colour and resize rules), many
  files in a process pool;
- ``cifar``: the official CIFAR python format: archives, bounded member reads, safe unpickling;
- ``sources``: what a dataset spec names (image folder, CIFAR archive or folder) and the
  ``DataBundle`` it decodes to;
- ``download``: fetching the official archives;
- ``cache``: ``load_data``, with the decoded-array cache;
- ``splits``: stratified splits and subsets, channel statistics, ``run_splits`` and
  ``eval_split``.
"""

from .cache import FORMAT_VERSION, load_data
from .cifar import CIFAR_ARCHIVES, CIFAR_SIDE, CifarArchive, RestrictedUnpickler
from .decode import decode_image
from .sources import ArraySplit, DataBundle
from .splits import (
    HALF,
    IMAGENET,
    RunSplits,
    channel_stats,
    eval_split,
    run_splits,
    split_validation,
    splits_for,
    stratified_indices,
    subset,
)

__all__ = [
    "CIFAR_ARCHIVES",
    "CIFAR_SIDE",
    "FORMAT_VERSION",
    "HALF",
    "IMAGENET",
    "ArraySplit",
    "CifarArchive",
    "DataBundle",
    "RestrictedUnpickler",
    "RunSplits",
    "channel_stats",
    "decode_image",
    "eval_split",
    "load_data",
    "run_splits",
    "splits_for",
    "split_validation",
    "stratified_indices",
    "subset",
]
