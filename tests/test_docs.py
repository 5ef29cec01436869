"""Every code sample of README.md and docs/*.md runs as written.

Each fenced block is found with its language and the marker, if any, on the
last non-blank line before it. Without a marker a block is handled by its
language:

- ``python``: run as a script in a fresh process, in a scratch directory of
  its page (see ``file`` below); it must exit 0.
- ``js``: checked by ``node --check``; ``html``: each inline ``<script>`` is.
- ``bash``/``sh``: checked by ``bash -n``, and every path of this repository
  it names (``./scripts/demo.sh``, ``benchmarks/run.py``, ...) must exist.
  Shell samples start servers, install packages or run the whole suite, so
  they are not run here; the servers they start are tested elsewhere.
- ``json``: parsed.
- ``nginx``: the config of docs/deployment.md, run by tests/test_nginx.py.

Any other language fails the test: a new kind of sample needs a handler here.

Markers, an HTML comment right before the block (use them sparingly, never to
hide a broken sample):

- ``<!-- test: file PATH -->``: the block is the file PATH of the page's
  program. It is written to the page's scratch directory before the blocks
  after it run, so they can import it or render it. A ``test_*.py`` file is
  run with pytest, another ``.py`` file as a script.
- ``<!-- test: config -->``: a Python fragment of an app's configuration. It
  runs after ``app = Flask(__name__)`` and before ``Realtime(app)``, which
  must accept it.
- ``<!-- test: excerpt PATH -->``: the block is quoted from PATH (a file of
  this repository that is tested where it lives). Its lines must appear
  there, consecutively, ignoring indentation and trailing comments; a line
  ``...``, ``# ...`` or ``// ...`` stands for lines left out.
- ``<!-- test: skip REASON -->``: not run, by nature (a server that runs until
  stopped); its syntax is still checked.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
import typing as t
from pathlib import Path

import pytest

from tests.servers import ROOT, child_environment

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = ("python", "js", "html", "bash", "sh", "json", "nginx")
MARKERS = ("file", "config", "excerpt", "skip")
RUN_TIMEOUT = 120.0

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[ \t]*$")
_MARKER = re.compile(r"^\s*<!--\s*test:\s*(?P<kind>\w+)\s*(?P<arg>.*?)\s*-->\s*$")
_REPO_PATH = re.compile(
    r"(?<![\w/.-])(?:\./)?((?:scripts|benchmarks|examples|tests|docs)/[\w./-]*\w)"
)
_CONFIG_PRELUDE = "from flask import Flask\n\napp = Flask(__name__)\n"
_CONFIG_CODA = "\nfrom flask_realtime import Realtime\n\nRealtime(app)\n"


class Block(t.NamedTuple):
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    marker: str  # "" when there is none
    arg: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks_of(page: Path) -> list[Block]:
    """The fenced blocks of a Markdown page, with their markers."""
    lines = page.read_text().splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        fence = _FENCE.match(lines[index])
        if fence is None:
            index += 1
            continue
        indent = fence["indent"]
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            raise AssertionError(f"{page.name}:{index + 1}: unclosed code block")
        body = "\n".join(
            line[len(indent) :] if line.startswith(indent) else line
            for line in lines[index + 1 : end]
        )
        kind, arg = "", ""
        before = index - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        marker = _MARKER.match(lines[before]) if before >= 0 else None
        if marker is not None:
            kind, arg = marker["kind"], marker["arg"]
        found.append(Block(page, index + 1, fence["lang"], body + "\n", kind, arg))
        index = end + 1
    return found


ALL_BLOCKS = [block for page in PAGES for block in blocks_of(page)]


def _id(block: Block) -> str:
    return f"{block.where}-{block.lang}"


# -- running ----------------------------------------------------------------------


def run(argv: list[str], cwd: Path, what: str) -> None:
    """Run ``argv``; fail with its output unless it exits 0."""
    result = subprocess.run(
        argv,
        cwd=cwd,
        env=child_environment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    if result.returncode != 0:
        pytest.fail(
            f"{what} failed (exit {result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}",
            pytrace=False,
        )


def node() -> str:
    found = shutil.which("node")
    assert found is not None, "node is needed to check the JavaScript samples"
    return found


def check_javascript(code: str, directory: Path, what: str) -> None:
    source = directory / "sample.js"
    source.write_text(code)
    run([node(), "--check", str(source)], directory, f"node --check of {what}")


def scripts_of(html: str) -> list[str]:
    return re.findall(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", html, re.S)


def prepare(block: Block, directory: Path) -> None:
    """Write the files that the page's earlier blocks declare."""
    for earlier in blocks_of(block.page):
        if earlier.line >= block.line:
            break
        if earlier.marker == "file":
            target = directory / earlier.arg
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(earlier.text)


