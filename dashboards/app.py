"""gatelens dashboard: ``streamlit run dashboards/app.py`` (what ``gatelens dashboard`` and ``make run`` start).

The navigation and the sidebar only; each page is a file in ``dashboards/views`` (not ``pages/``, which Streamlit would treat as a legacy multipage folder).
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from gatelens.dashboards import sessions, state

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

state.sweep_orphans_once()  # temporary runs of a previous server that was killed
sessions.install_stack_dump()  # kill -USR1 <pid>: every thread's stack to the server's stderr (a page that hangs)
st.set_page_config(page_title="gatelens", page_icon=":material/tune:", layout="wide")

PAGES = Path(__file__).resolve().parent / "views"
pages = [
    st.Page(PAGES / "model.py", title="Model", icon=":material/memory:", default=True),
    st.Page(PAGES / "data.py", title="Data", icon=":material/dataset:"),
    st.Page(PAGES / "gates.py", title="Gates over the input", icon=":material/text_fields:"),
    st.Page(PAGES / "units.py", title="Units", icon=":material/scatter_plot:"),
    st.Page(PAGES / "features.py", title="Features", icon=":material/grid_on:"),
    st.Page(PAGES / "memory.py", title="Memory", icon=":material/history:"),
    st.Page(PAGES / "explain.py", title="Unit explained", icon=":material/school:"),
    st.Page(PAGES / "whatif.py", title="What if", icon=":material/science:"),
    st.Page(PAGES / "search.py", title="Search", icon=":material/search:"),
    st.Page(PAGES / "export.py", title="Export", icon=":material/download:"),
]
page = st.navigation(pages)
sessions.keep_alive()  # heartbeat: an ended session's files are removed by the reaper (gatelens.dashboards.sessions)

with st.sidebar:
    st.markdown("### gatelens")
    st.caption("What the gates of a Keras LSTM or GRU learned to keep and to forget.")
    state.sidebar_status()  # updates itself while the analysis stages run

page.run()
