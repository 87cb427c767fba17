"""The dashboard's staged analysis (gatelens.dashboards.stages) on a real tiny Keras model, without a browser.

- the stages run in order, each step once, and their tables are those of one ``pipeline.analyze`` call;
- adding a features file re-runs exactly the steps that need features (counted from the pipeline's own log
  record per step), never the extraction or the other steps;
- while a later stage runs, the earlier tables are already there and the later ones are reported not ready.
"""

from __future__ import annotations

import dataclasses
import logging
import threading

import pandas as pd
import pytest
from e2e_helpers import build_tiny_demos

from gatelens.analysis import pipeline
from gatelens.analysis.pipeline import FEATURE_STEPS, STAGES, STEPS, analyze
from gatelens.dashboards import core, stages


class _StepLog(logging.Handler):
    """The steps the pipeline reports running (its ``analysis step NAME took S s`` record)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.steps: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("analysis step ") and " took " in msg:
            self.steps.append(msg.split()[2])


@pytest.fixture
def step_log():
    logger = logging.getLogger("gatelens.analysis.pipeline")
    handler, level = _StepLog(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    paths = build_tiny_demos(tmp_path_factory.mktemp("demos"))
    model = core.load_model_bundle(core.ModelChoice(core.FileRef.of(paths["series_model"])))
    data = core.load_data_bundle(model, core.DataChoice(core.FileRef.of(paths["series_data"])))
    with_features = dataclasses.replace(
        data, choice=dataclasses.replace(data.choice, features=core.FileRef.of(paths["series_features"]))
    )
    return model, data, with_features


def _finish(*parts, timeout=120):
    for part in parts:
        assert part.job.wait(timeout), "the staged run did not finish"
        part.job.result()


def test_the_registry_places_every_step_in_a_stage():
    assert {s.stage for s in pipeline.STEP_REGISTRY} == set(STAGES)
    assert [s.name for st in STAGES for s in pipeline.stage_steps(st)] == sorted(
        STEPS, key=lambda n: list(STAGES).index(pipeline.stage_of(n))
    )
    assert FEATURE_STEPS == ("features", "correlations", "probes", "clusters", "explanations")
    assert set(stages.RUN_STAGES) | set(stages.FEATURE_STAGES) == set(STAGES)
    for st in stages.RUN_STAGES:  # the run's own stages never need features, the feature stages always do
        assert not any(s.needs_features for s in pipeline.stage_steps(st))
    for st in stages.FEATURE_STAGES:
        assert all(s.needs_features for s in pipeline.stage_steps(st))


def test_stages_run_each_step_once_and_equal_one_analyze_call(bundles, step_log):
    model, data, with_features = bundles
    base = stages.StagedRun(model, with_features).start()
    feats = stages.FeatureStages(base, with_features).start()
    _finish(base, feats)
    assert base.history == ["stats", "memory", "token_gates", "drivers", "events", "examples"]
    assert feats.history == ["features", "correlations", "clusters", "explanations", "probes"]
    assert sorted(step_log.steps) == sorted(STEPS)  # each step of the registry ran exactly once
    run = stages.Live(base, feats).snapshot()
    assert stages.Live(base, feats).all_ready and run.key == core.run_key(model.choice, with_features.choice)
    user = core.slice_features(with_features.choice.features, with_features, run.trace.n_steps)
    ref = analyze(run.trace, features=user)  # the same trace, every step in one call (events in memory)
    for table in pipeline.TABLES:
        got, want = getattr(run.analysis, table), getattr(ref, table)
        if table == "events":
            got = pd.read_parquet(run.analysis.events_file)
        pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True), obj=table)
    assert "phase" in set(run.analysis.correlations["feature"])  # the user's feature is in


def test_adding_a_features_file_reruns_only_the_steps_that_need_features(bundles, step_log):
    model, data, with_features = bundles
    base = stages.StagedRun(model, data).start()
    plain = stages.FeatureStages(base, data).start()
    _finish(base, plain)
    assert "phase" not in set(stages.Live(base, plain).snapshot().analysis.correlations["feature"])
    step_log.steps.clear()
    history = list(base.history)
    added = stages.FeatureStages(base, with_features).start()  # same run: what the dashboard's cache hands out
    _finish(added)
    assert sorted(step_log.steps) == sorted(FEATURE_STEPS)  # no stats, memory, events, examples, no extraction
    assert base.history == history
    after = stages.Live(base, added).snapshot()
    assert "phase" in set(after.analysis.correlations["feature"])
    before = stages.Live(base, plain).snapshot()
    assert after.trace is before.trace  # the very same extraction
    pd.testing.assert_frame_equal(after.analysis.units, before.analysis.units)


def test_earlier_tables_are_ready_while_a_later_stage_runs(bundles, monkeypatch):
    model, data, _ = bundles
    gate, entered = threading.Event(), threading.Event()
    original = {s.name: s for s in pipeline.STEP_REGISTRY}["probes"].run

    def held(ctx):
        entered.set()
        assert gate.wait(60)
        return original(ctx)

    registry = tuple(dataclasses.replace(s, run=held) if s.name == "probes" else s for s in pipeline.STEP_REGISTRY)
    monkeypatch.setattr(pipeline, "STEP_REGISTRY", registry)
    base = stages.StagedRun(model, data).start()
    feats = stages.FeatureStages(base, data).start()
    live = stages.Live(base, feats)
    try:
        assert entered.wait(120), "the probes stage never started"
        assert live.first_ready and not live.all_ready
        assert live.ready("stats", "memory", "correlations", "clusters") and not live.ready("probes")
        assert live.progress("probes")[1] == "running (probes)"
        snap = live.snapshot()
        assert not snap.analysis.units.empty and not snap.analysis.clusters.empty and snap.analysis.probes.empty
        assert stages.status_lines(live)[-1] == "**Probes** · running (0%)"
    finally:
        gate.set()
    _finish(base, feats)
    assert live.all_ready and not live.snapshot().analysis.probes.empty


def test_a_failed_extraction_fails_the_feature_steps_too(bundles):
    import numpy as np

    from gatelens.errors import DataError

    model, data, _ = bundles
    bad = dataclasses.replace(data, dataset=dataclasses.replace(data.dataset, x=np.zeros((2, 24, 3), np.float32)))
    base = stages.StagedRun(model, bad).start()
    feats = stages.FeatureStages(base, bad).start()
    assert base.job.wait(120) and feats.job.wait(120)  # released, never left waiting for a summary
    live = stages.Live(base, feats)
    assert base.error is not None and feats.error is not None
    assert live.error_for("probes") is not None and not live.first_ready
    assert isinstance(base.error, DataError) and "(None, 24, 2)" in str(base.error)
    assert feats.error is base.error  # the page waiting for a later stage shows the same readable message
