"""Device and precision: bf16/fp16/fp32 by what the device supports, CUDA attention."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from tasks.core.errors import StageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Precision:
    device: str  # cuda | cpu
    dtype: str  # bf16 | fp16 | fp32

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast for inference, the same mixed precision the Trainer uses in training."""
        import torch

        if self.dtype == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.dtype == "bf16" else torch.float16
        return torch.autocast(device_type=self.device, dtype=dtype)


def cpu_supports_bf16() -> bool:
    """True when the CPU does bf16 natively (AVX512-BF16 or AMX). Not oneDNN's answer: it
    says yes on plain AVX512, where bf16 is emulated and slower (bench/RESULTS.md, bf16
    autocast on a CPU without native bf16)."""
    import torch

    native = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu, private
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in native)


def configure_cuda_attention() -> None:
    """Keep PyTorch's SDPA off the cuDNN backend: it builds a graph per new sequence length,
    slowing bf16 training (bench/gpu_check.sh times each backend)."""
    import torch

    torch.backends.cuda.enable_cudnn_sdp(False)


def choose_precision(requested: str = "auto") -> Precision:
    """CUDA (bf16 if supported, else fp16), else CPU bf16 when native, else fp32;
    ``requested`` forces one (StageError when unavailable)."""
    import torch

    if torch.cuda.is_available():
        configure_cuda_attention()
        bf16_ok = torch.cuda.is_bf16_supported()
        if requested == "auto":
            return Precision("cuda", "bf16" if bf16_ok else "fp16")
        if requested == "bf16" and not bf16_ok:
            raise StageError("train.precision: bf16 is not supported by this GPU (use fp16)")
        return Precision("cuda", requested)
    if requested == "auto":
        return Precision("cpu", "bf16" if cpu_supports_bf16() else "fp32")
    if requested == "fp16":
        raise StageError("train.precision: fp16 needs a CUDA GPU (on CPU use bf16 or fp32)")
    return Precision("cpu", requested)
