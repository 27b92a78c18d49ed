"""drp.dhcp's sans-IO core: packets, option values, templates, the book and the engine, with
client packets built by scapy the way udhcpc, dhclient, iPXE and a BIOS PXE ROM send them."""
from __future__ import annotations

import ipaddress
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from scapy.layers.dhcp import BOOTP, DHCP

from drp.dhcp import optvalues, packets, template
from drp.dhcp.book import OFFER_HOLD, Book
from drp.dhcp.engine import Dropped, Ingress, decide
from drp.dhcp.packets import Malformed

MAC, MAC2, MAC3 = "52:54:00:12:34:56", "52:54:00:00:00:02", "52:54:00:00:00:03"
SERVER = "198.18.1.2"
NOW = 1_800_000_000.0
INGRESS = Ingress("lab0", SERVER, (ipaddress.IPv4Interface("198.18.1.2/24"),), 8091)
IPXE_CLASS = "PXEClient:Arch:00007:UNDI:003010"


# ---- client packets -----------------------------------------------------------------------------
def client(kind, mac=MAC, style="udhcpc", xid=0x1234, ciaddr="0.0.0.0", giaddr="0.0.0.0",
           flags=0, extra=(), prl=None) -> bytes:
    hw = bytes.fromhex(mac.replace(":", ""))
    opts = [("message-type", kind), ("client_id", b"\x01" + hw)]
    if style == "udhcpc":
        opts += [("max_dhcp_size", 576), ("vendor_class_id", b"udhcp 1.36.1"),
                 ("hostname", b"box"), ("param_req_list", prl or [1, 3, 6, 12, 15, 28, 42])]
    elif style == "dhclient":
        opts += [("hostname", b"deb"),
                 ("param_req_list", prl or [1, 28, 2, 3, 15, 6, 119, 12, 44, 47, 26, 121, 42])]
    elif style == "ipxe":
        opts += [("max_dhcp_size", 1472), (93, b"\x00\x07"), (94, b"\x01\x02\x01"),
                 ("vendor_class_id", IPXE_CLASS.encode()), ("user_class", b"iPXE"),
                 ("param_req_list", prl or [1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119,
                                            128, 129, 130, 131, 132, 133, 134, 135, 175, 203]),
                 (97, b"\x00" + bytes(range(16)))]
    elif style == "bios":
        opts += [("max_dhcp_size", 1260), (93, b"\x00\x00"), (94, b"\x01\x02\x01"),
                 ("vendor_class_id", b"PXEClient:Arch:00000:UNDI:002001"),
                 ("param_req_list", prl or [1, 2, 3, 5, 6, 11, 12, 13, 15, 16, 17, 18, 43, 54,
                                            60, 66, 67, 128, 129, 130, 131, 132, 133, 134, 135])]
    elif style == "bare":
        if prl is not None:
            opts.append(("param_req_list", prl))
    opts += list(extra)
    return bytes(BOOTP(op=1, xid=xid, flags=flags, ciaddr=ciaddr, giaddr=giaddr,
                       chaddr=hw + b"\0" * 10) / DHCP(options=opts + ["end"]))


def req(*a, **k) -> packets.Request:
    return packets.parse(client(*a, **k))


def ropts(reply: bytes) -> dict[int, bytes]:
    """A reply's options, walked by hand (packets.parse only takes requests)."""
    assert reply[236:240] == packets.MAGIC
    out, i = {}, 240
    while i < len(reply) and reply[i] != 255:
        if reply[i] == 0:
            i += 1
            continue
        out[reply[i]] = out.get(reply[i], b"") + reply[i + 2:i + 2 + reply[i + 1]]
        i += 2 + reply[i + 1]
    return out


def order(reply: bytes) -> list[int]:
    codes, i = [], 240
    while reply[i] != 255:
        codes.append(reply[i])
        i += 2 + reply[i + 1]
    return codes


def ip(raw: bytes) -> str:
    return str(ipaddress.IPv4Address(raw))


def u32(raw: bytes) -> int:
    return struct.unpack("!I", raw)[0]


# ---- data ---------------------------------------------------------------------------------------
def subnet(**over) -> dict:
    obj = {"Name": "lab", "Subnet": "198.18.1.0/24", "ActiveStart": "198.18.1.50",
           "ActiveEnd": "198.18.1.99", "ActiveLeaseTime": 600, "ReservedLeaseTime": 7200,
           "Strategy": "MAC", "Enabled": True, "OnlyReservations": False, "NextServer": "",
           "Pickers": ["hint", "nextFree", "mostExpired"],
           "Options": [{"Code": 3, "Value": "198.18.1.1"}, {"Code": 6, "Value": "198.18.1.1"},
                       {"Code": 15, "Value": "lab.example"}]}
    obj.update(over)
    return obj


def lease(addr, token, expire, state="ACK", **over) -> dict:
    obj = {"Addr": addr, "Token": token, "Strategy": "MAC", "State": state,
           "ExpireTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expire)),
           "Duration": 600, "Via": "198.18.1.2", "NextServer": SERVER, "Options": [],
           "ProvidedOptions": [], "SkipBoot": False, "MachineUuid": ""}
    obj.update(over)
    return obj


def reservation(addr, token=MAC, **over) -> dict:
    obj = {"Addr": addr, "Token": token, "Strategy": "MAC", "Options": [], "NextServer": ""}
    obj.update(over)
    return obj


def book(subnets=None, reservations=(), leases=()) -> Book:
    return Book.load(subnets if subnets is not None else [subnet()], list(reservations), list(leases))


def commit(b: Book, d) -> None:
    """What the server does once a decision's lease change is committed."""
    if d.lease_delete:
        b.apply("leases", d.lease_delete, None)
    if d.lease_put:
        b.apply("leases", d.lease_put["Addr"], d.lease_put)


def dora(b: Book, mac=MAC, style="udhcpc", now=NOW, **k):
    offer = decide(req("discover", mac, style, **k), INGRESS, b, now)
    yi = ip(offer.reply[16:20])
    ack = decide(req("request", mac, style, extra=[("server_id", SERVER),
                                                   ("requested_addr", yi)]), INGRESS, b, now)
    commit(b, ack)
    return offer, ack


