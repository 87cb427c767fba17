"""The gatelens dashboard: Streamlit pages (``dashboards/pages``) thin over ordinary modules.

``app.py`` and ``pages/*.py`` only lay out widgets and charts. The logic lives in plain modules that
import no Streamlit where they can: :mod:`dashboards.demos` (the bundled demo models),
:mod:`dashboards.core` (load, extract, analyse, export -- the same library calls as the CLI),
:mod:`dashboards.jobs` (background work with progress), :mod:`dashboards.charts` (Altair charts),
:mod:`dashboards.render` (the coloured text view) and :mod:`dashboards.explain` (the plain-language
unit summary). :mod:`dashboards.state` holds the per-session state and the bounded caches.
"""
