"""vcon-server's PostgreSQL table, and bringing a table of an earlier layout to it.

vcon-server (common/storage/postgres/__init__.py, commit b9b0381; peewee 4.0.1 and psycopg2
2.9.11 in its uv.lock) creates the table from a peewee model; this is the DDL peewee emits
for it, checked against peewee itself::

    CREATE TABLE IF NOT EXISTS "vcons" ("id" UUID NOT NULL PRIMARY KEY, "vcon" TEXT NOT NULL,
        "uuid" UUID NOT NULL, "created_at" TIMESTAMP NOT NULL, "updated_at" TIMESTAMP,
        "subject" TEXT, "vcon_json" JSONB)
    CREATE INDEX IF NOT EXISTS "dynamicvcons_vcon_json" ON "vcons" USING GIN ("vcon_json")

and what its ``save()`` puts in a row: ``vcon`` the version string (``"0.0.1"``), ``uuid`` and
``id`` the uuid, ``subject``, ``vcon_json`` the vCon after ``normalize_legacy_fields``,
``updated_at`` the writer's local ``datetime.now()``, and ``created_at`` the vCon's
``created_at`` string as peewee hands it over: an ISO string with ``T`` matches none of
peewee's DateTimeField formats and reaches PostgreSQL as text, whose timestamp parser keeps
the wall-clock time and drops the offset (23:30+05:00 is stored as 23:30); a string
``YYYY-MM-DD HH:MM:SS+HH:MM`` does match one, becomes an aware datetime that psycopg2 sends
as timestamptz, and PostgreSQL stores it converted to the session's time zone.
:func:`created_at_sql` reproduces both, in SQL, for the upsert and for :func:`migrate`.

peewee names the index after its model class, not the table, so a second table in the same
schema gets none; conserver gives a table other than ``vcons`` an index of its own name.

:func:`migrate` (``conserver migrate``) brings a table conserver created before it used
this layout (``created_at``/``updated_at`` timestamptz, ``vcon`` holding the whole JSON,
nullable columns, bodies as received) to it, and says what it changes.
"""

from __future__ import annotations

from typing import Iterable

import orjson
import psycopg
from psycopg import sql

from conserver.storage.compat import LEGACY_ENTRY, LEGACY_TOP_LEVEL, normalize_legacy_fields

# peewee's DateTimeField formats with %z: strings Python's strptime reads as aware datetimes
# (%m, %d, %H, %M, %S take 1-2 digits, %f 1-6, a space in the format any whitespace).
# Matched by PostgreSQL's ``~`` (its regular expressions read \d and \s as Python's do).
AWARE_IN_PEEWEE = (r"^\d{4}-\d{1,2}-\d{1,2}\s+\d{1,2}:\d{1,2}:\d{1,2}(\.\d{1,6})?"
                   r"(Z|[+-]\d{2}:?\d{2}(:?\d{2}(\.\d{1,6})?)?)$")

_PAGE = 500  # rows per transaction when bodies are normalized


def create_table_sql(table: str) -> sql.Composed:
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {t} (id UUID NOT NULL PRIMARY KEY, vcon TEXT NOT NULL, uuid UUID NOT NULL, "
        "created_at TIMESTAMP NOT NULL, updated_at TIMESTAMP, subject TEXT, vcon_json JSONB)"
    ).format(t=sql.Identifier(table))


def index_name(table: str) -> str:
    return "dynamicvcons_vcon_json" if table == "vcons" else f"{table}_vcon_json"[:63]


def create_index_sql(table: str, concurrently: bool = False) -> sql.Composed:
    return sql.SQL("CREATE INDEX {c}IF NOT EXISTS {i} ON {t} USING GIN (vcon_json)").format(
        c=sql.SQL("CONCURRENTLY " if concurrently else ""), i=sql.Identifier(index_name(table)),
        t=sql.Identifier(table))


def created_at_sql(text: sql.Composable) -> sql.Composed:
    """The TIMESTAMP vcon-server stores for the created_at string ``text`` (see the docstring)."""
    return sql.SQL("CASE WHEN {v} ~ {re} THEN ({v})::timestamptz::timestamp ELSE ({v})::timestamp END").format(
        v=text, re=sql.Literal(AWARE_IN_PEEWEE))


def _legacy_body_sql() -> sql.Composed:
    """True for a vcon_json that normalize_legacy_fields would change."""
    def exists(names: Iterable[str]) -> str:
        return " || ".join(f"exists(@.{n})" for n in names)

    entry = exists(old for old, _ in LEGACY_ENTRY)
    paths = [f"$.dialog[*] ? ({entry})", f"$.analysis[*] ? ({entry})",
             f"$.attachments[*] ? ({entry} || (exists(@.type) && !exists(@.purpose)))"]
    top = sql.SQL("vcon_json ?| {names}").format(names=sql.Literal([old for old, _ in LEGACY_TOP_LEVEL]))
    return sql.SQL(" OR ").join([top, *(sql.SQL("jsonb_path_exists(vcon_json, {p})").format(p=sql.Literal(p))
                                        for p in paths)])


