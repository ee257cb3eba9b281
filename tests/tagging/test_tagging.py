"""The nightly tagging job on real components: a local Ray, moto's S3 server over HTTP, PostgreSQL and SQLite.

Rendered EMOPIA pairs (MIDI + WAV) are tagged from S3 into PostgreSQL and from a folder into SQLite; a re-run
tags nothing, a changed object is re-tagged alone, ``force`` re-tags everything without duplicates; a bucket of
broken items finishes with each one failed for a clear reason (or tagged from its usable file) and every good
item tagged; a job process killed mid-run and started again leaves every item exactly once; the job serves its
metrics while it runs and pushes them at the end.

One local Ray (2 CPUs) serves the module; the model is tiny (untrained: the tests check the plumbing, not the
accuracy) and its windows 5 s long.
"""
from __future__ import annotations

import http.server
import io
import json
import os
import warnings
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import ray
import soundfile
import sqlalchemy as sa
import torch

from mer.catalog import CatalogWriter, create_catalog_engine
from mer.catalog.writer import HOLD_BATCH_ENV
from mer.config import QUADRANTS, TagConfig
from mer.features import window_starts
from mer.features.midi import read_midi
from mer.features.render import render_audio
from mer.model import MerModel
from mer.model.artifact import save_artifact
from mer.storage import LocalStore, ObjectStore, S3Store
from mer.tagging import (
    WindowPredictor,
    feature_task_cpus,
    inference_actors,
    item_row,
    prepare_item,
    tag_store,
    tag_store_local,
    use_gpus,
)
from mer.tagging.metrics import JobMetrics
from mer.tagging.predictor import BUCKET_POOL
from mer.tagging.prepare import batch_of
from mer.tagging.recorder import Recorder, WindowGrouper
from mer.tagging.storage import list_items
from mer.train.emopia import emopia_root, load_split
from tiny import tiny_config

pytest_plugins = ["fixtures_services"]

REPO = Path(__file__).resolve().parents[2]
PIECES = 8  # rendered EMOPIA pairs, two per quadrant



@pytest.fixture(scope="module")
def ray_address() -> str:
    # address="local": a fresh Ray for the tests even if a `ray start` cluster runs on the machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An untrained tiny model saved as a real artifact; returns its folder."""
    config = tiny_config()
    torch.manual_seed(0)
    storage = tmp_path_factory.mktemp("storage")
    return save_artifact(MerModel(config).state_dict(), config=config, storage=str(storage),
                         meta={"data_fingerprint": "test", "val_metrics": {}})


def wav_bytes(audio: np.ndarray, sample_rate: int, *, format: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, sample_rate, format=format, subtype="PCM_16")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def pieces() -> dict[str, tuple[bytes, bytes]]:
    """``{clip name: (MIDI bytes, WAV bytes)}``: EMOPIA clips and their FluidSynth renderings."""
    features = tiny_config().features
    clips = load_split(emopia_root(), "train")
    chosen = [c for q in range(4) for c in [c for c in clips if c.quadrant == q][:PIECES // 4]]
    out = {}
    for clip in chosen:
        midi = clip.midi_path.read_bytes()
        audio = render_audio(read_midi(midi, name=clip.name), config=features, name=clip.name)
        out[clip.name] = (midi, wav_bytes(audio, features.sample_rate))
    return out


def put_pieces(store: ObjectStore, pieces: dict[str, tuple[bytes, bytes]], prefix: str = "") -> list[str]:
    """Write each piece as ``<prefix><name>.mid`` + ``.wav``; returns the item keys."""
    for name, (midi, wav) in pieces.items():
        store.write(f"{prefix}{name}.mid", midi)
        store.write(f"{prefix}{name}.wav", wav)
    return sorted(f"{prefix}{name}" for name in pieces)


def rows(catalog: str, sql: str, **params) -> list[dict]:
    engine = create_catalog_engine(catalog)
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.text(sql), params)]
    finally:
        engine.dispose()


def labels_by_key(catalog: str) -> dict[str, dict]:
    labels = {r["item_key"]: r for r in rows(catalog, "SELECT * FROM labels")}
    for label in labels.values():  # plain SQL on SQLite returns JSON columns as text
        for column in ("timeline", "attention"):
            if isinstance(label[column], str):
                label[column] = json.loads(label[column])
    return labels