# ---- packets ------------------------------------------------------------------------------------
def test_parse_request_fields_and_helpers():
    r = req("discover", style="ipxe", flags=0x8000, xid=0xdeadbeef)
    assert (r.msg_type, r.xid, r.flags, r.broadcast, r.chaddr) == (1, 0xdeadbeef, 0x8000, True, MAC)
    assert r.ciaddr == r.giaddr == "0.0.0.0"
    assert r.client_arch == 7 and r.user_class == "iPXE" and r.max_message_size == 1472
    assert r.param_request_list[:3] == (1, 3, 6) and r.options[60] == IPXE_CLASS.encode()
    r = req("request", style="dhclient", extra=[("requested_addr", "198.18.1.7"),
                                               ("server_id", SERVER)])
    assert (r.requested_ip, r.server_id, r.hostname, r.client_arch, r.user_class) == \
        ("198.18.1.7", SERVER, "deb", None, None)


def test_user_class_rfc3004_and_raw():
    assert packets.user_class_text(b"\x04iPXE") == "iPXE"
    assert packets.user_class_text(b"\x01a\x02bc") == "a,bc"
    assert packets.user_class_text(b"iPXE") == "iPXE"


def _good() -> bytearray:
    return bytearray(client("discover"))


@pytest.mark.parametrize("mutate, why", [
    (lambda b: b[:239], "240"),
    (lambda b: b"", "240"),
    (lambda b: b.__setitem__(0, 2) or b, "BOOTREQUEST"),
    (lambda b: b.__setitem__(0, 7) or b, "BOOTREQUEST"),
    (lambda b: b.__setitem__(1, 6) or b, "Ethernet"),
    (lambda b: b.__setitem__(2, 16) or b, "Ethernet"),
    (lambda b: b.__setitem__(236, 0) or b, "cookie"),
    (lambda b: b[:240] + bytes([12, 3]) + b"box" + b"\xff", "message type"),
    (lambda b: b[:240] + bytes([53, 1, 0, 255]), "1..8"),
    (lambda b: b[:240] + bytes([53, 1, 9, 255]), "1..8"),
    (lambda b: b[:240] + bytes([53, 2, 1, 1, 255]), "1..8"),
    (lambda b: b[:240] + bytes([53, 1, 1, 12, 200]) + b"abc", "past the end"),
    (lambda b: b[:240] + bytes([53, 1, 1, 12]), "no length"),
])
def test_parse_refuses(mutate, why):
    with pytest.raises(Malformed, match=why):
        packets.parse(bytes(mutate(_good())))


def test_parse_pad_end_and_repeats():
    base = _good()[:240]
    data = bytes(base) + bytes([0, 0, 53, 1, 3, 0, 12, 2]) + b"ab" + bytes([12, 2]) + b"cd" + \
        bytes([255, 12, 250]) + b"trailing garbage after end"
    r = packets.parse(data)
    assert r.msg_type == 3 and r.options[12] == b"abcd"  # RFC 3396: parts concatenated
    assert packets.parse(bytes(base) + bytes([53, 1, 1])).msg_type == 1  # no end: tolerated


def test_build_reply_echoes_and_pads():
    r = req("discover", giaddr="198.18.9.1", flags=0x8000, xid=77)
    out = packets.build_reply(r, packets.OFFER, "198.18.1.50", "198.18.1.3",
                              [(1, b"\xff\xff\xff\0"), (54, b"\xc6\x12\x01\x02")], file="ipxe.efi")
    b = BOOTP(out)
    assert (b.op, b.xid, int(b.flags), b.giaddr, b.yiaddr, b.siaddr) == \
        (2, 77, 0x8000, "198.18.9.1", "198.18.1.50", "198.18.1.3")
    assert bytes(b.chaddr)[:6] == bytes.fromhex(MAC.replace(":", "")) and b.file.rstrip(b"\0") == b"ipxe.efi"
    assert len(out) == 300 and order(out) == [53, 54, 1] and out[240:243] == b"\x35\x01\x02"
    assert out.dropped == ()


def test_build_reply_honours_max_message_size():
    r = req("discover", style="bare", extra=[("max_dhcp_size", 576)])
    many = [(54, b"\xc6\x12\x01\x02"), (51, b"\0\0\2\x58"), (1, b"\xff\xff\xff\0")]
    many += [(c, b"x" * 60) for c in range(200, 210)] + [(67, b"ipxe.efi"), (3, b"\xc6\x12\x01\x01")]
    out = packets.build_reply(r, packets.ACK, "198.18.1.50", SERVER, many)
    assert len(out) <= 576 - 28
    got = ropts(out)
    assert {53, 54, 51, 1, 3, 67} <= set(got) and out.dropped
    assert not set(out.dropped) & {53, 54, 51, 1, 3, 67}
    assert set(out.dropped) | set(got) == {53} | {c for c, _ in many}
    big = packets.build_reply(req("discover", style="bare"), packets.ACK, "198.18.1.50", SERVER, many)
    assert big.dropped == () and len(big) > 576  # no 57: nothing cut


def test_build_reply_splits_long_options():
    r = req("discover", style="bare")
    out = packets.build_reply(r, packets.OFFER, "0.0.0.0", "0.0.0.0", [(67, b"u" * 600)])
    assert ropts(out)[67] == b"u" * 600 and order(out).count(67) == 3
    assert BOOTP(out).file.rstrip(b"\0") == b""  # too long for the file field


# ---- optvalues ----------------------------------------------------------------------------------
@pytest.mark.parametrize("code, value, raw", [
    (1, "255.255.255.0", b"\xff\xff\xff\x00"),
    (3, "10.0.0.1,10.0.0.2", b"\n\0\0\1\n\0\0\2"),
    (6, "1.1.1.1", b"\1\1\1\1"),
    (2, "-3600", struct.pack("!i", -3600)),
    (51, "86400", struct.pack("!I", 86400)),
    (13, "12", b"\0\x0c"),
    (57, "1500", b"\x05\xdc"),
    (23, "64", b"\x40"),
    (19, "true", b"\1"),
    (19, "false", b"\0"),
    (55, "1,3,6", b"\1\3\6"),
    (93, "7", b"\0\7"),
    (12, "box", b"box"),
    (67, "ipxe.efi", b"ipxe.efi"),
    (77, "iPXE", b"iPXE"),
    (61, "01:52:54:00:12:34:56", b"\1RT\0\x124V"),
    (119, "a.example,b", b"\1a\7example\0\1b\0"),
    (224, "anything", b"anything"),
])
def test_optvalues_round_trip(code, value, raw):
    assert optvalues.encode(code, value) == raw
    assert optvalues.describe(code, raw) == value


@pytest.mark.parametrize("code, value", [
    (1, "10.0.0.1,10.0.0.2"), (3, "10.0.0"), (6, "not-an-ip"), (21, "1.2.3.4"), (13, "70000"),
    (23, "256"), (51, "-1"), (2, "2147483648"), (19, "maybe"), (57, "x"), (55, "1,300"),
    (61, "zz"), (12, ""), (3, " "), (119, "a..b"), (0, "x"), (255, "x"), (12, 5),
])
def test_optvalues_refusals(code, value):
    with pytest.raises(optvalues.BadOption):
        optvalues.encode(code, value)


