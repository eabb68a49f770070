"""The torch settings deterministic training needs: applied by train, and by preflight's torch probe process, which then
reads them back from torch.

This module imports nothing heavy (torch only inside functions), so the probe process starts as fast as `import torch`.
"""

from __future__ import annotations

import os
import platform
import sys

__all__ = [
    "CUBLAS_WORKSPACE_CONFIG",
    "INDUCTOR_DETERMINISTIC_ENV",
    "apply_torch_determinism",
    "cpu_kernel_class",
    "cpu_vendor",
    "set_deterministic_algorithms",
    "torch_determinism_flags",
]

CUBLAS_WORKSPACE_CONFIG = ":4096:8"
INDUCTOR_DETERMINISTIC_ENV = "TORCHINDUCTOR_DETERMINISTIC"
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
    torch.backends.cuda.matmul.allow_tf32 = not deterministic
    torch.backends.cudnn.allow_tf32 = not deterministic


def torch_determinism_flags() -> dict[str, bool]:
    """The determinism settings as torch reports them now."""
    import torch

    return {
        "deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled()),
        "deterministic_warn_only": bool(torch.is_deterministic_algorithms_warn_only_enabled()),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
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