def assert_arousal_valence_follow_the_quadrants(labels: dict[str, dict]) -> None:
    """Every stored label, and every window of its timeline: P(high arousal) = p_q1 + p_q2, P(positive valence) =
    p_q1 + p_q4 (README, column comments); the binary head's own outputs are kept apart, as probabilities."""
    for key, label in labels.items():
        for entry in (label, *label["timeline"]):
            assert entry["arousal_prob"] == pytest.approx(entry["p_q1"] + entry["p_q2"], abs=1e-9), key
            assert entry["valence_prob"] == pytest.approx(entry["p_q1"] + entry["p_q4"], abs=1e-9), key
            assert 0 <= entry["va_head_arousal_prob"] <= 1 and 0 <= entry["va_head_valence_prob"] <= 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_s3_bucket_into_postgresql_incrementally(ray_address, model, pieces, s3_endpoint, s3_bucket,
                                                 clean_postgres_url) -> None:
    store = S3Store(s3_bucket, "pieces", endpoint_url=s3_endpoint)
    keys = put_pieces(store, pieces)
    S3Store(s3_bucket, "elsewhere", endpoint_url=s3_endpoint).write("not-in-prefix.mid", pieces[keys[0]][0])
    url = f"s3://{s3_bucket}/pieces"
    catalog = clean_postgres_url
    config = tiny_config().features

    first = tag_store(url, endpoint_url=s3_endpoint, catalog=catalog, model=model, progress=False)

    assert (first.status, first.listed, first.tagged, first.skipped, first.failed) == ("succeeded", 8, 8, 0, 0)
    labels = labels_by_key(catalog)
    assert sorted(labels) == keys
    for key, label in labels.items():
        assert label["run_id"] == first.run_id
        assert label["quadrant"] in QUADRANTS
        assert label["branches_used"] == "symbolic,harmony,tone" and label["problems"] is None
        probs = [label[f"p_q{q}"] for q in range(1, 5)]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)
        assert label["quadrant"] == QUADRANTS[int(np.argmax(probs))]
        # The timeline: one entry per window of the piece, and the piece's label is their mean.
        duration = read_midi(pieces[key][0], name=key).get_end_time()
        timeline = label["timeline"]
        assert label["n_windows"] == len(timeline) == len(window_starts(duration, config=config)) > 1
        assert [w["start_s"] for w in timeline] == pytest.approx([5.0 * i for i in range(len(timeline))])
        assert np.mean([w["p_q1"] for w in timeline]) == pytest.approx(label["p_q1"], abs=1e-5)
        assert sum(label[f"attn_{b}"] for b in ("symbolic", "harmony", "tone")) == pytest.approx(1.0, abs=1e-4)
    assert_arousal_valence_follow_the_quadrants(labels)
    items = {r["key"]: r for r in rows(catalog, "SELECT * FROM items")}
    assert sorted(items) == keys and all(r["modalities"] == "midi,audio" and r["duration_s"] > 25 for r in items.values())
    run = rows(catalog, "SELECT * FROM runs WHERE id = :id", id=first.run_id)[0]
    assert (run["status"], run["listed"], run["tagged"], run["skipped"], run["failed"]) == ("succeeded", 8, 8, 0, 0)
    assert run["inference"] == "int8"  # CPU actors, the default

    # An unchanged bucket: nothing re-tagged, and the run is the listing and the catalog lookup (no Ray pass).
    again = tag_store(url, endpoint_url=s3_endpoint, catalog=catalog, model=model, progress=False)
    assert (again.listed, again.tagged, again.skipped, again.failed, again.passes) == (8, 0, 8, 0, 0)
    assert again.stage_seconds["features"] == again.stage_seconds["inference"] == 0
    assert {k: r["run_id"] for k, r in labels_by_key(catalog).items()} == dict.fromkeys(keys, first.run_id)

    # One changed object: that item alone is re-tagged, with its new object version.
    changed = keys[3]
    store.write(f"{changed}.wav", pieces[keys[4]][1])
    third = tag_store(url, endpoint_url=s3_endpoint, catalog=catalog, model=model, progress=False)
    assert (third.tagged, third.skipped) == (1, 7)
    relabelled = labels_by_key(catalog)
    assert relabelled[changed]["run_id"] == third.run_id
    assert relabelled[changed]["object_version"] != labels[changed]["object_version"]

    # force: everything again, still one label per item.
    forced = tag_store(url, endpoint_url=s3_endpoint, catalog=catalog, model=model, force=True,
                       tagging=TagConfig(batch_size=3), progress=False)
    assert (forced.tagged, forced.skipped, forced.failed) == (8, 0, 0)
    assert rows(catalog, "SELECT item_key, COUNT(*) AS n FROM labels GROUP BY item_key HAVING COUNT(*) > 1") == []
    assert {r["run_id"] for r in labels_by_key(catalog).values()} == {forced.run_id}


def test_folder_into_sqlite_single_modalities_and_the_local_loop_agree(ray_address, model, pieces,
                                                                       tmp_path: Path) -> None:
    folder = LocalStore(tmp_path / "store")
    names = sorted(pieces)
    keys = put_pieces(folder, {n: pieces[n] for n in names[:4]})
    folder.write(f"midi only/{names[4]}.mid", pieces[names[4]][0])
    audio, rate = soundfile.read(io.BytesIO(pieces[names[5]][1]), dtype="float32")
    folder.write(f"audio only/{names[5]}.flac", wav_bytes(audio, rate, format="FLAC"))
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"

    # float32: batching windows across items then changes nothing (int8 scales a batch's activations together:
    # tests/model/test_quantization.py bounds what that moves).
    exact = TagConfig(batch_size=4, feature_concurrency=2, int8=False)
    summary = tag_store(str(tmp_path / "store"), catalog=catalog, model=model, tagging=exact, progress=False)

    assert (summary.listed, summary.tagged, summary.failed) == (6, 6, 0)
    assert [r["inference"] for r in rows(catalog, "SELECT inference FROM runs")] == ["float32"]
    labels = labels_by_key(catalog)
    assert labels[f"midi only/{names[4]}"]["branches_used"] == "symbolic"
    assert labels[f"audio only/{names[5]}"]["branches_used"] == "harmony,tone"
    items = {r["key"]: r["modalities"] for r in rows(catalog, "SELECT * FROM items")}
    assert items == {**dict.fromkeys(keys, "midi,audio"), f"midi only/{names[4]}": "midi",
                     f"audio only/{names[5]}": "audio"}
    assert_arousal_valence_follow_the_quadrants(labels)

    # The same work in a plain loop gives the same labels: batching windows across items changes nothing.
    loop_catalog = f"sqlite:///{tmp_path / 'loop.db'}"
    loop = tag_store_local(str(tmp_path / "store"), catalog=loop_catalog, model=model, tagging=exact)
    assert (loop.tagged, loop.failed) == (6, 0)
    assert [r["inference"] for r in rows(loop_catalog, "SELECT inference FROM runs")] == ["float32"]
    for key, expected in labels_by_key(loop_catalog).items():
        got = labels[key]
        assert got["quadrant"] == expected["quadrant"] and got["branches_used"] == expected["branches_used"]
        for column in ("p_q1", "p_q2", "p_q3", "p_q4", "arousal_prob", "valence_prob", "va_head_arousal_prob",
                       "va_head_valence_prob"):
            assert got[column] == pytest.approx(expected[column], abs=1e-5), (key, column)
        assert len(got["timeline"]) == len(expected["timeline"])

    # --render-missing-audio: the MIDI-only item gets audio from FluidSynth and all three branches.
    rendered = tag_store(str(tmp_path / "store"), prefix="midi only/", catalog=catalog, model=model, force=True,
                         render_missing_audio=True, progress=False)
    assert (rendered.listed, rendered.tagged) == (1, 1)
    label = labels_by_key(catalog)[f"midi only/{names[4]}"]
    assert label["branches_used"] == "symbolic,harmony,tone" and "rendered" in label["problems"]


