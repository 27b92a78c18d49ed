"""List filters, sort, reverse, offset and limit as dr-provision serves them (issue 16, item 3),
driven through RackN's Python client (list_machines, list_profiles) and through drpcli.

RackN's client names one query parameter per model field and takes `sort` once; a filter on a
nested field (Meta.rack, Params.count), a field given twice or sort given twice is not in its
signature, so those go through the client's own ApiClient.call_api with the query as a list."""
from __future__ import annotations

import json

import pytest
from drppy_client import MachinesApi, ProfilesApi
from drppy_client.models import Machine, Profile
from drppy_client.rest import ApiException

from drp.store.filterops import FilterError, matches, parse
from tests.drppy import drppy  # noqa: F401  (the fixture)

TAG = "filters"  # every machine made here has this Context, so other objects never match
# (Name, Runnable, Description, Meta.rack, Params.count)
FLEET = [("flt-a", True, "alpha", "r1", 1), ("flt-b", False, "beta", "r2", 2),
         ("flt-c", True, "gamma", "r1", 3), ("flt-d", False, "delta", "r2", 10),
         ("flt-e", True, "epsilon", "r3", 20)]


@pytest.fixture(scope="module")
def fleet(drppy):
    machines = drppy.api(MachinesApi)
    made = []
    for name, runnable, description, rack, count in FLEET:
        macs = [f"52:54:00:00:00:{count:02x}", f"52:54:00:00:01:{count:02x}"] if count < 5 else []
        m = machines.create_machine(Machine(name=name, runnable=runnable, context=TAG,
                                            hardware_addrs=macs,
                                            description=description, meta={"rack": rack},
                                            params={"count": count, "ipmi/enabled": runnable}))
        made.append(m.uuid)
    profiles = drppy.api(ProfilesApi)
    for name, count in (("flt-p1", 5), ("flt-p2", 50), ("flt-p3", 7)):
        profiles.create_profile(Profile(name=name, params={"count": count}))
    yield machines
    for key in made:
        machines.delete_machine(key)
    for name in ("flt-p1", "flt-p2", "flt-p3"):
        profiles.delete_profile(name)


def names(objs) -> list[str]:
    return [o.name for o in objs]


def raw_list(api, path: str, query: list[tuple[str, str]], model: str) -> list:
    """GET path?query through the client's ApiClient: for queries list_* cannot express."""
    return api.api_client.call_api(path, "GET", query_params=query, response_type=f"list[{model}]",
                                   auth_settings=["Bearer", "basicAuth"],
                                   _return_http_data_only=True)


def test_each_operator_on_a_string_field(fleet):
    def listed(name):
        return sorted(names(fleet.list_machines(context=TAG, name=name)))
    assert listed("flt-b") == ["flt-b"]  # a plain value is Eq
    assert listed("Eq(flt-b)") == ["flt-b"]  # matched literally before this change: nothing
    assert listed("Ne(flt-b)") == ["flt-a", "flt-c", "flt-d", "flt-e"]
    assert listed("Lt(flt-c)") == ["flt-a", "flt-b"]
    assert listed("Lte(flt-c)") == ["flt-a", "flt-b", "flt-c"]
    assert listed("Gt(flt-c)") == ["flt-d", "flt-e"]
    assert listed("Gte(flt-c)") == ["flt-c", "flt-d", "flt-e"]
    assert listed("In(flt-a,flt-e,nope)") == ["flt-a", "flt-e"]
    assert listed("Nin(flt-a,flt-e)") == ["flt-b", "flt-c", "flt-d"]
    assert listed("Re(^flt-[b-d]$)") == ["flt-b", "flt-c", "flt-d"]
    assert listed("Re(c)") == ["flt-c"]  # Go's MatchString: a search, not anchored
    assert listed("Between(flt-b,flt-d)") == ["flt-b", "flt-c", "flt-d"]
    assert listed("Except(flt-b,flt-d)") == ["flt-a", "flt-e"]
    # Description is read from the stored body (Name above is the indexed column)
    assert sorted(names(fleet.list_machines(context=TAG, description="Re(^(alpha|beta)$)"))) \
        == ["flt-a", "flt-b"]
    assert sorted(names(fleet.list_machines(context=TAG, description="Between(b,e)"))) == \
        ["flt-b", "flt-d"]


