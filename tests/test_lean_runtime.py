"""The runtime must stay importable without torch, transformers or web frameworks (users embed it in lean
services; the server's FastAPI and uvicorn are the `serve` extra's)."""

import subprocess
import sys


def test_runtime_imports_neither_torch_nor_transformers() -> None:
    code = (
        "import sys, eaglex.runtime, eaglex.runtime.engine, eaglex.runtime.backends.onnxruntime, eaglex.cli; "
        "import eaglex.runtime.scheduler; "
        "heavy = ('torch', 'transformers', 'fastapi', 'starlette', 'uvicorn'); "
        "heavy = sorted(m for m in heavy if m in sys.modules); "
        "print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"importing the runtime loaded {out}"
