"""The target rule: per-prompt pass rates from the raters' labels, the band, the cap, and the
prompts file ``make targets`` writes for ``make finetune``."""

import pytest

from core.errors import UserError
from data import Store
from data.labels import retract
from data.schemas import BINARY_LABELS, GENERATIONS
from data.targets import TargetRule, pick_targets, prompt_pass_rates, write_targets
from pipelines.cli import run
from pipelines.targets import main
from test_schemas import generation_row, label_row

# prompt -> one list of votes per image ("g" good, "b" bad, "s" skip)
ROUND = {
    "p_never": ["bb", "bb", "b", "bb"],          # 0 of 4 good: nothing to amplify
    "p_some": ["gg", "bb", "bb", "gb", "b"],      # 1 of 4 decided good (a tie is not decided): 0.25
    "p_half": ["g", "g", "b", "b"],               # 0.5
    "p_most": ["g", "g", "g", "b"],               # 0.75
    "p_all": ["g", "g", "g", "g"],                # 1.0 on 4 images: fixed with 95 % confidence
    "p_few": ["g", "b", "ss"],                    # 2 decided images only
    "p_unlabelled": ["", ""],
}


@pytest.fixture
def round_root(tmp_path):
    store = Store(tmp_path / "round")
    gens, labels = [], []
    for pid, images in ROUND.items():
        for k, votes in enumerate(images):
            iid = f"{pid}-{k}"
            gens.append(generation_row(image_id=iid, prompt_id=pid, prompt=f"prompt {pid}", image_path=f"images/{iid}.png"))
            labels += [label_row(label_id=f"{iid}-{r}", image_id=iid, prompt_id=pid, rater_id=f"r{r}",
                                 label={"g": "good", "b": "bad", "s": "skip"}[v]) for r, v in enumerate(votes)]
    store.append(GENERATIONS, gens)
    store.append(BINARY_LABELS, labels)
    return tmp_path / "round"


def test_pass_rates_count_majority_images_worst_first(round_root):
    rates = prompt_pass_rates(Store(round_root)).set_index("prompt_id")
    assert rates.loc["p_some", ["labelled_images", "good_images"]].tolist() == [4, 1]
    assert rates.loc["p_some", "good_rate"] == 0.25 and rates.loc["p_some", "labels"] == 9
    assert rates.loc["p_few", "labelled_images"] == 2 and rates.loc["p_few", "labels"] == 2  # skips excluded
    assert rates.loc["p_unlabelled", "labelled_images"] == 0
    order = list(prompt_pass_rates(Store(round_root))["prompt_id"])
    assert order == ["p_never", "p_some", "p_few", "p_half", "p_most", "p_all", "p_unlabelled"]


def test_rule_band_minimum_and_cap(round_root):
    rates = prompt_pass_rates(Store(round_root))
    picked = lambda rule: set(pick_targets(rates, rule).query("picked")["prompt_id"])  # noqa: E731
    assert picked(TargetRule()) == {"p_some", "p_half"}  # p_never: 0; p_most: > 0.5; p_few: 2 images
    assert picked(TargetRule(min_images=2)) == {"p_some", "p_few", "p_half"}
    assert picked(TargetRule(max_targets=1)) == {"p_some"}  # lowest good-rate first
    assert picked(TargetRule(max_good_rate=0.8)) == {"p_some", "p_half", "p_most"}
    with pytest.raises(UserError, match="band"):
        pick_targets(rates, TargetRule(min_good_rate=0.5, max_good_rate=0.5))


def test_a_retracted_label_no_longer_counts(round_root):
    store = Store(round_root)
    retract(store, BINARY_LABELS.name, "p_some-0-0", "r0")  # p_some-0 now has one good vote: still good
    retract(store, BINARY_LABELS.name, "p_some-0-1", "r1")  # and now none: not labelled
    row = prompt_pass_rates(store).set_index("prompt_id").loc["p_some"]
    assert (row["labelled_images"], row["good_images"]) == (3, 0)


