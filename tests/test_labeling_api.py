"""The labeling app over HTTP: gradio_client against a live server on 127.0.0.1."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace

import httpx
import pytest

from core.errors import UserError
from data import Store
from data.labels import current
from labeling_app.config import GoldConfig
from labeling_app.views import shown_token
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


def answer(c: Client, label: str, shown: tuple, reason: str = ""):
    """Answer the binary item of ``shown`` (the outputs that showed it), as the page does."""
    return c.predict(reason, shown_token(shown[1]), api_name=f"/{label}")


def rank(c: Client, shown: tuple, ranks: list):
    """Submit ``ranks`` for the ranking set of ``shown`` (padded to the slots with None)."""
    slots = (len(shown) - 3) // 2
    return c.predict(shown_token(shown[0]), *(list(ranks) + [None] * (slots - len(ranks))), api_name="/submit_ranking")


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
    shown = c.predict(api_name="/next_binary")
    image, prompt, status, progress, _ = shown
    first = image_id_of(image)
    assert "alice" in progress and "0 images" in progress and shown_token(prompt)
    # a second session of the same rater (a refresh, a new login) resumes on the same item
    assert image_id_of(client(url, "alice").predict(api_name="/next_binary")[0]) == first
    image, _, status, progress, _ = answer(c, "good", shown)
    assert "Saved" in status and "1 images" in progress and image_id_of(image) != first
    got = rows(store, "binary_labels", "alice")
    assert got["image_id"].tolist() == [first] and got["label"].tolist() == ["good"]
    assert not got["is_gold"].any() and got["guideline_version"].str.startswith("2+").all()
    shown = c.predict(api_name="/undo_binary")
    image, _, status, progress, _ = shown
    assert image_id_of(image) == first and "taken back" in status and "0 images" in progress
    assert rows(store, "binary_labels", "alice").empty
    answer(c, "bad", shown)
    assert rows(store, "binary_labels", "alice")["label"].tolist() == ["bad"]

    out = c.predict(api_name="/next_ranking")
    slots = (len(out) - 3) // 2
    shown = [im for im in out[1:1 + slots] if im is not None and (im.get("__type__") != "update" or im["visible"])]
    ids = [image_id_of(im) for im in shown]
    assert len(ids) == 3
    out = rank(c, out, [2, 1, 2])
    assert "Saved your ranking" in out[-2] and "1 rankings" in out[-1]
    r = rows(store, "rankings", "alice")
    assert list(r["image_ids"].iloc[0]) == ids and list(r["ranks"].iloc[0]) == [2, 1, 2]
    c.predict(api_name="/undo_ranking")
    assert rows(store, "rankings", "alice").empty


def test_refused_actions_answer_in_the_status_and_keep_the_item(server, caplog, capfd):
    """A refused action is a status (no error: Gradio would mark every output), the item stays,
    the next valid action works, and the server logs one line per refusal, no traceback."""
    store, _, _, url = server
    c = client(url, "bob")
    out = c.predict(api_name="/next_ranking")
    slots = (len(out) - 3) // 2
    capfd.readouterr()
    with caplog.at_level(logging.WARNING, logger="labeling_app"):
        bad = rank(c, out, [1, 1, 3])
        assert "not an ordering" in bad[-2] and 'class="warn"' in bad[-2]
        assert bad[0] == out[0] and list(bad[1 + slots:4 + slots]) == [1, 1, 3]  # same set, choices kept
        assert "no rank" in rank(c, out, [1])[-2]
        assert "not an ordering" in rank(c, out, [1, 1, 3])[-2]
        assert rows(store, "rankings", "bob").empty
        assert "Saved your ranking" in rank(c, out, [1, 1, 2])[-2]                # fixed: stored
        assert list(rows(store, "rankings", "bob")["ranks"].iloc[0]) == [1, 1, 2]

        shown = c.predict(api_name="/next_binary")
        undo = c.predict(api_name="/undo_binary")                                  # nothing to undo
        assert "no binary answer to undo" in undo[2] and image_id_of(undo[0]) == image_id_of(shown[0])
        assert shown_token(undo[1]) == shown_token(shown[1])
        nothing = c.predict("", "", api_name="/good")                              # the page showed nothing
        assert "nothing was saved" in nothing[2] and image_id_of(nothing[0]) == image_id_of(shown[0])
        stale = c.predict("", "0123456789abcdef", api_name="/good")               # not the item shown
        assert "not your current one" in stale[2]
        assert rows(store, "binary_labels", "bob").empty
        assert "Saved" in answer(c, "good", undo)[2]
        assert rows(store, "binary_labels", "bob")["image_id"].tolist() == [image_id_of(shown[0])]
    refusals = [r for r in caplog.records if r.name == "labeling_app" and r.getMessage().startswith("refused")]
    assert len(refusals) == 6 and all("\n" not in r.getMessage() for r in refusals)
    assert all(" by bob: " in r.getMessage() for r in refusals)
    assert "Traceback" not in "".join(capfd.readouterr())


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
        out = answer(c, "skip", out)
    prompt_html = out[1]
    assert "&lt;img src=x onerror=&quot;window.__xss=1&quot;&gt;&lt;script&gt;" in prompt_html
    assert "<img" not in prompt_html and "<script" not in prompt_html
    assert HOSTILE_PROMPT in store.to_pandas("generations")["prompt"].tolist()  # stored verbatim


def test_a_second_rater_never_gets_the_first_raters_items(server):
    store, _, app, url = server
    d, e = client(url, "dave"), client(url, "erin")
    d_out, e_out = d.predict(api_name="/next_binary"), e.predict(api_name="/next_binary")
    assert image_id_of(d_out[0]) != image_id_of(e_out[0])  # an open item is leased to its rater (K = 1)
    assert "not your current one" in answer(d, "good", e_out)[2]  # erin's token is no use to dave
    for _ in range(5):
        d_out = answer(d, "good", d_out)
        e_out = answer(e, "bad", e_out)
    labels = current(store, "binary_labels").to_pandas()
    dave = set(labels.loc[labels["rater_id"] == "dave", "image_id"])
    erin = set(labels.loc[labels["rater_id"] == "erin", "image_id"])
    assert len(dave) == len(erin) == 5 and not dave & erin
    answered = labels[labels["label"] != "skip"]
    assert (answered.groupby("image_id")["rater_id"].nunique() <= app.cfg.overlap).all()


def signed_in(url: str, name: str, source: str = "127.0.0.1") -> httpx.Client:
    """A plain HTTP client from ``source`` with the session cookies of ``name``."""
    h = httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=30)
    assert h.post(url + "login", data={"username": name, "password": PASSWORD}).status_code == 200
    return h


def test_admin_tab_and_exports_are_for_admins_only(server):
    store, _, _, url = server
    with pytest.raises(AppError, match="admins only"):
        client(url, "bob").predict(api_name="/admin_report")
    with pytest.raises(AppError, match="admins only"):
        client(url, "bob").predict(api_name="/export")
    summary, chart, per_prompt, timeline, timeline_df, counts, gold, withdrawn, rounds = client(url, "alice").predict(
        api_name="/admin_report")
    assert rounds["headers"] == ["round", "images", "selected", "binary_labels", "rankings", "good_share"]
    assert [row[:2] for row in rounds["data"]] == [[0, store.to_pandas("generations").shape[0]]]
    assert "Krippendorff" in summary and "alice" in [row[0] for row in counts["data"]]
    # the per-prompt pass rates of data.targets, one row per prompt of the round, worst first
    assert {"prompt", "good_rate", "labelled_images", "picked"} <= set(per_prompt["headers"])
    assert len(per_prompt["data"]) == store.to_pandas("generations")["prompt_id"].nunique()
    rates = [row[per_prompt["headers"].index("good_rate")] for row in per_prompt["data"]]
    labelled = [r for r in rates if r is not None and r == r]
    assert labelled == sorted(labelled) and labelled
    assert 'src="data:image/png;base64,' in chart and 'src="data:image/png;base64,' in timeline
    assert "alice" in timeline_df["headers"] and "total" in timeline_df["headers"]

    link, status = client(url, "alice").predict(api_name="/export")
    assert "Exported" in status
    href = re.search(r'href="([^"]+)"', link).group(1)
    assert href.startswith("admin/export/") and href.endswith(".zip")
    zip_path = next((store.root / "exports").glob("*/*.zip"))
    alice, bob = signed_in(url, "alice"), signed_in(url, "bob")
    got = alice.get(url + href)
    assert got.status_code == 200 and got.content == zip_path.read_bytes()
    assert bob.get(url + href).status_code == 403          # a rater with the admin's URL
    assert httpx.get(url + href).status_code == 401        # no session
    assert alice.get(url + "admin/export/../raters.json").status_code == 404
    # nothing of the export is where Gradio's file route serves it, to anyone
    for who in (alice, bob):
        for path in (zip_path, zip_path.parent / "binary_labels.parquet"):
            assert who.get(f"{url}gradio_api/file={path}").status_code in (403, 404)


def test_login_throttle_per_client_address(server):
    """Wrong passwords from 127.0.0.2 delay 127.0.0.2 only (growing waits), never the right
    password from 127.0.0.3; per (client, name) first, then for the client's every name."""
    _, _, _, url = server
    two = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=30)
    three = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.3"), timeout=30)

    def login(h, name, password="wrong password"):
        return h.post(url + "login", data={"username": name, "password": password})

    for _ in range(4):  # 3 free wrong tries for (127.0.0.2, alice); the 4th sets a 1 s wait
        assert login(two, "alice").status_code == 400
    r = login(two, "alice", PASSWORD)  # even the right password waits
    assert r.status_code == 429 and r.json()["detail"] == "too many attempts, wait 1 s"
    assert r.headers["retry-after"] == "1"
    assert login(three, "alice", PASSWORD).status_code == 200   # another client: not delayed
    assert login(two, "bob").status_code == 400                 # another name from .2: its own count
    time.sleep(1.1)
    assert login(two, "alice").status_code == 400               # the wait is over; wrong again: 2 s
    r = login(two, "alice")
    assert r.status_code == 429 and r.json()["detail"] == "too many attempts, wait 2 s"
    # per client: 10 wrong passwords from .2 for any names, then every name waits
    for name in ("carol", "dave", "erin", "frank", "nobody"):
        assert login(two, name).status_code == 400
    r = login(two, "someone-else", PASSWORD)
    assert r.status_code == 429 and r.json()["detail"].startswith("too many attempts, wait")
    assert login(three, "bob", PASSWORD).status_code == 200
    # the login page shows the server's reason (not Gradio's fixed "Incorrect credentials")
    page = two.get(url).text
    assert 'id="login-error"' in page and "detail" in page


