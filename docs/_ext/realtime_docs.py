"""flask_realtime's own Sphinx extension: what the site generates from the code.

- ``realtime-config``: a table of ``REALTIME_*`` keys whose default, options
  and environment variables are read from :mod:`flask_realtime.config` at
  build time. The page gives only each key's meaning, as a two-column
  Markdown table (``| key | meaning |``) inside the directive, so the page
  still reads well on a repository host. A key of ``DEFAULTS`` that no table
  lists, a listed key the code does not have, or one listed twice is a
  warning, so the reference cannot drift from the code (the suite builds
  with warnings as errors).
- ``optional-toctree``: a ``toctree`` whose entries that do not exist (yet)
  are left out, so the index can name pages that other branches add.
- Links from a page to a file of the repository outside ``docs/`` (such as
  ``../examples/celery/README.md``) work on a repository host but have no
  page in the site: they become their link text. A link to a file that does
  not exist stays a warning.
"""

from __future__ import annotations

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
    names = []
    for name, option in variables:
        names.append(f"`{name}`" + (f" (`{option}`)" if option else ""))
    return ", ".join(names)


def key_row(key: str, meaning: str) -> str:
    """One generated Markdown table row: key, default, meaning plus the code's facts."""
    from flask_realtime.config import DEFAULTS

    parts = [meaning.strip().rstrip(".") + "."]
    options = option_defaults().get(key)
    if options:
        listed = ", ".join(
            f"`{name}` ({_code(value)})" for name, value in options.items()
        )
        parts.append(f"Options (default): {listed}.")
    variables = environment_variables().get(key)
    if variables:
        parts.append(f"Environment: {_environment_text(variables)}.")
    return f"| `{key}` | {_code(DEFAULTS[key])} | {' '.join(parts)} |"


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
            if cells[:2] == ["key", "meaning"]:
                continue
            key_match = _KEY_CELL.match(cells[0])
            if len(cells) != 2 or key_match is None:
                logger.warning(
                    "realtime-config rows are | `REALTIME_KEY` | meaning |: the"
                    " default and the environment variables are generated; got %r",
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
            rows.append(key_row(key, cells[1]))
        container = nodes.container(classes=["realtime-config"])
        self.state.nested_parse(StringList(rows), self.content_offset, container)
        return [container]


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
                " realtime-config table: add a row | `%s` | meaning | to"
                " docs/configuration.md",
                key,
                key,
                location="configuration",
            )


def setup(app: Sphinx) -> dict[str, t.Any]:
    app.add_directive("realtime-config", RealtimeConfig)
    app.add_directive("optional-toctree", OptionalTocTree)
    app.add_post_transform(RepositoryLinks)
    app.connect("env-before-read-docs", _init_keys)
    app.connect("env-purge-doc", _purge_doc)
    app.connect("env-merge-info", _merge)
    app.connect("env-check-consistency", _check_every_key)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