def test_make_targets_writes_the_prompts_file_and_never_overwrites(round_root, tmp_path, capsys):
    out = tmp_path / "t" / "targets.txt"
    assert run(main, [f"root={round_root}", f"out={out}"]) == 0
    assert out.read_text().splitlines() == ["prompt p_some", "prompt p_half"]
    assert "picked" in out.with_suffix(".csv").read_text().splitlines()[0]
    assert "prompts.prompts_file=" in capsys.readouterr().out
    out.write_text("mine\n")
    assert run(main, [f"root={round_root}", f"out={out}"]) == 2
    assert out.read_text() == "mine\n" and "already exists" in capsys.readouterr().err
    assert run(main, [f"root={round_root}", f"out={out}", "overwrite=true", "rule.max_targets=1"]) == 0
    assert out.read_text() == "prompt p_some\n"


def test_previous_targets_stay_until_the_labels_say_fixed(round_root, tmp_path, capsys):
    # the lead path's round 1 (docs/loop.md): a budget labels few images of each prompt
    previous = tmp_path / "r0.txt"
    previous.write_text("prompt p_few\nprompt p_most\nprompt p_all\nprompt p_some\nnot sampled this round\n")
    out = tmp_path / "r1.txt"
    assert run(main, [f"root={round_root}", f"out={out}", f"previous={previous}"]) == 0
    # the previous targets first, less p_all (4 of 4 good: Wilson lower bound 0.60 > 0.5); p_most
    # (3 of 4: 0.36), p_few (1 of 2) and the unsampled one are not known fixed and stay; then the new
    # pick p_half; p_some is picked again but listed once
    assert out.read_text().splitlines() == ["prompt p_few", "prompt p_most", "prompt p_some",
                                            "not sampled this round", "prompt p_half"]
    assert "5 target prompts (1 picked, 4 kept from" in capsys.readouterr().out
    table = out.with_suffix(".csv").read_text()
    assert "kept" in table.splitlines()[0]
    assert run(main, [f"root={round_root}", f"out={out}", f"previous={previous}", "overwrite=true",
                      "rule.max_targets=3"]) == 0
    assert out.read_text().splitlines() == ["prompt p_few", "prompt p_most", "prompt p_some"]  # the cap holds
    assert run(main, [f"root={round_root}", f"out={out}", f"previous={previous}", "overwrite=true",
                      "rule.fixed_confidence=0.5"]) == 0  # at 50 % confidence the good-rate itself decides
    assert "prompt p_most" not in out.read_text().splitlines()


