//! Tokens on every route: missing, malformed, unknown, revoked and expired tokens are 401 with
//! a detail naming which; roles are held to their routes; a source cannot touch another
//! source's records; a scoped analyst cannot reach raw, reject or audit data through SQL.
//! (Complements `ingest::a_source_writes_only_its_own_records` and the query tests.)

use axum::body::Body;
use axum::http::{Request, StatusCode};
use careledger_gateway::{GatewayConfig, Role};
use chrono::{TimeDelta, Utc};
use serde_json::{Value, json};

use crate::query::{LONGAN, call, get, json_of, seeded, sql};
use crate::{assert_problem, id, ndjson, woman};

/// One request of each kind a token may make, with `authorization` as the header (if any).
fn requests(authorization: Option<&str>) -> Vec<Request<Body>> {
    let mk = |method: &str, path: &str, ct: &str, body: String| {
        let mut r = Request::builder().method(method).uri(path);
        if let Some(a) = authorization {
            r = r.header("authorization", a);
        }
        r.header("content-type", ct).body(Body::from(body)).unwrap()
    };
    vec![
        mk(
            "POST",
            "/v1/ingest/women",
            "application/x-ndjson",
            ndjson(&[woman(1, "civil_affairs")]),
        ),
        mk(
            "POST",
            "/v1/sql",
            "application/json",
            json!({"sql": "SELECT 1"}).to_string(),
        ),
        mk("GET", "/v1/reports", "", String::new()),
        mk(
            "GET",
            "/v1/reports/stock?as_of=2024-06-30",
            "",
            String::new(),
        ),
        mk("GET", "/v1/tables", "", String::new()),
    ]
}

#[tokio::test]
async fn bad_credentials_are_401_on_every_route_naming_why() {
    let (h, t) = seeded(GatewayConfig::default()).await;
    let expired = h
        .tokens
        .create_with_expiry(
            "lapsed",
            &Role::Admin,
            None,
            Some(Utc::now() - TimeDelta::minutes(1)),
        )
        .unwrap();
    let revoked = h.tokens.create("gone", &Role::Admin, None).unwrap();
    h.tokens.revoke("gone").unwrap();
    let admin = &t["admin"];
    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "missing Authorization"),
        (Some(format!("Basic {admin}")), "Bearer <token>"),
        (Some(format!("Token {admin}")), "Bearer <token>"),
        (Some(admin.clone()), "Bearer <token>"),
        (Some("Bearer".into()), "Bearer <token>"),
        (Some("Bearer    ".into()), "no token"),
        (Some("Bearer cl_0000".into()), "unknown token"),
        (Some(format!("Bearer {admin}x")), "unknown token"),
        (Some(format!("Bearer {revoked}")), "revoked"),
        (Some(format!("Bearer {expired}")), "expired at"),
    ];
    for (authorization, needle) in &cases {
        for req in requests(authorization.as_deref()) {
            let what = format!("{} {} with {authorization:?}", req.method(), req.uri());
            let (s, headers, body) = call(&h, req).await;
            let v = json_of(&body);
            assert_problem(&headers, &v, StatusCode::UNAUTHORIZED, s);
            let detail = v["detail"].as_str().unwrap();
            assert!(
                detail.contains(needle),
                "{what}: {detail:?} lacks {needle:?}"
            );
        }
    }
    // A header that is not visible ASCII.
    let mut req = requests(None).remove(1);
    req.headers_mut().insert(
        "authorization",
        axum::http::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
    );
    let (s, headers, body) = call(&h, req).await;
    assert_problem(&headers, &json_of(&body), StatusCode::UNAUTHORIZED, s);
    assert_eq!(h.count("women").await, 11, "nothing more was stored");

    // The scheme is case-insensitive, and a token not yet expired works.
    let (s, _, body) = sql(&h, admin, "SELECT 1", "json").await;
    assert_eq!(s, StatusCode::OK, "{}", json_of(&body));
    let mut req = requests(None).remove(1);
    req.headers_mut()
        .insert("authorization", format!("bearer {admin}").parse().unwrap());
    assert_eq!(call(&h, req).await.0, StatusCode::OK);
    let later = h
        .tokens
        .create_with_expiry(
            "until-tomorrow",
            &Role::Analyst,
            None,
            Some(Utc::now() + TimeDelta::days(1)),
        )
        .unwrap();
    let (s, _, body) = sql(&h, &later, "SELECT 1", "json").await;
    assert_eq!(s, StatusCode::OK, "{}", json_of(&body));
    let listed = h.tokens.list();
    let lapsed = listed.iter().find(|e| e.name == "lapsed").unwrap();
    assert!(lapsed.expires_at.is_some_and(|t| t < Utc::now()));
}

