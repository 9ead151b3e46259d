"""The inspection UI: review flagged failures, browse the memory graph, see training runs and the observer.

    mindloop ui [--host 127.0.0.1] [--port 8765] [--token T]

FastAPI with server-rendered Jinja2 templates and a little JavaScript; the
charts (Chart.js) and the graph drawing (Cytoscape.js) are vendored under
``static/vendor/``, so the UI works offline. How it is put together, what
each page shows and its security: ``docs/ui.md``.

Modules: :mod:`~mindloop.agents.ui.config` (settings), :mod:`~mindloop.agents.ui.inspector`
(what each page shows, as dicts), :mod:`~mindloop.agents.ui.pages` (HTML),
:mod:`~mindloop.agents.ui.api` (``/api/...`` JSON), :mod:`~mindloop.agents.ui.security` (token,
CSRF, headers) and :mod:`~mindloop.agents.ui.app` (the app factory).
"""

from mindloop.agents.ui.app import create_app
from mindloop.agents.ui.config import UIConfig
from mindloop.agents.ui.inspector import Inspector

__all__ = ["Inspector", "UIConfig", "create_app"]
