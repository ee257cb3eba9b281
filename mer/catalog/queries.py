"""What analysts run against the catalog: plain SQL, identical on SQLite and PostgreSQL (:data:`ANALYST_QUERIES`).

The README shows each query as it is here (a test compares them), and the read-only role's grants
(``infra/catalog/roles.sql``) are tested by running them.
"""
from __future__ import annotations

SADDEST_PIECES = """
SELECT item_key, model_version, p_q3, arousal_prob, valence_prob, duration_s
FROM latest_labels
WHERE quadrant = 'Q3'
ORDER BY p_q3 DESC, item_key
LIMIT 20
"""
"""The twenty saddest pieces: labelled Q3 (negative valence, low arousal), most confident first."""

HARMONY_CARRIED = """
SELECT item_key, model_version, quadrant, attn_symbolic, attn_harmony, attn_tone
FROM latest_labels
WHERE attn_harmony > attn_symbolic AND attn_harmony > attn_tone
ORDER BY attn_harmony DESC, item_key
"""
"""Pieces whose emotion is carried mostly by harmony: the harmony (chroma) branch receives the most attention."""

QUADRANT_COUNTS_PER_RUN = """
SELECT runs.id AS run_id, runs.model_version, runs.started_at, labels.quadrant, COUNT(*) AS n
FROM labels
JOIN runs ON runs.id = labels.run_id
GROUP BY runs.id, runs.model_version, runs.started_at, labels.quadrant
ORDER BY runs.id, labels.quadrant
"""
"""Labels per quadrant per run (a label counts for the run that wrote it last)."""

MODEL_ROLLOUT_CHANGES = """
WITH rollouts AS (
    SELECT model_version, MIN(started_at) AS first_run
    FROM runs
    GROUP BY model_version
)
SELECT item_key, from_version, from_quadrant, from_prob, to_version, to_quadrant, to_prob, same_objects
FROM label_changes
WHERE from_version = (SELECT model_version FROM rollouts ORDER BY first_run DESC, model_version DESC LIMIT 1 OFFSET 1)
  AND to_version = (SELECT model_version FROM rollouts ORDER BY first_run DESC, model_version DESC LIMIT 1)
ORDER BY to_prob DESC, item_key
"""
"""What changed when we rolled out the new model: the items whose quadrant the newest model version (by its first
run) labels differently from the version before it, with the probability each gave its quadrant, surest first.
``same_objects`` is false where the item's files changed between the two labels (not the model's doing alone)."""

ANALYST_QUERIES: dict[str, str] = {
    "saddest_pieces": SADDEST_PIECES,
    "harmony_carried": HARMONY_CARRIED,
    "quadrant_counts_per_run": QUADRANT_COUNTS_PER_RUN,
    "model_rollout_changes": MODEL_ROLLOUT_CHANGES,
}
