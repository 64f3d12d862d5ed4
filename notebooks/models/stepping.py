"""Scripted model of 02-stepping: find the largest module of `textkit` and describe it.

root: list the modules → measure them (`sizes`) → ask a child to describe the largest one
(`rlm_query`) → FINAL. The child (root.0) parses the module with `ast`, keeps `functions` in its
namespace, and answers. Every block is real code that runs on the repository's files; when the
user replaces the measuring code (`%rlm step --code`), the later steps use the user's `sizes`.
"""

import re
from typing import Any

LATENCY_S = 0.05

ROOT = [
    """First, the Python modules of the repository.
```python
import pathlib
files = sorted(str(p) for p in pathlib.Path("textkit").glob("*.py"))
print(files)
```""",
    """Now their sizes, in lines.
```python
sizes = {f: len(open(f).read().splitlines()) for f in files}
print(sizes)
```""",
    """I'll ask a sub-agent to describe the largest module.
```python
biggest = max(sizes, key=sizes.get)
note = rlm_query(f"Describe the functions defined in {biggest}, one line each.")
print(note)
```""",
    """```python
FINAL(f"The largest module is {biggest} ({sizes[biggest]} by my measure). {note}")
```""",
]

CHILD = [
    """```python
import ast
path = {path!r}
module = ast.parse(open(path).read())
functions = {{n.name: ast.get_docstring(n) for n in module.body if isinstance(n, ast.FunctionDef)}}
print(functions)
```""",
    """```python
FINAL(path + " defines " + "; ".join(f"{{name}}(): {{doc}}" for name, doc in functions.items()))
```""",
]


def respond(messages: list[dict[str, str]], info: dict[str, Any]) -> str:
    it = int(info["iteration"])
    if info["depth"] == 0:
        return ROOT[min(it, len(ROOT) - 1)]
    found = re.search(r"in (\S+\.py)", info["task"])
    return CHILD[min(it, len(CHILD) - 1)].format(path=found.group(1) if found else "?")
