"""On a GPU: the CUDA-graph step must compute what the eager step computes.

Trains the seed net for 40 steps from one initialisation twice, eager and graph-captured
(fp32, fixed batches), and prints the largest weight difference and both loss sums.
"""

import torch

from cifar_resnet.config import TrainConfig
from cifar_resnet.models import create_model
from cifar_resnet.train import Stepper, make_optimizer


def run(graph: bool):
    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = create_model("seed").to(dev).to(memory_format=torch.channels_last)
    opt = make_optimizer(model, TrainConfig(), dev)
    stepper = Stepper(model, opt, None, dev, cuda_graph=graph)
    g = torch.Generator(device="cpu").manual_seed(1)
    for i in range(40):
        x = (
            torch.randn(128, 3, 32, 32, generator=g)
            .to(dev)
            .contiguous(memory_format=torch.channels_last)
        )
        y = torch.randint(0, 10, (128,), generator=g).to(dev)
        stepper.step(x, y, 0.1 if i < 20 else 0.01)
    torch.cuda.synchronize()
    return model, float(stepper.loss_sum), stepper.graph is not None


torch.backends.cudnn.deterministic = True
a, la, ga = run(False)
b, lb, gb = run(True)
diff = max(
    (p - q).abs().max().item()
    for p, q in zip(a.state_dict().values(), b.state_dict().values())
    if p.is_floating_point()
)
print(
    f"graph used: eager={ga} graph={gb}; loss sums {la:.6f} vs {lb:.6f}; max weight diff {diff:.3e}"
)
assert gb and not ga and diff < 1e-3 and abs(la - lb) < 1e-3 * abs(la), "graph step differs"
print("gpu selfcheck: OK")
