"""Bad input: tables of bad flags, config values, repositories and signatures, each with the clear
error it gets (the message names the culprit and says what to do); the reply's code-block
extractor and the bridge's frame parser fuzzed with hypothesis."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import io
import itertools
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from rlm_kernel.cli import main as rlm_main
from rlm_kernel.prompts import extract_code_blocks
from rlm_kernel.sandbox.bridge import Bridge, FrameParser
from rlm_kernel.sandbox.runtime import FRAME_END, FRAME_START
from rlm_kernel.signature import Signature, SignatureError

MODEL = f"scripted/{Path(__file__).parents[1] / 'models' / 'echo.py'}"
FUZZ = settings(
    max_examples=300,
    deadline=None,  # a loaded CI machine must not turn slowness into failures
    derandomize=True,  # the same examples on every run
    database=None,  # no example database: failures reproduce from derandomize alone
    suppress_health_check=[HealthCheck.too_slow],
)


def _git(*args: str, cwd: Path) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cwd with `repo/` (one commit on main), `notgit/`, `emptyrepo/` and bad config files."""
    (tmp_path / "notgit").mkdir()
    (tmp_path / "emptyrepo").mkdir()
    _git("init", "-q", cwd=tmp_path / "emptyrepo")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.txt").write_text("a\n")
    _git("init", "-q", "-b", "main", cwd=repo)
    _git("add", "-A", cwd=repo)
    _git("commit", "-q", "-m", "init", cwd=repo)
    for name, text in CONFIG_FILES.items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    return tmp_path


CONFIG_FILES = {
    "negative.yaml": "rlm:\n  max_depth: -1\n",
    "word.yaml": "model:\n  timeout: ten\n",
    "backend.yaml": "sandbox:\n  backend: cloud\n",
    "typo.yaml": "rlm:\n  max_iteration: 3\n",
    "list-section.yaml": "model: [1, 2]\n",
    "list-top.yaml": "- a\n",
    "broken.yaml": "rlm: [\n",
    "nan.yaml": "rlm:\n  max_cost_usd: .nan\n",
    "empty-base.yaml": "model:\n  api_base: ''\n",
    "keep-string.yaml": "sandbox:\n  keep: 'yes'\n",
}

# (arguments after `rlm run`, fragments the one-line error must contain)
CLI_CASES: list[tuple[list[str], list[str]]] = [
    (["--max-depth", "-1"], ["'rlm.max_depth' must be >= 0, got -1"]),
    (["--max-depth", "two"], ["argument --max-depth: invalid int value: 'two'", "rlm run --help"]),
    (["--timeout", "0"], ["'rlm.global_timeout' must be > 0"]),
    (["--max-iterations", "0"], ["'rlm.max_iterations' must be > 0"]),
    (["--max-cost-usd", "0"], ["rlm run options: 'rlm.max_cost_usd' must be > 0, got 0.0"]),
    (["--max-cost-usd", "inf"], ["'rlm.max_cost_usd' must be a number or null, got inf"]),
    (["--sandbox", "cloud"], ["invalid choice: 'cloud'", "'local', 'daytona'"]),
    (["--model", ""], ["'model.name' must be a non-empty string", "the default is"]),
    (["--model", "nosuchprovider/x"], ["Unknown LLM provider", "'provider/model' format"]),
    (["--max-depht", "2"], ["unrecognized arguments: --max-depht"]),
    (["-p", " "], ["-p/--prompt is empty: give the task"]),
    (["missing"], ["repository not found: missing", "existing directory or a git URL"]),
    (["notgit"], ["notgit is not a git repository", "git init"]),
    (["emptyrepo"], ["emptyrepo has no commits yet: commit something first"]),
    (["repo", "-b", "nope"], ["branch nope not found in repo: its branches are main"]),
    (["repo", "--commit", "deadbeef"], ["commit deadbeef not found in repo", "give a SHA"]),
    (["--commit", "deadbeef"], ["--branch/--commit need a repository"]),
    (
        ["file:///nonexistent/x.git"],
        ["cannot clone file:///nonexistent/x.git", "does not appear to be a git repository"],
    ),
    (["http://127.0.0.1:1/x.git"], ["cannot clone http://127.0.0.1:1/x.git", "git clone"]),
    (["-c", "nothere.yaml"], ["nothere.yaml: config file not found", "lists every key"]),
    (["-c", "negative.yaml"], ["negative.yaml: 'rlm.max_depth' must be >= 0, got -1"]),
    (["-c", "word.yaml"], ["'model.timeout' must be a number, got 'ten'", "the default is 600"]),
    (["-c", "backend.yaml"], ["'sandbox.backend' must be one of local, daytona, got 'cloud'"]),
    (["-c", "typo.yaml"], ["unknown key 'rlm.max_iteration'", "did you mean 'rlm.max_iterations'"]),
    (["-c", "list-section.yaml"], ["'model' must be a section (a mapping of keys"]),
    (["-c", "list-top.yaml"], ["the top level must be a mapping of sections"]),
    (["-c", "broken.yaml"], ["broken.yaml:2:1: invalid YAML"]),
    (["-c", "nan.yaml"], ["'rlm.max_cost_usd' must be a number or null, got nan"]),
    (["-c", "empty-base.yaml"], ["'model.api_base' must be a non-empty string or null"]),
    (["-c", "keep-string.yaml"], ["'sandbox.keep' must be true or false, got 'yes'"]),
]


