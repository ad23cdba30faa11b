"""The optional parts of mnistlab, and the pip extra that installs each.

The base install trains, reports and reads digits (`data`, `run`, `study`, `report`, `predict`). The rest
comes with an extra: `serve` (FastAPI, uvicorn), `onnx` (export, and predict --onnx), `cluster` (Dask:
local worker processes and clusters), `sweep` (Optuna searches), `notebook` (pandas tables, Jupyter),
`keras` (the lab's own Keras, beside mnistlab's engine), `mlflow` (runs logged to an MLflow server). A
command that needs one that is not installed says which, in one line, before it does anything.
"""

import importlib
import importlib.util

from mnistlab.errors import MnistlabError

EXTRA_OF = {  # module -> the extra that installs it
    "fastapi": "serve",
    "fastapi_offline": "serve",
    "uvicorn": "serve",
    "python_multipart": "serve",
    "onnx": "onnx",
    "onnxscript": "onnx",
    "onnxruntime": "onnx",
    "distributed": "cluster",
    "optuna": "sweep",
    "pandas": "notebook",
    "keras": "keras",
    "mlflow": "mlflow",
}


class MissingExtra(MnistlabError):
    """A command needs a package of an extra that is not installed."""


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require(purpose: str, *modules: str) -> None:
    """Raise MissingExtra naming the extra to install, unless every module is there."""
    missing = [module for module in modules if not installed(module)]
    if missing:
        extra = EXTRA_OF[missing[0]]
        raise MissingExtra(
            f"{purpose} needs {', '.join(missing)}, which the base install leaves out: "
            f"pip install 'mnistlab[{extra}]' (in a checkout: pip install -e '.[{extra}]')"
        )
