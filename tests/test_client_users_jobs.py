"""RackN's Python client (drppy-client) against a real drp: UsersApi (create, get, list,
password, token) and JobsApi (create for a machine, get, list, the log) (issue 16)."""
from __future__ import annotations

from drppy_client import JobsApi, MachinesApi, UsersApi
from drppy_client.models import Job, Machine, User, UserPassword, UserToken

from tests.drppy import client_for, drppy, refusal_status  # noqa: F401  (the fixture)


# ---- users ------------------------------------------------------------------------------------
def test_users_create_get_list(drppy):
    users = drppy.api(UsersApi)
    made = users.create_user(User(name="greg", description="an operator"))
    assert isinstance(made, User) and made.name == "greg" and made.description == "an operator"
    assert made.password_hash in (None, "")  # the hash never leaves the server
    got = users.get_user("greg")
    assert isinstance(got, User) and got.name == "greg" and got.roles == made.roles
    assert {"greg", "rocketskates"} <= {u.name for u in users.list_users()}
    assert [u.name for u in users.list_users(name="greg")] == ["greg"]
    assert refusal_status(lambda: users.create_user(User(name="greg"))) == 409
    assert refusal_status(lambda: users.get_user("nobody")) == 404


def test_user_password_then_token(drppy):
    users = drppy.api(UsersApi)
    users.create_user(User(name="pat"))
    # The client is wrong here: put_user_password takes no name and leaves {name} in the path
    # unfilled (PUT /users/%7Bname%7D/password), so it asks for a user literally named
    # "{name}". Shown, then the call made through the client's own call_api.
    assert refusal_status(lambda: users.put_user_password(UserPassword(password="s3cret!"))) == 404
    got = drppy.client.call_api(
        "/users/{name}/password", "PUT", {"name": "pat"}, [], {},
        body=UserPassword(password="s3cret!"), response_type="User",
        auth_settings=["basicAuth"], _return_http_data_only=True)
    assert isinstance(got, User) and got.name == "pat"
    pat = UsersApi(client_for(drppy.server, "pat", "s3cret!"))
    assert pat.get_user("pat").name == "pat"  # the new password authenticates
    assert refusal_status(lambda: UsersApi(client_for(drppy.server, "pat", "wrong")).get_user("pat")
                   ) == 401
    # get_user_token: the same client bug (name in the query string), as test_client_system shows
    token = drppy.client.call_api(
        "/users/{name}/token", "GET", {"name": "pat"}, [("ttl", "60")], {},
        response_type="UserToken", auth_settings=["basicAuth"], _return_http_data_only=True)
    assert isinstance(token, UserToken) and token.token


# ---- jobs -------------------------------------------------------------------------------------
def test_jobs_create_get_list_and_log(drppy):
    machine = drppy.api(MachinesApi).create_machine(Machine(name="job-box"))
    jobs = drppy.api(JobsApi)
    made = jobs.create_job(Job(machine=machine.uuid))
    assert isinstance(made, Job) and made.machine == machine.uuid and made.uuid
    got = jobs.get_job(made.uuid)
    assert isinstance(got, Job) and got.uuid == made.uuid and got.state == made.state
    assert made.uuid in [j.uuid for j in jobs.list_jobs()]
    assert [j.uuid for j in jobs.list_jobs(machine=machine.uuid)] == [made.uuid]
    # The client is wrong here: put_job_log takes no body parameter at all, so it can only
    # send nothing, and its rest.py refuses a body-less octet-stream PUT before sending
    # (status 0). Shown, then the appends made through the client's own call_api.
    assert refusal_status(lambda: jobs.put_job_log(made.uuid)) == 0
    for piece in ("line one\n", "line two\n"):
        drppy.client.call_api(
            "/jobs/{uuid}/log", "PUT", {"uuid": made.uuid}, [],
            {"Content-Type": "application/octet-stream"}, body=piece,
            auth_settings=["basicAuth"])
    log = jobs.get_job_log(made.uuid, _preload_content=False)
    assert log.status == 200 and log.data == b"line one\nline two\n"
    assert log.headers["Content-Type"].startswith("application/octet-stream")
    jobs.head_job_log(made.uuid)
    assert jobs.delete_job(made.uuid).uuid == made.uuid
    assert refusal_status(lambda: jobs.get_job(made.uuid)) == 404
    assert refusal_status(lambda: jobs.get_job("00000000-0000-0000-0000-000000000000")) == 404