@pytest.mark.parametrize(("args", "fragments"), CLI_CASES, ids=[" ".join(a) for a, _ in CLI_CASES])
def test_rlm_run_rejects_bad_input_with_one_clear_line(
    workdir: Path, args: list[str], fragments: list[str]
) -> None:
    argv = ["run", *args]
    if "-p" not in args:
        argv += ["-p", "a task"]
    if "--model" not in args:
        argv += ["--model", MODEL]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = rlm_main(argv)
        except SystemExit as exc:  # argparse's own errors
            code = int(exc.code or 0)
    lines = err.getvalue().strip().splitlines()
    assert code == 2, lines
    assert len(lines) == 1, lines  # one line, no traceback, no usage dump
    for fragment in fragments:
        assert fragment in lines[0]
    assert not (workdir / "results").exists()  # nothing was created


# -- magics ------------------------------------------------------------------------------------


@pytest.fixture
def shell(workdir: Path) -> Iterator[Any]:
    """An in-process IPython shell with `%load_ext rlm_kernel` and the echo model."""
    from traitlets.config import Config

    cfg = Config()
    cfg.HistoryManager.hist_file = ":memory:"
    sh = InteractiveShell.instance(config=cfg)
    sh.run_line_magic("load_ext", "rlm_kernel")
    sh.run_line_magic("rlm", f"config model.name={MODEL} results_dir=results")
    try:
        yield sh
    finally:
        sh.run_line_magic("unload_ext", "rlm_kernel")


MAGIC_CASES: list[tuple[str, list[str]]] = [
    ("%%rlm --max-depth -1", ["'rlm.max_depth' must be >= 0, got -1"]),
    ("%%rlm --max-sandboxes 0", ["'rlm.max_sandboxes' must be > 0"]),
    ("%%rlm --max-cost-usd -1", ["%%rlm options: 'rlm.max_cost_usd' must be > 0, got -1.0"]),
    ("%%rlm --timeout abc", ["argument --timeout: invalid float value: 'abc'"]),
    ("%%rlm --sandbox cloud", ["invalid choice: 'cloud'"]),
    ("%%rlm -o class", ["-o/--out needs a variable name, got 'class'"]),
    ("%%rlm --context 2x", ["--context needs a variable name"]),
    ("%%rlm --context nothing", ["--context: no variable named nothing"]),
    ("%%rlm --model ''", ["'model.name' must be a non-empty string"]),
    ("%%rlm --sub-model nosuch/x", ["Unknown LLM provider for model 'nosuch/x'"]),
    ("%%rlm --repo notgit", ["notgit is not a git repository", "git init"]),
    ("%%rlm --repo repo -b nope", ["branch nope not found in repo: its branches are main"]),
    ("%%rlm --config broken.yaml", ["broken.yaml:2:1: invalid YAML"]),
    ("%%rlm --signature 'q: str -> a: str, a: int'", ["field 'a' appears twice"]),
    ("%rlm config sandbox.backend=cloud", ["'sandbox.backend' must be one of local, daytona"]),
    ("%rlm config model.timeout=abc", ["'model.timeout' must be a number, got 'abc'"]),
    ("%rlm config max_dept=2", ["unknown key 'max_dept'", "did you mean 'rlm.max_depth'"]),
    ("%rlm config keep=maybe", ["'sandbox.keep' must be true or false, got 'maybe'"]),
    ("%rlm config max_depth", ["expected KEY=VALUE, got 'max_depth'"]),
    ("%rlm frobnicate", ["invalid choice: 'frobnicate'"]),
]


@pytest.mark.parametrize(("line", "fragments"), MAGIC_CASES, ids=[c for c, _ in MAGIC_CASES])
def test_magics_reject_bad_input_with_a_usage_error(
    shell: Any, workdir: Path, line: str, fragments: list[str]
) -> None:
    magic, _, rest = line.partition(" ")
    with pytest.raises(UsageError) as exc:
        if magic == "%%rlm":
            shell.run_cell_magic("rlm", rest, "a task")
        else:
            shell.run_line_magic("rlm", rest)
    for fragment in fragments:
        assert fragment in str(exc.value)
    assert not (workdir / "results").exists()


# -- signatures --------------------------------------------------------------------------------

