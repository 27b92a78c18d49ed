"""A read-only TFTP server for machines booting by PXE: RFC 1350 with the options of RFC 2347,
2348 (blksize), 2349 (tsize, timeout) and 7440 (windowsize), serving the tftpboot tree the
static HTTP port serves.

packets.py parses and builds packets and negotiates options; transfer.py is the state machine
of one read transfer; both do no I/O. server.py drives them on trio sockets.
"""