def test_a_disabled_rater_is_refused_at_the_next_request(server):
    store, raters, _, url = server
    c = client(url, "frank")
    c.predict(api_name="/next_binary")
    raters.set_disabled("frank", True)
    try:
        with pytest.raises(AppError, match="not signed in"):
            c.predict("", "", api_name="/good")
        assert rows(store, "binary_labels", "frank").empty
    finally:
        raters.set_disabled("frank", False)


@pytest.mark.slow
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
        out = c.predict(api_name="/next_binary")
        acked = 0
        for label in ["good", "bad", "good", "skip", "bad", "good"]:
            out = answer(c, label, out)
            if "Saved" in out[2]:
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


def test_each_start_merges_the_parts_earlier_runs_left(tmp_path):
    """#44.13: runs cut short before the background merge's first pass (a crash loop, quick
    restarts) used to leave every part for the next start, which started slower and left more.
    Each start merges them before it reads the round."""
    from labeling_app.ui import build_app
    from test_schemas import label_row

    root = tmp_path / "round"
    make_round(root, n_prompts=2, per_prompt=2, hostile=False)
    raters = make_raters(root / "raters.json", ["ann"])
    folder = root / "binary_labels"
    for run in range(3):
        app = build_app(label_config(root, raters))
        assert len(list(folder.glob("part-*.parquet"))) <= 1, run
        for i in range(70):  # what a short run appends, one part per answer
            app.assigner.store.append("binary_labels", [label_row(label_id=f"{run}-{i}", rater_id="ann")])
    build_app(label_config(root, raters))
    assert len(list(folder.glob("part-*.parquet"))) == 1
    assert len(Store(root).read("binary_labels")) == 210


