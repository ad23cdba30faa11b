"""mnistlab: the classic MLP study of MNIST, reproduced from one command, measured and explained.

The Python API is the command line's: `run`, `study`, `sweep`, `report`, `calibrate`, `load_run`,
`load_runs`, `presets`, `sweeps` (see `mnistlab.api`). They load on first use, so that
`import mnistlab.spec` stays free of torch.
"""

from mnistlab.version import __version__

API = ("calibrate", "load_run", "load_runs", "presets", "report", "run", "study", "sweep", "sweeps")
__all__ = ["__version__", *API]


def __getattr__(name: str):
    if name in API:
        from mnistlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'mnistlab' has no attribute {name!r}")
