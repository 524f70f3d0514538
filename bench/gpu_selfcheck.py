"""On a GPU: the CUDA-graph step must compute what the eager step computes.

Trains the seed net for 40 steps from one initialisation twice, eager and graph-captured
(fp32, fixed batches), and prints the largest weight difference and both loss sums. Both runs
are the package's own step (``cifar_resnet.step.train_step``, on a multistep schedule) under
the Runtime ``runtime.resolve_runtime`` makes for the fp32 seed recipe; the eager run turns
its CUDA graph off.

    python bench/gpu_selfcheck.py [--steps 40]
"""

import argparse
import dataclasses

import torch

from cifar_resnet.config import TrainConfig
from cifar_resnet.models import create_model
from cifar_resnet.optim import Schedule, make_optimizer
from cifar_resnet.runtime import resolve_device, resolve_runtime
from cifar_resnet.step import Trainer, train_step


def run(graph: bool, device: str = "cuda", steps: int = 40):
    """The trained model, its loss sum and whether the graph was used."""
    config = TrainConfig(
        steps=steps,
        schedule="multistep",
        lr_milestones=[steps // 2],  # lr 0.1, then 0.01
        precision="fp32",
        channels_last="on",
        compile="off",
    )
    runtime = resolve_runtime(config, resolve_device(device), distributed=False)
    runtime = dataclasses.replace(runtime, cuda_graph=runtime.cuda_graph and graph)
    dev = runtime.device
    torch.manual_seed(0)
    model = create_model("seed").to(dev).to(memory_format=torch.channels_last)
    trainer = Trainer(model, make_optimizer(model, config, dev), runtime, Schedule.of(config, 1))
    g = torch.Generator(device="cpu").manual_seed(1)
    for i in range(steps):
        x = (
            torch.randn(128, 3, 32, 32, generator=g)
            .to(dev)
            .contiguous(memory_format=torch.channels_last)
        )
        y = torch.randint(0, 10, (128,), generator=g).to(dev)
        train_step(trainer, x, y, i)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return model, float(trainer.counters.loss_sum), trainer.graph.graph is not None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=40, help="training steps of each run")
    args = p.parse_args()
    torch.backends.cudnn.deterministic = True
    a, la, ga = run(False, steps=args.steps)
    b, lb, gb = run(True, steps=args.steps)
    diff = max(
        (p - q).abs().max().item()
        for p, q in zip(a.state_dict().values(), b.state_dict().values())
        if p.is_floating_point()
    )
    print(
        f"graph used: eager={ga} graph={gb}; loss sums {la:.6f} vs {lb:.6f}; "
        f"max weight diff {diff:.3e}"
    )
    assert gb and not ga and diff < 1e-3 and abs(la - lb) < 1e-3 * abs(la), "graph step differs"
    print("gpu selfcheck: OK")


if __name__ == "__main__":
    main()
