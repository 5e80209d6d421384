"""What every benchmark records next to its figures (bench/results/*.json): the CPU and its vector
extensions, the cores and their load, the GPU if one is used, the software and the commit measured.
Figures from a loaded or dirty tree are still figures, but the reader must be able to tell."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from typing import Optional

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ISA_FLAGS = {"avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni"}


def _cpuinfo():
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def _git(*args) -> Optional[str]:
    try:
        return subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def describe(device=None) -> dict:
    """The machine and software of this run; with a CUDA `device`, its GPU too."""
    import torch

    import torch_zipml

    model, flags = _cpuinfo()
    status = _git("status", "--porcelain", "--untracked-files=no")
    info = {
        "cpu": model,
        "cores": os.cpu_count(),
        "isa_flags": sorted(flags & ISA_FLAGS),
        "zipml_cpu_kernels": torch_zipml.cpu_isa(),
        "threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
        "node": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_zipml": torch_zipml.__version__,
        "commit": _git("rev-parse", "HEAD"),
        "uncommitted_changes": bool(status) if status is not None else None,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    if device is not None and torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info
