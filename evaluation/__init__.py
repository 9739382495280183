"""Evaluation of text-to-image models, one library for ``make base``'s model cards, ``make eval``
and the demo's and the loop's reports: one seed scheme (:func:`core.seeds.eval_seeds`), one set of alignment
figures (:data:`shapes.oracle.ALIGNMENT_KEYS`), one sample grid, one CLIP embedder and one Fréchet
distance.

- :mod:`evaluation.embeddings`: CLIP image and text embeddings, the Fréchet distance, a reference
  folder's embeddings;
- :mod:`evaluation.oracle`: sampling and judging shapes-world prompts, the figures, pass rates, the
  "common" / "rare_counts" / control prompt groups;
- :mod:`evaluation.grids`: the sample grid;
- :mod:`evaluation.compare`: ``make eval``, the base and fine-tuned models on the same prompts and
  seeds (reward, win-rate, CLIP-FD, oracle);
- :mod:`evaluation.report`: the demo's report; :mod:`evaluation.loop_report`: the closed loop's;
- :mod:`evaluation.base_model`: ``make base``'s eval stage (the base models' cards, CLIP retrieval).
"""
