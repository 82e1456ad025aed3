"""Memory management of the agent (mm/ in Linux). Protocol-free: nothing here imports a storage
or network protocol (tests/test_layering.py checks it); storage is reached through the
``page_io.StorageBackend`` interface only.

    gfp.py         GFP flags and the contexts built from them
    page_alloc.py  PageAllocator: the pool, watermarks, the reserve (min_free_kbytes),
                   PF_MEMALLOC/__GFP_MEMALLOC, pfmemalloc tagging, owners, vmstat
    vmscan.py      Kswapd: reclaim from any number of file mappings and swap devices
    anon.py        AnonMemory: the anonymous LRU and the workload that fills it; page_bytes
    swapfile.py    SwapDevice: slots, the swap map, writeback through a backend
    filemap.py     FileMapping: page cache of one file, dirty limits, flusher, pageout
    page_io.py     StorageBackend (activate, set_memalloc, write_page, read_page, snapshot,
                   close), WriteError, ActivateError
"""
