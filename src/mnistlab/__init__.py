"""mnistlab: the classic MLP study of MNIST, reproduced from one command, measured and explained.

The Python API is the command line's: `run`, `study`, `sweep`, `report`, `calibrate`, `load_run`,
`load_study`, `presets`, `sweeps` (see `mnistlab.api`), giving back `Run`, `Study` and `SweepResults`
(see `mnistlab.results`). They load on first use, so that `import mnistlab` and `import mnistlab.spec`
stay free of torch.
"""

from mnistlab.errors import ConfigError, MnistlabError
from mnistlab.version import __version__

API = ("calibrate", "load_run", "load_study", "presets", "report", "run", "study", "sweep", "sweeps")
RESULTS = ("Run", "Study", "SweepResults")
__all__ = ["ConfigError", "MnistlabError", "__version__", *API, *RESULTS]


def __getattr__(name: str):
    if name in API:
        from mnistlab import api

        return getattr(api, name)
    if name in RESULTS:
        from mnistlab import results

        return getattr(results, name)
    raise AttributeError(f"module 'mnistlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