def test_numbers_compare_as_numbers_and_booleans_as_booleans(fleet):
    def listed(*query):
        return sorted(names(raw_list(fleet, "/machines", [("Context", TAG), *query],
                                     "Machine")))
    assert listed(("Params.count", "Lt(3)")) == ["flt-a", "flt-b"]  # as strings "10" < "3"
    assert listed(("Params.count", "Gte(10)")) == ["flt-d", "flt-e"]
    assert listed(("Params.count", "Between(2,10)")) == ["flt-b", "flt-c", "flt-d"]
    assert listed(("Params.count", "Except(2,10)")) == ["flt-a", "flt-e"]
    assert listed(("Params.count", "In(1,20)")) == ["flt-a", "flt-e"]
    assert listed(("Params.count", "3")) == ["flt-c"]
    assert listed(("Params.ipmi/enabled", "Eq(true)")) == ["flt-a", "flt-c", "flt-e"]
    assert listed(("Params.ipmi/enabled", "False")) == ["flt-b", "flt-d"]  # ParseBool spelling
    assert listed(("Meta.rack", "Nin(r1,r3)")) == ["flt-b", "flt-d"]
    # a list field holds when one of its elements does (Ne, Nin, Except: when none does)
    assert sorted(names(fleet.list_machines(context=TAG, hardware_addrs="52:54:00:00:01:02"))) \
        == ["flt-b"]
    assert listed(("HardwareAddrs", "Re(:0[13]$)")) == ["flt-a", "flt-c"]
    assert listed(("HardwareAddrs", "Nin(52:54:00:00:00:01,52:54:00:00:01:03)")) == \
        ["flt-b", "flt-d", "flt-e"]
    # a name that is no field of the model is a param's, as dr-provision looks it up
    assert listed(("ipmi/enabled", "true"), ("count", "Lte(3)")) == ["flt-a", "flt-c"]
    # The client's own bool parameter: runnable=False is sent as "False".
    assert sorted(names(fleet.list_machines(context=TAG, runnable=False))) == ["flt-b", "flt-d"]
    # Tests on different fields all hold; the same field twice: either.
    assert listed(("Runnable", "true"), ("Params.count", "Gt(1)")) == ["flt-c", "flt-e"]
    assert listed(("Name", "flt-a"), ("Name", "Eq(flt-d)")) == ["flt-a", "flt-d"]


