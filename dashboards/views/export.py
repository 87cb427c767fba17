"""Export: every CSV of the contract (one zip, or one by one) and the run manifest."""

from __future__ import annotations

import streamlit as st

from gatelens.dashboards import core, state

st.title("Export")
run = state.require_run()
st.caption(
    "The same files as `gatelens export RUN --csv DIR`: a header row, one record per row, '.' as the decimal "
    "separator, text cells that cannot start a spreadsheet formula. The manifest records the model, the data, the "
    "options, the versions and the verification of this run."
)
archive, sizes = state.require_export(run)
st.download_button(
    "Download everything (zip)",
    data=archive,
    file_name="gatelens-export.zip",
    mime="application/zip",
    icon=":material/folder_zip:",
    type="primary",
    on_click="ignore",
    key="export_zip",
)
st.caption(f"{len(sizes)} files, {sum(sizes.values()) / 1e6:.2f} MB uncompressed.")

st.subheader("One by one")
for name, size in sizes.items():
    c1, c2 = st.columns([3, 1])
    c1.download_button(
        name,
        data=core.zip_member(archive, name),
        file_name=name,
        mime="application/json" if name.endswith(".json") else "text/csv",
        icon=":material/download:",
        on_click="ignore",
        key=f"export_{name}",
    )
    c2.caption(f"{size / 1e3:,.1f} kB")

with st.expander("Run manifest"):
    st.json(run.manifest, expanded=1)
