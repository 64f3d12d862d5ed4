"""The `rlm` command: `rlm run`, `rlm demo`, `rlm cleanup`, `rlm view`, `rlm kernel install`."""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from .config import CLI, SETTINGS
from .sandbox import BACKENDS, isolation

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
ANSWER_SHOWN_CHARS = 20_000
"""An answer longer than this is shortened (head and tail, with a note) where a person reads it:
on stderr, and on stdout when stdout is a terminal. --answer FILE and the record hold all of it."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (`rlm run: error: …`) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="rlm", description="Recursive Language Models in sandboxed REPLs.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    r = sub.add_parser(
        "run",
        help="run an RLM on a repository (or none) and print the patch",
        description="Run a Recursive Language Model on a task. The root agent and every sub-agent get "
        "their own sandbox (a private git repository of REPO at its base commit, with its own IPython kernel). "
        "The root's changes come out as a git patch on stdout (or in -o FILE); with no REPO, the "
        "answer is printed instead. Progress goes to stderr.",
    )
    r.add_argument(
        "repo",
        nargs="?",
        metavar="REPO_OR_PATH",
        help="a local git repository or a git URL (cloned once into the cache); omit for a task "
        "without a repository",
    )
    r.add_argument("-p", "--prompt", required=True, help="the task for the root agent (required)")
    r.add_argument("-b", "--branch", help="branch to check out (default: the repository's HEAD)")
    r.add_argument("--commit", help="commit SHA to check out (overrides --branch)")
    r.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="YAML configuration file (default: ./config.yaml if present, else built-in defaults)",
    )
    r.add_argument(
        "-o",
        "--output",
        metavar="PATCH_FILE",
        help="write the patch to this file instead of stdout",
    )
    SETTINGS.add_flags(r, CLI)  # --model, --sandbox, --max-depth, …: the settings table
    r.add_argument("--answer", metavar="FILE", help="also write the final answer to this file")
    v = r.add_mutually_exclusive_group()
    v.add_argument("--verbose", action="store_true", help="progress plus debug logging on stderr")
    v.add_argument("--quiet", action="store_true", help="no progress output, only the result")

    d = sub.add_parser(
        "demo",
        help="run the offline demo (bundled repository, scripted model, no keys)",
        description="Run a scripted RLM on a small bundled repository: no API key, no network.",
    )
    d.add_argument(
        "--results-dir", metavar="DIR", help="where the run record is written (default: results)"
    )
    d.add_argument("--quiet", action="store_true", help="no progress output")

    c = sub.add_parser(
        "cleanup",
        help="remove sandboxes left behind by crashed runs",
        description="Remove leftover local sandboxes (workspaces, kernels, temporary files) of runs "
        "that are no longer running; with --sandbox daytona, delete the Daytona sandboxes "
        "labelled with an rlm run id (all, or --run ID's).",
    )
    c.add_argument(
        "--sandbox",
        choices=BACKENDS,
        default=SETTINGS["sandbox.backend"].default,
        help="backend to clean (default: %(default)s)",
    )
    c.add_argument("--run", metavar="ID", help="only this run")

    w = sub.add_parser(
        "view",
        help="write (and open) an HTML viewer of the runs in a results directory",
        description="Write one self-contained HTML page that lists the runs of RESULTS_DIR/index.json "
        "and shows any run's agent tree (the notebook widget's own front end), then open it in a "
        "browser. The records are embedded, so the file works from a file URL.",
    )
    w.add_argument(
        "results_dir",
        nargs="?",
        metavar="RESULTS_DIR",
        help="the results directory (default: results_dir of ./config.yaml, else results)",
    )
    w.add_argument(
        "--out", metavar="FILE", help="where to write the page (default: RESULTS_DIR/viewer.html)"
    )
    w.add_argument(
        "--no-open", action="store_true", help="only write the page, do not open a browser"
    )
    w.add_argument(
        "--no-embed",
        action="store_true",
        help="fetch index.json and the records at view time instead of embedding them "
        "(serve RESULTS_DIR with `python -m http.server`; the page then shows new runs)",
    )

    k = sub.add_parser(
        "kernel",
        help="manage the RLM Jupyter kernel",
        description="Manage the RLM Jupyter kernel (kernelspec name 'rlm', display name 'RLM (Python)').",
    )
    ksub = k.add_subparsers(dest="kernel_command", metavar="ACTION", parser_class=_Parser)
    ksub.required = True
    ki = ksub.add_parser(
        "install",
        help="install the kernelspec so Jupyter lists 'RLM (Python)'",
        description="Install the 'rlm' kernelspec. It starts the kernel with this Python "
        f"({sys.executable}). Default: --sys-prefix inside a virtual environment, else --user.",
    )
    where = ki.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for the current user")
    where.add_argument(
        "--sys-prefix", action="store_true", help="install into this Python's prefix (a venv)"
    )
    where.add_argument("--prefix", metavar="DIR", help="install under DIR/share/jupyter/kernels")
    return p


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"rlm: error: {message}\n")
    return code


def cmd_run(args: argparse.Namespace) -> int:
    """`rlm run`: validate everything, run, print the patch (or answer)."""
    import logging

    from .config import ConfigError, load_config
    from .console import ConsoleProgress
    from .llm import LLMError, prewarm_for
    from .runner import Run
    from .sandbox.base import SandboxError
    from .sandbox.workspace import TargetError

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.prompt.strip():
        return _fail("-p/--prompt is empty: give the task for the root agent", EXIT_USAGE)
    try:
        flags = SETTINGS.overrides_from(args, CLI)
        config = load_config(args.config, flags, source="rlm run options")
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    # One run per process: a spare root sandbox for a next run would never be used.
    config = config.with_overrides({"sandbox.spare": False})
    # litellm's seconds-long import, where a call may need it, overlaps the checks and the
    # sandbox's creation; a run on the plain-HTTP path never imports it
    prewarm_for(config)
    sinks = [] if args.quiet else [ConsoleProgress()]
    if args.quiet:
        isolation.set_notice(lambda _line: None)  # only the result; the record names the tier
    run = Run(
        args.prompt,
        args.repo,
        branch=args.branch,
        commit=args.commit,
        config=config,
        on_event=sinks,
    )
    try:
        run.prepare()
    except (TargetError, LLMError, SandboxError, ConfigError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    # SIGTERM cancels like Ctrl-C, so `timeout`/CI kills still clean up.
    signal.signal(signal.SIGTERM, lambda *_: run.cancel(reason="terminated (SIGTERM)"))
    try:
        run.start()
        result = run.wait()
    except KeyboardInterrupt:
        if run.started:  # Ctrl-C inside start() comes before wait() could cancel the run
            run.cancel(reason="interrupted (Ctrl-C)")
            with contextlib.suppress(TimeoutError, KeyboardInterrupt):
                run.wait(30)
        run.release(remove=False)
        return _fail(
            f"interrupted; run {run.run_id} cancelled and its sandboxes removed", EXIT_INTERRUPTED
        )
    finally:
        run.release(remove=False)  # kept sandboxes: their REPLs stop, their files stay
    if result.kept:
        for info in result.kept:
            sys.stderr.write(f"kept sandbox: {info['path']}\n")
    answer = str(result)
    record = _openable(result.record_path)
    if args.answer:
        Path(args.answer).write_text(answer + "\n", encoding="utf-8")
    if args.output:
        Path(args.output).write_text(result.patch, encoding="utf-8")
    if run.target.is_repo:
        if not args.output:
            sys.stdout.write(result.patch)
        if not args.quiet:
            sys.stderr.write(f"\nAnswer:\n{_shown(answer, args.answer, record)}\n")
    elif sys.stdout.isatty():
        sys.stdout.write(_shown(answer, args.answer, record) + "\n")
    else:  # redirected: the answer is the command's output, whole
        sys.stdout.write(answer + "\n")
    if not args.quiet and record:
        sys.stderr.write(f"record: {record}\n")
    if result.status != "done":
        return _fail(
            f"run {result.status}: {result.error or 'no final answer'} (partial answer above; "
            f"record: {record})",
            EXIT_FAILED,
        )
    return EXIT_OK


def _openable(path: str | None) -> str | None:
    """A path the user can open from anywhere: absolute."""
    return None if path is None else os.path.abspath(path)


def _shown(answer: str, answer_file: str | None, record: str | None) -> str:
    """The answer as printed for a person: whole, or its head and tail with a note on where it is."""
    if len(answer) <= ANSWER_SHOWN_CHARS:
        return answer
    head = ANSWER_SHOWN_CHARS * 3 // 4
    tail = ANSWER_SHOWN_CHARS - head
    where = [f"in {os.path.abspath(answer_file)} (--answer)"] if answer_file else []
    where.append(f'in the record {record} (key "answer")' if record else "in the run record")
    hint = "" if answer_file else "; --answer FILE writes it to a file"
    note = (
        f"[... {len(answer) - head - tail:,} more characters: the answer has {len(answer):,} "
        f"characters; all of it is {' and '.join(where)}{hint} ...]"
    )
    return f"{answer[:head]}\n{note}\n{answer[len(answer) - tail :]}"


def cmd_demo(args: argparse.Namespace) -> int:
    """`rlm demo`: the offline showcase on the bundled repository."""
    from .demo import prepare_demo

    work = Path(tempfile.mkdtemp(prefix="rlm-demo-"))
    try:
        repo, model, prompt = prepare_demo(work)
        sys.stderr.write(
            f"Demo: a scripted model investigates the TODOs of a small repository ({repo}).\n"
        )
        argv = ["run", str(repo), f"--prompt={prompt}", f"--model={model}", "--sandbox=local"]
        argv += [f"--results-dir={args.results_dir}"] if args.results_dir else []
        argv += ["--quiet"] if args.quiet else []
        return cmd_run(_build_parser().parse_args(argv))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cmd_cleanup(args: argparse.Namespace) -> int:
    """`rlm cleanup`: remove leftover sandboxes (of one backend) of runs that are not running."""
    from .sandbox import backend_class
    from .sandbox.base import SandboxError

    try:
        removed = backend_class(args.sandbox).cleanup(run_id=args.run)
    except SandboxError as exc:
        sys.stderr.write(f"rlm cleanup: {exc}\n")
        return EXIT_USAGE
    for line in removed:
        sys.stderr.write(f"removed {line}\n")
    sys.stderr.write(f"{len(removed)} leftover sandbox(es) removed\n")
    return EXIT_OK


def cmd_view(args: argparse.Namespace) -> int:
    """`rlm view`: write the standalone run viewer and open it."""
    import webbrowser

    from rlm_widget.viewer import build_viewer

    from .config import ConfigError, load_config

    results = args.results_dir
    if results is None:
        try:
            results = load_config().results_dir
        except ConfigError as exc:
            return _fail(str(exc), EXIT_USAGE)
    try:
        out = build_viewer(results, args.out, embed=not args.no_embed)
    except FileNotFoundError as exc:
        return _fail(str(exc), EXIT_USAGE)
    sys.stdout.write(f"{out}\n")
    if not args.no_open:
        webbrowser.open(out.resolve().as_uri())
    return EXIT_OK


def cmd_kernel(args: argparse.Namespace) -> int:
    """`rlm kernel install`: install the kernelspec and say where."""
    from .kernelspec import install_kernelspec

    user, prefix = bool(args.user), args.prefix
    if args.sys_prefix or (not user and prefix is None and sys.prefix != sys.base_prefix):
        prefix = sys.prefix
    elif prefix is None:
        user = True
    try:
        dest = install_kernelspec(user=user, prefix=prefix)
    except OSError as exc:
        return _fail(f"could not install the kernelspec: {exc}", EXIT_USAGE)
    sys.stdout.write(f"installed kernelspec rlm in {dest}\n")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `rlm` command."""
    try:
        return _main(argv)
    finally:
        if argv is None:  # the `rlm` command's own process, about to exit
            # Everything is cleaned up by now; what is left is the interpreter's last garbage
            # collection over the whole heap (litellm, the Daytona SDK: seconds of CPU on a
            # loaded machine after a Ctrl-C). Frozen objects are left to the exit itself.
            gc.freeze()


def _main(argv: Sequence[str] | None) -> int:
    handlers = {
        "run": cmd_run,
        "demo": cmd_demo,
        "cleanup": cmd_cleanup,
        "kernel": cmd_kernel,
        "view": cmd_view,
    }
    try:
        args = _build_parser().parse_args(argv)
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        return handlers[args.command](args)
    except KeyboardInterrupt:  # before a run started (cmd_run handles the rest): nothing to undo
        return _fail("interrupted", EXIT_INTERRUPTED)
    except Exception as exc:
        # Ctrl-C during an import can come out wrapped (pydantic turns it into a SchemaError
        # while it builds a model class, e.g. in litellm's import): still an interrupt.
        if _interrupt_in(exc):
            return _fail("interrupted", EXIT_INTERRUPTED)
        raise


def _interrupt_in(exc: BaseException) -> bool:
    """Whether a KeyboardInterrupt is in `exc`'s chain of causes and contexts."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        stack += [e.__cause__, e.__context__]
    return False


if __name__ == "__main__":
    sys.exit(main())
