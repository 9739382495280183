"""A training run's results: the layout of ``metrics.json`` (:func:`assemble_metrics`: per
validation view a flat table of the model and its baselines, the auxiliary-loss ablation, the data
summary) and the printed table (:func:`metrics_table`).  Figures only: acceptance targets are
checked by the reward bench (``pipelines.reward_bench``) and the tests."""

from __future__ import annotations

from core.jsonable import json_safe
from reward.config import RewardConfig
from reward.data import VIEWS, RewardData
from reward.metrics import TABLE_ROWS, format_table
from reward.model import RewardModel

# The model and its baselines, in the order of metrics.json keys and the printed table; a baseline's
# keys carry its name as a prefix.
MODELS = ("reward_model", "zero_shot_clip", "untrained_head", "oracle_labels_head")

VIEW_DESCRIPTIONS = {"val_images": "unseen images of the prompts the reward trained on",
                     "val_prompts": "prompts the reward never trained on"}


def assemble_metrics(results: dict[str, dict], ablation: dict | None, data: RewardData, cfg: RewardConfig,
                     model: RewardModel, has_oracle: bool, primary: str, seconds: float) -> dict:
    """metrics.json: per validation view a flat table (the model's metrics, each baseline's
    prefixed with its name) with its models."""
    ref = "oracle" if has_oracle else "labels"
    m: dict = {"pairwise_reference": ref, "primary_view": primary}
    for view in VIEWS:
        if view not in results["reward_model"]:
            continue
        v: dict = {}
        for name in MODELS:
            if view not in results.get(name, {}):
                continue
            prefix = "" if name == "reward_model" else f"{name}_"
            r = results[name][view]
            for k in TABLE_ROWS:
                v[prefix + k] = r.get(k)
            # The headline pairwise accuracy: against the oracle in the shapes world, else the labels.
            v[prefix + "pairwise_accuracy"] = r[f"pairwise_accuracy_vs_{ref}"]
        if has_oracle and "zero_shot_clip_pairwise_accuracy_vs_oracle" in v:
            v["margin_over_zero_shot_clip"] = v["pairwise_accuracy_vs_oracle"] - v["zero_shot_clip_pairwise_accuracy_vs_oracle"]
        v["models"] = {name: results[name][view] for name in MODELS if view in results.get(name, {})}
        m[view] = v
    m["aux_ablation"] = ablation
    m["data"] = {**data.summary, "root": str(data.root), "labels": cfg.data.labels}
    m["clip"] = str(model.clip_path)
    m["train_seconds"] = seconds
    return json_safe(m, digits=4)  # metrics.json reports 4 decimals


def metrics_table(metrics: dict) -> str:
    parts = []
    for view in VIEWS:
        if view in metrics:
            cols = metrics[view]["models"]
            parts.append(f"{view} ({VIEW_DESCRIPTIONS[view]}):\n"
                         + format_table({c: cols[c] for c in MODELS if c in cols}))
    text = "\n\n".join(parts)
    ab = metrics.get("aux_ablation")
    if ab:
        text += (f"\n\nauxiliary loss (lambda={ab['aux_weight']}) on {ab['evaluated_on']}, mean of "
                 f"{len(ab['seeds'])} seeds:\n")
        text += format_table({"with_aux": ab["with_aux"], "without_aux": ab["without_aux"],
                              "delta": ab["delta"]})
        d = ab["paired_delta"]
        # None: NaN in metrics.json, e.g. a validation view with one class on a small round
        mean = "n/a" if d["mean"] is None else f"{d['mean']:+.3f}"
        sem = "n/a" if d["sem"] is None else f"{d['sem']:.3f}"
        text += f"\npaired gain in {d['metric']}: {mean} (standard error {sem})"
    ep = metrics.get("epistemic")
    if ep:
        text += f"\n\nepistemic spread ({ep['kind']}, lambda={ep['lambda']}, {ep['rows']} training rows):"
        for view in VIEWS:
            if view in ep:
                e, fmt = ep[view], lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
                text += (f"\n  {view}: Spearman vs |p - y| ({e['truth']}) {fmt(e['spearman_spread_vs_abs_error'])} "
                         f"(given p: {fmt(e['partial_spearman_spread_vs_abs_error'])}), error rate by spread "
                         "quartile " + " / ".join(map(fmt, e["error_rate_by_spread_quartile"])))
    region = metrics.get("region")
    if region:
        text += f"\n\nregion head ({region['marks']} marks, {region['images']} answered images):"
        for view in VIEWS:
            if view in region:
                r = region[view]
                cells = [f"{k} {r[k]:.3f}" for k in ("heatmap_auc", "heatmap_pearson", "heatmap_auc_vs_oracle",
                                                      "rater_heatmap_auc_vs_oracle") if isinstance(r.get(k), float)]
                text += f"\n  {view}: " + ", ".join(cells)
    return text
