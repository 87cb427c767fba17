"""The gatelens dashboard: Streamlit pages (``dashboards/views``) thin over ordinary modules.

``app.py`` and ``views/*.py`` only lay out widgets and charts. The logic lives in plain modules that
import no Streamlit where they can: :mod:`gatelens.dashboards.demos` (the bundled demo models),
:mod:`gatelens.dashboards.core` (load, extract, analyse, export -- the same library calls as the CLI),
:mod:`gatelens.dashboards.jobs` (background work with progress), :mod:`gatelens.dashboards.charts` (Altair charts),
:mod:`gatelens.dashboards.render` (the coloured text view) and :mod:`gatelens.dashboards.explain` (the plain-language
unit summary). :mod:`gatelens.dashboards.state` holds the per-session state and the bounded caches.
"""
