"""Simulated raters' region marks for a labelled shapes round (issue 57's region-head study).

    PYTHONPATH=. python experiments/region-head/mark_round.py <dataset root> <seed>

Every current bad answer of the root gets its rater's clicks on the oracle's problem regions
(shapes.marking.simulate_marks, default MarkProfile), written with Store.append(MARKS, rows).
"""

import json
import sys

from data import Store
from shapes.marking import simulate_marks

root, seed = sys.argv[1], int(sys.argv[2])
print(json.dumps({"root": root, "seed": seed, "marks_written": simulate_marks(Store(root), seed=seed)}))
