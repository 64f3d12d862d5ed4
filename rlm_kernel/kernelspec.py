"""Install the `rlm` kernelspec (kernel.json and logos) where Jupyter finds it."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

__all__ = ["KERNEL_NAME", "install_kernelspec", "spec_source_dir"]

KERNEL_NAME = "rlm"


def spec_source_dir() -> Path:
    """The packaged kernelspec: package data in a wheel, `kernelspec/rlm` in a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "resources" / "kernelspec", here.parent / "kernelspec" / KERNEL_NAME):
        if (candidate / "kernel.json").is_file():
            return candidate
    raise FileNotFoundError(f"the {KERNEL_NAME} kernelspec files are missing from {here}")


def install_kernelspec(
    *, user: bool = False, prefix: str | None = None, name: str = KERNEL_NAME
) -> str:
    """Install the kernelspec (user dir, or under `prefix`, else system-wide); return its path.

    The spec's `python` becomes this interpreter, so the kernel starts with this environment's
    packages whichever Python runs Jupyter.
    """
    from jupyter_client.kernelspec import KernelSpecManager

    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / name
        shutil.copytree(spec_source_dir(), staged)
        spec_path = staged / "kernel.json"
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
        spec["argv"][0] = sys.executable
        spec_path.write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
        dest: str = KernelSpecManager().install_kernel_spec(
            str(staged), kernel_name=name, user=user, prefix=prefix
        )
    return dest
