#!/bin/sh
# A NAS that is not nas-server, for `testbed run NAME --set nas_command=scripts/nas-ganesha.sh`:
# nfs-ganesha (VFS FSAL, NFSv3 over TCP and UDP) with its own rpcbind, in a private mount namespace
# (a tmpfs /run, so neither touches the host's rpcbind). The runner starts this in the nas
# namespace with (docs/tcp.md, "Another NAS"):
#   NAS_IP    the address to serve on
#   NAS_DATA  the export directory; the runner has created the image files in it
#   NAS_RUN   a scratch directory for this server's config, pid files and log
# MOUNT is on port 20048 and NFS on 2049, both registered with rpcbind (the agent finds MOUNT
# through portmap GETPORT). SIGTERM stops ganesha and rpcbind (their pids, recorded here).
set -eu
: "${NAS_IP:?}" "${NAS_DATA:?}" "${NAS_RUN:?}"
command -v ganesha.nfsd >/dev/null || { echo "nas-ganesha: ganesha.nfsd not installed (Debian: nfs-ganesha nfs-ganesha-vfs)" >&2; exit 3; }
command -v rpcbind >/dev/null || { echo "nas-ganesha: rpcbind not installed (Debian: rpcbind)" >&2; exit 3; }
cat > "$NAS_RUN/ganesha.conf" <<CONF
NFS_CORE_PARAM { Protocols = 3; NFS_Port = 2049; MNT_Port = 20048; Enable_NLM = false;
                 Enable_RQUOTA = false; Bind_addr = $NAS_IP; }
NFSV4 { Graceless = true; }
EXPORT { Export_Id = 1; Path = $NAS_DATA; Pseudo = /swap; Access_Type = RW; Squash = No_Root_Squash;
         Protocols = 3; Transports = TCP, UDP; SecType = sys; FSAL { Name = VFS; } }
LOG { Default_Log_Level = EVENT; }
CONF
exec unshare -m --propagation private sh -eu -c '
mount -t tmpfs tmpfs /run
mkdir -p /run/ganesha
setpriv --pdeathsig KILL rpcbind -f -w & RPCBIND=$!
i=0; while [ ! -S /run/rpcbind.sock ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
setpriv --pdeathsig KILL ganesha.nfsd -F -L "$NAS_RUN/ganesha.log" -f "$NAS_RUN/ganesha.conf" -p /run/ganesha/pid & GANESHA=$!
echo "nas-ganesha: rpcbind $RPCBIND, ganesha.nfsd $GANESHA on $NAS_IP exporting $NAS_DATA"
trap "kill $GANESHA $RPCBIND 2>/dev/null; wait; exit 0" TERM INT
wait
'
