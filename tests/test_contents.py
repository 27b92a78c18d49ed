"""Content bundles: one change-log entry per import, ReadOnly objects, conflicts refused."""
from __future__ import annotations

import json

from drp.modelvalues import complete_nested
from tests.blobutil import changes

BUNDLE = {
    "meta": {"Name": "base", "Version": "v1.2.3", "Description": "base content"},
    "sections": {
        "profiles": {"global-ish": {"Params": {"a": 1}}, "other": {"Description": "two"}},
        "templates": {"t1": {"Contents": "hello {{.Machine.Name}}"}},
        "params": {"p1": {"Schema": {"type": "string"}}},
    },
}

YAML_BUNDLE = """\
meta:
  Name: yamly
  Version: v2
  Description: from YAML
sections:
  stages:
    s1:
      Tasks: [t-one, t-two]
  tasks:
    t-one: {Description: first}
    t-two: {Description: second}
"""


def test_import_show_list_and_read_only(drp):
    with drp.client() as c:
        r = c.post("/contents", json=BUNDLE)
        assert r.status_code == 201, r.text
        assert r.json()["meta"]["Name"] == "base"
        assert r.json()["Counts"] == {"profiles": 2, "templates": 1, "params": 1}
        profile = c.get("/profiles/global-ish").json()
        assert profile["ReadOnly"] is True and profile["Bundle"] == "base"
        assert profile["Params"] == {"a": 1}
        assert c.get("/templates/t1").json()["Bundle"] == "base"
        # API writes to bundle objects are refused
        assert c.put("/profiles/global-ish", json={"Name": "global-ish"}).status_code == 403
        assert c.patch("/profiles/global-ish",
                       json=[{"op": "add", "path": "/Description", "value": "x"}]
                       ).status_code == 403
        assert c.delete("/profiles/global-ish").status_code == 403
        assert c.post("/profiles", json={"Name": "other"}).status_code == 409
        assert [b["meta"]["Name"] for b in c.get("/contents").json()] == ["base"]
        shown = c.get("/contents/base").json()
        # every field of dr-provision's ContentMetaData (zero values for the ones not sent)
        assert shown["meta"] == complete_nested("ContentMetaData", BUNDLE["meta"])
        assert sorted(shown["sections"]["profiles"]) == ["global-ish", "other"]
        assert shown["sections"]["templates"]["t1"]["Contents"] == "hello {{.Machine.Name}}"
    [row] = changes(drp, "contents")
    assert (row["key"], row["action"]) == ("base", "put")
    assert row["body"]["record"]["meta"]["Name"] == "base"
    objects = {(k, key): obj for k, key, obj in row["body"]["objects"]}
    assert set(objects) == {("profiles", "global-ish"), ("profiles", "other"),
                            ("templates", "t1"), ("params", "p1")}
    assert all(o["ReadOnly"] and o["Bundle"] == "base" for o in objects.values())


def test_yaml_bundle(drp):
    with drp.client() as c:
        r = c.post("/contents", content=YAML_BUNDLE,
                   headers={"Content-Type": "application/yaml"})
        assert r.status_code == 201, r.text
        assert c.get("/stages/s1").json()["Tasks"] == ["t-one", "t-two"]
        # POST of a bundle that exists is dr-provision's 409 (its frontend's createContent);
        # PUT /contents/<name> replaces it. YAML without a Content-Type is recognised too.
        r = c.post("/contents", content=YAML_BUNDLE.replace("v2", "v3"))
        assert r.status_code == 409
        assert r.json() == {"Model": "contents", "Key": "yamly", "Type": "POST", "Code": 409,
                            "Messages": ["content bundle yamly already exists: PUT "
                                         "/contents/yamly replaces it"]}
        assert c.get("/contents/yamly").json()["meta"]["Version"] == "v2"
        r = c.put("/contents/yamly", content=YAML_BUNDLE.replace("v2", "v3"))
        assert r.status_code == 200 and r.json()["meta"]["Version"] == "v3"