def test_sort_reverse_offset_limit(fleet, drppy):
    def listed(**kw):
        return names(fleet.list_machines(context=TAG, **kw))
    assert listed() == sorted(listed(), key=lambda n: [m.uuid for m in fleet.list_machines(
        context=TAG, name=n)][0])  # unsorted: key (Uuid) order
    assert listed(sort="Name") == ["flt-a", "flt-b", "flt-c", "flt-d", "flt-e"]
    assert listed(sort="Name", reverse=True) == ["flt-e", "flt-d", "flt-c", "flt-b", "flt-a"]
    assert listed(sort="Name", reverse=False) == ["flt-a", "flt-b", "flt-c", "flt-d", "flt-e"]
    assert listed(sort="Description") == ["flt-a", "flt-b", "flt-d", "flt-e", "flt-c"]
    assert listed(sort="Name", limit=2) == ["flt-a", "flt-b"]
    assert listed(sort="Name", offset=1, limit=2) == ["flt-b", "flt-c"]
    assert listed(sort="Name", reverse=True, offset=1, limit=2) == ["flt-d", "flt-c"]
    assert listed(sort="Name", offset=4) == ["flt-e"]
    assert listed(sort="Name", offset=9) == []
    # sort twice: by the first, ties by the next; numbers sort as numbers
    by_rack = raw_list(fleet, "/machines", [("Context", TAG), ("sort", "Meta.rack"),
                                            ("sort", "Params.count"), ("reverse", "true")],
                       "Machine")
    assert names(by_rack) == ["flt-e", "flt-d", "flt-b", "flt-c", "flt-a"]
    # the counts: this page, the matches before offset/limit, the whole kind
    for method in ("GET", "HEAD"):
        r = drppy.http.request(method, "/machines", params={"Context": TAG, "sort": "Name",
                                                             "offset": "1", "limit": "3"})
        assert r.status_code == 200
        assert r.headers["X-DRP-List-Count"] == "3"
        assert r.headers["X-DRP-List-Filter-Count"] == "5"
        assert int(r.headers["X-DRP-List-Total-Count"]) >= 5
        assert r.headers["X-DRP-List-Total-Count"] == \
            drppy.http.head("/machines").headers["X-DRP-List-Count"]

    def total():  # an indexed lookup, so the kind's count is the (cached) extra
        return int(drppy.http.head("/machines", params={"Name": "flt-a"})
                   .headers["X-DRP-List-Total-Count"])
    before = total()
    assert total() == before
    extra = fleet.create_machine(Machine(name="flt-extra"))
    assert total() == before + 1
    fleet.delete_machine(extra.uuid)
    assert total() == before


def test_another_kind_keyed_by_name(fleet, drppy):
    profiles = drppy.api(ProfilesApi)

    def listed(**kw):
        return [n for n in names(profiles.list_profiles(**kw)) if n.startswith("flt-")]
    assert listed(name="Re(^flt-p[12]$)") == ["flt-p1", "flt-p2"]  # the key: indexed column
    assert listed(name="Ne(flt-p2)") == ["flt-p1", "flt-p3"]
    assert listed(name="Between(flt-p2,flt-p9)", reverse=True) == ["flt-p3", "flt-p2"]
    by_count = raw_list(profiles, "/profiles", [("Name", "Re(^flt-)"), ("sort", "Params.count")],
                        "Profile")
    assert names(by_count) == ["flt-p1", "flt-p3", "flt-p2"]  # 5, 7, 50: not "5" "50" "7"
    assert names(raw_list(profiles, "/profiles", [("Params.count", "Gt(6)")], "Profile")) == \
        ["flt-p2", "flt-p3"]
    # a kind without Params knows only its model's fields (dr-provision's own messages)
    for query, says in (({"Bogus": "x"}, "Filter not found: Bogus"),
                        ({"sort": "Bogus"}, "Not sortable: Bogus")):
        r = drppy.http.get("/tasks", params=query)
        assert r.status_code == 406 and r.json()["Messages"] == [says], r.text


@pytest.mark.parametrize("query, says", [
    ({"Name": "Re(fl[t)"}, "not a regular expression"),
    ({"Name": "Like(flt)"}, "unknown operator Like"),
    ({"Description": "Between(a)"}, "Between takes two values"),
    ({"Name[0": "x"}, "cannot filter on"),
    ({"sort": "Na\"me"}, "cannot sort by"),
    ({"reverse": "maybe"}, "not a boolean"),
    ({"limit": "lots"}, "not an integer"),
    ({"group-by": "Name"}, "not supported"),
    ({"Runnable": "maybe"}, "Runnable is a boolean, 'maybe' is not"),
    ({"CurrentTask": "Between(1,x)"}, "CurrentTask is an integer, 'x' is not"),
    ({"Meta.x": "Re(a{2,1})"}, "not a regular expression"),
])
def test_a_bad_query_is_406_with_dr_provisions_error_body(fleet, drppy, query, says):
    """dr-provision's list answers a query it cannot use with 406 (http.StatusNotAcceptable),
    Type the request's method, Model the kind's prefix."""
    r = drppy.http.get("/machines", params=query)
    assert r.status_code == 406, r.text
    body = r.json()
    assert set(body) == {"Model", "Key", "Type", "Messages", "Code"}
    assert (body["Model"], body["Type"], body["Code"], body["Key"]) == \
        ("machines", "GET", 406, "")
    assert len(body["Messages"]) == 1 and says in body["Messages"][0], body
    (field, value), = query.items()
    kwarg = {"Name": "name", "Description": "description", "sort": "sort",
             "reverse": "reverse", "limit": "limit", "group-by": "group_by",
             "Runnable": "runnable", "CurrentTask": "current_task"}.get(field)
    if kwarg is not None:  # the client's own parameter for it gets the same refusal
        with pytest.raises(ApiException) as refused:
            fleet.list_machines(**{kwarg: value})
        assert refused.value.status == 406 and json.loads(refused.value.body) == body


