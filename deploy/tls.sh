#!/bin/sh
# A private CA and the NATS certificates deploy/'s layouts expect, with openssl:
#   deploy/tls.sh OUT_DIR NAME...     e.g. deploy/tls.sh secrets/tls nats-1 nats-2 nats-3 localhost
# writes ca.pem/ca.key, server.pem/key (clients and WebSocket: every NAME) and
# route.pem/key (the nodes' mutual TLS on cluster routes: client and server use).
# Keeps a CA already in OUT_DIR, so agents made earlier go on trusting the servers.
set -eu
[ $# -ge 2 ] || { echo "usage: $0 OUT_DIR NAME..." >&2; exit 2; }
out=$1
shift
umask 077
mkdir -p "$out"
san=""
for name in "$@"; do
    case $name in
    *[!0-9.]*) san="$san,DNS:$name" ;;
    *) san="$san,IP:$name" ;;
    esac
done
san=${san#,}
if [ ! -f "$out/ca.pem" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
        -subj "/O=Runyard/CN=Runyard CA" -keyout "$out/ca.key" -out "$out/ca.pem" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi
leaf() {  # leaf NAME EXTENDED_KEY_USAGE
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj "/O=Runyard/CN=$1" -keyout "$out/$1.key" -out "$out/$1.csr" 2>/dev/null
    printf 'basicConstraints=critical,CA:FALSE\nextendedKeyUsage=%s\nsubjectAltName=%s\n' \
        "$2" "$san" >"$out/$1.ext"
    # 825 days: the longest lifetime some clients (macOS) accept for a leaf
    openssl x509 -req -in "$out/$1.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" \
        -CAcreateserial -days 825 -extfile "$out/$1.ext" -out "$out/$1.pem" 2>/dev/null
    rm -f "$out/$1.csr" "$out/$1.ext"
}
leaf server serverAuth
leaf route serverAuth,clientAuth
chmod 644 "$out/ca.pem" "$out/server.pem" "$out/route.pem"
echo "wrote $out/ca.pem, server.pem/.key, route.pem/.key for: $*"
