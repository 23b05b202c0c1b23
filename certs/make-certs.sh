#!/usr/bin/env bash
# Creates a CA and a serving certificate for the webhook Service, for clusters
# without cert-manager. Run with --help for the options.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

service="${MAKE_CERTS_SERVICE:-cloudhsm-webhook}"
namespace="${MAKE_CERTS_NAMESPACE:-cloudhsm-webhook}"
secret="${MAKE_CERTS_SECRET:-cloudhsm-webhook-tls}"
out_dir="${MAKE_CERTS_OUT_DIR:-$script_dir/out}"
cluster_domain="${MAKE_CERTS_CLUSTER_DOMAIN:-cluster.local}"
days="${MAKE_CERTS_DAYS:-365}"
ca_days="${MAKE_CERTS_CA_DAYS:-3650}"
new_ca=false

usage() {
  cat <<USAGE
Usage: $(basename "$0") [options]

Creates a CA and a serving certificate for the cloudhsm-webhook Service with
openssl, for clusters without cert-manager, and prints the caBundle for the
MutatingWebhookConfiguration and the command that creates the serving Secret.

An existing CA in the output folder is reused, so running the script again
renews only the serving certificate and the caBundle stays the same.

Options (each also read from the environment variable shown):
  -s, --service NAME         Service name (MAKE_CERTS_SERVICE, default: cloudhsm-webhook)
  -n, --namespace NAME       Namespace of the Service (MAKE_CERTS_NAMESPACE, default: cloudhsm-webhook)
      --secret NAME          Name of the TLS Secret the Deployment mounts
                             (MAKE_CERTS_SECRET, default: cloudhsm-webhook-tls)
  -o, --out-dir DIR          Output folder (MAKE_CERTS_OUT_DIR, default: certs/out, git-ignored)
      --cluster-domain NAME  Cluster DNS domain (MAKE_CERTS_CLUSTER_DOMAIN, default: cluster.local)
      --days N               Serving certificate lifetime in days (MAKE_CERTS_DAYS, default: 365)
      --ca-days N            CA lifetime in days, used when a CA is created
                             (MAKE_CERTS_CA_DAYS, default: 3650)
      --new-ca               Replace the CA in the output folder. The caBundle changes,
                             so update the MutatingWebhookConfiguration too.
  -h, --help                 Print this help and exit

Files written to the output folder: ca.crt, ca.key, tls.crt, tls.key.
Keys are created with mode 0600. Keep ca.key to renew the serving certificate.
USAGE
}

fail() {
  echo "error: $*" >&2
  exit 1
}

# Prints the value of the option named in $1, or fails when it is missing.
require_value() {
  if [[ $# -lt 2 || -z "$2" || "$2" == -* ]]; then
    fail "option $1 requires a value (see --help)"
  fi
  printf '%s' "$2"
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    -s | --service)
      service="$(require_value "$@")"
      shift 2
      ;;
    -n | --namespace)
      namespace="$(require_value "$@")"
      shift 2
      ;;
    --secret)
      secret="$(require_value "$@")"
      shift 2
      ;;
    -o | --out-dir)
      out_dir="$(require_value "$@")"
      shift 2
      ;;
    --cluster-domain)
      cluster_domain="$(require_value "$@")"
      shift 2
      ;;
    --days)
      days="$(require_value "$@")"
      shift 2
      ;;
    --ca-days)
      ca_days="$(require_value "$@")"
      shift 2
      ;;
    --new-ca)
      new_ca=true
      shift
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      echo "error: unknown option: $1" >&2
      usage >&2
      exit 2
      ;;
  esac
done