def test_drpcli_filters_in_both_of_its_forms(fleet, drppy):
    def cli(*args):
        out = drppy.server.drpcli("machines", "list", f"Context={TAG}", *args).stdout
        return [m["Name"] for m in json.loads(out)]

    def free(*args):
        out = drppy.server.drpcli("machines", "list", "Context", "Eq", TAG, *args).stdout
        return [m["Name"] for m in json.loads(out)]
    assert sorted(cli("Name=Eq(flt-c)")) == ["flt-c"]
    assert sorted(cli("Name=flt-c")) == ["flt-c"]
    assert sorted(cli("Name=In(flt-a,flt-b)")) == ["flt-a", "flt-b"]
    assert cli("sort=Name", "reverse=true", "limit=2") == ["flt-e", "flt-d"]
    assert free("Name", "In", "flt-a,flt-b", "sort", "Name") == ["flt-a", "flt-b"]
    assert free("Name", "between", "flt-b", "flt-d", "sort", "Name", "reverse") == \
        ["flt-d", "flt-c", "flt-b"]
    assert free("Params.count", "Gt", "2", "sort", "Name", "offset", "1", "limit", "1") == \
        ["flt-d"]
    bad = drppy.server.drpcli("machines", "list", "Name=Re(fl[t)", check=False)
    assert bad.returncode == 1 and "406" in bad.stderr and "regular expression" in bad.stderr
    bad = drppy.server.drpcli("machines", "list", "Name", "Like", "x", check=False)
    assert bad.returncode == 1 and "unknown op Like" in bad.stderr
    bad = drppy.server.drpcli("machines", "list", "Name=x", "sort", check=False)
    assert bad.returncode == 1 and "requires an '=' separator: sort" in bad.stderr


def test_matching_rules():
    """The matcher itself, for what the fleet above does not hold."""
    eq = parse("F", "Eq(x)")
    assert not matches(eq, None) and matches(parse("F", "Ne(x)"), None)  # missing: never equal
    assert matches(parse("F", r"Re(ab\z)"), "xab") and not matches(parse("F", r"Re(ab\z)"), "ab\n")
    assert matches(parse("F", "Eq(Foo(bar))"), "Foo(bar)")  # a literal that looks like a call
    assert matches(parse("F", "Gt(2.5)"), 3) and not matches(parse("F", "Lt(x)"), 3)
    assert matches(parse("F", "Re(true)"), True) and matches(parse("F", "Re(^1)"), 12)
    assert matches(parse("F", "In(a,b)"), ["c", "b"]) and not matches(parse("F", "In(a,b)"), [])


def test_re_is_go_regexp_re2():
    """Re(...) is RE2, as Go's regexp: POSIX classes and \\pL match, Perl-only constructs that
    RE2 refuses (backreferences, lookaheads) are a 406 reason, not a silent Python match."""
    assert matches(parse("F", "Re(^[[:alpha:]]+$)"), "abc") and \
        not matches(parse("F", "Re(^[[:alpha:]]+$)"), "ab1")
    assert matches(parse("F", r"Re(^\pL+$)"), "été")
    for pattern in (r"(a)\1", "(?=a)a", "(?<!b)a"):
        with pytest.raises(FilterError, match="not a regular expression"):
            parse("F", f"Re({pattern})")
