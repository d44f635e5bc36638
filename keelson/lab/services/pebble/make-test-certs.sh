#!/bin/sh
# Make the test CA and the ACME endpoint's TLS certificate, laid out like
# pebble's test/certs/ (which upstream made with minica; Debian's minica is a
# different tool, so openssl does it here).  Test material only: the keys are
# world-readable so pebble can run as any user.
#   make-test-certs.sh DIR NAME...   (the first NAME also names the subdirectory)
set -eu
dir=$1
shift
first=$1
san=
for name; do
	case $name in
	*[!0-9.]*) san="${san:+$san,}DNS:$name" ;;
	*) san="${san:+$san,}IP:$name" ;;
	esac
done

mkdir -p "$dir/$first"
cd "$dir"
openssl req -x509 -newkey rsa:2048 -nodes -days 36500 -sha256 \
	-subj "/CN=keelson lab pebble test CA" \
	-addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
	-addext "keyUsage=critical,keyCertSign,cRLSign" \
	-keyout pebble.minica.key.pem -out pebble.minica.pem 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=$first" \
	-keyout "$first/key.pem" -out "$first/req.pem" 2>/dev/null
printf 'subjectAltName=%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n' \
	"$san" >"$first/ext.cnf"
openssl x509 -req -in "$first/req.pem" -days 36500 -sha256 \
	-CA pebble.minica.pem -CAkey pebble.minica.key.pem -CAcreateserial \
	-extfile "$first/ext.cnf" -out "$first/cert.pem" 2>/dev/null
rm -f "$first/req.pem" "$first/ext.cnf" pebble.minica.srl
chmod 0755 "$first"
chmod 0644 pebble.minica.pem pebble.minica.key.pem "$first/cert.pem" "$first/key.pem"
openssl verify -CAfile pebble.minica.pem "$first/cert.pem"
