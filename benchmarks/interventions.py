"""Cost of interventions as multiples of ``model.predict`` on the same data.

    python benchmarks/interventions.py [--n 2000] [--units 64] [--steps 50] [--batch-size 256]

Reports: one intervention (``gatelens.intervene``, one unit's forget gate clamped) and a single-unit sweep
over every unit of the layer (``gatelens.models.intervene.sweep``), each timed after a warm-up call (compile
excluded), divided by the time of ``model.predict`` on the same data. A sweep over U units costs about U
forward passes with the intervened layer re-run step by step, so its ratio is reported per unit too.
"""

from __future__ import annotations

import argparse
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--units", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=256)
    a = p.parse_args(argv)
    import keras
    import numpy as np

    from gatelens.models.intervene import Intervener, intervene, sweep

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((a.steps, 4)),
            keras.layers.LSTM(a.units, return_sequences=True, name="lstm"),
            keras.layers.Dense(2),
        ]
    )
    x = np.random.default_rng(0).normal(size=(a.n, a.steps, 4)).astype(np.float32)

    def timed(fn):
        fn()  # warm-up: compile
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    t_predict = timed(lambda: model.predict(x, batch_size=a.batch_size, verbose=0))
    iv = Intervener(model)
    t_one = timed(lambda: intervene(iv, x, "lstm:0:forget_gate=1", batch_size=a.batch_size))
    small = x[: max(1, a.n // 10)]
    t_pred_small = timed(lambda: model.predict(small, batch_size=a.batch_size, verbose=0))
    t_sweep = timed(lambda: sweep(iv, small, "lstm", batch_size=a.batch_size, n_boot=100))
    print(f"model: LSTM({a.units}) over {a.steps} steps; batch {a.batch_size}")
    print(f"{'measure':<44} {'seconds':>9} {'x predict':>10}")
    print(f"{'model.predict, ' + str(a.n) + ' sequences':<44} {t_predict:>9.3f} {1.0:>10.2f}")
    print(f"{'one intervention (original + intervened)':<44} {t_one:>9.3f} {t_one / t_predict:>10.2f}")
    label = f"sweep of {a.units} units, {small.shape[0]} sequences"
    print(f"{label:<44} {t_sweep:>9.3f} {t_sweep / t_pred_small:>10.2f}")
    print(f"{'  per unit':<44} {t_sweep / a.units:>9.3f} {t_sweep / t_pred_small / a.units:>10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