def test_describe_never_raises_on_odd_bytes():
    assert optvalues.describe(3, b"\1\2\3") == "01:02:03"  # not a whole address: hex
    assert optvalues.describe(51, b"") == ""
    assert optvalues.describe(60, b"PXEClient\0") == "PXEClient"
    assert optvalues.describe(119, b"\xc0\x0c") == "c0:0c"  # a compression pointer


# ---- templates ----------------------------------------------------------------------------------
DRP_67 = ('{{if (eq (index . 77) "iPXE") }}default.ipxe{{else if (eq (index . 93) "0")}}'
          'ipxe.pxe{{else}}ipxe.efi{{end}}')


@pytest.mark.parametrize("text, opts, out", [
    ("plain", {}, "plain"),
    ("{{index . 12}}-x", {12: "box"}, "box-x"),
    ("[{{index . 12}}]", {}, "[]"),  # missing: "" (not Go's "<no value>")
    (DRP_67, {77: "iPXE", 93: "7"}, "default.ipxe"),
    (DRP_67, {93: "0"}, "ipxe.pxe"),
    (DRP_67, {93: "7"}, "ipxe.efi"),
    ('{{if ne (index . 93) "0"}}efi{{end}}', {93: "7"}, "efi"),
    ('{{if ne (index . 93) "0"}}efi{{end}}', {93: "0"}, ""),
    ("{{if index . 77}}yes{{else}}no{{end}}", {77: "iPXE"}, "yes"),
    ("{{if index . 77}}yes{{else}}no{{end}}", {77: ""}, "no"),
    ("{{if (index . 77)}}y{{end}}", {}, ""),
    ('{{if eq (index . 93) "7"}}{{if eq (index . 77) "iPXE"}}A{{else}}B{{end}}{{else}}C{{end}}',
     {93: "7"}, "B"),
    ('{{if eq (index . 93) "7"}}{{if eq (index . 77) "iPXE"}}A{{else}}B{{end}}{{else}}C{{end}}',
     {93: "7", 77: "iPXE"}, "A"),
    ('{{if eq "7" (index . 93)}}s{{end}}', {93: "7"}, "s"),
    ('{{if eq (index . 93) "0"}}a{{else if eq (index . 93) "6"}}b{{else if ne (index . 93) "7"}}c'
     '{{else}}d{{end}}', {93: "9"}, "c"),
    ('{{if eq (index . 93) "0"}}a{{else if eq (index . 93) "6"}}b{{else if ne (index . 93) "7"}}c'
     '{{else}}d{{end}}', {93: "7"}, "d"),
    ('a \n {{- index . 1 -}} \n b', {1: "X"}, "aXb"),
    ('a {{index . 1}} b', {1: "X"}, "a X b"),
    ('{{if eq (index . 60) "a}}b\\"c"}}q{{end}}', {60: 'a}}b"c'}, "q"),
    ('{{- if eq (index . 93) "0" -}}\n  bios\n{{- else -}}\n  efi\n{{- end -}}\n', {93: "0"}, "bios"),
])
def test_template_render(text, opts, out):
    template.check(text)
    assert template.render(text, opts) == out


@pytest.mark.parametrize("text", [
    "{{", "{{index . 1", "{{foo}}", "{{.}}", "{{index . 1 2}}", "{{index . 256}}", "{{index . x}}",
    "{{if}}x{{end}}", "{{if eq (index . 1)}}x{{end}}", '{{if eq (index . 1) "a"}}x',
    "{{else}}", "{{end}}", "{{if index . 1}}{{else}}{{else}}{{end}}", '{{printf "%s" 1}}',
    '{{if and (index . 1) (index . 2)}}x{{end}}', '{{"lit"}}', "{{/* c */}}", "{{-3}}",
    '{{if eq index . 1 "a"}}x{{end}}', '{{if eq (index . 1) "\\q"}}x{{end}}', "{{$x := 1}}",
    '{{if index . 1}}{{else if}}{{end}}', "{{range .}}{{end}}", 5,
])
def test_template_check_refuses(text):
    with pytest.raises(template.TemplateError):
        template.check(text)


# ---- book ---------------------------------------------------------------------------------------
def test_book_subnet_for_most_specific_and_enabled():
    b = book([subnet(), subnet(Name="wide", Subnet="198.18.0.0/16", ActiveStart="198.18.200.1",
                                ActiveEnd="198.18.200.9"),
              subnet(Name="off", Subnet="198.18.7.0/24", Enabled=False,
                     ActiveStart="198.18.7.10", ActiveEnd="198.18.7.20")])
    assert b.subnet_for("198.18.1.7").name == "lab"
    assert b.subnet_for("198.18.3.7").name == "wide"
    assert b.subnet_for("198.18.7.7").name == "wide"  # the disabled one is passed over
    assert b.subnet_for("198.18.7.7", enabled_only=False).name == "off"
    assert b.subnet_for("10.0.0.1") is None and b.subnet_for("junk") is None
    b.apply("subnets", "wide", None)
    assert b.subnet_for("198.18.3.7") is None


def test_book_indexes_follow_apply():
    b = book(reservations=[reservation("198.18.1.10")],
             leases=[lease("198.18.1.50", MAC, NOW + 100), lease("198.18.1.51", MAC2, NOW - 100)])
    assert b.reservation("MAC", MAC)["Addr"] == "198.18.1.10" and b.reservation_at("198.18.1.10")
    assert b.lease_at("198.18.1.50")["Token"] == MAC and b.lease_for("MAC", MAC)["Addr"] == "198.18.1.50"
    assert b.lease_for("MAC", MAC, "other") is None
    b.apply("leases", "198.18.1.50", lease("198.18.1.50", MAC3, NOW + 100))  # re-tokened
    assert b.lease_for("MAC", MAC) is None and b.lease_for("MAC", MAC3)["Addr"] == "198.18.1.50"
    b.apply("reservations", "198.18.1.10", reservation("198.18.1.10", MAC2))
    assert b.reservation("MAC", MAC) is None and b.reservation("MAC", MAC2)["Addr"] == "198.18.1.10"
    b.apply("reservations", "198.18.1.10", None)
    assert b.reservation_at("198.18.1.10") is None
    assert b.expired(NOW) == ["198.18.1.51"]
    b.apply("leases", "198.18.1.51", None)
    assert b.expired(NOW) == [] and b.lease_at("198.18.1.51") is None


