"""The NFSv3 client (fs/nfs/ in Linux).

    nfs3proc.py   NfsTransport: the NFS client of one server -- an RpcClnt (net/sunrpc/clnt.py)
                  on an XsUdp transport (net/sunrpc/xprtsock.py) -- with MOUNT MNT, LOOKUP,
                  WRITE, COMMIT, READ and ``write_durably`` (every non-final reply as Linux's
                  client handles it; ``classify_reply``)
    file.py       NfsFile: one file on an export as a ``mm.page_io.StorageBackend`` (swap's
                  SWP_FS_OPS path: swap_activate + swap_rw; and a mapped/written data file)
"""