#[tokio::test]
async fn roles_are_held_to_their_routes() {
    let (h, t) = seeded(GatewayConfig::default()).await;
    let source = h.tok("civil_affairs").to_string();
    let forbidden: Vec<(&str, &str, &str)> = vec![
        (source.as_str(), "POST /v1/sql", "run SQL"),
        (source.as_str(), "GET /v1/reports", "read reports"),
        (
            source.as_str(),
            "GET /v1/reports/stock?as_of=2024-06-30",
            "read reports",
        ),
        (source.as_str(), "GET /v1/tables", "list the SQL tables"),
        (t["dash"].as_str(), "POST /v1/sql", "run SQL"),
        (t["dash"].as_str(), "GET /v1/tables", "list the SQL tables"),
        (
            t["dash"].as_str(),
            "GET /v1/reports/priority_gaps",
            "analysts only",
        ),
        (
            t["dash"].as_str(),
            "POST /v1/ingest/women",
            "only a source token",
        ),
        (
            t["admin"].as_str(),
            "POST /v1/ingest/women",
            "only a source token",
        ),
        (
            h.tok("analyst"),
            "POST /v1/ingest/services",
            "only a source token",
        ),
    ];
    for (tok, route, needle) in forbidden {
        let (method, path) = route.split_once(' ').unwrap();
        let req = requests(Some(&format!("Bearer {tok}")))
            .into_iter()
            .find(|r| {
                let group = |p: &str| p.split(['/', '?']).nth(2).map(str::to_string);
                r.method() == method && group(r.uri().path()) == group(path)
            })
            .map(|r| {
                let (mut parts, body) = r.into_parts();
                parts.uri = path.parse().unwrap();
                Request::from_parts(parts, body)
            })
            .unwrap();
        let (s, headers, body) = call(&h, req).await;
        let v = json_of(&body);
        assert_problem(&headers, &v, StatusCode::FORBIDDEN, s);
        assert!(
            v["detail"].as_str().unwrap().contains(needle),
            "{route}: {v}"
        );
    }
}

