"""The README's Python API example runs as written (paths made absolute, run folder in tmp)."""

import re
from pathlib import Path

import pytest
from conftest import CIFAR_JPEG, SHARED

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.skipif(not CIFAR_JPEG.is_dir(), reason="needs ../shared/data/cifar10-jpeg")
def test_readme_api_example_runs(tmp_path, cifar_jpeg, capsys):
    text = README.read_text()
    block = re.search(r"## Python API\n\n```python\n(.*?)```", text, re.S).group(1)
    code = block.replace("../shared", str(SHARED)).replace(
        "runs/api-demo", str(tmp_path / "api-demo")
    )
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    accuracy = float(out[0].split()[0])
    assert 0 <= accuracy <= 100 and out[0].split()[1].endswith(".pt")
    assert "'class':" in out[1] and "'probability':" in out[1]


def test_package_import_defers_torch():
    """`import cifar_resnet` (and so the command line, and its --time-budget clock) starts
    without torch; the API names import it on first use."""
    import subprocess
    import sys

    code = (
        "import sys, cifar_resnet, cifar_resnet.cli\n"
        "assert 'torch' not in sys.modules, 'torch imported eagerly'\n"
        "from cifar_resnet import create_model, fit, load_data, load_model\n"
        "assert 'torch' in sys.modules and fit.__module__ == 'cifar_resnet.train'\n"
        "assert callable(create_model) and callable(load_data) and callable(load_model)\n"
        "from cifar_resnet import fit_seeds\n"
        "assert fit_seeds.__module__ == 'cifar_resnet.seeds'\n"
        "assert set(cifar_resnet.__all__) <= set(dir(cifar_resnet))\n"
        "try:\n    cifar_resnet.no_such_name\nexcept AttributeError:\n    pass\n"
        "else:\n    raise SystemExit('no AttributeError')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
