"""The TFTP server on trio: one UDP socket takes requests; each transfer runs in its own task
on its own socket with an ephemeral port (the server's TID, RFC 1350), connected to the
client, so the kernel keeps other hosts' packets out of it.

Read-only: write requests are refused. Paths are checked as the static HTTP port checks them
(drp.blob.storage: no '..', nothing whose real path leaves tftpboot/, or the files/ or isos/
area root). A leading '/' is dropped, as dr-provision does: '/pxelinux.0' is tftpboot/pxelinux.0.
Files are read in worker threads READ_AHEAD at a time, so memory per transfer is bounded
whatever the file's size.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket as stdsocket
from pathlib import Path

import trio

from drp import udp
from drp.ratelog import RateLog
from drp.blob import storage
from drp.tftp import packets
from drp.tftp.transfer import ReadTransfer

log = logging.getLogger("drp.tftp")
MAX_TRANSFERS = 1024  # at once; more get ERROR 0 "busy"
MAX_WINDOW = 64
WINDOW_BYTES = 1 << 20  # blksize x windowsize at most (memory held per transfer)
READERS = trio.CapacityLimiter(16)  # worker threads reading files at once
IP_MTU, IPV6_MTU = 14, 24  # Linux getsockopt names


class _Refused(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def open_in_tree(root: Path, filename: str) -> tuple[int, int]:
    """(fd, size) of the file a request names, or _Refused with the TFTP error to send."""
    rel = filename.lstrip("/")
    try:
        clean = storage.clean_relpath(rel)
        # As the static port: files/ and isos/ are checked against their area root (an
        # operator may link isos/ to a bigger disk), anything else against tftpboot/.
        blob = storage.static_blob(clean)
        top = root / storage.AREAS[storage.split_blob_path(blob)[0]][1] if blob else root
        target = storage.check_inside(top, root.joinpath(*clean.split("/")))
        return storage.open_regular(target)
    except storage.PathError as e:
        raise _Refused(packets.ACCESS_VIOLATION, str(e)) from None
    except FileNotFoundError:
        raise _Refused(packets.FILE_NOT_FOUND, f"{rel} not found") from None
    except PermissionError:
        raise _Refused(packets.ACCESS_VIOLATION, f"{rel}: permission denied") from None
    except OSError as e:  # a symlink loop, a name too long, no fds left...
        code = packets.FILE_NOT_FOUND if e.errno in (errno.ELOOP, errno.ENOTDIR) else 0
        raise _Refused(code, f"{rel}: {e.strerror}") from None


def _pread_full(fd: int, length: int, offset: int) -> bytes:
    """`length` bytes from `offset`, fewer only at the end of the file."""
    parts, got = [], 0
    while got < length:
        piece = os.pread(fd, length - got, offset + got)
        if not piece:
            break
        parts.append(piece)
        got += len(piece)
    return b"".join(parts)


def _fitting_blksize(sock, family) -> int:
    """The largest block that fits the path MTU to the client unfragmented."""
    try:
        if family == stdsocket.AF_INET6:
            return sock.getsockopt(stdsocket.IPPROTO_IPV6, IPV6_MTU) - 40 - 8 - 4
        return sock.getsockopt(stdsocket.IPPROTO_IP, IP_MTU) - 20 - 8 - 4
    except OSError:
        return packets.MAX_BLKSIZE


def _local_address(ancdata, family, fallback: str) -> str:
    """The address a request was sent to (IP_PKTINFO), so the reply comes from it: a client
    that asked the VIP gets its blocks from the VIP, not from the host's first address."""
    if family == stdsocket.AF_INET:
        where = udp.arrival(ancdata)
        return where[1] if where else fallback
    for level, kind, data in ancdata:
        if family == stdsocket.AF_INET6 and kind == stdsocket.IPV6_PKTINFO and len(data) >= 16:
            return stdsocket.inet_ntop(stdsocket.AF_INET6, data[:16])
    return fallback


