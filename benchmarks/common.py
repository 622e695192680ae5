"""What every benchmark script shares: the machine description and the RESULTS.md section writer."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"


def machine_info() -> dict[str, Any]:
    """Platform, CPUs (total and usable), Python and library versions, and the GPU name if torch sees one."""
    import numpy as np

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def device_label(info: dict[str, Any]) -> str:
    """'<GPU name>' or 'CPU, N cores' for report headings."""
    return info.get("gpu") or f"CPU, {info['cpus_usable']} usable of {info['cpu_count']} cores"


def replace_section(heading: str, section: str, path: str | os.PathLike = RESULTS_MD) -> Path:
    """Insert or replace the ``## heading`` section of RESULTS.md, leaving the other sections alone."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmark results\n"
    lines = text.splitlines()
    new = section.rstrip("\n").splitlines()
    if heading in lines:
        start = lines.index(heading)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines = lines[:start] + new + [""] + lines[end:]
        text = "\n".join(lines).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(new) + "\n"
    path.write_text(text, encoding="utf-8")
    return path
