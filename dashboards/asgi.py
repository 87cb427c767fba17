"""The dashboard as an ASGI app (``st.App``): the Streamlit pages of ``app.py`` plus the streaming download route.

``gatelens dashboard`` runs ``streamlit run`` on this file; Streamlit finds ``app`` below and serves it
(uvicorn). The one extra route, :data:`gatelens.dashboards.exporting.DOWNLOAD_ROUTE`, streams the Export
page's files from disk (see :mod:`gatelens.dashboards.exporting`): Streamlit's own download button would
hold each file in the server's memory. The Export page links to the route only once this app has started
(its lifespan), so importing this module changes nothing.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

import streamlit as st
from starlette.routing import Route

from gatelens.dashboards import exporting

APP = Path(__file__).resolve().parent / "app.py"


@asynccontextmanager
async def _serving(_app):
    exporting.mark_route_served(True)
    try:
        yield
    finally:
        exporting.mark_route_served(False)


app = st.App(APP, routes=[Route(exporting.DOWNLOAD_ROUTE + "/{token}", exporting.download_endpoint)], lifespan=_serving)
