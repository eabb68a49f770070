"""The torch settings deterministic training needs: applied by train, and by preflight's torch probe process, which then
reads them back from torch.

This module imports nothing heavy (torch only inside functions), so the probe process starts as fast as `import torch`.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from typing import Any

__all__ = [
    "CUBLAS_WORKSPACE_CONFIG",
    "INDUCTOR_DETERMINISTIC_ENV",
    "TF32_OVERRIDE_ENV",
    "apply_torch_determinism",
    "cpu_kernel_class",
    "cpu_vendor",
    "cublas_tf32",
    "set_deterministic_algorithms",
    "set_tf32",
    "tf32_cublas_override",
    "tf32_state",
    "torch_determinism_flags",
]

CUBLAS_WORKSPACE_CONFIG = ":4096:8"
INDUCTOR_DETERMINISTIC_ENV = "TORCHINDUCTOR_DETERMINISTIC"
TF32_OVERRIDE_ENV = "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE"
_INDUCTOR_CONFIG = "torch._inductor.config"


def set_deterministic_algorithms(mode: bool) -> None:
    """What `torch.use_deterministic_algorithms(mode)` does, without importing torch._inductor (about 0.9 s).

    torch 2.13's function sets the eager-mode flag (`torch._C._set_deterministic_algorithms`) and the compiler's
    `torch._inductor.config.deterministic`. The compiler flag only matters to torch.compile. When the compiler's config
    is already imported it is set directly; otherwise `TORCHINDUCTOR_DETERMINISTIC`, which that config reads when it is
    first imported, carries the same value. tests/test_gpu_preflight.py pins torch's function to these two effects.
    """
    import torch

    torch._C._set_deterministic_algorithms(mode, warn_only=False)
    inductor = sys.modules.get(_INDUCTOR_CONFIG)
    if inductor is not None:
        inductor.deterministic = mode  # type: ignore[attr-defined]
    else:
        os.environ[INDUCTOR_DETERMINISTIC_ENV] = "1" if mode else "0"


def apply_torch_determinism(*, deterministic: bool, cuda: bool) -> None:
    """Deterministic kernels on or off, cuDNN benchmarking off, TF32 off when deterministic, and on CUDA the cuBLAS
    workspace setting, which must be in the environment before cuBLAS starts."""
    import torch

    if deterministic and cuda:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE_CONFIG
    set_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = deterministic
    set_tf32(not deterministic)


def _has_fp32_precision_api() -> bool:
    """torch >= 2.9 sets TF32 per backend and operator through `fp32_precision`, and refuses reads of the legacy
    `allow_tf32` flags once the two APIs were mixed; older torch has only the legacy flags."""
    import torch

    return hasattr(torch._C, "_get_fp32_precision_getter") and hasattr(torch.backends.cudnn, "conv")


def set_tf32(allowed: bool) -> None:
    """TF32 on or off for cuBLAS matmuls and cuDNN convolutions and RNNs, through the API this torch has."""
    import torch

    if _has_fp32_precision_api():
        precision = "tf32" if allowed else "ieee"
        torch.backends.cuda.matmul.fp32_precision = precision
        cudnn: Any = torch.backends.cudnn  # a module replaced by an object with conv and rnn (torch's stubs lack them)
        cudnn.conv.fp32_precision = precision
        cudnn.rnn.fp32_precision = precision
    else:
        torch.backends.cuda.matmul.allow_tf32 = allowed
        torch.backends.cudnn.allow_tf32 = allowed


def _fp32_precision(backend: str, op: str) -> str:
    """The precision in force for one operator: its own setting, else its backend's, else the generic one (`none`
    at every level means the build's default, which is IEEE fp32 for matmuls)."""
    import torch

    for level in ((backend, op), (backend, "all"), ("generic", "all")):
        value = str(torch._C._get_fp32_precision_getter(*level))
        if value != "none":
            return value
    return "ieee"


def tf32_state() -> tuple[bool, bool]:
    """(cuBLAS matmuls, cuDNN) may use TF32, as torch reports it through the API it has."""
    import torch

    if _has_fp32_precision_api():
        cudnn = _fp32_precision("cuda", "conv") == "tf32" or _fp32_precision("cuda", "rnn") == "tf32"
        return _fp32_precision("cuda", "matmul") == "tf32", cudnn
    return bool(torch.backends.cuda.matmul.allow_tf32), bool(torch.backends.cudnn.allow_tf32)


def tf32_cublas_override(environ: Mapping[str, str] | None = None) -> bool:
    """`TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1`: torch lets cuBLAS use TF32 whatever the settings say."""
    env = os.environ if environ is None else environ
    return env.get(TF32_OVERRIDE_ENV, "").strip() == "1"


def cublas_tf32(tf32_matmul: bool, override: bool, *, cuda: bool) -> bool:
    """cuBLAS may use TF32 on this device: torch's setting says so, or the override forces it (it acts on CUDA only)."""
    return tf32_matmul or (cuda and override)


def torch_determinism_flags() -> dict[str, bool]:
    """The determinism settings as torch reports them now."""
    import torch

    tf32_matmul, tf32_cudnn = tf32_state()
    return {
        "deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled()),
        "deterministic_warn_only": bool(torch.is_deterministic_algorithms_warn_only_enabled()),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "tf32_matmul": tf32_matmul,
        "tf32_cudnn": tf32_cudnn,
        "tf32_cublas_override": tf32_cublas_override(),
    }


def cpu_vendor(cpuinfo: str) -> str | None:
    """The CPU vendor in /proc/cpuinfo text: x86's `vendor_id` (GenuineIntel, AuthenticAMD) or Arm's `CPU implementer`."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("vendor_id", "CPU implementer") and value.strip():
            return value.strip()
    return None


def cpu_kernel_class(cpuinfo_path: str = "/proc/cpuinfo") -> str:
    """`<vendor>/<instruction set>`: the CPU vendor (MKL picks its code paths by it) and the instruction set torch's CPU
    kernels dispatch to (`torch.backends.cpu.get_cpu_capability()`, e.g. AVX2 or AVX512). Float results on the CPU are
    bit-identical only within one such class: the kernels and BLAS paths, hence the rounding, differ between them."""
    import torch

    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as handle:
            vendor = cpu_vendor(handle.read())
    except OSError:
        vendor = None
    return f"{vendor or platform.processor() or 'unknown'}/{torch.backends.cpu.get_cpu_capability()}"