def broken_bucket(store: S3Store, pieces: dict[str, tuple[bytes, bytes]]) -> tuple[dict, dict, dict]:
    """Fill ``store`` with broken and good items. Returns ({failed key: (stage, reason words)}, {tagged key:
    branches_used}, {tagged-with-a-problem key: problem words})."""
    features = tiny_config().features
    (midi_a, wav_a), (midi_b, wav_b), (midi_c, _) = list(pieces.values())[:3]
    rate = features.sample_rate
    silent = wav_bytes(np.zeros(rate * 2, dtype=np.float32), rate)
    five_ms = wav_bytes(0.5 * np.sin(np.arange(int(0.005 * rate)) * 0.1).astype(np.float32), rate)
    random = np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    objects = {
        # Broken items: nothing usable.
        "bad/empty.mid": b"",
        "bad/truncated.mid": midi_a[: len(midi_a) // 2],
        "bad/random.mid": random,
        "bad/no notes.mid": _midi_without_notes(),
        "bad/a wav named.mid": wav_a,
        "bad/empty.wav": b"",
        "bad/truncated.wav": wav_a[: len(wav_a) // 3],
        "bad/random.flac": random,
        "bad/silent.wav": silent,
        "bad/five ms.wav": five_ms,
        "bad/a midi named.wav": midi_a,
        "bad/both broken.mid": random,
        "bad/both broken.wav": silent,
        "a/../escape.mid": midi_a,
        # Good items under awkward keys.
        "good/deep/er/still/Q1 piece with spaces.mid": midi_a,
        "good/deep/er/still/Q1 piece with spaces.wav": wav_a,
        "good/ünïcödé 曲.mid": midi_b,
        "good/ünïcödé 曲.wav": wav_b,
        "good/midi only.midi": midi_c,
        # One bad modality: tagged from the other, with the problem recorded.
        "mixed/silent audio.mid": midi_b,
        "mixed/silent audio.wav": silent,
        "mixed/truncated midi.mid": midi_a[:40],
        "mixed/truncated midi.wav": wav_b,
    }
    for key, data in objects.items():
        if ".." in key:  # the store refuses to write such a key; a careless uploader did, with plain S3 calls
            store.client.put_object(Bucket=store.bucket, Key=store.prefix + key, Body=data)
        else:
            store.write(key, data)
    # Same-stem files pair up: bad/empty, bad/truncated and bad/random are items with two broken files.
    failed = {
        "bad/empty": ("read", "empty"),
        "bad/truncated": ("read", "truncated"),
        "bad/random": ("read", "not a midi file"),
        "bad/no notes": ("read", "no notes"),
        "bad/a wav named": ("read", "wav"),
        "bad/silent": ("read", "silent"),
        "bad/five ms": ("read", "too short"),
        "bad/a midi named": ("read", "midi file, not audio"),
        "bad/both broken": ("read", "silent"),
        "a/../escape.mid": ("list", ".."),
    }
    tagged = {
        "good/deep/er/still/Q1 piece with spaces": "symbolic,harmony,tone",
        "good/ünïcödé 曲": "symbolic,harmony,tone",
        "good/midi only": "symbolic",
        "mixed/silent audio": "symbolic",
        "mixed/truncated midi": "harmony,tone",
    }
    problems = {"mixed/silent audio": "silent", "mixed/truncated midi": "truncated"}
    return failed, tagged, problems


def _midi_without_notes() -> bytes:
    import mido

    midi = mido.MidiFile(type=1, ticks_per_beat=480)
    midi.tracks.append(mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=500_000, time=0)]))
    midi.tracks.append(mido.MidiTrack([mido.Message("program_change", program=0, time=0),
                                       mido.MetaMessage("end_of_track", time=960)]))
    buffer = io.BytesIO()
    midi.save(file=buffer)
    return buffer.getvalue()