@pytest.mark.slow
def test_forwarded_for_is_taken_only_from_the_configured_proxies(tmp_path):
    """#44.2: by default no address may name another with X-Forwarded-For, not even 127.0.0.1 (a
    local process, an SSH tunnel): the throttle cannot be dodged by naming a new address per try,
    nor turned on another rater by naming theirs.  With server.trusted_proxies the proxy's header
    names the client, and only the proxy's."""
    from labeling_app.config import ServerConfig

    root = tmp_path / "round"
    make_round(root, n_prompts=2, per_prompt=2, hostile=False)
    raters = make_raters(root / "raters.json", ["bob"])

    def login(url, source, forwarded=None, password="wrong password"):
        h = httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=30)
        headers = {"X-Forwarded-For": forwarded} if forwarded else {}
        with h:
            return h.post(url + "login", data={"username": "bob", "password": password}, headers=headers).status_code

    with serve(label_config(root, raters)) as (_, url):
        # 3 free wrong tries for (client, bob), the 4th sets a wait: a new "address" each time changes nothing
        assert [login(url, "127.0.0.1", f"10.0.0.{i}") for i in range(5)] == [400] * 4 + [429]
        for _ in range(16):  # forged failures "from" 127.0.0.9 count against their real sender
            assert login(url, "127.0.0.4", "127.0.0.9") in (400, 429)
        assert login(url, "127.0.0.9", password=PASSWORD) == 200

    proxy = ServerConfig(host="127.0.0.1", port=free_port(), trusted_proxies=("127.0.0.1",))
    with serve(label_config(root, raters, server=proxy)) as (_, url):
        assert [login(url, "127.0.0.1", "10.0.0.1") for _ in range(5)] == [400] * 4 + [429]
        assert login(url, "127.0.0.1", "10.0.0.2", password=PASSWORD) == 200  # another client behind it
        # an address that is not the proxy still cannot name another: 127.0.0.5 stays itself
        assert [login(url, "127.0.0.5", "10.0.0.3") for _ in range(4)] == [400] * 4
        assert login(url, "127.0.0.5", "10.0.0.4", password=PASSWORD) == 429
        assert login(url, "127.0.0.1", "10.0.0.3", password=PASSWORD) == 200
    with pytest.raises(UserError, match="not an IP address or network"):
        label_config(root, raters, server=ServerConfig(trusted_proxies=("proxy.example",)))


