"""A model's weights on disk: safetensors, never a pickle, Keras-named, with the architecture as metadata."""

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from mnistlab.errors import MnistlabError
from mnistlab.files import regular_file, write_atomic
from mnistlab.nn.mlp import layers
from mnistlab.spec import Architecture


def save(path: Path, params: torch.Tensor, arch: Architecture, extra: dict | None = None) -> None:
    """One member's flat (P,) parameters as safetensors, Keras-named, with the architecture as metadata."""
    tensors = {}
    for index, (kernel, bias) in enumerate(layers(params.detach().cpu().view(1, -1), arch)):
        tensors[f"dense_{index}.kernel"] = kernel[0].contiguous()
        tensors[f"dense_{index}.bias"] = bias[0, 0].contiguous()
    metadata = {"architecture": json.dumps(asdict(arch)), **{k: json.dumps(v) for k, v in (extra or {}).items()}}
    write_atomic(path, _sorted_metadata(safetensors_bytes(tensors, metadata=metadata)))


def _sorted_metadata(blob: bytes) -> bytes:
    """safetensors bytes with the header's metadata in key order. safetensors writes it in a random
    order (a Rust HashMap: safetensors issue 584), so the same weights made different files and checksums;
    the header, reordered, keeps its length, so the tensors' offsets stand."""
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + size])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()  # as safetensors writes it
    assert len(text) <= size, "a reordered header is no longer than the original"
    return blob[:8] + text.ljust(size) + blob[8 + size :]


def load(path: Path) -> tuple[torch.Tensor, Architecture]:
    """The flat (P,) parameters and architecture of a model written by `save`, checked to be that model:
    its architecture one mnistlab builds, every tensor float32 of exactly its layer's shape, no other
    tensor, every weight finite. A file that loads but is not the model would give confident nonsense."""
    try:
        if not regular_file(path):
            raise OSError("not a regular file")
        with safe_open(path, framework="pt") as f:
            arch = Architecture.from_dict(json.loads(f.metadata()["architecture"]))
            expected = _expected_shapes(arch)
            if set(f.keys()) != set(expected):
                raise ValueError(f"tensors {sorted(f.keys())}, where the architecture has {sorted(expected)}")
            tensors = {name: f.get_tensor(name) for name in expected}
    except (OSError, SafetensorError, KeyError, ValueError, TypeError, AttributeError) as exc:
        raise MnistlabError(f"{path}: not a mnistlab model ({exc})") from None
    for name, tensor in tensors.items():
        if tensor.dtype != torch.float32:
            raise MnistlabError(f"{path}: {name} is {str(tensor.dtype).removeprefix('torch.')}, not float32")
        if tuple(tensor.shape) != expected[name]:
            raise MnistlabError(f"{path}: {name} has shape {tuple(tensor.shape)}, its layer needs {expected[name]}")
        if not torch.isfinite(tensor).all():
            raise MnistlabError(f"{path}: {name} holds values that are not finite numbers (NaN or infinity)")
    return torch.cat([tensors[name].flatten() for name in expected]), arch


def _expected_shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, layer by layer, in the order of the flat parameters."""
    shapes = {}
    for index, (n_in, n_out) in enumerate(arch.shapes):
        shapes[f"dense_{index}.kernel"] = (n_in, n_out)
        shapes[f"dense_{index}.bias"] = (n_out,)
    return shapes