def test_wilson_lower_bound_matches_the_formula_and_grows_with_evidence():
    import numpy as np
    from statistics import NormalDist

    from data.targets import wilson_lower
    z = NormalDist().inv_cdf(0.95)
    g, n = 6, 8
    p = g / n
    expect = (p + z * z / (2 * n) - z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    assert np.isclose(wilson_lower(np.array([g]), np.array([n]), 0.95)[0], expect)
    lower = wilson_lower(np.array([0, 2, 4, 8]), np.array([0, 2, 4, 8]), 0.95)
    assert lower[0] == 0 and np.all(np.diff(lower) > 0)  # nothing seen: 0; all good on more images: higher
    with pytest.raises(UserError, match="fixed_confidence"):
        TargetRule(fixed_confidence=1.0)


def test_no_target_and_no_round_are_clear_errors(round_root, tmp_path):
    with pytest.raises(UserError, match="passes the target rule"):
        write_targets(round_root, tmp_path / "x.txt", TargetRule(min_images=10))
    assert not (tmp_path / "x.txt").exists()
    with pytest.raises(UserError, match="no labeling round"):
        write_targets(tmp_path / "empty")


def test_read_prompts_file_strips_skips_blank_lines_and_refuses_missing_or_empty(tmp_path):
    from core.errors import UserError
    from data.targets import read_prompts_file

    f = tmp_path / "p.txt"
    f.write_text("  one red circle \n\n two blue squares\n")
    assert read_prompts_file(f) == ["one red circle", "two blue squares"]
    with pytest.raises(UserError, match="does not exist"):
        read_prompts_file(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(UserError, match="holds no prompt"):
        read_prompts_file(tmp_path / "empty.txt")


def _one_model_round(root, model_id, run_folder=None):
    """``round_root``'s labels on images a model made (its model_id, run and fingerprint recorded as
    ``make generate`` records them), in round 1 of the root."""
    store = Store(root)
    rows = [generation_row(**{**r, "image_id": f"{r['image_id']}-r1", "round": 1, "model_id": model_id,
                              "run": run_folder, "model_fingerprint": "fp"})
            for r in store.read(GENERATIONS).to_pylist()]
    labels = store.read(BINARY_LABELS).to_pylist()
    store.append(GENERATIONS, rows)
    store.append(BINARY_LABELS, [{**r, "label_id": f"{r['label_id']}-r1", "image_id": f"{r['image_id']}-r1"}
                                 for r in labels])


def _hint(capsys) -> list[str]:
    return [line.strip() for line in capsys.readouterr().out.splitlines() if "make finetune" in line]


def test_the_hint_fine_tunes_the_model_that_made_the_round(round_root, tmp_path, capsys):
    """Issue 74 item 10: the printed make finetune line carries the round's own model; without it,
    run as shown, it fine-tuned the shipped shapes model on the user's prompts."""
    _one_model_round(round_root, "/models/sd-v1-5")
    out = tmp_path / "t.txt"
    assert run(main, [f"root={round_root}", f"out={out}", "rounds=1"]) == 0
    assert _hint(capsys) == [f'make finetune ARGS="model.pipeline=/models/sd-v1-5 prompts.prompts_file={out}"']


def test_the_hint_continues_a_fine_tuned_run_on_its_base(round_root, tmp_path, capsys):
    run_dir = tmp_path / "runs" / "r0" / "dpok"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("method: dpok\nmodel:\n  pipeline: /models/sd-v1-5\n")
    _one_model_round(round_root, str(run_dir), str(run_dir))
    out = tmp_path / "t.txt"
    assert run(main, [f"root={round_root}", f"out={out}"]) == 0  # the newest round's model
    assert _hint(capsys) == [f'make finetune ARGS="model.pipeline=/models/sd-v1-5 init={run_dir} '
                             f'prompts.prompts_file={out}"']


def test_finetune_refuses_the_shapes_model_on_other_prompts(tiny_sd, tmp_path, capsys):
    """Issue 74 item 10: a shapes-world model (tiny_sd has the shapes tokenizer) fine-tuned on
    prompts it cannot read is one error, before the run folder is made; its own prompts still run."""
    from pipelines.finetune import main as finetune
    from test_bad_input_cli import one_error_line
    from tiny_models import make_tiny_clip
    from tools.random_models import build_reward_model

    reward = build_reward_model(make_tiny_clip(tmp_path / "clip"), tmp_path / "reward")  # the user's own reward
    prompts = tmp_path / "targets.txt"
    prompts.write_text("one red circle\na photo of a cat on a sofa\n")
    out = tmp_path / "run"
    args = [f"output_dir={out}", f"model.pipeline={tiny_sd}", f"prompts.prompts_file={prompts}",
            "reward.kind=learned", f"reward.path={reward}", "sampling.num_inference_steps=2", "dpok.rounds=1",
            "dpok.prompts_per_round=1", "dpok.samples_per_prompt=2", "dpok.steps_per_sample=1",
            "dpok.window=[0,null]", "dpok.tail_steps=0", "sample_grid_every=0", "curve_every=0"]
    assert run(finetune, args) == 2  # main: exit 0, a shapes model trained on [UNK] tokens
    one_error_line(capsys, f"model.pipeline={tiny_sd} is a shapes-world model", "'a photo of a cat on a sofa'",
                   "model.pipeline=<its folder>")
    assert not out.exists()