def test_book_next_free_skips_used_and_moves_on():
    b = book(reservations=[reservation("198.18.1.52")],
             leases=[lease("198.18.1.50", MAC2, NOW - 999), lease("198.18.1.51", MAC3, NOW + 9)])
    sub = b.subnets["lab"]
    assert b.next_free(sub, NOW) == "198.18.1.53"  # an expired lease still counts (nextFree)
    b.hold("198.18.1.53", MAC, NOW + OFFER_HOLD)
    assert b.next_free(sub, NOW) == "198.18.1.54"
    b.unhold("198.18.1.53")
    assert b.next_free(sub, NOW) == "198.18.1.55"  # the cursor moved on ...
    for a in range(56, 100):
        b.hold(f"198.18.1.{a}", f"t{a}", NOW + OFFER_HOLD)
    assert b.next_free(sub, NOW) == "198.18.1.53"  # ... and wraps
    b.hold("198.18.1.53", "x", NOW + 1)
    b.hold("198.18.1.54", "y", NOW + 1)
    b.hold("198.18.1.55", "z", NOW + 1)
    assert b.next_free(sub, NOW) is None
    assert b.next_free(sub, NOW + 2) == "198.18.1.54"  # holds expire (from the cursor)


def test_book_most_expired_and_is_free():
    b = book(reservations=[reservation("198.18.1.60", MAC3)],
             leases=[lease("198.18.1.60", MAC2, NOW - 900), lease("198.18.1.61", MAC2, NOW - 500),
                     lease("198.18.1.62", MAC2, NOW - 800, "FREE"), lease("198.18.1.63", MAC2, NOW + 5),
                     lease("198.18.1.30", MAC2, NOW - 9999)])  # outside the active range
    sub = b.subnets["lab"]
    assert b.most_expired(sub, MAC, NOW) == "198.18.1.62"  # .60 is reserved for another
    assert b.is_free("198.18.1.61", MAC, NOW) and not b.is_free("198.18.1.63", MAC, NOW)
    assert b.is_free("198.18.1.63", MAC2, NOW) and not b.is_free("198.18.1.60", MAC, NOW)
    b.hold("198.18.1.62", MAC3, NOW + 30)
    assert b.most_expired(sub, MAC, NOW) == "198.18.1.61"


def test_book_tolerates_odd_stored_data():
    b = book([subnet(), {"Name": "x", "Subnet": "nope"}, subnet(Name="y", Subnet="10.0.0.0/8",
                                                               ActiveStart=None)],
             [reservation("bad"), {"Token": MAC}], [lease("bad", MAC, NOW), {"Addr": "198.18.1.5"}])
    assert len(b.skipped) == 4 and b.subnets["y"].problem
    assert b.lease_at("198.18.1.5")["Addr"] == "198.18.1.5" and b.expiry("198.18.1.5") == 0.0


def _big_book(n: int, gap: int | None = None):
    sub = subnet(Name="big", Subnet="198.18.0.0/16", ActiveStart="198.18.0.1",
                 ActiveEnd="198.18.255.254")
    first = int(ipaddress.IPv4Address("198.18.0.1"))
    leases = [lease(str(ipaddress.IPv4Address(first + i)),
                    f"02:00:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}", NOW + 600)
              for i in range(n) if i != gap]
    return Book.load([sub], [], leases)


def test_book_big_subnet_next_pick():
    first = int(ipaddress.IPv4Address("198.18.0.1"))
    b = _big_book(60_000)
    sub = b.subnets["big"]
    t0 = time.perf_counter()
    got = b.next_free(sub, NOW)
    took = time.perf_counter() - t0
    assert got == str(ipaddress.IPv4Address(first + 60_000))  # past the run of 60k leases
    b.hold(got, "c1", NOW + 30)
    assert b.next_free(sub, NOW) == str(ipaddress.IPv4Address(first + 60_001))
    b = _big_book(60_000, gap=31_337)  # one hole in the middle of the run
    assert b.next_free(b.subnets["big"], NOW) == str(ipaddress.IPv4Address(first + 31_337))
    assert b.next_free(b.subnets["big"], NOW) == str(ipaddress.IPv4Address(first + 60_000))
    print(f"\n60k-lease /16: next_free {took * 1e6:.0f} µs")


# ---- engine: subnet, destination ------------------------------------------------------------
def test_discover_offer_next_free_holds_and_repeats():
    b = book()
    o1 = decide(req("discover"), INGRESS, b, NOW)
    assert BOOTP(o1.reply).yiaddr == "198.18.1.50" and ropts(o1.reply)[53] == b"\2"
    assert (o1.dest, o1.port, o1.lease_put) == ("broadcast", 68, None)
    assert o1.log.startswith("OFFER 198.18.1.50 to " + MAC + " (nextFree)")
    o2 = decide(req("discover", MAC2), INGRESS, b, NOW)
    assert BOOTP(o2.reply).yiaddr == "198.18.1.51"  # .50 held for MAC
    again = decide(req("discover"), INGRESS, b, NOW + 5)
    assert BOOTP(again.reply).yiaddr == "198.18.1.50"  # a repeated DISCOVER: the same offer
    later = decide(req("discover", MAC3), INGRESS, b, NOW + 5 + OFFER_HOLD + 1)
    assert BOOTP(later.reply).yiaddr == "198.18.1.52"  # the cursor moves on


def test_relay_picks_subnet_and_replies_to_giaddr():
    b = book([subnet(), subnet(Name="far", Subnet="198.18.2.0/24", ActiveStart="198.18.2.100",
                               ActiveEnd="198.18.2.110")])
    d = decide(req("discover", giaddr="198.18.2.1"), INGRESS, b, NOW)
    assert BOOTP(d.reply).yiaddr == "198.18.2.100" and (d.dest, d.port) == ("198.18.2.1", 67)
    assert BOOTP(d.reply).giaddr == "198.18.2.1" and ip(ropts(d.reply)[1]) == "255.255.255.0"
    a = decide(req("request", extra=[("server_id", SERVER), ("requested_addr", "198.18.2.100")],
                   giaddr="198.18.2.1"), INGRESS, b, NOW)
    assert a.lease_put["Via"] == "198.18.2.1" and (a.dest, a.port) == ("198.18.2.1", 67)
    with pytest.raises(Dropped, match="no subnet for relay 198.18.9.1"):
        decide(req("discover", giaddr="198.18.9.1"), INGRESS, b, NOW)


