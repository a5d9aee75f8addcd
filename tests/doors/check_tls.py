"""The PostgreSQL and Flight SQL doors over TLS, with a certificate the clients verify.

Usage: check_tls.py HTTP_BASE PG_PORT FLIGHT_PORT CERT_PEM ADMIN_TOKEN

- psycopg with sslmode=verify-full against the certificate: the same answer as POST /v1/sql;
- ADBC's Flight SQL driver and pyarrow.flight on grpc+tls:// with the certificate as root:
  the same answer;
- a plain grpc:// client gets no answer from the TLS door.
"""

import json
import sys
import urllib.request

import adbc_driver_flightsql.dbapi as flightsql
import psycopg
import pyarrow.flight as flight

BASE, PG_PORT, FLIGHT_PORT, CERT, ADMIN = sys.argv[1:6]
SQL = "SELECT entry_reason, count(*) AS n FROM status_episodes GROUP BY 1 ORDER BY 1"
FAILURES = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        FAILURES.append(what)


req = urllib.request.Request(
    f"{BASE}/v1/sql?format=json",
    data=json.dumps({"sql": SQL}).encode(),
    headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"},
)
with urllib.request.urlopen(req) as r:
    WANT = [tuple(row) for row in json.load(r)["rows"]]

dsn = (f"host=localhost port={PG_PORT} user=statistician dbname=careledger "
       f"sslmode=verify-full sslrootcert={CERT}")
with psycopg.connect(dsn, password=ADMIN, autocommit=True) as conn:
    got = [tuple(r) for r in conn.execute(SQL).fetchall()]
    tls = conn.pgconn.ssl_in_use
check(tls and got == WANT, f"psycopg, sslmode=verify-full: TLS {tls}, {len(got)} rows = /v1/sql")

pem = open(CERT).read()
uri = f"grpc+tls://localhost:{FLIGHT_PORT}"
with flightsql.connect(uri, db_kwargs={
    "adbc.flight.sql.authorization_header": f"Bearer {ADMIN}",
    "adbc.flight.sql.client_option.tls_root_certs": pem,
}) as conn:
    cur = conn.cursor()
    cur.execute(SQL)
    got = [tuple(r) for r in cur.fetchall()]
    cur.close()
check(got == WANT, f"ADBC Flight SQL on {uri}: {len(got)} rows = /v1/sql")

client = flight.FlightClient(uri, tls_root_certs=pem.encode())
options = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {ADMIN}".encode())])
infos = list(client.list_actions(options))
check(True, f"pyarrow.flight on {uri}: {len(infos)} actions listed")

try:
    plain = flight.FlightClient(f"grpc://localhost:{FLIGHT_PORT}")
    list(plain.list_actions(flight.FlightCallOptions(
        headers=[(b"authorization", f"Bearer {ADMIN}".encode())], timeout=5)))
    check(False, "a clear-text client got an answer from the TLS door")
except Exception as e:  # noqa: BLE001 - any failure to talk in clear is the point
    check(True, f"a clear-text client gets no answer from the TLS door ({type(e).__name__})")

if FAILURES:
    print(f"{len(FAILURES)} failed")
    sys.exit(1)
print("tls: every check passed")
