"""tools.compare_runs: two run outputs compared file by file, each folder's own path set aside."""

import json

import pandas as pd

from tools.compare_runs import main


def _run(root, seconds, score, weights=b"\x00\x01"):
    (root / "runs" / "dpok").mkdir(parents=True)
    (root / "results.json").write_text(json.dumps({"out": str(root / "runs"), "seconds": seconds, "gain": [0.1, score]}))
    (root / "runs" / "config.yaml").write_text(f"root: {root}\nseed: 0\n")
    (root / "runs" / "dpok" / "weights.bin").write_bytes(weights)
    pd.DataFrame({"id": [2, 1], "path": [f"{root}/a.png", f"{root}/b.png"]}).to_parquet(
        root / "runs" / f"part-00000-{abs(hash(str(root))) % 16 ** 8:08x}.parquet")
    return root


def test_the_same_run_in_two_folders_is_the_same(tmp_path, capsys):
    assert main([str(_run(tmp_path / "old", 1.0, 0.2)), str(_run(tmp_path / "new", 1.0, 0.2))]) == 0
    assert "[0, 1]" not in capsys.readouterr().out  # no kind with a file that differs


def test_each_difference_is_named(tmp_path, capsys):
    old, new = _run(tmp_path / "old", 1.0, 0.2), _run(tmp_path / "new", 2.5, 0.3, weights=b"\x00\x02")
    assert main([str(old), str(new)]) == 1
    out = capsys.readouterr().out
    assert "results.json: seconds: old=1.0 new=2.5" in out and "results.json: gain[1]: old=0.2 new=0.3" in out
    assert "results.json: out" not in out  # the folder's own path is <ROOT> on both sides
    assert "runs/dpok/weights.bin: bytes differ" in out
    assert "config.yaml" not in out and "parquet" not in out.split("files per kind")[0]
