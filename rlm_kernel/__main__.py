"""`python -m rlm_kernel -f CONNECTION_FILE` starts the kernel; other arguments go to the `rlm` CLI."""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["is_kernel_launch", "main"]


def is_kernel_launch(argv: Sequence[str]) -> bool:
    """True for a Jupyter launch (`-f {connection_file}`, as the kernelspec's argv has it)."""
    return any(a in ("-f", "--f") or a.startswith(("-f=", "--f=")) for a in argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Launch the kernel or run the CLI; return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if is_kernel_launch(args):
        from ipykernel.kernelapp import IPKernelApp

        from .kernel import RLMKernel

        IPKernelApp.launch_instance(argv=args, kernel_class=RLMKernel)
        return 0
    from .cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
