"""A model's folder is never a fine-tuning run's output folder (issue 58 item 7): ``make finetune
output_dir=<a model>`` is one error line, with or without ``overwrite=true``, and nothing in the
model's folder is deleted or replaced."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.test_bad_input_cli import _dpok_args, finetune, one_error_line, tree


@pytest.fixture
def model_copy(tiny_sd, tmp_path):
    """A copy of the tiny pipeline (the session's one must stay as it is, whatever a test does)."""
    return shutil.copytree(tiny_sd, tmp_path / "sd")


@pytest.mark.parametrize("overwrite", [[], ["overwrite=true"], ["resume=false"]])
def test_a_pipeline_folder_is_refused_as_output_dir(model_copy, tiny_sd, capsys, overwrite):
    before = tree(model_copy)
    # the pipeline being fine-tuned, and another pipeline folder
    for pipeline in (model_copy, tiny_sd):
        assert finetune(*_dpok_args(pipeline, model_copy, "dpok.rounds=1", *overwrite)) == 2
        one_error_line(capsys, f"{model_copy} holds a model (model_index.json)", "choose another output_dir")
        assert tree(model_copy) == before


@pytest.mark.parametrize("marker", ["config.json", "model.safetensors", "pytorch_model.bin"])
def test_a_transformers_or_diffusers_model_folder_is_refused(tiny_sd, tmp_path, capsys, marker):
    out = tmp_path / "clip"
    out.mkdir()
    (out / marker).write_text(json.dumps({"model_type": "clip"}))
    before = tree(out)
    assert finetune(*_dpok_args(tiny_sd, out, "dpok.rounds=1", "overwrite=true")) == 2
    one_error_line(capsys, f"holds a model ({marker})")
    assert tree(out) == before


def test_a_run_folder_is_still_an_output_folder(tiny_sd, tmp_path):
    """A full run's result is a pipeline (model_index.json) beside its fine-tuning config.yaml: a
    run's folder, not a model's, so overwrite=true still applies to it."""
    from core.config import load_config, save_config
    from finetune.checkpoints import check_output_dir, model_in
    from finetune.config import FinetuneConfig

    out = tmp_path / "run"
    out.mkdir()
    cfg = load_config(FinetuneConfig, None, _dpok_args(tiny_sd, out, "overwrite=true"))
    save_config(cfg, out / "config.yaml")
    (out / "model_index.json").write_text("{}")
    assert model_in(out) is None
    check_output_dir(out, cfg)  # no error
    assert model_in(tiny_sd) == "model_index.json"
    # ... but never while the run reads it: as its init (a previous round) or its model
    from core.errors import UserError

    for key in ("init", "model.pipeline"):
        reads = load_config(FinetuneConfig, None, _dpok_args(tiny_sd, out, "overwrite=true", f"{key}={out}"))
        with pytest.raises(UserError, match=f"output_dir {out} is this run's {key}"):
            check_output_dir(out, reads)
