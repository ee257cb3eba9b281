"""The SQL catalog on real databases: every test runs on a SQLite file and on PostgreSQL (127.0.0.1:5432)."""
from __future__ import annotations

import json
import pickle
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from mer.catalog import (
    ANALYST_QUERIES,
    HEAD_REVISION,
    CatalogWriter,
    FailureRecord,
    LabelRecord,
    ListedItem,
    branch_attention,
    catalog_revision,
    create_catalog_engine,
    downgrade_catalog,
    metadata,
    upgrade_catalog,
)

pytest_plugins = ["fixtures_services"]

QUADRANT_PROBS = {
    "Q1": (0.7, 0.1, 0.1, 0.1),
    "Q2": (0.1, 0.7, 0.1, 0.1),
    "Q3": (0.1, 0.1, 0.7, 0.1),
    "Q4": (0.1, 0.1, 0.1, 0.7),
}
# (heads=2, 3, 3) in BRANCHES order (symbolic, harmony, tone): harmony receives most attention.
HARMONY_ATTENTION = [
    [[0.2, 0.6, 0.2], [0.1, 0.8, 0.1], [0.2, 0.5, 0.3]],
    [[0.3, 0.4, 0.3], [0.2, 0.6, 0.2], [0.1, 0.7, 0.2]],
]


def label(
    key: str,
    quadrant: str = "Q1",
    *,
    version: str = "v1",
    probs: tuple[float, float, float, float] | None = None,
    attention=None,
    windows: int = 2,
    modalities=("midi", "audio"),
    partial: bool = False,
) -> LabelRecord:
    probs = probs or QUADRANT_PROBS[quadrant]
    timeline = [
        {"start_s": 5.0 * w, "quadrant": quadrant, "p_q1": probs[0], "p_q2": probs[1], "p_q3": probs[2],
         "p_q4": probs[3], "va_head_arousal_prob": 0.5, "va_head_valence_prob": 0.5}
        for w in range(windows)
    ]
    return LabelRecord(
        key=key, object_version=version, modalities=modalities, duration_s=5.0 * windows, quadrant=quadrant,
        quadrant_probs=probs, va_head_arousal_prob=0.5, va_head_valence_prob=0.5,
        branches_used=("symbolic", "harmony", "tone"), attention=attention, timeline=timeline, partial=partial,
    )


def rows(url: str, sql: str, *, as_dicts: bool = False, **params) -> list:
    engine = create_catalog_engine(url)
    try:
        with engine.connect() as conn:
            return [dict(row._mapping) if as_dicts else tuple(row) for row in conn.execute(sa.text(sql), params)]
    finally:
        engine.dispose()


def dict_rows(url: str, sql: str, **params) -> list[dict]:
    return rows(url, sql, as_dicts=True, **params)


def json_value(value):
    """A JSON column as Python: JSONB comes back decoded, SQLite's JSON as text."""
    return json.loads(value) if isinstance(value, str) else value


def count(url: str, table: str) -> int:
    return rows(url, f"SELECT COUNT(*) FROM {table}")[0][0]


@pytest.fixture
def writer(catalog_url: str):
    with CatalogWriter(catalog_url) as w:
        yield w


# --- schema -----------------------------------------------------------------------------------------------------------


