#!/bin/sh
# Make a private certificate authority and the certificates a TLS dask cluster needs.
#
#   sh deploy/tls/make-certs.sh [DIR]        (default DIR: ./certs; DAYS=365 by default)
#
# Writes to DIR:
#   ca.pem                  the CA certificate: every node and every client trusts it
#   ca.key                  the CA key: keep it offline; it is needed only to issue certificates
#   cluster.pem/.key        scheduler and workers (one identity for the cluster's own processes)
#   client.pem/.key         users (stdask in a notebook, the CLI); make one per user with ISSUE=name
#
# dask checks that the peer's certificate is signed by the CA (both directions), not its host name,
# so the subjectAltName below is informational. Anyone holding a certificate signed by this CA can
# submit work, i.e. run code on the cluster: treat every .key file like a password.
set -eu

dir="${1:-certs}"
days="${DAYS:-365}"
mkdir -p "$dir"
cd "$dir"
umask 077  # keys readable by their owner only

if [ ! -f ca.pem ]; then
  openssl req -x509 -newkey rsa:3072 -nodes -sha256 -days "$days" \
    -subj "/CN=stdask dask CA" -keyout ca.key -out ca.pem \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign"
fi

cat > leaf.ext <<'EXT'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=DNS:localhost,DNS:scheduler,IP:127.0.0.1
EXT

issue() {
  openssl req -newkey rsa:3072 -nodes -sha256 -subj "/CN=stdask $1" -keyout "$1.key" -out "$1.csr"
  openssl x509 -req -sha256 -days "$days" -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
    -extfile leaf.ext -out "$1.pem"
  rm -f "$1.csr"
  chmod 0644 "$1.pem"
}

if [ -n "${ISSUE:-}" ]; then
  issue "$ISSUE"             # e.g. ISSUE=alice sh make-certs.sh certs  ->  alice.pem, alice.key
else
  issue cluster
  issue client
fi
rm -f leaf.ext
chmod 0644 ca.pem
openssl verify -CAfile ca.pem ./*.pem >/dev/null
echo "certificates in $(pwd):"
ls -l
