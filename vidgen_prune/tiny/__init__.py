"""The embedded tiny text-to-video model: a real diffusers ``WanPipeline`` trained on procedural videos.

Load it exactly like a downloaded checkpoint: ``WanPipeline.from_pretrained(EMBEDDED_MODEL_DIR)``.
"""

from __future__ import annotations

from pathlib import Path

EMBEDDED_MODEL_DIR: Path = Path(__file__).resolve().parent / "weights"

# What the embedded model was trained for. 17 frames at 128x128 -> latent 5x32x32 -> 1280 video tokens per
# transformer forward with patch (1, 2, 2).
GENERATION_DEFAULTS: dict = {
    "frames": 17,
    "height": 128,
    "width": 128,
    "steps": 20,
    "guidance": 5.0,
    "fps": 8,
    "flow_shift": 3.0,
}