def test_the_app_takes_no_uploads(server):
    """#44.3: raters only press buttons; an upload (Gradio's upload route, or any multipart body)
    is refused whole, so nothing lands in Gradio's cache for other raters to fetch."""
    _, _, _, url = server
    h = signed_in(url, "carol")
    payload = {"files": ("notes.txt", b"x" * (1 << 20), "text/plain")}
    for route in ("gradio_api/upload", "upload", "gradio_api/process_recording"):
        r = h.post(url + route, files=payload)
        assert r.status_code == 403 and "no uploads" in r.json()["detail"], (route, r.status_code, r.text[:200])
    r = h.post(url + "gradio_api/upload", content=b"--b\r\n",
               headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 403
    r = h.post(url + "gradio_api/component_server", files=payload)
    assert r.status_code == 403
    # the app itself still works for the same rater
    assert h.get(url).status_code == 200


def raw_post(url: str, head: str, chunks=(), source: str = "127.0.0.7", route: str = "login",
             content_type: str = "application/x-www-form-urlencoded", timeout: float = 30) -> tuple[int | None, float]:
    """Send ``POST /<route>`` with the header lines ``head`` and the byte ``chunks`` on a raw
    socket, then read the answer; returns (status, seconds until it came), status None when none
    came within ``timeout`` s (the server still waiting for the body)."""
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=timeout, source_address=(source, 0)) as s:
        t0 = time.perf_counter()
        s.sendall((f"POST /{route} HTTP/1.1\r\nHost: {u.hostname}\r\n"
                   f"Content-Type: {content_type}\r\n{head}\r\n").encode())
        for c in chunks:
            s.sendall(c)
        try:
            status_line = s.makefile("rb").readline().decode()
        except TimeoutError:
            return None, time.perf_counter() - t0
        return int(status_line.split()[1]), time.perf_counter() - t0


