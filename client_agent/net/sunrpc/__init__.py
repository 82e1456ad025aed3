"""The RPC client (net/sunrpc/ in Linux)."""
