#!/usr/bin/env bash
# Install every external program Berth's test suite drives, on Debian 12 (bookworm):
#   skopeo, podman, buildah, umoci   real OCI clients (tests/clients.rs)
#   docker-registry                  CNCF Distribution 2.8, the peer registry
#   htpasswd (apache2-utils), jq, openssl, curl
#   slapd, slappasswd (slapd), ldapsearch (ldap-utils)   OpenLDAP for tests/ldap.rs
#   postgres, initdb (postgresql)   PostgreSQL for the meta::postgres tests
#   nginx                           the load balancer in front of tests/cluster.rs nodes
#   iptables                        cuts a container off a relay (tests/cluster_containers.rs)
# and check that the Docker Engine the Docker CLI tests use is reachable.
#
# Idempotent: when every program is already there, apt is not touched. Runs as root, or
# through sudo when it exists. Installing docker-registry or slapd never leaves its
# service running (docker-registry would listen on :5000, slapd on :389); slapd is
# installed without a database of its own (debconf slapd/no_configuration): the tests
# start their own slapd with a generated configuration. The same goes for postgresql:
# its packaged cluster (main, port 5432) is stopped and not started at boot; the tests
# start a throwaway cluster of their own (scripts/start-postgres.sh).
set -euo pipefail

log() { printf 'install-test-deps: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    die "must run as root (or with sudo installed) to install packages"
fi

# command -> Debian package providing it
declare -A PACKAGE_OF=(
    [skopeo]=skopeo
    [podman]=podman
    [buildah]=buildah
    [umoci]=umoci
    [docker-registry]=docker-registry
    [htpasswd]=apache2-utils
    [jq]=jq
    [openssl]=openssl
    [curl]=curl
    [fuse-overlayfs]=fuse-overlayfs
    [newuidmap]=uidmap
    [file]=file
    [strip]=binutils
    [sqlite3]=sqlite3
    [xz]=xz-utils
    [slapd]=slapd
    [slappasswd]=slapd
    [ldapsearch]=ldap-utils
    [postgres]=postgresql
    [nginx]=nginx
    [iptables]=iptables
)
# Needed for podman/buildah/skopeo to work at all; installed alongside the above.
EXTRA_PACKAGES=(golang-github-containers-common ca-certificates)

# slapd and slappasswd live in /usr/sbin, which a non-root PATH may lack; PostgreSQL's
# server binaries in /usr/lib/postgresql/<version>/bin, which no PATH has.
have() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] ||
        compgen -G "/usr/lib/postgresql/*/bin/$1" >/dev/null
}

missing=()
for cmd in "${!PACKAGE_OF[@]}"; do
    if ! have "$cmd"; then
        missing+=("${PACKAGE_OF[$cmd]}")
    fi
done
if [ ! -f /etc/containers/policy.json ] && [ ! -f /usr/share/containers/policy.json ]; then
    missing+=(golang-github-containers-common)
fi

stop_services() {
    # The packages' services would listen on :5000, :389 and :5432; the tests start their
    # own instances.
    for service in docker-registry slapd postgresql nginx; do
        if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
            "${SUDO[@]}" systemctl disable --now "$service.service" >/dev/null 2>&1 || true
        fi
        if [ -x "/etc/init.d/$service" ]; then
            "${SUDO[@]}" "/etc/init.d/$service" stop >/dev/null 2>&1 || true
        fi
    done
    # Debian's own PostgreSQL clusters (pg_ctlcluster, without systemd): stopped, and
    # not started with the system.
    if command -v pg_lsclusters >/dev/null 2>&1; then
        pg_lsclusters -h 2>/dev/null | while read -r version cluster _port status _rest; do
            if [ "$status" = online ]; then
                "${SUDO[@]}" pg_ctlcluster "$version" "$cluster" stop >/dev/null 2>&1 || true
            fi
            conf="/etc/postgresql/$version/$cluster/start.conf"
            if [ -f "$conf" ] && ! grep -qsx 'manual' "$conf"; then
                echo manual | "${SUDO[@]}" tee "$conf" >/dev/null
            fi
        done
    fi
}

if [ "${#missing[@]}" -eq 0 ]; then
    log "all test clients already installed"
else
    if ! grep -qs 'VERSION_CODENAME=bookworm' /etc/os-release; then
        log "warning: written for Debian 12 (bookworm); trying anyway"
    fi
    # Keep package installation from starting services (docker-registry on :5000).
    created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${SUDO[@]}" chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    cleanup_policy() {
        if [ "$created_policy" -eq 1 ]; then
            "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d
        fi
    }
    trap cleanup_policy EXIT

    mapfile -t packages < <(printf '%s\n' "${missing[@]}" "${EXTRA_PACKAGES[@]}" | sort -u)
    log "installing: ${packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # slapd: no system database, no questions (the tests configure their own slapd).
    printf 'slapd slapd/no_configuration boolean true\n' |
        "${SUDO[@]}" debconf-set-selections
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${packages[@]}" >/dev/null
    cleanup_policy
    trap - EXIT
fi
stop_services

# skopeo/podman/buildah refuse to copy without a signature policy.
if [ ! -f /etc/containers/policy.json ] && [ ! -f /usr/share/containers/policy.json ]; then
    log "writing a permissive /etc/containers/policy.json"
    "${SUDO[@]}" mkdir -p /etc/containers
    printf '{"default":[{"type":"insecureAcceptAnything"}]}\n' |
        "${SUDO[@]}" tee /etc/containers/policy.json >/dev/null
fi

# Everything must now be present.
for cmd in "${!PACKAGE_OF[@]}"; do
    have "$cmd" || die "$cmd still missing after installing ${PACKAGE_OF[$cmd]}"
done

# The Docker CLI tests need a running Docker Engine; it is not installed by this script.
command -v docker >/dev/null 2>&1 ||
    die "the docker CLI is not installed; the Docker tests need Docker Engine (daemon running)"
if ! docker_err=$(docker info --format '{{.ServerVersion}}' 2>&1 >/dev/null); then
    die "\`docker info\` failed: the Docker Engine is not reachable (is dockerd running, may this user use /var/run/docker.sock?): $docker_err"
fi

# Python clients from PyPI, in a virtual environment of their own (Debian's Python
# refuses pip installs into the system): harborapi (Harbor's API client, for tests/api.rs)
# and oras (an OCI artifact client). Tests find it at $BERTH_TEST_VENV.
VENV="${BERTH_TEST_VENV:-$HOME/.cache/berth-test-venv}"
PY_PACKAGES=(harborapi==0.26.2 oras==0.2.43)
if ! "$VENV/bin/python" -c 'import harborapi, oras' >/dev/null 2>&1; then
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
        log "installing python3-venv"
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    fi
    log "installing ${PY_PACKAGES[*]} into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}" ||
        die "cannot install ${PY_PACKAGES[*]} from PyPI into $VENV"
fi

log "ok: skopeo $(skopeo --version | awk '{print $3}'), podman $(podman --version | awk '{print $3}'), buildah $(buildah --version | awk '{print $3}'), umoci $(umoci --version | awk '{print $3}'), docker-registry $(docker-registry --version | awk '{print $3}'), docker engine $(docker info --format '{{.ServerVersion}}' 2>/dev/null)"