def chunked(piece: bytes, total: int) -> list[bytes]:
    """Chunks of ``piece`` (HTTP chunked encoding) adding up to more than ``total`` bytes, never
    the last chunk: the body goes on."""
    return [b"%x\r\n%s\r\n" % (len(piece), piece)] * (total // len(piece) + 1)


def test_an_oversized_login_body_is_refused_before_it_is_read(server):
    """#58.3: POST /login takes at most 64 KiB: a larger Content-Length is answered 413 before a
    byte of the body is sent, a chunked body once it passes the cap; a normal login still works."""
    from labeling_app.web import MAX_LOGIN_BODY

    _, _, _, url = server
    status, took = raw_post(url, f"Content-Length: {200 << 20}\r\n")  # 200 MiB announced, none sent
    assert status == 413 and took < 5
    status, _ = raw_post(url, "Transfer-Encoding: chunked\r\n", chunked(b"username=" + b"a" * (16 << 10),
                                                                           MAX_LOGIN_BODY))
    assert status == 413
    h = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.7"), timeout=30)
    r = h.post(url + "login", data={"username": "carol", "password": "x" * (MAX_LOGIN_BODY + 1)})
    assert r.status_code == 413 and "too large" in r.json()["detail"]
    assert h.post(url + "login", data={"username": "carol", "password": PASSWORD}).status_code == 200


# Gradio's routes that take a JSON body, with and without its login check (cancel has none).
BODY_ROUTES = ("gradio_api/queue/join", "gradio_api/call/next_binary", "gradio_api/run/next_binary",
               "gradio_api/call/v2/next_binary", "gradio_api/api/next_binary", "gradio_api/cancel",
               "gradio_api/component_server", "gradio_api/no-such-route", "gradio_api/queue/join/")


def test_gradio_routes_refuse_bodies_without_a_session_before_reading_them(server):
    """#74.1: a POST to Gradio's routes without a session is answered 401 as soon as its headers
    arrive: 300 MiB announced and a few bytes sent, the answer comes at once (before, the server
    waited for the whole body to JSON-decode it); a chunked body too."""
    _, _, _, url = server
    for route in BODY_ROUTES:
        status, took = raw_post(url, f"Content-Length: {300 << 20}\r\n", [b'{"data": ['], route=route,
                                content_type="application/json", timeout=10)
        assert status == 401 and took < 5, (route, status, took)
    status, took = raw_post(url, "Transfer-Encoding: chunked\r\n", chunked(b"x" * (64 << 10), 64 << 10),
                            route="gradio_api/queue/join", content_type="application/json", timeout=10)
    assert status == 401 and took < 5, (status, took)
    r = httpx.put(url + "gradio_api/queue/join", content=b"{}")  # any method that may carry a body
    assert r.status_code == 401


def test_signed_in_bodies_are_capped(server):
    """#74.1: a signed-in body over MAX_BODY is answered 413 and the connection closed: by its
    Content-Length before a byte is read, a chunked one once it passes the cap; one below the cap
    reaches Gradio, and the app works on over the same session."""
    from labeling_app.web import MAX_BODY

    _, _, _, url = server
    h = signed_in(url, "frank", source="127.0.0.9")
    cookie = "Cookie: " + "; ".join(f"{k}={v}" for k, v in h.cookies.items()) + "\r\n"
    for route in ("gradio_api/queue/join", "gradio_api/call/next_binary"):
        status, took = raw_post(url, f"{cookie}Content-Length: {MAX_BODY + 1}\r\n", [b'{"data": ['], route=route,
                                content_type="application/json", timeout=10, source="127.0.0.9")
        assert status == 413 and took < 5, (route, status, took)
    status, took = raw_post(url, f"{cookie}Transfer-Encoding: chunked\r\n", chunked(b" " * (64 << 10), MAX_BODY),
                            route="gradio_api/queue/join", content_type="application/json", timeout=10,
                            source="127.0.0.9")
    assert status == 413 and took < 5, (status, took)
    # just under the cap: Gradio reads it (and refuses the made-up session for its own reason)
    r = h.post(url + "gradio_api/queue/join", content=b'{"data": [], "fn_index": 0, "session_hash": "x"}'
               + b" " * (MAX_BODY - 100), headers={"Content-Type": "application/json"})
    assert r.status_code not in (401, 413), (r.status_code, r.text[:200])
    c = Client(url, auth=("frank", PASSWORD), verbose=False, download_files=False, ssl_verify=False)
    assert "frank" in c.predict(api_name="/next_binary")[3]


def test_run_history_page_is_closed(server):
    """#74.2: Gradio's run-history page embeds every named endpoint (window.gradio_api_info), as
    /gradio_api/info and /openapi.json would: 401 without a session, and off for raters too."""
    _, _, _, url = server
    for path in ("gradio_api/runs", "gradio_api/runs/"):
        r = httpx.get(url + path)
        assert r.status_code == 401 and "gradio_api_info" not in r.text, (path, r.status_code)
    h = signed_in(url, "erin", source="127.0.0.10")
    r = h.get(url + "gradio_api/runs")
    assert r.status_code == 404 and "gradio_api_info" not in r.text
    assert h.get(url).status_code == 200  # the app's own page still opens


def test_api_schema_and_startup_events_need_a_session(server):
    """#58.8: FastAPI's /openapi.json is off; /gradio_api/startup-events needs a session once started."""
    _, _, _, url = server
    assert httpx.get(url + "openapi.json").status_code in (401, 404)
    assert httpx.get(url + "gradio_api/openapi.json").status_code == 401
    assert httpx.get(url + "gradio_api/startup-events").status_code == 401
    h = signed_in(url, "dave", source="127.0.0.8")
    assert h.get(url + "gradio_api/startup-events").status_code == 200


def test_a_round_of_other_prompts_needs_its_own_guidelines_and_gets_no_oracle_gold(tmp_path):
    """#56.3: a round of the user's own prompts never falls back to the shapes world: the packaged
    guidelines are refused with the key to set, and gold follows the data (no oracle gold)."""
    from labeling_app.ui import build_app

    root = tmp_path / "round"
    store = make_round(root, n_prompts=2, per_prompt=2, hostile=False)
    gens = store.to_pandas("generations")
    store.append("generations", gens.assign(prompt="a watercolour fox in the snow",
                                            image_id=[f"x{i}" for i in range(len(gens))]))
    store = Store(root)
    raters = make_raters(root / "raters.json", ["ann"])
    cfg = label_config(root, raters, guidelines=None, gold=GoldConfig(share=0.5))
    with pytest.raises(UserError, match="not shapes-world prompts") as e:
        build_app(cfg)
    assert "guidelines=" in e.value.fix and not (root / "gold").exists()
    own = tmp_path / "ours.md"
    own.write_text("---\nversion: fox-1\n---\nGood: the image shows what the prompt says.\n")
    app = build_app(replace(cfg, guidelines=str(own)))
    assert app.guidelines.version.startswith("fox-1+") and app.assigner.gold_answer == {}
