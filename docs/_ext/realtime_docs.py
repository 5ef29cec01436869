"""flask_realtime's own Sphinx extension: what the site generates from the code.

- ``realtime-config``: a Markdown table of ``REALTIME_*`` keys
  (``| key | default | meaning |``; every such table of the pages named in
  ``realtime_config_pages``, docs/configuration.md, is one, so the page
  stays plain Markdown) rendered with the default and the environment variables
  that :mod:`flask_realtime.config` has at build time. A key of ``DEFAULTS``
  that no table lists, a listed key the code does not have or one listed
  twice, a default, environment variable or option default the code does
  not have, and an option the row does not name are warnings, so the
  reference cannot drift from the code (the suite builds with warnings as
  errors).
- ``optional-toctree``: a ``toctree`` whose entries that do not exist (yet)
  are left out, so the index can name pages that other branches add.
- Links from a page to a file of the repository outside ``docs/`` (such as
  ``../examples/celery/README.md``) work on a repository host but have no
  page in the site: they become their link text. A link to a file that does
  not exist stays a warning.
"""

from __future__ import annotations

import ast
import collections.abc
import re
import typing as t
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx import addnodes
from sphinx.directives.other import TocTree
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

if t.TYPE_CHECKING:
    from sphinx.application import Sphinx
    from sphinx.environment import BuildEnvironment

logger = logging.getLogger(__name__)

_KEY_CELL = re.compile(r"^`(REALTIME_[A-Z0-9_]+)`$")


# -- what the code says ------------------------------------------------------------