def test_broken_items_fail_with_reasons_and_good_items_are_all_tagged(ray_address, model, pieces, s3_endpoint,
                                                                       s3_bucket, tmp_path: Path) -> None:
    store = S3Store(s3_bucket, endpoint_url=s3_endpoint)
    expected_failures, expected_tagged, expected_problems = broken_bucket(store, pieces)
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"

    summary = tag_store(f"s3://{s3_bucket}", endpoint_url=s3_endpoint, catalog=catalog, model=model,
                        tagging=TagConfig(batch_size=4), progress=False)

    assert summary.status == "succeeded"
    # The "bad/" stems: empty, truncated (.mid + .wav pair up), random (.mid + .flac), no notes, a wav named,
    # silent, five ms, a midi named, both broken — 9 items — plus the '..' key rejected by the listing.
    assert summary.listed == summary.tagged + summary.failed == 9 + 1 + len(expected_tagged)
    labels = labels_by_key(catalog)
    assert {k: v["branches_used"] for k, v in labels.items()} == expected_tagged
    for key, words in expected_problems.items():
        assert words in labels[key]["problems"].lower(), labels[key]["problems"]
    failures = {r["item_key"]: r for r in rows(catalog, "SELECT * FROM failures WHERE run_id = :r", r=summary.run_id)}
    assert len(failures) == summary.failed
    for key, (stage, words) in expected_failures.items():
        assert failures[key]["stage"] == stage, (key, failures[key])
        assert words in failures[key]["reason"].lower(), (key, failures[key]["reason"])
    # A pair with both files broken says what is wrong with each.
    reason = failures["bad/both broken"]["reason"].lower()
    assert "midi" in reason and "audio" in reason and "silent" in reason
    # Pairs of two broken files: both reasons are given.
    reason = failures["bad/truncated"]["reason"].lower()
    assert "truncated midi" in reason and "audio file is truncated" in reason
    assert "cannot decode" in failures["bad/random"]["reason"].lower()

    # Bad content stays bad: a re-run skips the failed items as well as the tagged ones, and the listing reject,
    # unchanged, is not recorded again (open_failures shows what is new) — no Ray work.
    again = tag_store(f"s3://{s3_bucket}", endpoint_url=s3_endpoint, catalog=catalog, model=model, progress=False)
    assert (again.tagged, again.failed, again.skipped) == (0, 0, summary.listed)
    assert again.stage_seconds["features"] == 0
    reject_runs = rows(catalog, "SELECT run_id FROM failures WHERE item_key = 'a/../escape.mid'")
    assert reject_runs == [{"run_id": summary.run_id}]
    # The same key with new bytes is a new reject: recorded once more, and the old record closed.
    store.client.put_object(Bucket=store.bucket, Key="a/../escape.mid", Body=b"other bytes")
    third = tag_store(f"s3://{s3_bucket}", endpoint_url=s3_endpoint, catalog=catalog, model=model, progress=False)
    assert (third.failed, third.skipped) == (1, summary.listed - 1)
    assert rows(catalog, "SELECT run_id FROM open_failures WHERE item_key = 'a/../escape.mid'") == [
        {"run_id": third.run_id}]


def scrape(port: int) -> dict[str, float]:
    """The unlabelled samples (and the failed counter's sum) of a /metrics page."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


HEARTBEAT_SECONDS = 0.2  # the killed job's heartbeat period; the restarted run finds it dead after a few
DEAD_AFTER_SECONDS = 2.0


def test_killed_job_restarted_tags_every_item_exactly_once(ray_address, model, pieces, tmp_path: Path,
                                                           clean_postgres_url: str, pushgateway) -> None:
    folder = LocalStore(tmp_path / "store")
    keys = put_pieces(folder, pieces) + put_pieces(folder, pieces, prefix="copy/")
    catalog = clean_postgres_url
    port = free_port()
    job = subprocess.Popen(
        [sys.executable, str(REPO / "jobs" / "tag.py"), "--store", str(tmp_path / "store"), "--catalog", catalog,
         "--model", model, "--address", ray_address, "--batch-size", "1", "--metrics-port", str(port),
         "--heartbeat-seconds", str(HEARTBEAT_SECONDS), "--pushgateway", pushgateway.address, "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path,
    )
    output = []
    threading.Thread(target=lambda: output.extend(job.stdout), daemon=True).start()
    scraped: dict[str, float] = {}
    try:
        # Wait for the first labels, scraping the job's metrics endpoint meanwhile; then kill -9 the job.
        deadline = time.monotonic() + 120
        written = 0
        while time.monotonic() < deadline and job.poll() is None:
            try:
                scraped = scrape(port)
            except OSError:
                pass  # not serving yet
            try:
                written = rows(catalog, "SELECT COUNT(*) AS n FROM labels")[0]["n"]
            except sa.exc.ProgrammingError:
                written = 0  # no schema yet
            if written >= 2 and scraped.get("mer_items_tagged_total", 0) >= 1:
                break
            time.sleep(0.05)
        assert job.poll() is None, b"".join(output).decode()[-3000:]
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=30)
    finally:
        if job.poll() is None:
            job.kill()
    # The metrics endpoint served the counters while the job ran.
    assert scraped["mer_items_listed_total"] == len(keys)
    assert scraped["mer_items_tagged_total"] >= 1
    assert 'mer_stage_seconds_count{stage="features"}' in scraped
    before = rows(catalog, "SELECT item_key FROM labels")
    killed_run = rows(catalog, "SELECT * FROM runs")[0]
    assert killed_run["status"] == "running" and killed_run["finished_at"] is None  # it never finished
    assert killed_run["heartbeat_at"] > killed_run["started_at"]  # it was beating while it lived
    assert 2 <= len(before) < len(keys), "the job finished before it could be killed"
    # What the alert MerRunStoppedHeartbeating reads: heartbeats pushed alone, and no final push with a finish time.
    heartbeats = [float(line.split()[-1]) for push in pushgateway.pushes for line in push.body.splitlines()
                  if line.startswith("mer_run_heartbeat_timestamp_seconds ")]
    assert len(heartbeats) >= 2 and heartbeats == sorted(heartbeats)
    assert all(push.method == "POST" and "mer_run_last_finish" not in push.body for push in pushgateway.pushes)

    # The next run starts a few heartbeat periods after the last beat: the killed run is found dead.
    engine = create_catalog_engine(catalog)
    try:
        with engine.connect() as conn:
            age = sa.text("SELECT clock_timestamp() - heartbeat_at < make_interval(secs => :s) FROM runs")
            while conn.execute(age, {"s": DEAD_AFTER_SECONDS}).scalar():
                time.sleep(HEARTBEAT_SECONDS)
    finally:
        engine.dispose()
    restarted = tag_store(str(tmp_path / "store"), catalog=catalog, model=model, progress=False,
                          tagging=TagConfig(heartbeat_seconds=HEARTBEAT_SECONDS, dead_after_seconds=DEAD_AFTER_SECONDS))

    assert restarted.status == "succeeded"
    status = {r["id"]: r["status"] for r in rows(catalog, "SELECT id, status FROM runs")}
    assert status == {killed_run["id"]: "failed", restarted.run_id: "succeeded"}
    assert restarted.skipped == len(before) and restarted.tagged == len(keys) - len(before)
    assert sorted(r["item_key"] for r in rows(catalog, "SELECT item_key FROM labels")) == keys
    assert sorted(r["key"] for r in rows(catalog, "SELECT key FROM items")) == keys


TAG_LOCALLY = """
import sys
from mer.config import TagConfig
from mer.tagging import tag_store_local
tag_store_local(sys.argv[1], catalog=sys.argv[2], model=sys.argv[3], tagging=TagConfig(batch_size=2))
"""


def wait_for_held_batch(job: subprocess.Popen, marker: Path, output: list[bytes]) -> list[str]:
    """The keys of the batch the job holds inside its transaction (``MER_TEST_HOLD_BATCH``), once it holds one."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and job.poll() is None and not marker.exists():
        time.sleep(0.05)
    assert job.poll() is None and marker.exists(), b"".join(output).decode()[-3000:]
    return marker.read_text().split()