class TftpServer:
    def __init__(self, root: Path, *, timeout: float = 1.0, retries: int = 5,
                 max_blksize: int = packets.MAX_BLKSIZE):
        self.root = Path(root)
        self.timeout, self.retries, self.max_blksize = timeout, retries, max_blksize
        self.active = 0
        self.ratelog = RateLog(log, "tftp")

    async def serve(self, address: str, port: int, task_status) -> None:
        family = stdsocket.AF_INET6 if ":" in address else stdsocket.AF_INET
        wildcard = ipaddress.ip_address(address or "0.0.0.0").is_unspecified
        sock = trio.socket.socket(family, stdsocket.SOCK_DGRAM)
        with sock:
            if wildcard and family == stdsocket.AF_INET:
                udp.enable(sock)
            elif wildcard:
                sock.setsockopt(stdsocket.IPPROTO_IPV6, stdsocket.IPV6_RECVPKTINFO, 1)
            await sock.bind((address, port))
            bound = sock.getsockname()[1]
            log.info("TFTP on %s port %d (%s)", address, bound, self.root)
            async with trio.open_nursery() as nursery:
                task_status.started(bound)
                while True:
                    data, ancdata, _flags, peer = await sock.recvmsg(65536, 256)
                    local = _local_address(ancdata, family, address) if wildcard else address
                    self._dispatch(nursery, sock, data, peer, local, family)

    def _dispatch(self, nursery, sock, data: bytes, peer, local: str, family) -> None:
        try:
            request = packets.parse(data)
        except packets.PacketError as e:
            self.ratelog.warn(peer[0], "dropped a bad packet: %s", e)
            return
        if not isinstance(request, packets.Request):
            self.ratelog.warn(peer[0], "dropped %s sent to the request port",
                              type(request).__name__)
            return
        if self.active >= MAX_TRANSFERS:
            nursery.start_soon(self._reply_error, family, local, peer, packets.NOT_DEFINED,
                               "server busy, try again")
            return
        self.active += 1
        nursery.start_soon(self._transfer, family, local, peer, request)

    async def _reply_error(self, family, local, peer, code: int, message: str) -> None:
        try:
            with trio.socket.socket(family, stdsocket.SOCK_DGRAM) as sock:
                await sock.bind((local, 0))
                await sock.sendto(packets.build_error(code, message), peer)
        except OSError:
            pass

    async def _transfer(self, family, local, peer, request: packets.Request) -> None:
        try:
            with trio.socket.socket(family, stdsocket.SOCK_DGRAM) as sock:
                await sock.bind((local, 0))
                await sock.connect(peer)
                try:
                    await self._run(sock, family, peer, request)
                except _Refused as e:
                    log.info("tftp %s %r refused: %s", peer[0], request.filename, e.message)
                    await sock.send(packets.build_error(e.code, e.message))
        except OSError as e:  # the client went away (ICMP port unreachable), or no sockets
            log.info("tftp %s %r ended: %s", peer[0], request.filename, e)
        finally:
            self.active -= 1

    async def _run(self, sock, family, peer, request: packets.Request) -> None:
        if request.opcode == packets.WRQ:
            raise _Refused(packets.ACCESS_VIOLATION, "this TFTP server is read-only")
        if request.mode not in ("octet", "netascii"):
            raise _Refused(packets.ILLEGAL_OPERATION, f"transfer mode {request.mode!r} is "
                           "not supported (octet, netascii)")
        fd, size = await trio.to_thread.run_sync(open_in_tree, self.root, request.filename,
                                                 limiter=READERS)
        try:
            options, oack = packets.negotiate(
                # tsize 0 is left out: curl 7.88 fails an OACK saying tsize 0 (it gets the
                # empty file fine without it)
                request.options, tsize=size or None, window_bytes=WINDOW_BYTES, max_window=MAX_WINDOW,
                max_blksize=min(self.max_blksize, _fitting_blksize(sock, family)))
            t = ReadTransfer(options, oack, timeout=self.timeout, retries=self.retries)
            started = trio.current_time()
            t.start(started)
            while not t.done:
                while want := t.need():
                    t.supply(await trio.to_thread.run_sync(
                        _pread_full, fd, want[1], want[0], limiter=READERS), want[1])
                for packet in t.outgoing():
                    await sock.send(packet)
                await self._wait(sock, t, peer)
            if t.error:
                log.info("tftp %s %r abandoned: %s", peer[0], request.filename, t.error)
            else:
                log.debug("tftp %s %r sent: %d bytes in %.2fs", peer[0], request.filename,
                          size, trio.current_time() - started)
        finally:
            os.close(fd)

    async def _wait(self, sock, t: ReadTransfer, peer) -> None:
        """Until the client answers something that matters, or the deadline passes."""
        while True:
            with trio.move_on_at(t.deadline):
                data = await sock.recv(65536)
                try:
                    packet = packets.parse(data)
                except packets.PacketError as e:
                    self.ratelog.warn(peer[0], "dropped a bad packet in a transfer: %s", e)
                    continue
                if isinstance(packet, packets.Ack):
                    if t.on_ack(packet.block, trio.current_time()):
                        return
                    continue  # a duplicate or old ACK: no resend (Sorcerer's Apprentice)
                if isinstance(packet, packets.Error):
                    t.on_error(packet.code, packet.message)
                    return
                self.ratelog.warn(peer[0], "dropped %s in a read transfer",
                                  type(packet).__name__)
                continue
            if t.timeout_due(trio.current_time()):
                return


async def serve_tftp(root: Path, address: str, port: int, *,
                     task_status=trio.TASK_STATUS_IGNORED, **settings) -> None:
    """Serve `root` (the tftpboot directory) read-only on UDP address:port until cancelled;
    task_status.started(bound port) once the socket is bound (port 0: any free one).
    `settings`: timeout, retries, max_blksize (see TftpServer)."""
    await TftpServer(root, **settings).serve(address, port, task_status)
