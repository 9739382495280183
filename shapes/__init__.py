"""The shapes world: a procedural world of coloured shapes on backgrounds with its prompts,
renderer, programmatic oracle, simulated raters, tokenizer, base-model training and the committed
base models (``shapes/models/``).  It builds on :mod:`data` and :mod:`core`, never on a stage."""

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent / "models"
SHAPES_SD = MODELS_DIR / "shapes-sd"
SHAPES_CLIP = MODELS_DIR / "shapes-clip"
# The SD3-format flow-matching model (make base's flow stage; sample it with sampling.max_sequence_length=0)
SHAPES_FLOW = MODELS_DIR / "shapes-flow"
