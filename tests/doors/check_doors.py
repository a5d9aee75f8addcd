"""Real clients against a running server's three doors, which must give the same answers.

Usage: check_doors.py HTTP_BASE PG_PORT FLIGHT_PORT ADMIN_TOKEN SCOPED_TOKEN DASHBOARD_TOKEN

- psycopg (server-side parameters) and pandas over the PostgreSQL wire, ADBC's Flight SQL
  driver and pyarrow.flight: each fetches the same statements as POST /v1/sql, row for row;
- a named report called as a table function equals GET /v1/reports/{name};
- a county-scoped token sees only its county through every door;
- a dashboard token is refused by both doors; DDL, COPY and any SET but careledger.known_at
  are refused; SET careledger.known_at changes the answer as known_at does over HTTP.
"""

import base64
import json
import sys
import urllib.parse
import urllib.request

import adbc_driver_flightsql.dbapi as flightsql
import pandas
import psycopg
import pyarrow.flight as flight

BASE, PG_PORT, FLIGHT_PORT, ADMIN, SCOPED, DASHBOARD = sys.argv[1:7]
FAILURES = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        FAILURES.append(what)


def http_sql(token, sql, known_at=None):
    body = {"sql": sql}
    if known_at:
        body["known_at"] = known_at
    req = urllib.request.Request(
        f"{BASE}/v1/sql?format=json",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req) as r:
        answer = json.load(r)
    rows = [row.values() if isinstance(row, dict) else row for row in answer["rows"]]
    return [tuple(norm(v) for v in row) for row in rows], answer.get("columns")


