# Sourced by scripts/test: the PostgreSQL server and PostGIS that tests/test_local_stac_pgstac.py needs (it starts
# a throwaway cluster with pgstac and stac-fastapi-pgstac on loopback). Installs from the distribution's packages
# (Debian/Ubuntu apt) only what is missing, and says so; silent when everything is there. Where it cannot install
# (not root, no apt-get), it says what to install and the pgstac tests fail under LEAF_REQUIRE_PGSTAC=1.
pg_missing() { # prints the packages to install, nothing when PostgreSQL and PostGIS are both there
  local bindir major
  bindir=$(find /usr/lib/postgresql -maxdepth 3 -path '*/bin/initdb' -printf '%h\n' 2>/dev/null | sort -V | tail -1) || true
  if [ -z "$bindir" ]; then
    echo "postgresql postgresql-postgis"  # the distribution's default server version and its PostGIS
    return
  fi
  major=$(basename "$(dirname "$bindir")")
  # Debian splits PostGIS: the library (postgresql-N-postgis-3) and the SQL scripts and control file (-scripts)
  [ -f "/usr/share/postgresql/$major/extension/postgis.control" ] && [ -f "$bindir/../lib/postgis-3.so" ] \
    || echo "postgresql-$major-postgis-3 postgresql-$major-postgis-3-scripts"
}

pg_packages=$(pg_missing)
if [ -n "$pg_packages" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing $pg_packages with apt-get for the pgstac tests (once, about a minute)" >&2
    pg_log=$(mktemp)
    # the package lists may be absent on a fresh machine: update them only when the first try cannot find a package
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $pg_packages >"$pg_log" 2>&1; then
      { DEBIAN_FRONTEND=noninteractive apt-get update -q \
          && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $pg_packages; } \
        >"$pg_log" 2>&1 || { cat "$pg_log" >&2; echo "apt-get could not install $pg_packages (log above)" >&2; }
    fi
    rm -f "$pg_log"
  else
    echo "PostgreSQL/PostGIS missing for the pgstac tests: install $pg_packages (as root: apt-get install" \
      "$pg_packages)" >&2
  fi
fi
export LEAF_REQUIRE_PGSTAC=1  # the pgstac tests fail (not skip) when PostgreSQL or PostGIS is missing
