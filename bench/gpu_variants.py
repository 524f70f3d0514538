"""On a GPU: time the training step of the seed net (batch 128) in each mode, and list the
kernels an eager step spends its time in. Prints ms/step and images/s per variant.

    python bench/gpu_variants.py
"""

import time

import torch

from cifar_resnet.config import TrainConfig
from cifar_resnet.models import create_model
from cifar_resnet.train import Stepper, make_optimizer

dev = torch.device("cuda")
torch.backends.cudnn.benchmark = True
print(torch.cuda.get_device_name(), "torch", torch.__version__)


def stepper(amp, cl, comp, graph):
    torch.manual_seed(0)
    model = create_model("seed").to(dev)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    return Stepper(
        model, make_optimizer(model, TrainConfig(), dev), amp, dev, compile=comp, cuda_graph=graph
    )


results = {}
x = torch.randn(128, 3, 32, 32, device=dev)
y = torch.randint(0, 10, (128,), device=dev)
for amp, cl, comp, graph in [
    (torch.bfloat16, True, False, True),
    (torch.bfloat16, False, False, True),
    (None, True, False, True),
    (torch.bfloat16, True, False, False),
    (torch.bfloat16, True, True, True),
]:
    name = (
        f"{'bf16' if amp else 'fp32'} {'channels_last' if cl else 'contiguous'}"
        f"{' compile' if comp else ''}{' graph' if graph else ' eager'}"
    )
    try:
        s = stepper(amp, cl, comp, graph)
        xx = x.contiguous(memory_format=torch.channels_last) if cl else x
        t = time.perf_counter()
        for _ in range(20):
            s.step(xx, y, 0.1)
        torch.cuda.synchronize()
        warm = time.perf_counter() - t
        t = time.perf_counter()
        n = 400
        for _ in range(n):
            s.step(xx, y, 0.1)
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t) / n
        if graph and amp is not None:
            results[(cl, comp)] = dt
        print(
            f"{name:<40} {dt * 1e3:7.3f} ms/step {128 / dt:9.0f} img/s (warm-up {warm:.1f}s, "
            f"graph={s.graph is not None})",
            flush=True,
        )
    except Exception as e:  # noqa: BLE001 - report and go on to the next variant
        print(f"{name:<40} failed: {str(e).splitlines()[0][:150]}", flush=True)

(cl, comp), best = min(results.items(), key=lambda kv: kv[1])
default = results.get((True, False), best)
print(
    f"best bf16 graph variant: channels_last={cl} compile={comp}, {default / best:.2f}x the default"
)
with open("/tmp/best_flags", "w") as f:
    f.write(f"--channels-last {'on' if cl else 'off'} --compile {'on' if comp else 'off'}\n")
with open("/tmp/best_speedup", "w") as f:
    f.write(f"{default / best:.3f}\n")

s = stepper(torch.bfloat16, True, False, False)
xx = x.contiguous(memory_format=torch.channels_last)
for _ in range(5):
    s.step(xx, y, 0.1)
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
    for _ in range(10):
        s.step(xx, y, 0.1)
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60))
