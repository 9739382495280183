"""The quick path a new user follows (issue 56): the README's own-model block and docs/loop.md's
two rounds, run command by command as the files have them, in a fresh clone, on tiny random
models laid out as SD v1.5's and CLIP ViT-L/14's downloads (tools/random_models.py), raters
answering through the live labeling app's API.  A step that errors fails the test, and so does an
output whose saved config names the shipped shapes models, the shapes oracle or shapes prompts.

What the test changes in the lines, and only this (SUBS and SIZES below):
- the user's folders: /models/sd-v1-5, /models/clip-vit-large-patch14, /data/captions -> tmp;
- sizes, appended to a line's ARGS so that it runs in seconds on 2 CPU cores (the runs' lengths,
  samples per prompt; the select budget: 6 prompts x 8 images cannot buy 256, as loop.md says);
- a free port for ``make label``, which runs until the raters are done, then gets Ctrl-C;
- README's lead block: only its ``make rater-add`` lines run (the accounts; its other lines are
  the shapes world's round); ``make finetune-multi`` (4 GPUs) does not run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from quick_path import ROOT, Clone, label_through_app, marked_blocks, marked_swaps, target, with_args

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")

PROMPTS = ["a red cat on a sofa", "a photo of an astronaut riding a horse", "two dogs playing in the snow",
           "a bowl of fruit on a wooden table", "a lighthouse at sunset", "a bicycle leaning against a brick wall"]
PASSWORDS = {"lead": "lead-password-1", "alice": "alice-password-1"}

# Appended to a line's ARGS, by make target (and METHOD for finetune): sizes only.
DPOK = ("dpok.rounds=1 dpok.prompts_per_round=2 dpok.samples_per_prompt=2 dpok.steps_per_sample=2 "
        "dpok.minibatch_size=4 compute.micro_batch=4")
SIZES = {
    "probe-steps": "samples_per_prompt=2 after_steps=[0,40] tail_from=40 tail_steps=[2]",
    "finetune dpok": DPOK,
    "finetune rwl": "rwl.steps=2 rwl.samples_per_prompt=2 rwl.pretrain_per_prompt=2 rwl.batch_size=4 compute.micro_batch=4",
    "eval": "samples_per_prompt=2 grid_samples=2",
}
SUBS_SIZE = {"budget=256": "budget=24"}  # half of round 1's 48 images


def size_key(command: str) -> str:
    t = target(command)
    if t == "finetune":
        return f"finetune {'rwl' if 'METHOD=rwl' in command else 'dpok'}"
    return t


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """The user's folders: SD v1.5- and CLIP ViT-L/14-shaped models, captions for RWL's D_pre."""
    from PIL import Image

    from tools.random_models import build_tiny_clip, build_tiny_sd15

    d = tmp_path_factory.mktemp("user")
    sd, clip = build_tiny_sd15(d / "sd-v1-5"), build_tiny_clip(d / "clip-vit-large-patch14")
    captions = d / "captions"
    captions.mkdir()
    rows = []
    for i in range(8):  # image-caption pairs at the model's size, as make import takes them
        Image.new("RGB", (64, 64), (30 * i, 200 - 20 * i, 90)).save(captions / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "prompt": f"a photo of thing number {i}"}))
    (captions / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return {"/models/sd-v1-5": str(sd), "/models/clip-vit-large-patch14": str(clip),
            "/data/captions": str(captions)}


def new_clone(tmp_path: Path, user: dict) -> Clone:
    clone = Clone(tmp_path / "clone", {**user, **SUBS_SIZE})
    (clone.dir / "prompts.txt").write_text("".join(f"{p}\n" for p in PROMPTS))
    (clone.dir / "guidelines-mine.md").write_text(
        "---\nversion: 1\n---\n# Our guidelines\nGood: the image shows everything the prompt asks for.\n")
    lead = marked_blocks(ROOT / "README.md", "lead")[0]
    accounts = [c for c in lead if target(c) == "rater-add"]
    assert [c.split("RATER=")[1].split()[0] for c in accounts] == list(PASSWORDS)
    for command in accounts:  # they ask for the password: a pipe answers as the README says
        clone.run(command, stdin=PASSWORDS[command.split("RATER=")[1].split()[0]] + "\n")
    return clone


class People:
    """The raters' judgement: on a hard prompt of the round only the first image (by id) is good,
    on the others all but the last: so hard prompts have a good-rate in (0, 0.5] (targets)."""

    def __init__(self, clone: Clone, root: str, hard: dict[int, set[str]]):
        self.clone, self.root, self.hard = clone, root, hard

    def __call__(self, url: str) -> None:
        gens = pd.read_parquet(self.clone.dir / self.root / "generations")
        gens["file"] = gens["image_path"].map(lambda p: Path(p).name)
        verdict = {}
        for (rnd, prompt), g in gens.groupby(["round", "prompt"]):
            files = sorted(g["file"])
            good = files[:1] if prompt in self.hard[rnd] else files[:-1]
            verdict.update({f: f in good for f in files})
        counts = label_through_app(url, PASSWORDS, lambda prompt, f: verdict[f])
        assert counts["binary"] > 0 and counts["ranking"] > 0, counts


def run_block(clone: Clone, commands: list[str], people: dict[int, People]) -> None:
    for command in commands:
        line = with_args(command, SIZES.get(size_key(command), ""))
        t = target(command)
        if t == "finetune-multi":
            continue  # 4 GPUs
        if t == "label":
            clone.serve(line, people[1 if "round=1" in command else 0])
        else:
            out = clone.run(line)
            assert "error:" not in out, f"{line}\n{out[-2000:]}"
    for command, seconds in clone.steps:  # shown with -s, or -rA
        print(f"{seconds:6.1f} s  {command[:110]}")


# ---------------------------------------------------------------------------------------------
# No shapes default: what each output's saved config names

def configs(where: Path) -> dict[str, str]:
    """Every saved config and record (yaml/json) under ``where``, as text."""
    files = [p for ext in ("*.yaml", "*.json") for p in where.rglob(ext)]
    return {str(p.relative_to(where)): p.read_text() for p in files if p.is_file()}


def check_no_shapes_default(clone: Clone, user: dict, base: str = "/models/sd-v1-5") -> None:
    from shapes import MODELS_DIR
    from shapes.world import prompt_set

    shapes_prompts = {p.text for p in prompt_set("all")}
    saved = {**configs(clone.dir / "runs"), **configs(clone.dir / "reports"), **configs(clone.dir / "datasets")}
    assert saved
    for name, text in saved.items():
        assert str(MODELS_DIR) not in text and "shapes/models" not in text, f"{name} names a shipped shapes model"
        assert "kind: oracle" not in text and '"kind": "oracle"' not in text, f"{name} rewards with the oracle"
        assert not any(f"- {p}\n" in text or f'"{p}"' in text for p in shapes_prompts), f"{name} names a shapes prompt"
    for gens in (clone.dir / "datasets").glob("*/generations"):
        g = pd.read_parquet(gens)
        base_rows = g[g["model_fingerprint"].notna() & g["run"].isna()]  # imports have no fingerprint
        assert set(base_rows["model_id"]) <= {user[base]}, f"{gens}: {set(base_rows['model_id'])}"
    for d in (clone.dir / "datasets").glob("*"):
        gold = d / "gold"
        assert not gold.exists() or pd.read_parquet(gold).empty, f"{d.name} has oracle gold items"


def reward_on(path: Path, clip: str, root: str) -> None:
    assert json.loads((path / "reward_config.json").read_text())["clip_path"] == clip
    assert yaml.safe_load((path / "config.yaml").read_text())["data"]["root"] == root


def finetuned_from(run: Path, sd: str, reward: str, init: str | None = None) -> dict:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["pipeline"] == sd and cfg["reward"]["kind"] == "learned"
    assert cfg["reward"]["path"] == reward and cfg["init"] == init
    assert (run / "pytorch_lora_weights.safetensors").is_file()
    return json.loads((run / "lineage.json").read_text())


# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
@needs_make
def test_readme_own_models_line_by_line(tmp_path, user):
    clone = new_clone(tmp_path, user)
    own = marked_blocks(ROOT / "README.md", "own-model")[0]
    run_block(clone, own, {0: People(clone, "datasets/mine", {0: set(PROMPTS[:2])})})

    sd, clip = user["/models/sd-v1-5"], user["/models/clip-vit-large-patch14"]
    targets = (clone.dir / "datasets/mine/targets.txt").read_text().split("\n")
    assert set(PROMPTS[:2]) <= set(targets), targets
    reward_on(clone.dir / "runs/reward", clip, "datasets/mine")
    finetuned_from(clone.dir / "runs/finetune-dpok", sd, "runs/reward")
    finetuned_from(clone.dir / "runs/finetune-rwl", sd, "runs/reward")
    assert (clone.dir / "reports/probe/probe.json").is_file() and (clone.dir / "reports/eval").is_dir()
    check_no_shapes_default(clone, user)


@pytest.mark.slow
@needs_make
def test_loop_md_two_rounds_line_by_line(tmp_path, user):
    clone = new_clone(tmp_path, user)
    loop = marked_blocks(ROOT / "docs" / "loop.md", "loop")[0]
    # round 1: the first round-0 target is fixed, a new failure appears
    hard = {0: set(PROMPTS[:2]), 1: {PROMPTS[1], PROMPTS[2]}}
    people = People(clone, "datasets/mine", hard)
    run_block(clone, loop, {0: people, 1: people})

    sd, clip = user["/models/sd-v1-5"], user["/models/clip-vit-large-patch14"]
    gens = pd.read_parquet(clone.dir / "datasets/mine/generations")
    assert sorted(gens["round"].unique()) == [0, 1]
    assert set(gens.loc[gens["round"] == 1, "run"].dropna()) == {"runs/r0/dpok"}
    labels = pd.read_parquet(clone.dir / "datasets/mine/binary_labels")
    labelled = set(labels["image_id"])
    r1 = set(gens.loc[gens["round"] == 1, "image_id"])
    assert 0 < len(labelled & r1) <= 24  # round 1: the selected images only
    assert set(gens.loc[gens["round"] == 0, "image_id"]) <= labelled  # round 0: every image
    r0 = (clone.dir / "runs/r0/targets.txt").read_text().split()
    assert r0 and (clone.dir / "runs/r1/targets.txt").read_text().strip()
    reward_on(clone.dir / "runs/r0/reward", clip, "datasets/mine")
    reward_on(clone.dir / "runs/r1/reward", clip, "datasets/mine")
    finetuned_from(clone.dir / "runs/r0/dpok", sd, "runs/r0/reward")
    lineage = finetuned_from(clone.dir / "runs/r1/dpok", sd, "runs/r1/reward", init="runs/r0/dpok")
    assert "r0" in json.dumps(lineage)
    assert (clone.dir / "reports/eval-rounds").is_dir()
    check_no_shapes_default(clone, user)


# The flow blocks (docs/finetune.md) on tiny SD3- and FLUX-format folders laid out as SD3.5-medium's and
# FLUX.1-dev's downloads, every stage at 64 px (the captions' size), not the configs' 512 or the
# pipelines' 1024; every stage feeds 32 T5 tokens, not the pipelines' 256 / 512, which
# would make a tiny transformer's rows 10-30 times longer than its 16 image tokens (sizes only, as SIZES).
TOKENS = "sampling.max_sequence_length=32"
FLOW_SIZE = f"sampling.height=64 sampling.width=64 {TOKENS}"
FLOW_SIZES = {**SIZES, "generate": FLOW_SIZE, "finetune dpok": f"{DPOK} {FLOW_SIZE}",
              "finetune rwl": f"{SIZES['finetune rwl']} {FLOW_SIZE}", "eval": f"{SIZES['eval']} {FLOW_SIZE}"}
# family: (its docs block, the folder the block names, the config it names, the stock pipeline class)
FLOW_BLOCKS = {"sd3": ("own-model-flow", "/models/sd3.5-medium", "sd35.yaml", "StableDiffusion3Pipeline"),
               "flux": ("own-model-flux", "/models/flux.1-dev", "flux.yaml", "FluxPipeline")}


def tiny_flow_folder(family: str, tmp_path: Path, monkeypatch) -> str:
    """The family's tiny folder, named as its download is, with the flow sizes in SIZES."""
    from tools.random_models import build_tiny_flux, build_tiny_sd3

    for key in ("generate", "finetune dpok", "finetune rwl", "eval"):
        monkeypatch.setitem(SIZES, key, FLOW_SIZES[key])
    build = build_tiny_sd3 if family == "sd3" else build_tiny_flux
    return str(build(tmp_path / Path(FLOW_BLOCKS[family][1]).name, image_size=64))


