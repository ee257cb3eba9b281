"""Train the emotion model on EMOPIA with Ray Train and write a model artifact.

Plain (a local Ray starts, or the cluster in RAY_ADDRESS / --address):
    python jobs/train.py --storage ./mer_runs --workers 2

On a running cluster (Redis holds 6379 here, so the head takes another port):
    source .venv/bin/activate     # the head's job drivers then run the venv's python
    ray start --head --port 6380 --dashboard-host 127.0.0.1
    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/train.py --storage "$PWD/mer_runs" --emopia /work/shared/emopia

``RAY_AUTH_MODE=token`` is needed when the head runs with token authentication (Ray turns it on when
~/.ray/auth_token exists, which any local ``ray.init()`` creates). Under ``ray job submit`` give absolute paths:
the job runs in a temporary copy of --working-dir. On a multi-node cluster --storage must be S3 or a shared
folder, and --cache-dir a shared folder (or each node re-extracts what it misses).

Flags default to their environment variables (MER_EMOPIA, MER_STORAGE, MER_CACHE_DIR, AWS_ENDPOINT_URL,
RAY_ADDRESS). Running the same command again resumes the run from its latest checkpoint (``--no-resume``
starts over); raising --epochs extends a finished run.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import ray

from mer.config import BRANCHES, PRESETS, MerConfig, preset
from mer.errors import MerError
from mer.train import summary_table, train_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = MerConfig().training
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS, default="default",
                        help="default: the best configuration found on val; paper: the paper's model (README)")
    parser.add_argument("--emopia", default=os.environ.get("MER_EMOPIA"),
                        help="EMOPIA folder (env MER_EMOPIA; default ../shared/emopia)")
    parser.add_argument("--storage", default=os.environ.get("MER_STORAGE", "./mer_runs"),
                        help="runs and model artifacts: a folder or s3://bucket/prefix (env MER_STORAGE)")
    parser.add_argument("--cache-dir", default=os.environ.get("MER_CACHE_DIR"),
                        help="feature cache folder, shared by all nodes (env MER_CACHE_DIR; "
                             "default <storage>/feature-cache for a local storage, ./mer_runs/feature-cache for S3)")
    parser.add_argument("--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL"),
                        help="S3-compatible endpoint for an s3:// storage (env AWS_ENDPOINT_URL)")
    parser.add_argument("--workers", type=int, default=defaults.num_workers, help="Ray Train workers")
    parser.add_argument("--gpu", dest="use_gpu", action="store_const", const=True, default=defaults.use_gpu,
                        help="one GPU per worker (default: when the cluster has GPUs)")
    parser.add_argument("--cpu", dest="use_gpu", action="store_const", const=False, help="never use GPUs")
    parser.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="global batch (all workers; default: the preset's)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (AdamW; default: the preset's)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--branches", default=",".join(BRANCHES),
                        help=f"comma-separated subset of {','.join(BRANCHES)} (ablations)")
    parser.add_argument("--no-attention", action="store_true", help="the model without self-attention (ablation)")
    parser.add_argument("--extra-soundfont", dest="extra_soundfonts", action="append", default=None, metavar="SF2",
                        help="also train on renderings with this SoundFont (repeatable; default: the preset's)")
    parser.add_argument("--mfcc-mean-norm", action=argparse.BooleanOptionalAction, default=None,
                        help="centre each window's MFCCs per coefficient (tone branch; default: the preset's)")
    parser.add_argument("--summary-texture", action=argparse.BooleanOptionalAction, default=None,
                        help="FiLM and the summary head read the texture descriptors too (intervals sounding "
                             "together, register, the top line, the mode segment by segment, rhythm; default: "
                             "the preset's)")
    parser.add_argument("--summary-kernel-centres", type=int, default=None, metavar="N",
                        help="the summary head's regression over RBF kernel features of the descriptors at up to N "
                             "training windows (0: over the descriptors, a linear head; default: the preset's)")
    parser.add_argument("--symbolic-input", choices=("tokens", "notes"), default=None,
                        help="the Bi-GRU steps over MIDI-like tokens or over the window's notes (pitch, velocity, "
                             "onset gap, duration; default: the preset's, tokens in both)")
    parser.add_argument("--symbolic-max-tokens", type=int, default=None, metavar="N",
                        help="the symbolic branch reads a window's first N tokens (0: all; default: the preset's)")
    parser.add_argument("--transpose-semitones", type=int, default=None, metavar="N",
                        help="move each training window by a random k in [-N, N] semitones (0: off; default: the "
                             "preset's, off in both)")
    parser.add_argument("--transpose-audio", choices=("rolled", "rendered"), default=None,
                        help="with --transpose-semitones: roll the chromagram and keep the MFCCs (rolled), or take "
                             "both from a rendering of the transposed MIDI, extracted once per shift (rendered; "
                             "default: the preset's, rolled)")
    parser.add_argument("--weight-average", dest="weight_average_decay", type=float, default=None, metavar="DECAY",
                        help="score and keep an exponential moving average of the weights, this decay a step "
                             "(0: off; default: the preset's, off in both)")
    parser.add_argument("--label-smoothing", type=float, default=None, metavar="S",
                        help="smooth the training targets by S in [0, 1) (0: off; default: the preset's, off in both)")
    parser.add_argument("--va-loss-weight", type=float, default=None, metavar="W",
                        help="weight of the arousal/valence losses beside the 4Q loss (0: 4Q only; default: the "
                             "preset's, 1 in both)")
    parser.add_argument("--checkpoint", choices=("best_val", "last"), default=None,
                        help="the epoch that becomes the model: the best on val 4Q or the last (default: the "
                             "preset's, best_val in both)")
    parser.add_argument("--fit-on", choices=("train", "train+val"), default=None,
                        help="refit a configuration chosen on val on train + val: needs --checkpoint last, "
                             "--temperature and, with a summary head, --summary-c and --summary-blend, taken from "
                             "runs on train alone (default: train)")
    parser.add_argument("--summary-c", type=float, default=None, metavar="C",
                        help="the summary head's regression strength (default: chosen on val)")
    parser.add_argument("--summary-blend", type=float, default=None, metavar="W",
                        help="the summary head's blend weight in [0, 1] (default: chosen on val)")
    parser.add_argument("--temperature", type=float, default=None, metavar="T",
                        help="the quadrant probabilities' calibration temperature (default: fitted on val)")
    parser.add_argument("--subset", type=int, default=None, help="train on N clips (quick runs)")
    parser.add_argument("--run-name", default=None, help="run folder name (default: from config and data)")
    parser.add_argument("--resume", dest="resume", action="store_true", default=True,
                        help="continue the run's latest checkpoint (default)")
    parser.add_argument("--no-resume", dest="resume", action="store_false", help="discard the run and start over")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                        help="Ray cluster address (env RAY_ADDRESS; default: start a local Ray)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines, only the summary")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> MerConfig:
    config = preset(args.preset)
    branches = tuple(b.strip() for b in args.branches.split(",") if b.strip())
    given = {"epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": args.lr,
             "transpose_semitones": args.transpose_semitones, "weight_average_decay": args.weight_average_decay,
             "label_smoothing": args.label_smoothing, "transpose_audio": args.transpose_audio,
             "va_loss_weight": args.va_loss_weight, "checkpoint": args.checkpoint, "fit_on": args.fit_on,
             "summary_c": args.summary_c, "summary_blend": args.summary_blend, "temperature": args.temperature,
             "extra_soundfonts": None if args.extra_soundfonts is None
             else tuple(os.path.abspath(sf) for sf in args.extra_soundfonts)}  # every node reads the same path
    for soundfont in given["extra_soundfonts"] or ():
        if not os.path.isfile(soundfont):
            raise ValueError(f"--extra-soundfont {soundfont}: no such file")
    model_given = {"mfcc_mean_norm": args.mfcc_mean_norm, "summary_texture": args.summary_texture,
                   "summary_kernel_centres": args.summary_kernel_centres,
                   "symbolic_input": args.symbolic_input, "symbolic_max_tokens": args.symbolic_max_tokens}
    return dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, branches=branches, use_attention=not args.no_attention,
                                  **{key: value for key, value in model_given.items() if value is not None}),
        training=dataclasses.replace(
            config.training, seed=args.seed, num_workers=args.workers, use_gpu=args.use_gpu,
            **{key: value for key, value in given.items() if value is not None},
        ),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = build_config(args)
    except ValueError as error:  # e.g. an unknown branch name or a missing SoundFont
        print(f"error: {error}", file=sys.stderr)
        return 2
    cache_dir = args.cache_dir or os.path.join("./mer_runs" if "://" in args.storage else args.storage,
                                               "feature-cache")
    ray.init(address=args.address or "local")
    try:
        result = train_model(
            config, emopia=args.emopia, storage=args.storage, cache_dir=cache_dir, run_name=args.run_name,
            resume=args.resume, subset=args.subset, progress=not args.quiet, endpoint_url=args.endpoint_url,
        )
    except MerError as error:  # missing data, bad storage, no usable clips: a message, not a traceback
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(summary_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
