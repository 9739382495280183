"""Tooling beside the algorithms: the benchmark of the fine-tuning loops (:mod:`tools.bench`), the
step probe that says which denoising steps decide the reward (:mod:`tools.probe`) and the results
page rendered from the experiment records (:mod:`tools.results_page`).  They use the stages; no
stage uses them."""