def test_no_subnet_disabled_and_bad_range_drop():
    with pytest.raises(Dropped, match="no subnet for lab0"):
        decide(req("discover"), INGRESS, book([]), NOW)
    with pytest.raises(Dropped, match="subnet lab is disabled"):
        decide(req("discover"), INGRESS, book([subnet(Enabled=False)]), NOW)
    odd = book([subnet(ActiveStart="198.18.1.99", ActiveEnd="198.18.1.50")])
    with pytest.raises(Dropped, match="ActiveStart 198.18.1.99 is after ActiveEnd"):
        decide(req("discover"), INGRESS, odd, NOW)
    odd.apply("reservations", "198.18.1.20", reservation("198.18.1.20"))
    assert BOOTP(decide(req("discover"), INGRESS, odd, NOW).reply).yiaddr == "198.18.1.20"


def test_interface_with_two_subnets_uses_the_clients():
    two = Ingress("lab0", SERVER, (ipaddress.IPv4Interface("198.18.1.2/24"),
                                   ipaddress.IPv4Interface("198.18.3.2/24")), 8091)
    b = book([subnet(), subnet(Name="three", Subnet="198.18.3.0/24", ActiveStart="198.18.3.50",
                               ActiveEnd="198.18.3.60")],
             leases=[lease("198.18.3.55", MAC, NOW + 300)])
    d = decide(req("request", ciaddr="198.18.3.55"), two, b, NOW)
    assert d.lease_put["Via"] == "198.18.3.2" and (d.dest, d.port) == ("198.18.3.55", 68)


# ---- engine: DISCOVER address choice ----------------------------------------------------------
def test_reservation_wins_with_its_time_options_and_next_server():
    b = book(reservations=[reservation("198.18.1.20", Options=[{"Code": 15, "Value": "res.example"}],
                                       NextServer="198.18.1.9")],
             leases=[lease("198.18.1.55", MAC, NOW + 300)])
    d = decide(req("discover", style="bios"), INGRESS, b, NOW)
    o = ropts(d.reply)
    assert BOOTP(d.reply).yiaddr == "198.18.1.20" and "(reservation)" in d.log
    assert u32(o[51]) == 7200 and o[15] == b"res.example" and BOOTP(d.reply).siaddr == "198.18.1.9"
    assert o[66] == b"198.18.1.9" and o[67] == b"ipxe.pxe"
    b.apply("reservations", "198.18.1.20", reservation("198.18.1.20", Duration=99))
    assert u32(ropts(decide(req("discover"), INGRESS, b, NOW).reply)[51]) == 99


def test_current_lease_reused_then_hint():
    b = book(leases=[lease("198.18.1.77", MAC, NOW - 50, "FREE")])  # released: affinity
    d = decide(req("discover", extra=[("requested_addr", "198.18.1.60")]), INGRESS, b, NOW)
    assert BOOTP(d.reply).yiaddr == "198.18.1.77" and "(lease)" in d.log
    d = decide(req("discover", MAC2, extra=[("requested_addr", "198.18.1.60")]), INGRESS, b, NOW)
    assert BOOTP(d.reply).yiaddr == "198.18.1.60" and "(hint)" in d.log


@pytest.mark.parametrize("hint", ["198.18.1.77", "198.18.1.10", "198.18.5.5", "198.18.1.255"])
def test_unusable_hint_falls_to_next_free(hint):
    b = book(leases=[lease("198.18.1.77", MAC2, NOW + 50)])  # .77 another's; .10 out of range
    d = decide(req("discover", extra=[("requested_addr", hint)]), INGRESS, b, NOW)
    assert BOOTP(d.reply).yiaddr == "198.18.1.50" and "(nextFree)" in d.log


def test_most_expired_when_range_full_then_none_free():
    sub = subnet(ActiveStart="198.18.1.50", ActiveEnd="198.18.1.52")
    b = book([sub], leases=[lease("198.18.1.50", MAC2, NOW + 50), lease("198.18.1.51", MAC3, NOW - 10),
                            lease("198.18.1.52", "02:00:00:00:00:09", NOW - 90)])
    d = decide(req("discover"), INGRESS, b, NOW)
    assert BOOTP(d.reply).yiaddr == "198.18.1.52" and "(mostExpired)" in d.log
    d = decide(req("discover", "02:00:00:00:00:10"), INGRESS, b, NOW)
    assert BOOTP(d.reply).yiaddr == "198.18.1.51"
    with pytest.raises(Dropped, match="no free address in subnet lab"):
        decide(req("discover", "02:00:00:00:00:11"), INGRESS, b, NOW)


def test_pickers_none_and_only_reservations():
    with pytest.raises(Dropped, match="no free address"):
        decide(req("discover"), INGRESS, book([subnet(Pickers=["none", "nextFree"])]), NOW)
    b = book([subnet(OnlyReservations=True)], [reservation("198.18.1.20", MAC2)])
    with pytest.raises(Dropped, match="reservations only"):
        decide(req("discover"), INGRESS, b, NOW)
    assert BOOTP(decide(req("discover", MAC2), INGRESS, b, NOW).reply).yiaddr == "198.18.1.20"
    # init-reboot of a free address: not without a reservation
    d = decide(req("request", extra=[("requested_addr", "198.18.1.60")]), INGRESS, b, NOW)
    assert ropts(d.reply)[53] == b"\6" and d.lease_put is None


# ---- engine: REQUEST ----------------------------------------------------------------------------
def test_selecting_ack_commits_a_full_lease():
    b = book()
    offer, ack = dora(b, style="ipxe")
    lp = ack.lease_put
    assert set(lp) >= {"Addr", "Token", "Strategy", "State", "ExpireTime", "Duration", "Via",
                       "NextServer", "Options", "ProvidedOptions", "SkipBoot", "MachineUuid"}
    assert (lp["Addr"], lp["Token"], lp["Strategy"], lp["State"], lp["Duration"]) == \
        ("198.18.1.50", MAC, "MAC", "ACK", 600)
    assert lp["ExpireTime"] == time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(NOW + 600))
    assert (lp["Via"], lp["NextServer"], lp["SkipBoot"], lp["MachineUuid"]) == (SERVER, SERVER, False, "")
    provided = {o["Code"]: o["Value"] for o in lp["ProvidedOptions"]}
    assert provided[93] == "7" and provided[77] == "iPXE" and provided[60] == IPXE_CLASS
    sent = {o["Code"]: o["Value"] for o in lp["Options"]}
    assert sent[51] == "600" and sent[58] == "300" and sent[59] == "450" and sent[54] == SERVER
    o = ropts(ack.reply)
    assert o[53] == b"\5" and u32(o[51]) == 600 and u32(o[58]) == 300 and u32(o[59]) == 450
    assert BOOTP(ack.reply).yiaddr == "198.18.1.50" and ack.log.startswith("ACK 198.18.1.50 to")
    assert b.lease_at("198.18.1.50")["State"] == "ACK"