def _columns(conn: psycopg.Connection, table: str) -> dict[str, tuple[str, bool]]:
    rows = conn.execute(
        "SELECT column_name, data_type, is_nullable = 'YES' FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = %s", (table,)).fetchall()
    return {name: (kind, nullable) for name, kind, nullable in rows}


def _has_body_index(conn: psycopg.Connection, table: str) -> bool:
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass(%s) AND a.attname = 'vcon_json')",
        (sql.Identifier(table).as_string(conn),)).fetchone()[0]


def layout_problems(conn: psycopg.Connection, table: str) -> list[str]:
    """What keeps an existing table from vcon-server's layout (cheap: no table scan)."""
    cols = _columns(conn, table)
    problems = [f"{c} is timestamptz, not timestamp" for c in ("created_at", "updated_at")
                if cols.get(c, ("",))[0] == "timestamp with time zone"]
    problems += [f"{c} may be NULL" for c in ("vcon", "uuid", "created_at") if cols.get(c, ("", False))[1]]
    if not _has_body_index(conn, table):
        problems.append("no GIN index on vcon_json")
    return problems


def migrate(conn: psycopg.Connection, table: str, apply: bool) -> list[str]:
    """Bring ``table`` to vcon-server's layout; return what was (or, without ``apply``, would be)
    changed. ``conn`` must be in autocommit mode (the index is built CONCURRENTLY)."""
    t = sql.Identifier(table)
    cols = _columns(conn, table)
    if not cols:
        if apply:
            with conn.transaction():
                conn.execute(create_table_sql(table))
                conn.execute(create_index_sql(table))
        return [f"table {table} in vcon-server's layout, with its GIN index on vcon_json: created"]
    changes: list[str] = []
    steps: list[sql.Composable] = []
    if cols["created_at"][0] == "timestamp with time zone":
        changes.append("created_at: timestamptz -> timestamp, each row's value taken again from the created_at "
                       "written in its vcon_json (the wall-clock time, as vcon-server stores it)")
        wall = created_at_sql(sql.SQL("vcon_json->>'created_at'"))
        steps.append(sql.SQL("ALTER TABLE {t} ALTER COLUMN created_at TYPE timestamp USING "
                             "COALESCE({wall}, created_at::timestamp)").format(t=t, wall=wall))
    if cols["updated_at"][0] == "timestamp with time zone":
        changes.append("updated_at: timestamptz -> timestamp (the session's local time, as vcon-server's "
                       "datetime.now())")
        steps.append(sql.SQL("ALTER TABLE {t} ALTER COLUMN updated_at TYPE timestamp").format(t=t))
    whole_json = conn.execute(sql.SQL("SELECT count(*) FROM {t} WHERE left(vcon, 1) = '{{'").format(t=t)).fetchone()[0]
    if whole_json:
        changes.append(f"vcon: the version string instead of the whole vCon JSON in {whole_json} rows")
        steps.append(sql.SQL("UPDATE {t} SET vcon = vcon_json->>'vcon' WHERE left(vcon, 1) = '{{' "
                             "AND vcon_json ? 'vcon'").format(t=t))
    nullable = [c for c in ("vcon", "uuid", "created_at") if cols[c][1]]
    if nullable:
        changes.append(f"{', '.join(nullable)}: NOT NULL, as in vcon-server's model")
        steps += [sql.SQL("ALTER TABLE {t} ALTER COLUMN {c} SET NOT NULL").format(t=t, c=sql.Identifier(c))
                  for c in nullable]
    legacy = _legacy_body_sql()
    stale = conn.execute(sql.SQL("SELECT count(*) FROM {t} WHERE {legacy}").format(t=t, legacy=legacy)).fetchone()[0]
    if stale:
        changes.append(f"vcon_json: legacy field names normalized (vcon_compat) in {stale} rows")
    index = not _has_body_index(conn, table)
    if index:
        changes.append(f"GIN index {index_name(table)} on vcon_json: built (concurrently)")
    if not apply:
        return changes
    if steps:
        with conn.transaction():
            for step in steps:
                conn.execute(step)
    if stale:
        _normalize_bodies(conn, t, legacy)
    if index:
        conn.execute(create_index_sql(table, concurrently=True))
    return changes


def _normalize_bodies(conn: psycopg.Connection, t: sql.Identifier, legacy: sql.Composable) -> None:
    select = sql.SQL("SELECT id, vcon_json::text FROM {t} WHERE id > %s::uuid AND ({legacy}) ORDER BY id LIMIT {n}").format(
        t=t, legacy=legacy, n=sql.Literal(_PAGE))
    update = sql.SQL("UPDATE {t} SET vcon_json = %s::jsonb WHERE id = %s::uuid").format(t=t)
    last = "00000000-0000-0000-0000-000000000000"
    while rows := conn.execute(select, (last,)).fetchall():
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(update, [(orjson.dumps(normalize_legacy_fields(orjson.loads(body))).decode(), uid)
                                     for uid, body in rows])
        last = rows[-1][0]