@pytest.mark.slow
@needs_make
@pytest.mark.parametrize("family", list(FLOW_BLOCKS))
def test_finetune_md_own_flow_model_line_by_line(tmp_path, user, monkeypatch, family):
    """docs/finetune.md's own-model block for an SD3.5 (a FLUX.1-dev) folder, as written, with
    sd35.yaml (flux.yaml): every stage on the user's flow folder, nothing of the shapes world, and a
    LoRA that a stock StableDiffusion3Pipeline (FluxPipeline) loads."""
    import diffusers
    import torch
    from test_flow_finetune import transformer_output

    name, folder, config, pipeline_class = FLOW_BLOCKS[family]
    base = tiny_flow_folder(family, tmp_path, monkeypatch)
    user = {**user, folder: base}
    clone = new_clone(tmp_path, user)
    block = marked_blocks(ROOT / "docs" / "finetune.md", name)[0]
    assert all(target(c) != "probe-steps" for c in block) and all(config in c for c in block
                                                                   if target(c) == "finetune")
    run_block(clone, block, {0: People(clone, "datasets/mine", {0: set(PROMPTS[:2])})})

    clip = user["/models/clip-vit-large-patch14"]
    reward_on(clone.dir / "runs/reward", clip, "datasets/mine")
    for method in ("dpok", "rwl"):
        finetuned_from(clone.dir / f"runs/finetune-{method}", base, "runs/reward")
    assert (clone.dir / "reports/eval").is_dir()
    check_no_shapes_default(clone, user, base=folder)
    for method in ("dpok", "rwl"):  # the result loads in stock diffusers, as the docs say, and changes the model
        pipe = getattr(diffusers, pipeline_class).from_pretrained(base)
        before = transformer_output(pipe.transformer, family)
        pipe.load_lora_weights(clone.dir / f"runs/finetune-{method}")
        assert not torch.equal(transformer_output(pipe.transformer, family), before), method