def test_selecting_other_server_unholds_and_drops():
    b = book()
    decide(req("discover"), INGRESS, b, NOW)
    with pytest.raises(Dropped, match="chose server 198.18.1.3"):
        decide(req("request", extra=[("server_id", "198.18.1.3"), ("requested_addr", "198.18.1.50")]),
               INGRESS, b, NOW)
    assert b.held("198.18.1.50", NOW) is None and b.is_free("198.18.1.50", MAC2, NOW)
    d = decide(req("discover", MAC2, extra=[("requested_addr", "198.18.1.50")]), INGRESS, b, NOW)
    assert BOOTP(d.reply).yiaddr == "198.18.1.50"


def test_selecting_unoffered_address_naks():
    b = book(leases=[lease("198.18.1.60", MAC2, NOW + 100)])
    for want in ("198.18.1.70", "198.18.1.60"):  # never offered; another's lease
        d = decide(req("request", extra=[("server_id", SERVER), ("requested_addr", want)]),
                   INGRESS, b, NOW)
        o = ropts(d.reply)
        assert o[53] == b"\6" and ip(o[54]) == SERVER and 51 not in o and d.lease_put is None
        assert BOOTP(d.reply).yiaddr == "0.0.0.0" and d.dest == "broadcast" and d.log.startswith("NAK")


def test_init_reboot():
    b = book(leases=[lease("198.18.1.60", MAC, NOW - 100), lease("198.18.1.61", MAC2, NOW + 100)])
    ask = lambda want, mac=MAC: decide(req("request", mac, extra=[("requested_addr", want)]),
                                       INGRESS, b, NOW)
    assert ask("198.18.1.60").lease_put["Addr"] == "198.18.1.60"  # its own, even expired
    assert ropts(ask("198.18.1.70", MAC3).reply)[53] == b"\5"  # free, in range
    assert ropts(ask("198.18.1.61").reply)[53] == b"\6"  # another's
    assert ropts(ask("198.18.5.5").reply)[53] == b"\6"  # wrong subnet
    assert ropts(ask("198.18.1.20", MAC3).reply)[53] == b"\6"  # outside the active range
    b.apply("reservations", "198.18.1.20", reservation("198.18.1.20", MAC3))
    assert ropts(ask("198.18.1.70", MAC3).reply)[53] == b"\6"  # it has a reservation elsewhere
    assert ropts(ask("198.18.1.20", MAC3).reply)[53] == b"\5"


def test_renew_rebind():
    b = book(leases=[lease("198.18.1.60", MAC, NOW + 100), lease("198.18.1.61", MAC2, NOW + 100)])
    d = decide(req("request", ciaddr="198.18.1.60"), INGRESS, b, NOW)
    assert (d.dest, d.port) == ("198.18.1.60", 68) and BOOTP(d.reply).ciaddr == "198.18.1.60"
    assert d.lease_put["ExpireTime"] == time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(NOW + 600))
    commit(b, d)
    # Renewed again the same second: nothing changed, nothing written.
    assert decide(req("request", ciaddr="198.18.1.60"), INGRESS, b, NOW).lease_put is None
    assert decide(req("request", ciaddr="198.18.1.60"), INGRESS, b, NOW + 1).lease_put is not None
    lost = decide(req("request", MAC3, ciaddr="198.18.1.70", flags=0x8000), INGRESS, b, NOW)
    assert lost.lease_put["Addr"] == "198.18.1.70"  # the lease was lost: still free, kept
    nak = decide(req("request", MAC3, ciaddr="198.18.1.61"), INGRESS, b, NOW)
    assert ropts(nak.reply)[53] == b"\6" and nak.dest == "broadcast"  # RFC 2131 4.1


def test_moving_to_a_reservation_deletes_the_old_lease():
    b = book(leases=[lease("198.18.1.60", MAC, NOW + 100)])
    b.apply("reservations", "198.18.1.20", reservation("198.18.1.20"))
    offer = decide(req("discover"), INGRESS, b, NOW)
    assert BOOTP(offer.reply).yiaddr == "198.18.1.20"
    ack = decide(req("request", extra=[("server_id", SERVER), ("requested_addr", "198.18.1.20")]),
                 INGRESS, b, NOW)
    assert ack.lease_put["Addr"] == "198.18.1.20" and ack.lease_delete == "198.18.1.60"
    assert ack.lease_put["Duration"] == 7200


def test_not_client_messages_drop():
    for kind in ("offer", "ack", "nak"):
        with pytest.raises(Dropped, match="not a client message"):
            decide(req(kind), INGRESS, book(), NOW)
    with pytest.raises(Dropped, match="no server id"):
        decide(req("request"), INGRESS, book(), NOW)


# ---- engine: RELEASE, DECLINE, INFORM --------------------------------------------------------
def test_release_frees_with_affinity():
    b = book()
    dora(b)
    with pytest.raises(Dropped, match="not its lease"):
        decide(req("release", MAC2, ciaddr="198.18.1.50"), INGRESS, b, NOW + 10)
    d = decide(req("release", ciaddr="198.18.1.50", extra=[("server_id", SERVER)]), INGRESS, b, NOW + 10)
    assert d.reply is None and d.lease_put["State"] == "FREE" and d.lease_put["Token"] == MAC
    assert d.lease_put["ExpireTime"] == time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(NOW + 10))
    commit(b, d)
    assert BOOTP(decide(req("discover"), INGRESS, b, NOW + 60).reply).yiaddr == "198.18.1.50"


def test_decline_quarantines_the_address():
    b = book()
    assert BOOTP(decide(req("discover"), INGRESS, b, NOW).reply).yiaddr == "198.18.1.50"
    with pytest.raises(Dropped, match="not offered"):
        decide(req("decline", MAC2, extra=[("requested_addr", "198.18.1.50")]), INGRESS, b, NOW)
    d = decide(req("decline", extra=[("requested_addr", "198.18.1.50"), ("server_id", SERVER)]),
               INGRESS, b, NOW)
    lp = d.lease_put
    assert d.reply is None and (lp["State"], lp["Token"], lp["Addr"]) == ("DECLINE", "", "198.18.1.50")
    assert lp["ExpireTime"] == time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(NOW + 600))
    commit(b, d)
    again = decide(req("discover", MAC3, extra=[("requested_addr", "198.18.1.50")]), INGRESS, b, NOW + 1)
    assert BOOTP(again.reply).yiaddr != "198.18.1.50"
    small = book([subnet(ActiveEnd="198.18.1.50")], leases=[lp])
    with pytest.raises(Dropped, match="no free address"):
        decide(req("discover", MAC3), INGRESS, small, NOW + 599)
    assert BOOTP(decide(req("discover", MAC3), INGRESS, small, NOW + 601).reply).yiaddr == "198.18.1.50"


