"""The attacks of the hardening issue, replayed against one standalone drp: what each gets back,
how long it takes and how much memory the server needs for it.

    python -m bench probes [--quick]

Each probe prints one line; the last line of output is one JSON object. A probe "holds" when
the server answers it with the 4xx it should and keeps serving others. Peak memory is the
server's VmHWM after resetting it (/proc/PID/clear_refs) before the probe.
"""
from __future__ import annotations

import argparse
import base64
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from tests.drpserver import DrpServer

MIB = 1 << 20


def _peak_reset(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Probes:
    """Each probe runs against a server of its own (a fresh base root), so one that hangs or
    poisons the server does not spoil the next."""

    def __init__(self, root: Path, quick: bool):
        self.root, self.quick = root, quick
        self.results: dict[str, dict] = {}
        self.tracebacks = 0

    def run(self, name: str, fn) -> None:
        self.server = DrpServer(self.root / name).start()
        self.client = self.server.client(timeout=60)
        # "still serving" asks with a token: a guessing probe puts this address in backoff
        # for Basic logins, which is the throttle working, not the server failing
        token = self.client.get("/users/rocketskates/token").json()["Token"]
        pid = self.server.proc.pid
        try:
            _peak_reset(pid)
            began = time.monotonic()
            try:
                outcome = fn()
            except httpx.TimeoutException:
                outcome = {"outcome": "no answer within 60 s"}
            seconds = time.monotonic() - began
            try:
                with self.server.client(token=token, timeout=5) as health:
                    healthy = health.get("/info").status_code == 200
            except httpx.HTTPError:
                healthy = False
            result = {**outcome, "seconds": round(seconds, 3),
                      "peak_rss_mib": round(_peak_mib(pid)), "still_serving": healthy}
        finally:
            self.client.close()
            self.server.kill()
        self.tracebacks += self.server.logs().count("Traceback")
        self.results[name] = result
        print(f"{name}: {json.dumps(result)}", flush=True)

    # ---- item 1: a poison pill -----------------------------------------------------------
    def poison(self) -> dict:
        c = self.client
        stored = c.post("/machines", content=b'{"Name":"nan","Params":{"x":NaN}}',
                        headers={"Content-Type": "application/json"}).status_code
        after = c.post("/machines", json={"Name": "after-nan"})
        listed = c.get("/machines", params={"Name": "after-nan"}).status_code
        return {"nan_create": stored, "create_after": after.status_code,
                "filtered_list_after": listed}

    # ---- item 3: bounds --------------------------------------------------------------------
    def big_body(self) -> dict:
        size = (20 if self.quick else 200) * MIB
        chunk = b"x" * MIB

        def body():
            yield b'{"Name":"big","Params":{"x":"'
            for _ in range(size // MIB):
                yield chunk
            yield b'"}}'
        try:
            r = self.client.post("/machines", content=body(),
                                 headers={"Content-Type": "application/json"})
            return {"status": r.status_code, "body_mib": size // MIB}
        except httpx.HTTPError as e:  # the server may close before the body is all sent
            return {"status": f"closed: {type(e).__name__}", "body_mib": size // MIB}

    def doubling_patch(self) -> dict:
        c = self.client
        uuid = c.post("/machines", json={"Name": "dbl", "Params": {"a": [1]}}).json()["Uuid"]
        # each op appends the array to itself: 2^22 leaves after 22 ops
        ops = [{"op": "copy", "from": "/Params/a", "path": "/Params/a/-"}] * 22
        r = c.patch(f"/machines/{uuid}", json=ops)
        return {"status": r.status_code, "ops": len(ops)}

    def job_log_appends(self) -> dict:
        c = self.client
        machine = c.post("/machines", json={"Name": "logs"}).json()["Uuid"]
        size = (16 if self.quick else 60) * MIB
        statuses: list = []

        def append() -> None:
            job = c.post("/jobs", json={"Machine": machine}).json()["Uuid"]
            try:
                with self.server.client(timeout=120) as own:
                    statuses.append(own.put(f"/jobs/{job}/log", content=b"y" * size).status_code)
            except httpx.HTTPError as e:
                statuses.append(type(e).__name__)
        threads = [threading.Thread(target=append) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return {"statuses": sorted(map(str, statuses)), "each_mib": size // MIB}

    # ---- item 4: guessing ------------------------------------------------------------------
    def guessing(self) -> dict:
        token = self.client.get("/users/rocketskates/token").json()["Token"]
        seconds = 3 if self.quick else 10

        def latencies(for_s: float) -> list[float]:
            out = []
            with self.server.client(token=token) as own:
                end = time.monotonic() + for_s
                while time.monotonic() < end:
                    t = time.monotonic()
                    own.get("/machines", params={"limit": "1"})
                    out.append(time.monotonic() - t)
            return out
        alone = latencies(seconds)
        stop, codes = threading.Event(), {}

        def guess() -> None:
            with self.server.client(auth=("rocketskates", "wrong")) as g:
                while not stop.is_set():
                    try:
                        code = g.get("/info").status_code
                    except httpx.HTTPError:
                        code = "error"
                    codes[code] = codes.get(code, 0) + 1
        guessers = [threading.Thread(target=guess) for _ in range(64)]
        for t in guessers:
            t.start()
        try:
            loaded = latencies(seconds)
        finally:
            stop.set()
            for t in guessers:
                t.join()
        return {"token_get_p50_ms_alone": round(statistics.median(alone) * 1000, 1),
                "token_get_p50_ms_under_guessing": round(statistics.median(loaded) * 1000, 1),
                "guess_answers": {str(k): v for k, v in codes.items()}}

    # ---- item 5: 4xx, not 500 --------------------------------------------------------------
    def bad_inputs(self) -> dict:
        c = self.client
        raw = {"nesting": b'{"Name":"deep","Params":' + b"[" * 5000 + b"]" * 5000 + b"}",
               "surrogate": b'{"Name":"\\ud800"}', "infinity": b'{"Name":"i","Params":{"x":Infinity}}',
               "1e400": b'{"Name":"e","Params":{"x":1e400}}'}
        out = {k: c.post("/machines", content=v, headers={"Content-Type": "application/json"})
               .status_code for k, v in raw.items()}
        out["limit_2^64"] = c.get("/machines", params={"limit": str(2 ** 64)}).status_code
        for ttl in ("inf", "nan", "1e400", "99999999999999999h"):
            out[f"ttl_{ttl}"] = c.get("/users/rocketskates/token", params={"ttl": ttl}).status_code
        out["long_path"] = c.post("/files/" + "a" * 300, content=b"x").status_code
        return out

    # ---- item 7: forged tokens -------------------------------------------------------------
    def forged_tokens(self) -> dict:
        out = {}
        for name, claim in (("dict", {"x": 1}), ("list", [1]), ("int", 7), ("none", None)):
            payload = base64.urlsafe_b64encode(json.dumps(
                {"u": claim, "exp": 2 ** 40}).encode()).rstrip(b"=").decode()
            with self.server.client(token=f"{payload}.AAAA") as forged:
                out[name] = forged.get("/info").status_code
        return out

    # ---- item 8: YAML aliases --------------------------------------------------------------
    def yaml_bomb(self) -> dict:
        levels = ['a: &a ["x","x","x","x","x","x","x","x","x","x"]']
        for i in range(1, 6 if self.quick else 9):  # 10^6 strings, or 10^9
            prev = chr(ord("a") + i - 1)
            levels.append(f"{chr(ord('a') + i)}: &{chr(ord('a') + i)} [" +
                          ",".join([f"*{prev}"] * 10) + "]")
        doc = "meta: {Name: bomb}\nsections:\n  profiles:\n    p:\n      Name: p\n      Params:\n" + \
            "".join(f"        {line}\n" for line in levels)
        r = self.client.post("/contents", content=doc.encode(),
                             headers={"Content-Type": "application/yaml"})
        return {"status": r.status_code, "levels": len(levels), "body_bytes": len(doc)}

    # ---- item 2: roles ---------------------------------------------------------------------
    def claimless_user(self) -> dict:
        c = self.client
        c.post("/users", json={"Name": "nobody", "Roles": [], "Password": "nobody-pw"})
        c.post("/users", json={"Name": "victim", "Roles": [], "Password": "victim-pw"})
        with self.server.client(auth=("nobody", "nobody-pw")) as n:
            return {
                "create_superuser": n.post("/users", json={"Name": "evil",
                                                           "Password": "x"}).status_code,
                "patch_own_roles": n.patch("/users/nobody", json=[
                    {"op": "replace", "path": "/Roles", "value": ["superuser"]}]).status_code,
                "token_for_rocketskates": n.get("/users/rocketskates/token").status_code,
                "delete_other_user": n.delete("/users/victim").status_code,
                "list_machines": n.get("/machines").status_code,
                "own_token": n.get("/users/nobody/token").status_code,
            }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench probes")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="drp-probes-") as tmp:
        probes = Probes(Path(tmp), args.quick)
        for name in ("poison", "bad_inputs", "forged_tokens", "claimless_user", "yaml_bomb",
                     "doubling_patch", "big_body", "job_log_appends", "guessing"):
            probes.run(name, getattr(probes, name))
    print(json.dumps({"benchmark": "probes", "quick": args.quick, "probes": probes.results,
                      "tracebacks_in_logs": probes.tracebacks}))
    return 0