class _RecordingEnviron(collections.abc.Mapping[str, str]):
    """An environment that notes every variable it is asked for."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.asked: list[str] = []

    def __getitem__(self, name: str) -> str:
        self.asked.append(name)
        return self.values[name]

    def __iter__(self) -> t.Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


def environment_variables() -> dict[str, list[tuple[str, str | None]]]:
    """Key -> [(variable, option or None)], found by asking the code itself.

    ``environment_defaults`` is run on an empty environment to learn which
    variables it reads, then once per variable to learn which key (and which
    option of a dict key) that variable sets.
    """
    from flask_realtime.config import environment_defaults

    probe = _RecordingEnviron({})
    environment_defaults(probe)
    found: dict[str, list[tuple[str, str | None]]] = {}
    for name in dict.fromkeys(probe.asked):
        for key, value in environment_defaults(_RecordingEnviron({name: "1"})).items():
            options = list(value) if isinstance(value, dict) else [None]
            for option in options:
                found.setdefault(key, []).append((name, option))
    return found


def option_defaults() -> dict[str, dict[str, t.Any]]:
    """The options of the dict keys, with the value each takes when left out."""
    from flask_realtime.config.broker_options import RABBITMQ_DEFAULTS, REDIS_DEFAULTS
    from flask_realtime.config.validate import RATE_LIMIT_DEFAULTS

    return {
        "REALTIME_REDIS": REDIS_DEFAULTS,
        "REALTIME_RABBITMQ": RABBITMQ_DEFAULTS,
        "REALTIME_RATE_LIMIT": RATE_LIMIT_DEFAULTS,
    }


def _code(value: t.Any) -> str:
    return "`" + repr(value).replace("|", "\\|") + "`"


def _environment_text(variables: list[tuple[str, str | None]]) -> str:
    per_option = [(name, option) for name, option in variables if option]
    prefixes = {name[: -len(option)] for name, option in per_option}
    if (
        len(per_option) > 4
        and len(prefixes) == 1
        and all(name.endswith(option.upper()) for name, option in per_option)
    ):
        # RABBITMQ_HOST, RABBITMQ_PORT, ...: one per option, named alike.
        return f"`{prefixes.pop()}<OPTION>` (each option, in capitals)"
    if not per_option:
        # REALTIME_RABBITMQ_URL: RABBITMQ_URL, else AMQP_URL (the first set wins).
        return ", else ".join(f"`{name}`" for name, _ in variables)
    return ", ".join(f"`{name}` (`{option}`)" for name, option in per_option)


_ENVIRONMENT = re.compile(r"(?:^|\.?\s+)[Ee]nvironment: (?P<names>[^|]*?)\s*$")
_OPTION_PAIR = re.compile(r"`(\w+)` \((`?)([^()`]*)\2\)")


def _literal(text: str) -> t.Any:
    """A value as the page writes it: a Python literal, or else the bare text.

    The first code span of a cell is its value: ```None` (off)`` is None.
    """
    code = re.search(r"`([^`]*)`", text)
    text = code[1] if code else text.strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def key_row(key: str, default_cell: str, meaning: str) -> tuple[str, list[str]]:
    """The rendered row of ``key``, and where the page disagrees with the code.

    The default shown is the code's; the page's must equal it. The
    environment variables shown are the code's; the page must name the same.
    Every option of a dict key must be named on the row, and an option's
    default, when the page gives one as ``name`` (value), must be the code's.
    """
    from flask_realtime.config import DEFAULTS

    problems = []
    default = DEFAULTS[key]
    if _literal(default_cell) != default:
        problems.append(f"the page's default {default_cell} is not {default!r}")
    variables = environment_variables().get(key, [])
    generated = _environment_text(variables) if variables else ""
    written = _ENVIRONMENT.search(meaning)
    named = set(
        re.findall(r"`([A-Z][A-Z0-9_<>]*)`", written["names"] if written else "")
    )
    if named != set(re.findall(r"`([A-Z][A-Z0-9_<>]*)`", generated)):
        problems.append(
            f"the code reads the environment variables {generated or 'none'}"
        )
    text = meaning[: written.start()] if written else meaning
    for name, value in (options := option_defaults().get(key, {})).items():
        if f"`{name}`" not in meaning and f'"{name}"' not in default_cell:
            problems.append(f"option {name!r} (default {value!r}) is not on the page")
    for name, _, value in _OPTION_PAIR.findall(meaning):
        if name in options and _literal(value) != options[name]:
            problems.append(
                f"option {name!r} defaults to {options[name]!r}, not {value}"
            )
    parts = [text.strip().rstrip(".") + "." if text.strip() else ""]
    if generated:
        parts.append(f"Environment: {generated}.")
    row = f"| `{key}` | {_code(default)} | {' '.join(p for p in parts if p)} |"
    return row, problems


# -- the directives ----------------------------------------------------------------


def _cells(line: str) -> list[str]:
    inner = line.strip()
    inner = inner[1:] if inner.startswith("|") else inner
    inner = inner[:-1] if inner.endswith("|") and not inner.endswith("\\|") else inner
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", inner)]


class RealtimeConfig(SphinxDirective):
    """``REALTIME_*`` keys: meanings from the page, the rest from the code."""

    has_content = True

    def run(self) -> list[nodes.Node]:
        from flask_realtime.config import DEFAULTS

        rows = ["| key | default | meaning |", "|---|---|---|"]
        seen = self.env.realtime_config_keys  # type: ignore[attr-defined]
        for number, line in enumerate(self.content):
            where = (self.env.docname, self.content_offset + number + 1)
            if not line.strip() or re.fullmatch(r"[|\s:-]+", line):
                continue
            cells = _cells(line)
            if cells[:3] == ["key", "default", "meaning"]:
                continue
            key_match = _KEY_CELL.match(cells[0])
            if len(cells) != 3 or key_match is None:
                logger.warning(
                    "realtime-config rows are | `REALTIME_KEY` | default | meaning |,"
                    " got %r",
                    line,
                    location=where,
                )
                continue
            key = key_match[1]
            if key not in DEFAULTS:
                logger.warning(
                    "%s is not a key of flask_realtime.config.DEFAULTS",
                    key,
                    location=where,
                )
                continue
            if key in seen:
                logger.warning(
                    "%s is documented twice (also in %s)",
                    key,
                    seen[key],
                    location=where,
                )
                continue
            seen[key] = self.env.docname
            row, problems = key_row(key, cells[1], cells[2])
            for problem in problems:
                logger.warning("%s: %s", key, problem, location=where)
            rows.append(row)
        container = nodes.container(classes=["realtime-config"])
        self.state.nested_parse(StringList(rows), self.content_offset, container)
        return [container]


_TABLE_HEAD = re.compile(r"^\| *key *\| *default *\| *meaning *\|[ \t]*$", re.M)


def _wrap_config_tables(app: Sphinx, docname: str, source: list[str]) -> None:
    """The configuration page's key tables become ``realtime-config`` tables.

    The page stays plain Markdown (``| key | default | meaning |`` tables),
    and a table added to it later is checked without further ado.
    """
    if docname not in app.config.realtime_config_pages:
        return
    text = source[0]
    for head in reversed(list(_TABLE_HEAD.finditer(text))):
        end = head.start()
        while end < len(text) and text.startswith("|", end):
            end = text.find("\n", end) + 1 or len(text)
        table = text[head.start() : end]
        text = (
            text[: head.start()] + f":::{{realtime-config}}\n{table}:::\n" + text[end:]
        )
    source[0] = text


class OptionalTocTree(TocTree):
    """A toctree that leaves out the entries with no page (yet)."""

    def run(self) -> list[nodes.Node]:
        kept = [
            line
            for line in self.content
            if not line.strip()
            or line.strip().startswith(":")
            or self._target(line) in self.env.found_docs
        ]
        self.content = StringList(kept, source=self.env.docname)
        return super().run()

    @staticmethod
    def _target(line: str) -> str:
        entry = line.strip()
        explicit = re.fullmatch(r".*<(.+)>", entry)
        return (explicit[1] if explicit else entry).removesuffix(".md")


class RepositoryLinks(SphinxPostTransform):
    """Links to repository files outside the site become their text."""

    default_priority = 8  # before MyST resolves its references (9)

    def run(self, **kwargs: t.Any) -> None:
        source = Path(self.env.srcdir).resolve()
        root = source.parent
        for node in list(self.document.findall(addnodes.pending_xref)):
            if node.get("reftype") != "myst" or node.get("refdomain") != "doc":
                continue
            if node["reftarget"] in self.env.all_docs:
                continue
            path = (source / node["reftarget"]).resolve()
            candidates = [path, path.with_name(path.name + ".md")]
            outside = root in path.parents and source not in [path, *path.parents]
            if outside and any(c.is_file() for c in candidates):
                node.replace_self(nodes.inline("", "", *node.children))


# -- the check that every key is documented ------------------------------------------


def _init_keys(app: Sphinx, env: BuildEnvironment, docnames: list[str]) -> None:
    if not hasattr(env, "realtime_config_keys"):
        env.realtime_config_keys = {}  # type: ignore[attr-defined]


def _purge_doc(app: Sphinx, env: BuildEnvironment, docname: str) -> None:
    keys = getattr(env, "realtime_config_keys", {})
    for key in [k for k, doc in keys.items() if doc == docname]:
        del keys[key]


def _merge(
    app: Sphinx, env: BuildEnvironment, docnames: set[str], other: BuildEnvironment
) -> None:
    env.realtime_config_keys.update(other.realtime_config_keys)  # type: ignore[attr-defined]


def _check_every_key(app: Sphinx, env: BuildEnvironment) -> None:
    from flask_realtime.config import DEFAULTS

    documented = getattr(env, "realtime_config_keys", {})
    for key in DEFAULTS:
        if key not in documented:
            logger.warning(
                "configuration key %s (flask_realtime.config.DEFAULTS) is in no"
                " realtime-config table: add a row | `%s` | default | meaning | to"
                " a table of docs/configuration.md, inside its :::{realtime-config}",
                key,
                key,
                location="configuration",
            )


def setup(app: Sphinx) -> dict[str, t.Any]:
    app.add_config_value("realtime_config_pages", ["configuration"], "env")
    app.add_directive("realtime-config", RealtimeConfig)
    app.connect("source-read", _wrap_config_tables)
    app.add_directive("optional-toctree", OptionalTocTree)
    app.add_post_transform(RepositoryLinks)
    app.connect("env-before-read-docs", _init_keys)
    app.connect("env-purge-doc", _purge_doc)
    app.connect("env-merge-info", _merge)
    app.connect("env-check-consistency", _check_every_key)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
