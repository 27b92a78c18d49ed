"""drpcli against a real server: the operator flow from the issue, and every generic verb."""
from __future__ import annotations

import json
import uuid

import pytest


def test_operator_flow_token_machine_restart(drp):
    """Exactly the issue's flow: a 3y token through jq, a machine made with it, a restart."""
    # RS_KEY is wrong here, so only the token can make the second command work.
    env = {"RS_KEY": "rocketskates:not-the-password"}
    got = drp.bash("drpcli users token rocketskates ttl 3y | jq -r .Token",
                   env={"RS_KEY": "rocketskates:r0cketsk8ts"})
    token = got.stdout.strip()
    assert token and "\n" not in token and token != "null", got
    assert got.stderr == ""

    made = drp.bash("""drpcli -T "$TOKEN" machines create '{"Name":"m1"}'""",
                    env={**env, "TOKEN": token})
    machine = json.loads(made.stdout)
    assert machine["Name"] == "m1"
    key = machine["Uuid"]
    assert uuid.UUID(key)
    # without the token, the wrong RS_KEY is refused
    refused = drp.bash("""drpcli machines show "$KEY" """, env={**env, "KEY": key}, check=False)
    assert refused.returncode == 1 and "401" in refused.stderr

    assert drp.stop() == 0
    drp.start()

    shown = drp.bash("""drpcli -T "$TOKEN" machines show "$KEY" """,
                     env={**env, "TOKEN": token, "KEY": key})
    assert json.loads(shown.stdout) == machine  # same object, and the token outlived the restart
    listed = json.loads(drp.drpcli("machines", "list", "Name=m1").stdout)
    assert [m["Uuid"] for m in listed] == [key]


@pytest.fixture(scope="module")
def server(module_drp):
    return module_drp


def cli(server, *args, **kw):
    return server.drpcli(*args, **kw)


def test_info_get(server):
    info = json.loads(cli(server, "info", "get").stdout)
    assert info["api_port"] == server.api_port and info["id"]


def test_output_is_indented_json(server):
    out = cli(server, "profiles", "create", '{"Name": "indent"}').stdout
    assert out.startswith("{\n  \"") and out.endswith("}\n")
    cli(server, "profiles", "destroy", "indent")


def test_generic_verbs(server):
    created = json.loads(cli(server, "profiles", "create",
                             '{"Name": "cli-p", "Params": {"a": 1, "b": 2}}').stdout)
    assert created["Name"] == "cli-p" and created["Params"] == {"a": 1, "b": 2}

    listed = json.loads(cli(server, "profiles", "list").stdout)
    assert "cli-p" in [p["Name"] for p in listed]
    filtered = json.loads(cli(server, "profiles", "list", "Name=cli-p").stdout)
    assert [p["Name"] for p in filtered] == ["cli-p"]
    assert json.loads(cli(server, "profiles", "list", "Name=nope").stdout) == []

    assert json.loads(cli(server, "profiles", "show", "cli-p").stdout) == created
    ok = cli(server, "profiles", "exists", "cli-p")
    assert ok.returncode == 0 and ok.stdout == ""
    missing = cli(server, "profiles", "exists", "nope", check=False)
    assert missing.returncode == 1 and "404" in missing.stderr and missing.stdout == ""

    # update merges: untouched fields stay, nested objects merge, null removes
    updated = json.loads(cli(server, "profiles", "update", "cli-p",
                             '{"Description": "merged", "Params": {"b": null, "c": 3}}').stdout)
    assert updated["Description"] == "merged"
    assert updated["Params"] == {"a": 1, "c": 3}
    assert json.loads(cli(server, "profiles", "show", "cli-p").stdout) == updated

    patched = json.loads(cli(server, "profiles", "patch", "cli-p",
                             '[{"op": "test", "path": "/Params/a", "value": 1},'
                             ' {"op": "remove", "path": "/Description"}]').stdout)
    # a removed field is back to its zero value (dr-provision's models carry every field)
    assert patched["Description"] == "" and patched["Params"] == {"a": 1, "c": 3}
    failed = cli(server, "profiles", "patch", "cli-p",
                 '[{"op": "test", "path": "/Params/a", "value": 2},'
                 ' {"op": "remove", "path": "/Params"}]', check=False)
    assert failed.returncode == 1 and "409" in failed.stderr and failed.stdout == ""
    assert json.loads(cli(server, "profiles", "show", "cli-p").stdout) == patched

    gone = cli(server, "profiles", "destroy", "cli-p")
    assert gone.returncode == 0 and "cli-p" in gone.stdout
    assert cli(server, "profiles", "show", "cli-p", check=False).returncode == 1
    again = cli(server, "profiles", "destroy", "cli-p", check=False)
    assert again.returncode == 1 and "404" in again.stderr


def test_machines_verbs_by_uuid(server):
    m = json.loads(cli(server, "machines", "create", '{"Name": "cli-m"}').stdout)
    key = m["Uuid"]
    assert json.loads(cli(server, "machines", "show", key).stdout)["Name"] == "cli-m"
    upd = json.loads(cli(server, "machines", "update", key, '{"Runnable": true}').stdout)
    assert upd["Runnable"] is True and upd["Name"] == "cli-m"
    assert [x["Uuid"] for x in json.loads(
        cli(server, "machines", "list", "Runnable=true", "Name=cli-m").stdout)] == [key]
    dup = cli(server, "machines", "create", json.dumps({"Name": "x", "Uuid": key}), check=False)
    assert dup.returncode == 1 and "409" in dup.stderr
    cli(server, "machines", "destroy", key)


