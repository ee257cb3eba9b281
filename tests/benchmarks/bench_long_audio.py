"""Benchmark: one feature task on a one-hour recording — seconds and peak memory.

    .venv/bin/python tests/benchmarks/bench_long_audio.py [--minutes 60] [--baseline ../wt-base]
        [--out tests/benchmarks/results/long_audio.json]

Writes (once, into ``--cache-dir``) a 44.1 kHz stereo 16-bit WAV of ``--minutes`` minutes (EMOPIA renderings
one after the other at varying levels: 635 MB for an hour), then runs in a fresh process exactly what a Ray feature
task runs for an item made of that file alone — :func:`mer.tagging.prepare.extract_window_rows` with the default
model config (read, decode, resample, features of every 30-s window; no cache) — and reports its seconds, its
peak RSS (VmHWM: the whole process, Python and libraries included) and the RSS before the item.
``--baseline`` runs the same in another checkout, under an address-space cap (``--baseline-cap-gib``) so a
whole-file decoder cannot take the machine down with it. Not collected by pytest.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from emit import emit
from memory import peak_rss_mib, rss_mib

HERE = Path(__file__).resolve()
NEW = HERE.parents[2]
KEY = "long recording.wav"


def build_wav(path: Path, minutes: int) -> None:
    """EMOPIA clips rendered at 22.05 kHz, resampled to 44.1 kHz, in two channels (right 0.8 × left), at a new
    level each, until the WAV lasts ``minutes``."""
    import librosa
    import numpy as np
    import soundfile

    from mer.config import FeatureConfig
    from mer.features import read_midi, render_audio
    from mer.train.emopia import emopia_root, load_split

    if path.exists() and soundfile.info(str(path)).duration >= minutes * 60:
        return
    features, rate = FeatureConfig(), 44_100
    clips = load_split(emopia_root(), "train")[:12]
    pieces = [librosa.resample(render_audio(read_midi(c.midi_path.read_bytes(), name=c.name), config=features,
                                            name=c.name), orig_sr=features.sample_rate, target_sr=rate)
              for c in clips]
    rng = np.random.default_rng(0)
    temporary = path.with_suffix(".tmp")
    with soundfile.SoundFile(str(temporary), "w", samplerate=rate, channels=2, subtype="PCM_16", format="WAV") as out:
        written, index = 0, 0
        while written < minutes * 60 * rate:
            piece = pieces[index % len(pieces)][: minutes * 60 * rate - written] * (0.3 + 0.6 * rng.random())
            out.write(np.stack([piece, 0.8 * piece], axis=1))
            written, index = written + piece.shape[0], index + 1
    temporary.replace(path)




def measure(store: Path) -> dict:
    """What a feature task does for the item, in this process."""
    from mer.config import MerConfig
    from mer.tagging import extract_window_rows, item_row, list_items
    from mer.storage import LocalStore

    local = LocalStore(store)
    (item,), _ = list_items(local)
    before = rss_mib()
    start = time.perf_counter()
    rows = extract_window_rows(item_row(item), store=local, config=MerConfig(), render_missing_audio=False)
    seconds = time.perf_counter() - start
    failed = str(rows[0]["failed_stage"])
    return {"seconds": round(seconds, 1), "windows": 0 if failed else len(rows), "failed_stage": failed,
            "failed_reason": str(rows[0]["failed_reason"])[:300],
            "rss_before_item_mib": round(before, 1),
            "peak_rss_mib": peak_rss_mib()}


def run_measure(tree: Path, store: Path, *, cap_gib: float | None = None) -> dict:
    def limit() -> None:
        if cap_gib:
            cap = int(cap_gib * 1024**3)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(HERE), "--measure", str(store)], env=env, capture_output=True,
                          text=True, cwd=tree, preexec_fn=limit)
    wall = round(time.perf_counter() - start, 1)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return {"failed": True, "returncode": done.returncode, "error": tail[0][:300], "wall_seconds": wall,
                "address_space_cap_gib": cap_gib}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(wall_seconds=wall, address_space_cap_gib=cap_gib)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "mer-bench-long-audio"))
    parser.add_argument("--baseline", type=Path)
    parser.add_argument("--baseline-cap-gib", type=float, default=8.0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return 0

    sys.path.insert(0, str(NEW))
    store = Path(args.cache_dir) / f"store-{args.minutes}min"
    store.mkdir(parents=True, exist_ok=True)
    build_wav(store / KEY, args.minutes)
    result = {"minutes": args.minutes, "file_bytes": (store / KEY).stat().st_size, "format": "WAV 44.1 kHz stereo 16-bit",
              "cpus": os.cpu_count(), "load_average_before": [round(x, 2) for x in os.getloadavg()],
              "feature_task": run_measure(NEW, store)}
    if args.baseline:
        result["baseline_feature_task"] = run_measure(args.baseline.resolve(), store, cap_gib=args.baseline_cap_gib)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
