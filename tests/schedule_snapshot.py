"""Every schedule every method config decides, as text (compared in tests/test_schedule.py).

For each method config x its schedule kinds (and SparseVLM's variants, random's stages) x each layout
(decoder layers, image tokens, the model config's method overrides) x every budget 1..V: the stages, the
budget the run records and the counts the method derives (PDrop's ratio, VisionZip's split, pool's grid),
or the error for a budget the schedule cannot reach. One line of text per budget:

    "1:30"                   a stage after layer 1 keeping 30 image tokens (FastV at 64 on 32 x 576)
    "2:250+9 6:101+5 15:35"  three stages, merged tokens after "+" (SparseVLM v1.5)
    "b2:242 b8:101 b16:43 ratio=0.419..."  stages before their layer (PDrop), then derived counts
    " budget=576"            the recorded budget, where it differs from the one asked for
    "error: budget=B ..."    the error message, the asked budget written B

Equal consecutive lines are stored once with their count: `[[count, line], ...]` per combination. Regenerate
the committed snapshot only for an intended change of a schedule:

    python tests/schedule_snapshot.py tests/data/schedules.json
"""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

from omegaconf import OmegaConf

from harness.families import method_overrides
from harness.methods import load_method, method_names

CONF = Path(__file__).parents[1] / "conf"
# name -> (decoder layers, image-token counts, model config whose method overrides apply)
LAYOUTS = {
    "llava_32": (32, [576], "llava_1_5_7b"),
    "llava_next_32": (32, [744, 300], "tiny_llava_next"),
    "qwen2_5_vl_28": (28, [576, 256, 64, 4], "tiny_qwen2_5_vl"),
}
# options whose every allowed value is swept (the method's config default for everything else)
SWEEPS = {
    "schedule": {"adaptinfer": ["matched", "paper", "derived"], "dart": ["matched", "paper"],
                 "divprune": ["matched", "paper"], "pdrop": ["matched", "paper"], "sparsevlm": ["matched", "paper"]},
    "variant": {"sparsevlm": ["v1.5", "v2"]},
    "stage": {"random": ["fastv", "prellm"]},
}


def settings(name: str) -> list[dict]:
    """The option combinations swept for one method config."""
    combos = [{}]
    for key, per_method in SWEEPS.items():
        values = per_method.get(name)
        if values:
            combos = [{**c, key: v} for c in combos for v in values]
    return combos


def decide(method, num_layers: int, num_image_tokens: int) -> dict:
    """The stages and the recorded decision of one method at one layout, as plain data."""
    decision = method.schedule(num_layers, num_image_tokens)
    out = {"stages": [[s.layer, s.keep, s.merged, int(s.before)] for s in decision.stages],
           "budget": decision.budget}
    out.update({k: list(v) if isinstance(v, tuple) else v for k, v in sorted(decision.facts.items())})
    return out


def collect(names: list[str] | None = None, decide=decide) -> dict:
    """{method|options|layout|V: {budget: decision or {"error": message}}} for every combination (of `names`)."""
    snapshot = {}
    for name in names or method_names():
        for options in settings(name):
            for layout, (num_layers, counts, model) in LAYOUTS.items():
                overrides = {**method_overrides(OmegaConf.load(CONF / "model" / f"{model}.yaml"), name), **options}
                configured = load_method(name, 1, **overrides)  # options are checked here; the budget in schedule()
                for num_image_tokens in counts:
                    rows = {}
                    for budget in range(1, num_image_tokens + 1):
                        method = copy.copy(configured)  # as the engine does for another image-token count
                        method.budget = budget
                        try:
                            rows[str(budget)] = decide(method, num_layers, num_image_tokens)
                        except ValueError as exc:
                            rows[str(budget)] = {"error": str(exc)}
                    tag = ",".join(f"{k}={v}" for k, v in sorted(options.items()))
                    snapshot[f"{name}|{tag}|{layout}|{num_image_tokens}"] = rows
    return snapshot


def line(budget: int, decision: dict) -> str:
    """One budget's decision (or error) as a line of text (see the module docstring)."""
    if "error" in decision:
        return "error: " + re.sub(rf"budget={budget}(?!\d)", "budget=B", decision["error"])
    stages = [f"{'b' if before else ''}{layer}:{keep}" + (f"+{merged}" if merged else "")
              for layer, keep, merged, before in decision["stages"]]
    recorded = [f"budget={decision['budget']}"] if decision["budget"] != budget else []
    facts = [f"{k}={decision[k]}" for k in sorted(decision) if k not in ("stages", "budget")]
    return " ".join(stages + recorded + facts)


def encode(snapshot: dict) -> dict:
    """{combination: [[count, line], ...]} with equal consecutive lines stored once."""
    out = {}
    for key, rows in snapshot.items():
        runs = []
        for budget in sorted(rows, key=int):
            text = line(int(budget), rows[budget])
            if runs and runs[-1][1] == text:
                runs[-1][0] += 1
            else:
                runs.append([1, text])
        out[key] = runs
    return out


def write(snapshot: dict, path: Path) -> None:
    """The encoded snapshot as JSON, one run per line."""
    lines = [f"  {json.dumps(key)}: [\n" + ",\n".join(f"    {json.dumps(run)}" for run in runs) + "\n  ]"
             for key, runs in sorted(encode(snapshot).items())]
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n")


if __name__ == "__main__":
    write(collect(), Path(sys.argv[1]))