def test_replace_and_delete_swap_objects_in_one_entry(drp):
    with drp.client() as c:
        c.post("/contents", json=BUNDLE)
        v2 = json.loads(json.dumps(BUNDLE))
        v2["meta"]["Version"] = "v2"
        del v2["sections"]["profiles"]["other"]
        v2["sections"]["profiles"]["global-ish"]["Params"] = {"a": 2}
        v2["sections"]["workflows"] = {"wf": {"Stages": []}}
        r = c.put("/contents/base", json=v2)
        assert r.status_code == 200, r.text
        assert c.get("/profiles/other").status_code == 404
        assert c.get("/profiles/global-ish").json()["Params"] == {"a": 2}
        assert c.get("/workflows/wf").json()["Bundle"] == "base"
        assert c.put("/contents/nope", json={**v2, "meta": {"Name": "nope"}}).status_code == 404
        assert c.put("/contents/base", json={**v2, "meta": {"Name": "x"}}).status_code == 422
        assert c.delete("/contents/base").status_code == 200
        for path in ("/profiles/global-ish", "/templates/t1", "/workflows/wf", "/contents/base"):
            assert c.get(path).status_code == 404, path
        assert c.delete("/contents/base").status_code == 404
    rows = changes(drp, "contents")
    assert [(r["key"], r["action"]) for r in rows] == [("base", "put"), ("base", "put"),
                                                       ("base", "delete")]
    assert rows[1]["seq"] == rows[0]["seq"] + 1  # a whole bundle is one change-log entry


def test_conflicting_bundles_are_refused_and_change_nothing(drp):
    with drp.client() as c:
        assert c.post("/profiles", json={"Name": "mine", "Params": {"x": 1}}).status_code == 201
        c.post("/contents", json=BUNDLE)
        head = max(r["seq"] for r in changes(drp))
        steal = {"meta": {"Name": "thief"}, "sections": {
            "profiles": {"brand-new": {}, "other": {"Description": "stolen"}}}}
        r = c.post("/contents", json=steal)
        assert r.status_code == 409
        body = r.json()
        assert body["Type"] == "Conflict" and body["Key"] == "thief"
        assert any("profiles/other belongs to content bundle base" in m
                   for m in body["Messages"])
        r = c.post("/contents", json={"meta": {"Name": "thief"},
                                      "sections": {"profiles": {"mine": {}}}})
        assert r.status_code == 409
        assert any("profiles/mine belongs to a user" in m for m in r.json()["Messages"])
        # nothing changed: not the new object, not the record, not the log
        assert c.get("/profiles/brand-new").status_code == 404
        assert c.get("/contents/thief").status_code == 404
        assert c.get("/profiles/other").json()["Description"] == "two"
        assert c.get("/profiles/mine").json()["Params"] == {"x": 1}
    assert max(r["seq"] for r in changes(drp)) == head


def test_invalid_bundles(drp):
    with drp.client() as c:
        cases = [
            ({"sections": {}}, 422, "meta.Name"),
            ({"meta": {"Name": "a/b"}}, 422, "meta.Name"),
            ({"meta": {"Name": "u"}, "sections": {"users": {"evil": {}}}}, 422, "users"),
            ({"meta": {"Name": "u"}, "sections": {"widgets": {"w": {}}}}, 422, "widgets"),
            ({"meta": {"Name": "u"}, "sections": {"profiles": {"p": {"Params": []}}}}, 422,
             "Params must be"),
            ({"meta": {"Name": "u"}, "sections": {"profiles": {"p": {"Name": "q"}}}}, 422,
             "does not match"),
        ]
        for bundle, code, text in cases:
            r = c.post("/contents", json=bundle)
            assert r.status_code == code, (bundle, r.text)
            assert any(text in m for m in r.json()["Messages"]), (text, r.json())
        r = c.post("/contents", content=b"{not: [valid", headers={"Content-Type": "text/plain"})
        assert r.status_code == 400
        assert c.get("/contents").json() == []
    assert changes(drp, "contents") == []


def test_drpcli_contents(drp, tmp_path):
    (tmp_path / "b.yaml").write_text(YAML_BUNDLE)
    (tmp_path / "b.json").write_text(json.dumps(BUNDLE))
    out = json.loads(drp.drpcli("contents", "upload", str(tmp_path / "b.yaml")).stdout)
    assert out["meta"]["Name"] == "yamly"
    drp.drpcli("contents", "upload", str(tmp_path / "b.json"))
    names = [b["meta"]["Name"] for b in json.loads(drp.drpcli("contents", "list").stdout)]
    assert names == ["base", "yamly"]
    # upload of an installed bundle replaces it (POST is a 409 there; drpcli then PUTs)
    again = json.loads(drp.drpcli("contents", "upload", str(tmp_path / "b.yaml")).stdout)
    assert again["meta"]["Name"] == "yamly"
    assert [b["meta"]["Name"] for b in json.loads(drp.drpcli("contents", "list").stdout)] == \
        ["base", "yamly"]
    shown = json.loads(drp.drpcli("contents", "show", "yamly").stdout)
    assert sorted(shown["sections"]["tasks"]) == ["t-one", "t-two"]
    assert drp.drpcli("contents", "destroy", "yamly").stdout.strip() == "Deleted content yamly"
    assert drp.drpcli("tasks", "show", "t-one", check=False).returncode == 1
