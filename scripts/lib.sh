# Shared by scripts/dev and scripts/test: make sure PostgreSQL's server binaries and psql
# are on this machine (Debian's packages), installing them when they are not.

find_pg_bin() {
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(readlink -f "$(command -v initdb)")"
    return 0
  fi
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}

ensure_postgres() {
  if find_pg_bin >/dev/null && command -v psql >/dev/null 2>&1; then
    return 0
  fi
  echo "PostgreSQL server binaries or psql missing: installing Debian's postgresql packages..." >&2
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-client >&2
  find_pg_bin >/dev/null || { echo "PostgreSQL install failed" >&2; return 1; }
}

# PHP is the oracle for Singapay's canonical body form: the suite checks `send` against it
# (tools/mkvectors.py + tools/php_canonical.php).
ensure_php() {
  command -v php >/dev/null 2>&1 && return 0
  echo "php-cli missing: installing Debian's php-cli..." >&2
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq php-cli >&2
}

# Debian's docker-compose (1.29): the tests validate docker-compose.yml with it. Only the
# Compose client; no container engine is needed for `config`.
ensure_compose() {
  command -v docker-compose >/dev/null 2>&1 && return 0
  echo "docker-compose missing: installing Debian's docker-compose..." >&2
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >&2
}
