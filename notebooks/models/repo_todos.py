"""Scripted model of 03-repo-todos: investigate scikit-learn's `# TODO` comments, fix the easiest.

root: count the TODOs per subpackage (tests and vendored code left out) → one child per
subpackage (`rlm_query_batched`) → collect the TODOs rated easy → fix the first one with
`edit_file`, check the edit, FINAL.
child (one subpackage): list its TODOs; when there are more than LARGE, hand the file with the
most TODOs to a grandchild (`rlm_query`) → rate the rest → FINAL with one line per TODO.
grandchild (one file): list and rate its TODOs → FINAL.

The ratings come from a small keyword heuristic in the agents' code (a real model would read
the code around each TODO); everything the code prints is computed from the real files.
"""

import re
from typing import Any

LATENCY_S = 0.05
LARGE = 15

RATE = '''
def rate(text):
    """easy / blocked / hard, from the TODO's wording."""
    t = text.lower()
    if "complete __all__" in t or "typo" in t or "docstring" in t:
        return "easy"
    if any(w in t for w in ("remove", "deprecat", "once ", "when ", " in 1.", "version")):
        return "blocked"  # waits for a deprecation cycle, a release or another project
    return "hard"


def todos_in(paths):
    out = []
    for p in paths:
        for i, line in enumerate(open(p, encoding="utf-8"), 1):
            if "# TODO" in line:
                out.append((str(p), i, line.strip()[line.strip().index("# TODO"):]))
    return out
'''

ROOT = [
    """I'll count the TODO comments per subpackage, leaving out tests and vendored code.
```python
import collections, pathlib
per_package = collections.Counter()
for p in pathlib.Path("sklearn").rglob("*.py"):
    if "tests" in p.parts or "externals" in p.parts or len(p.parts) < 3:
        continue
    per_package[p.parts[1]] += sum("# TODO" in line for line in open(p, encoding="utf-8"))
per_package = {k: n for k, n in per_package.most_common() if n}
print(sum(per_package.values()), "TODOs in", len(per_package), "subpackages:", per_package)
```""",
    """One sub-agent per subpackage, all in parallel.
```python
packages = list(per_package)
reports = rlm_query_batched([
    f"Investigate the TODO comments of the sklearn/{pkg} package ({per_package[pkg]} TODOs; "
    "skip tests). Rate each easy/blocked/hard and answer with one line per TODO: "
    "'path:line: [rating] text'."
    for pkg in packages
])
for pkg, r in zip(packages, reports):
    print(f"{pkg:18} {r.agent_id:8} {r.count(chr(10)) + 1:3} lines, "
          f"{r.count('[easy]')} easy")
```""",
    """Now the easy ones. `# TODO: complete __all__` is a self-contained edit: list the module's
public names. I'll make it and check that the module still parses and every name exists.
```python
import ast
easy = [line for r in reports for line in str(r).splitlines() if "[easy]" in line]
print("\\n".join(easy))
chosen = next(line for line in easy if "complete __all__" in line)
path = chosen.split(":")[0]
src = open(path, encoding="utf-8").read()
module = ast.parse(src)
public = sorted(
    n.name for n in module.body
    if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")
)
start = src.index("# TODO: complete __all__")
end = src.index("\\n", src.index("__all__ =", start)) + 1
old = src[start:end]
new = "__all__ = [\\n" + "".join(f'    "{n}",\\n' for n in public) + '    "xpx",  # re-exported\\n]\\n'
edit_file(path, old, new)
after = ast.parse(open(path, encoding="utf-8").read())
defined = {n.name for n in after.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
defined |= {a.asname or a.name for n in after.body if isinstance(n, ast.ImportFrom) for a in n.names}
exported = next(ast.literal_eval(n.value) for n in after.body
                if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "__all__")
assert set(exported) <= defined, set(exported) - defined
print(f"{path}: __all__ now lists {len(exported)} names, all defined")
```""",
    """```python
FINAL(
    f"scikit-learn has {sum(per_package.values())} TODO comments outside tests and vendored code, "
    f"in {len(per_package)} subpackages (most: "
    + ", ".join(f"{k} {n}" for k, n in list(per_package.items())[:4]) + "). "
    f"{len(easy)} look easy. I fixed `{chosen.split('] ', 1)[1]}` in {path}: "
    f"`__all__` now lists its {len(exported) - 1} public functions (and `xpx`)."
)
```""",
]

CHILD = [
    """```python
import pathlib
__RATE__
files = sorted(p for p in pathlib.Path("sklearn/__PKG__").rglob("*.py") if "tests" not in p.parts)
found = todos_in(files)
per_file = {}
for f, i, t in found:
    per_file[f] = per_file.get(f, 0) + 1
print(len(found), "TODOs in", len(per_file), "files")
```""",
    """```python
delegated = None
if len(found) > __LARGE__:  # large package: a sub-agent takes the file with the most TODOs
    delegated = max(per_file, key=per_file.get)
    detail = rlm_query(f"Rate the TODO comments in {delegated} (easy/blocked/hard), one line "
                       "each: 'path:line: [rating] text'.")
lines = [f"{f}:{i}: [{rate(t)}] {t}" for f, i, t in found if f != delegated]
if delegated:
    lines += str(detail).splitlines()
print("\\n".join(lines))
```""",
    """```python
FINAL("\\n".join(lines))
```""",
]

GRANDCHILD = [
    """```python
__RATE__
lines = [f"{f}:{i}: [{rate(t)}] {t}" for f, i, t in todos_in([__FILE__])]
print("\\n".join(lines))
```""",
    """```python
FINAL("\\n".join(lines))
```""",
]


def respond(messages: list[dict[str, str]], info: dict[str, Any]) -> str:
    it, depth, task = int(info["iteration"]), int(info["depth"]), str(info["task"])
    if depth == 0:
        return ROOT[min(it, len(ROOT) - 1)]
    if depth == 1:
        found = re.search(r"sklearn/(\w+) package", task)
        pkg = found.group(1) if found else "?"
        text = CHILD[min(it, len(CHILD) - 1)]
        return (
            text.replace("__PKG__", pkg).replace("__LARGE__", str(LARGE)).replace("__RATE__", RATE)
        )
    found = re.search(r"in (\S+\.py)", task)
    text = GRANDCHILD[min(it, len(GRANDCHILD) - 1)]
    return text.replace("__FILE__", repr(found.group(1) if found else "?")).replace(
        "__RATE__", RATE
    )
