"""Model cards (README.md) for the shapes-world checkpoints, written from their metrics.json."""

from __future__ import annotations

from pathlib import Path

from shapes.oracle import ALIGNMENT_KEYS
from shapes.world import CATEGORIES

REPRODUCE = "make base  # or: python -m pipelines.base out_dir=shapes/models overwrite=true"
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
    grids = "\n".join(f"**{k}**\n\n![{k}]({v})\n" for k, v in sorted(m["grids"].items()))
    n = m["n_params"]
    timing = (f'see "{NOTES.removeprefix("## ")}" below.' if notes else
              f"{m['training_minutes']} min on {m['threads']} CPU threads\n(stages in seconds: {m['seconds_by_stage']}).")
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

{alignment_table(sets, names)}

Overall alignment by the prompt's category:

{by_category_table(sets, names)}

Overall alignment by the prompt's count:

{by_count_table(sets, names)}

Targets: common overall >= 0.60: **{t['common_overall>=0.60']}**; rare counts overall <= 0.40:
**{t['rare_counts_overall<=0.40']}**; held-out overall <= 0.40: **{t['heldout_overall<=0.40']}**.

Training time: {timing}

## Samples (green frame: the oracle says aligned; red: not)

{grids}
## Reproduce

```bash
{REPRODUCE}
```

The resolved configuration is `config.yaml`; all figures are in `metrics.json`.
"""
    return _write(sd_dir / "README.md", text, notes)


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
