"""Export of the trained model: HF checkpoint, processor, model card and curve, checked by reloading."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from harness.model import load_llava
from harness.shapes.heldout import generate_answers


def write_card(text: str, out: Path) -> Path:
    """Writes the model card `text` to `out/README.md` atomically (mode 644)."""
    fd, tmp = tempfile.mkstemp(prefix=".README.md.", dir=out)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out / "README.md")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out / "README.md"


def export(model, processor, curve_path: Path, card: str, out: Path, items: list[dict], answers: list[str]) -> None:
    """HF checkpoint + processor + model card + curve into `out`, then reload and compare answers.

    Args:
        curve_path: the learning curve (copied as `training_curve.jsonl`).
        card: the model card's text.
        items / answers: held-out questions and the answers the model gave before export.

    Raises:
        RuntimeError: if the reloaded checkpoint answers any of `items` differently.
    """
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.set_attn_implementation({"text_config": "sdpa"})
    model.save_pretrained(out)
    processor.save_pretrained(out)
    shutil.copyfile(curve_path, out / "training_curve.jsonl")
    write_card(card, out)
    for path in out.iterdir():
        path.chmod(0o644)
    size_mb = (out / "model.safetensors").stat().st_size / 2**20
    reloaded, reloaded_processor = load_llava(pretrained=str(out), dtype="float32", device="cpu")
    again = generate_answers(reloaded, reloaded_processor, items)
    same = sum(a == b for a, b in zip(again, answers))
    print(f"exported to {out} ({size_mb:.1f} MB); reload gives the same answer on {same}/{len(items)} questions", flush=True)
    if same != len(items):
        raise RuntimeError(f"the exported model answers differently after reload ({same}/{len(items)} equal)")
