"""Model cards (README.md) for the shapes-world checkpoints, written from their metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

from shapes.oracle import ALIGNMENT_KEYS
from shapes.world import CATEGORIES

REPRODUCE = "make base  # or: python -m pipelines.base out_dir=shapes/models overwrite=true"
REPRODUCE_FLOW = ('make base ARGS="stages=[flow,eval]"  # after make base; into the committed folder: '
                  'ARGS="out_dir=shapes/models stages=[flow,eval] overwrite=true"')
# A card may end with hand-written notes under this heading (how a checkpoint was really trained,
# when that was not one plain `make base`); re-evaluating the same weights keeps them.
NOTES = "## How this checkpoint was produced"


def card_notes(model_dir: Path) -> str | None:
    """The hand-written notes section that ends a model folder's card (heading to end), or None."""
    path = Path(model_dir) / "README.md"
    text = path.read_text() if path.is_file() else ""
    at = text.find("\n" + NOTES + "\n")
    return text[at + 1:] if at >= 0 else None


def _write(path: Path, text: str, notes: str | None) -> Path:
    path.write_text(text + ("\n" + notes if notes else ""))
    return path


def _f(x) -> str:
    return "–" if x is None or x != x else f"{x:.2f}"


def _yaml_front(tags: list[str], library: str) -> str:
    return "---\nlibrary_name: " + library + "\ntags:\n" + "".join(f"- {t}\n" for t in tags) + "---\n\n"


