"""Data-parallel training over several processes with torchrun (``train.processes``).

DVC runs one command: the train stage re-executes itself under ``torch.distributed.run``
(torchrun) when ``train.processes`` > 1, and every process runs the same ``Trainer``, which
sees torchrun's environment and trains with DistributedDataParallel (gloo on CPU, NCCL on
GPUs). Rank 0 alone writes outputs and checkpoints and logs to MLflow.
"""

from __future__ import annotations

import os
import subprocess
import sys


def world_size() -> int:
    """Processes in this training run (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True in the one process that writes outputs: rank 0, or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


def launched() -> bool:
    """True inside a process started by torchrun."""
    return "TORCHELASTIC_RUN_ID" in os.environ or world_size() > 1


def relaunch(processes: int, module: str, arguments: list[str]) -> int:
    """Run ``python -m module arguments`` as ``processes`` torchrun workers on this machine
    and return torchrun's exit code (non-zero when any worker failed)."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={processes}", "-m", module, *arguments,
    ]  # fmt: skip
    # One thread per process unless the user chose: N processes x all cores oversubscribes.
    cores = max(1, (os.cpu_count() or 1) // processes)
    env = {"OMP_NUM_THREADS": str(cores), **os.environ}
    return subprocess.call(command, env=env)