def test_inform_acks_without_lease():
    d = decide(req("inform", ciaddr="198.18.1.200"), INGRESS, book(), NOW)
    o = ropts(d.reply)
    assert o[53] == b"\5" and BOOTP(d.reply).yiaddr == "0.0.0.0" and d.lease_put is None
    assert not {51, 58, 59} & set(o) and ip(o[3]) == "198.18.1.1" and ip(o[54]) == SERVER
    assert (d.dest, d.port) == ("198.18.1.200", 68)
    with pytest.raises(Dropped, match="without ciaddr"):
        decide(req("inform"), INGRESS, book(), NOW)


# ---- engine: options and boot files ------------------------------------------------------------
def test_options_requested_plus_mandatory():
    d = decide(req("discover", style="bare", prl=[1, 3]), INGRESS, book(), NOW)
    o = ropts(d.reply)
    assert set(o) == {53, 54, 51, 58, 59, 1, 3, 6}  # 15 and 28 not asked for; 6 mandatory
    assert order(d.reply)[:2] == [53, 54]
    d = decide(req("discover", style="bare"), INGRESS, book(), NOW)  # no 55: all configured
    o = ropts(d.reply)
    assert {1, 3, 6, 15, 28, 51, 54, 58, 59} <= set(o) and ip(o[28]) == "198.18.1.255"
    assert 66 not in o and 67 not in o and BOOTP(d.reply).file.rstrip(b"\0") == b""  # no 93
    d = decide(req("discover", style="udhcpc", prl=[28, 15, 1]), INGRESS, book(), NOW)
    assert order(d.reply)[:9] == [53, 54, 51, 58, 59, 1, 28, 15, 3]


@pytest.mark.parametrize("style, extra, boot", [
    ("ipxe", (), "http://198.18.1.2:8091/default.ipxe"),
    ("bios", (), "ipxe.pxe"),
    ("bare", [(93, b"\x00\x07")], "ipxe.efi"),
    ("bare", [(93, b"\x00\x0b")], "ipxe.efi"),
    ("bare", [(93, b"\x00\x10")], "ipxe.efi"),
    ("bare", [(93, b"\x00\x02")], None),  # IA64: no boot file of ours
    ("udhcpc", (), None),
])
def test_default_boot_files(style, extra, boot):
    d = decide(req("discover", style=style, extra=extra), INGRESS, book(), NOW)
    o = ropts(d.reply)
    if boot is None:
        assert 67 not in o and 66 not in o
    else:
        assert o[67] == boot.encode() and o[66] == SERVER.encode()
        assert BOOTP(d.reply).file.rstrip(b"\0") == boot.encode()


def test_configured_boot_template_subnet_and_reservation():
    sub = subnet(NextServer="198.18.1.5", Options=[{"Code": 67, "Value": DRP_67},
                                                   {"Code": 3, "Value": "198.18.1.1"}])
    b = book([sub])
    assert ropts(decide(req("discover", style="ipxe"), INGRESS, b, NOW).reply)[67] == b"default.ipxe"
    bios = decide(req("discover", MAC2, style="bios"), INGRESS, b, NOW)
    assert ropts(bios.reply)[67] == b"ipxe.pxe" and ropts(bios.reply)[66] == b"198.18.1.5"
    assert BOOTP(bios.reply).siaddr == "198.18.1.5"
    b.apply("reservations", "198.18.1.20",
            reservation("198.18.1.20", MAC3, Options=[{"Code": 67, "Value": "special-{{index . 93}}.efi"}]))
    efi = decide(req("discover", MAC3, style="ipxe", extra=[]), INGRESS, b, NOW)
    assert ropts(efi.reply)[67] == b"special-7.efi"


def test_bad_stored_options_are_skipped_and_logged():
    sub = subnet(Options=[{"Code": 15, "Value": "{{if}}"}, {"Code": 3, "Value": "not-an-ip"},
                          {"Code": 51, "Value": "1"}, "junk", {"Code": 6, "Value": "198.18.1.1"},
                          {"Code": 17, "Value": '{{if eq (index . 93) "x"}}/root{{end}}'}])
    d = decide(req("discover", style="bare"), INGRESS, book([sub]), NOW)
    o = ropts(d.reply)
    assert 15 not in o and 3 not in o and 17 not in o and ip(o[6]) == "198.18.1.1" and u32(o[51]) == 600
    assert "option 15 skipped" in d.log and "option 3 skipped" in d.log and "skipped option" in d.log


def test_client_max_size_is_honoured_end_to_end():
    sub = subnet(Options=[{"Code": c, "Value": "v" * 200} for c in (224, 225, 226)] +
                 [{"Code": 3, "Value": "198.18.1.1"}])
    d = decide(req("discover", style="ipxe", prl=[1, 3, 6, 66, 67, 224, 225, 226],
                   extra=[]), INGRESS, book([sub]), NOW)
    assert len(d.reply) > 576  # iPXE says 1472
    r = req("discover", style="bare", prl=[1, 3, 66, 67, 224, 225, 226],
            extra=[("max_dhcp_size", 576), (93, b"\x00\x07")])
    d = decide(r, INGRESS, book([sub]), NOW)
    assert len(d.reply) <= 548 and "cut to fit option 57" in d.log
    assert {1, 3, 51, 54, 67} <= set(ropts(d.reply))


# ---- fuzz ---------------------------------------------------------------------------------------
FUZZ_BOOK = book([subnet(), subnet(Name="far", Subnet="198.18.2.0/24", ActiveStart="198.18.2.10",
                                   ActiveEnd="198.18.2.12")],
                 [reservation("198.18.1.20")], [lease("198.18.1.60", MAC2, NOW + 100)])
SEEDS = [client(k, style=s, ciaddr=c, giaddr=g, extra=e) for k, s, c, g, e in [
    ("discover", "ipxe", "0.0.0.0", "0.0.0.0", ()),
    ("request", "dhclient", "0.0.0.0", "0.0.0.0", [("server_id", SERVER), ("requested_addr", "198.18.1.50")]),
    ("request", "udhcpc", "198.18.1.60", "0.0.0.0", ()),
    ("discover", "bios", "0.0.0.0", "198.18.2.1", ()),
    ("release", "bare", "198.18.1.60", "0.0.0.0", ()),
    ("decline", "bare", "0.0.0.0", "0.0.0.0", [("requested_addr", "198.18.1.50")]),
    ("inform", "bare", "198.18.1.77", "0.0.0.0", ()),
]]


