"""The engine's options, by name: torch-free, so that a command line can offer them without loading torch.
One value of `EngineOptions` travels from the command line or the Python API to every stack, and each
machine resolves it for its own hardware (`engine.Engine.create`)."""

from dataclasses import dataclass

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
COMPILES = ("auto", True, False)
ENGINES = ("mnistlab", "keras")  # what trains: mnistlab's own engine, or Keras 3 as the lab wrote it


@dataclass(frozen=True)
class EngineOptions:
    """How to train, as asked: the device, the matmuls' precision, whether to compile the step."""

    device: str = "auto"  # auto: CUDA where PyTorch sees it
    precision: str = "auto"  # auto: bf16 where the hardware multiplies it natively, and it pays
    compile: bool | str = "auto"  # auto: where the stack's steps win the compile back (the calibration's)
    engine: str = "mnistlab"  # or "keras": the lab's presets in Keras 3 (`train.keras_engine`)
