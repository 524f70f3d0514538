"""``cifar-resnet models`` and ``cifar-resnet presets``: what there is to choose from."""

from __future__ import annotations

import argparse

from ..config import PRESETS, preset_config


def add_parsers(subparsers) -> None:
    subparsers.add_parser(
        "models",
        help="list the models",
        description="List the models `train --model` takes: name, parameters (10 classes) and "
        "what each is; the ones whose published weights `--init-from` and `evaluate "
        "--weights` load say so.",
    ).set_defaults(func=models)
    subparsers.add_parser(
        "presets",
        help="list the presets with their recipes",
        description="List the recipes `train --preset` starts from: what each is for, roughly "
        "how long it takes, and its values (a flag given to `train` replaces a value).",
    ).set_defaults(func=presets)


def models(args: argparse.Namespace) -> int:
    from ..models import (
        PUBLISHED_WEIGHTS,
        WRN_ABOUT,
        WRN_EXAMPLES,
        count_parameters,
        create_model,
        list_models,
    )

    for name, about in list_models().items():
        print(f"{name:<15} {count_parameters(create_model(name)):>10,} params  {about}")
        if name in PUBLISHED_WEIGHTS:
            print(f"{'':<34}loads published weights: {PUBLISHED_WEIGHTS[name]}")
    for name in WRN_EXAMPLES:
        print(f"{name:<15} {count_parameters(create_model(name)):>10,} params  {WRN_ABOUT}")
    return 0


def presets(args: argparse.Namespace) -> int:
    for name, values in PRESETS.items():
        print(f"{name}: for {values['_for']}")
        print(f"   takes: {values['_takes']}")
        print(f"   recipe: {values['_about']}")
        config = preset_config(name)
        print("   " + ", ".join(f"{k}={getattr(config, k)!r}" for k in values if k[0] != "_"))
        if "_cpu" in values:
            cpu = ", ".join(f"{k}={v!r}" for k, v in values["_cpu"].items())
            print(f"   on a CPU: {cpu}")
    return 0