def test_json_from_stdin_and_file(server, tmp_path):
    made = cli(server, "profiles", "create", "-", input='{"Name": "from-stdin"}')
    assert json.loads(made.stdout)["Name"] == "from-stdin"
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"Name": "from-file", "Description": "file"}))
    made = cli(server, "profiles", "create", str(path))
    assert json.loads(made.stdout)["Description"] == "file"
    # relative file names are read from the working directory
    (tmp_path / "upd.json").write_text('{"Description": "updated from file"}')
    upd = cli(server, "profiles", "update", "from-stdin", "upd.json", cwd=tmp_path)
    assert json.loads(upd.stdout)["Description"] == "updated from file"
    patch = cli(server, "profiles", "patch", "from-file", "-",
                input='[{"op": "replace", "path": "/Description", "value": "stdin patch"}]')
    assert json.loads(patch.stdout)["Description"] == "stdin patch"
    # a bare key creates by key, like drpcli
    assert json.loads(cli(server, "profiles", "create", "bare").stdout)["Name"] == "bare"
    for name in ("from-stdin", "from-file", "bare"):
        cli(server, "profiles", "destroy", name)


@pytest.mark.parametrize("args, needle", [
    (("profiles", "create", "{not json"), "JSON"),
    (("profiles", "create", "-"), "JSON"),  # empty stdin
    (("profiles", "create", '{"Params": {}}'), "422"),
    (("profiles", "show", "does-not-exist"), "404"),
    (("gizmos", "list"), "gizmos"),
    (("profiles",), "KIND VERB"),
    (("profiles", "frobnicate"), "frobnicate"),
    (("profiles", "show"), "usage"),
    (("users", "token", "nobody"), "404"),
    (("users", "token", "rocketskates", "ttl", "forever"), "400"),
])
def test_errors_on_stderr_exit_1(server, args, needle):
    res = cli(server, *args, check=False, input="")
    assert res.returncode == 1, res
    assert res.stdout == ""
    assert needle in res.stderr, res.stderr
    assert res.stderr.startswith("Error: ") and len(res.stderr.strip().splitlines()) == 1
    assert "Traceback" not in res.stderr


def test_unreachable_endpoint(server):
    from tests.drpserver import free_port
    res = cli(server, "info", "get", env={"RS_ENDPOINT": f"https://127.0.0.1:{free_port()}"},
              check=False)
    assert res.returncode == 1 and "cannot reach" in res.stderr and "Traceback" not in res.stderr


def test_rs_key_user_password_flags_and_users_password(server):
    cli(server, "users", "create", '{"Name": "carol", "Password": "c4rol"}')
    try:
        # RS_KEY picks the user
        r = cli(server, "users", "token", "carol", env={"RS_KEY": "carol:c4rol"})
        assert json.loads(r.stdout)["Token"]
        bad = cli(server, "info", "get", env={"RS_KEY": "carol:wrong"}, check=False)
        assert bad.returncode == 1 and "401" in bad.stderr
        # -U/-P win over RS_KEY, in both spellings
        for flags in (["-U", "carol", "-P", "c4rol"], ["--username=carol", "--password=c4rol"]):
            ok = cli(server, *flags, "info", "get", env={"RS_KEY": "rocketskates:wrong"})
            assert json.loads(ok.stdout)["id"]
        bad = cli(server, "-U", "carol", "-P", "wrong", "info", "get", check=False)
        assert bad.returncode == 1 and "401" in bad.stderr
        # -P alone keeps RS_KEY's user
        ok = cli(server, "-P", "c4rol", "info", "get", env={"RS_KEY": "carol:wrong"})
        assert json.loads(ok.stdout)["id"]
        # -E names the endpoint
        ok = cli(server, "-E", server.url, "info", "get",
                 env={"RS_ENDPOINT": "https://127.0.0.1:1"})
        assert json.loads(ok.stdout)["api_port"] == server.api_port
        # users password: the old one stops working, the new one works
        out = json.loads(cli(server, "users", "password", "carol", "n3w").stdout)
        assert out["Name"] == "carol" and "PasswordHash" not in out and "Secret" not in out
        old = cli(server, "-U", "carol", "-P", "c4rol", "info", "get", check=False)
        assert old.returncode == 1 and "401" in old.stderr
        assert cli(server, "-U", "carol", "-P", "n3w", "info", "get").returncode == 0
    finally:
        cli(server, "users", "destroy", "carol")


def test_token_from_environment_and_flag(server):
    token = json.loads(cli(server, "users", "token", "rocketskates", "ttl", "10m").stdout)["Token"]
    env = {"RS_KEY": "rocketskates:wrong"}
    assert cli(server, "info", "get", env={**env, "RS_TOKEN": token}).returncode == 0
    assert cli(server, "-T", token, "info", "get", env=env).returncode == 0
    bad = cli(server, "-T", token + "x", "info", "get", env=env, check=False)
    assert bad.returncode == 1 and "401" in bad.stderr


def test_help(server):
    res = cli(server, "--help")
    assert res.returncode == 0 and "usage: drpcli" in res.stdout and "machines" in res.stdout
