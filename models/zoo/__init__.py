"""The model zoo: train Keras LSTM/GRU models on bundled real data and on planted-mechanism tasks.

Importing this package does not import TensorFlow; the training functions do, when called.

Examples
--------
>>> from gatelens.models.zoo import generate_task
>>> generate_task("brackets", 2, length=10, seed=0).x.shape
(2, 10)
"""

from __future__ import annotations

from gatelens.models.zoo.datasets import Vocabulary, tokenize
from gatelens.models.zoo.tasks import TASKS, TaskData, write_features_csv
from gatelens.models.zoo.tasks import generate as generate_task
from gatelens.models.zoo.train import (
    TrainResult,
    build_series_model,
    build_text_model,
    card_path,
    evaluate,
    read_card,
    train_task,
    train_text,
    train_timeseries,
    vocabulary_path,
)

__all__ = [
    "TASKS",
    "TaskData",
    "TrainResult",
    "Vocabulary",
    "build_series_model",
    "build_text_model",
    "card_path",
    "evaluate",
    "generate_task",
    "read_card",
    "tokenize",
    "train_task",
    "train_text",
    "train_timeseries",
    "vocabulary_path",
    "write_features_csv",
]
