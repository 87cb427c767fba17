"""Shared test set-up: quiet TensorFlow, one BLAS thread (NumPy beside TF), artifacts folder."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OMP_NUM_THREADS", "1")