SIGNATURE_CASES: list[tuple[str, str]] = [
    ("no arrow", "has no '->': write it as 'inputs -> outputs', e.g."),
    ("q: str -> ", "names no output field after '->'"),
    ("q: str -> 1a: str", "'1a' is not a valid field name"),
    ("q: str -> a b: str", "'a b' is not a valid field name"),
    ("q: str -> a: str, a: int", "field 'a' appears twice; rename one"),
    ("q: str, q: int -> a: str", "field 'q' appears twice; rename one"),
    ("q: str -> a: list[int", "unbalanced brackets: close every '['"),
    ("q: str -> a: str -> b: int", "more than one '->'"),
    ("q: str -> : str", "'' is not a valid field name"),
]


@pytest.mark.parametrize(("text", "message"), SIGNATURE_CASES, ids=[t for t, _ in SIGNATURE_CASES])
def test_bad_signatures_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(SignatureError) as exc:
        Signature.parse(text)
    assert message in str(exc.value) and repr(text) in str(exc.value)


# -- fuzz: the code-block extractor ------------------------------------------------------------

_code = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="`"), min_size=1
).filter(lambda s: s.strip() != "")
_prose = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="`"))


@FUZZ
@given(st.text(st.characters(blacklist_categories=("Cs",))))
def test_extractor_never_fails_and_returns_pieces_of_the_reply(text: str) -> None:
    blocks = extract_code_blocks(text)
    assert all(block in text and block.strip() for block in blocks)


@FUZZ
@given(
    st.lists(st.tuples(_prose, st.sampled_from(["python", "repl", "py"]), _code), max_size=5),
    _prose,
)
def test_extractor_finds_exactly_the_fenced_blocks(
    parts: list[tuple[str, str, str]], tail: str
) -> None:
    text = "".join(f"{prose}\n```{lang}\n{code}\n```\n" for prose, lang, code in parts) + tail
    assert extract_code_blocks(text) == [f"{code}\n" for _, _, code in parts]


# -- fuzz: the bridge frame parser and verifier ------------------------------------------------

SECRET = "0123456789abcdef0123456789abcdef"


def _signed(body: dict[str, Any]) -> str:
    raw = base64.b64encode(json.dumps(body).encode()).decode()
    return raw + ":" + hmac.new(SECRET.encode(), raw.encode(), hashlib.sha256).hexdigest()


def _chunks(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


_noise = st.text(st.sampled_from(["a", "é", "\n", "\x02", "\x03", "R", "L", "M", "1", ":", "="]))


# Output that looks like frames: forged frames with any body and "signature", lone markers,
# separators and arbitrary text.
_no_end = st.characters(blacklist_characters=FRAME_END)
_forged = st.builds(
    lambda body, sig: f"{FRAME_START}{body}:{sig}{FRAME_END}",
    st.one_of(st.just("e30="), st.text(_no_end, max_size=8)),
    st.text(_no_end, max_size=8),
)
_output = st.lists(
    st.one_of(
        _forged,
        st.sampled_from([FRAME_START, FRAME_END, ":", "é", "\x02", "RLM1"]),
        st.text(max_size=6),
    )
).map("".join)


@FUZZ
@given(_output, st.lists(st.integers(min_value=0), max_size=8))
def test_parser_and_verifier_never_fail_on_any_output(text: str, cuts: list[int]) -> None:
    parser = FrameParser()
    bridge = Bridge(SECRET, lambda op, args: None, lambda rid, data: None)
    bridge.begin("cell")
    shown, frames = [], []
    for chunk in _chunks(text, cuts):
        out, got = parser.feed(chunk)
        shown.append(out)
        frames += got
    shown.append(parser.flush())
    # nothing is lost: the text shown plus the frames (with their markers) is the whole output
    framed = sum(len(FRAME_START) + len(f) + len(FRAME_END) for f in frames)
    assert len("".join(shown)) + framed == len(text)
    for raw in frames:
        assert bridge.verify(raw) is None  # nobody without the secret gets a request through


@FUZZ
@given(
    st.lists(st.tuples(_noise, st.dictionaries(st.text(max_size=5), st.integers())), max_size=4),
    _noise,
    st.lists(st.integers(min_value=0), max_size=8),
)
def test_signed_frames_survive_any_surrounding_text_and_chunking(
    parts: list[tuple[str, dict[str, int]]], tail: str, cuts: list[int]
) -> None:
    # Printed noise never ends in a dangling frame start, as the runtime's frames are whole writes.
    bodies = [
        {"id": f"r{i}", "exec": "cell", "op": "final", "args": args}
        for i, (_, args) in enumerate(parts)
    ]
    text = "".join(
        noise.replace("\x02", "") + FRAME_START + _signed(b) + FRAME_END
        for (noise, _), b in zip(parts, bodies, strict=True)
    )
    text += tail.replace("\x02", "")
    parser = FrameParser()
    frames: list[str] = []
    for chunk in _chunks(text, cuts):
        frames += parser.feed(chunk)[1]
    parser.flush()
    bridge = Bridge(SECRET, lambda op, args: None, lambda rid, data: None)
    bridge.begin("cell")
    assert [bridge.verify(raw) for raw in frames] == bodies
    assert [bridge.verify(raw) for raw in frames] == [None] * len(bodies)  # replays are dropped
