"""Dynamic int8 quantization for CPU inference (``predict --quantize``).

``quantize_dynamic`` makes every ``nn.Linear`` int8 (activations quantized per batch at run
time); no calibration, no retraining. Speed and accuracy: bench/RESULTS.md, quantize.
"""

from __future__ import annotations

import warnings
from typing import Any

from tasks.core.errors import StageError


def quantize_model(model: Any) -> Any:
    """An int8 dynamic-quantized copy of the torch ``model`` (fp32, eval mode) for CPU;
    StageError when this torch build has no int8 CPU engine."""
    import torch
    from torch.ao.quantization import quantize_dynamic

    engines = torch.backends.quantized.supported_engines
    if not any(engine in engines for engine in ("x86", "fbgemm", "qnnpack")):
        raise StageError(f"--quantize: this torch build has no int8 CPU engine ({engines})")
    model = model.to("cpu", dtype=torch.float32).eval()
    # torch 2.13 deprecates this for torchao (not in requirements.lock): warning silenced;
    # test_quantize.py::test_the_deprecated_api_is_still_the_one_available says when to move.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def is_quantized(model: Any) -> bool:
    """True when no float ``nn.Linear`` is left and at least one dynamic int8 one is there."""
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    modules = list(model.modules())
    floats = [m for m in modules if type(m) is torch.nn.Linear]
    return not floats and any(isinstance(m, DynamicLinear) for m in modules)
