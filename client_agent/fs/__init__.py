"""File systems of the agent (fs/ in Linux): the storage protocols' client sides.

    nfs/     NFSv3 over sunrpc: procedures (nfs3proc.py), the NFS file as a storage backend for
             swap and the page cache (file.py)

A storage protocol's client implements ``mm.page_io.StorageBackend`` (activate, set_memalloc,
write_page, read_page, snapshot, close); mm/ never imports it.
"""
