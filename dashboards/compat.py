"""The Streamlit internals the dashboard relies on, in one place (as :mod:`gatelens.models.compat` is for Keras).

Streamlit has no public API for the id of the session a script run belongs to, nor for whether a session's
browser is still connected; the idle-session reaper (:mod:`gatelens.dashboards.sessions`) needs both. Each
function returns a neutral value when Streamlit's runtime is absent (a plain Python process, ``AppTest``) or its
internals moved, so a Streamlit upgrade costs the reaper its work, never a page.

Examples
--------
>>> script_session_id() is None  # outside a script run
True
>>> connected_sessions(["a", "b"])  # no Streamlit server in this process
set()
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)


def script_session_id() -> str | None:
    """The id of the Streamlit session whose script runs on this thread (None outside a script run)."""
    try:
        from streamlit.runtime.scriptrunner import get_script_run_ctx

        ctx = get_script_run_ctx(suppress_warning=True)
    except Exception:  # Streamlit's internals moved: behave as outside a script run
        log.debug("could not read Streamlit's script run context", exc_info=True)
        return None
    return None if ctx is None else str(ctx.session_id)


def connected_sessions(ids: Iterable[str]) -> set[str]:
    """Those of ``ids`` whose browser is connected now (empty without a Streamlit runtime, e.g. ``AppTest``)."""
    try:
        from streamlit import runtime

        if not runtime.exists():
            return set()
        rt = runtime.get_instance()
        return {sid for sid in ids if rt.is_active_session(sid)}
    except Exception:  # a runtime shutting down, or Streamlit's internals moved
        log.debug("could not ask the runtime for its sessions", exc_info=True)
        return set()
