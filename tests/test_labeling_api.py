"""The labeling app over HTTP: gradio_client against a live server on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from data import Store
from data.labels import current
from tests.labeling_server import (HOSTILE_PROMPT, PASSWORD, free_port, label_config, make_raters, make_round,
                                   serve)

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

RATERS = ["alice", "bob", "carol", "dave", "erin", "frank"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("api-round")
    store = make_round(root)
    raters = make_raters(root / "raters.json", RATERS, admins=("alice",))
    with serve(label_config(root, raters)) as (app, url):
        yield store, raters, app, url


def client(url: str, name: str) -> Client:
    return Client(url, auth=(name, PASSWORD), verbose=False, download_files=False, ssl_verify=False)


def image_id_of(image) -> str:
    """The image id behind a FileData output (the file is named <image_id>.png)."""
    value = image.get("value", image) if image.get("__type__") == "update" else image
    return value["orig_name"].removesuffix(".png")


def rows(store: Store, table: str, rater: str):
    df = current(store, table).to_pandas()
    return df[df["rater_id"] == rater]


def test_no_endpoint_takes_a_rater_id(server):
    _, _, _, url = server
    api = client(url, "bob").view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/good", "/bad", "/skip", "/undo_binary", "/next_binary", "/submit_ranking", "/next_ranking"} <= set(api)
    for name, ep in api.items():
        for p in ep["parameters"]:
            assert "rater" not in p["parameter_name"].lower() and "path" not in p["parameter_name"].lower(), name


def test_login_label_rank_undo_and_resume(server):
    store, _, _, url = server
    c = client(url, "alice")
    image, prompt, status, progress, _ = c.predict(api_name="/next_binary")
    first = image_id_of(image)
    assert "alice" in progress and "0 images" in progress
    # a second session of the same rater (a refresh, a new login) resumes on the same item
    assert image_id_of(client(url, "alice").predict(api_name="/next_binary")[0]) == first
    image, _, status, progress, _ = c.predict("", api_name="/good")
    assert "Saved" in status and "1 images" in progress and image_id_of(image) != first
    got = rows(store, "binary_labels", "alice")
    assert got["image_id"].tolist() == [first] and got["label"].tolist() == ["good"]
    assert not got["is_gold"].any() and got["guideline_version"].str.startswith("1+").all()
    image, _, status, progress, _ = c.predict(api_name="/undo_binary")
    assert image_id_of(image) == first and "taken back" in status and "0 images" in progress
    assert rows(store, "binary_labels", "alice").empty
    c.predict("", api_name="/bad")
    assert rows(store, "binary_labels", "alice")["label"].tolist() == ["bad"]

    out = c.predict(api_name="/next_ranking")
    slots = (len(out) - 3) // 2
    shown = [im for im in out[1:1 + slots] if im is not None and (im.get("__type__") != "update" or im["visible"])]
    ids = [image_id_of(im) for im in shown]
    assert len(ids) == 3
    ranks = [2, 1, 2] + [None] * (slots - 3)
    out = c.predict(*ranks, api_name="/submit_ranking")
    assert "Saved your ranking" in out[-2] and "1 rankings" in out[-1]
    r = rows(store, "rankings", "alice")
    assert list(r["image_ids"].iloc[0]) == ids and list(r["ranks"].iloc[0]) == [2, 1, 2]
    c.predict(api_name="/undo_ranking")
    assert rows(store, "rankings", "alice").empty


def test_invalid_ranking_is_refused(server):
    store, _, _, url = server
    c = client(url, "bob")
    out = c.predict(api_name="/next_ranking")
    slots = (len(out) - 3) // 2
    with pytest.raises(AppError, match="not an ordering"):
        c.predict(*([1, 1, 3] + [None] * (slots - 3)), api_name="/submit_ranking")
    with pytest.raises(AppError, match="no rank"):
        c.predict(*([1] + [None] * (slots - 1)), api_name="/submit_ranking")
    assert rows(store, "rankings", "bob").empty


def test_wrong_password_and_anonymous_requests_are_refused(server):
    _, _, _, url = server
    with pytest.raises(ValueError, match="Could not login"):
        Client(url, auth=("alice", "wrong-password"), verbose=False, ssl_verify=False)
    with pytest.raises(ValueError, match="Could not login"):
        Client(url, auth=("mallory", PASSWORD), verbose=False, ssl_verify=False)
    assert httpx.get(url + "config").status_code == 401
    r = httpx.post(url + "gradio_api/queue/join", json={"fn_index": 0, "data": [], "session_hash": "x"})
    assert r.status_code == 401


def test_files_are_served_only_to_signed_in_raters_and_only_from_the_cache(server):
    store, _, _, url = server
    c = client(url, "carol")
    image = c.predict(api_name="/next_binary")[0]
    assert httpx.get(image["url"]).status_code in (401, 403)               # no session: refused
    assert httpx.get(image["url"], cookies=c.cookies).status_code == 200   # the same URL, signed in
    # a signed-in rater still cannot fetch files by path: not the round's images, not the raters file
    gens = store.to_pandas("generations")
    for path in (store.root / gens["image_path"].iloc[0], store.root / "raters.json", "/etc/passwd",
                 "../../../../etc/passwd"):
        r = httpx.get(f"{url}gradio_api/file={path}", cookies=c.cookies)
        assert r.status_code in (403, 404), (path, r.status_code)


def test_hostile_prompt_is_rendered_inert(server):
    store, _, _, url = server
    c = client(url, "carol")
    out = c.predict(api_name="/next_binary")
    for _ in range(40):  # skip until the hostile item shows (skips leave items to other raters)
        if "onerror" in out[1]:
            break
        out = c.predict("", api_name="/skip")
    prompt_html = out[1]
    assert "&lt;img src=x onerror=&quot;window.__xss=1&quot;&gt;&lt;script&gt;" in prompt_html
    assert "<img" not in prompt_html and "<script" not in prompt_html
    assert HOSTILE_PROMPT in store.to_pandas("generations")["prompt"].tolist()  # stored verbatim


def test_a_second_rater_never_gets_the_first_raters_items(server):
    store, _, app, url = server
    d, e = client(url, "dave"), client(url, "erin")
    dave_item = image_id_of(d.predict(api_name="/next_binary")[0])
    erin_item = image_id_of(e.predict(api_name="/next_binary")[0])
    assert dave_item != erin_item  # an open item is leased to its rater (K = 1)
    for _ in range(5):
        d.predict("", api_name="/good")
        e.predict("", api_name="/bad")
    labels = current(store, "binary_labels").to_pandas()
    dave = set(labels.loc[labels["rater_id"] == "dave", "image_id"])
    erin = set(labels.loc[labels["rater_id"] == "erin", "image_id"])
    assert len(dave) == len(erin) == 5 and not dave & erin
    answered = labels[labels["label"] != "skip"]
    assert (answered.groupby("image_id")["rater_id"].nunique() <= app.cfg.overlap).all()


def test_admin_tab_is_for_admins_only(server):
    store, _, _, url = server
    with pytest.raises(AppError, match="admins only"):
        client(url, "bob").predict(api_name="/admin_report")
    with pytest.raises(AppError, match="admins only"):
        client(url, "bob").predict(api_name="/export")
    summary, counts, gold, per_prompt = client(url, "alice").predict(api_name="/admin_report")
    assert "Krippendorff" in summary and "alice" in [row[0] for row in counts["data"]]
    # the per-prompt pass rates of data.targets, one row per prompt of the round
    assert {"prompt", "good_rate", "labelled_images", "picked"} <= set(per_prompt["headers"])
    assert len(per_prompt["data"]) == store.to_pandas("generations")["prompt_id"].nunique()
    exported, status = client(url, "alice").predict(api_name="/export")
    assert exported["orig_name"].endswith(".zip") and "Exported" in status


def test_a_disabled_rater_is_refused_at_the_next_request(server):
    store, raters, _, url = server
    c = client(url, "frank")
    c.predict(api_name="/next_binary")
    raters.set_disabled("frank", True)
    try:
        with pytest.raises(AppError, match="not signed in"):
            c.predict("", api_name="/good")
        assert rows(store, "binary_labels", "frank").empty
    finally:
        raters.set_disabled("frank", False)


def test_a_killed_server_loses_nothing_it_acknowledged(tmp_path):
    root = tmp_path / "round"
    make_round(root, n_prompts=4, hostile=False)
    raters = make_raters(root / "raters.json", ["gina"])
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    cmd = [sys.executable, "-m", "pipelines.label", f"root={root}", f"raters_file={raters.path}",
           "server.host=127.0.0.1", f"server.port={port}", "gold.share=0"]
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")

    def start():
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        for _ in range(240):  # bounded: at most 60 s
            try:
                httpx.get(url, timeout=1)
                return proc
            except httpx.TransportError:
                if proc.poll() is not None:
                    pytest.fail(f"server exited: {proc.stderr.read().decode()[-2000:]}")
                time.sleep(0.25)
        proc.kill()
        pytest.fail("server did not start in 60 s")

    proc = start()
    try:
        c = client(url, "gina")
        c.predict(api_name="/next_binary")
        acked = 0
        for label in ["good", "bad", "good", "skip", "bad", "good"]:
            if "Saved" in c.predict("", api_name=f"/{label}")[2]:
                acked += 1
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert acked == 6 and len(rows(Store(root), "binary_labels", "gina")) == 6
        proc = start()  # the restarted server resumes where gina stopped
        image, _, _, progress, _ = client(url, "gina").predict(api_name="/next_binary")
        assert "6 images" in progress
        assert image_id_of(image) not in set(rows(Store(root), "binary_labels", "gina")["image_id"])
    finally:
        proc.kill()
        proc.wait(timeout=30)
