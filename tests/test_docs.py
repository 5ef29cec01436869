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

import json
import sys
import textwrap
import typing as t
from pathlib import Path

import pytest

from tests import servers
from tests.docsamples import (
    LANGUAGES,
    MARKERS,
    PAGES,
    Block,
    blocks_of,
    check_block,
    prepare,
    run,
)
from tests.servers import ROOT, Server

if t.TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

ALL_BLOCKS = [block for page in PAGES for block in blocks_of(page)]


def _id(block: Block) -> str:
    return f"{block.where}-{block.lang}"


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
    """The README's app, written out from its blocks, under gunicorn with the
    worker class the README shows."""
    directory = tmp_path_factory.mktemp("readme")
    for block in blocks_of(ROOT / "README.md"):
        if block.marker == "file":
            (directory / block.arg).parent.mkdir(parents=True, exist_ok=True)
            (directory / block.arg).write_text(block.text)
    server = servers.start(
        servers.REALTIME_WORKER,
        directory / "logs",
        app="app:app",
        env={"PYTHONPATH": str(directory)},
    )
    yield server
    server.discard()


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
