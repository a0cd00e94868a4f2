#!/usr/bin/env bash
# tls-pki.sh DIR - a throwaway PKI for the TLS sink tests, made in DIR (which
# must exist), valid for two days.  Every key is ECDSA P-256, unencrypted,
# mode 0600:
#
#   ca.pem ca.key              the CA the tests trust (ca_file)
#   server.pem server.key      a receiver: IP 127.0.0.1 and DNS localhost, signed by ca
#   dnsonly.pem dnsonly.key    a receiver with DNS localhost only (no IP address), by ca
#   client.pem client.key      idpd's client certificate for mutual TLS (CN idpd-client), by ca
#   rogue-ca.pem rogue-ca.key  a CA nobody trusts
#   rogue.pem rogue.key        a receiver with the same names, signed by rogue-ca
#   other.key                  a key that belongs to no certificate
#   client-encrypted.key       client.key under a passphrase ("throwaway")
set -euo pipefail

cd "${1:?usage: tls-pki.sh DIR}"
umask 077

key() {
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" 2>/dev/null
}

ca() {
	key "$1"
	openssl req -new -x509 -key "$1.key" -out "$1.pem" -days 2 -subj "/CN=$1" \
		-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
}

# leaf NAME ISSUER EXTENSIONS
leaf() {
	key "$1"
	openssl req -new -key "$1.key" -subj "/CN=$1" -out "$1.csr"
	printf '%s\n' "$3" >"$1.ext"
	openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -days 2 -extfile "$1.ext" \
		-set_serial "0x$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')" -out "$1.pem" 2>/dev/null
	rm -f "$1.csr" "$1.ext"
}

ca ca
ca rogue-ca
leaf server ca "subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth"
leaf dnsonly ca "subjectAltName=DNS:localhost
extendedKeyUsage=serverAuth"
leaf rogue rogue-ca "subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth"
leaf idpd-client ca "extendedKeyUsage=clientAuth"
mv idpd-client.pem client.pem
mv idpd-client.key client.key
key other
openssl pkey -in client.key -aes256 -passout pass:throwaway -out client-encrypted.key
chmod 644 ./*.pem
