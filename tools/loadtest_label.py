"""``make loadtest-label``: many concurrent raters against a live labeling app, through gradio_client.

    python -m pipelines.loadtest_label [--config F] raters=20 labels_per_rater=50

Renders a fresh round (shapes world, every prompt) under ``runs/loadtest-label/<stamp>/``, adds
``raters`` accounts, starts ``python -m pipelines.label`` as a separate process on a free port of
127.0.0.1, and lets one thread per rater sign in and submit ``labels_per_rater`` labels (every
``ranking_every``-th one a ranking), pausing ``think_ms`` on average between answers (0: as fast
as the server answers).  Then it stops the server and
reads the Parquet files back.  The last line is one JSON object:

- ``submitted``: labels the server acknowledged; ``stored``: label rows on disk from these raters;
- ``duplicates``: rows stored twice (same id) plus a rater answering one item twice;
- ``p50_ms`` / ``p99_ms``: round-trip time of a submission, measured by the client (the answer
  carries the next item, so it is the wait a rater sees between two items);
- ``over_overlap``: items with more than K non-skip answers.

Target: stored == submitted, duplicates == 0, p99 < 500 ms.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import numpy as np

from core import seeds
from core.config import save_config
from core.errors import UserError
from data.schemas import BINARY_LABELS, RANKINGS
from collect.generate import GenerateConfig, generate
from labeling_app.items import ranking_item_id
from labeling_app.raters import RatersFile
from labeling_app.views import shown_token

PASSWORD = "loadtest-password"


@dataclass(frozen=True)
class LoadtestConfig:
    raters: int = 20
    labels_per_rater: int = 50
    ranking_every: int = 5
    think_ms: float = 1000.0
    """Mean pause of a rater between an answer and the next (exponential).  People take seconds
    per image (the simulated raters' profile: 2.5 s); 0 makes every rater hammer the server,
    which measures throughput at saturation instead of the wait raters see."""
    per_prompt: int = 4
    overlap: int = 3
    root: Optional[str] = None
    """Dataset root for the test round; default runs/loadtest-label/<UTC stamp> (must not exist)."""
    startup_timeout_s: float = 120.0
    p99_target_ms: float = 500.0
    seed: int = 0


@dataclass(frozen=True)
class LoadtestResult:
    raters: int
    think_ms: float
    submitted: int
    stored: int
    duplicates: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    stale: int
    over_overlap: int
    labels_per_s: float
    wall_s: float
    server_cpu_ms_per_request: float  # where the CPU went (2 shared cores: the clients compete)
    client_cpu_ms_per_request: float
    targets_met: bool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(url: str, proc: subprocess.Popen, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise UserError(f"the labeling server exited with status {proc.returncode}:\n{tail}",
                            f"see {log}.")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers (a login page or 401): it is up
        except (urllib.error.URLError, OSError):
            time.sleep(0.25)
    raise UserError(f"the labeling server did not answer within {timeout_s:.0f} s.",
                    f"see {log}; raise startup_timeout_s on a slow machine.")


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


class _Rater(threading.Thread):
    def __init__(self, url: str, rater_id: str, cfg: LoadtestConfig, start: threading.Barrier):
        super().__init__(daemon=True, name=rater_id)
        self.url, self.rater_id, self.cfg, self.start_barrier = url, rater_id, cfg, start
        self.latencies_ms: list[float] = []
        self.submitted = self.errors = self.stale = 0
        self.failure: str | None = None
        self.rng = seeds.rng(cfg.seed, seeds.Stream.LOADTEST_RATER, int(rater_id.split("-")[1]))

    def run(self):
        from gradio_client import Client

        try:
            # Plain HTTP to 127.0.0.1, so no certificate is ever checked; ssl_verify=False only stops
            # httpx from loading the CA bundle for each of the two HTTP clients gradio_client opens
            # per call (~20 ms CPU each, load-generator cost that would be charged to the server).
            client = Client(self.url, auth=(self.rater_id, PASSWORD), verbose=False, download_files=False,
                            ssl_verify=False)
            binary = client.predict(api_name="/next_binary")
            ranking = client.predict(api_name="/next_ranking")
        except Exception as e:  # noqa: BLE001 - reported in the result
            self.failure = f"{type(e).__name__}: {e}"
            self.start_barrier.abort()
            return
        try:
            self.start_barrier.wait(timeout=120)
        except threading.BrokenBarrierError:
            return
        slots = self.cfg_slots(ranking)
        for i in range(self.cfg.labels_per_rater):
            rank_now = self.cfg.ranking_every > 0 and i % self.cfg.ranking_every == self.cfg.ranking_every - 1
            if rank_now and slots:
                args, api = self.rank_args(ranking, self.random_ranks(slots)), "/submit_ranking"
            elif binary[0] is not None:
                label = "skip" if self.rng.random() < 0.05 else ("good" if self.rng.random() < 0.5 else "bad")
                args, api = ("", shown_token(binary[1])), f"/{label}"  # an answer quotes the item shown
            else:
                break  # nothing left for this rater
            t0 = time.perf_counter()
            try:
                out = client.predict(*args, api_name=api)
            except Exception:  # noqa: BLE001 - a refused or failed request
                self.errors += 1
                continue
            self.latencies_ms.append(1000 * (time.perf_counter() - t0))
            status = out[-2] if api == "/submit_ranking" else out[2]  # see the output lists in ui.py
            if "Saved" in status:
                self.submitted += 1
            else:
                self.stale += 1
            if self.cfg.think_ms > 0:
                time.sleep(self.rng.exponential(self.cfg.think_ms / 1000))
            if api == "/submit_ranking":
                ranking = out
                slots = self.cfg_slots(ranking)
            else:
                binary = out
        client.close()

    @staticmethod
    def cfg_slots(ranking) -> int:
        """Images in the ranking set shown.  Outputs: prompt, images x S, radios x S, status,
        progress (session states are not returned); an image is a file, None, or an update."""
        def shown(im):
            if isinstance(im, dict) and im.get("__type__") == "update":
                return bool(im.get("visible")) and im.get("value") is not None
            return im is not None
        n_slots = (len(ranking) - 3) // 2
        return sum(1 for im in ranking[1:1 + n_slots] if shown(im))

    @staticmethod
    def rank_args(ranking, ranks: list[int]) -> tuple:
        """The set's token (from its prompt output), then the ranks padded to the slots."""
        n_slots = (len(ranking) - 3) // 2
        return (shown_token(ranking[0]), *ranks) + (None,) * (n_slots - len(ranks))

    def random_ranks(self, n: int) -> list[int]:
        scores = self.rng.integers(0, n, size=n)  # ties happen
        order = sorted(set(scores.tolist()), reverse=True)
        return [order.index(s) + 1 for s in scores.tolist()]


def count_stored(root: Path, raters: set[str], overlap: int) -> tuple[int, int, int]:
    """(rows stored by ``raters``, duplicates, items over the overlap), from the raw files."""
    import pyarrow.dataset as ds

    stored = dups = 0
    frames = {}
    for spec, key in ((BINARY_LABELS, "label_id"), (RANKINGS, "ranking_id")):
        d = root / spec.name
        if not d.is_dir():
            frames[spec.name] = None
            continue
        df = ds.dataset(d, schema=spec.schema, format="parquet").to_table().to_pandas()
        df = df[df["rater_id"].isin(raters)]
        stored += df[key].nunique()
        dups += len(df) - df[key].nunique()  # the same row written twice
        frames[spec.name] = df.drop_duplicates(key)
    b, r = frames["binary_labels"], frames["rankings"]
    over = 0
    if b is not None:
        dups += int(b.duplicated(["rater_id", "image_id"]).sum())  # one rater, one image, twice
        answered = b[(b["label"] != "skip") & ~b["is_gold"]]
        over += int((answered.groupby("image_id").size() > overlap).sum())
    if r is not None:
        r = r.assign(item=r["image_ids"].map(ranking_item_id))
        dups += int(r.duplicated(["rater_id", "item"]).sum())
        over += int((r.groupby("item").size() > overlap).sum())
    return stored, dups, over


def loadtest(cfg: LoadtestConfig) -> LoadtestResult:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    root = Path(cfg.root) if cfg.root else Path("runs") / "loadtest-label" / stamp
    if root.exists() and any(root.iterdir()):
        raise UserError(f"{root} already holds files.", "pass a new root= (the load test starts a fresh round).")
    generate(GenerateConfig(root=str(root), source="renderer", prompts="all", per_prompt=cfg.per_prompt,
                            seed=cfg.seed))
    raters = RatersFile(root / "raters.json")
    ids = [f"lt-{i:03d}" for i in range(cfg.raters)]
    for r in ids:
        raters.add(r, PASSWORD)
    save_config(cfg, root / "configs" / f"loadtest-label-{stamp}.yaml")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log = root / "server.log"
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    with open(log, "w") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.label", f"root={root}", f"raters_file={raters.path}",
             "server.host=127.0.0.1", f"server.port={port}", f"overlap={cfg.overlap}"],
            stdout=logf, stderr=subprocess.STDOUT, env=env)
        try:
            wait_for_server(url, proc, cfg.startup_timeout_s, log)
            barrier = threading.Barrier(cfg.raters + 1)
            threads = [_Rater(url, r, cfg, barrier) for r in ids]
            for t in threads:
                t.start()
            try:
                barrier.wait(timeout=300)
            except threading.BrokenBarrierError:
                failures = [t.failure for t in threads if t.failure]
                raise UserError(f"raters could not sign in: {failures[:3]}", f"see {log}.") from None
            t0, cpu0, srv0 = time.perf_counter(), time.process_time(), process_cpu_s(proc.pid)
            for t in threads:
                t.join(timeout=600)
            wall = time.perf_counter() - t0
            client_cpu, server_cpu = time.process_time() - cpu0, process_cpu_s(proc.pid) - srv0
        finally:
            stop_server(proc)
    lat = np.array([x for t in threads for x in t.latencies_ms]) if threads else np.zeros(0)
    submitted = sum(t.submitted for t in threads)
    stored, dups, over = count_stored(root, set(ids), cfg.overlap)
    p50 = float(np.percentile(lat, 50)) if lat.size else float("nan")
    p99 = float(np.percentile(lat, 99)) if lat.size else float("nan")
    enough = all(t.submitted >= cfg.labels_per_rater for t in threads)
    result = LoadtestResult(
        raters=cfg.raters, think_ms=cfg.think_ms, submitted=submitted, stored=stored, duplicates=dups, p50_ms=round(p50, 1),
        p99_ms=round(p99, 1), max_ms=round(float(lat.max()), 1) if lat.size else float("nan"),
        errors=sum(t.errors for t in threads), stale=sum(t.stale for t in threads), over_overlap=over,
        labels_per_s=round(submitted / wall, 1) if wall > 0 else 0.0, wall_s=round(wall, 2),
        server_cpu_ms_per_request=round(1000 * server_cpu / max(1, lat.size), 1),
        client_cpu_ms_per_request=round(1000 * client_cpu / max(1, lat.size), 1),
        targets_met=bool(enough and stored == submitted and dups == 0 and over == 0 and p99 < cfg.p99_target_ms),
    )
    (root / "loadtest-result.json").write_text(json.dumps(result.__dict__))
    return result


def loadtest_label(cfg: LoadtestConfig) -> int:
    """Run it with ``cfg``; the exit status (0: every check held)."""
    result = loadtest(cfg)
    print(json.dumps(result.__dict__))
    return 0 if result.targets_met else 1

