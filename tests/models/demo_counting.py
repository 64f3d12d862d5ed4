"""The demo's scripted model, logging every call to $RLM_TEST_CALL_LOG (to compare with the record)."""

import importlib.util
import os
import pathlib

import rlm_kernel.demo

_spec = importlib.util.spec_from_file_location(
    "_demo_model", pathlib.Path(rlm_kernel.demo.__file__).parent / "model.py"
)
_demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_demo)


def respond(messages, info):
    with open(os.environ["RLM_TEST_CALL_LOG"], "a") as fh:
        fh.write(f"{info['kind']} {info['agent_id']} {info['iteration']}\n")
    return _demo.respond(messages, info)
