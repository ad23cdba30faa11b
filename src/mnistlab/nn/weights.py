"""A model's weights on disk: safetensors, never a pickle, Keras-named, with the architecture as metadata."""

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from mnistlab.errors import MnistlabError
from mnistlab.files import write_atomic
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
    """The flat (P,) parameters and architecture of a model written by `save`."""
    try:
        with safe_open(path, framework="pt") as f:
            spec = json.loads(f.metadata()["architecture"])
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (not a dict)
        arch = Architecture(
            spec["inputs"], tuple(spec["hidden"]), spec["classes"], spec["activation"], spec.get("crop", 0)
        )
        parts = [tensors[f"dense_{i}.{part}"].flatten() for i in range(len(arch.shapes)) for part in ("kernel", "bias")]
    except (OSError, SafetensorError, KeyError, ValueError, TypeError) as exc:
        raise MnistlabError(f"{path}: not a mnistlab model ({exc})") from None
    params = torch.cat(parts)
    if params.numel() != arch.num_params:
        raise MnistlabError(f"{path}: {params.numel()} parameters, its architecture needs {arch.num_params}")
    return params, arch
