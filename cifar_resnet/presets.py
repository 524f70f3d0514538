"""The presets: recipes as data, each a set of TrainConfig field values over the dataclass
defaults (``config.preset_config`` applies them). Keys starting with ``_`` describe the
preset: ``_for`` (what it is for), ``_takes`` (roughly how long), ``_about`` (the recipe),
``_cpu`` (values applied on top when the run's device is a CPU)."""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "seed": {
        "_for": "reproducing the seed post: its recipe and its line after every epoch",
        "_takes": "300 epochs: about 9 h on a 2-core CPU, about 4 min on an H100",
        "_about": "the seed post exactly: SGD 0.1, momentum 0.9, wd 5e-4, batch 128, "
        "StepLR(50, 0.1) per epoch, 300 epochs, pad-1 crop + flip, normalise with 0.5/0.5",
        "model": "seed",
        "epochs": 300,
        "batch_size": 128,
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "step",
        "lr_step": 50,
        "lr_gamma": 0.1,
        "padding": 1,
        "flip": True,
        "normalize": "half",
    },
    "paper": {
        "_for": "He et al.'s CIFAR-10 numbers for resnet20..110 (Table 6)",
        "_takes": "64,000 steps (164 epochs of CIFAR-10) whatever the model",
        "_about": "He et al. 2016 sec. 4.2: SGD 0.1, momentum 0.9, wd 1e-4, batch 128, lr/10 "
        "at steps 32k and 48k, stop at 64k; pad-4 crop + flip; per-channel mean/std",
        "model": "resnet20",
        "steps": 64000,
        "batch_size": 128,
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "schedule": "multistep",
        "lr_milestones": [32000, 48000],
        "lr_gamma": 0.1,
        "padding": 4,
        "flip": True,
        "normalize": "dataset",
    },
    "fast": {
        "_for": "the most accuracy in little time: try a recipe, a data set, a machine",
        "_takes": "seconds on a GPU; on a CPU 5 epochs, or plan it with --time-budget 5m",
        "_about": "time to accuracy, after airbench (Jordan 2024): whitened residual net, "
        "batch 1024, Nesterov SGD, label smoothing 0.2, warm-up then linear decay, "
        "lookahead, alternating flips, reflect-pad translations, flip+translate TTA; "
        "on a CPU the smaller fastnet-s at batch 128. Tuned on a validation split "
        "(bench/tune_fast.py)",
        "model": "fastnet",
        "epochs": 14,
        "batch_size": 1024,
        "lr": 1.5,  # airbench's 11.5 per 1024 examples with sum loss, for the mean loss
        "momentum": 0.85,
        "nesterov": True,
        "weight_decay": 1.33e-3,  # airbench's 0.0153 per 1024 examples, in L2 units
        "norm_lr_scale": 64.0,  # BatchNorm biases learn 64x faster, decayed no faster
        "label_smoothing": 0.2,
        "schedule": "onecycle",
        "warmup_fraction": 0.23,
        "lr_start_factor": 0.2,
        "lr_end_factor": 0.07,
        "lookahead": 5,
        "whiten_bias_fraction": 0.3,
        "padding": 2,
        "pad_mode": "reflect",
        "flip": True,
        "alt_flip": True,
        "normalize": "dataset",
        "tta": 2,
        "eval_every": 0,
        # A 2-core CPU trains fastnet at ~60 images/s: a small net gets further in minutes.
        # Small batches run faster per image on a CPU (cache-sized activations) and gave more
        # per minute on validation (5-minute budgets: batch 512 83.04%, 256 84.10%, 128
        # 84.82%, 64 84.24%). Progressive resizing (the first half of the steps at 24x24)
        # fits ~1.3x the steps into a budget: validation +0.38 points, 3 seeds, each ahead.
        # Applied when the run's device is a CPU, before --config and flags.
        "_cpu": {
            "model": "fastnet-s",
            "batch_size": 128,
            "lr": 0.5,
            "epochs": 5,
            "tta": 1,
            "early_scale": 0.75,
        },
    },
}
