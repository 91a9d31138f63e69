"""End-to-end tests of tetherd's Centrifugo-compatible gateway with the stock JavaScript SDK: npm `centrifuge`
5.x (exact version pinned in tests/node/package-lock.json) under Node (over the `ws` package), and its browser
bundle in headless Chromium.

Each test starts its own tetherd (`--gateway CONFIG`, a Centrifugo v6 JSON config written here) on an
ephemeral loopback port, then runs one scenario script from tests/node/ as a subprocess with a timeout. The
script prints one JSON line: the facts it observed (`results`), every SDK event (`log`) and every frame its
sockets sent and received (`frames`); the assertions here are on exact values, and a failure shows the script's
error, its event log and tetherd's log.

Needs: node >= 18 and `bash tests/node/setup.sh` (scripts/test.sh runs it); Debian's `chromium` for the browser
tests (scripts/test.sh installs it). Tokens are HS256 JWTs minted with the standard library.
"""

import base64
import hashlib
import hmac
import http.server
import json
import os
import pathlib
import queue
import shutil
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request

import pytest

from chromium_util import page_report
from tetherd_proc import ROOT, Tetherd, run_bounded

NODE_DIR = ROOT / "tests" / "node"
SECRET = "tether-gateway-js-secret"
API_KEY = "tether-gateway-js-api-key"
NODE_TIMEOUT = 60  # seconds for one scenario subprocess (each script bounds itself at 30 s)


# --- tetherd with a gateway config ---------------------------------------------------------------------------

# Server pings every 2 s with a 1 s pong deadline: the liveness scenarios see several pings in seconds. A
# scenario with many clients in one Node process (fanout) takes Centrifugo's defaults instead (SLOW_PINGS): on a
# busy 2-core box one of 200 clients answering a ping more than 1 s late is load, not a defect.
FAST_PINGS = ("2s", "1s")
SLOW_PINGS = ("25s", "8s")


def gateway_config(allowed_origins=(), pings=FAST_PINGS):
    chat = {
        "name": "chat",
        "presence": True,
        "join_leave": True,
        "force_push_join_leave": True,
        "history_size": 100,
        "history_ttl": "300s",
        "force_recovery": True,
        "allow_subscribe_for_client": True,
        "allow_publish_for_subscriber": True,
        "allow_presence_for_subscriber": True,
        "allow_history_for_subscriber": True,
    }
    return {
        "client": {
            "token": {"hmac_secret_key": SECRET},
            "ping_interval": pings[0],
            "pong_timeout": pings[1],
            "allowed_origins": list(allowed_origins),
        },
        "http_api": {"key": API_KEY},
        "channel": {
            "without_namespace": {"allow_subscribe_for_client": True},
            # `secret` exists but clients may not subscribe to it (103); `nope` does not exist (102).
            # `small` keeps only 2 publications, so missing 4 cannot be recovered.
            "namespaces": [
                chat,
                {"name": "secret"},
                {"name": "small", "history_size": 2, "history_ttl": "300s", "force_recovery": True,
                 "allow_subscribe_for_client": True},
                # `room`: join/leave, recovery and positioning only for subscribers that ask for them.
                {"name": "room", "presence": True, "join_leave": True, "history_size": 10, "history_ttl": "300s",
                 "allow_subscribe_for_client": True, "allow_presence_for_subscriber": True,
                 "allow_history_for_subscriber": True},
            ],
        },
    }


