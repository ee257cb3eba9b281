"""Convert musicnn's MSD_musicnn TensorFlow checkpoint to the NumPy weights mer.features.musicnn reads.

    pip install "tensorflow-cpu==2.15.*" "numpy<2" && pip install --no-deps musicnn==0.1.0
    python infra/convert_musicnn.py mer/features/data/msd_musicnn.npz [tests/model/data/musicnn_reference.npz]

Run once, by hand, in a separate environment (TensorFlow is not a dependency of mer): the result is committed.
Only the trained variables are kept (not the optimiser's slots). With a second path, it also writes what the
original TensorFlow model outputs for two seeded random log-mel patches (the input, the embedding, the tags), which
tests/model/test_musicnn.py checks mer.model.musicnn against. musicnn is ISC-licensed (Music Technology Group,
Universitat Pompeu Fabra; mer/features/data/MUSICNN_LICENSE).
"""
import os
import sys

import musicnn
import numpy as np
import tensorflow as tf

reader = tf.compat.v1.train.NewCheckpointReader(os.path.join(os.path.dirname(musicnn.__file__), "MSD_musicnn", ""))
weights = {name: reader.get_tensor(name) for name in sorted(reader.get_variable_to_shape_map())
           if not any(slot in name for slot in ("Adam", "beta1_power", "beta2_power"))}
np.savez_compressed(sys.argv[1], **weights)
print(f"{len(weights)} variables, {sum(v.size for v in weights.values())} numbers -> {sys.argv[1]}")

if len(sys.argv) > 2:  # reference outputs of the original model, for the test of the port
    from musicnn import models

    tf.compat.v1.disable_eager_execution()
    patches = np.random.default_rng(0).uniform(0.0, 3.0, size=(2, 187, 96)).astype(np.float32)
    x = tf.compat.v1.placeholder(tf.float32, [None, 187, 96])
    training = tf.compat.v1.placeholder(tf.bool)
    with tf.name_scope("model"):
        logits, *_, penultimate = models.define_model(x, training, "MSD_musicnn", 50)
    with tf.compat.v1.Session() as session:
        tf.compat.v1.train.Saver().restore(session, os.path.join(os.path.dirname(musicnn.__file__), "MSD_musicnn", ""))
        embedding, tags = session.run([penultimate, tf.nn.sigmoid(logits)], {x: patches, training: False})
    np.savez_compressed(sys.argv[2], patches=patches, embedding=embedding, tags=tags)
    print(f"reference outputs -> {sys.argv[2]}")
