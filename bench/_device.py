"""What the bench scripts share about the device: waiting for its queued work."""

import torch


def sync(dev: torch.device) -> None:
    """Wait until ``dev`` has run everything queued on it (a CPU runs synchronously), so a
    clock read after this sees the work done."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