/// There is no per-table ownership (any source may push any table), but every row is its
/// token's source's: another source can neither claim nor retract nor correct it.
#[tokio::test]
async fn a_source_cannot_touch_another_sources_records() {
    let (h, t) = seeded(GatewayConfig::default()).await;
    let health = h.tok("health");
    // Naming civil affairs as the source: refused, whatever the op.
    for op in ["upsert", "delete"] {
        let mut row = woman(0, "civil_affairs");
        row["op"] = json!(op);
        row["record_version"] = json!(9);
        let (s, headers, r) = h
            .post(
                "/v1/ingest/women",
                health,
                "application/x-ndjson",
                ndjson(&[row]),
                &[],
            )
            .await;
        assert_problem(&headers, &r, StatusCode::UNPROCESSABLE_ENTITY, s);
        assert_eq!(r["receipt"]["errors"][0]["code"], "source.not_token_source");
    }
    // The same record_id without a source: a record of health's own, not a change to
    // civil affairs' w-0 (a retraction and a correction of "w-0" by health).
    let retract =
        json!({"record_id": "w-0", "record_version": 9, "op": "delete", "id_number": id(0)});
    let mut correct = woman(0, "x");
    correct.as_object_mut().unwrap().remove("source");
    correct["record_id"] = json!("w-1");
    correct["record_version"] = json!(9);
    correct["region_code"] = json!("450125100201");
    let (s, _, r) = h
        .post(
            "/v1/ingest/women",
            health,
            "application/x-ndjson",
            ndjson(&[retract, correct]),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let q = "SELECT source, record_id, region_code, record_version FROM women WHERE record_id IN ('w-0', 'w-1') ORDER BY source, record_id";
    let (s, _, body) = sql(&h, &t["admin"], q, "json").await;
    let v = json_of(&body);
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["rows"],
        json!([
            ["civil_affairs", "w-0", LONGAN, 1],
            ["civil_affairs", "w-1", LONGAN, 1],
            ["health", "w-1", "450125100201", 9],
        ]),
        "civil affairs' records are unchanged; health's retraction of w-0 retracted nothing of theirs"
    );
}

#[tokio::test]
async fn a_scoped_analyst_cannot_reach_raw_rejects_or_audit_data() {
    let (h, t) = seeded(GatewayConfig::default()).await;
    let scoped = &t["county-analyst"];
    let unreachable = [
        ("SELECT * FROM delta_women", "delta_women"),
        ("SELECT * FROM datafusion.public.delta_women", "delta_women"),
        ("SELECT * FROM delta_rejects", "delta_rejects"),
        ("SELECT * FROM rejects", "rejects"),
        ("SELECT * FROM audit", "audit"),
        ("SELECT * FROM delta_audit", "delta_audit"),
        ("SELECT * FROM other_catalog.public.women", "other_catalog"),
    ];
    for (q, name) in unreachable {
        let (s, headers, body) = sql(&h, scoped, q, "json").await;
        let v = json_of(&body);
        assert_problem(&headers, &v, StatusCode::BAD_REQUEST, s);
        let detail = v["detail"].as_str().unwrap();
        assert!(
            detail.contains("not found") && detail.contains(name),
            "{q}: {v}"
        );
    }
    // The catalog it can list holds none of them either.
    let (s, _, body) = sql(
        &h,
        scoped,
        "SELECT table_name FROM information_schema.tables ORDER BY 1",
        "json",
    )
    .await;
    let v = json_of(&body);
    assert_eq!(s, StatusCode::OK, "{v}");
    let names: Vec<&str> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap())
        .collect();
    assert!(names.contains(&"women"), "{names:?}");
    for n in &names {
        assert!(
            !n.starts_with("delta_") && *n != "rejects" && *n != "audit",
            "{n} is listed: {names:?}"
        );
    }
    // Every person-level row it can read is in its county, however it is asked for.
    for q in [
        "SELECT count(*) FROM raw_women WHERE NOT starts_with(region_code, '450123')",
        "SELECT count(*) FROM women WHERE region_code = '450125100201'",
        "SELECT count(*) FROM raw_services s JOIN raw_women w USING (person_key) WHERE NOT starts_with(w.region_code, '450123')",
    ] {
        let (s, _, body) = sql(&h, scoped, q, "json").await;
        let v: Value = json_of(&body);
        assert_eq!(s, StatusCode::OK, "{q}: {v}");
        assert_eq!(v["rows"][0][0], 0, "{q}");
    }
    // The admin sees the 上林 rows the scoped analyst cannot.
    let (_, _, body) = get(&h, &t["admin"], "/v1/tables", &[]).await;
    assert!(json_of(&body).to_string().contains("\"rejects\""));
    let (_, _, body) = sql(
        &h,
        &t["admin"],
        "SELECT count(*) FROM women WHERE region_code = '450125100201'",
        "json",
    )
    .await;
    assert_eq!(json_of(&body)["rows"][0][0], 3);
}
