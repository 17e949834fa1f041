#!/usr/bin/env bash
# make_certs.sh [--check] OUTDIR
#
# Builds X.509-SVID test chains with the openssl CLI only (no meshtls, no Python), each
# with exactly ONE defect, for tests/test_external_certs.py. The expected verdicts are in
# tests/external/cases.json; the rule ids are those of SPIFFE-RULES.md.
#
# Output:
#   OUTDIR/<case>/chain.pem        leaf first, then the intermediates, as a peer sends them
#   OUTDIR/bundles/<td>.pem        the root of trust domain <td> (example.org, other.org, third.org)
#   OUTDIR/bundles-alt/*.pem       alternative example.org roots for the few cases about roots
#   OUTDIR/_work/                  keys, CSRs, extension files, the `openssl ca` database, log
#
# Every validity window is explicit, relative to T = 2030-01-01T00:00:00Z, so the verdicts
# do not depend on the day the script runs. Keys and signatures are fresh on every run.
#
# --check additionally runs `openssl verify` on every case and compares its verdict with
# the one written down below (a cross-check that each case has exactly the intended defect
# and no other; OpenSSL knows nothing about SPIFFE, so SPIFFE-only defects verify OK there).
set -euo pipefail

usage() { echo "usage: bash make_certs.sh [--check] OUTDIR" >&2; exit 2; }
check=0
if [[ ${1-} == --check ]]; then check=1; shift; fi
[[ $# -eq 1 && -n $1 ]] || usage

export TZ=UTC LC_ALL=C
OPENSSL=${OPENSSL:-openssl}
command -v "$OPENSSL" >/dev/null || { echo "make_certs.sh: '$OPENSSL' not found" >&2; exit 1; }

mkdir -p -- "$1"
OUT=$(cd -- "$1" && pwd)
shopt -s nullglob dotglob
existing=("$OUT"/*)
shopt -u nullglob dotglob
if ((${#existing[@]})); then
    echo "make_certs.sh: $OUT is not empty; give an empty or new directory" >&2
    exit 2
fi

W=$OUT/_work
mkdir -p "$W/db/newcerts" "$W/ca" "$W/leaf" "$W/ext" "$OUT/bundles" "$OUT/bundles-alt"
cd "$W"
: >db/index.txt
echo 1000 >db/serial
LOG=$W/openssl.log
: >"$LOG"

# Every openssl command reads this file, never the system's openssl.cnf.
cat >openssl.cnf <<'EOF'
[ca]
default_ca = CA_default

[CA_default]
dir = ./db
database = $dir/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/serial
default_md = sha256
policy = policy_anything
unique_subject = no
email_in_dn = no
preserve = yes
copy_extensions = none

[policy_anything]
organizationName = optional
organizationalUnitName = optional
commonName = optional

[req]
distinguished_name = req_dn
string_mask = utf8only

[req_dn]
EOF
export OPENSSL_CONF=$W/openssl.cnf

ossl() {
    if ! "$OPENSSL" "$@" >>"$LOG" 2>&1; then
        echo "make_certs.sh: failed: openssl $*" >&2
        tail -n 20 "$LOG" >&2
        exit 1
    fi
}

# ---------------------------------------------------------------------------------------
# Time: offsets in seconds from T, written as YYYYMMDDHHMMSSZ with bash's own strftime.
T=1893456000 # 2030-01-01T00:00:00Z
MIN=60 HOUR=3600 DAY=86400
stamp() { printf -v REPLY '%(%Y%m%d%H%M%S)TZ' "$((T + $1))"; }

# sign CSR OUT ISSUER NOT_BEFORE NOT_AFTER EXTFILE   (offsets from T in seconds)
# ISSUER is a CA name under ca/, or "self": self-signed with the key next to the CSR.
# NOT_AFTER "never" is RFC 5280's 99991231235959Z. $MD (default sha256) is the digest.
sign() {
    local csr=$1 out=$2 issuer=$3 nb=$4 na=$5 ext=$6 start end
    stamp "$nb"; start=$REPLY
    if [[ $na == never ]]; then end=99991231235959Z; else stamp "$na"; end=$REPLY; fi
    local -a who
    if [[ $issuer == self ]]; then
        who=(-selfsign -keyfile "${csr%.csr}.key")
    else
        who=(-cert "ca/$issuer.pem" -keyfile "ca/$issuer.key")
    fi
    ossl ca -config openssl.cnf -batch -notext -in "$csr" -out "$out" "${who[@]}" \
        -startdate "$start" -enddate "$end" -extfile "$ext" -extensions ext -md "${MD:-sha256}"
}

newkey() { # newkey FILE [rsa|rsa1024]
    if [[ ${2-} == rsa ]]; then
        ossl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1"
    elif [[ ${2-} == rsa1024 ]]; then
        ossl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out "$1"
    else
        ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
            -pkeyopt ec_param_enc:named_curve -out "$1"
    fi
}

# ca NAME SUBJECT ISSUER NOT_BEFORE NOT_AFTER  (extensions on stdin)
# Writes ca/NAME.{key,csr,pem} and ca/NAME.chain: what a peer presents above its leaf when
# the leaf is issued by NAME (the intermediates, never the root).
ca() {
    local name=$1 subj=$2 issuer=$3 nb=$4 na=$5
    { echo "[ext]"; cat; } >"ext/ca-$name.cnf"
    newkey "ca/$name.key"
    ossl req -new -key "ca/$name.key" -subj "$subj" -out "ca/$name.csr"
    sign "ca/$name.csr" "ca/$name.pem" "$issuer" "$nb" "$na" "ext/ca-$name.cnf"
    if [[ $issuer == self ]]; then
        : >"ca/$name.chain"
    else
        cat "ca/$name.pem" "ca/$issuer.chain" >"ca/$name.chain"
    fi
}

# leaf CASE ISSUER NOT_BEFORE NOT_AFTER [rsa]  (extensions on stdin)
# Writes OUTDIR/CASE/chain.pem = leaf + ISSUER's chain; `present` can override that.
leaf() {
    local name=$1 issuer=$2 nb=$3 na=$4 kind=${5-ec}
    { echo "[ext]"; cat; } >"ext/leaf-$name.cnf"
    newkey "leaf/$name.key" "$kind"
    ossl req -new -key "leaf/$name.key" -subj "/O=SPIFFE/CN=$name" -out "leaf/$name.csr"
    sign "leaf/$name.csr" "leaf/$name.pem" "$issuer" "$nb" "$na" "ext/leaf-$name.cnf"
    mkdir -p "$OUT/$name"
    cat "leaf/$name.pem" "ca/$issuer.chain" >"$OUT/$name/chain.pem"
}

# present CASE FILE...  : the chain the peer sends, replacing the default.
present() {
    local name=$1
    shift
    cat "$@" >"$OUT/$name/chain.pem"
}

# The extensions of a well-formed SVID; each case below states what it changes.
# std_leaf [san] : prints the usual leaf extension lines with that URI SAN.
std_leaf() {
    cat <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = ${1:-URI:spiffe://example.org/workload}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
}
ROOT_EXT='basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash'
INT_EXT='basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always'

# Leaves are valid T-10min .. T+20min unless the case is about time.
LNB=$((-10 * MIN)) LNA=$((20 * MIN))
# CAs are valid T-1day .. T+365days unless the case is about time.
CNB=$((-DAY)) CNA=$((365 * DAY))

# ---------------------------------------------------------------------------------------
# Authorities
ca example-root "/O=example.org/CN=example.org root CA" self $CNB $CNA <<<"$ROOT_EXT"
ca other-root "/O=other.org/CN=other.org root CA" self $CNB $CNA <<<"$ROOT_EXT"
ca third-root "/O=third.org/CN=third.org root CA" self $CNB $CNA <<<"$ROOT_EXT"
cp ca/example-root.pem "$OUT/bundles/example.org.pem"
cp ca/other-root.pem "$OUT/bundles/other.org.pem"
cp ca/third-root.pem "$OUT/bundles/third.org.pem" # given only to good_third_org_with_bundle

ca example-int "/O=example.org/CN=example.org intermediate CA" example-root $CNB $CNA <<<"$INT_EXT"
ca example-int2 "/O=example.org/CN=example.org second-level CA" example-int $CNB $CNA <<<"$INT_EXT"
ca other-int "/O=other.org/CN=other.org intermediate CA" other-root $CNB $CNA <<<"$INT_EXT"

# A look-alike of example.org's root: same subject, same subject key identifier (so the
# leaf's authorityKeyIdentifier names the real root), but another key. Never in a bundle.
skid=$("$OPENSSL" x509 -in ca/example-root.pem -noout -ext subjectKeyIdentifier)
skid=${skid##*$'\n'}
skid=${skid//[[:space:]]/}
[[ $skid =~ ^[0-9A-F]{2}(:[0-9A-F]{2})+$ ]] || { echo "cannot read the root SKID: $skid" >&2; exit 1; }
ca lookalike-root "/O=example.org/CN=example.org root CA" self $CNB $CNA <<EOF
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = $skid
EOF

# Alternative example.org roots, each in its own bundle file under bundles-alt/.
ca pathlen0-root "/O=example.org/CN=example.org root CA pathlen 0" self $CNB $CNA <<'EOF'
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
ca pathlen0-root-int "/O=example.org/CN=example.org CA under pathlen-0 root" pathlen0-root \
    $CNB $CNA <<<"$INT_EXT"
ca expired-root "/O=example.org/CN=example.org expired root CA" self \
    $((-365 * DAY)) $((-HOUR)) <<<"$ROOT_EXT"
cp ca/pathlen0-root.pem "$OUT/bundles-alt/example.org-pathlen0-root.pem"
cp ca/expired-root.pem "$OUT/bundles-alt/example.org-expired-root.pem"

# Intermediates with one defect (or one unusual but allowed feature) each, all under
# example.org's root and otherwise like example-int.
ca int-td-id "/O=example.org/CN=intermediate with the trust-domain id" example-root $CNB $CNA <<EOF
$INT_EXT
subjectAltName = URI:spiffe://example.org
EOF
ca int-pathlen0 "/O=example.org/CN=intermediate pathlen 0" example-root $CNB $CNA <<'EOF'
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
ca int-under-pathlen0 "/O=example.org/CN=CA under a pathlen-0 CA" int-pathlen0 $CNB $CNA <<<"$INT_EXT"
ca int-nc-permit-example "/O=example.org/CN=intermediate permitted URI example.org" example-root \
    $CNB $CNA <<EOF
$INT_EXT
nameConstraints = critical, permitted;URI:example.org
EOF
ca int-nc-permit-other "/O=example.org/CN=intermediate permitted URI other.org" example-root \
    $CNB $CNA <<EOF
$INT_EXT
nameConstraints = critical, permitted;URI:other.org
EOF
ca int-nc-exclude-example "/O=example.org/CN=intermediate excluded URI example.org" example-root \
    $CNB $CNA <<EOF
$INT_EXT
nameConstraints = critical, excluded;URI:example.org
EOF
ca int-ca-false "/O=example.org/CN=intermediate cA false" example-root $CNB $CNA <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
ca int-no-bc "/O=example.org/CN=intermediate without basicConstraints" example-root $CNB $CNA <<'EOF'
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
ca int-no-kcs "/O=example.org/CN=intermediate without keyCertSign" example-root $CNB $CNA <<'EOF'
basicConstraints = critical, CA:TRUE
keyUsage = critical, digitalSignature, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
ca int-path-id "/O=example.org/CN=intermediate with a path id" example-root $CNB $CNA <<EOF
$INT_EXT
subjectAltName = URI:spiffe://example.org/ca
EOF
ca int-expired "/O=example.org/CN=expired intermediate" example-root \
    $((-365 * DAY)) $((-HOUR)) <<<"$INT_EXT"
ca int-not-yet-valid "/O=example.org/CN=not yet valid intermediate" example-root \
    $((HOUR)) $((365 * DAY)) <<<"$INT_EXT"
ca int-unknown-critical "/O=example.org/CN=intermediate with an unknown critical extension" \
    example-root $CNB $CNA <<EOF
$INT_EXT
1.3.6.1.4.1.55555.9 = critical, ASN1:NULL
EOF
ca int-eku-code-signing "/O=example.org/CN=intermediate with EKU codeSigning" example-root \
    $CNB $CNA <<EOF
$INT_EXT
extendedKeyUsage = codeSigning
EOF
ca int-nc-dns-other "/O=example.org/CN=intermediate permitted DNS other.org" example-root \
    $CNB $CNA <<EOF
$INT_EXT
nameConstraints = critical, permitted;DNS:other.org
EOF
ca no-expiry-root "/O=example.org/CN=example.org root CA without expiry" self $CNB never \
    <<<"$ROOT_EXT"
cp ca/example-int.pem "$OUT/bundles-alt/example.org-intermediate.pem"
cp ca/no-expiry-root.pem "$OUT/bundles-alt/example.org-no-expiry-root.pem"

# ---------------------------------------------------------------------------------------
# Good cases
std_leaf | leaf good_leaf_under_root example-root $LNB $LNA
std_leaf | leaf good_leaf_under_intermediate example-int $LNB $LNA
std_leaf | leaf good_two_intermediates example-int2 $LNB $LNA
std_leaf | leaf good_rsa2048_leaf example-int $LNB $LNA rsa
std_leaf "URI:spiffe://example.org/workload, DNS:workload.example.org" |
    leaf good_extra_dns_san example-root $LNB $LNA
std_leaf "URI:spiffe://example.org/ns/Prod_1/.a/.../svc-b.c" |
    leaf good_id_path_characters example-root $LNB $LNA
leaf good_no_eku example-root $LNB $LNA <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
subjectAltName = URI:spiffe://example.org/workload
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
leaf good_eku_server_only example-root $LNB $LNA <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = URI:spiffe://example.org/workload
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
leaf good_eku_client_only example-root $LNB $LNA <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = URI:spiffe://example.org/workload
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
leaf good_no_basic_constraints example-root $LNB $LNA <<'EOF'
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = URI:spiffe://example.org/workload
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
leaf good_ku_with_key_encipherment example-root $LNB $LNA <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = URI:spiffe://example.org/workload
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
std_leaf | leaf good_intermediate_with_td_id int-td-id $LNB $LNA
std_leaf | leaf good_intermediate_pathlen0 int-pathlen0 $LNB $LNA
std_leaf | leaf good_name_constraints_permit int-nc-permit-example $LNB $LNA
std_leaf | leaf good_chain_includes_root example-int $LNB $LNA
present good_chain_includes_root leaf/good_chain_includes_root.pem ca/example-int.pem \
    ca/example-root.pem
std_leaf "URI:spiffe://other.org/workload" | leaf good_federated_other_org other-root $LNB $LNA
std_leaf "URI:spiffe://third.org/x" | leaf good_third_org_with_bundle third-root $LNB $LNA
std_leaf | leaf good_ttl_exactly_1h example-root $((-10 * MIN)) $((50 * MIN))
std_leaf | leaf good_not_yet_valid_within_skew example-root 20 $((20 + 30 * MIN))
std_leaf | leaf good_expired_within_skew example-root $((-20 - 30 * MIN)) -20
std_leaf | leaf good_max_age_within example-root $((-50 * MIN)) $((5 * MIN))

# ---------------------------------------------------------------------------------------
# L-1 exactly one URI SAN
leaf l1_no_san example-root $LNB $LNA <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
std_leaf "DNS:workload.example.org" | leaf l1_dns_only example-root $LNB $LNA
std_leaf "URI:spiffe://example.org/a, URI:spiffe://example.org/b" |
    leaf l1_two_uri_sans example-root $LNB $LNA

# L-2 the URI is a valid SPIFFE ID
std_leaf "URI:https://example.org/workload" | leaf l2_https_scheme example-root $LNB $LNA
std_leaf "URI:spiffe://EXAMPLE.org/workload" | leaf l2_uppercase_trust_domain example-root $LNB $LNA
std_leaf "URI:spiffe://example.org/a/../b" | leaf l2_dot_dot_segment example-root $LNB $LNA
std_leaf "URI:spiffe://example.org/a%20b" | leaf l2_percent_encoding example-root $LNB $LNA
std_leaf "URI:spiffe://example.org:8443/workload" | leaf l2_port example-root $LNB $LNA
std_leaf "URI:spiffe://example.org/workload?x=1" | leaf l2_query example-root $LNB $LNA
std_leaf "URI:spiffe://example.org/workload/" | leaf l2_trailing_slash example-root $LNB $LNA
std_leaf "URI:spiffe://example.org/a//b" | leaf l2_empty_segment example-root $LNB $LNA

# L-3 non-root path
std_leaf "URI:spiffe://example.org" | leaf l3_root_id example-root $LNB $LNA

# L-4 leaf not a CA
leaf l4_leaf_is_ca example-root $LNB $LNA <<'EOF'
basicConstraints = critical, CA:TRUE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = URI:spiffe://example.org/workload
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF

# L-5 key usage present and critical
leaf l5_no_key_usage example-root $LNB $LNA <<'EOF'
basicConstraints = critical, CA:FALSE
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = URI:spiffe://example.org/workload
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
leaf l5_key_usage_not_critical example-root $LNB $LNA <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = URI:spiffe://example.org/workload
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF

# L-6 digitalSignature set
leaf l6_no_digital_signature example-root $LNB $LNA <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = URI:spiffe://example.org/workload
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF

# L-7 neither keyCertSign nor cRLSign
leaf l7_key_cert_sign example-root $LNB $LNA <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyCertSign
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = URI:spiffe://example.org/workload
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
leaf l7_crl_sign example-root $LNB $LNA <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, cRLSign
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = URI:spiffe://example.org/workload
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF

# L-8 EKU, if present, allows clientAuth or serverAuth
leaf l8_eku_code_signing_only example-root $LNB $LNA <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = codeSigning
subjectAltName = URI:spiffe://example.org/workload
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF

# L-9 path validation
std_leaf | leaf l9_wrong_signature lookalike-root $LNB $LNA
std_leaf | leaf l9_leaf_expired example-root $((-80 * MIN)) $((-HOUR))
std_leaf | leaf l9_leaf_not_yet_valid example-root $((HOUR)) $((HOUR + 30 * MIN))
std_leaf | leaf l9_intermediate_expired int-expired $LNB $LNA
std_leaf | leaf l9_intermediate_not_yet_valid int-not-yet-valid $LNB $LNA
std_leaf | leaf l9_missing_intermediate example-int $LNB $LNA
present l9_missing_intermediate leaf/l9_missing_intermediate.pem
std_leaf | leaf l9_root_expired expired-root $LNB $LNA

# L-10 trust-domain binding
std_leaf | leaf l10_example_id_signed_by_other_root other-root $LNB $LNA
std_leaf | leaf l10_example_id_via_other_intermediate other-int $LNB $LNA
std_leaf "URI:spiffe://other.org/workload" |
    leaf l10_other_id_signed_by_example_root example-root $LNB $LNA
std_leaf "URI:spiffe://third.org/x" | leaf l10_unknown_trust_domain third-root $LNB $LNA

# S-1 .. S-4 signing certificates
std_leaf | leaf s1_intermediate_ca_false int-ca-false $LNB $LNA
std_leaf | leaf s1_intermediate_no_basic_constraints int-no-bc $LNB $LNA
std_leaf | leaf s2_intermediate_no_key_cert_sign int-no-kcs $LNB $LNA
std_leaf | leaf s3_intermediate_id_with_path int-path-id $LNB $LNA
std_leaf | leaf s4_root_pathlen0 pathlen0-root-int $LNB $LNA
std_leaf | leaf s4_intermediate_pathlen0_exceeded int-under-pathlen0 $LNB $LNA
std_leaf | leaf s4_name_constraints_permit_other int-nc-permit-other $LNB $LNA
std_leaf | leaf s4_name_constraints_exclude_example int-nc-exclude-example $LNB $LNA

# P-1 max TTL (1h in the manifest)
std_leaf | leaf p1_ttl_2h example-root $((-30 * MIN)) $((90 * MIN))
std_leaf | leaf p1_ttl_1h_plus_1s example-root $((-10 * MIN)) $((50 * MIN + 1))
# P-2 max age (30 min in the manifest): issued T-50min, valid until T+5min
std_leaf | leaf p2_age_exceeded example-root $((-50 * MIN)) $((5 * MIN))
# P-3 clock skew (30 s)
std_leaf | leaf p3_expired_beyond_skew example-root $((-31 - 30 * MIN)) -31
std_leaf | leaf p3_not_yet_valid_beyond_skew example-root 31 $((31 + 30 * MIN))

# Issue 7: one verdict on both paths. RFC 5280 4.2: critical extensions not handled.
leaf crit_unknown_in_leaf example-root $LNB $LNA <<EOF
$(std_leaf)
1.3.6.1.4.1.55555.9 = critical, ASN1:NULL
EOF
leaf crit_authority_key_identifier example-root $LNB $LNA <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = URI:spiffe://example.org/workload
subjectKeyIdentifier = hash
authorityKeyIdentifier = critical, keyid:always
EOF
std_leaf | leaf crit_unknown_in_intermediate int-unknown-critical $LNB $LNA
# Key and signature strength, purpose on the whole path, DNS name constraints.
std_leaf | leaf l9_rsa1024_leaf example-root $LNB $LNA rsa1024
std_leaf | MD=sha1 leaf l9_sha1_signature example-root $LNB $LNA
leaf l8_any_eku_only example-root $LNB $LNA <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = anyExtendedKeyUsage
subjectAltName = URI:spiffe://example.org/workload
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
std_leaf | leaf l8_intermediate_eku_code_signing int-eku-code-signing $LNB $LNA
std_leaf "URI:spiffe://example.org/workload, DNS:workload.example.org" |
    leaf s4_dns_name_constraint int-nc-dns-other $LNB $LNA
# Paths the peer may send in any order, with extras; authorities that are not self-signed
# or never expire.
std_leaf | leaf good_chain_out_of_order example-int2 $LNB $LNA
present good_chain_out_of_order leaf/good_chain_out_of_order.pem ca/example-int.pem \
    ca/example-int2.pem
std_leaf | leaf good_chain_with_unrelated_certificate example-int $LNB $LNA
present good_chain_with_unrelated_certificate leaf/good_chain_with_unrelated_certificate.pem \
    ca/other-int.pem ca/example-int.pem
std_leaf | leaf good_intermediate_is_the_authority example-int $LNB $LNA
std_leaf | leaf good_root_without_expiry no-expiry-root $LNB $LNA

# ---------------------------------------------------------------------------------------
# --check: what does OpenSSL itself say about each chain?
# expect_verify CASE VERDICT AT_OFFSET BUNDLE...
# VERDICT: OK, or "DEPTH:MESSAGE" of the first error that `openssl verify` reports.
# Leaves get -x509_strict only in good cases (strict mode also judges some leaf defects).
if ((check)); then
    fails=0
    expect_verify() {
        local name=$1 want=$2 at=$3
        shift 3
        local -a strict=()
        [[ $name == good_* ]] && strict=(-x509_strict)
        cat "$@" >"$W/check-roots.pem"
        local chain=$OUT/$name/chain.pem got out
        if out=$("$OPENSSL" verify "${strict[@]}" -attime $((T + at)) -CAfile "$W/check-roots.pem" \
            -untrusted "$chain" "$chain" 2>&1); then
            got=OK
        else
            got='?'
            [[ $out =~ (^|$'\n')error\ [0-9]+\ at\ ([0-9]+)\ depth\ lookup:\ ([^$'\n']*) ]] &&
                got="${BASH_REMATCH[2]}:${BASH_REMATCH[3]}"
        fi
        if [[ $got == "$want" ]]; then
            printf 'ok    %-45s %s\n' "$name" "$got"
        else
            printf 'FAIL  %-45s want %s, openssl says: %s\n' "$name" "$want" "${out//$'\n'/ | }"
            fails=$((fails + 1))
        fi
    }
    expect_verify_at_level_2() {
        local name=$1 want=$2 got out
        shift 2
        cat "$@" >"$W/check-roots.pem"
        if out=$("$OPENSSL" verify -auth_level 2 -attime "$T" -CAfile "$W/check-roots.pem" \
            -untrusted "$OUT/$name/chain.pem" "$OUT/$name/chain.pem" 2>&1); then
            got=OK
        else
            got='?'
            [[ $out =~ (^|$'\n')error\ [0-9]+\ at\ ([0-9]+)\ depth\ lookup:\ ([^$'\n']*) ]] &&
                got="${BASH_REMATCH[2]}:${BASH_REMATCH[3]}"
        fi
        if [[ $got == "$want" ]]; then
            printf 'ok    %-45s %s\n' "$name" "$got"
        else
            printf 'FAIL  %-45s want %s, openssl says: %s\n' "$name" "$want" "${out//$'\n'/ | }"
            fails=$((fails + 1))
        fi
    }
    EX=bundles/example.org.pem OT=bundles/other.org.pem TH=bundles/third.org.pem
    cd "$OUT"
    for c in good_leaf_under_root good_leaf_under_intermediate good_two_intermediates \
        good_rsa2048_leaf good_extra_dns_san good_id_path_characters good_no_eku \
        good_eku_server_only good_eku_client_only good_no_basic_constraints \
        good_ku_with_key_encipherment good_intermediate_with_td_id good_intermediate_pathlen0 \
        good_name_constraints_permit good_chain_includes_root good_federated_other_org \
        good_ttl_exactly_1h good_max_age_within; do
        expect_verify $c OK 0 $EX $OT
    done
    expect_verify good_third_org_with_bundle OK 0 $EX $OT $TH
    expect_verify good_not_yet_valid_within_skew OK 20 $EX $OT
    # OpenSSL treats the notAfter second itself as expired (RFC 5280 says it is inclusive).
    expect_verify good_expired_within_skew OK -21 $EX $OT
    # SPIFFE-only defects: the chain itself is sound, so OpenSSL accepts it.
    for c in l1_no_san l1_dns_only l1_two_uri_sans l2_https_scheme l2_uppercase_trust_domain \
        l2_dot_dot_segment l2_percent_encoding l2_port l2_query l2_trailing_slash \
        l2_empty_segment l3_root_id l4_leaf_is_ca l5_no_key_usage l5_key_usage_not_critical \
        l6_no_digital_signature l7_key_cert_sign l7_crl_sign l8_eku_code_signing_only \
        s3_intermediate_id_with_path p1_ttl_2h p1_ttl_1h_plus_1s p2_age_exceeded \
        l10_example_id_signed_by_other_root l10_example_id_via_other_intermediate \
        l10_other_id_signed_by_example_root; do
        expect_verify $c OK 0 $EX $OT
    done
    # ...and without the other trust domain's root, the spiffe#375 chains fail.
    expect_verify l10_example_id_signed_by_other_root '0:unable to get local issuer certificate' 0 $EX
    expect_verify l10_example_id_via_other_intermediate '1:unable to get local issuer certificate' 0 $EX
    expect_verify l10_unknown_trust_domain OK 0 $TH
    expect_verify l9_wrong_signature '0:certificate signature failure' 0 $EX $OT
    expect_verify l9_leaf_expired '0:certificate has expired' 0 $EX $OT
    expect_verify l9_leaf_not_yet_valid '0:certificate is not yet valid' 0 $EX $OT
    expect_verify l9_intermediate_expired '1:certificate has expired' 0 $EX $OT
    expect_verify l9_intermediate_not_yet_valid '1:certificate is not yet valid' 0 $EX $OT
    expect_verify l9_missing_intermediate '0:unable to get local issuer certificate' 0 $EX $OT
    expect_verify l9_missing_intermediate OK 0 $EX $OT "$W/ca/example-int.pem"
    expect_verify l9_root_expired '1:certificate has expired' 0 bundles-alt/example.org-expired-root.pem
    expect_verify s1_intermediate_ca_false '1:invalid CA certificate' 0 $EX $OT
    expect_verify s1_intermediate_no_basic_constraints '1:invalid CA certificate' 0 $EX $OT
    expect_verify s2_intermediate_no_key_cert_sign '1:invalid CA certificate' 0 $EX $OT
    expect_verify s4_root_pathlen0 '2:path length constraint exceeded' 0 bundles-alt/example.org-pathlen0-root.pem
    expect_verify s4_intermediate_pathlen0_exceeded '2:path length constraint exceeded' 0 $EX $OT
    expect_verify s4_name_constraints_permit_other '0:permitted subtree violation' 0 $EX $OT
    expect_verify s4_name_constraints_exclude_example '0:excluded subtree violation' 0 $EX $OT
    expect_verify p3_expired_beyond_skew '0:certificate has expired' 0 $EX $OT
    expect_verify p3_not_yet_valid_beyond_skew '0:certificate is not yet valid' 0 $EX $OT
    expect_verify crit_unknown_in_leaf '0:unhandled critical extension' 0 $EX $OT
    expect_verify crit_authority_key_identifier '0:unhandled critical extension' 0 $EX $OT
    expect_verify crit_unknown_in_intermediate '1:unhandled critical extension' 0 $EX $OT
    # `openssl verify` runs at security level 1 unless told: -auth_level 2 is what TLS uses.
    expect_verify_at_level_2 l9_rsa1024_leaf '0:EE certificate key too weak' $EX $OT
    expect_verify_at_level_2 l9_sha1_signature '0:CA signature digest algorithm too weak' $EX $OT
    expect_verify l8_any_eku_only OK 0 $EX $OT # only a purpose check refuses it (TLS has one)
    expect_verify l8_intermediate_eku_code_signing OK 0 $EX $OT
    expect_verify s4_dns_name_constraint '0:permitted subtree violation' 0 $EX $OT
    expect_verify good_chain_out_of_order OK 0 $EX $OT
    expect_verify good_chain_with_unrelated_certificate OK 0 $EX $OT
    expect_verify good_root_without_expiry OK 0 bundles-alt/example.org-no-expiry-root.pem
    ((fails == 0)) || { echo "make_certs.sh --check: $fails mismatches" >&2; exit 1; }
fi
