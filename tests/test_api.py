"""The README's Python API example runs as written (paths made absolute, run folder in tmp)."""

import re
from pathlib import Path

import pytest
from conftest import CIFAR_JPEG, SHARED

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.skipif(not CIFAR_JPEG.is_dir(), reason="needs ../shared/data/cifar10-jpeg")
def test_readme_api_example_runs(tmp_path, cache_dir, capsys):
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
