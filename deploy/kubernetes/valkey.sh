#!/bin/sh
# Starts one node of Runyard's store: a Valkey server (`valkey.sh server`) or a Sentinel
# (`valkey.sh sentinel`), in the official valkey image; used by deploy/kubernetes and
# deploy/compose alike. Settings, from the environment:
#   VALKEY_SELF     the name other nodes and clients reach this one by
#   VALKEY_PRIMARY  the node that is primary on the very first start
#   SENTINELS       "host:port ..." of the Sentinels (server: asked who is primary now)
#   SECRETS         the directory holding `runyard credentials` output (ops.env, the ACL)
#   DATA            where Valkey keeps its data (a persistent volume)
#   VALKEY_PORT     the port of every Valkey node (default 6379; Sentinels use 26379)
#   VALKEY_BIND     the addresses to listen on (default: every interface)
set -eu
SECRETS=${SECRETS:-/etc/runyard}
DATA=${DATA:-/data}
PORT=${VALKEY_PORT:-6379}
MASTER=runyard  # the name Sentinel knows the primary by
# What a service may ask a Sentinel: where the primary and replicas are, nothing else
# (services/credentials.py SENTINEL_CLIENT_ACL; the tests hold the two equal).
CLIENT_ACL="+ping +auth +hello +client|setinfo +client|setname +sentinel|masters \
+sentinel|get-master-addr-by-name +sentinel|sentinels +sentinel|replicas +sentinel|slaves"
# Replication and Sentinel log in as the operator's `ops` user (all commands), the one
# identity `runyard credentials` writes that may run them; its password is in ops.env.
password=$(sed -n 's|^RUNYARD_REDIS_URL=[^:]*://ops:\([^@]*\)@.*|\1|p' "$SECRETS/ops.env")
[ -n "$password" ] || { echo "no ops password in $SECRETS/ops.env" >&2; exit 1; }
umask 077

server() {
    primary=$VALKEY_PRIMARY
    # After a failover the primary is whichever node Sentinel promoted: a node that
    # comes back must follow it, not take the role it had on its first start.
    for sentinel in ${SENTINELS:-}; do
        if found=$(VALKEYCLI_AUTH=$password REDISCLI_AUTH=$password timeout 3 valkey-cli \
            -h "${sentinel%:*}" -p "${sentinel##*:}" --user ops --raw \
            sentinel get-master-addr-by-name "$MASTER" 2>/dev/null | head -n 1) &&
            [ -n "$found" ]; then
            primary=$found
            break
        fi
    done
    conf=$DATA/valkey.conf
    {
        echo "port $PORT"
        if [ -n "${VALKEY_BIND:-}" ]; then echo "bind $VALKEY_BIND"; fi
        # reached from other hosts; every user needs a password (the ACL), so protected
        # mode (loopback only while the default user has none) would only refuse them
        echo "protected-mode no"
        echo "dir $DATA"
        echo "aclfile $SECRETS/valkey-users.acl"
        echo "appendonly yes"
        echo "replica-announce-ip $VALKEY_SELF"
        echo "masteruser ops"
        echo "masterauth $password"
        if [ "$primary" != "$VALKEY_SELF" ]; then echo "replicaof $primary $PORT"; fi
    } >"$conf"
    exec valkey-server "$conf"
}

sentinel() {
    conf=$DATA/sentinel.conf
    # Sentinel rewrites its file as it learns the primary, replicas and other Sentinels:
    # written once, then kept on the volume.
    if [ ! -f "$conf" ]; then
        if [ -n "${VALKEY_BIND:-}" ]; then echo "bind $VALKEY_BIND" >"$conf"; fi
        {
            # Sentinel's own users: the operator (and the other Sentinels, as ops) may do
            # anything; every other user of the ACL file, by the same password hash, may
            # only ask where the primary is (services connect through Sentinel).
            echo "user default off"
            sed -n 's/^user \([^ ]*\) on \(#[0-9a-f]*\) .*/\1 \2/p' "$SECRETS/valkey-users.acl" |
                while read -r name hash; do
                    if [ "$name" = ops ]; then
                        echo "user ops on $hash +@all"
                    elif [ "$name" != default ]; then
                        echo "user $name on $hash $CLIENT_ACL"
                    fi
                done
        } >>"$conf"
        cat >>"$conf" <<CONF
port 26379
protected-mode no
dir $DATA
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $VALKEY_SELF
sentinel monitor $MASTER $VALKEY_PRIMARY $PORT 2
sentinel auth-user $MASTER ops
sentinel auth-pass $MASTER $password
sentinel sentinel-user ops
sentinel sentinel-pass $password
sentinel down-after-milliseconds $MASTER 5000
sentinel failover-timeout $MASTER 60000
CONF
    fi
    exec valkey-sentinel "$conf"
}

case ${1:-} in
server) server ;;
sentinel) sentinel ;;
*) echo "usage: $0 server|sentinel" >&2; exit 2 ;;
esac