@pytest.mark.slow
@needs_make
@pytest.mark.parametrize("family", list(FLOW_BLOCKS))
def test_loop_md_two_rounds_on_a_flow_folder_line_by_line(tmp_path, user, monkeypatch, family):
    """docs/loop.md's two rounds with its swap table's SD3.5 (FLUX.1-dev) column applied, on a tiny
    folder of that family: round 1 continues round 0's flow LoRA, nothing of the shapes world."""
    _, folder, config, _ = FLOW_BLOCKS[family]
    swaps = marked_swaps(ROOT / "docs" / "loop.md", "loop-flow")
    swap = swaps["SD3.5 medium" if family == "sd3" else "FLUX.1-dev"]
    assert swap["/models/sd-v1-5"] == folder and swap["finetune/configs/sd15.yaml"].endswith(config)
    base = tiny_flow_folder(family, tmp_path, monkeypatch)
    # the swaps first, then the user's folders (the flow one among them): Clone.line applies them in order
    user = {**swap, **{k: v for k, v in user.items() if k not in swap}, folder: base}
    clone = new_clone(tmp_path, user)
    people = People(clone, "datasets/mine", {0: set(PROMPTS[:2]), 1: {PROMPTS[1], PROMPTS[2]}})
    run_block(clone, marked_blocks(ROOT / "docs" / "loop.md", "loop")[0], {0: people, 1: people})

    gens = pd.read_parquet(clone.dir / "datasets/mine/generations")
    assert sorted(gens["round"].unique()) == [0, 1]
    assert set(gens.loc[gens["round"] == 1, "run"].dropna()) == {"runs/r0/dpok"}
    finetuned_from(clone.dir / "runs/r0/dpok", base, "runs/r0/reward")
    lineage = finetuned_from(clone.dir / "runs/r1/dpok", base, "runs/r1/reward", init="runs/r0/dpok")
    assert "r0" in json.dumps(lineage)
    assert (clone.dir / "reports/eval-rounds").is_dir()
    check_no_shapes_default(clone, user, base=folder)


def test_the_check_catches_a_stage_that_fell_back_to_the_shapes_world(tmp_path):
    from types import SimpleNamespace

    from shapes import SHAPES_CLIP

    clone = SimpleNamespace(dir=tmp_path)
    user = {"/models/sd-v1-5": "/u/sd"}
    run = tmp_path / "runs" / "reward"
    run.mkdir(parents=True)
    (run / "reward_config.json").write_text(json.dumps({"clip_path": "/u/clip"}))
    check_no_shapes_default(clone, user)
    for text, what in ((json.dumps({"clip_path": str(SHAPES_CLIP)}), "shipped shapes model"),
                       ("reward:\n  kind: oracle\n", "oracle"),
                       ("prompts:\n  eval_prompts:\n  - one red circle\n", "shapes prompt")):
        (run / "config.yaml").write_text(text)
        with pytest.raises(AssertionError, match=what):
            check_no_shapes_default(clone, user)