class Gateway:
    def __init__(self, directory: pathlib.Path, allowed_origins=(), pings=FAST_PINGS):
        self.config_path = directory / "gateway.json"
        self.config_path.write_text(json.dumps(gateway_config(allowed_origins, pings), indent=2))
        self.server = Tetherd("--gateway", str(self.config_path))
        self.addr = self.server.addr
        self.ws_url = f"ws://{self.addr}/connection/websocket"

    def log_tail(self, n=40) -> str:
        return "\n".join(self.server.log[-n:])

    def api(self, method: str, body: dict, key: str = API_KEY):
        req = urllib.request.Request(
            f"http://{self.addr}/api/{method}",
            data=json.dumps(body).encode(),
            headers={"X-API-Key": key, "Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def stop(self):
        self.server.stop()


@pytest.fixture
def gateway(tmp_path):
    gw = Gateway(tmp_path)
    yield gw
    gw.stop()


def mint_token(claims: dict, secret: str = SECRET) -> str:
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


# --- node scenarios ------------------------------------------------------------------------------------------

def node_bin() -> str:
    node = os.environ.get("NODE_BIN") or shutil.which("node")
    if not node:
        pytest.fail("node not found on PATH (or set NODE_BIN): run `bash tests/node/setup.sh`, which installs it")
    return node


def run_node(script: str, gw: Gateway, **extra) -> dict:
    if not (NODE_DIR / "node_modules" / "centrifuge" / "package.json").is_file():
        pytest.fail("tests/node/node_modules is missing: run `bash tests/node/setup.sh` first")
    args = {"addr": gw.addr, "api_key": API_KEY, "secret": SECRET, "deadline_ms": 30000, **extra}
    try:
        proc = subprocess.run(
            [node_bin(), str(NODE_DIR / script), json.dumps(args)],
            cwd=NODE_DIR,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=NODE_TIMEOUT,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{script} ran past {NODE_TIMEOUT} s; stderr:\n{e.stderr}\ntetherd log:\n{gw.log_tail()}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        pytest.fail(
            f"{script} printed no JSON (exit {proc.returncode}); stdout:\n{proc.stdout[-3000:]}\n"
            f"stderr:\n{proc.stderr[-3000:]}\ntetherd log:\n{gw.log_tail()}"
        )
    out = json.loads(lines[-1])
    out["stderr"] = proc.stderr
    out["returncode"] = proc.returncode
    return out


def explain(out: dict, gw: Gateway, frames: bool = False) -> str:
    log = out.get("log", [])
    # The clients whose transport closed under them (a `connecting` event with a non-zero code: the SDK
    # reconnects) first: with 200 clients their story is long gone from the tail, which is the teardown.
    troubled = {e.get("who") for e in log if e.get("kind") == "connecting" and e.get("code") not in (0, None)}
    parts = [
        f"script error: {out.get('error')}",
        "results: " + json.dumps(out.get("results"), indent=1, sort_keys=True),
    ]
    if troubled:
        parts.append(f"SDK events of the clients that lost their transport ({', '.join(sorted(map(str, troubled)))}):\n"
                     + "\n".join([json.dumps(e, sort_keys=True)[:600] for e in log if e.get("who") in troubled][:80]))
    parts.append("SDK events:\n" + "\n".join(json.dumps(e, sort_keys=True)[:600] for e in log[-60:]))
    if frames:
        parts.append("frames: " + json.dumps(out.get("frames"), indent=1)[:12000])
    if out.get("stderr"):
        parts.append("node stderr:\n" + out["stderr"][-2000:])
    server_log = getattr(getattr(gw, "server", None), "log", None) or []
    unusual = [line for line in server_log if " WARN " in line or " ERROR " in line
               or (" close " in line and "code=1005" not in line and "code=1000" not in line)]
    if unusual:
        parts.append("tetherd's warnings, errors and closes other than 1000/1005:\n" + "\n".join(unusual[:40]))
    parts.append("tetherd log:\n" + gw.log_tail())
    return "\n".join(parts)


def require_ok(out: dict, gw: Gateway):
    assert out["ok"] and out["error"] is None, explain(out, gw, frames=True)


# --- scenario 1 ----------------------------------------------------------------------------------------------

def test_token_connect_publish_and_subscribe_errors(gateway):
    out = run_node("basic.mjs", gateway)
    r = out["results"]
    why = explain(out, gateway)

    # Valid HS256 token -> connected with a client id.
    if "alice_connected" in r:
        ac = r["alice_connected"]
        assert ac["state"] == "connected", why
        assert ac["transport"] == "websocket", why
        assert isinstance(ac["client"], str) and ac["client"], f"no client id in the connect result: {why}"
    # Bad signature -> disconnected 3500, terminal: one socket, never connected, still disconnected 1.5 s later.
    if "bad_token" in r:
        bt = r["bad_token"]
        assert bt["disconnected"]["code"] == 3500, f"bad signature must close with 3500: {why}"
        assert bt["state"] == "disconnected", why
        assert bt["sockets_opened"] == 1, f"the SDK reconnected after the bad token: {why}"
        assert bt["connected_events"] == 0, why
        assert bt["connecting_events"] == 1, why
        assert bt["socket_close"][0]["code"] == 3500, why
    # Subscribe + API publish -> same data.
    if "news_publication" in r:
        assert r["news_subscribed"] == {"recoverable": False, "positioned": False, "wasRecovering": False}, why
        assert r["api_publish"]["status"] == 200 and "result" in r["api_publish"]["body"], why
        assert r["news_publication"]["data"] == {
            "text": "hello from the API", "n": 1, "nested": {"list": [1, 2, 3], "flag": True, "none": None},
            "utf8": "zażółć ✓",
        }, why
        assert r["news_publication"]["info"] is None, f"an API publication carries no client info: {why}"
    # Client publish -> the other client gets it with info.user/info.client of the publisher; offset 1 (history on).
    if "client_publication" in r:
        cp = r["client_publication"]
        assert cp["data"] == {"text": "hi from bob", "seq": 7}, why
        assert cp["info"] is not None, f"client publication without info: {why}"
        assert cp["info"]["user"] == "bob", why
        assert cp["info"]["client"] == cp["bob_client"], why
        assert cp["offset"] == 1, f"first publication in a history channel must have offset 1: {why}"
        assert r["client_publication_to_publisher"] == {"data": {"text": "hi from bob", "seq": 7}, "user": "bob"}, why
    if "forbidden_publish" in r:
        assert r["forbidden_publish"] == {"code": 103, "message": "permission denied"}, why
    if "forbidden_subscribe" in r:
        assert r["forbidden_subscribe"] == {"code": 103, "reason": "permission denied", "state": "unsubscribed"}, why
    if "unknown_namespace" in r:
        assert r["unknown_namespace"] == {"code": 102, "reason": "unknown channel", "state": "unsubscribed"}, why
    require_ok(out, gateway)
    assert r["after_errors"]["state"] == "connected", why
    assert r["after_errors"]["sockets_opened"] == 1, f"subscribe/publish errors must not cost the connection: {why}"
    assert r["after_errors"]["news_state"] == "subscribed", why
    assert len(r["after_errors"]["news_publications"]) == 2, why
    assert r["after_errors"]["subscribe_errors_logged"] == 0, why


# --- scenario 2 ----------------------------------------------------------------------------------------------

def test_connect_and_subscribes_in_one_frame(gateway):
    out = run_node("batch.mjs", gateway)
    r = out["results"]
    why = explain(out, gateway, frames=True)
    require_ok(out, gateway)
    # The SDK really did put connect + 3 subscribes in its first frame (else this test proves nothing).
    assert [m["commands"] for m in r["first_frame"]] == [["connect"], ["subscribe"], ["subscribe"], ["subscribe"]], why
    assert [m["channel"] for m in r["first_frame"][1:]] == ["news", "chat:batch1", "chat:batch2"], why
    assert [m["id"] for m in r["first_frame"]] == [1, 2, 3, 4], why
    assert r["frames_sent_before_all_subscribed"] == 1, why
    # Four replies, in order, each under its command's name.
    assert r["reply_order"][:4] == [
        {"id": 1, "kinds": ["connect"]},
        {"id": 2, "kinds": ["subscribe"]},
        {"id": 3, "kinds": ["subscribe"]},
        {"id": 4, "kinds": ["subscribe"]},
    ], why
    assert r["states"] == {"news": "subscribed", "chat:batch1": "subscribed", "chat:batch2": "subscribed"}, why
    assert r["subscribed"]["news"]["recoverable"] is False, why
    for ch in ("chat:batch1", "chat:batch2"):
        s = r["subscribed"][ch]
        assert (s["recoverable"], s["positioned"], s["wasRecovering"], s["recovered"]) == (True, True, False, False), why
        assert s["streamPosition"]["offset"] == 0 and s["streamPosition"]["epoch"], why
    assert r["publications"] == {
        "news": [{"data": {"for": "news"}, "offset": None}],
        "chat:batch1": [{"data": {"for": "chat:batch1"}, "offset": 1}],
        "chat:batch2": [{"data": {"for": "chat:batch2"}, "offset": 1}],
    }, why
    assert r["sockets_opened"] == 1, why


# --- scenario 3 ----------------------------------------------------------------------------------------------

def test_recovery_after_server_disconnect_with_reconnect_code(gateway):
    out = run_node("recovery.mjs", gateway)
    r = out["results"]
    why = explain(out, gateway, frames=True)
    if "first_subscribed" in r:
        fs = r["first_subscribed"]
        assert (fs["recoverable"], fs["positioned"], fs["wasRecovering"], fs["recovered"]) == (True, True, False, False), why
        assert fs["streamPosition"]["offset"] == 0 and fs["streamPosition"]["epoch"], why
        epoch = fs["streamPosition"]["epoch"]
        if "publish_1" in r:
            assert r["publish_1"] == {"offset": 1, "epoch": epoch}, why
    if "connecting_after_disconnect" in r:
        assert r["api_disconnect"] == {"status": 200, "body": {"result": {}}}, why
        assert r["connecting_after_disconnect"] == {"code": 4000, "reason": "test"}, why
        assert r["first_socket_close"]["code"] == 4000, why
    if "publish_away" in r and "first_subscribed" in r:
        assert [p.get("offset") for p in r["publish_away"]] == [2, 3, 4], why
        assert all(p.get("epoch") == epoch for p in r["publish_away"]), why
    if "resubscribed" in r:
        assert r["published_away_within_ms"] < 1500, f"test too slow to publish while the client was away: {why}"
        assert r["reconnected"] == {"new_client_id": True, "sockets_opened": 2}, why
        assert r["resubscribe_request"] == {"recover": True, "offset": 1, "epoch": epoch, "epoch_matches_first": True}, why
        rs = r["resubscribed"]
        assert rs["wasRecovering"] is True, why
        assert rs["recovered"] is True, f"recovery failed: {why}"
        assert rs["hasRecoveredPublications"] is True, why
        assert (rs["recoverable"], rs["positioned"]) == (True, True), why
    require_ok(out, gateway)
    assert r["publications_after_reconnect"] == [
        {"data": {"n": 2}, "offset": 2},
        {"data": {"n": 3}, "offset": 3},
        {"data": {"n": 4}, "offset": 4},
        {"data": {"n": 5, "live": True}, "offset": 5},
    ], why
    assert r["recovered_pubs_after_subscribed_event"] is True, why
    assert [p["offset"] for p in r["all_publications"]] == [1, 2, 3, 4, 5], why
    assert r["publish_live"] == {"offset": 5, "epoch": epoch}, why
    # unsubscribe() + subscribe() on the same Subscription object
    assert r["resubscribe2_request"] == {"recover": True, "offset": 5, "epoch_matches_first": True}, why
    assert (r["resubscribed2"]["wasRecovering"], r["resubscribed2"]["recovered"]) == (True, True), why
    assert r["publications_after_resubscribe"] == [
        {"data": {"n": 6}, "offset": 6},
        {"data": {"n": 7}, "offset": 7},
    ], why
    assert r["sockets_opened"] == 2, why


# --- scenario 4 ----------------------------------------------------------------------------------------------

def test_presence_and_join_leave_between_two_clients(gateway):
    out = run_node("presence.mjs", gateway)
    r = out["results"]
    why = explain(out, gateway)
    require_ok(out, gateway)
    pat, quin = r["clients"]["pat"], r["clients"]["quin"]
    assert pat != quin, why
    assert r["join_seen_by_pat"] == {"user": "quin", "client": quin}, why
    assert r["presence"] == {pat: {"user": "pat", "client": pat}, quin: {"user": "quin", "client": quin}}, why
    assert r["presence_stats"] == {"numClients": 2, "numUsers": 2}, why
    assert r["presence_stats_quin"] == {"numClients": 2, "numUsers": 2}, why
    assert r["api_presence_stats"] == {"num_clients": 2, "num_users": 2}, why
    assert r["api_presence"] == {"presence": {pat: {"user": "pat", "client": pat}, quin: {"user": "quin", "client": quin}}}, why
    assert r["leave_seen_by_pat"] == {"user": "quin", "client": quin}, why
    assert r["presence_stats_after_leave"] == {"numClients": 1, "numUsers": 1}, why
    assert r["presence_after_leave"] == {pat: {"user": "pat", "client": pat}}, why
    pat2 = r["second_connection"]["client"]
    assert r["second_connection"]["join"] == {"user": "pat", "client": pat2}, why
    assert r["presence_stats_same_user"] == {"numClients": 2, "numUsers": 1}, f"two connections of one user: {why}"
    assert r["unsubscribe_leave"] == {"user": "pat", "client": pat2}, why
    assert r["presence_stats_after_unsubscribe"] == {"numClients": 1, "numUsers": 1}, why
    assert r["pat2_state"] == "connected", why


# --- scenario 5 ----------------------------------------------------------------------------------------------

def test_api_disconnect_default_is_terminal_3503(gateway):
    out = run_node("disconnect.mjs", gateway)
    r = out["results"]
    why = explain(out, gateway)
    if "disconnected" in r:
        assert r["api_disconnect"] == {"status": 200, "body": {"result": {}}}, why
        assert r["disconnected"] == {"code": 3503, "reason": "force disconnect"}, why
    require_ok(out, gateway)
    a = r["after"]
    assert a["state"] == "disconnected", why
    assert a["sockets_opened"] == 1, f"the SDK reconnected after 3503: {why}"
    assert a["socket_close"]["code"] == 3503, why
    assert a["connected_events"] == 1 and a["connecting_events"] == 1, why
    assert a["sub_state"] == "subscribing", f"client-side subs wait for a connect() in `subscribing`: {why}"
    o = r["other_user"]
    assert o["state"] == "connected" and o["sockets_opened"] == 1 and o["socket_close"] is None, f"another user was hit: {why}"
    assert o["disconnect_events"] == 0, why


# --- beyond the six: tokens, history, server API actions, liveness, limits ------------------------------------

def test_token_expired_missing_and_refresh(gateway):
    out = run_node("tokens.mjs", gateway)
    r = out["results"]
    why = explain(out, gateway, frames=True)
    if "expired" in r:
        e = r["expired"]
        assert e["first_reply_error"] == {"code": 109, "message": "token expired"}, f"expired token must get error 109: {why}"
        assert e["connect_error_events"] == [109], why
        assert (e["get_token_calls"], e["sockets_opened"], e["state"]) == (1, 2, "connected"), why
    if "missing" in r:
        m = r["missing"]
        assert m["disconnected"]["code"] == 3501, f"no token, anonymous off: close 3501: {why}"
        assert m["socket_close"]["code"] == 3501, why
        assert (m["state"], m["sockets_opened"], m["connected_events"]) == ("disconnected", 1, 0), why
    if "refresh_connect_result" in r:
        c = r["refresh_connect_result"]
        assert c is not None and c["expires"] is True and c["ttl"] in (1, 2, 3), f"connect result for a token with exp: {why}"
    require_ok(out, gateway)
    f = r["refresh"]
    assert f["refresh_sent"] is True and f["get_token_calls"] == 1, why
    assert f["reply_error"] is None, why
    assert f["reply"] is not None and f["reply"]["expires"] is True and 55 <= f["reply"]["ttl"] <= 60, why
    assert f["reply"]["has_client"] is True, why
    assert (f["state"], f["sockets_opened"], f["disconnect_events"]) == ("connected", 1, 0), why


def test_history_calls_and_unrecoverable_position(gateway):
    out = run_node("history.mjs", gateway)
    r = out["results"]
    why = explain(out, gateway)
    if "history" in r:
        e = r["epoch"]
        pubs = lambda *ns: {"offsets": list(ns), "data": [{"n": n} for n in ns], "offset": 5, "epoch": e}
        h = r["history"]
        assert h["limit0"] == pubs(), why
        assert h["limit10"] == pubs(1, 2, 3, 4, 5), why
        assert h["all"] == pubs(1, 2, 3, 4, 5), why
        assert h["since2_limit2"] == pubs(3, 4), why
        assert h["reverse_limit2"] == pubs(5, 4), why
        assert h["since4_reverse"] == pubs(3, 2, 1), why
    if "client_state_after_errors" in r:
        assert r["history_wrong_epoch"] == {"code": 112, "message": "unrecoverable position"}, why
        assert r["history_not_available"] == {"code": 108, "message": "not available"}, why
        assert r["history_not_subscribed"] == {"code": 103, "message": "permission denied"}, why
        assert r["presence_not_available"] == {"code": 108, "message": "not available"}, why
        assert r["client_state_after_errors"] == {"state": "connected", "sockets_opened": 1}, why
    require_ok(out, gateway)
    assert [p["offset"] for p in r["small_published_away"]] == [2, 3, 4, 5], why
    small_epoch = r["small_published_away"][0]["epoch"]
    assert r["small_resubscribed"] == {
        "wasRecovering": True, "recovered": False, "hasRecoveredPublications": False,
        "streamPosition": {"offset": 5, "epoch": small_epoch},
    }, f"4 missed with history_size 2 cannot be recovered: {why}"
    assert r["history_channel_resubscribed"] == {"wasRecovering": True, "recovered": True}, why
    assert r["small_publications_after_reconnect"] == [{"data": {"n": 6, "live": True}, "offset": 6}], why


def test_server_api_subscribe_unsubscribe_broadcast(gateway):
    out = run_node("server_api.mjs", gateway)
    r = out["results"]
    why = explain(out, gateway)
    if "server_publication" in r:
        assert r["api_subscribe"] == {"status": 200, "body": {"result": {}}}, why
        assert r["server_subscribed"]["channel"] == "chat:server-side", why
        assert r["server_publication"] == {"data": {"to": "server-side sub"}, "offset": 1}, why
    if "client_sub_unsubscribed" in r:
        assert r["broadcast"]["status"] == 200, why
        assert len(r["broadcast"]["body"]["result"]["responses"]) == 2, why
        assert r["client_sub_unsubscribed"] == {"code": 2000, "reason": "server unsubscribe", "state": "unsubscribed",
                                                "resubscribes": 0}, why
    require_ok(out, gateway)
    assert r["after_unsubscribes"] == {"publications_after": 0, "state": "connected", "sockets_opened": 1}, why
    assert r["wrong_key_status"] == 401, why


def test_idle_sdk_kept_alive_by_server_pings(gateway):
    out = run_node("liveness.mjs", gateway, mode="pings", idle_ms=8000)
    r = out["results"]
    why = explain(out, gateway, frames=True)
    require_ok(out, gateway)
    p = r["pings"]
    assert (p["connect_ping"], p["connect_pong"]) == (2, True), why
    # 8 s at a 2 s interval: 3 or 4 pings (the first may be jittered up to one interval); a pong for each.
    assert p["pings_received"] in (3, 4, 5), why
    assert p["pongs_sent"] == p["pings_received"], why
    assert (p["state"], p["sockets_opened"], p["socket_close"], p["no_ping_events"]) == ("connected", 1, None, 0), why


def test_message_over_size_limit_is_terminal_1009(gateway):
    out = run_node("liveness.mjs", gateway, mode="size")
    r = out["results"]
    why = explain(out, gateway)
    require_ok(out, gateway)
    assert r["fits"] == {"state": "connected"}, why
    t = r["too_big"]
    assert t["socket_close"]["code"] == 1009, f"a 100 KiB message over the 64 KiB default limit: {why}"
    assert t["event"] == {"kind": "disconnected", "code": 3, "reason": "message size limit exceeded"}, why
    assert (t["state"], t["sockets_opened"], t["big_publications_received"]) == ("disconnected", 1, 0), why


def test_recovery_while_publications_keep_flowing(gateway):
    out = run_node("extras.mjs", gateway, mode="race", publish_ms=3000)
    r = out["results"]
    why = explain(out, gateway)
    require_ok(out, gateway)
    race = r["race"]
    assert race["published"] >= 50, f"the publisher made too few publications to mean anything: {why}"
    assert race["resubscribes"] == [{"wasRecovering": True, "recovered": True}] * 2, why
    assert race["sockets_opened"] == 3, why
    # What the server sent, over the three sockets: every offset once, in order, none before the subscribe reply.
    assert race["wire_pushes_before_subscribe_reply"] == 0, why
    assert race["wire_contiguous"] is True, f"offsets on the wire not 1..{race['published']} in order: {why}"
    # What the SDK emitted: every offset once (order: see extras.mjs on centrifuge-js's dispatch race).
    assert (race["received"], race["missing_count"], race["duplicates"], race["data_mismatch"]) == (race["published"], 0, [], 0), why


def test_connection_info_claim_reaches_join_presence_and_publications(gateway):
    out = run_node("extras.mjs", gateway, mode="info")
    r = out["results"]
    why = explain(out, gateway)
    require_ok(out, gateway)
    vic, info = r["vic_client"], {"name": "Vic", "tags": ["a", "b"]}
    assert r["join_info"] == {"user": "vic", "client": vic, "connInfo": info}, why
    assert r["presence_vic"] == {"user": "vic", "client": vic, "conn_info": info, "connInfo": info}, why
    assert r["publication_info"] == {"user": "vic", "client": vic, "connInfo": info}, why


def test_subscription_tokens(gateway):
    out = run_node("extras.mjs", gateway, mode="subtoken")
    r = out["results"]
    why = explain(out, gateway, frames=True)
    if "private_without_token" in r:
        assert r["private_without_token"] == {"code": 103, "reason": "permission denied"}, f"$ channel without a token: {why}"
    if "private_with_token" in r:
        assert r["private_with_token"] == {"kind": "subscribed", "code": None}, f"$ channel with a valid token: {why}"
    if "private_publication" in r:
        assert r["private_publication"] == {"secret": 1}, why
    if "token_grants_namespace" in r:
        assert r["token_grants_namespace"] == {"kind": "subscribed", "code": None}, f"a subscription token grants access: {why}"
    if "expired_sub_token" in r:
        assert r["expired_sub_token"] == {"kind": "subscribed", "code": None, "get_token_calls": 1, "errors": [109]}, why
        assert r["tia_after"] == {"state": "connected", "sockets_opened": 1}, why
    require_ok(out, gateway)
    m = r["token_channel_mismatch"]
    assert (m["kind"], m["code"]) == ("disconnected", 3500), f"a token for another channel: close 3500: {why}"
    assert m["socket_close"]["code"] == 3500, why


def test_server_side_subscriptions_from_token_recover_on_reconnect(gateway):
    out = run_node("extras.mjs", gateway, mode="serversubs")
    r = out["results"]
    why = explain(out, gateway, frames=True)
    if "first" in r:
        assert r["first"]["recoverable"] is True and r["first"]["wasRecovering"] is False, why
        assert r["first"]["streamPosition"]["offset"] == 0, why
    require_ok(out, gateway)
    assert r["connect_subs_request"] == {"recover": True, "offset": 1, "epoch_matches": True}, why
    assert r["resubscribed"] == {"wasRecovering": True, "recovered": True}, why
    assert r["publications_after"] == [
        {"data": {"n": 2}, "offset": 2}, {"data": {"n": 3}, "offset": 3}, {"data": {"n": 4}, "offset": 4},
    ], why
    assert r["sockets_opened"] == 2, why


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_restart_new_epoch_is_not_recovered(tmp_path):
    from tetherd_proc import tetherd_bin

    config = tmp_path / "gateway.json"
    config.write_text(json.dumps(gateway_config()))
    port = free_port()

    class Addr:  # what run_node/explain need: the address and a log (the script runs tetherd itself)
        addr = f"127.0.0.1:{port}"

        @staticmethod
        def log_tail(n=40):
            return "(tetherd run by restart.mjs: see results.tetherd_log)"

    out = run_node("restart.mjs", Addr, port=port, tetherd_bin=str(tetherd_bin()), config=str(config))
    r = out["results"]
    why = explain(out, Addr) + "\ntetherd log:\n" + "\n".join(r.get("tetherd_log") or [])
    require_ok(out, Addr)
    assert r["connecting"] == {"code": 1, "reason": "transport closed"}, why
    assert r["resubscribed"] == {
        "wasRecovering": True, "recovered": False, "hasRecoveredPublications": False, "offset": 0,
        "new_epoch": True, "asked_with_old_epoch": True,
    }, f"after a restart the old epoch cannot be recovered: {why}"
    assert r["api_publish_after"]["offset"] == 1, why
    assert r["publications_after_restart"] == [{"data": {"n": "after restart"}, "offset": 1}], why


@pytest.fixture
def slow_ping_gateway(tmp_path):
    gw = Gateway(tmp_path, pings=SLOW_PINGS)
    yield gw
    gw.stop()


def test_two_hundred_sdk_clients_fan_out(slow_ping_gateway):
    gateway = slow_ping_gateway
    out = run_node("extras.mjs", gateway, mode="fanout", clients=200)
    r = out["results"]
    why = explain(out, gateway)
    require_ok(out, gateway)
    assert r["api_presence_stats"] == {"num_clients": 200, "num_users": 50}, why
    f = r["fanout"]
    assert (f["connected"], f["reconnects"]) == (200, 0), why
    assert f["clients_with_wrong_sequence"] == 0 and f["deliveries"] == 2000, f"every client gets 1..10 in order: {why}"


def test_channel_limit_128_in_one_connect_frame(gateway):
    out = run_node("extras.mjs", gateway, mode="limit")
    r = out["results"]
    why = explain(out, gateway)
    require_ok(out, gateway)
    lim = r["limit"]
    assert lim["commands_in_first_frame"] == 130, f"connect + 129 subscribes in one frame: {why}"
    assert lim["subscribed"] == 128, why
    assert lim["unsubscribed"] == [{"channel": "news128", "code": 106, "reason": "limit exceeded"}], why
    assert (lim["state"], lim["sockets_opened"]) == ("connected", 1), why


@pytest.fixture(scope="module")
def options_run(tmp_path_factory):
    gw = Gateway(tmp_path_factory.mktemp("options"))
    try:
        out = run_node("extras.mjs", gw, mode="options")
        yield out, gw
    finally:
        gw.stop()


def test_subscribe_since_position_and_ignored_delta(options_run):
    out, gw = options_run
    r = out["results"]
    why = explain(out, gw)
    require_ok(out, gw)
    assert r["api_history_position"] == {"offset": 5, "epoch_present": True}, why
    assert r["since_request"] == {"recover": True, "offset": 2}, why
    assert r["since_subscribed"] == {"wasRecovering": True, "recovered": True}, why
    assert r["since_publications"] == [3, 4, 5], why
    assert r["delta_request_sent"] is True, why
    big = {"text": "z" * 300}
    assert r["delta_publications"] == [{**big, "n": 1}, {**big, "n": 2}], why


def test_client_asked_recovery_for_subscribers(options_run):
    # Centrifugo OnSubscribe: `if e.Recoverable && (AllowRecovery || hasAccessToHistory(c, ch, opts, true))` - the
    # `true` (forceSubscribed) counts the subscription being made, so allow_history_for_subscriber grants it.
    out, gw = options_run
    r = out["results"]
    why = explain(out, gw)
    require_ok(out, gw)
    assert r["client_asked_recovery_request"] == {"recoverable": True, "positioned": True}, why
    assert r["client_asked_recovery"] == {"kind": "subscribed", "recoverable": True, "positioned": True, "offset": 0,
                                          "epoch_present": True}, f"recoverable/positioned asked by a subscriber: {why}"


def test_join_leave_asked_by_subscriber(options_run):
    # Centrifugo OnSubscribe: `if e.JoinLeave && JoinLeave && hasAccessToPresence(c, ch, opts, true)` -> pushes.
    out, gw = options_run
    r = out["results"]
    why = explain(out, gw)
    require_ok(out, gw)
    assert r["join_leave_request"] == {"join_leave": True}, why
    kay = r["join_leave"]["kay_client"]
    assert r["join_leave"]["jay_join"] == {"user": "kay", "client": kay}, f"joinLeave: true subscriber gets joins: {why}"
    assert r["join_leave"]["jay_leave"] == {"user": "kay", "client": kay}, why
    assert r["join_leave"]["kay_join_leave_events"] == 0, f"a subscriber that did not ask gets no join/leave: {why}"


def test_rpc_without_proxy_is_method_not_found(gateway):
    out = run_node("extras.mjs", gateway, mode="rpc")
    r = out["results"]
    why = explain(out, gateway)
    require_ok(out, gateway)
    assert r["rpc"] == {"code": 104, "message": "method not found"}, why
    assert r["after"] == {"state": "connected", "sockets_opened": 1}, why


# --- scenario 6: a real browser ------------------------------------------------------------------------------

class PageServer:
    """Loopback HTTP server: / -> the test page, /centrifuge.js -> the SDK's browser bundle, /ready -> calls
    `on_ready(query)` before answering, /report -> queued for the test. Stopped by `close()`."""

    def __init__(self, on_ready=None):
        page = (NODE_DIR / "web" / "gateway.html").read_bytes()
        bundle_path = NODE_DIR / "node_modules" / "centrifuge" / "dist" / "centrifuge.js"
        if not bundle_path.is_file():
            pytest.fail("tests/node/node_modules is missing: run `bash tests/node/setup.sh` first")
        bundle = bundle_path.read_bytes()
        self.reports: "queue.Queue[dict]" = queue.Queue()
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path, _, query = self.path.partition("?")
                outer.requests.append(path)
                q = {k: v[0] for k, v in urllib.parse.parse_qs(query, keep_blank_values=True).items()}
                status, ctype, body = 200, "text/plain", b"ok\n"
                if path == "/":
                    ctype, body = "text/html; charset=utf-8", page
                elif path == "/centrifuge.js":
                    ctype, body = "text/javascript; charset=utf-8", bundle
                elif path == "/ready":
                    if on_ready:
                        on_ready(q)
                elif path == "/report":
                    outer.reports.put(q)
                else:
                    status, body = 404, b"not found\n"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def run_page(gw: Gateway, pages: PageServer, limit: float = 45, **query) -> dict:
    url = f"{pages.origin}/?" + urllib.parse.urlencode({"ws": gw.ws_url, **query})
    return page_report(url, pages.reports, limit, prefix="tether-gw-chromium-",
                       context=lambda: f"requests: {pages.requests}\ntetherd log:\n{gw.log_tail()}")


BROWSER_DATA = {"text": "to the browser", "n": 42, "utf8": "żółw ✓", "list": [1, {"a": None}]}


def test_browser_sdk_receives_api_publication(tmp_path):
    published = []
    gw_holder = {}

    def on_ready(q):
        # The page is subscribed: publish through the server API before answering /ready.
        published.append((q.get("client"), gw_holder["gw"].api("publish", {"channel": "chat:browser", "data": BROWSER_DATA})))

    pages = PageServer(on_ready)
    gw = Gateway(tmp_path, allowed_origins=[pages.origin])
    gw_holder["gw"] = gw
    try:
        token = mint_token({"sub": "browser-user"})
        report = run_page(gw, pages, mode="receive", token=token, channel="chat:browser", deadline_ms=20000)
        why = f"page report: {report}\npublished: {published}\npage requests: {pages.requests}\ntetherd log:\n{gw.log_tail()}"
        assert report.get("outcome") == "done", why
        assert report["origin"] == pages.origin, why
        assert json.loads(report["data"]) == BROWSER_DATA, why
        assert report["offset"] == "1", why
        assert report["has_info"] == "false", why
        assert report["connected_count"] == "1", why
        assert report["client"] and published and published[0][0] == report["client"], why
        assert published[0][1][0] == 200 and "result" in published[0][1][1], why
        events = [e.split("@")[0] for e in report["events"].split("|")]
        assert events[:4] == ["subscribing:0", "connecting:0:connect called", "connected:websocket", "subscribed"], why
        assert events.count("publication") == 1, why
        assert not [e for e in events if e.startswith(("disconnected", "error", "unsubscribed"))], why
    finally:
        gw.stop()
        pages.close()


def test_browser_refused_when_origin_not_allowed(tmp_path):
    pages = PageServer()
    gw = Gateway(tmp_path, allowed_origins=["http://allowed.example"])
    try:
        token = mint_token({"sub": "browser-user"})
        report = run_page(gw, pages, mode="refused", token=token, wait_ms=3000, deadline_ms=20000)
        why = f"page report: {report}\ntetherd log:\n{gw.log_tail()}"
        assert report.get("outcome") == "waited", why
        assert report["connected_count"] == "0", f"the browser connected from a disallowed origin: {why}"
        assert report["final_state"] != "connected", why
        events = [e.split("@")[0] for e in report["events"].split("|")]
        # The SDK did try (transport error 2 "transport closed" while connecting) and kept retrying (its reconnect
        # delay is 0.5-1 s at first, so at least two attempts in 3 s), never connected, never gave up.
        assert events[0] == "connecting:0:connect called", why
        assert events.count("error:transport:2") >= 2, why
        assert set(events[1:]) == {"error:transport:2"}, why
        assert report["final_state"] == "connecting", why

        # The same handshake outside the browser: with the page's Origin -> 403; without an Origin -> accepted.
        import websockets

        async def handshake(origin):
            kwargs = {"origin": origin} if origin else {}
            try:
                async with websockets.connect(gw.ws_url, open_timeout=5, **kwargs):
                    return 101
            except websockets.exceptions.InvalidStatus as e:
                return e.response.status_code

        assert run_bounded(handshake(pages.origin), 10) == 403, why
        assert run_bounded(handshake(None), 10) == 101, why
    finally:
        gw.stop()
        pages.close()