def alignment_table(sets: dict, names: list[str]) -> str:
    cols = [*ALIGNMENT_KEYS, "mean_objects"]
    lines = ["| prompt set | prompts | images | " + " | ".join(cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    for n in names:
        if n in sets:
            s = sets[n]
            lines.append(f"| {n} | {s['n_prompts']} | {s['n_images']} | "
                         + " | ".join(_f(s[c]) for c in cols) + " |")
    return "\n".join(lines)


def by_count_table(sets: dict, names: list[str]) -> str:
    lines = ["| prompt set | one | two | three | four |", "|---|---|---|---|---|"]
    for n in names:
        if n in sets:
            bc = {int(k): v for k, v in sets[n]["by_count"].items()}
            lines.append(f"| {n} | " + " | ".join(_f(bc.get(c)) for c in (1, 2, 3, 4)) + " |")
    return "\n".join(lines)


def by_category_table(sets: dict, names: list[str]) -> str:
    lines = ["| prompt set | " + " | ".join(CATEGORIES) + " |", "|---|" + "---|" * len(CATEGORIES)]
    for n in names:
        if n in sets:
            lines.append(f"| {n} | " + " | ".join(_f(sets[n]["by_category"][c]) for c in CATEGORIES)
                         + " |")
    return "\n".join(lines)


def write_sd_card(sd_dir: Path, m: dict, cfg, notes: str | None = None) -> Path:
    d = cfg.diffusion
    sets = m["sets"]
    names = ["train", "common", "rare_counts", "heldout"]
    cw = d.skew.count_weights
    t = m["targets"]
    n = m["n_params"]
    text = _yaml_front(["text-to-image", "stable-diffusion", "shapes-world"], "diffusers") + f"""\
# shapes-sd: a tiny Stable-Diffusion-format text-to-image model of the shapes world

A latent diffusion model trained from scratch on procedural renders ("three red circles on a white
background"), saved as a stock diffusers `StableDiffusionPipeline` folder: load it with
`StableDiffusionPipeline.from_pretrained(dir)` or `core.loading.load_sd_pipeline(dir)`.
It is the project's stand-in for Stable Diffusion v1.5, meant to be decent on common prompts and
deliberately misaligned on rare counts and unseen attribute pairs, so fine-tuning has something to
fix. {"" if t['common_overall>=0.60'] else "**This checkpoint misses the common-prompt target (overall " + _f(sets['common']['overall']) + " < 0.60)**: it draws colours and backgrounds right but shapes (rounded squares read as circles) and counts are often wrong; see the tables."}

## Architecture

| component | class | size |
|---|---|---|
| tokenizer | `PreTrainedTokenizerFast` (WordLevel, shapes vocabulary, max length 12) | – |
| text encoder | `CLIPTextModel`, {"from the shapes CLIP's text tower" if d.text_init == "clip" else "from scratch"}, trained jointly with the UNet | {n['text_encoder'] / 1e3:.0f} k |
| VAE | `AutoencoderKL`, 64x64x3 <-> 16x16x4, channels {list(cfg.vae.block_out_channels)} | {n['vae'] / 1e6:.2f} M |
| UNet | `UNet2DConditionModel`, channels {list(d.unet.block_out_channels)}, cross-attention at 8x8 and 4x4 | {n['unet'] / 1e6:.2f} M |
| scheduler | `DDIMScheduler`, v-prediction, trailing spacing, zero-terminal-SNR betas | – |

Training: v-prediction MSE, t uniform over 1,000 steps, classifier-free-guidance dropout
{d.cfg_dropout} (empty prompt), AdamW lr {d.lr}, batch {d.batch_size}, {d.steps} steps, EMA
{d.ema_decay}; VAE: {cfg.vae.steps} steps of MSE + L1 + KL ({cfg.vae.kl_weight}), scaling factor
from the latent std. VAE reconstructions of fresh renders are judged aligned by the oracle
{m['vae_reconstruction']['oracle_aligned']:.3f} of the time (MSE {m['vae_reconstruction']['mse']:.4f}).

## Training data and its deliberate skew

{d.pool_size:,} renders (64x64) of the **train** prompt split only, weighted by count:
one {cw[0]:.0%}, two {cw[1]:.0%}, **three {cw[2]:.0%}, four {cw[3]:.0%}** (rare).
The **held-out** colour/background pairs (red/white, green/black, blue/gray, yellow/black) and
count/colour pairs (three blue, four yellow, two green) appear in no training prompt, and renders
whose free attributes would form one are redrawn, so the model never saw them.

## Evaluation (oracle alignment)

{cfg.eval.samples_per_prompt} samples per prompt, DDIM {cfg.eval.sampling.num_inference_steps} steps,
guidance {cfg.eval.sampling.guidance_scale}, eta {cfg.eval.sampling.eta}; judged by the programmatic
oracle (`shapes.oracle`). Each split is one list ({cfg.eval.samples_per_prompt} consecutive images per
prompt) and image i of it has seed 2^32 + {cfg.eval.seed} x 10^6 + i (`core.seeds.eval_seeds`), as in `make
eval`: the held-out row is `make eval`'s base figure on `split=heldout` with
`samples_per_prompt={cfg.eval.samples_per_prompt} seed={cfg.eval.seed}` (evaluation library:
`evaluation/base_model.py`). "common" = train prompts with one or two objects, "rare_counts" = train
prompts with three or four.

{_tables(sets, names)}

Targets: common overall >= 0.60: **{t['common_overall>=0.60']}**; rare counts overall <= 0.40:
**{t['rare_counts_overall<=0.40']}**; held-out overall <= 0.40: **{t['heldout_overall<=0.40']}**.

{_closing(m, notes, REPRODUCE)}"""
    return _write(sd_dir / "README.md", text, notes)


def _tables(sets: dict, names: list[str]) -> str:
    """A text-to-image card's three alignment tables: by figure, by category, by count."""
    return f"""{alignment_table(sets, names)}

Overall alignment by the prompt's category:

{by_category_table(sets, names)}

Overall alignment by the prompt's count:

{by_count_table(sets, names)}"""


def _closing(m: dict, notes: str | None, reproduce: str) -> str:
    """A text-to-image card's end: training time, sample grids, how to reproduce it."""
    if notes:
        timing = f'see "{NOTES.removeprefix("## ")}" below.'
    else:
        timing = (f"{m['training_minutes']} min on {m['threads']} CPU threads\n(stages in seconds: "
                  f"{m['seconds_by_stage']}).")
    grids = "\n".join(f"**{k}**\n\n![{k}]({v})\n" for k, v in sorted(m["grids"].items()))
    return f"""Training time: {timing}

## Samples (green frame: the oracle says aligned; red: not)

{grids}
## Reproduce

```bash
{reproduce}
```

The resolved configuration is `config.yaml`; all figures are in `metrics.json`.
"""


def write_flow_card(flow_dir: Path, m: dict, cfg, notes: str | None = None) -> Path:
    f, a = cfg.flow, cfg.flow.transformer
    tc = json.loads((flow_dir / "transformer" / "config.json").read_text())  # the saved model's own geometry
    tokens = (tc["sample_size"] // tc["patch_size"]) ** 2
    sets = m["sets"]
    names = ["train", "common", "rare_counts", "heldout"]
    cw = f.skew.count_weights
    t = m["targets"]
    n = m["n_params"]
    sd = m.get("shapes_sd_train_overall")
    ev = cfg.eval
    text = _yaml_front(["text-to-image", "stable-diffusion-3", "flow-matching", "shapes-world"], "diffusers") + f"""\
# shapes-flow: a tiny Stable-Diffusion-3-format flow-matching model of the shapes world

A rectified-flow transformer trained from scratch on the procedural renders shapes-sd learns from,
saved as a stock diffusers `StableDiffusion3Pipeline` folder without its T5 (SD3's optional third
text encoder). It is the project's stand-in for SD3.5 / FLUX: the model the flow-matching path of
every stage (DPOK on the flow SDE, flow RWL, evaluation on the ODE) is shown to align.

Load it as a user drops SD3's T5, and sample it with **no T5 tokens**, as it was trained:

```python
pipe = StableDiffusion3Pipeline.from_pretrained(dir, text_encoder_3=None, tokenizer_3=None)
image = pipe("three red circles on a white background", max_sequence_length=0).images[0]
```

In this project: `core.loading.load_sd_pipeline(dir)`, and `sampling.max_sequence_length=0` in every
stage (without it the pipeline feeds 256 zero tokens the model never saw).

## Architecture

| component | class | size |
|---|---|---|
| tokenizer, tokenizer_2 | `PreTrainedTokenizerFast` (WordLevel, shapes vocabulary, max length 12) | – |
| text encoders | 2 x `CLIPTextModelWithProjection`, {f.text.layers} layers, width {f.text.hidden}, from scratch, trained jointly | {(n['text_encoder'] + n['text_encoder_2']) / 1e3:.0f} k |
| VAE | shapes-sd's `AutoencoderKL` (16x16x4 latents), frozen; SD3's shift factor = the latent mean | {n['vae'] / 1e6:.2f} M |
| transformer | `SD3Transformer2DModel`, {a.num_layers} joint blocks, {a.num_attention_heads} heads x {a.attention_head_dim}, {a.patch_size}x{a.patch_size} patches ({tokens} image tokens) | {n['transformer'] / 1e6:.2f} M |
| scheduler | `FlowMatchEulerDiscreteScheduler`, shift {f.shift} | – |

Training: rectified flow, the velocity eps - x0 at x = (1 - sigma) x0 + sigma eps, sigma
logit-normal (0, 1) as SD3's; the transformer starts from DiT's adaLN-Zero initialisation (every
block the identity); classifier-free-guidance dropout {f.cfg_dropout} (empty prompt),
AdamW lr {f.lr}, batch {f.batch_size}, {f.steps} steps, EMA {f.ema_decay}
(`shapes/training/flow.py`). VAE reconstructions of fresh renders are judged aligned by the oracle
{m['vae_reconstruction']['oracle_aligned']:.3f} of the time.

## Training data and its deliberate skew

As shapes-sd's: {f.pool_size:,} renders (64x64) of the **train** prompt split only, weighted by count:
one {cw[0]:.0%}, two {cw[1]:.0%}, **three {cw[2]:.0%}, four {cw[3]:.0%}** (rare); the **held-out**
colour/background and count/colour pairs appear in no training prompt and no render.

## Evaluation (oracle alignment)

{ev.samples_per_prompt} samples per prompt, the flow ODE (Euler) in {ev.sampling.num_inference_steps} steps,
guidance {ev.sampling.guidance_scale}; seeds as shapes-sd's card (`core.seeds.eval_seeds`, seed {ev.seed}), so
the rows compare image for image with its card. "common" = train prompts with one or two objects,
"rare_counts" = train prompts with three or four.

{_tables(sets, names)}

Targets: train overall within 0.10 of shapes-sd's ({_f(sd)}): **{t['train_overall_within_0.10_of_shapes_sd']}**;
rare counts overall <= 0.40: **{t['rare_counts_overall<=0.40']}**; held-out overall <= 0.40:
**{t['heldout_overall<=0.40']}**.

{_closing(m, notes, REPRODUCE_FLOW)}"""
    return _write(flow_dir / "README.md", text, notes)


def write_clip_card(clip_dir: Path, m: dict, cfg, notes: str | None = None) -> Path:
    a = cfg.clip.arch
    r = m["retrieval"]
    rows = "\n".join(f"| {k} | {v:.3f} |" for k, v in r["pairwise_by_attribute"].items())
    cats = "\n".join(f"| {k} | {v:.3f} |" for k, v in r["by_category"].items())
    rc = m["retrieval_config"]
    text = _yaml_front(["zero-shot-image-classification", "clip", "shapes-world"], "transformers") + f"""\
# shapes-clip: a tiny CLIP for the shapes world

A transformers `CLIPModel` ({m['n_params'] / 1e6:.2f} M parameters) with the shapes-world tokenizer
and a 64 px `CLIPImageProcessor`: load it with `CLIPModel.from_pretrained(dir)` /
`AutoTokenizer.from_pretrained(dir)` / `AutoImageProcessor.from_pretrained(dir)`, or
`core.loading.load_clip(dir)`. It stands in for CLIP ViT-L/14 as the backbone of the reward model.

## Architecture

Vision: ViT, {a.vision_layers} layers, width {a.vision_hidden}, {a.vision_heads} heads, patch {a.patch_size}
({a.image_size} px). Text: {a.text_layers} layers, width {a.text_hidden}, {a.text_heads} heads, EOS pooling
(`eos_token_id` set, see `shapes/tokenizer.py`). Projection {a.projection_dim}.

## Training

{cfg.clip.steps} steps, batch {cfg.clip.batch_size} images + one render of a one-attribute
perturbation of each image's prompt; {cfg.clip.pool_size:,} renders of **all 160 prompts** (uniform:
like a web-scale CLIP, it has seen every attribute pair; the diffusion model's held-out split is
about *its* training data). Every step contrasts each image with all 160 prompts (every
perturbation is a hard negative); a render is a positive for every prompt its scene satisfies, and
each positive must beat all negatives (see `shapes/training/clip.py`); plus the same loss
text-to-image over the batch. {cfg.clip.degrade_prob:.0%} of images are blurred (sigma
{cfg.clip.blur_sigma} px) and noised (sigma {cfg.clip.noise_sigma}) like generated images.

## Evaluation: zero-shot retrieval

Renders with unseen seeds ({rc['per_prompt']} per prompt, all {r['n_images'] // (2 * rc['per_prompt'])} prompts), each clean and degraded
(blur {rc['blur_sigma']} px, noise {rc['noise_sigma']}): the true prompt must score above **every**
one-attribute perturbation of it ({r['mean_candidates']:.1f} candidates on average).

| figure | value |
|---|---|
| **retrieval accuracy** | **{r['accuracy']:.3f}** |
| clean renders | {r['clean_accuracy']:.3f} |
| degraded renders | {r['degraded_accuracy']:.3f} |

True prompt above a prompt with one attribute swapped, by attribute:

| attribute | pairwise accuracy |
|---|---|
{rows}

Retrieval accuracy by the prompt's category:

| category | accuracy |
|---|---|
{cats}

Target retrieval accuracy >= 0.90: **{m['targets']['retrieval_accuracy>=0.90']}**.

## Reproduce

```bash
{REPRODUCE}
```

The resolved configuration is `config.yaml`; all figures are in `metrics.json`.
"""
    return _write(clip_dir / "README.md", text, notes)