def test_a_tagger_killed_inside_a_batch_transaction_shows_no_part_of_it_and_the_rerun_completes_it(
        model, pieces, tmp_path: Path, catalog_url: str) -> None:
    keys = put_pieces(LocalStore(tmp_path / "store"), dict(list(pieces.items())[:4]))
    hold = tmp_path / "hold"
    hold.mkdir()
    job = subprocess.Popen(
        [sys.executable, "-c", TAG_LOCALLY, str(tmp_path / "store"), catalog_url, model],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path,
        env={**os.environ, HOLD_BATCH_ENV: str(hold)},
    )
    output: list[bytes] = []
    threading.Thread(target=lambda: output.extend(job.stdout), daemon=True).start()
    marker = hold / f"holding-{job.pid}"
    try:
        # The first batch waits inside its transaction: none of it is visible; let it commit.
        committed = wait_for_held_batch(job, marker, output)
        assert committed and rows(catalog_url, "SELECT item_key FROM labels") == []
        marker.unlink()
        # The second batch waits there too: kill -9 the job in the middle of its transaction.
        held = wait_for_held_batch(job, marker, output)
        assert held and not set(held) & set(committed)
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=30)
    finally:
        if job.poll() is None:
            job.kill()

    # Exactly the committed batch, nothing of the held one: no label, no duration on its items (the labels
    # upsert sets it), no failure.
    assert sorted(r["item_key"] for r in rows(catalog_url, "SELECT item_key FROM labels")) == sorted(committed)
    items = {r["key"]: r["duration_s"] for r in rows(catalog_url, "SELECT key, duration_s FROM items")}
    assert sorted(items) == keys  # the listing saw every item before tagging
    assert all(items[key] is None for key in held) and all(items[key] > 0 for key in committed)
    assert rows(catalog_url, "SELECT item_key FROM failures") == []
    killed_run = rows(catalog_url, "SELECT * FROM runs")[0]
    assert killed_run["status"] == "running" and killed_run["finished_at"] is None  # it never finished

    rerun = tag_store_local(str(tmp_path / "store"), catalog=catalog_url, model=model,
                            tagging=TagConfig(batch_size=2))

    assert (rerun.status, rerun.skipped, rerun.tagged, rerun.failed) == (
        "succeeded", len(committed), len(keys) - len(committed), 0)
    labels = labels_by_key(catalog_url)
    assert sorted(labels) == keys
    assert {key for key, label in labels.items() if label["run_id"] == rerun.run_id} == set(keys) - set(committed)
    assert rows(catalog_url, "SELECT item_key, model_version, COUNT(*) AS n FROM labels "
                             "GROUP BY item_key, model_version HAVING COUNT(*) > 1") == []
    assert all(r["duration_s"] > 0 for r in rows(catalog_url, "SELECT duration_s FROM items"))
    # The killed run is closed as failed only once its heartbeat is older than dead_after (5 min by default;
    # test_killed_job_restarted_tags_every_item_exactly_once waits for that); it never shows as succeeded.
    status = {r["id"]: (r["status"], r["finished_at"]) for r in rows(catalog_url, "SELECT * FROM runs")}
    assert status[killed_run["id"]][0] in ("running", "failed") and status[killed_run["id"]][1] is None
    assert status[rerun.run_id][0] == "succeeded"


class _PushgatewayRecorder(http.server.BaseHTTPRequestHandler):
    """Accepts Pushgateway pushes (POST/PUT /metrics/job/...) and keeps their bodies."""

    bodies: list[bytes] = []

    def _accept(self) -> None:
        self.bodies.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.send_response(200)
        self.end_headers()

    do_POST = do_PUT = _accept

    def log_message(self, *args) -> None:
        pass


