"""drp's DHCP fast paths against their references. The BOOTP/DHCP codec against scapy's
layers: requests scapy builds parse to the fields scapy dissects, and every reply is byte for
byte what scapy builds from the same fields (the encoder drp used before its own). The lease
as the server stores it against modelvalues.complete, which it stands in for."""
from __future__ import annotations

import socket

from hypothesis import given, settings, strategies as st
from scapy.layers.dhcp import BOOTP, DHCP

from drp.dhcp import packets
from drp.dhcp.server import stored_lease
from drp.modelvalues import complete
from tests.test_dhcp_core import book, dora, lease

ips = st.integers(0, 2**32 - 1).map(lambda n: socket.inet_ntoa(n.to_bytes(4, "big")))
macs = st.binary(min_size=6, max_size=6)
# option codes a request may carry (53 is set by the strategy; 0 and 255 are pad and end)
codes = st.integers(1, 254).filter(lambda c: c != 53)
options = st.lists(st.tuples(codes, st.binary(max_size=300)), max_size=8)


def scapy_request(kind, xid, secs, flags, ciaddr, giaddr, mac, hops, opts) -> bytes:
    split = [(c, v[i:i + 255]) for c, v in opts for i in range(0, len(v), 255)]
    split += [(c, b"") for c, v in opts if not v]
    pkt = BOOTP(op=1, htype=1, hlen=6, hops=hops, xid=xid, secs=secs, flags=flags,
                ciaddr=ciaddr, giaddr=giaddr, chaddr=mac + b"\0" * 10, options=packets.MAGIC) \
        / DHCP(options=[("message-type", kind), *split, "end"])
    return bytes(pkt)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 8), st.integers(0, 2**32 - 1), st.integers(0, 65535),
       st.integers(0, 65535), ips, ips, macs, st.integers(0, 255), options)
def test_parse_matches_scapy(kind, xid, secs, flags, ciaddr, giaddr, mac, hops, opts):
    data = scapy_request(kind, xid, secs, flags, ciaddr, giaddr, mac, hops, opts)
    ref, got = BOOTP(data), packets.parse(data)
    assert (got.msg_type, got.xid, got.secs, got.flags, got.ciaddr, got.giaddr, got.hops) == \
        (kind, ref.xid, ref.secs, int(ref.flags), ref.ciaddr, ref.giaddr, ref.hops)
    assert got.chaddr == bytes(ref.chaddr)[:6].hex(":")
    want: dict[int, bytes] = {}
    for code, value in opts:  # RFC 3396: repeats are one option
        want[code] = want.get(code, b"") + value
    assert got.options == {53: bytes([kind]), **want}


def scapy_reply(req, msg_type, yiaddr, siaddr, opts, file, sname) -> bytes:
    """The reply as drp built it with scapy before (header fields, split options, pad)."""
    first = [(53, bytes([msg_type]))] + [o for o in opts if o[0] == 54][:1]
    ordered = first + [o for o in opts if o[0] not in (53, 54)]
    split = [s for c, v in ordered for s in ([(c, v[i:i + 255]) for i in range(0, len(v), 255)]
                                             or [(c, b"")])]
    pkt = BOOTP(op=2, htype=1, hlen=6, hops=0, xid=req.xid, secs=0, flags=req.flags,
                ciaddr=req.ciaddr if msg_type != packets.NAK else "0.0.0.0", yiaddr=yiaddr,
                siaddr=siaddr, giaddr=req.giaddr,
                chaddr=bytes.fromhex(req.chaddr.replace(":", "")) + b"\0" * 10,
                sname=sname if len(sname) < 64 else b"", file=file if len(file) < 128 else b"",
                options=packets.MAGIC) / DHCP(options=split + ["end"])
    raw = bytes(pkt)
    return raw + b"\0" * (300 - len(raw))


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 8), st.integers(0, 2**32 - 1), st.integers(0, 65535), ips, ips, macs,
       st.sampled_from([packets.OFFER, packets.ACK, packets.NAK]), ips, ips,
       st.lists(st.tuples(st.integers(1, 254), st.binary(max_size=600)), max_size=8),
       st.text("abcxyz./-", max_size=140), st.text("abc.", max_size=70))
def test_build_reply_is_what_scapy_builds(kind, xid, flags, ciaddr, giaddr, mac, msg_type,
                                         yiaddr, siaddr, opts, file, sname):
    data = scapy_request(kind, xid, 0, flags, ciaddr, giaddr, mac, 0, [])
    req = packets.parse(data)
    out = packets.build_reply(req, msg_type, yiaddr, siaddr, opts, file=file, sname=sname)
    assert bytes(out) == scapy_reply(req, msg_type, yiaddr, siaddr, opts, file.encode(),
                                     sname.encode())
    ref = BOOTP(out)  # and scapy reads back what was meant
    assert (ref.op, ref.xid, int(ref.flags), ref.yiaddr, ref.siaddr, ref.giaddr) == \
        (2, xid, flags, yiaddr, siaddr, giaddr)
    assert ref.ciaddr == (ciaddr if msg_type != packets.NAK else "0.0.0.0")
    assert next(o[1] for o in ref[DHCP].options
                if isinstance(o, tuple) and o[0] == "message-type") == msg_type


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["udhcpc", "dhclient", "ipxe", "bios", "bare"]), macs,
       st.booleans(), st.sampled_from(["", "2026-01-01T00:00:00Z"]))
def test_stored_lease_is_what_complete_makes(style, mac, renewal, created):
    token = mac.hex(":")
    held = complete("leases", {**lease("198.18.1.60", token, 1_700_000_000), "CreatedAt": created})
    b = book(leases=[held] if renewal else [])
    _offer, ack = dora(b, mac=token, style=style)  # a renewal: the engine starts from `held`
    old = held if renewal else {}
    got = stored_lease(ack.lease_put, old)
    want = complete("leases", {**ack.lease_put, "LastModifiedAt": got["LastModifiedAt"],
                               "CreatedAt": old.get("CreatedAt") or got["LastModifiedAt"]})
    assert got == want and list(got) == list(want)
    if not renewal:  # the zeros are fresh lists and maps, not one shared by every lease
        assert got["Errors"] is not stored_lease(ack.lease_put, old)["Errors"]
