"""The basic app, loaded after ``ssl``, as any app with an HTTPS client is.

gevent warns (MonkeyPatchWarning) when it patches after ``ssl`` was
imported: serving this app shows whether the CLI patches first.
"""

from __future__ import annotations

import ssl  # noqa: F401  (imported for its side effect on patching order)

from tests.apps.basic import app as app
