"""The README's Quickstart runs as written on the backend under test (each CI pass: TensorFlow, JAX, PyTorch)."""

import os
import pathlib
import re
import sys
from conftest import run_bounded

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_readme_quickstart_runs_as_written_on_this_backend(tmp_path):
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme.split("## Quickstart", 1)[1], re.S).group(1)
    assert len(code.strip().splitlines()) <= 20
    check = ("\nrestored = keras.models.load_model('plain.keras')\n"  # the saved plain model is θ
             "print(float(np.abs(restored.predict(x, verbose=0) - model.predict(x, verbose=0)).max()))\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    out = run_bounded([sys.executable, "-c", code + check], capture_output=True, text=True, env=env,
                         cwd=tmp_path)  # a bound for hangs only; it takes seconds
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    # What the comment says the line prints, as printed.
    assert lines[-2] == "[0.1, 0.1, 0.08, 0.08, 0.06, 0.06, 0.04, 0.04, 0.02, 0.02]"
    assert float(lines[-1]) == 0.0
