"""Code samples of the Markdown pages: found, and checked or run by language.

tests/test_docs.py runs them all and describes the marker convention.
"""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest

from tests.servers import ROOT, child_environment

if t.TYPE_CHECKING:
    from playwright.sync_api import Page

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
    assert found is not None, (
        "node checks the JavaScript samples: install Debian's nodejs (.ci/run does)"
    )
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


def run_in_browser(block: Block, page: Page) -> None:
    """Run a JavaScript or HTML sample in ``page``; fail on an error it throws."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.add_script_tag(url="/realtime/client.js")
    if block.lang == "html":
        scripts = re.findall(
            r"<script(?P<attrs>[^>]*)>(?P<code>.*?)</script>", block.text, re.S
        )
        for attrs, code in scripts:
            source = re.search(r'\bsrc="([^"]+)"', attrs)
            if source is not None:
                page.add_script_tag(url=source[1])
            else:
                page.add_script_tag(content=code)
    else:
        module = re.search(r"^import ", block.text, re.M) is not None
        # A module runs once its imports are loaded: the flag says it ran through.
        code = block.text + "\nglobalThis.sampleRanThrough = true;\n"
        page.add_script_tag(content=code, type="module" if module else "")
        try:
            page.wait_for_function("() => globalThis.sampleRanThrough", timeout=5000)
        except PlaywrightTimeout:
            errors.append("it did not run to its end")
    # One round trip more, for errors of what the sample started at once.
    page.evaluate("() => new Promise((resolve) => setTimeout(resolve))")
    assert not errors, f"{block.where}: the sample threw in the browser: {errors}"


def package_extras() -> set[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return set(config["options.extras_require"])


def check_block(block: Block, directory: Path, page: t.Callable[[], Page]) -> None:
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
        if not block.marker:
            run_in_browser(block, page())
    elif block.lang == "html":
        for script in scripts_of(block.text):
            check_javascript(script, directory, what)
        if not block.marker:
            run_in_browser(block, page())
    elif block.lang in ("bash", "sh"):
        run(["bash", "-n", "-c", block.text], directory, f"bash -n of {what}")
        for path in _REPO_PATH.findall(block.text):
            assert (ROOT / path).exists(), f"{block.where}: names {path}, missing"
        for extras in re.findall(
            r"pip install \S*flask_realtime\[([\w,-]+)\]", block.text
        ):
            unknown = set(extras.split(",")) - package_extras()
            assert not unknown, f"{block.where}: no such extra in setup.cfg: {unknown}"
    elif block.lang == "json":
        json.loads(block.text)
    elif block.lang == "nginx":
        assert block.page.name == "deployment.md", "tests/test_nginx.py runs one"
    else:
        pytest.fail(f"{block.where}: no handler for {block.lang!r} samples")
