"""Training of the shapes-world models that ``make base`` produces (library code; no argv).

- :mod:`.common`: the training distributions (uniform for CLIP and the VAE, deliberately skewed for
  the text-to-image model), scene/prompt matching, seeding, progress and loss lines.
- :mod:`.clip`: a tiny transformers ``CLIPModel`` trained contrastively on renders.
- :mod:`.vae`: a small diffusers ``AutoencoderKL`` (64x64x3 <-> 16x16x4).
- :mod:`.diffusion`: a ``UNet2DConditionModel`` + ``CLIPTextModel`` with v-prediction, saved as a
  ``StableDiffusionPipeline`` folder.
"""
