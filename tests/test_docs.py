"""Every code sample of README.md and docs/*.md runs as written.

Each fenced block is found with its language and the marker, if any, on the
last non-blank line before it. Without a marker a block is handled by its
language:

- ``python``: run as a script in a fresh process, in a scratch directory of
  its page (see ``file`` below); it must exit 0.
- ``js`` and ``html``: checked by ``node --check`` (an HTML block's inline
  scripts), then run in headless Chromium, in a page of the README's app
  served by gunicorn, signed in as ``Ann``, after ``/realtime/client.js``
  (``<script src>`` of an HTML block are loaded as written). A block with an
  ``import`` runs as a module. An error thrown while it runs fails the test.
  The README's page itself is tested end to end: two users, one message.
- ``bash``/``sh``: checked by ``bash -n``, and every path of this repository
  it names (``./scripts/demo.sh``, ``benchmarks/run.py``, ...) must exist.
  The extras of a ``pip install flask_realtime[...]`` must be in setup.cfg.
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

import configparser
import json
import re
import shutil
import subprocess
import sys
import textwrap
import typing as t
from pathlib import Path

import pytest

from tests import servers
from tests.browser.conftest import CHROMIUM_ARGS, chromium_path
from tests.servers import ROOT, Server, child_environment

if t.TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

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


@pytest.fixture(scope="module")
def readme_app(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[Server]:
    """The README's app, written out from its blocks, under gunicorn."""
    directory = tmp_path_factory.mktemp("readme")
    for block in blocks_of(ROOT / "README.md"):
        if block.marker == "file":
            (directory / block.arg).parent.mkdir(parents=True, exist_ok=True)
            (directory / block.arg).write_text(block.text)
    server = servers.start(
        "geventwebsocket",
        directory / "logs",
        app="app:app",
        env={"PYTHONPATH": str(directory)},
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> t.Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        pytest.fail("no Chromium: install Debian's chromium package")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


def signed_in_page(browser: Browser, server: Server, name: str, path: str) -> Page:
    """A page of its own browser context, signed in to the README's app."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{server.url}/?name={name}")
    if path != "/":
        page.goto(server.url + path)
    return page


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=_id)
def test_sample_runs_as_written(
    block: Block, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    opened: list[Page] = []

    def page() -> Page:
        browser = request.getfixturevalue("browser")
        server = request.getfixturevalue("readme_app")
        opened.append(signed_in_page(browser, server, "Ann", "/realtime/health"))
        return opened[-1]

    prepare(block, tmp_path)
    try:
        check_block(block, tmp_path, page)
    finally:
        for each in opened:
            each.context.close()


@pytest.mark.browser
def test_readme_page_in_the_browser(browser: Browser, readme_app: Server) -> None:
    """Two users on the README's page: each sees the other, and a message."""
    from playwright.sync_api import expect

    ann = signed_in_page(browser, readme_app, "Ann", "/")
    bob = signed_in_page(browser, readme_app, "Bob", "/")
    try:
        # The page's own consts: both users are in the room, each sees both.
        for page in (ann, bob):
            page.wait_for_function(
                "() => people.state === 'subscribed' && people.members.length === 2",
                timeout=10000,
            )
        ann.fill("#text", "Hello from Ann")
        ann.click("button")
        for page in (ann, bob):
            expect(page.locator("#messages li")).to_have_text(
                ["Ann: Hello from Ann"], timeout=10000
            )
    finally:
        ann.context.close()
        bob.context.close()


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


def _json_block(page: str, starts: str) -> t.Any:
    [block] = [
        b
        for b in blocks_of(ROOT / page)
        if b.lang == "json" and b.text.lstrip().startswith(starts)
    ]
    return json.loads(block.text)


def test_documented_json_has_the_fields_the_server_sends() -> None:
    """The health answer and the ``connected`` message, field for field."""
    from flask import Flask

    from flask_realtime import Realtime

    app = Flask(__name__)
    app.config["REALTIME_TRANSPORTS"] = ["websocket", "sse", "longpolling", "memory"]
    realtime = Realtime(app)
    health = app.test_client().get("/realtime/health").get_json()
    documented = _json_block("docs/deployment.md", '{\n  "status"')
    assert documented.keys() == health.keys()
    assert documented["broker_messages"].keys() == health["broker_messages"].keys()

    with realtime.test_client() as client:
        connected = client.connected
    documented = _json_block("docs/protocol.md", '{"type": "connected"')
    assert documented.keys() == connected.keys()
    assert documented["data"].keys() == connected["data"].keys()
