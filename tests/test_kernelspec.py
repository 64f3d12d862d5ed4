"""The kernelspec installer, `python -m rlm_kernel` routing and the kernel's cell dispatch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlm_kernel.__main__ import is_kernel_launch
from rlm_kernel.cli import main as rlm_main
from rlm_kernel.kernel import is_host_cell
from rlm_kernel.relay import merge_matches


def test_install_with_prefix_uses_this_python(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert rlm_main(["kernel", "install", "--prefix", str(tmp_path)]) == 0
    spec_dir = tmp_path / "share" / "jupyter" / "kernels" / "rlm"
    assert str(spec_dir) in capsys.readouterr().out
    spec = json.loads((spec_dir / "kernel.json").read_text())
    assert spec["argv"] == [sys.executable, "-m", "rlm_kernel", "-f", "{connection_file}"]
    assert spec["display_name"] == "RLM (Python)" and spec["language"] == "python"
    assert spec["interrupt_mode"] == "message"
    for logo in ("logo-32x32.png", "logo-64x64.png"):
        assert (spec_dir / logo).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert (spec_dir / "logo-svg.svg").read_text().startswith("<svg")


def test_install_options_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        rlm_main(["kernel", "install", "--user", "--sys-prefix"])
    assert exc.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_python_m_rlm_kernel_routes_to_the_cli_or_the_kernel() -> None:
    assert is_kernel_launch(["-f", "/run/kernel.json"])
    assert is_kernel_launch(["--f=/run/kernel.json", "--RLMKernel.model=x"])
    assert not is_kernel_launch(["run", ".", "-p", "task"])
    out = subprocess.run(
        [sys.executable, "-m", "rlm_kernel", "kernel", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "install" in out


def test_host_cells_are_rlm_magics_only() -> None:
    assert is_host_cell("%%rlm --quiet\nfind the TODOs")
    assert is_host_cell("\n  %rlm status")
    assert is_host_cell("%load_ext rlm_kernel")
    assert is_host_cell("%config RLMKernel.model = 'x'")
    assert not is_host_cell("x = 1\n%rlm status")
    assert not is_host_cell("%timeit sum(range(10))")
    assert not is_host_cell("%config InlineBackend.figure_format = 'svg'")
    assert not is_host_cell("")


def test_host_magic_matches_are_rebased_on_the_sandbox_cursor() -> None:
    sandbox = {"matches": ["rlm_query"], "cursor_start": 1}
    host = {"matches": ["%rlm", "%%rlm", "%reset"], "cursor_start": 0}
    # after the "%" the sandbox replaces "rl": "%rlm" becomes "rlm", "%%rlm" becomes "%rlm"
    assert merge_matches("%rl", sandbox, host, ("%rlm", "%%rlm")) == ["rlm_query", "rlm", "%rlm"]
    sandbox = {"matches": ["%rehashx"], "cursor_start": 0}
    assert merge_matches("%r", sandbox, host, ("%rlm", "%%rlm")) == ["%rehashx", "%rlm", "%%rlm"]