def test_run_pushes_metrics_at_the_end_and_a_failed_run_is_recorded(model, pieces, tmp_path: Path) -> None:
    folder = LocalStore(tmp_path / "store")
    put_pieces(folder, dict(list(pieces.items())[:2]))
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"
    server = http.server.HTTPServer(("127.0.0.1", 0), _PushgatewayRecorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    gateway = f"127.0.0.1:{server.server_port}"
    try:
        limited = tag_store_local(str(tmp_path / "store"), catalog=catalog, model=model, limit=1, pushgateway=gateway)
        rest = tag_store_local(str(tmp_path / "store"), catalog=catalog, model=model, pushgateway=gateway)
        with pytest.raises(FileNotFoundError):
            tag_store(str(tmp_path / "missing"), catalog=catalog, model=model, pushgateway=gateway)
    finally:
        server.shutdown()
    assert (limited.tagged, limited.deferred) == (1, 1)
    assert (rest.tagged, rest.skipped, rest.deferred) == (1, 1, 0)
    bodies = [body.decode() for body in _PushgatewayRecorder.bodies]
    # Each run pushes its heartbeat alone when it starts (and every heartbeat period), and everything at the end.
    pushed = [body for body in bodies if "mer_run_failed" in body]
    heartbeats = [body for body in bodies if "mer_run_failed" not in body]
    assert len(pushed) == 3 and len(heartbeats) >= 3
    assert all("mer_items_" not in body and "mer_run_heartbeat_timestamp_seconds " in body for body in heartbeats)
    assert "mer_items_tagged_total 1.0" in pushed[1] and "mer_items_skipped_total 1.0" in pushed[1]
    assert "mer_run_last_success_timestamp_seconds" in pushed[1] and "mer_run_failed 0.0" in pushed[1]
    assert "mer_run_failed 1.0" in pushed[2] and "mer_run_last_success_timestamp_seconds" not in pushed[2]
    runs = rows(catalog, "SELECT status, listed, tagged, skipped, failed FROM runs ORDER BY id")
    assert runs == [
        {"status": "succeeded", "listed": 2, "tagged": 1, "skipped": 0, "failed": 0},
        {"status": "succeeded", "listed": 2, "tagged": 1, "skipped": 1, "failed": 0},
        {"status": "failed", "listed": 0, "tagged": 0, "skipped": 0, "failed": 0},
    ]


def test_a_window_the_model_rejects_fails_alone_and_the_batch_goes_on(model, pieces, tmp_path: Path) -> None:
    folder = LocalStore(tmp_path / "store")
    keys = put_pieces(folder, dict(list(pieces.items())[:2]))
    items, _ = list_items(folder)
    config = tiny_config()
    window_rows = [r for item in items for r in prepare_item(folder, item_row(item), config=config).window_rows(config)]
    window_rows[1]["token_length"] = np.int64(10_000)  # more tokens than the window holds: the model raises
    batch = batch_of(window_rows)

    out = WindowPredictor(model)(batch)

    assert out["failed_stage"][1] == "inference" and "window" in out["failed_reason"][1]
    good = np.arange(len(window_rows)) != 1
    assert set(out["failed_stage"][good]) == {""}
    np.testing.assert_allclose(out["quadrant_probs"][good].sum(axis=1), 1.0, rtol=1e-5)
    assert "chroma" not in out and set(out["name"]) == set(keys)


def test_an_object_that_vanished_after_listing_is_a_transient_read_failure(model, pieces, tmp_path: Path) -> None:
    folder = LocalStore(tmp_path / "store")
    key = put_pieces(folder, dict(list(pieces.items())[:1]))[0]
    items, _ = list_items(folder)
    (tmp_path / "store" / f"{key}.mid").unlink()
    (tmp_path / "store" / f"{key}.wav").unlink()

    prepared = prepare_item(folder, item_row(items[0]), config=tiny_config())

    assert prepared.failure is not None and prepared.failure[0] == "read"
    assert "disappeared" in prepared.failure[1]
    assert prepared.transient  # recorded without an object version, so the next run tries again


class _FlakyAudioStore(LocalStore):
    """A folder whose audio reads fail with a network-like error (not the content's fault) while ``broken``."""

    broken = True

    def read(self, key: str, **pin) -> bytes:
        if self.broken and key.endswith(".wav"):
            raise ConnectionResetError("connection reset by peer")
        return super().read(key, **pin)

    def open(self, key: str, **pin):
        if self.broken and key.endswith(".wav"):
            raise ConnectionResetError("connection reset by peer")
        return super().open(key, **pin)


def test_a_label_from_one_modality_after_a_transient_read_error_is_retried_next_run(model, pieces,
                                                                                  tmp_path: Path) -> None:
    store = _FlakyAudioStore(tmp_path / "store")
    key = put_pieces(store, dict(list(pieces.items())[:1]))[0]
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"

    first = tag_store_local(store, catalog=catalog, model=model)
    label = labels_by_key(catalog)[key]
    assert first.tagged == 1 and label["branches_used"] == "symbolic"  # tagged from the MIDI it could read
    assert "connection reset" in label["problems"]
    # Provisional, and says so: the real object version, and the partial flag (in latest_labels too).
    [item] = rows(catalog, "SELECT object_version FROM items")
    assert label["object_version"] == item["object_version"] != "" and label["partial"]
    latest = rows(catalog, "SELECT partial, stale FROM latest_labels")
    assert [(bool(r["partial"]), bool(r["stale"])) for r in latest] == [(True, False)]

    store.broken = False
    second = tag_store_local(store, catalog=catalog, model=model)
    label = labels_by_key(catalog)[key]
    assert (second.tagged, second.skipped) == (1, 0)  # not skipped as done: its audio was never read
    assert label["branches_used"] == "symbolic,harmony,tone" and label["problems"] is None
    assert not label["partial"]
    third = tag_store_local(store, catalog=catalog, model=model)
    assert (third.tagged, third.skipped) == (0, 1)


def test_an_undecodable_file_name_is_a_failure_and_the_run_goes_on(model, pieces, tmp_path: Path) -> None:
    folder = LocalStore(tmp_path / "store")
    keys = put_pieces(folder, dict(list(pieces.items())[:2]))
    with open(os.path.join(os.fsencode(tmp_path / "store"), b"caf\xe9.mid"), "wb") as handle:
        handle.write(pieces[keys[0]][0])
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"

    summary = tag_store_local(str(tmp_path / "store"), catalog=catalog, model=model)

    assert (summary.status, summary.tagged, summary.failed) == ("succeeded", 2, 1)
    assert set(labels_by_key(catalog)) == set(keys)
    failure = rows(catalog, "SELECT item_key, stage, reason FROM failures")
    assert failure == [{"item_key": "caf\\xe9.mid", "stage": "list",
                        "reason": "key is not valid UTF-8 (the file name holds undecodable bytes)"}]


def test_items_of_a_feature_task_that_keeps_dying_fail_and_the_others_are_tagged(ray_address, model, pieces,
                                                                                tmp_path: Path) -> None:
    class CrashingStore(LocalStore):  # defined here so Ray ships the class by value to its workers
        def read(self, key: str, **pin) -> bytes:
            if key.startswith("crash"):
                os._exit(1)  # what a native crash in a decoder does to the worker process
            return super().read(key, **pin)

    store = CrashingStore(tmp_path / "store")
    keys = put_pieces(store, dict(list(pieces.items())[:3]))
    store.write("crash.mid", pieces[keys[0]][0])
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = tag_store(store, catalog=catalog, model=model, address=ray_address, progress=False,
                            tagging=TagConfig(batch_size=4, feature_concurrency=2))

    # Only Ray's supported parameters: upgrading Ray past the removal of the remote-args pass-throughs is a bump.
    assert not [w for w in caught if "will be removed in Ray" in str(w.message)]
    # The crashing item fails after its attempts; the items that shared its block are tagged in the same run.
    assert (summary.status, summary.tagged, summary.failed) == ("succeeded", len(keys), 1)
    assert set(labels_by_key(catalog)) == set(keys)
    failures = rows(catalog, "SELECT item_key, stage, reason, object_version FROM failures")
    assert [(f["item_key"], f["stage"]) for f in failures] == [("crash", "features")]
    assert "died 3 times" in failures[0]["reason"]
    assert failures[0]["object_version"] is None  # not the content's fault as far as we know: retried next run
    again = tag_store(store, catalog=catalog, model=model, address=ray_address, progress=False)
    assert (again.status, again.tagged, again.failed) == ("succeeded", 0, 1)


# --- catalog truth: deleted and changed objects, re-emitted windows ---------------------------------------------------


def test_a_deleted_object_leaves_latest_labels_and_returns_when_restored(model, pieces, s3_endpoint,
                                                                          s3_versioned_bucket, catalog_url) -> None:
    store = S3Store(s3_versioned_bucket, "pieces", endpoint_url=s3_endpoint)
    kept, gone = put_pieces(store, dict(list(pieces.items())[:2]))
    first = tag_store_local(store, catalog=catalog_url, model=model)
    assert first.tagged == 2

    for ext in (".mid", ".wav"):  # deleted: a delete marker hides the object, its versions stay
        store.client.delete_object(Bucket=s3_versioned_bucket, Key=f"pieces/{gone}{ext}")
    second = tag_store_local(store, catalog=catalog_url, model=model)

    assert (second.listed, second.tagged, second.skipped, second.failed) == (1, 0, 1, 0)
    assert [r["item_key"] for r in rows(catalog_url, "SELECT item_key FROM latest_labels")] == [kept]
    deleted = {r["key"]: r["deleted_at"] is not None for r in rows(catalog_url, "SELECT key, deleted_at FROM items")}
    assert deleted == {kept: False, gone: True}
    assert sorted(labels_by_key(catalog_url)) == sorted([kept, gone])  # history keeps the deleted item's label

    # Restored (S3's undelete: remove the delete markers): the same versions are back, and so is the label.
    markers = store.client.list_object_versions(Bucket=s3_versioned_bucket, Prefix=f"pieces/{gone}")["DeleteMarkers"]
    for marker in markers:
        store.client.delete_object(Bucket=s3_versioned_bucket, Key=marker["Key"], VersionId=marker["VersionId"])
    third = tag_store_local(store, catalog=catalog_url, model=model)

    assert (third.listed, third.tagged, third.skipped) == (2, 0, 2)
    latest = rows(catalog_url, "SELECT item_key FROM latest_labels")
    assert sorted(r["item_key"] for r in latest) == sorted([kept, gone])
    assert rows(catalog_url, "SELECT key FROM items WHERE deleted_at IS NOT NULL") == []


class _ChangedAfterListing:
    """The test hook between listing and reading: a store whose first listing is followed, before anything is
    read, by new bytes for the objects in ``changes``."""

    changes: dict[str, bytes] = {}

    def list(self, prefix: str = ""):
        listed = list(super().list(prefix))
        changes, self.changes = self.changes, {}
        for key, data in changes.items():
            self.write(key, data)
        yield from listed


class _FolderChangedAfterListing(_ChangedAfterListing, LocalStore):
    pass


class _S3ChangedAfterListing(_ChangedAfterListing, S3Store):
    pass


@pytest.mark.parametrize("kind", ["folder", "s3", "s3-versioned"])
def test_an_object_overwritten_between_listing_and_reading_is_never_labelled_under_the_wrong_version(
        kind: str, model, pieces, tmp_path: Path, catalog_url: str, request: pytest.FixtureRequest) -> None:
    config = tiny_config().features
    windows = {name: len(window_starts(read_midi(midi, name=name).get_end_time(), config=config))
               for name, (midi, _) in pieces.items()}
    old, new = min(windows, key=windows.get), max(windows, key=windows.get)  # told apart by their window counts
    assert windows[old] != windows[new]
    if kind == "folder":
        store = _FolderChangedAfterListing(tmp_path / "store")
    else:
        bucket = request.getfixturevalue("s3_versioned_bucket" if kind == "s3-versioned" else "s3_bucket")
        store = _S3ChangedAfterListing(bucket, "pieces", endpoint_url=request.getfixturevalue("s3_endpoint"))
    [key] = put_pieces(store, {"piece": pieces[old]})
    [listed_before] = list_items(store)[0]
    store.changes = {"piece.mid": pieces[new][0], "piece.wav": pieces[new][1]}

    first = tag_store_local(store, catalog=catalog_url, model=model)

    labels = labels_by_key(catalog_url)
    if kind == "s3-versioned":
        # Each read fetched exactly the listed version (by VersionId): the old bytes, under the old version.
        assert first.tagged == 1
        assert (labels[key]["object_version"], labels[key]["n_windows"]) == (listed_before.version, windows[old])
    else:
        # If-Match on the ETag / size+mtime on the open file: the change is seen, the item fails for this run
        # without an object version (transient), and no label carries the old version.
        assert (first.tagged, first.failed) == (0, 1) and labels == {}
        [failure] = rows(catalog_url, "SELECT stage, reason, object_version FROM failures")
        assert failure["stage"] == "read" and "changed after it was listed" in failure["reason"]
        assert failure["object_version"] is None
        # The item stays as listed: a failure without a version changes nothing the listing found.
        assert rows(catalog_url, "SELECT object_version FROM items") == [{"object_version": listed_before.version}]

    second = tag_store_local(store, catalog=catalog_url, model=model)

    [listed_now] = list_items(store)[0]
    label = labels_by_key(catalog_url)[key]
    assert second.tagged == 1 and listed_now.version != listed_before.version
    assert (label["object_version"], label["n_windows"]) == (listed_now.version, windows[new])  # the new bytes
    assert rows(catalog_url, "SELECT item_key FROM open_failures") == []


def take(batch: dict[str, np.ndarray], rows_: list[int]) -> dict[str, np.ndarray]:
    return {k: v[rows_] for k, v in batch.items()}


def test_re_emitted_window_rows_change_no_label_and_fail_no_item(model, pieces, tmp_path: Path,
                                                                 catalog_url: str) -> None:
    folder = LocalStore(tmp_path / "store")
    put_pieces(folder, dict(list(pieces.items())[:3]))
    items, _ = list_items(folder)
    config = tiny_config()
    predictor = WindowPredictor(model)
    per_item = []
    for item in items:
        window_rows = prepare_item(folder, item_row(item), config=config).window_rows(config)
        per_item.append(predictor(batch_of(window_rows)))
    a, b, c = per_item
    n_a = len(a["name"])
    # What a feature task retried by Ray can deliver: rows again, in another batch, after their item was finished,
    # in another order.
    clean = [a, b, c]
    re_emitted = [take(a, [0, 1]), take(b, list(range(len(b["name"])))[::-1]), a, take(a, [1, n_a - 1]), b,
                  take(c, [0]), c, c]

    def record(batches: list[dict[str, np.ndarray]], model_version: str) -> tuple[WindowGrouper, Recorder]:
        with CatalogWriter(catalog_url) as writer:
            recorder = Recorder(writer=writer, run_id=writer.start_run(model_version), metrics=JobMetrics(),
                                batch_size=16, use_attention=config.model.use_attention, expected={})
            grouper = WindowGrouper()
            for batch in batches:
                for done in grouper.add_batch(batch):
                    recorder.finish_item(done)
            recorder.flush()
        return grouper, recorder

    record(clean, "m-clean")
    grouper, recorder = record(re_emitted, "m-retried")

    assert grouper.open == {} and (recorder.tagged, recorder.failed) == (3, 0)
    assert rows(catalog_url, "SELECT item_key FROM failures") == []
    labels = rows(catalog_url, "SELECT * FROM labels")
    by_version = {v: {r["item_key"]: r for r in labels if r["model_version"] == v} for v in ("m-clean", "m-retried")}
    assert by_version["m-clean"].keys() == by_version["m-retried"].keys() == {item.stem for item in items}
    for key, clean_label in by_version["m-clean"].items():
        retried = by_version["m-retried"][key]
        assert retried["n_windows"] == clean_label["n_windows"] and retried["quadrant"] == clean_label["quadrant"]
        for column in ("p_q1", "p_q2", "p_q3", "p_q4", "arousal_prob", "valence_prob", "va_head_arousal_prob"):
            assert retried[column] == pytest.approx(clean_label[column], abs=1e-9), (key, column)


@pytest.mark.parametrize("concurrency", [1, 2, 8])
@pytest.mark.parametrize("items", [1, 5, 63, 64, 65, 200, 10_000])
def test_a_pass_starts_no_more_cpu_actors_than_it_has_model_calls_for(items: int, concurrency: int) -> None:
    tagging = TagConfig(inference_concurrency=concurrency, batch_size=16)
    actors = inference_actors(items, tagging=tagging, gpus=False)
    calls_at_least = -(-items // (16 * BUCKET_POOL))  # every item gives one window or more
    assert 1 <= actors <= concurrency
    assert actors <= calls_at_least  # no actor that no model call can reach
    if calls_at_least >= concurrency:  # work for all of them: all of them
        assert actors == concurrency
    assert inference_actors(items, tagging=tagging, gpus=True) == concurrency  # GPU pools autoscale from one


def test_feature_tasks_share_a_small_machine_but_take_whole_cpus_on_a_cluster() -> None:
    tagging = TagConfig(feature_concurrency=2, inference_concurrency=1)
    assert feature_task_cpus(2.0, tagging=tagging, actor_cpus=0.5, nodes=1) == pytest.approx(0.75)
    assert feature_task_cpus(64.0, tagging=tagging, actor_cpus=1.0, nodes=1) == 1.0
    # An autoscaling cluster: a CPU-less head alone at the start, or several nodes: the autoscaler adds CPUs.
    many = TagConfig(feature_concurrency=32)
    assert feature_task_cpus(0.0, tagging=many, actor_cpus=1.0, nodes=1) == 1.0
    assert feature_task_cpus(8.0, tagging=many, actor_cpus=1.0, nodes=2) == 1.0
    assert use_gpus(TagConfig(), {"CPU": 8.0}) is False
    assert use_gpus(TagConfig(), {"CPU": 8.0, "GPU": 1.0}) is True
    assert use_gpus(TagConfig(use_gpu=True), {"CPU": 0.0}) is True  # GPU workers scaled to zero come up on demand
    assert use_gpus(TagConfig(use_gpu=False), {"GPU": 4.0}) is False