def _through(data: bytes) -> None:
    try:
        r = packets.parse(data)
    except Malformed as e:
        assert str(e) and "\n" not in str(e)
        return
    assert isinstance(r, packets.Request)
    try:
        d = decide(r, INGRESS, FUZZ_BOOK, NOW)
    except Dropped as e:
        assert e.reason
        return
    if d.reply is not None:
        assert BOOTP(d.reply).op == 2 and len(d.reply) >= 300


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(st.binary(max_size=700))
def test_fuzz_random_bytes(data):
    _through(data)


@FUZZ
@given(st.binary(min_size=240, max_size=400).map(lambda b: b"\1\1\6" + b[3:236] + packets.MAGIC + b[240:]))
def test_fuzz_random_options(data):
    _through(data)


@FUZZ
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 699), st.integers(0, 255)), max_size=8),
       st.integers(0, 700))
def test_fuzz_mutated_and_truncated(seed, edits, cut):
    data = bytearray(seed)
    for at, value in edits:
        data[at % len(data)] = value
    _through(bytes(data))
    _through(bytes(data[:cut]))
    _through(seed[:236] + b"\x63\x82\x53\x00" + seed[240:])  # bad cookie
    opt = 240 + (cut % max(1, len(seed) - 241))
    _through(seed[:opt] + bytes([12, 255]) + b"short")  # a length past the end


@FUZZ
@given(st.sampled_from(SEEDS), st.integers(1, 8), st.binary(max_size=40), st.integers(0, 255))
def test_fuzz_parsed_requests_through_decide(seed, kind, junk, code):
    base = seed[:240] + bytes([53, 1, kind, code, len(junk)]) + junk + b"\xff"
    _through(base)


def test_reservation_in_another_subnet_is_ignored():
    b = book(reservations=[reservation("198.18.2.20")])
    d = decide(req("discover"), INGRESS, b, NOW)
    assert BOOTP(d.reply).yiaddr == "198.18.1.50" and "reservation 198.18.2.20 is outside" in d.log


def test_reservation_beats_a_stale_lease_of_another_client():
    b = book(reservations=[reservation("198.18.1.20")],
             leases=[lease("198.18.1.20", MAC2, NOW + 300)])
    offer, ack = dora(b)
    assert BOOTP(offer.reply).yiaddr == "198.18.1.20" and ropts(ack.reply)[53] == b"\5"
    assert ack.lease_put["Token"] == MAC and b.lease_at("198.18.1.20")["Token"] == MAC
    nak = decide(req("request", MAC2, ciaddr="198.18.1.20"), INGRESS, b, NOW)
    assert ropts(nak.reply)[53] == b"\6"


def test_book_load_unordered_with_duplicates():
    import random
    rng = random.Random(7)
    ls = [lease(f"198.18.1.{a}", f"02:00:00:00:00:{a:02x}", NOW - 1000 + a) for a in range(50, 99)]
    rng.shuffle(ls)
    b = Book.load([subnet()], [], ls + [lease("198.18.1.60", MAC, NOW + 50)])  # a later copy wins
    assert b.lease_at("198.18.1.60")["Token"] == MAC and b.lease_for("MAC", "02:00:00:00:00:3c") is None
    sub = b.subnets["lab"]
    assert b.next_free(sub, NOW) == "198.18.1.99"
    assert b.most_expired(sub, MAC2, NOW) == "198.18.1.50"
    b.apply("leases", "198.18.1.50", None)
    assert b.most_expired(sub, MAC2, NOW) == "198.18.1.51"


def test_relay_agent_option_echoed_and_relayed_nak_broadcast():
    b = book([subnet(), subnet(Name="far", Subnet="198.18.2.0/24", ActiveStart="198.18.2.100",
                               ActiveEnd="198.18.2.110")])
    agent = (82, b"\x01\x04eth7")
    d = decide(req("discover", giaddr="198.18.2.1", extra=[agent]), INGRESS, b, NOW)
    assert ropts(d.reply)[82] == b"\x01\x04eth7" and order(d.reply)[-1] == 82
    nak = decide(req("request", giaddr="198.18.2.1", extra=[agent, ("requested_addr", "198.18.1.9")]),
                 INGRESS, b, NOW)
    assert ropts(nak.reply)[53] == b"\6" and int(BOOTP(nak.reply).flags) & 0x8000
    assert ropts(nak.reply)[82] == b"\x01\x04eth7" and (nak.dest, nak.port) == ("198.18.2.1", 67)
    assert 82 not in ropts(decide(req("discover", extra=[agent]), INGRESS, b, NOW).reply)


def test_the_servers_own_addresses_are_never_offered():
    """The VIP (or a node address) inside the active range is skipped by every picker and
    refused as a hint; set_own follows the addresses the host has now."""
    b = book()
    b.set_own({"198.18.1.50", "198.18.1.51"})
    offer = decide(req("discover"), INGRESS, b, NOW)
    assert BOOTP(offer.reply).yiaddr == "198.18.1.52"
    hinted = decide(req("discover", MAC2, extra=[("requested_addr", "198.18.1.50")]), INGRESS,
                    b, NOW)
    assert BOOTP(hinted.reply).yiaddr == "198.18.1.53"
    b.set_own({"198.18.1.51"})  # .50 is no longer ours: a hint may have it now
    third = decide(req("discover", MAC3, extra=[("requested_addr", "198.18.1.50")]), INGRESS,
                   b, NOW)
    assert BOOTP(third.reply).yiaddr == "198.18.1.50"


def test_an_ack_does_not_hold_the_address_past_its_lease():
    """Once ACKed, the lease alone keeps the address: when it runs out another client may
    have it at once (no OFFER_HOLD left behind by the ACK)."""
    b = book([subnet(ActiveStart="198.18.1.50", ActiveEnd="198.18.1.50", ActiveLeaseTime=2)])
    _, ack = dora(b)
    assert ack.lease_put["Addr"] == "198.18.1.50"
    with pytest.raises(Dropped):
        decide(req("discover", MAC2), INGRESS, b, NOW + 1)  # still leased
    offer = decide(req("discover", MAC2), INGRESS, b, NOW + 3)
    assert BOOTP(offer.reply).yiaddr == "198.18.1.50"
