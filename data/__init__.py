"""The bundled data of gatelens: demo models and their data (``demo/``), the text corpus, the series.

Installed as the package ``gatelens.data``; :data:`DATA_DIR` is its folder, in a checkout and in a wheel.
"""

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
DEMO_DIR = DATA_DIR / "demo"
