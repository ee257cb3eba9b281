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
) -> LabelRecord:
    probs = probs or QUADRANT_PROBS[quadrant]
    timeline = [
        {"start_s": 5.0 * w, "quadrant": quadrant, "p_q1": probs[0], "p_q2": probs[1], "p_q3": probs[2],
         "p_q4": probs[3], "arousal_prob": 0.5, "valence_prob": 0.5}
        for w in range(windows)
    ]
    return LabelRecord(
        key=key, object_version=version, modalities=modalities, duration_s=5.0 * windows, quadrant=quadrant,
        quadrant_probs=probs, arousal_prob=probs[0] + probs[1], valence_prob=probs[0] + probs[3],
        branches_used=("symbolic", "harmony", "tone"), attention=attention, timeline=timeline,
    )


def rows(url: str, sql: str, **params) -> list[tuple]:
    engine = create_catalog_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text(sql), params)]
    finally:
        engine.dispose()


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
        assert {"latest_labels", "open_failures"} <= set(inspector.get_view_names())
        label_columns = {c["name"] for c in inspector.get_columns("labels")}
        assert {"item_key", "run_id", "model_version", "object_version", "quadrant", "p_q1", "p_q2", "p_q3", "p_q4",
                "arousal_prob", "valence_prob", "branches_used", "attn_symbolic", "attn_harmony", "attn_tone",
                "attention", "timeline", "problems"} <= label_columns

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
        assert not {"latest_labels", "open_failures"} & set(inspector.get_view_names())
    finally:
        engine.dispose()
    assert catalog_revision(catalog_url) is None
    upgrade_catalog(catalog_url)
    assert catalog_revision(catalog_url) == HEAD_REVISION


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


def test_a_run_killed_long_ago_is_closed_as_failed_by_the_next(writer: CatalogWriter, catalog_url: str) -> None:
    killed = writer.start_run("m1")  # never finished: the job was killed
    recent = writer.start_run("m1")  # still running (another job, started just now)
    engine = create_catalog_engine(catalog_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE runs SET started_at = :t WHERE id = :id"),
                     {"t": datetime.now(timezone.utc) - timedelta(hours=30), "id": killed})
    engine.dispose()

    writer.start_run("m1")

    status = dict(rows(catalog_url, "SELECT id, status FROM runs"))
    assert (status[killed], status[recent]) == ("failed", "running")


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


# --- records ------------------------------------------------------------------------------------------------------------


def test_label_record_accepts_numpy_and_rejects_nonsense() -> None:
    record = LabelRecord(
        key="k", object_version="v", modalities=("midi",), duration_s=np.float32(3.5), quadrant="Q2",
        quadrant_probs=np.array([0.1, 0.6, 0.2, 0.1], dtype=np.float32), arousal_prob=np.float64(0.7),
        valence_prob=np.float32(0.2), branches_used="symbolic", attention=np.full((1, 3, 3), 1 / 3, np.float32),
        timeline=[{"start_s": np.float64(0.0), "quadrant": "Q2", "p_q1": np.float32(0.1), "p_q2": 0.6, "p_q3": 0.2,
                   "p_q4": 0.1, "arousal_prob": 0.7, "valence_prob": 0.2}],
    )
    assert all(type(p) is float for p in record.quadrant_probs)
    assert type(record.timeline[0]["p_q1"]) is float and type(record.attention[0][0][0]) is float
    good = dict(key="k", object_version="v", modalities="midi", duration_s=1.0, quadrant="Q1",
                quadrant_probs=(1, 0, 0, 0), arousal_prob=1, valence_prob=1, branches_used=["symbolic"])
    LabelRecord(**good)
    for bad in (
        {"quadrant": "Q5"},
        {"quadrant_probs": (0.5, 0.5, 0.0)},
        {"quadrant_probs": (float("nan"), 0, 0, 1)},
        {"arousal_prob": 1.5},
        {"branches_used": ["melody"]},
        {"modalities": ()},
        {"attention": [[[1.0, 0.0], [0.0, 1.0]]]},
        {"timeline": [{"start_s": 0.0}]},
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
