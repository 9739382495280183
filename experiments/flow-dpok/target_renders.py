"""True renders of the flow demo's targets as image-caption pairs, for the learnability check (issue 73):
can a model learn its targets from the right answers at all, within a fine-tuning run's budget?

    .venv/bin/python experiments/flow-dpok/target_renders.py runs/flow-sweep/target-renders 16 [TARGETS]
    make import ARGS="src=runs/flow-sweep/target-renders root=datasets/flow-target-renders"
    # then rwl.pretrain_source=datasets/flow-target-renders (renders of the targets as D_pre);
    # TARGETS: runs/demo-flow/targets.txt (the default), runs/demo/targets.txt for shapes-sd's"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from data.targets import read_prompts_file
from shapes.render import render

if __name__ == "__main__":
    out, per_prompt = Path(sys.argv[1]), int(sys.argv[2])
    targets = sys.argv[3] if len(sys.argv) > 3 else "runs/demo-flow/targets.txt"
    out.mkdir(parents=True, exist_ok=False)
    rows = []
    for i, prompt in enumerate(read_prompts_file(targets)):
        for k in range(per_prompt):
            name = f"{i:03d}-{k:02d}.png"
            # render seeds apart from those of the base's training renders
            render(prompt, 90_000 + i * per_prompt + k, 64).save(out / name)
            rows.append(json.dumps({"file_name": name, "prompt": prompt}))
    (out / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    print(out, len(rows))
