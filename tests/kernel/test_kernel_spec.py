"""jupyter_kernel_test's protocol conformance suite, run against the installed `rlm` kernelspec."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import jupyter_kernel_test
from jupyter_kernel_test.msgspec_v5 import schema_fragments

from .harness import RLMKernelProcess

# jupyter_kernel_test 0.7 has no schemas for comm messages; a cell that shows a widget publishes
# them. These follow the messaging spec (ipykernel adds target_module to comm_open).
schema_fragments.setdefault(
    "comm_open",
    {
        "properties": {
            "comm_id": {"type": "string"},
            "target_name": {"type": "string"},
            "target_module": {"type": ["string", "null"]},
            "data": {"type": "object"},
        },
        "required": ["comm_id", "target_name", "data"],
    },
)
for _kind in ("comm_msg", "comm_close"):
    schema_fragments.setdefault(
        _kind, {"properties": {"comm_id": {"type": "string"}, "data": {"type": "object"}}}
    )


class RLMKernelConformance(jupyter_kernel_test.KernelTests):
    """Message schemas, outputs, completion, inspection, history and is_complete of `rlm`."""

    kernel_name = "rlm"
    language_name = "python"
    file_extension = ".py"
    process: RLMKernelProcess

    @classmethod
    def setUpClass(cls) -> None:
        """Start the kernel (private TMPDIR, ipc) and create a sandbox variable."""
        cls.process = RLMKernelProcess(Path(tempfile.mkdtemp(prefix="conformance-")))
        cls.km, cls.kc = cls.process.km, cls.process.kc
        assert cls.process.execute("sample_value = 42").content["status"] == "ok"

    @classmethod
    def tearDownClass(cls) -> None:
        """Shut the kernel down; its sandboxes must be gone."""
        cls.process.shutdown()
        assert not list(cls.process.sandbox_root.iterdir())

    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('oops', file=sys.stderr)"
    completion_samples: list[dict[str, Any]] = [  # noqa: RUF012 - the base class declares it so
        {"text": "sample_val", "matches": {"sample_value"}},
    ]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n\n"]  # noqa: RUF012
    incomplete_code_samples = ["print('''hello", "def f(x):\n  x*2"]  # noqa: RUF012
    invalid_code_samples = ["import = 7q", "for"]  # noqa: RUF012
    code_display_data = [  # noqa: RUF012
        {
            "code": "from IPython.display import HTML, display; display(HTML('<b>b</b>'))",
            "mime": "text/html",
        },
        {
            "code": "from IPython.display import Markdown, display; display(Markdown('*m*'))",
            "mime": "text/markdown",
        },
        {
            "code": "import matplotlib.pyplot as plt; plt.plot([1, 2]); plt.show()",
            "mime": "image/png",
        },
        {
            "code": "import ipywidgets; display(ipywidgets.IntSlider(value=3))",
            "mime": "application/vnd.jupyter.widget-view+json",
        },
    ]
    code_execute_result = [  # noqa: RUF012
        {"code": "6*7", "result": "42"},
        {"code": "sample_value + 1", "result": "43"},
    ]
    code_history_pattern = "6*7"
    # "range" is left out: IPython numbers the current session 0 in range replies, as in ipykernel.
    supported_history_operations = ("tail", "search")
    code_inspect_sample = "sample_value"
    code_page_something = "zip?"  # the sandbox kernel's pager payload, passed on
    code_generate_error = "raise ValueError('boom')"
    code_clear_output = "from IPython.display import clear_output; clear_output()"


class RLMKernelIopubWelcome(jupyter_kernel_test.IopubWelcomeTests):
    """A new iopub subscriber is greeted (ipykernel >= 7), here too."""

    kernel_name = "rlm"
    support_iopub_welcome = True
