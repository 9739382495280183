"""tools.eval_table: the tables the region-dpok and diffcon studies print from their `make eval` records."""

import json

import pytest

from tools.eval_table import main


def _model(targets, gain=None, broken=None, controls=0.5):
    m = {"alignment": {"overall": targets}, "generalization": {"overall": 0.2, "color": 0.6},
         "controls": {"overall": controls}, "off_palette": {"generalization": 0.1}}
    if gain is not None:
        m["gain"] = gain
        m["keep"] = {"fixed": 0.3, "broken": broken, "moved_base_right": 0.05, "moved_outside": 0.01}
    return m


def _study(tmp_path):
    for seed, (dpok, chi2) in enumerate([(0.5, 0.4), (0.6, 0.4)]):
        rec = {"models": {"base": _model(0.25), "dpok": _model(dpok, dpok - 0.25, 0.02),
                          "dpok-chi2": _model(chi2, chi2 - 0.25, 0.04)}}
        (tmp_path / f"diffcon-seed{seed}.json").write_text(json.dumps(rec))
    (tmp_path / "finetune-seed0.json").write_text(json.dumps({"curve": []}))  # a run's metrics: not a table row
    return tmp_path


def test_by_record_gives_each_model_of_each_record(tmp_path, capsys):
    (tmp_path / "region-dpok-seed1-fnf3.json").write_text(json.dumps({"models": {"base": _model(0.25),
                                                                                 "dpok-region": _model(0.5, 0.25, 0.07)}}))
    assert main([str(tmp_path), "--cols", "targets,gain,broken,moved_outside"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| record | model | targets | gain | broken | moved_outside |"
    assert out[2] == "| region-dpok-seed1-fnf3 | base | 25.0 | – | – | – |"
    assert out[3] == "| region-dpok-seed1-fnf3 | dpok-region | 50.0 | 25.0 | 7.0 | 1.0 |"


def test_by_seed_pairs_each_variant_with_todays_model(tmp_path, capsys):
    assert main([str(_study(tmp_path)), "--by-seed", "--cols", "targets,gain,broken"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "| 1 | dpok-chi2 | 40.0 | 15.0 | 4.0 |" in out
    # gain: chi2 - dpok = -0.1 and -0.2 over two seeds: mean -15.0, SE = stdev / sqrt 2 = 5.0
    assert out[-1] == "| dpok-chi2 | dpok | 15.0 (-15.0 ± 5.0) | 4.0 (+2.0 ± 0.0) |"


def test_an_unknown_column_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(_study(tmp_path)), "--cols", "targets,gian"])
    assert e.value.code == 2 and "gian" in capsys.readouterr().err