def http_get(path, token):
    req = urllib.request.Request(f"{BASE}{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)


def norm(v):
    """One spelling for the values the clients type differently (dates, numbers)."""
    if v is None:
        return None
    if hasattr(v, "isoformat"):
        return v.isoformat()
    if isinstance(v, float) and v.is_integer():
        return int(v)
    try:
        import decimal

        if isinstance(v, decimal.Decimal):
            return int(v) if v == v.to_integral_value() else float(v)
    except Exception:
        pass
    return v


def rows_of(cursor_rows):
    return [tuple(norm(v) for v in r) for r in cursor_rows]


def pg(token, **kw):
    return psycopg.connect(
        host="127.0.0.1", port=int(PG_PORT), user="statistician", password=token,
        dbname="careledger", sslmode="disable", **kw
    )


STATEMENTS = [
    "SELECT entry_reason, count(*) AS n FROM status_episodes GROUP BY entry_reason ORDER BY entry_reason",
    "SELECT r.region_code, count(DISTINCT e.person_key) AS women FROM status_episodes e "
    "JOIN residence r ON r.person_key = e.person_key GROUP BY r.region_code ORDER BY 1 LIMIT 20",
    "SELECT person_key, start_date, end_date, exit_reason FROM status_episodes "
    "ORDER BY person_key, start_date LIMIT 50",
]

# --- PostgreSQL wire: psycopg, the same answers as HTTP -------------------------------------
with pg(ADMIN) as conn:
    for sql in STATEMENTS:
        want, _ = http_sql(ADMIN, sql)
        got = rows_of(conn.execute(sql).fetchall())
        check(got == want and len(want) > 0, f"psycopg = /v1/sql ({len(want)} rows): {sql[:60]}")
    # Server-side parameters ($1), as psycopg sends them.
    reason = http_sql(ADMIN, STATEMENTS[0])[0][0][0]
    sql = "SELECT count(*) AS n FROM status_episodes WHERE start_date >= %s AND entry_reason = %s"
    got = conn.execute(sql, ("2023-01-01", reason)).fetchone()[0]
    want, _ = http_sql(
        ADMIN,
        "SELECT count(*) AS n FROM status_episodes WHERE start_date >= DATE '2023-01-01' "
        f"AND entry_reason = '{reason}'",
    )
    check(got == want[0][0] and got > 0, f"psycopg with parameters = /v1/sql ({got})")
    # pandas over the same connection.
    frame = pandas.read_sql(STATEMENTS[0], conn)
    check(
        [tuple(norm(v) for v in r) for r in frame.itertuples(index=False)] == http_sql(ADMIN, STATEMENTS[0])[0],
        "pandas.read_sql over psycopg = /v1/sql",
    )
    # A named report as a table function = GET /v1/reports/stock.
    got = rows_of(
        conn.execute(
            "SELECT region_code, women FROM stock(as_of => '2024-06-30', level => 'city') ORDER BY region_code"
        ).fetchall()
    )
    rep = http_get("/v1/reports/stock?as_of=2024-06-30&level=city&format=json", ADMIN)
    names = [c["name"] if isinstance(c, dict) else c for c in rep["columns"]]
    want = [
        (r["region_code"], r["women"]) if isinstance(r, dict) else (r[names.index("region_code")], r[names.index("women")])
        for r in rep["rows"]
    ]
    check(got == want and len(want) > 0, f"report stock as a table function = GET /v1/reports/stock ({len(want)} rows)")
    # SET careledger.known_at: the answer as known then, like known_at over HTTP.
    conn.execute("SET careledger.known_at = '2000-01-01'")
    got = conn.execute("SELECT count(*) FROM status_episodes").fetchone()[0]
    want, _ = http_sql(ADMIN, "SELECT count(*) FROM status_episodes", known_at="2000-01-01")
    check(got == want[0][0] == 0, f"SET careledger.known_at = known_at over HTTP ({got})")
    shown = conn.execute("SHOW careledger.known_at").fetchone()[0]
    check(shown.startswith("1999-12-31T16:00:00"), f"SHOW careledger.known_at ({shown})")
    conn.execute("SET careledger.known_at = DEFAULT")


def refused(token, sql, code_prefix, what):
    try:
        with pg(token, autocommit=True) as c:
            c.execute(sql)
        check(False, what + " (was accepted)")
    except psycopg.Error as e:
        code = getattr(e, "sqlstate", None) or ""
        check(code.startswith(code_prefix), f"{what}: {code} {str(e).strip()[:90]}")


refused(ADMIN, "CREATE TABLE x (a int)", "25006", "DDL refused")
refused(ADMIN, "COPY status_episodes TO STDOUT", "25006", "COPY refused")
refused(ADMIN, "SET statement_timeout = 0", "42501", "a SET other than careledger.known_at refused")
try:
    pg(DASHBOARD).close()
    check(False, "dashboard token refused by the PostgreSQL door (was let in)")
except psycopg.OperationalError as e:
    check("dashboard" in str(e) or "may not" in str(e), f"dashboard token refused by the PostgreSQL door: {str(e).strip()[:90]}")
try:
    pg("cl_not_a_token").close()
    check(False, "an unknown token refused (was let in)")
except psycopg.OperationalError as e:
    check("unknown token" in str(e), "an unknown token refused")

# A county-scoped token sees only its county, as over HTTP.
SCOPE_SQL = "SELECT DISTINCT substr(region_code, 1, 6) AS county FROM residence WHERE region_code IS NOT NULL ORDER BY 1"
with pg(SCOPED) as conn:
    got = rows_of(conn.execute(SCOPE_SQL).fetchall())
want, _ = http_sql(SCOPED, SCOPE_SQL)
check(got == want and len(got) == 1, f"scoped token over the PostgreSQL door = over HTTP: {got}")

# --- What BI tools send on their own --------------------------------------------------------
# Grafana's PostgreSQL data source lists tables and columns with these queries (from Grafana's
# query builder, as datafusion-postgres's compatibility tests carry them), sent by its Go
# driver in the simple query protocol; then a panel's time series, its macros expanded.
SEARCH_PATH = """SELECT CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
      FROM generate_series(array_lower(string_to_array(current_setting('search_path'),','),1),
                           array_upper(string_to_array(current_setting('search_path'),','),1)) as i,
           string_to_array(current_setting('search_path'),',') s"""
GRAFANA = [
    f"""SELECT CASE WHEN quote_ident(table_schema) IN ({SEARCH_PATH})
          THEN quote_ident(table_name)
          ELSE quote_ident(table_schema) || '.' || quote_ident(table_name) END AS "table"
        FROM information_schema.tables
        WHERE quote_ident(table_schema) NOT IN ('information_schema', 'pg_catalog',
          '_timescaledb_cache', '_timescaledb_catalog', '_timescaledb_internal',
          '_timescaledb_config', 'timescaledb_information', 'timescaledb_experimental')
        ORDER BY CASE WHEN quote_ident(table_schema) IN ({SEARCH_PATH}) THEN 0 ELSE 1 END, 1""",
    f"""SELECT quote_ident(column_name) AS "column", data_type AS "type"
        FROM information_schema.columns
        WHERE CASE WHEN array_length(parse_ident('status_episodes'),1) = 2
            THEN quote_ident(table_schema) = (parse_ident('status_episodes'))[1]
              AND quote_ident(table_name) = (parse_ident('status_episodes'))[2]
            ELSE quote_ident(table_name) = 'status_episodes'
              AND quote_ident(table_schema) IN ({SEARCH_PATH}) END""",
    """SELECT CAST(date_trunc('month', start_date) AS timestamp) AS "time", count(*) AS entries
        FROM status_episodes
        WHERE start_date BETWEEN '2023-01-01T00:00:00Z' AND '2024-12-31T23:59:59Z'
        GROUP BY 1 ORDER BY 1""",
]


def simple(conn, sql):
    """The simple query protocol, as Grafana's Go driver sends a query without arguments."""
    res = conn.pgconn.exec_(sql.encode())
    if res.status not in (psycopg.pq.ExecStatus.TUPLES_OK, psycopg.pq.ExecStatus.COMMAND_OK):
        return None, res.error_message.decode(errors="replace")
    return [[res.get_value(r, c) for c in range(res.nfields)] for r in range(res.ntuples)], None


with pg(ADMIN) as conn:
    conn.autocommit = True
    tables, err = simple(conn, GRAFANA[0])
    names = {t[0].decode() for t in tables or []}
    check(err is None and {"status_episodes", "women", "regions"} <= names,
          f"Grafana's table list: {len(names)} tables {err or ''}")
    columns, err = simple(conn, GRAFANA[1])
    cols = {c[0].decode() for c in columns or []}
    check(err is None and {"person_key", "start_date", "entry_reason"} <= cols,
          f"Grafana's column list of status_episodes: {sorted(cols)} {err or ''}")
    series, err = simple(conn, GRAFANA[2])
    check(err is None and len(series or []) > 0, f"a Grafana time series panel: {len(series or [])} months {err or ''}")

# Metabase (JDBC) and DBeaver sign in with these, in the extended protocol.
JDBC_STARTUP = [
    "SET extra_float_digits = 2",
    "SET application_name = 'Metabase v0.55.1'",
    "SHOW TRANSACTION ISOLATION LEVEL",
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ UNCOMMITTED",
    """SELECT nspname AS "TABLE_SCHEM", current_database() AS "TABLE_CATALOG" FROM pg_catalog.pg_namespace WHERE nspname <> 'pg_toast' ORDER BY "TABLE_SCHEM\"""",
    "SELECT current_schema(), session_user",
    "SELECT version()",
    "SELECT * FROM pg_catalog.pg_settings where name='standard_conforming_strings'",
    "show timezone",
]
with pg(ADMIN) as conn:
    conn.autocommit = True
    for sql in JDBC_STARTUP:
        try:
            conn.execute(sql)
            check(True, f"Metabase/DBeaver start-up: {sql[:60]}")
        except psycopg.Error as e:
            check(False, f"Metabase/DBeaver start-up: {sql[:60]}: {str(e).strip()[:120]}")

# --- Arrow Flight SQL: ADBC ---------------------------------------------------------------
uri = f"grpc://127.0.0.1:{FLIGHT_PORT}"
with flightsql.connect(uri, db_kwargs={"adbc.flight.sql.authorization_header": f"Bearer {ADMIN}"}) as conn:
    cur = conn.cursor()
    for sql in STATEMENTS:
        cur.execute(sql)
        got = rows_of(cur.fetchall())
        want, _ = http_sql(ADMIN, sql)
        check(got == want and len(want) > 0, f"ADBC Flight SQL = /v1/sql ({len(want)} rows): {sql[:50]}")
    cur.close()
with flightsql.connect(uri, db_kwargs={"username": "statistician", "password": SCOPED}) as conn:
    cur = conn.cursor()
    cur.execute(SCOPE_SQL)
    got = rows_of(cur.fetchall())
    cur.close()
check(got == http_sql(SCOPED, SCOPE_SQL)[0], f"ADBC, basic auth with a scoped token = HTTP: {got}")
try:
    with flightsql.connect(uri, db_kwargs={"adbc.flight.sql.authorization_header": f"Bearer {DASHBOARD}"}) as conn:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        cur.fetchall()
    check(False, "dashboard token refused by Flight SQL (was let in)")
except Exception as e:  # the driver's own error classes
    check("dashboard" in str(e) or "may not" in str(e), "dashboard token refused by Flight SQL")


# --- pyarrow.flight: the Flight SQL command by hand ------------------------------------------
def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(no, payload):
    return varint(no << 3 | 2) + varint(len(payload)) + payload


def statement_query(sql):
    """google.protobuf.Any{CommandStatementQuery{query}}."""
    command = field(1, sql.encode())
    return field(1, b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery") + field(2, command)


client = flight.FlightClient(uri)
options = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {ADMIN}".encode())])
for sql in STATEMENTS:
    info = client.get_flight_info(flight.FlightDescriptor.for_command(statement_query(sql)), options)
    table = client.do_get(info.endpoints[0].ticket, options).read_all()
    got = [tuple(norm(v) for v in r.values()) for r in table.to_pylist()]
    check(got == http_sql(ADMIN, sql)[0], f"pyarrow.flight = /v1/sql ({table.num_rows} rows): {sql[:50]}")

if FAILURES:
    print(f"{len(FAILURES)} failed")
    sys.exit(1)
print("doors: every check passed")
