"""Kernel tests: the `rlm` kernelspec installed into a private prefix, Jupyter dirs kept private;
an iopub in miniature for the pieces that publish."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rlm_kernel.cli import main as rlm_main

from .wire import IOPub


@pytest.fixture(scope="session", autouse=True)
def rlm_kernelspec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`rlm kernel install --prefix` into a temporary prefix, found through JUPYTER_PATH.

    The user's Jupyter and IPython directories are never touched: data, config, runtime and
    IPython dirs all point into the session's temporary directory.
    """
    base = tmp_path_factory.mktemp("jupyter")
    assert rlm_main(["kernel", "install", "--prefix", str(base / "prefix")]) == 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(base / "prefix" / "share" / "jupyter"))
        mp.setenv("JUPYTER_DATA_DIR", str(base / "data"))
        mp.setenv("JUPYTER_CONFIG_DIR", str(base / "config"))
        mp.setenv("JUPYTER_RUNTIME_DIR", str(base / "runtime"))
        mp.setenv("IPYTHONDIR", str(base / "ipython"))
        yield base / "prefix" / "share" / "jupyter" / "kernels" / "rlm"


@pytest.fixture
def iopub() -> Iterator[IOPub]:
    """A signing Session and a real socket pair to publish on and read back (`wire.IOPub`)."""
    pub = IOPub()
    try:
        yield pub
    finally:
        pub.close()
