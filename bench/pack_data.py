"""Pack an image folder's files into one .npz (names + raw bytes), and unpack it again.

The device machine gets only the repository (64 MiB), not ../shared: bench/gpu_check.sh
unpacks this copy of ../shared/data/cifar10-jpeg there. The bytes are the original JPEGs.

    python bench/pack_data.py pack ../shared/data/cifar10-jpeg .gpudata/cifar10-jpeg.npz
    python bench/pack_data.py unpack .gpudata/cifar10-jpeg.npz /tmp/cifar10-jpeg
"""

import sys
from pathlib import Path

import numpy as np


def pack(root: Path, out: Path) -> None:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    blobs = [p.read_bytes() for p in files]
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        out,
        names=np.array([str(p.relative_to(root)).encode() for p in files]),
        offsets=offsets,
        data=np.frombuffer(b"".join(blobs), dtype=np.uint8),
    )
    print(f"packed {len(files)} files, {offsets[-1]} bytes, into {out}")


def unpack(src: Path, root: Path) -> None:
    z = np.load(src)
    data, offsets = z["data"], z["offsets"]
    for i, name in enumerate(z["names"]):
        path = root / name.decode()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[offsets[i] : offsets[i + 1]].tobytes())
    print(f"unpacked {len(z['names'])} files into {root}")


if __name__ == "__main__":
    {"pack": pack, "unpack": unpack}[sys.argv[1]](Path(sys.argv[2]), Path(sys.argv[3]))