# Service and namespace names are RFC 1123 labels, and the cluster domain is a
# DNS name, so the values are safe to embed in the openssl configuration.
dns_label='^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$'
[[ "$service" =~ $dns_label ]] || fail "invalid service name '$service': use lowercase letters, digits and '-', at most 63 characters"
[[ "$namespace" =~ $dns_label ]] || fail "invalid namespace '$namespace': use lowercase letters, digits and '-', at most 63 characters"
[[ "$secret" =~ ^[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$ ]] || fail "invalid Secret name '$secret'"
[[ "$cluster_domain" =~ ^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$ ]] || fail "invalid cluster domain '$cluster_domain'"
[[ "$days" =~ ^[1-9][0-9]{0,4}$ ]] || fail "invalid --days '$days': use a whole number of days from 1 to 99999"
[[ "$ca_days" =~ ^[1-9][0-9]{0,4}$ ]] || fail "invalid --ca-days '$ca_days': use a whole number of days from 1 to 99999"

command -v openssl >/dev/null 2>&1 || fail "openssl not found on PATH; install OpenSSL 1.1.1 or later"

# Creates every file with mode 0600, so other users cannot read the keys.
umask 077
mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"

work_dir="$(mktemp -d "${TMPDIR:-/tmp}/cloudhsm-webhook-certs.XXXXXX")"
trap 'rm -rf "$work_dir"' EXIT

# Generates a P-256 private key in PKCS#8 form at path $1.
generate_key() {
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

ca_key="$out_dir/ca.key"
ca_crt="$out_dir/ca.crt"

if [[ "$new_ca" == false && -f "$ca_key" && -f "$ca_crt" ]]; then
  echo "Reusing the CA in $out_dir (pass --new-ca to replace it)"
  # A key that does not belong to the certificate would sign serving
  # certificates that the caBundle cannot verify.
  if [[ "$(openssl pkey -in "$ca_key" -pubout)" != "$(openssl x509 -in "$ca_crt" -noout -pubkey)" ]]; then
    fail "$ca_key does not match $ca_crt; restore the pair or pass --new-ca"
  fi
else
  echo "Creating a CA in $out_dir"
  cat >"$work_dir/ca.cnf" <<CONFIG
[req]
distinguished_name = subject
prompt = no
x509_extensions = ca_extensions

[subject]
CN = ${service}-ca

[ca_extensions]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
CONFIG
  generate_key "$work_dir/ca.key"
  openssl req -x509 -new -sha256 -days "$ca_days" -config "$work_dir/ca.cnf" \
    -key "$work_dir/ca.key" -out "$work_dir/ca.crt"
  mv "$work_dir/ca.key" "$ca_key"
  mv "$work_dir/ca.crt" "$ca_crt"
fi

# A serving certificate that outlives its CA stops verifying when the CA
# expires, so the CA must cover the whole serving lifetime.
if ! openssl x509 -in "$ca_crt" -noout -checkend "$((days * 86400))" >/dev/null; then
  fail "the CA in $ca_crt expires within $days days; pass --new-ca or a smaller --days"
fi

service_fqdn="${service}.${namespace}.svc"
cat >"$work_dir/serving.cnf" <<CONFIG
[serving_extensions]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:${service}, DNS:${service}.${namespace}, DNS:${service_fqdn}, DNS:${service_fqdn}.${cluster_domain}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CONFIG

echo "Creating the serving certificate for $service_fqdn"
generate_key "$work_dir/tls.key"
openssl req -new -sha256 -subj "/CN=${service_fqdn}" -key "$work_dir/tls.key" -out "$work_dir/tls.csr"
openssl x509 -req -sha256 -days "$days" -in "$work_dir/tls.csr" \
  -CA "$ca_crt" -CAkey "$ca_key" -set_serial "0x$(openssl rand -hex 16)" \
  -extfile "$work_dir/serving.cnf" -extensions serving_extensions \
  -out "$work_dir/tls.crt" 2>/dev/null
# Moved only after both steps succeeded, so a failed run never leaves a key
# next to a certificate it does not belong to.
mv "$work_dir/tls.key" "$out_dir/tls.key"
mv "$work_dir/tls.crt" "$out_dir/tls.crt"

if git -C "$out_dir" rev-parse --is-inside-work-tree >/dev/null 2>&1 &&
  ! git -C "$out_dir" check-ignore -q "$out_dir/tls.key"; then
  echo "warning: $out_dir is inside a git repository and its keys are not git-ignored; never commit them" >&2
fi

ca_bundle="$(base64 <"$ca_crt" | tr -d '\n')"

cat <<SUMMARY

Wrote ca.crt, ca.key, tls.crt and tls.key to $out_dir

Set webhooks[].clientConfig.caBundle of both webhooks in the
MutatingWebhookConfiguration to this value:

caBundle: $ca_bundle

Create or update the serving Secret:

kubectl create secret tls $secret --namespace $namespace --cert=$out_dir/tls.crt --key=$out_dir/tls.key --dry-run=client --output=yaml | kubectl apply -f -
SUMMARY
