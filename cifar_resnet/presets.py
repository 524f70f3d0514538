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
        "on a CPU the smaller fastnet-s at batch 256, its values tuned on a validation split "
        "(cifar-resnet tune: BENCHMARKS.md)",
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
        # lr, weight decay, smoothing and batch from a 30-trial `cifar-resnet tune` study on a
        # validation split, adopted after 5 seeds x 5 minutes beat the earlier values (lr 0.5,
        # wd 1.33e-3, smoothing 0.2, batch 128) by +0.43 validation points (margin fixed
        # beforehand: +0.30; BENCHMARKS.md, "Tuning the fast preset's CPU values").
        # Applied when the run's device is a CPU, before --config and flags.
        "_cpu": {
            "model": "fastnet-s",
            "batch_size": 256,
            "lr": 0.65,
            "weight_decay": 1.43e-3,
            "label_smoothing": 0.07,
            "epochs": 5,
            "tta": 1,
            "early_scale": 0.75,
        },
    },
    "resnet18": {
        "_for": "today's usual CIFAR-10 baseline (kuangliu/pytorch-cifar's ResNet-18 recipe)",
        "_takes": "200 epochs of an 11M-parameter net: GPU hours (not measured here); days on "
        "a CPU",
        "_about": "kuangliu/pytorch-cifar main.py (github.com/kuangliu/pytorch-cifar): ResNet-18, "
        "SGD 0.1, momentum 0.9, wd 5e-4, batch 128, cosine over 200 epochs stepped per epoch, "
        "pad-4 crop + flip, mean/std (0.4914, 0.4822, 0.4465)/(0.2023, 0.1994, 0.2010)",
        "model": "resnet18",
        "epochs": 200,
        "batch_size": 128,
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "cosine",  # CosineAnnealingLR(T_max=200), .step() after every epoch
        "lr_epochs": True,
        "padding": 4,
        "flip": True,
        "mean": [0.4914, 0.4822, 0.4465],
        "std": [0.2023, 0.1994, 0.2010],
    },
    "wrn": {
        "_for": "the Wide ResNet paper's recipe (WRN-28-10; any wrn-D-K with --model)",
        "_takes": "200 epochs of a 36M-parameter net: many GPU hours (not measured here); not "
        "for a CPU",
        "_about": "Zagoruyko & Komodakis 2016 sec. 3 (WRN-28-10) as xternalz/WideResNet-pytorch "
        "train.py: SGD 0.1 Nesterov, momentum 0.9, wd 5e-4, batch 128, lr x0.2 at epochs "
        "60/120/160, 200 epochs, pad-4 crop (reflected border) + flip, per-channel mean/std",
        "model": "wrn-28-10",
        "epochs": 200,
        "batch_size": 128,
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5e-4,
        "schedule": "multistep",
        "lr_milestones": [60, 120, 160],  # epochs (lr_epochs)
        "lr_gamma": 0.2,
        "lr_epochs": True,
        "padding": 4,
        "pad_mode": "reflect",  # the paper: "filling missing pixels with reflections"
        "flip": True,
        "mean": [125.3 / 255, 123.0 / 255, 113.9 / 255],  # xternalz train.py's constants
        "std": [63.0 / 255, 62.1 / 255, 66.7 / 255],
    },
}
