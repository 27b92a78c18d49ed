def test_info_and_create(drp):
    with drp.client() as c:
        info = c.get("/info").json()
        assert info["ha_is_active"] is True and info["api_port"] == drp.api_port
        r = c.post("/machines", json={"Name": "m1"})
        assert r.status_code == 201, r.text
