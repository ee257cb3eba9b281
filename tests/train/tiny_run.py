"""``python tests/train/tiny_run.py EMOPIA STORAGE CACHE RAY_TEMP``: :func:`mer.train.train_model` on the tests' tiny
configuration (3 epochs, 2 workers, seed 7, weights averaged) and 16 EMOPIA train clips, in a local Ray of its own
whose files lie under RAY_TEMP. The command the interrupt test runs, kills and runs again
(tests/train/test_interrupt.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for tiny.py

from mer.train import summary_table, train_model  # noqa: E402
from tiny import tiny_config  # noqa: E402

EPOCHS, SUBSET, RUN_NAME = 3, 16, "interrupted"


def main(emopia: str, storage: str, cache: str, ray_temp: str) -> int:
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=ray_temp)
    config = tiny_config(training=dict(epochs=EPOCHS, batch_size=8, num_workers=2, seed=7,
                                                 weight_average_decay=0.9))
    result = train_model(config, emopia=emopia, storage=storage, cache_dir=cache, run_name=RUN_NAME,
                         subset=SUBSET, progress=True)
    print(summary_table(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
