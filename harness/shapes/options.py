"""The command-line flags of the shapes recipe (`python -m harness.shapes.train --help`)."""

from __future__ import annotations

import argparse

DESCRIPTION = "Train the embedded model tiny-llava-shapes from scratch on the synthetic shapes benchmark."


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="harness/assets/tiny-llava-shapes", help="HF checkpoint directory")
    p.add_argument("--workdir", default="harness/shapes/checkpoints", help="state.pt, curve.jsonl (resume from here)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--minutes-vision", type=float, default=36.0, help="vision-stage budget (stops earlier at the target)")
    p.add_argument("--minutes-lm", type=float, default=50.0, help="language-stage budget, periodic evaluation included")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--eval-minutes", type=float, default=10.0, help="periodic held-out evaluation interval")
    p.add_argument("--batch-vision", type=int, default=16)
    p.add_argument("--lr-vision", type=float, default=2e-3)
    p.add_argument("--vision-target", type=float, default=0.995, help="stop when every per-patch head reaches it")
    p.add_argument("--vision-eval-every", type=int, default=100)
    p.add_argument("--vision-heldout", type=int, default=64, help="held-out images for per-patch accuracy")
    p.add_argument("--minutes-align", type=float, default=6.0, help="projector re-fit to the patch code")
    p.add_argument("--lr-align", type=float, default=5e-3)
    p.add_argument("--restart-lm", action="store_true", help="keep the vision stage, redo align + lm from scratch")
    p.add_argument("--batch-lm", type=int, default=4, help="images per language-stage step")
    p.add_argument("--questions-per-image", type=int, default=12, help="question blocks packed per image")
    p.add_argument("--lr-lm", type=float, default=1e-3)
    p.add_argument("--lm-projector", choices=("freeze", "train"), default="freeze",
                   help="projector in the language stage (trained, it drifted toward shape features and "
                        "the colour share of its output fell from ~44%% to ~10%%)")  # fmt: skip
    p.add_argument("--lookup", action=argparse.BooleanOptionalAction, default=True,
                   help="append an attribute-lookup block (`star red circle blue ...`) to every training sequence")
    p.add_argument("--bind-fraction", type=float, default=0.35,
                   help="bind phase (colour/shape questions + lookup on the patch code), at most this fraction of the budget; 0 = off")
    p.add_argument("--bind-target", type=float, default=0.3, help="bind phase ends when gqa colour and shape answer losses are below")
    p.add_argument("--teacher-fraction", type=float, default=0.15, help="after the bind phase, patch code -> projector output over this fraction")
    p.add_argument("--grow-from", default="0,1,2,3",
                   help="decoder layers trained alone in the bind phase; the rest join after it with zero residual "
                        "outputs ('' = all 32 from the start: the deep narrow model did not bind colours in 10 min; "
                        "0,8,16,24: layers 1-7 never read the image, unfair to methods that score at layers 1-2)")
    p.add_argument("--restart-why", default="", help="with --restart-lm / --extend-lm: why the language stage is discarded / continued (model card)")
    p.add_argument("--extend-lm", type=float, default=0.0,
                   help="continue a finished language stage for this many minutes (warm restart), then evaluate and export")
    p.add_argument("--lr-extend", type=float, default=5e-4, help="peak LR of an --extend-lm continuation")
    p.add_argument("--keep-align", action="store_true", help="with --restart-lm: keep the fitted projector, retrain the language model only")
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--warmup-fraction", type=float, default=0.12, help="96-token phase (min), fraction of the LM budget")
    p.add_argument("--ramp-fraction", type=float, default=0.3, help="warmup + 96-256-token phase, fraction of the budget")
    p.add_argument("--eval-pope", type=int, default=10, help="periodic eval: pope images (x2 questions x3 splits)")
    p.add_argument("--eval-gqa", type=int, default=40)
    p.add_argument("--eval-mme", type=int, default=20, help="images (x2 questions)")
    p.add_argument("--eval-robust", type=int, default=24, help="gqa questions for the periodic position check")
    p.add_argument("--final-pope", type=int, default=30)
    p.add_argument("--final-gqa", type=int, default=100)
    p.add_argument("--final-mme", type=int, default=48)
    p.add_argument("--verify-items", type=int, default=40, help="questions compared after reloading the export")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--bar-seconds", type=float, default=30.0, help="progress-bar refresh interval")
    p.add_argument("--export-only", action="store_true", help="final evaluation + export from the last state")
    p.add_argument("--card-only", action="store_true", help="rewrite the model card in --out from the last state")
    p.add_argument("--check", action="store_true", help="numerical checks of the packed forward, then exit")
    return p.parse_args(argv)
