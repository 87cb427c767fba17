"""The console script's process settings (gatelens._console): NumPy's huge-page requests off unless the user chose."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# what NumPy decided at import, printed when the process exits (after main() returned or argparse exited)
PROBE = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('hugepage', __import__('numpy')._core.multiarray._get_madvise_hugepage(),\n"
    "                              __import__('pyarrow').default_memory_pool().backend_name))\n"
    "sys.argv = ['gatelens', '--help']\n"
    "from gatelens._console import main\n"
    "main()\n"
)


def _run(env_value: str | None, pool: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("NUMPY_MADVISE_HUGEPAGE", "ARROW_DEFAULT_MEMORY_POOL")}
    if env_value is not None:
        env["NUMPY_MADVISE_HUGEPAGE"] = env_value
    if pool is not None:
        env["ARROW_DEFAULT_MEMORY_POOL"] = pool
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120, check=True
    )
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise huge pages are a Linux setting")
def test_console_script_turns_numpy_huge_pages_off_and_arrow_to_the_system_pool():
    assert _run(None) == "hugepage False system"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise huge pages are a Linux setting")
def test_a_users_choice_is_kept():
    assert _run("1", "mimalloc") == "hugepage True mimalloc"


def test_entry_points_go_through_the_console_module():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["gatelens"] == "gatelens._console:main"
    assert "from gatelens._console import main" in (ROOT / "gatelens" / "__main__.py").read_text()


def test_dask_workers_get_the_same_settings():
    from gatelens._console import PROCESS_ENV
    from gatelens.analysis.distributed import WORKER_ENV

    assert PROCESS_ENV.items() <= WORKER_ENV.items()
