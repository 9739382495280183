"""make import: images made elsewhere (an imagefolder with metadata, or a listing) become rows of a
round like generated ones; idempotent, nothing overwritten, a bad row is one error naming it with
nothing written."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.errors import UserError
from data import Store
from data.generations import load_image
from collect.imports import UNKNOWN_SEED, ImportConfig, import_images
from shapes.world import Prompt, prompt_spec


def _image(path, w, h, fmt=None, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, format=fmt)
    return path


@pytest.fixture
def folder(tmp_path):
    """An imagefolder: a PNG, a JPEG and a BMP of different sizes, metadata.jsonl with optional and
    extra columns."""
    src = tmp_path / "made-elsewhere"
    (src / "sub").mkdir(parents=True)
    _image(src / "a.png", 64, 64, seed=1)
    _image(src / "sub" / "b.jpg", 96, 48, "JPEG", seed=2)
    _image(src / "c.bmp", 20, 30, "BMP", seed=3)
    rows = [
        {"file_name": "a.png", "prompt": "Two red circles", "model_id": "sdxl-turbo", "seed": 7, "score": 0.75},
        {"file_name": "sub/b.jpg", "prompt": "a watercolour fox in the snow", "source": "api", "seed": None},
        {"file_name": "c.bmp", "prompt": "a watercolour fox in the snow", "num_inference_steps": 30,
         "guidance_scale": 7.5},
    ]
    (src / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return src


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_imagefolder_import_writes_rows_like_generate_and_is_idempotent(folder, tmp_path):
    root = tmp_path / "round"
    res = import_images(ImportConfig(src=str(folder), root=str(root)), known_prompt=prompt_spec)
    assert (res.rows, res.images_added, res.already_in_round, res.converted_to_png) == (3, 3, 0, 1)
    store = Store(root)
    gens = store.to_pandas("generations").set_index("prompt_id", drop=False)
    assert len(gens) == 3 and gens["image_id"].is_unique
    two = Prompt.parse("two red circles")
    a = gens.loc[two.prompt_id]  # a shapes-world prompt keeps its id and category
    assert (a["prompt"], a["category"], a["model_id"], a["seed"]) == ("two red circles", two.category, "sdxl-turbo", 7)
    assert (a["width"], a["height"], a["sampler"]) == (64, 64, "imported")
    assert (folder / "a.png").read_bytes() == (root / a["image_path"]).read_bytes()  # byte for byte
    fox = store.to_pandas("generations").query("category == 'other'").sort_values("width")
    assert fox["prompt_id"].nunique() == 1 and fox["prompt_id"].iloc[0].startswith("p-")
    b, c = fox.iloc[1], fox.iloc[0]
    assert (b["width"], b["height"], b["seed"], b["model_id"]) == (96, 48, UNKNOWN_SEED, "imported")
    assert b["image_path"].endswith(".jpg") and c["image_path"].endswith(".png")  # BMP stored as PNG
    assert (c["width"], c["height"], c["num_inference_steps"], c["guidance_scale"]) == (20, 30, 30, 7.5)
    for _, r in gens.iterrows():
        assert hashlib.sha256((root / r["image_path"]).read_bytes()).hexdigest() == r["sha256"]
        assert load_image(root, r).size == (r["width"], r["height"])  # the stages' check passes
    extra = store.to_pandas("imports").set_index("image_id")
    assert json.loads(extra.loc[a["image_id"], "extra"]) == {"score": 0.75}
    assert json.loads(extra.loc[b["image_id"], "extra"]) == {"source": "api"}
    assert extra.loc[b["image_id"], "file_name"] == "sub/b.jpg" and extra.loc[b["image_id"], "source_row"] == 2

    before = _files(root)
    again = import_images(ImportConfig(src=str(folder), root=str(root)), known_prompt=prompt_spec)
    assert (again.images_added, again.already_in_round, again.images_in_round) == (0, 3, 3)
    assert _files(root) == before  # nothing added, nothing rewritten
    # Same folder, another model name: new images beside the old ones, nothing replaced.
    other = import_images(ImportConfig(src=str(folder), root=str(root), model_id="mj-v6"), known_prompt=prompt_spec)
    assert other.images_added == 2 and other.images_in_round == 5  # a.png names its own model_id
    assert all(_files(root)[k] == v for k, v in before.items() if k.parts[0] == "images")


def test_csv_metadata_and_parquet_listing(tmp_path):
    src = tmp_path / "csvfolder"
    src.mkdir()
    _image(src / "x.png", 32, 32, seed=4)
    _image(src / "y.webp", 40, 24, "WEBP", seed=5)
    (src / "metadata.csv").write_text('file_name,prompt,seed,rater_note\n'
                                      'x.png,"one blue square, on a black background",3,\n'
                                      'y.webp,a lighthouse at dusk,,"sharp, good"\n')
    root = tmp_path / "round"
    assert import_images(ImportConfig(src=str(src), root=str(root)), known_prompt=prompt_spec).images_added == 2
    gens = Store(root).to_pandas("generations").sort_values("width")
    assert gens["seed"].tolist() == [3, UNKNOWN_SEED] and gens["image_path"].iloc[1].endswith(".webp")

    # A Parquet listing elsewhere, with other column names, relative and absolute paths.
    listing_dir = tmp_path / "lists"
    listing_dir.mkdir()
    _image(listing_dir / "p.png", 16, 16, seed=6)
    pd.DataFrame({"image_path": ["p.png", str(src / "x.png")], "caption": ["a red kite", "a blue kite"],
                  "model_id": ["m1", None], "seed": [5, None], "likes": [3, 5]}).to_parquet(listing_dir / "list.parquet")
    res = import_images(ImportConfig(src=str(listing_dir / "list.parquet"), root=str(root)), known_prompt=prompt_spec)
    assert res.images_added == 2 and res.images_in_round == 4
    kites = Store(root).to_pandas("generations").query("prompt.str.endswith('kite')").sort_values("prompt")
    assert kites["seed"].tolist() == [UNKNOWN_SEED, 5] and kites["model_id"].tolist() == ["imported", "m1"]
    extra = Store(root).to_pandas("imports")
    assert sorted(json.loads(e)["likes"] for e in extra["extra"] if "likes" in e) == [3, 5]


@pytest.mark.parametrize("bad, match", [
    ({"file_name": "missing.png", "prompt": "a cat"}, r"row 2 \(missing.png\): image file .* does not exist"),
    ({"file_name": "notes.png", "prompt": "a cat"}, r"row 2 \(notes.png\): .* is not a readable image"),
    ({"file_name": "b.png", "prompt": "  "}, r"row 2 \(b.png\): the prompt .* is empty"),
    ({"file_name": "b.png", "prompt": "a cat", "seed": "abc"}, r"row 2 \(b.png\): seed is 'abc', not an integer"),
    ({"prompt": "a cat"}, r"row 2: no image path"),
])
def test_a_bad_row_is_one_error_naming_it_and_nothing_is_written(tmp_path, bad, match, capsys):
    from pipelines.cli import run
    from pipelines.import_images import main

    src = tmp_path / "src"
    src.mkdir()
    _image(src / "a.png", 8, 8, seed=1)
    _image(src / "b.png", 8, 8, seed=2)
    (src / "notes.png").write_text("not an image")
    rows = [{"file_name": "a.png", "prompt": "a dog"}, bad, {"file_name": "b.png", "prompt": "a bird"}]
    (src / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    root = tmp_path / "round"
    with pytest.raises(UserError, match=match):
        import_images(ImportConfig(src=str(src), root=str(root)), known_prompt=prompt_spec)
    assert not root.exists() or not Store(root).exists("generations") and not any((root / "images").glob("*"))
    assert run(main, [f"src={src}", f"root={root}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "row 2" in err


def test_import_cli_prints_json_and_saves_its_config(folder, tmp_path, capsys):
    from pipelines.cli import run
    from pipelines.import_images import main

    root = tmp_path / "round"
    assert run(main, [f"src={folder}", f"root={root}"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["images_added"] == 3 and out["images_in_round"] == 3
    assert len(list((root / "configs").glob("import-*.yaml"))) == 1
    assert run(main, [f"src={tmp_path / 'nowhere'}", f"root={root}"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_import_into_a_round(folder, tmp_path):
    """`make import round=2`: the images land in round 2 (generations.round); no model made them."""
    root = tmp_path / "round"
    import_images(ImportConfig(src=str(folder), root=str(root), round=2), known_prompt=prompt_spec)
    gens = Store(root).to_pandas("generations")
    assert (gens["round"] == 2).all() and gens["model_fingerprint"].isna().all() and gens["run"].isna().all()
