#!/usr/bin/env python3
"""Run the Autobahn|Testsuite fuzzing client against a WebSocket server and summarize the result.

    python3 tests/autobahn/run.py [options] -- SERVER-COMMAND [ARGS...]

The server command is started in its own process group with every "{port}" in its arguments replaced
by a free loopback port (also given as $PORT); it must listen on 127.0.0.1:{port} and echo every
message back (text as text, binary as binary). Once the port accepts connections, wstest
(-m fuzzingclient, installed by setup.sh beside this file, run first if missing) runs the cases
against ws://127.0.0.1:{port}; then index.json is read and a summary by behavior printed.

Exit status: 0 when every case ran and none failed; 1 when a case failed (behavior FAILED, WRONG CODE
or UNCLEAN, or behaviorClose FAILED, WRONG CODE or UNCLEAN), when a case is missing from the report, or
when --require-compression is given and a case is UNIMPLEMENTED; 2 on a usage or setup error, a server
that never listened, or wstest running past --timeout. Everything started is killed before exit.

Examples:
    python3 tests/autobahn/run.py -- target/release/examples/echo 127.0.0.1:{port}
    python3 tests/autobahn/run.py --cases '1.*' '2.*' --exclude '9.*' -- ./my-echo-server --port {port}
"""

import argparse
import collections
import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PASS = {"OK", "NON-STRICT", "INFORMATIONAL"}
CLOSE_FAIL = {"FAILED", "WRONG CODE", "UNCLEAN"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, deadline):
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def kill_group(proc, grace=3.0):
    """SIGTERM the process group started for proc, then SIGKILL what is left."""
    if proc is None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass


def text(s, limit=400):
    s = re.sub(r"<br\s*/?>", " ", str(s))
    s = html.unescape(re.sub(r"<[^>]+>", "", s))
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 4] + " ..."


