"""The RPC client (net/sunrpc/ in Linux), split as Linux splits it.

    xprt.py       RpcXprt: slot table, xids, backlog, RPC buffers (rpc_malloc, __GFP_MEMALLOC for
                  swappers), reply matching; RpcTimeout: a transport's retransmit policy
    xprtsock.py   socket transports: XsUdp (UDP) today -- SOCK_MEMALLOC at connect and on every
                  reconnect, the receive task; TCP with record marking next
    clnt.py       RpcClnt: calls (reserve, allocate, encode, transmit, retransmit on the
                  transport's timeout policy, major timeouts and "server not responding")
    trace.py      RpcReplyTrace: what became of every frame from a server's port (an rx_trace
                  hook of the stack, for the drop explanations)

Program knowledge (what an NFS or MOUNT reply means) is fs/nfs's; nothing here parses beyond
the xid.
"""
