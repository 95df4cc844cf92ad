"""A real STAC API backed by a database on loopback: stac-fastapi-pgstac over pgstac on PostgreSQL + PostGIS.

:func:`serve_pgstac` starts a throwaway PostgreSQL cluster (``initdb`` into a temporary folder, ``pg_ctl`` on a
free loopback port; as the unprivileged ``nobody`` when run as root, which ``initdb`` refuses), creates one database
per named catalogue, installs pgstac into it (``pypgstac migrate``), loads its collections and items (pypgstac's
loader) and serves each database with stac-fastapi-pgstac under uvicorn. Everything is stopped and deleted on exit.

This is the server behind Planetary Computer's STAC API (Earth Search runs stac-server on OpenSearch): item
search by GET and POST, ``next`` links with opaque page tokens, the query, filter (CQL2), sort and fields
extensions, and its own answers to what it cannot do (no items for an unknown collection, 500 for an unknown CQL2
operator, 400 for an invalid geometry or a reversed interval).

PostgreSQL and PostGIS come from the distribution's packages (``scripts/_postgres.sh`` installs them on a CI or
development machine); :func:`unavailable` says what is missing.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pystac

from tests.support.stac_api_server import CORS_PATCH, _child, _free_port

_PGSTAC_APP = CORS_PATCH + """
import sys, uvicorn
import stac_fastapi.pgstac.app as module
app = module.app if hasattr(module, "app") else module.create_app()  # 7.x builds it in a factory
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def _server_python() -> str:
    """The Python that runs stac-fastapi-pgstac: this one (the locked release), or ``LEAF_PGSTAC_PYTHON``, a
    virtual environment's interpreter with another release, to run the same tests against it."""
    return os.environ.get("LEAF_PGSTAC_PYTHON") or sys.executable


def pg_bindir() -> Path | None:
    """The newest PostgreSQL server's ``bin`` folder (Debian's ``/usr/lib/postgresql/N/bin``, else ``initdb`` on
    PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    initdb = found[-1] if found else shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def unavailable() -> str | None:
    """Why a pgstac server cannot start here (with what to install), or None when it can."""
    bindir = pg_bindir()
    if bindir is None:
        return ("no PostgreSQL server (initdb) is installed: apt-get install postgresql postgresql-postgis "
                "(scripts/test does)")
    config = subprocess.run([str(bindir / "pg_config"), "--sharedir", "--pkglibdir"], capture_output=True,
                            text=True, check=False)
    if config.returncode != 0:
        return f"{bindir / 'pg_config'} failed: {config.stderr.strip()}"
    sharedir, libdir = map(Path, config.stdout.split())
    # Debian splits PostGIS in two packages: the library, and the SQL scripts with the control file
    needed = [sharedir / "extension" / "postgis.control", libdir / "postgis-3.so"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        major = bindir.parent.name
        return (f"PostGIS is not installed for the PostgreSQL server in {bindir} (missing {', '.join(missing)}): "
                f"apt-get install postgresql-{major}-postgis-3 postgresql-{major}-postgis-3-scripts "
                "(scripts/test does)")
    return None


def _as_server_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its programs as ``nobody`` then."""
    return ["runuser", "-u", "nobody", "--", *cmd] if os.geteuid() == 0 else cmd


def _server_tmp() -> str | None:
    """Where the cluster's folder goes: the temporary folder, unless the server user (nobody) cannot reach it."""
    tmp = Path(tempfile.gettempdir()).resolve()
    if os.geteuid() != 0 or all(p.stat().st_mode & 0o001 for p in [tmp, *tmp.parents]):
        return None
    return "/tmp"


