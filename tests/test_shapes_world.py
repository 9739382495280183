import numpy as np
import pytest

from core.errors import UserError
from shapes.oracle import alignment_by_category, judge
from shapes.render import degrade, render, render_round
from shapes.world import (BACKGROUNDS, COLORS, HELDOUT_COLOR_BACKGROUND, HELDOUT_COUNT_COLOR,
                          Prompt, all_prompts, perturb, perturbations, prompt_set)

PROMPTS = all_prompts()


def test_grammar_size_and_categories():
    assert len(COLORS) >= 4 and len(BACKGROUNDS) >= 3
    assert {p.count for p in PROMPTS} == {1, 2, 3, 4}
    assert {p.category for p in PROMPTS} == {"color", "count", "background", "combination"}
    assert Prompt.parse("three red circles on a white background").category == "combination"
    assert Prompt.parse("one red circle").category == "color"
    assert Prompt.parse("four squares").category == "count"
    assert Prompt.parse("one square on a gray background").category == "background"


@pytest.mark.parametrize("p", PROMPTS, ids=lambda p: p.prompt_id)
def test_text_parses_back(p):
    assert Prompt.parse(p.text) == p


@pytest.mark.parametrize("text", ["three red circle", "one red circles", "five circles",
                                  "two purple squares", "a dog", "two circles on a pink background"])
def test_bad_prompts_are_refused(text):
    with pytest.raises(UserError):
        Prompt.parse(text)


def test_splits_are_deterministic_disjoint_and_heldout_pairs_never_in_train():
    train, heldout = prompt_set("train"), prompt_set("heldout")
    assert train == prompt_set("train") and heldout
    assert not set(train) & set(heldout)
    assert set(train) | set(heldout) == set(PROMPTS)
    for p in train:
        assert (p.color, p.background) not in HELDOUT_COLOR_BACKGROUND
        assert (p.count, p.color) not in HELDOUT_COUNT_COLOR
    assert {p.category for p in train} == {"color", "count", "background", "combination"}


def test_render_is_deterministic_and_seeded():
    a = np.asarray(render("two blue squares on a gray background", 5))
    b = np.asarray(render("two blue squares on a gray background", 5))
    c = np.asarray(render("two blue squares on a gray background", 6))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.asarray(render("one circle", 0, size=96)).shape == (96, 96, 3)


@pytest.mark.parametrize("p", PROMPTS, ids=lambda p: p.prompt_id)
def test_oracle_accepts_clean_renders(p):
    for seed in range(3):
        assert judge(render(p, seed), p).aligned


def test_oracle_accepts_degraded_renders():
    rng = np.random.default_rng(0)
    ok = [judge(degrade(np.asarray(render(p, seed)), rng, blur_sigma=1.0, noise_sigma=12.0), p).aligned
          for p in PROMPTS for seed in range(3)]
    assert np.mean(ok) >= 0.99  # the target for generated-looking images


def test_oracle_rejects_every_one_attribute_mismatch():
    rng = np.random.default_rng(0)
    for p in PROMPTS[::3]:
        img = np.asarray(render(p, 1))
        for attr in p.specified:
            wrong = perturb(p, attr, rng)
            v = judge(img, wrong)
            assert not v.aligned
            assert getattr(v, attr) is False


def test_oracle_rejects_noise_and_blank_images():
    rng = np.random.default_rng(1)
    for p in PROMPTS[::7]:
        assert not judge(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), p).aligned
        assert not judge(np.full((64, 64, 3), 128, np.uint8), p).aligned


def test_oracle_works_at_other_sizes():
    p = Prompt.parse("three yellow circles on a black background")
    assert judge(render(p, 2, size=128), p).aligned
    assert judge(render(p, 2, size=48), p).aligned


def test_oracle_refuses_non_images():
    with pytest.raises(ValueError, match="square HxWx3"):
        judge(np.zeros((64, 32, 3), np.uint8), "one circle")


def test_perturbations_differ_in_one_attribute():
    rng = np.random.default_rng(0)
    p = Prompt.parse("two red circles on a white background")
    alts = perturbations(p, 5, rng)
    assert len(set(alts)) == 5 and p not in alts
    for q in alts:
        diffs = [a for a in ("count", "shape", "color", "background") if getattr(p, a) != getattr(q, a)]
        assert len(diffs) == 1
    with pytest.raises(ValueError):
        perturb(Prompt.parse("two circles"), "color", rng)


def test_alignment_by_category():
    ps = [Prompt.parse("one red circle"), Prompt.parse("two circles"),
          Prompt.parse("two red circles on a white background")]
    imgs = [render(ps[0], 0), render(ps[1], 0), render(Prompt.parse("three red circles on a white background"), 0)]
    m = alignment_by_category(ps, [judge(i, p) for i, p in zip(imgs, ps)])
    assert m["color"] == 1.0 and m["background"] == 1.0
    assert m["count"] == pytest.approx(2 / 3) and m["overall"] == pytest.approx(2 / 3)
    assert m["combination"] == 0.0


def test_render_round_writes_images_and_rows(tmp_path):
    from data import Store
    from data.generations import load_image

    store = Store(tmp_path)
    rows = render_round(store, prompt_set("train")[:5], per_prompt=3, seed=2, mismatch_rate=0.5)
    gens = store.to_pandas("generations")
    assert len(gens) == 15 == len(rows)
    verdicts = [judge(load_image(tmp_path, r), r["prompt"]).aligned for _, r in gens.iterrows()]
    assert 0 < sum(verdicts) < 15  # some images were rendered from perturbed prompts


def test_image_ids_are_content_addresses(tmp_path):
    """Same seed and settings -> same ids in another root (reruns match); a different image under the same
    prompt and seed gets another id, so an existing image is never replaced by a different one."""
    from data import Store
    from data.generations import save_images
    from shapes.render import RENDERER

    prompts = prompt_set("train")[:4]
    first = render_round(Store(tmp_path / "a"), prompts, per_prompt=2, seed=3)
    again = render_round(Store(tmp_path / "b"), prompts, per_prompt=2, seed=3)
    assert [r["image_id"] for r in first] == [r["image_id"] for r in again]
    assert len({r["image_id"] for r in first}) == 8

    store = Store(tmp_path / "a")
    r0 = first[0]
    before = (tmp_path / "a" / r0["image_path"]).read_bytes()
    other = render(prompts[1], r0["seed"])  # another picture, filed under r0's prompt and seed
    kw = dict(prompts=[r0["prompt"]], prompt_ids=[r0["prompt_id"]], categories=[r0["category"]],
              seeds=[r0["seed"]], model_id=r0["model_id"], settings=RENDERER)
    (new,) = save_images(store, [other], **kw)
    assert new["image_id"] != r0["image_id"]
    assert (tmp_path / "a" / r0["image_path"]).read_bytes() == before
    # Saving the very same image again is idempotent: one row per id on read.
    same = render(prompts[0], r0["seed"])
    assert save_images(store, [same, same], **{k: v * 2 if isinstance(v, list) else v for k, v in kw.items()}
                       )[0]["image_id"] == r0["image_id"]
    assert store.to_pandas("generations")["image_id"].is_unique
    assert len(store.to_pandas("generations")) == 9