def _without_comment(line: str, lang: str) -> str:
    comment = r"\s+//\s.*$" if lang == "js" else r"\s{2,}#\s.*$"
    return re.sub(comment, "", line).strip()


def check_excerpt(block: Block) -> None:
    source = ROOT / block.arg
    assert source.is_file(), f"{block.where}: excerpt of a missing file {block.arg}"
    lines = source.read_text().splitlines()
    have = [c for c in (_without_comment(x, block.lang) for x in lines) if c]
    segments: list[list[str]] = [[]]
    for line in block.text.splitlines():
        stripped = line.strip()
        if stripped in ("...", "# ...", "// ..."):
            segments.append([])
        elif stripped:
            segments[-1].append(_without_comment(line, block.lang))
    position = 0
    for segment in filter(None, segments):
        for start in range(position, len(have) - len(segment) + 1):
            if have[start : start + len(segment)] == segment:
                position = start + len(segment)
                break
        else:
            pytest.fail(
                f"{block.where}: not an excerpt of {block.arg}: these lines are"
                " not there (in this order):\n  " + "\n  ".join(segment),
                pytrace=False,
            )


def check_block(block: Block, directory: Path) -> None:
    what = f"the {block.lang} sample at {block.where}"
    if block.marker == "excerpt":
        check_excerpt(block)
    if block.lang == "python":
        compile(block.text, block.where, "exec")
        if block.marker in ("skip", "excerpt"):
            return
        if block.marker == "config":
            code = _CONFIG_PRELUDE + block.text + _CONFIG_CODA
            (directory / "config_sample.py").write_text(code)
            run([sys.executable, "config_sample.py"], directory, what)
            return
        name = block.arg if block.marker == "file" else "sample.py"
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block.text)
        if Path(name).name.startswith("test_"):
            argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
            run([*argv, name], directory, what)
        else:
            run([sys.executable, name], directory, what)
    elif block.lang == "js":
        if block.marker != "excerpt":
            check_javascript(block.text, directory, what)
    elif block.lang == "html":
        for script in scripts_of(block.text):
            check_javascript(script, directory, what)
    elif block.lang in ("bash", "sh"):
        run(["bash", "-n", "-c", block.text], directory, f"bash -n of {what}")
        for path in _REPO_PATH.findall(block.text):
            assert (ROOT / path).exists(), f"{block.where}: names {path}, missing"
    elif block.lang == "json":
        json.loads(block.text)
    elif block.lang == "nginx":
        assert block.page.name == "deployment.md", "tests/test_nginx.py runs one"
    else:
        pytest.fail(f"{block.where}: no handler for {block.lang!r} samples")


# -- the tests -------------------------------------------------------------------


def test_every_block_has_a_handled_language_and_a_known_marker() -> None:
    problems = []
    for block in ALL_BLOCKS:
        if block.lang not in LANGUAGES:
            problems.append(f"{block.where}: language {block.lang!r}")
        if block.marker and block.marker not in MARKERS:
            problems.append(f"{block.where}: marker {block.marker!r}")
        if block.marker in ("file", "excerpt", "skip") and not block.arg:
            problems.append(f"{block.where}: {block.marker} needs an argument")
        if block.marker == "config" and block.lang != "python":
            problems.append(f"{block.where}: config is for Python fragments")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=_id)
def test_sample_runs_as_written(block: Block, tmp_path: Path) -> None:
    prepare(block, tmp_path)
    check_block(block, tmp_path)


def test_readme_page_is_served_with_the_client(tmp_path: Path) -> None:
    """The README's app serves its page, and the page loads the client."""
    readme = ROOT / "README.md"
    files = {b.arg: b for b in blocks_of(readme) if b.marker == "file"}
    assert {"app.py", "templates/index.html"} <= files.keys()
    prepare(files["test_app.py"], tmp_path)
    check = textwrap.dedent(
        """
        import re
        from app import app

        client = app.test_client()
        page = client.get("/?name=Ann")
        assert page.status_code == 200, page.status_code
        sources = re.findall(r'<script src="([^"]+)"', page.get_data(as_text=True))
        assert sources == ["/realtime/client.js"], sources
        for source in sources:
            assert client.get(source).status_code == 200, source
        """
    )
    (tmp_path / "check_page.py").write_text(check)
    run([sys.executable, "check_page.py"], tmp_path, "the README's page")
