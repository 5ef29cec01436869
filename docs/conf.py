"""Sphinx configuration of flask_realtime's documentation site.

Build it with ``sphinx-build -W -b html docs docs/_build/html`` (the ``docs``
extra installs Sphinx and myst-parser); tests/test_docs_site.py does the same
with warnings as errors. The pages are Markdown (MyST), so they read the same
on a repository host as in the built site.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))  # the site's own extensions
sys.path.insert(0, str(HERE.parent))  # flask_realtime, for autodoc

project = "flask_realtime"
author = "flask_realtime's authors"
copyright = "flask_realtime's authors"
release = "0.1.0"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "realtime_docs",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# Links such as deployment.md#stopping resolve to the heading's anchor, as
# they do on a repository host.
myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence", "deflist"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_default_options = {"members": True}

html_theme = "alabaster"
html_title = "flask_realtime"
html_static_path: list[str] = []