def case_key(case_id):
    return tuple(int(x) for x in case_id.split("."))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--cases", nargs="+", default=["*"], metavar="CASE",
                    help='case ids or patterns as wstest takes them (default: "*", all 517)')
    ap.add_argument("--exclude", nargs="+", default=[], metavar="CASE", help="case ids or patterns to leave out")
    ap.add_argument("--agent", default="server", help="agent name in the report (default: server)")
    ap.add_argument("--port", type=int, default=0, help="loopback port for the server (default: a free one)")
    ap.add_argument("--timeout", type=float, default=1800, help="limit for the wstest run in seconds (default: 1800)")
    ap.add_argument("--start-timeout", type=float, default=30, help="seconds to wait for the server to listen (default: 30)")
    ap.add_argument("--require-compression", action="store_true",
                    help="fail on UNIMPLEMENTED cases (12.*/13.* are UNIMPLEMENTED without permessage-deflate)")
    ap.add_argument("--outdir", help="keep reports (index.json, per-case JSON/HTML, wstest.log) here; default: a temp dir, removed")
    ap.add_argument("--wstest", default=os.environ.get("AUTOBAHN_WSTEST"),
                    help="wstest executable (default: $AUTOBAHN_WSTEST, else from tests/autobahn/setup.sh)")
    ap.add_argument("--verbose", action="store_true", help="show wstest's and the server's output")
    ap.add_argument("server", nargs=argparse.REMAINDER, help="-- SERVER-COMMAND [ARGS...] ({port} is substituted)")
    a = ap.parse_args()

    cmd = a.server[1:] if a.server[:1] == ["--"] else a.server
    if not cmd:
        ap.error("give the server command after --")

    wstest = a.wstest
    if not wstest:
        try:
            out = subprocess.run(["bash", os.path.join(HERE, "setup.sh")], check=True, stdout=subprocess.PIPE, text=True)
        except subprocess.CalledProcessError as e:
            print("autobahn: setup.sh failed (exit %d)" % e.returncode, file=sys.stderr)
            return 2
        wstest = out.stdout.strip().splitlines()[-1]

    port = a.port or free_port()
    tmp = tempfile.mkdtemp(prefix="autobahn-")
    outdir = os.path.abspath(a.outdir) if a.outdir else os.path.join(tmp, "reports")
    os.makedirs(outdir, exist_ok=True)
    spec = {
        "outdir": outdir,
        "servers": [{"agent": a.agent, "url": "ws://127.0.0.1:%d" % port}],
        "cases": a.cases,
        "exclude-cases": a.exclude,
        "exclude-agent-cases": {},
    }
    spec_path = os.path.join(tmp, "fuzzingclient.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f, indent=2)

    server = client = None
    quiet = None if a.verbose else subprocess.DEVNULL
    try:
        argv = [x.replace("{port}", str(port)) for x in cmd]
        print("autobahn: starting server: %s" % " ".join(argv), flush=True)
        server = subprocess.Popen(argv, start_new_session=True, stdout=quiet, stderr=quiet,
                                  env=dict(os.environ, PORT=str(port)))
        if not wait_listening(port, server, time.monotonic() + a.start_timeout):
            print("autobahn: server did not listen on 127.0.0.1:%d (exit status %s)" % (port, server.poll()), file=sys.stderr)
            return 2

        log_path = os.path.join(outdir, "wstest.log")
        print("autobahn: wstest -m fuzzingclient, cases %s%s, against ws://127.0.0.1:%d (log: %s)"
              % (" ".join(a.cases), (" excluding " + " ".join(a.exclude)) if a.exclude else "", port,
                 log_path if a.outdir else "kept only on failure"), flush=True)
        started = time.monotonic()
        with open(log_path, "w") as log:
            client = subprocess.Popen([wstest, "-m", "fuzzingclient", "-s", spec_path], cwd=tmp, start_new_session=True,
                                      stdout=None if a.verbose else log, stderr=subprocess.STDOUT)
            try:
                rc = client.wait(timeout=a.timeout)
            except subprocess.TimeoutExpired:
                print("autobahn: wstest ran past --timeout %ds; killed" % a.timeout, file=sys.stderr)
                rc = None
        elapsed = time.monotonic() - started

        index_path = os.path.join(outdir, "index.json")
        if rc is None or not os.path.exists(index_path):
            if rc is not None:
                print("autobahn: wstest exited %d without writing %s" % (rc, index_path), file=sys.stderr)
            if not a.verbose:
                with open(log_path) as log:
                    tail = log.read()[-4000:]
                print("autobahn: wstest log tail:\n" + tail, file=sys.stderr)
            a.outdir = a.outdir or keep(tmp)
            return 2

        with open(index_path) as f:
            index = json.load(f)
        results = index.get(a.agent, {})
        if not results and len(index) == 1:  # wstest names the agent after the Server header when it can
            results = next(iter(index.values()))
        expected = None
        with open(log_path) as log:
            m = re.search(r"will run (\d+) test cases", log.read())
            if m:
                expected = int(m.group(1))
        return summarize(a, results, expected, outdir, elapsed, server, tmp)
    finally:
        kill_group(client)
        kill_group(server)
        if not a.outdir:
            shutil.rmtree(tmp, ignore_errors=True)


def keep(tmp):
    """On failure without --outdir, keep the reports and say where."""
    print("autobahn: reports kept in %s" % os.path.join(tmp, "reports"), file=sys.stderr)
    return tmp


def summarize(a, results, expected, outdir, elapsed, server, tmp):
    behaviors = collections.Counter(v["behavior"] for v in results.values())
    closes = collections.Counter(v["behaviorClose"] for v in results.values())
    print("autobahn: %d cases in %.0f s" % (len(results), elapsed))
    print("  behavior:      " + ", ".join("%s %d" % kv for kv in sorted(behaviors.items())))
    print("  behaviorClose: " + ", ".join("%s %d" % kv for kv in sorted(closes.items())))

    bad = []
    for cid in sorted(results, key=case_key):
        v = results[cid]
        if v["behavior"] not in PASS | {"UNIMPLEMENTED"} or v["behaviorClose"] in CLOSE_FAIL:
            bad.append(cid)
        elif a.require_compression and v["behavior"] == "UNIMPLEMENTED":
            bad.append(cid)
    for cid in bad:
        v = results[cid]
        detail = {}
        try:
            with open(os.path.join(outdir, v["reportfile"])) as f:
                detail = json.load(f)
        except (OSError, ValueError):
            pass
        print("FAILED %s: behavior %s, behaviorClose %s, remote close code %s"
              % (cid, v["behavior"], v["behaviorClose"], v.get("remoteCloseCode")))
        for k in ("description", "expectation", "result", "resultClose"):
            if detail.get(k):
                print("    %-12s %s" % (k + ":", text(detail[k])))

    unimpl = sorted((c for c, v in results.items() if v["behavior"] == "UNIMPLEMENTED"), key=case_key)
    if unimpl and not a.require_compression:
        print("  UNIMPLEMENTED (allowed without --require-compression): %d cases, %s .. %s" % (len(unimpl), unimpl[0], unimpl[-1]))

    status = 0
    if bad:
        status = 1
    if server.poll() is not None:
        print("autobahn: the server exited during the run (status %s)" % server.returncode, file=sys.stderr)
        status = 1
    if not results or (expected is not None and len(results) != expected):
        print("autobahn: the report has %d case results, wstest was to run %s" % (len(results), expected), file=sys.stderr)
        status = 1
    if status and not a.outdir:
        a.outdir = keep(tmp)
    print("autobahn: %s" % ("PASS" if status == 0 else "FAIL (%d cases)" % len(bad)))
    return status


if __name__ == "__main__":
    sys.exit(main())
