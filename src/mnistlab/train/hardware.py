"""What this machine is: its CPU (name, family, model, stepping, vector instructions) or GPU, its cores,
and whether it multiplies bf16 natively. Read from /proc/cpuinfo once per process.

A CPU is named with its family, model and stepping and the vector instruction sets it offers: under KVM
an AMD EPYC of Zen 3 (no AVX-512) and one of Zen 4 (AVX-512 with bf16) both call themselves "AMD EPYC",
and a hypervisor may hide instructions of either. Calibrations and stored compiled steps are kept per
machine, so each is told apart by these.
"""

import functools
import os
import platform
from pathlib import Path

import torch

# The instructions that decide how fast a CPU multiplies matrices (oneDNN's kernels dispatch on them).
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")
NUMBERS = (("family", "cpu family"), ("model", "model"), ("stepping", "stepping"))  # /proc/cpuinfo's names


@functools.cache
def cpu_info() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo ("model name", "cpu family", "flags", ...); empty where
    there is no such file."""
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0]
    except OSError:
        return {}
    fields = (line.partition(":") for line in first.splitlines())
    return {key.strip(): value.strip() for key, _, value in fields}


def cpu_flags() -> set[str]:
    return set(cpu_info().get("flags", "").split())


def cpu_name() -> str:
    """The CPU as figures are labelled with, e.g. "AMD EPYC family 25 model 17 stepping 1"."""
    info = cpu_info()
    if "model name" not in info:
        return platform.processor() or platform.machine()
    numbers = [f"{field} {info[key]}" for field, key in NUMBERS if key in info]
    return " ".join([info["model name"], *numbers])


def cores() -> int:
    """The cores this process may run on (a container's limit, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine(device: torch.device) -> dict:
    """What measurements of this machine hold for: the device and its model, the vector instruction sets
    of a CPU, the cores, and torch's version."""
    common = {"cores": cores(), "torch": torch.__version__}
    if device.type == "cuda":
        return {"device": "cuda", "model": torch.cuda.get_device_name(device), **common}
    isa = " ".join(flag for flag in VECTOR_FLAGS if flag in cpu_flags()) or "none known"
    return {"device": "cpu", "model": cpu_name(), "isa": isa, **common}


def bf16_hardware(device: torch.device) -> str | None:
    """How the device multiplies bf16 matrices natively: "cuda", "amx", "avx512_bf16", or None (it does not)."""
    if device.type == "cuda":
        return "cuda" if torch.cuda.is_bf16_supported() else None
    if "amx_bf16" in cpu_flags():
        return "amx"
    return "avx512_bf16" if "avx512_bf16" in cpu_flags() else None


def instruction_set(device: torch.device) -> str:
    """What generated kernels are written for: the GPU, or the CPU's vector instructions as torch and the
    kernel report them."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} {torch.cuda.get_device_capability(device)}"
    return f"{torch.backends.cpu.get_cpu_capability()} {' '.join(sorted(cpu_flags())) or platform.processor()}"
