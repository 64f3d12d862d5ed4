"""Rewrite the documentation generated from the settings table (rlm_kernel/config.py): the
packaged rlm_kernel/config.yaml and the table of README.md's "Configuration" section.

    .venv/bin/python scripts/settings_docs.py          # rewrite both
    .venv/bin/python scripts/settings_docs.py --check  # exit 1 if either is out of date

tests/test_config.py and tests/test_readme.py fail when they are out of date.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from rlm_kernel.config import DEFAULT_CONFIG_FILE, SETTINGS

README = Path(__file__).parents[1] / "README.md"
HEADER = "| key | default | meaning |"


def readme_text(text: str) -> str:
    """README.md with the configuration table's rows replaced by the generated ones."""
    m = re.search(rf"^{re.escape(HEADER)}\n\|[-|]+\|\n((?:\|.*\n)*)", text, re.M)
    if m is None:
        raise SystemExit(f"README.md has no table headed {HEADER!r}")
    rows = "".join(f"{row}\n" for row in SETTINGS.markdown_rows())
    return text[: m.start(1)] + rows + text[m.end(1) :]


def main(argv: list[str]) -> int:
    """Rewrite (or with --check, compare) config.yaml and README's table."""
    wanted = {
        DEFAULT_CONFIG_FILE: SETTINGS.render_yaml(),
        README: readme_text(README.read_text(encoding="utf-8")),
    }
    stale = [p for p, text in wanted.items() if p.read_text(encoding="utf-8") != text]
    if "--check" in argv:
        for path in stale:
            print(f"{path} is out of date: run python scripts/settings_docs.py", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(wanted[path], encoding="utf-8")
        print(f"rewrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
