"""Pack an image folder's files into one .npz (names + raw bytes), and unpack it again; copy
the airbench peers next to it.

The device machine gets only the repository (64 MiB), not ../shared: bench/gpu_check.sh
unpacks this copy of ../shared/data/cifar10-jpeg there. The bytes are the original JPEGs.
`pack` also copies ../shared/peers/airbench's airbench94.py and airbench94_muon.py (and
their LICENSE) into an `airbench/` folder beside the .npz, for bench/record_holders.py; the
destination must be ignored by git (.gpudata/ is): other people's programs never enter the
repository's tracked files.

    python bench/pack_data.py pack ../shared/data/cifar10-jpeg .gpudata/cifar10-jpeg.npz
    python bench/pack_data.py unpack .gpudata/cifar10-jpeg.npz /tmp/cifar10-jpeg
    python bench/pack_data.py peers ../shared/peers/airbench .gpudata/airbench
"""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT.parent / "shared" / "peers" / "airbench"
PEER_FILES = ("airbench94.py", "airbench94_muon.py", "LICENSE")


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
    if PEERS.is_dir():
        peers(PEERS, out.parent / "airbench")
    else:
        print(f"note: {PEERS} not found; airbench not copied (bench/record_holders.py needs it)")


def unpack(src: Path, root: Path) -> None:
    z = np.load(src)
    data, offsets = z["data"], z["offsets"]
    for i, name in enumerate(z["names"]):
        path = root / name.decode()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[offsets[i] : offsets[i + 1]].tobytes())
    print(f"unpacked {len(z['names'])} files into {root}")


def ignored(path: Path) -> bool:
    """True outside the repository, or where git ignores ``path`` inside it."""
    try:
        path.resolve().relative_to(ROOT)
    except ValueError:
        return True
    check = subprocess.run(["git", "check-ignore", "-q", str(path.resolve())], cwd=ROOT)
    return check.returncode == 0


def peers(src: Path, dst: Path) -> None:
    """Copy the airbench files into ``dst``, which git must ignore."""
    if not ignored(dst):
        sys.exit(f"error: {dst} is not ignored by git; copy the peers into .gpudata/ instead")
    dst.mkdir(parents=True, exist_ok=True)
    for name in PEER_FILES:
        shutil.copyfile(src / name, dst / name)
    print(f"copied {', '.join(PEER_FILES)} from {src} into {dst}")


if __name__ == "__main__":
    commands = {"pack": pack, "unpack": unpack, "peers": peers}
    commands[sys.argv[1]](Path(sys.argv[2]), Path(sys.argv[3]))