@contextlib.contextmanager
def postgres_cluster() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free loopback port (trust authentication, durability off: a test
    fixture); yields the DSN of its ``postgres`` database as superuser ``postgres``."""
    reason = unavailable()
    if reason:
        raise RuntimeError(reason)
    bindir = pg_bindir()
    assert bindir is not None
    # not under pytest's tmp_path: that is private to root, and the server runs as nobody
    data = Path(tempfile.mkdtemp(prefix="leaf-pgstac-", dir=_server_tmp()))
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(data, nobody.pw_uid, nobody.pw_gid)
    port = _free_port()
    run = {"check": True, "capture_output": True, "text": True}
    try:
        subprocess.run(_as_server_user([str(bindir / "initdb"), "-D", str(data / "db"), "-U", "postgres", "-A",
                                        "trust", "-E", "UTF8", "--locale=C", "--no-sync"]), **run)
        options = (f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={data} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        subprocess.run(_as_server_user([str(bindir / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "log"),
                                        "-w", "-t", "60", "-o", options, "start"]), **run)
    except subprocess.CalledProcessError as e:
        log = (data / "log").read_text() if (data / "log").exists() else ""
        shutil.rmtree(data, ignore_errors=True)
        program = next(Path(c).name for c in e.cmd if c.startswith(str(bindir)))
        raise RuntimeError(f"{program} failed: {e.stderr}\n{log}") from e
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_server_user([str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "-w",
                                        "stop"]), capture_output=True, check=False)
        shutil.rmtree(data, ignore_errors=True)


def _dsn(cluster: str, dbname: str) -> str:
    return cluster.rsplit("/", 1)[0] + "/" + dbname


def _sql(dsn: str, statement: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement)  # type: ignore[arg-type]  # fixed test statements, no parameters


def catalog_contents(catalog: Path) -> tuple[list[pystac.Collection], list[pystac.Item]]:
    """The collections and items of a static catalog file (as :func:`public_shape_catalog` writes)."""
    root = pystac.Catalog.from_file(str(catalog))
    collections = [c for c in root.get_children() if isinstance(c, pystac.Collection)]
    items = [item for c in collections for item in c.get_items(recursive=True)]
    return collections, items


def _pgstac_database(cluster: str, name: str, template: str | None) -> str:
    """A database with pgstac installed: migrated, or copied from ``template`` (the migration takes seconds,
    the copy a fraction of one)."""
    if template:
        _sql(cluster, f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return _dsn(cluster, name)
    from pypgstac.db import PgstacDB
    from pypgstac.migrate import Migrate

    _sql(cluster, f'CREATE DATABASE "{name}"')
    with PgstacDB(dsn=_dsn(cluster, name)) as db:
        Migrate(db).run_migration()
    return _dsn(cluster, name)


def _load(dsn: str, collections: Sequence[pystac.Collection], items: Sequence[pystac.Item]) -> None:
    from pypgstac.db import PgstacDB
    from pypgstac.load import Loader, Methods

    def doc(obj: pystac.STACObject) -> dict[str, Any]:
        d = obj.to_dict(include_self_link=False, transform_hrefs=False)
        d["links"] = []  # the API writes its own links
        return d

    with PgstacDB(dsn=dsn) as db:
        loader = Loader(db=db)
        loader.load_collections(iter([doc(c) for c in collections]), insert_mode=Methods.insert)
        loader.load_items(iter([doc(i) for i in items]), insert_mode=Methods.insert)


@contextlib.contextmanager
def serve_pgstac(databases: Mapping[str, tuple[Sequence[pystac.Collection], Sequence[pystac.Item]]],
                 variants: Mapping[str, tuple[str, str]] | None = None) -> Iterator[dict[str, str]]:
    """One PostgreSQL cluster with a pgstac database per entry of ``databases`` (name → collections and items),
    each served by its own stac-fastapi-pgstac with every extension; ``variants`` adds servers by name over one of
    those databases with only some extensions (name → database name, stac-fastapi-pgstac's ``ENABLED_EXTENSIONS``,
    e.g. ``"pagination"`` for an API without query/filter/sort/fields). Yields the landing-page URL by name."""
    with postgres_cluster() as cluster, contextlib.ExitStack() as servers:
        template = None
        dsns = {}
        for name in databases:  # migrate the first, copy it for the others (before any loads into it)
            dsns[name] = _pgstac_database(cluster, f"pgstac_{name}".replace("-", "_"), template)
            template = template or f"pgstac_{name}".replace("-", "_")
        for name, (collections, items) in databases.items():
            _load(dsns[name], collections, items)
        urls = {}
        plan = {name: (name, None) for name in databases} | dict(variants or {})
        for name, (database, extensions) in plan.items():
            port = _free_port()
            db = urlsplit(dsns[database])
            env = {"POSTGRES_USER": "postgres", "POSTGRES_PASS": "", "POSTGRES_DBNAME": db.path.lstrip("/"),
                   "POSTGRES_HOST_READER": str(db.hostname), "POSTGRES_HOST_WRITER": str(db.hostname),
                   "POSTGRES_PORT": str(db.port), "DB_MIN_CONN_SIZE": "1", "DB_MAX_CONN_SIZE": "4",
                   "PYTHONWARNINGS": "ignore"}  # the server's own deprecation notices
            # stac-fastapi-pgstac 6+ reads libpq's names instead
            env |= {"PGUSER": "postgres", "PGPASSWORD": "", "PGHOST": str(db.hostname), "PGPORT": str(db.port),
                    "PGDATABASE": db.path.lstrip("/")}
            if extensions is not None:
                env["ENABLED_EXTENSIONS"] = extensions
            urls[name] = f"http://127.0.0.1:{port}"
            servers.enter_context(_child([_server_python(), "-c", _PGSTAC_APP, str(port)], urls[name] + "/", env))
        yield urls