def test_migrations_create_the_schema_and_downgrade_removes_it(
    catalog_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # migrations are found from the package, not from the working directory
    assert catalog_revision(catalog_url) is None
    upgrade_catalog(catalog_url)
    upgrade_catalog(catalog_url)  # idempotent
    assert catalog_revision(catalog_url) == HEAD_REVISION

    engine = create_catalog_engine(catalog_url)
    try:
        inspector = sa.inspect(engine)
        assert {"items", "runs", "labels", "failures"} <= set(inspector.get_table_names())
        assert {"latest_labels", "open_failures", "label_changes"} <= set(inspector.get_view_names())
        label_columns = {c["name"] for c in inspector.get_columns("labels")}
        assert {"item_key", "run_id", "model_version", "object_version", "quadrant", "p_q1", "p_q2", "p_q3", "p_q4",
                "arousal_prob", "valence_prob", "va_head_arousal_prob", "va_head_valence_prob", "partial",
                "branches_used", "attn_symbolic", "attn_harmony", "attn_tone", "attention", "timeline",
                "problems"} <= label_columns
        assert "deleted_at" in {c["name"] for c in inspector.get_columns("items")}
        assert {"heartbeat_at", "inference"} <= {c["name"] for c in inspector.get_columns("runs")}
        assert "partial" in {c["name"] for c in inspector.get_columns("latest_labels")}

        # The writer's table definitions and the migrated schema agree.
        from alembic.autogenerate import compare_metadata
        from alembic.migration import MigrationContext

        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diffs = [d for d in compare_metadata(context, metadata) if d[0] != "remove_table"]
        assert diffs == []
    finally:
        engine.dispose()

    downgrade_catalog(catalog_url, "base")
    engine = create_catalog_engine(catalog_url)
    try:
        inspector = sa.inspect(engine)
        assert not {"items", "runs", "labels", "failures"} & set(inspector.get_table_names())
        assert not {"latest_labels", "open_failures", "label_changes"} & set(inspector.get_view_names())
    finally:
        engine.dispose()
    assert catalog_revision(catalog_url) is None
    upgrade_catalog(catalog_url)
    assert catalog_revision(catalog_url) == HEAD_REVISION


def test_upgrading_a_0001_catalog_makes_its_labels_consistent_and_downgrading_restores_them(catalog_url: str) -> None:
    # A label as revision 0001's tagger wrote it: arousal/valence from the binary head (a Q3 label with
    # P(high arousal) 0.8), and a partial label marked by an empty object version.
    upgrade_catalog(catalog_url, "0001")
    old_window = {"start_s": 0.0, "quadrant": "Q3", "p_q1": 0.1, "p_q2": 0.1, "p_q3": 0.7, "p_q4": 0.1,
                  "arousal_prob": 0.8, "valence_prob": 0.4}
    engine = create_catalog_engine(catalog_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO runs (model_version, started_at, status) VALUES ('m1', :t, 'succeeded')"),
                         {"t": datetime.now(timezone.utc)})
            for key, version in (("whole", "v1"), ("provisional", "")):
                conn.execute(sa.text("INSERT INTO items (key, object_version, modalities, first_seen, last_seen) "
                                     "VALUES (:k, 'v1', 'midi,audio', :t, :t)"), {"k": key, "t": datetime.now(timezone.utc)})
                conn.execute(sa.text(
                    "INSERT INTO labels (item_key, model_version, run_id, object_version, quadrant, p_q1, p_q2, p_q3, "
                    "p_q4, arousal_prob, valence_prob, branches_used, n_windows, timeline, tagged_at) VALUES "
                    "(:k, 'm1', 1, :v, 'Q3', 0.1, 0.1, 0.7, 0.1, 0.8, 0.4, 'symbolic', 1, :tl, :t)"),
                    {"k": key, "v": version, "tl": json.dumps([old_window]), "t": datetime.now(timezone.utc)})
    finally:
        engine.dispose()

    upgrade_catalog(catalog_url)

    labels = {r["item_key"]: r for r in dict_rows(catalog_url, "SELECT * FROM labels")}
    for key, label_row in labels.items():
        assert label_row["arousal_prob"] == pytest.approx(0.2) and label_row["valence_prob"] == pytest.approx(0.2)
        assert (label_row["va_head_arousal_prob"], label_row["va_head_valence_prob"]) == (0.8, 0.4)
        window = json_value(label_row["timeline"])[0]
        assert window["arousal_prob"] == pytest.approx(0.2) and window["va_head_arousal_prob"] == 0.8
    assert {k: bool(r["partial"]) for k, r in labels.items()} == {"whole": False, "provisional": True}
    assert rows(catalog_url, "SELECT heartbeat_at IS NOT NULL FROM runs") == [(True,)]
    assert sorted(rows(catalog_url, "SELECT item_key FROM latest_labels")) == [("provisional",), ("whole",)]

    downgrade_catalog(catalog_url, "0001")

    assert rows(catalog_url, "SELECT item_key, object_version, arousal_prob, valence_prob FROM labels ORDER BY item_key") \
        == [("provisional", "", 0.8, 0.4), ("whole", "v1", 0.8, 0.4)]
    assert json_value(rows(catalog_url, "SELECT timeline FROM labels WHERE item_key = 'whole'")[0][0]) == [old_window]


# --- writes -----------------------------------------------------------------------------------------------------------


def test_write_batch_twice_leaves_each_item_once(writer: CatalogWriter, catalog_url: str) -> None:
    run = writer.start_run("m1")
    batch = [label("a.mid piece", "Q1"), label("nested/Ünïcödé", "Q3")]
    broken = [FailureRecord("broken", "e1", "read", "MIDI file is empty", modalities="midi")]
    writer.write_batch(run, batch, broken)
    writer.write_batch(run, batch, broken)

    assert count(catalog_url, "labels") == 2
    assert count(catalog_url, "items") == 3
    assert count(catalog_url, "failures") == 1
    assert writer.tagged_versions("m1") == {"a.mid piece": "v1", "nested/Ünïcödé": "v1"}
    assert writer.failed_versions("m1") == {"broken": "e1"}
    stored = rows(catalog_url, "SELECT quadrant, p_q3, n_windows, timeline FROM labels WHERE item_key = :k",
                  k="nested/Ünïcödé")[0]
    timeline = stored[3] if isinstance(stored[3], list) else json.loads(stored[3])  # JSONB vs JSON text
    assert stored[:3] == ("Q3", 0.7, 2)
    assert [w["start_s"] for w in timeline] == [0.0, 5.0] and timeline[0]["quadrant"] == "Q3"


def test_retag_with_new_object_version_updates_in_place(writer: CatalogWriter, catalog_url: str) -> None:
    first = writer.start_run("m1")
    writer.write_batch(first, [label("piece", "Q1", version="etag-1")])
    first_seen = rows(catalog_url, "SELECT first_seen FROM items")[0][0]
    writer.finish_run(first, status="succeeded", counts={"listed": 1, "tagged": 1})

    second = writer.start_run("m1")
    writer.write_batch(second, [label("piece", "Q4", version="etag-2", windows=3)])

    assert rows(catalog_url, "SELECT run_id, object_version, quadrant, n_windows FROM labels") == [
        (second, "etag-2", "Q4", 3)
    ]
    assert rows(catalog_url, "SELECT object_version, duration_s, first_seen FROM items") == [
        ("etag-2", 15.0, first_seen)
    ]
    assert writer.tagged_versions("m1") == {"piece": "etag-2"}
    # Another model version gets its own label; the first one stays.
    third = writer.start_run("m2")
    writer.write_batch(third, [label("piece", "Q2", version="etag-2")])
    assert count(catalog_url, "labels") == 2
    assert writer.tagged_versions("m1") == {"piece": "etag-2"}
    assert writer.tagged_versions("m2") == {"piece": "etag-2"}
    assert rows(catalog_url, "SELECT model_version, quadrant FROM latest_labels") == [("m2", "Q2")]


def test_runs_record_status_and_counts(writer: CatalogWriter, catalog_url: str) -> None:
    run = writer.start_run("m1")
    assert rows(catalog_url, "SELECT status, finished_at FROM runs") == [("running", None)]
    writer.finish_run(run, status="failed", counts={"listed": 10, "tagged": 7, "skipped": 2, "failed": 1})
    status, finished, listed, tagged, skipped, failed = rows(
        catalog_url, "SELECT status, finished_at, listed, tagged, skipped, failed FROM runs"
    )[0]
    assert (status, listed, tagged, skipped, failed) == ("failed", 10, 7, 2, 1) and finished is not None
    with pytest.raises(ValueError):
        writer.finish_run(run, counts={"bogus": 1})
    with pytest.raises(ValueError):
        writer.finish_run(run, status="running")
    with pytest.raises(ValueError):
        writer.finish_run(run + 100)
    with pytest.raises(ValueError):
        writer.write_batch(run + 100, [label("x")])


def set_run_times(url: str, run_id: int, **times: datetime) -> None:
    """Move a run's timestamps (``started_at``, ``heartbeat_at``) as if time had passed."""
    engine = create_catalog_engine(url)
    try:
        with engine.begin() as conn:
            for column, value in times.items():
                conn.execute(sa.text(f"UPDATE runs SET {column} = :t WHERE id = :id"), {"t": value, "id": run_id})
    finally:
        engine.dispose()


def test_a_run_whose_heartbeat_stopped_is_closed_as_failed_by_the_next(writer: CatalogWriter, catalog_url: str) -> None:
    now = datetime.now(timezone.utc)
    killed = writer.start_run("m1")  # never finished: the job was killed 10 minutes ago
    long_running = writer.start_run("m1")  # started 30 hours ago and still heartbeating
    recent = writer.start_run("m1")  # another job, started just now
    set_run_times(catalog_url, killed, started_at=now - timedelta(minutes=40), heartbeat_at=now - timedelta(minutes=10))
    set_run_times(catalog_url, long_running, started_at=now - timedelta(hours=30))
    assert writer.heartbeat(long_running)

    writer.start_run("m1", dead_after=timedelta(minutes=5))

    status = dict(rows(catalog_url, "SELECT id, status FROM runs"))
    assert (status[killed], status[long_running], status[recent]) == ("failed", "running", "running")
    # When it stopped is not known; when it was last alive is.
    assert rows(catalog_url, "SELECT finished_at FROM runs WHERE id = :id", id=killed) == [(None,)]
    assert not writer.heartbeat(killed)  # closed: its heartbeat no longer revives it


def test_heartbeats_move_the_run_forward(writer: CatalogWriter, catalog_url: str) -> None:
    run = writer.start_run("m1")
    set_run_times(catalog_url, run, heartbeat_at=datetime.now(timezone.utc) - timedelta(hours=1))
    before = rows(catalog_url, "SELECT heartbeat_at FROM runs WHERE id = :id", id=run)[0][0]

    assert writer.heartbeat(run)

    after, started = rows(catalog_url, "SELECT heartbeat_at, started_at FROM runs WHERE id = :id", id=run)[0]
    assert after > before and after >= started
    writer.finish_run(run)
    assert not writer.heartbeat(run)  # a finished run has nothing to stamp


def test_failures_are_superseded_by_later_success_or_failure(writer: CatalogWriter, catalog_url: str) -> None:
    first = writer.start_run("m1")
    writer.write_batch(first, [], [
        FailureRecord("a", "e1", "features", "audio is silent", modalities="audio"),
        FailureRecord("b", "e1", "read", "truncated MIDI", modalities="midi"),
        FailureRecord("dup.mp3", "e9", "list", "another audio file for the same item is used: dup.wav"),
    ])
    assert count(catalog_url, "items") == 2  # a listing reject is an object, not an item
    second = writer.start_run("m1")
    writer.write_batch(second, [label("a", version="e2")], [FailureRecord("b", "e1", "read", "truncated MIDI")])

    assert rows(catalog_url, "SELECT item_key, run_id FROM open_failures ORDER BY item_key") == [
        ("b", second), ("dup.mp3", first)
    ]
    assert count(catalog_url, "failures") == 4  # history is kept
    assert rows(catalog_url, "SELECT superseded_by_run FROM failures WHERE item_key = 'a'") == [(second,)]
    assert writer.failed_versions("m1") == {"b": "e1", "dup.mp3": "e9"}
    assert writer.failed_versions("m2") == {}
    # The failed item's earlier facts are kept; the tagged one got its duration.
    assert rows(catalog_url, "SELECT key, duration_s FROM items ORDER BY key") == [("a", 10.0), ("b", None)]


def test_a_batch_that_fails_midway_leaves_nothing(writer: CatalogWriter, catalog_url: str) -> None:
    run = writer.start_run("m1")
    writer.write_batch(run, [label("kept")])
    corrupt = label("corrupt", "Q2")
    object.__setattr__(corrupt, "quadrant", "Q5")  # slips past validation; the database's CHECK refuses it
    batch = [label("new-1"), label("kept", "Q4", version="v2"), corrupt]

    with pytest.raises(sa.exc.IntegrityError):
        writer.write_batch(run, batch, [FailureRecord("bad", "x", "read", "empty", modalities="midi")])

    # Items were upserted and the failure inserted before the labels statement failed: all rolled back.
    assert rows(catalog_url, "SELECT key, object_version FROM items") == [("kept", "v1")]
    assert rows(catalog_url, "SELECT item_key, quadrant FROM labels") == [("kept", "Q1")]
    assert count(catalog_url, "failures") == 0
    # The writer is still usable.
    writer.write_batch(run, batch[:2])
    assert writer.tagged_versions("m1") == {"kept": "v2", "new-1": "v1"}


def test_killed_job_rerun_leaves_every_item_once(catalog_url: str) -> None:
    keys = [f"piece-{i:02d}" for i in range(10)]
    killed = CatalogWriter(catalog_url)
    run = killed.start_run("m1")
    killed.write_batch(run, [label(k) for k in keys[:4]])
    killed.close()  # the job dies here: no finish_run

    with CatalogWriter(catalog_url) as rerun:
        run2 = rerun.start_run("m1")
        done = rerun.tagged_versions("m1")
        todo = [k for k in keys if done.get(k) != "v1"]
        assert todo == keys[4:]
        # An overlapping batch (the kill hit between the write and its bookkeeping) is harmless.
        rerun.write_batch(run2, [label(k) for k in keys[3:]])
        rerun.finish_run(run2, counts={"listed": 10, "tagged": 7, "skipped": 3})

    assert rows(catalog_url, "SELECT COUNT(*), COUNT(DISTINCT item_key) FROM labels") == [(10, 10)]
    assert rows(catalog_url, "SELECT id, status FROM runs ORDER BY id") == [(run, "running"), (run2, "succeeded")]


def test_writer_pickles_and_hides_passwords(catalog_url: str) -> None:
    writer = CatalogWriter(catalog_url)
    run = writer.start_run("m1")
    clone = pickle.loads(pickle.dumps(writer))
    clone.write_batch(run, [label("from-a-worker")])
    assert writer.tagged_versions("m1") == {"from-a-worker": "v1"}
    writer.close()
    clone.close()
    assert "hunter2" not in repr(CatalogWriter("postgresql+psycopg://u:hunter2@db.example/cat", upgrade=False))


# --- what is true of the store now ----------------------------------------------------------------------------------


def listed(*keys: str, version: str = "v1") -> list[ListedItem]:
    return [ListedItem(key, version, ("midi", "audio")) for key in keys]


def test_a_complete_listing_marks_missing_items_deleted_and_a_returning_item_undeleted(
        writer: CatalogWriter, catalog_url: str) -> None:
    first = writer.start_run("m1")
    listed_at = datetime.now(timezone.utc)
    writer.see_items(listed("a", "b", "c", "x/d"), seen_at=listed_at)
    writer.write_batch(first, [label(k) for k in ("a", "b", "c", "x/d")])
    assert writer.mark_missing(first, listed_at=listed_at) == 0

    second = writer.start_run("m1")
    listed_at = datetime.now(timezone.utc)
    writer.see_items([*listed("a"), *listed("c", version="v2")], seen_at=listed_at)  # b, x/d gone; c changed
    # A listing of x/ alone says nothing about a, b, c; the full listing then finds b missing too.
    assert writer.mark_missing(second, listed_at=listed_at, prefix="x/") == 1
    assert writer.mark_missing(second, listed_at=listed_at) == 1

    deleted = dict(rows(catalog_url, "SELECT key, deleted_at IS NOT NULL FROM items"))
    assert deleted == {"a": False, "b": True, "c": False, "x/d": True}
    latest = {r["item_key"]: r for r in dict_rows(catalog_url, "SELECT * FROM latest_labels")}
    assert sorted(latest) == ["a", "c"]  # deleted items leave latest_labels ...
    assert count(catalog_url, "labels") == 4  # ... and their labels stay as history
    assert bool(latest["c"]["stale"]) and not bool(latest["a"]["stale"])  # c's objects changed since its label
    assert rows(catalog_url, "SELECT key, duration_s FROM items WHERE key IN ('a', 'c') ORDER BY key") == [
        ("a", 10.0), ("c", None)]  # the changed item's duration is no longer known
    last_seen = dict(rows(catalog_url, "SELECT key, last_seen FROM items"))
    assert last_seen["a"] > last_seen["b"]  # every listing refreshes what it finds, tagged or skipped

    third = writer.start_run("m1")
    listed_at = datetime.now(timezone.utc)
    writer.see_items(listed("a", "b", "c", version="v1"), seen_at=listed_at)  # b is back
    writer.mark_missing(third, listed_at=listed_at)
    assert sorted(r[0] for r in rows(catalog_url, "SELECT item_key FROM latest_labels")) == ["a", "b", "c"]
    # A label written for an item brings it back too (it was just read).
    writer.write_batch(third, [label("x/d")])
    assert rows(catalog_url, "SELECT deleted_at FROM items WHERE key = 'x/d'") == [(None,)]


def test_failures_of_deleted_items_and_listing_rejects_no_longer_found_leave_open_failures(
        writer: CatalogWriter, catalog_url: str) -> None:
    first = writer.start_run("m1")
    listed_at = datetime.now(timezone.utc)
    writer.see_items(listed("broken", "fine"), seen_at=listed_at)
    writer.write_batch(first, [label("fine")], [
        FailureRecord("broken", "v1", "read", "MIDI file is empty", modalities="midi"),
        FailureRecord("a/../x.mid", "etag-1", "list", "key contains a '..' path segment"),
        FailureRecord("dup.mp3", "etag-2", "list", "another audio file for the same item is used: dup.wav"),
    ])
    writer.mark_missing(first, listed_at=listed_at, reject_keys=["a/../x.mid", "dup.mp3"])
    assert writer.open_rejects() == {"a/../x.mid": "etag-1", "dup.mp3": "etag-2"}

    second = writer.start_run("m2")  # rejects are the object's fault, whatever the model version
    listed_at = datetime.now(timezone.utc)
    writer.see_items(listed("fine"), seen_at=listed_at)  # broken was deleted, and so was dup.mp3
    writer.mark_missing(second, listed_at=listed_at, reject_keys=["a/../x.mid"])

    assert writer.open_rejects() == {"a/../x.mid": "etag-1"}
    assert rows(catalog_url, "SELECT item_key FROM open_failures ORDER BY item_key") == [("a/../x.mid",)]
    assert count(catalog_url, "failures") == 3  # history is kept
    # New bytes under the rejected key: recorded again (by a run of another model version), the old record closed.
    writer.write_batch(second, [], [FailureRecord("a/../x.mid", "etag-3", "list", "key contains a '..' path segment")])
    assert writer.open_rejects() == {"a/../x.mid": "etag-3"}
    assert rows(catalog_url, "SELECT item_key, run_id FROM open_failures") == [("a/../x.mid", second)]


def test_a_partial_label_keeps_its_object_version_and_its_item_is_tagged_again(
        writer: CatalogWriter, catalog_url: str) -> None:
    run = writer.start_run("m1")
    writer.write_batch(run, [label("piece", version="etag-1", partial=True), label("other", version="etag-1")])

    assert writer.tagged_versions("m1") == {"other": "etag-1"}  # not done: the next run tags it again
    latest = {r["item_key"]: r for r in dict_rows(catalog_url, "SELECT * FROM latest_labels")}
    assert latest["piece"]["object_version"] == "etag-1"
    assert (bool(latest["piece"]["partial"]), bool(latest["piece"]["stale"])) == (True, False)

    writer.write_batch(run, [label("piece", version="etag-1")])
    assert writer.tagged_versions("m1") == {"other": "etag-1", "piece": "etag-1"}
    assert rows(catalog_url, "SELECT partial FROM latest_labels WHERE item_key = 'piece'") in ([(False,)], [(0,)])


def test_every_stored_label_has_the_arousal_and_valence_its_quadrants_imply(
        writer: CatalogWriter, catalog_url: str, rng: np.random.Generator) -> None:
    run = writer.start_run("m1")
    records = []
    for i in range(40):
        windows = rng.dirichlet(np.full(4, 0.5), size=int(rng.integers(1, 6))).astype(np.float32)  # (W, 4)
        probs = windows.mean(axis=0)
        head = rng.uniform(0, 1, size=(len(windows), 2))  # the binary head: free to disagree
        records.append(LabelRecord(
            key=f"piece-{i:02d}", object_version="v1", modalities="midi", duration_s=5.0 * len(windows),
            quadrant=f"Q{int(np.argmax(probs)) + 1}", quadrant_probs=probs, branches_used="symbolic",
            va_head_arousal_prob=head[:, 0].mean(), va_head_valence_prob=head[:, 1].mean(),
            timeline=[{"start_s": 5.0 * w, "quadrant": f"Q{int(np.argmax(p)) + 1}",
                       **{f"p_q{q + 1}": p[q] for q in range(4)},
                       "va_head_arousal_prob": a, "va_head_valence_prob": v}
                      for w, (p, (a, v)) in enumerate(zip(windows, head))]))
    writer.write_batch(run, records)

    for view in ("labels", "latest_labels"):
        stored = dict_rows(catalog_url, f"SELECT * FROM {view}")
        assert len(stored) == len(records)
        for row in stored:
            assert row["arousal_prob"] == pytest.approx(row["p_q1"] + row["p_q2"], abs=1e-9)
            assert row["valence_prob"] == pytest.approx(row["p_q1"] + row["p_q4"], abs=1e-9)
            for window in json_value(row["timeline"]):
                assert window["arousal_prob"] == pytest.approx(window["p_q1"] + window["p_q2"], abs=1e-9)
                assert window["valence_prob"] == pytest.approx(window["p_q1"] + window["p_q4"], abs=1e-9)
    # The database itself refuses a label whose numbers disagree (a writer that bypasses LabelRecord).
    row = records[0].row(run_id=run, model_version="m1", now=datetime.now(timezone.utc))
    row.update(model_version="m-bypass", arousal_prob=min(1.0, row["arousal_prob"] + 0.3))
    engine = create_catalog_engine(catalog_url)
    try:
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(sa.insert(metadata.tables["labels"]), row)
    finally:
        engine.dispose()


def test_label_changes_lists_exactly_the_items_whose_quadrant_differs(writer: CatalogWriter, catalog_url: str) -> None:
    now = datetime.now(timezone.utc)
    old_quadrants = {"a": "Q1", "b": "Q2", "c": "Q3", "d": "Q4", "e": "Q1", "only-old": "Q2", "gone": "Q3"}
    new_quadrants = {"a": "Q1", "b": "Q3", "c": "Q3", "d": "Q1", "e": "Q2", "only-new": "Q4", "gone": "Q4"}
    runs = {}
    for version, quadrants, started in (("m0", {"a": "Q4"}, now - timedelta(days=60)),
                                        ("m1", old_quadrants, now - timedelta(days=30)),
                                        ("m2", new_quadrants, now - timedelta(days=1))):
        runs[version] = writer.start_run(version)
        set_run_times(catalog_url, runs[version], started_at=started)
        writer.write_batch(runs[version], [label(k, q) for k, q in quadrants.items()])
    listed_at = datetime.now(timezone.utc)
    writer.see_items(listed(*sorted({*old_quadrants, *new_quadrants} - {"gone"})), seen_at=listed_at)
    writer.mark_missing(runs["m2"], listed_at=listed_at)

    changes = dict_rows(catalog_url, "SELECT * FROM label_changes WHERE from_version = 'm1' AND to_version = 'm2'")

    expected = {k for k in old_quadrants.keys() & new_quadrants.keys() if old_quadrants[k] != new_quadrants[k]}
    assert sorted(r["item_key"] for r in changes) == sorted(expected - {"gone"}) == ["b", "d", "e"]
    for change in changes:
        assert (change["from_quadrant"], change["to_quadrant"]) == (old_quadrants[change["item_key"]],
                                                                    new_quadrants[change["item_key"]])
        assert change["from_prob"] == change["to_prob"] == pytest.approx(0.7)  # each version's own quadrant
        assert bool(change["same_objects"])
    # Both directions are there; pairs with the oldest version only where it differs.
    assert count(catalog_url, "label_changes") == 2 * 3 + 2 * 1 + 2 * 1  # m1~m2, m0~m1 (a), m0~m2 (a)
    # The README's "what changed when we rolled out the new model": the newest version against the one before.
    engine = create_catalog_engine(catalog_url)
    try:
        with engine.connect() as conn:
            rollout = conn.execute(sa.text(ANALYST_QUERIES["model_rollout_changes"])).all()
    finally:
        engine.dispose()
    assert {(r.item_key, r.from_version, r.to_version) for r in rollout} == {(k, "m1", "m2") for k in expected - {"gone"}}


# --- records ------------------------------------------------------------------------------------------------------------


def test_label_record_accepts_numpy_and_rejects_nonsense() -> None:
    record = LabelRecord(
        key="k", object_version="v", modalities=("midi",), duration_s=np.float32(3.5), quadrant="Q2",
        quadrant_probs=np.array([0.1, 0.6, 0.2, 0.1], dtype=np.float32), va_head_arousal_prob=np.float64(0.7),
        va_head_valence_prob=np.float32(0.2), branches_used="symbolic", attention=np.full((1, 3, 3), 1 / 3, np.float32),
        timeline=[{"start_s": np.float64(0.0), "quadrant": "Q2", "p_q1": np.float32(0.1), "p_q2": 0.6, "p_q3": 0.2,
                   "p_q4": 0.1, "va_head_arousal_prob": 0.7, "va_head_valence_prob": np.float32(0.2)}],
    )
    assert all(type(p) is float for p in record.quadrant_probs)
    assert type(record.timeline[0]["p_q1"]) is float and type(record.attention[0][0][0]) is float
    assert type(record.va_head_valence_prob) is float and type(record.timeline[0]["va_head_valence_prob"]) is float
    good = dict(key="k", object_version="v", modalities="midi", duration_s=1.0, quadrant="Q1",
                quadrant_probs=(1, 0, 0, 0), branches_used=["symbolic"])
    LabelRecord(**good)
    window = {"start_s": 0.0, "quadrant": "Q1", "p_q1": 1.0, "p_q2": 0.0, "p_q3": 0.0, "p_q4": 0.0}
    LabelRecord(**good, timeline=[{**window, "arousal_prob": 1.0, "valence_prob": 1.0}])  # agrees: accepted
    for bad in (
        {"quadrant": "Q5"},
        {"quadrant_probs": (0.5, 0.5, 0.0)},
        {"quadrant_probs": (float("nan"), 0, 0, 1)},
        {"quadrant_probs": (0.5, 0.5, 0.5, 0.5)},  # not a distribution: sums of it would not be probabilities
        {"va_head_arousal_prob": 1.5},
        {"branches_used": ["melody"]},
        {"modalities": ()},
        {"attention": [[[1.0, 0.0], [0.0, 1.0]]]},
        {"timeline": [{"start_s": 0.0}]},
        {"timeline": [{**window, "arousal_prob": 0.3}]},  # the binary head's value under the derived name
        {"duration_s": -1},
    ):
        with pytest.raises(ValueError):
            LabelRecord(**{**good, **bad})


def test_branch_attention_is_the_mean_attention_each_branch_receives() -> None:
    # Tone absent: its row and column are zero; the two present rows each sum to 1.
    attention = [[[0.25, 0.75, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]]
    assert branch_attention(attention) == {"symbolic": 0.375, "harmony": 0.625, "tone": 0.0}
    assert branch_attention(np.zeros((4, 3, 3)).tolist()) is None  # model without attention
    assert branch_attention(None) is None


# --- analysts' SQL ------------------------------------------------------------------------------------------------------


def test_analyst_queries_return_what_they_promise(writer: CatalogWriter, catalog_url: str) -> None:
    rng = np.random.default_rng(0)
    first = writer.start_run("m1")
    # 25 sad pieces with distinct P(Q3), 5 happy ones, 3 whose emotion is carried by harmony, 2 without attention.
    sad = {f"sad/{i:02d}": float(p) for i, p in enumerate(rng.uniform(0.4, 0.97, 25))}
    records = [label(k, "Q3", probs=(0.01, 0.01, p, 0.98 - p), attention=None) for k, p in sad.items()]
    flat = [[[1 / 3] * 3] * 3]
    records += [label(f"happy/{i}", "Q1", attention=flat) for i in range(5)]
    records += [label(f"chords/{i}", "Q4", attention=HARMONY_ATTENTION) for i in range(3)]
    records += [label(f"midi-only/{i}", "Q2", modalities="midi") for i in range(2)]
    writer.write_batch(first, records)
    writer.finish_run(first)
    second = writer.start_run("m1")
    writer.write_batch(second, [label("happy/0", "Q2"), label("late/0", "Q2")])

    engine = create_catalog_engine(catalog_url)
    try:
        with engine.connect() as conn:
            saddest = conn.execute(sa.text(ANALYST_QUERIES["saddest_pieces"])).all()
            harmony = conn.execute(sa.text(ANALYST_QUERIES["harmony_carried"])).all()
            counts = conn.execute(sa.text(ANALYST_QUERIES["quadrant_counts_per_run"])).all()
    finally:
        engine.dispose()

    expected_sad = sorted(sad, key=lambda k: -sad[k])[:20]
    assert [row.item_key for row in saddest] == expected_sad
    assert saddest[0].p_q3 == pytest.approx(max(sad.values()))
    assert [row.item_key for row in harmony] == ["chords/0", "chords/1", "chords/2"]
    assert harmony[0].attn_harmony == pytest.approx(np.mean(HARMONY_ATTENTION, axis=(0, 1))[1])
    assert [(row.run_id, row.quadrant, row.n) for row in counts] == [
        (first, "Q1", 4), (first, "Q2", 2), (first, "Q3", 25), (first, "Q4", 3),
        (second, "Q2", 2),
    ]


def test_jobs_starting_together_on_an_empty_postgresql_both_get_the_schema(clean_postgres_url: str) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def upgrade() -> None:
        try:
            start.wait()
            upgrade_catalog(clean_postgres_url)
        except BaseException as error:  # noqa: BLE001 — collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=upgrade, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "an upgrade is stuck (waiting on another's locks)"
    assert not errors, errors
    assert catalog_revision(clean_postgres_url) == HEAD_REVISION


def test_a_labels_key_and_mode_reach_latest_labels_and_nonsense_modes_are_refused(
        writer: CatalogWriter, catalog_url: str) -> None:
    import dataclasses

    run = writer.start_run("m1")
    keyed = dataclasses.replace(label("piece"), musical_key="F#", mode="minor", key_confidence=0.31)
    writer.write_batch(run, [keyed, label("unknown")])
    latest = {r["item_key"]: r for r in dict_rows(catalog_url, "SELECT * FROM latest_labels")}
    assert (latest["piece"]["key"], latest["piece"]["mode"]) == ("F#", "minor")
    assert latest["piece"]["key_confidence"] == pytest.approx(0.31)
    assert (latest["unknown"]["key"], latest["unknown"]["mode"], latest["unknown"]["key_confidence"]) == (None,) * 3
    with pytest.raises(ValueError, match="mode"):
        dataclasses.replace(label("piece"), mode="dorian")


def test_a_run_says_how_its_labels_were_computed_and_a_0003_catalog_keeps_its_runs(catalog_url: str) -> None:
    upgrade_catalog(catalog_url, "0003")
    engine = create_catalog_engine(catalog_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO runs (model_version, started_at, status) "
                                 "VALUES ('old', CURRENT_TIMESTAMP, 'succeeded')"))
    finally:
        engine.dispose()
    with CatalogWriter(catalog_url) as writer:  # opening the catalog migrates it to the head
        run = writer.start_run("m1")
        writer.record_inference(run, "int8")
        with pytest.raises(ValueError, match="inference"):
            writer.record_inference(run, "fp16")
    runs = {r["model_version"]: r["inference"] for r in dict_rows(catalog_url, "SELECT * FROM runs")}
    assert runs == {"old": None, "m1": "int8"}  # a run from before 0004 does not pretend to know
    downgrade_catalog(catalog_url, "0003")
    assert [r["model_version"] for r in dict_rows(catalog_url, "SELECT * FROM runs ORDER BY id")] == ["old", "m1"]
