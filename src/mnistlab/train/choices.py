"""The engine's options, by name: torch-free, so that a command line can offer them without loading torch."""

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
