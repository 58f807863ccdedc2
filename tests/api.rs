//! The OCI-compatible HTTP API through `api::app` with `oneshot` (no socket):
//! signed requests as the OCI SDK signs them, and every failure it must
//! answer in OCI's error model.

mod common;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use consolegate::api::{ApiState, signature};
use consolegate::config::Config;
use consolegate::connections::ConsoleConnections;
use rsa::RsaPrivateKey;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use serde_json::{Value, json};
use tower::ServiceExt;

const BASE: &str = "/20160918/instanceConsoleConnections";
const TENANCY: &str = "ocid1.tenancy.oc1..aaaatest";

fn rsa_key(n: usize) -> &'static RsaPrivateKey {
    static KEYS: OnceLock<Vec<RsaPrivateKey>> = OnceLock::new();
    &KEYS.get_or_init(|| {
        (0..2)
            .map(|_| RsaPrivateKey::new(&mut rand::rng(), 2048).unwrap())
            .collect()
    })[n]
}

struct Api {
    _dir: tempfile::TempDir,
    app: Router,
    /// The store the API's operations use (the lifecycle task's, in a gateway).
    store: consolegate::store::Store,
}

/// A signer: one API user's key id and private key.
#[derive(Clone)]
struct Signer {
    key_id: String,
    key: &'static RsaPrivateKey,
}

fn pem(key: &RsaPrivateKey) -> String {
    key.to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap()
}

/// alice may use compartment `c1`; bob only `c2`. vm1 is in c1, vm2 in c2.
async fn setup(api_settings: &str) -> (Api, Signer, Signer) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "data_dir = \"data\"\n[ssh]\npublic_host = \"gw.example\"\npublic_port = 2222\n\
         [api]\n{api_settings}\n\
         [[api_user]]\ntenancy = \"{TENANCY}\"\nuser = \"ocid1.user.oc1..alice\"\npublic_key = \"\"\"{}\"\"\"\ncompartments = [\"c1\"]\n\
         [[api_user]]\ntenancy = \"{TENANCY}\"\nuser = \"ocid1.user.oc1..bob\"\npublic_key = \"\"\"{}\"\"\"\ncompartments = [\"c2\"]\n\
         [[instance]]\nid = \"vm1\"\ncompartment = \"c1\"\nserial = \"simulator\"\n\
         [[instance]]\nid = \"vm2\"\ncompartment = \"c2\"\nserial = \"simulator\"\n",
        pem(rsa_key(0)),
        pem(rsa_key(1)),
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();
    let (store, host_keys) = consolegate::gateway::open_state(&config).await.unwrap();
    let connections = ConsoleConnections::new(store.clone(), Arc::new(config), &host_keys);
    let state = ApiState::new(connections, Default::default(), Default::default()).unwrap();
    let signer = |user: &str, n: usize| Signer {
        key_id: format!(
            "{TENANCY}/ocid1.user.oc1..{user}/{}",
            signature::fingerprint(&rsa_key(n).to_public_key())
        ),
        key: rsa_key(n),
    };
    (
        Api {
            _dir: dir,
            app: consolegate::api::app(state),
            store,
        },
        signer("alice", 0),
        signer("bob", 1),
    )
}

fn signed(method: Method, target: &str, body: Option<&Value>, who: &Signer) -> Request<Body> {
    signed_at(method, target, body, who, SystemTime::now(), &[])
}

fn signed_at(
    method: Method,
    target: &str,
    body: Option<&Value>,
    who: &Signer,
    now: SystemTime,
    extra: &[(&str, &str)],
) -> Request<Body> {
    let body = body
        .map(|b| serde_json::to_vec(b).unwrap())
        .unwrap_or_default();
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
    for (k, v) in extra {
        headers.insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    signature::sign(
        &method,
        target,
        &mut headers,
        &body,
        &who.key_id,
        who.key,
        now,
    )
    .unwrap();
    let mut request = Request::builder().method(method).uri(target);
    *request.headers_mut().unwrap() = headers;
    request.body(Body::from(body)).unwrap()
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
}

impl Answer {
    fn error(&self, status: StatusCode, code: &str) -> &str {
        assert_eq!(self.status, status, "{}", self.json);
        assert_eq!(self.json["code"], code, "{}", self.json);
        // Every error names its runbook entry, in a header and in the message.
        let runbook = consolegate::api::error::runbook_code(status);
        assert_eq!(
            self.headers
                .get(consolegate::api::error::CODE_HEADER)
                .and_then(|v| v.to_str().ok()),
            Some(runbook),
            "{}",
            self.json
        );
        let message = self.json["message"].as_str().unwrap();
        assert!(message.starts_with(&format!("{runbook} ")), "{message}");
        message
    }
}

async fn call(api: &Api, request: Request<Body>) -> Answer {
    let response = api.app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    assert!(headers.contains_key("opc-request-id"), "no opc-request-id");
    let bytes = axum::body::to_bytes(response.into_body(), 10 << 20)
        .await
        .unwrap();
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("not JSON: {bytes:?}"))
    };
    Answer {
        status,
        headers,
        json,
    }
}

fn ssh_key(n: u8) -> String {
    // Distinct valid ed25519 public keys.
    use base64::Engine;
    let mut blob = Vec::new();
    blob.extend_from_slice(&11u32.to_be_bytes());
    blob.extend_from_slice(b"ssh-ed25519");
    blob.extend_from_slice(&32u32.to_be_bytes());
    blob.extend_from_slice(&[n; 32]);
    format!(
        "ssh-ed25519 {} test{n}\n",
        base64::engine::general_purpose::STANDARD.encode(blob)
    )
}

fn create_body(instance: &str, n: u8) -> Value {
    json!({"instanceId": instance, "publicKey": ssh_key(n)})
}

#[tokio::test]
async fn create_get_list_update_delete_round_trip() {
    let (api, alice, _) = setup("").await;
    let a = call(
        &api,
        signed(Method::POST, BASE, Some(&create_body("vm1", 1)), &alice),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    let id = a.json["id"].as_str().unwrap().to_owned();
    assert_eq!(a.json["lifecycleState"], "ACTIVE");
    assert_eq!(a.json["compartmentId"], "c1");
    assert!(
        a.json["connectionString"]
            .as_str()
            .unwrap()
            .contains(&format!("-p 2222 {id}@gw.example"))
    );
    let etag = a.headers["etag"].to_str().unwrap().to_owned();

    let got = call(
        &api,
        signed(Method::GET, &format!("{BASE}/{id}"), None, &alice),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.json, a.json);
    assert_eq!(got.headers["etag"], etag.as_str());

    let tags = json!({"freeformTags": {"team": "ops"}});
    let put = call(
        &api,
        signed_at(
            Method::PUT,
            &format!("{BASE}/{id}"),
            Some(&tags),
            &alice,
            SystemTime::now(),
            &[("if-match", &etag)],
        ),
    )
    .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.json);
    assert_eq!(put.json["freeformTags"]["team"], "ops");
    let new_etag = put.headers["etag"].to_str().unwrap().to_owned();
    assert_ne!(new_etag, etag);

    // A stale etag is refused, for PUT and DELETE.
    let stale = call(
        &api,
        signed_at(
            Method::PUT,
            &format!("{BASE}/{id}"),
            Some(&tags),
            &alice,
            SystemTime::now(),
            &[("if-match", &etag)],
        ),
    )
    .await;
    stale.error(StatusCode::PRECONDITION_FAILED, "NoEtagMatch");
    let stale = call(
        &api,
        signed_at(
            Method::DELETE,
            &format!("{BASE}/{id}"),
            None,
            &alice,
            SystemTime::now(),
            &[("if-match", &etag)],
        ),
    )
    .await;
    stale.error(StatusCode::PRECONDITION_FAILED, "NoEtagMatch");

    let list = call(
        &api,
        signed(
            Method::GET,
            &format!("{BASE}?compartmentId=c1"),
            None,
            &alice,
        ),
    )
    .await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.json.as_array().unwrap().len(), 1);
    assert!(!list.headers.contains_key("opc-next-page"));

    // Lifecycle: ACTIVE -> DELETING (204) -> DELETED -> gone.
    let del = call(
        &api,
        signed_at(
            Method::DELETE,
            &format!("{BASE}/{id}"),
            None,
            &alice,
            SystemTime::now(),
            &[("if-match", &new_etag)],
        ),
    )
    .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    let got = call(
        &api,
        signed(Method::GET, &format!("{BASE}/{id}"), None, &alice),
    )
    .await;
    assert_eq!(got.json["lifecycleState"], "DELETING");
    // Deleting again is accepted and changes nothing.
    let again = call(
        &api,
        signed(Method::DELETE, &format!("{BASE}/{id}"), None, &alice),
    )
    .await;
    assert_eq!(again.status, StatusCode::NO_CONTENT);
    // Tags of a connection being deleted cannot change (not retried by SDKs: Conflict).
    let put = call(
        &api,
        signed(Method::PUT, &format!("{BASE}/{id}"), Some(&tags), &alice),
    )
    .await;
    put.error(StatusCode::CONFLICT, "Conflict");
    let store = &api.store;
    store.advance_lifecycle(0, 60_000).await.unwrap();
    let got = call(
        &api,
        signed(Method::GET, &format!("{BASE}/{id}"), None, &alice),
    )
    .await;
    assert_eq!(got.json["lifecycleState"], "DELETED");
    store.advance_lifecycle(0, 0).await.unwrap();
    let got = call(
        &api,
        signed(Method::GET, &format!("{BASE}/{id}"), None, &alice),
    )
    .await;
    got.error(StatusCode::NOT_FOUND, "NotAuthorizedOrNotFound");
}

#[tokio::test]
async fn signatures_are_checked() {
    let (api, alice, _) = setup("").await;
    // No signature at all.
    let request = Request::builder()
        .uri(format!("{BASE}?compartmentId=c1"))
        .header("host", "127.0.0.1:8080")
        .body(Body::empty())
        .unwrap();
    let m = call(&api, request)
        .await
        .error(StatusCode::UNAUTHORIZED, "NotAuthenticated")
        .to_owned();
    assert!(m.contains("Authorization"), "{m}");

    // Signed by a key that is not the one registered for this keyId.
    let forger = Signer {
        key_id: alice.key_id.clone(),
        key: rsa_key(1),
    };
    call(
        &api,
        signed(
            Method::GET,
            &format!("{BASE}?compartmentId=c1"),
            None,
            &forger,
        ),
    )
    .await
    .error(StatusCode::UNAUTHORIZED, "NotAuthenticated");

    // An unknown keyId.
    let stranger = Signer {
        key_id: format!("{TENANCY}/ocid1.user.oc1..eve/00:11"),
        key: rsa_key(0),
    };
    call(
        &api,
        signed(
            Method::GET,
            &format!("{BASE}?compartmentId=c1"),
            None,
            &stranger,
        ),
    )
    .await
    .error(StatusCode::UNAUTHORIZED, "NotAuthenticated");

    // A body changed after signing.
    let mut request = signed(Method::POST, BASE, Some(&create_body("vm1", 1)), &alice);
    *request.body_mut() = Body::from(serde_json::to_vec(&create_body("vm1", 2)).unwrap());
    let m = call(&api, request)
        .await
        .error(StatusCode::UNAUTHORIZED, "NotAuthenticated")
        .to_owned();
    assert!(m.contains("x-content-sha256") || m.contains("hash"), "{m}");

    // A date outside the skew window, either way.
    for offset in [-600i64, 600] {
        let when = if offset < 0 {
            SystemTime::now() - Duration::from_secs(600)
        } else {
            SystemTime::now() + Duration::from_secs(600)
        };
        let m = call(
            &api,
            signed_at(
                Method::GET,
                &format!("{BASE}?compartmentId=c1"),
                None,
                &alice,
                when,
                &[],
            ),
        )
        .await
        .error(StatusCode::UNAUTHORIZED, "NotAuthenticated")
        .to_owned();
        assert!(m.contains("skew") || m.contains("date"), "{m}");
    }

    // The query string changed after signing.
    let mut request = signed(
        Method::GET,
        &format!("{BASE}?compartmentId=c1"),
        None,
        &alice,
    );
    *request.uri_mut() = format!("{BASE}?compartmentId=c2").parse().unwrap();
    call(&api, request)
        .await
        .error(StatusCode::UNAUTHORIZED, "NotAuthenticated");

    // The client's opc-request-id is echoed, even on errors.
    let request = signed_at(
        Method::GET,
        &format!("{BASE}?compartmentId=zz"),
        None,
        &alice,
        SystemTime::now(),
        &[("opc-request-id", "ABCDEF0123456789")],
    );
    let answer = call(&api, request).await;
    assert_eq!(answer.headers["opc-request-id"], "ABCDEF0123456789");

    // Nothing was created by any of it.
    let list = call(
        &api,
        signed(
            Method::GET,
            &format!("{BASE}?compartmentId=c1"),
            None,
            &alice,
        ),
    )
    .await;
    assert_eq!(list.json, json!([]));
}

#[tokio::test]
async fn compartments_hide_what_a_caller_may_not_use() {
    let (api, alice, bob) = setup("").await;
    // bob cannot create on alice's instance, and cannot tell it exists.
    let denied = call(
        &api,
        signed(Method::POST, BASE, Some(&create_body("vm1", 1)), &bob),
    )
    .await;
    let unknown = call(
        &api,
        signed(Method::POST, BASE, Some(&create_body("vm9", 1)), &bob),
    )
    .await;
    let m1 = denied
        .error(StatusCode::NOT_FOUND, "NotAuthorizedOrNotFound")
        .to_owned();
    let m2 = unknown
        .error(StatusCode::NOT_FOUND, "NotAuthorizedOrNotFound")
        .to_owned();
    assert_eq!(m1, m2);

    let a = call(
        &api,
        signed(Method::POST, BASE, Some(&create_body("vm1", 1)), &alice),
    )
    .await;
    let id = a.json["id"].as_str().unwrap().to_owned();
    for method in [Method::GET, Method::DELETE] {
        call(&api, signed(method, &format!("{BASE}/{id}"), None, &bob))
            .await
            .error(StatusCode::NOT_FOUND, "NotAuthorizedOrNotFound");
    }
    call(
        &api,
        signed(
            Method::PUT,
            &format!("{BASE}/{id}"),
            Some(&json!({"freeformTags": {}})),
            &bob,
        ),
    )
    .await
    .error(StatusCode::NOT_FOUND, "NotAuthorizedOrNotFound");
    call(
        &api,
        signed(Method::GET, &format!("{BASE}?compartmentId=c1"), None, &bob),
    )
    .await
    .error(StatusCode::NOT_FOUND, "NotAuthorizedOrNotFound");
    // Still ACTIVE: bob's delete did nothing.
    let got = call(
        &api,
        signed(Method::GET, &format!("{BASE}/{id}"), None, &alice),
    )
    .await;
    assert_eq!(got.json["lifecycleState"], "ACTIVE");
}

#[tokio::test]
async fn bad_bodies_and_parameters_get_clear_errors() {
    let (api, alice, _) = setup("max_body_bytes = 4096").await;
    let m = call(
        &api,
        signed(
            Method::POST,
            BASE,
            Some(&json!({"instanceId": "vm1", "publicKey": "ssh-ed25519 AAAA"})),
            &alice,
        ),
    )
    .await
    .error(StatusCode::BAD_REQUEST, "InvalidParameter")
    .to_owned();
    assert!(m.contains("publicKey"), "{m}");
    call(
        &api,
        signed(
            Method::POST,
            BASE,
            Some(&json!({"publicKey": ssh_key(1)})),
            &alice,
        ),
    )
    .await
    .error(StatusCode::BAD_REQUEST, "MissingParameter");
    call(
        &api,
        signed(
            Method::POST,
            BASE,
            Some(&json!({"instanceId": "vm1"})),
            &alice,
        ),
    )
    .await
    .error(StatusCode::BAD_REQUEST, "MissingParameter");
    let m = call(
        &api,
        signed(
            Method::POST,
            BASE,
            Some(&json!({"instanceId": "vm1", "publicKey": ssh_key(1), "colour": "red"})),
            &alice,
        ),
    )
    .await
    .error(StatusCode::BAD_REQUEST, "InvalidParameter")
    .to_owned();
    assert!(m.contains("colour"), "{m}");
    call(
        &api,
        signed(Method::POST, BASE, Some(&json!("not an object")), &alice),
    )
    .await
    .error(StatusCode::BAD_REQUEST, "InvalidParameter");
    let big = json!({"instanceId": "vm1", "publicKey": "A".repeat(5000)});
    call(&api, signed(Method::POST, BASE, Some(&big), &alice))
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge");
    let many: serde_json::Map<String, Value> =
        (0..70).map(|i| (format!("k{i}"), json!("v"))).collect();
    call(
        &api,
        signed(
            Method::POST,
            BASE,
            Some(&json!({"instanceId": "vm1", "publicKey": ssh_key(1), "freeformTags": many})),
            &alice,
        ),
    )
    .await
    .error(StatusCode::BAD_REQUEST, "InvalidParameter");

    call(&api, signed(Method::GET, BASE, None, &alice))
        .await
        .error(StatusCode::BAD_REQUEST, "MissingParameter");
    for bad in [
        "limit=0",
        "limit=100000",
        "limit=x",
        "page=%%%",
        "page=bm90IGEgdG9rZW4",
    ] {
        call(
            &api,
            signed(
                Method::GET,
                &format!("{BASE}?compartmentId=c1&{bad}"),
                None,
                &alice,
            ),
        )
        .await
        .error(StatusCode::BAD_REQUEST, "InvalidParameter");
    }
    call(
        &api,
        signed(Method::GET, "/20160918/nothingHere", None, &alice),
    )
    .await
    .error(StatusCode::NOT_FOUND, "NotFound");

    // The per-instance policy: one live connection per key.
    let first = call(
        &api,
        signed(Method::POST, BASE, Some(&create_body("vm1", 1)), &alice),
    )
    .await;
    let id = first.json["id"].as_str().unwrap();
    let m = call(
        &api,
        signed(Method::POST, BASE, Some(&create_body("vm1", 1)), &alice),
    )
    .await
    .error(StatusCode::CONFLICT, "Conflict")
    .to_owned();
    assert!(m.contains(id), "{m}");
}

#[tokio::test]
async fn retry_tokens_make_creates_idempotent() {
    let (api, alice, bob) = setup("").await;
    let token = [("opc-retry-token", "abcdefghijklmnopqrstuvwxyz0123")];
    let first = call(
        &api,
        signed_at(
            Method::POST,
            BASE,
            Some(&create_body("vm1", 1)),
            &alice,
            SystemTime::now(),
            &token,
        ),
    )
    .await;
    assert_eq!(first.status, StatusCode::OK);
    let replay = call(
        &api,
        signed_at(
            Method::POST,
            BASE,
            Some(&create_body("vm1", 1)),
            &alice,
            SystemTime::now(),
            &token,
        ),
    )
    .await;
    assert_eq!(replay.status, StatusCode::OK);
    assert_eq!(replay.json["id"], first.json["id"]);
    let conflict = call(
        &api,
        signed_at(
            Method::POST,
            BASE,
            Some(&create_body("vm1", 2)),
            &alice,
            SystemTime::now(),
            &token,
        ),
    )
    .await;
    conflict.error(StatusCode::CONFLICT, "InvalidatedRetryToken");
    // Tokens are per caller: bob's identical token is his own.
    let bobs = call(
        &api,
        signed_at(
            Method::POST,
            BASE,
            Some(&create_body("vm2", 1)),
            &bob,
            SystemTime::now(),
            &token,
        ),
    )
    .await;
    assert_eq!(bobs.status, StatusCode::OK);
    assert_ne!(bobs.json["id"], first.json["id"]);
    let list = call(
        &api,
        signed(
            Method::GET,
            &format!("{BASE}?compartmentId=c1"),
            None,
            &alice,
        ),
    )
    .await;
    assert_eq!(
        list.json.as_array().unwrap().len(),
        1,
        "a replay created a second connection"
    );
}

#[tokio::test]
async fn pagination_has_no_gaps_or_duplicates() {
    let (api, alice, _) = setup("").await;
    let mut created = Vec::new();
    for n in 0..11 {
        let a = call(
            &api,
            signed(Method::POST, BASE, Some(&create_body("vm1", n)), &alice),
        )
        .await;
        created.push(a.json["id"].as_str().unwrap().to_owned());
    }
    let mut seen = Vec::new();
    let mut pages = 0;
    let mut target = format!("{BASE}?compartmentId=c1&limit=4");
    loop {
        let page = call(&api, signed(Method::GET, &target, None, &alice)).await;
        assert_eq!(page.status, StatusCode::OK);
        pages += 1;
        let items = page.json.as_array().unwrap();
        assert!(items.len() <= 4);
        seen.extend(items.iter().map(|i| i["id"].as_str().unwrap().to_owned()));
        match page.headers.get("opc-next-page") {
            Some(next) => {
                target = format!(
                    "{BASE}?compartmentId=c1&limit=4&page={}",
                    next.to_str().unwrap()
                )
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, created);
    // Filtered by instance.
    let none = call(
        &api,
        signed(
            Method::GET,
            &format!("{BASE}?compartmentId=c1&instanceId=vm2"),
            None,
            &alice,
        ),
    )
    .await;
    assert_eq!(none.json, json!([]));
}

/// `max_concurrent_requests` slots are taken once a request has
/// authenticated: a stranger's body that never finishes holds none, and
/// signed requests past the slots get 429.
#[tokio::test]
async fn too_many_requests_at_once_get_429() {
    use sqlx::Connection as _;
    let (api, alice, _) = setup("max_concurrent_requests = 1").await;
    let list = || {
        signed(
            Method::GET,
            &format!("{BASE}?compartmentId=c1"),
            None,
            &alice,
        )
    };
    // An unsigned request whose body never finishes.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
    let stalled = Request::builder()
        .method(Method::POST)
        .uri(BASE)
        .header("host", "127.0.0.1:8080")
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap();
    let stranger = tokio::spawn(api.app.clone().oneshot(stalled));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!stranger.is_finished());
    assert_eq!(call(&api, list()).await.status, StatusCode::OK);

    // A signed create holds the only slot while the store is locked.
    let db = api._dir.path().join("data/consolegate.db");
    let mut lock = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut lock)
        .await
        .unwrap();
    let create = signed(
        Method::POST,
        BASE,
        Some(&json!({"instanceId": "vm1", "publicKey": ssh_key(7)})),
        &alice,
    );
    let writer = tokio::spawn(api.app.clone().oneshot(create));
    let mut answer = None;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let a = call(&api, list()).await;
        if a.status == StatusCode::TOO_MANY_REQUESTS {
            answer = Some(a);
            break;
        }
    }
    answer
        .expect("never shed load")
        .error(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests");
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    let created = writer.await.unwrap().unwrap();
    assert_eq!(created.status(), StatusCode::OK);
    // The slot is free again; the stranger is still waiting for its body.
    assert_eq!(call(&api, list()).await.status, StatusCode::OK);
    assert!(!stranger.is_finished());
    drop(tx);
    let _ = stranger.await;
}

#[tokio::test]
async fn openapi_document_is_served_and_checked_in() {
    let (api, _, _) = setup("").await;
    let request = Request::builder()
        .uri("/openapi.json")
        .body(Body::empty())
        .unwrap();
    let served = call(&api, request).await;
    assert_eq!(served.status, StatusCode::OK);
    let generated = consolegate::api::openapi().to_pretty_json().unwrap();
    assert_eq!(
        served.json,
        serde_json::from_str::<Value>(&generated).unwrap()
    );
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, generated + "\n").unwrap();
    }
    let checked_in = std::fs::read_to_string(&path)
        .expect("openapi.json missing: run UPDATE_OPENAPI=1 cargo test --test api");
    assert_eq!(
        serde_json::from_str::<Value>(&checked_in).unwrap(),
        serde_json::from_str::<Value>(&consolegate::api::openapi().to_pretty_json().unwrap())
            .unwrap(),
        "openapi.json is stale: run UPDATE_OPENAPI=1 cargo test --test api"
    );
    for path in [
        BASE,
        "/20160918/instanceConsoleConnections/{instanceConsoleConnectionId}",
    ] {
        assert!(served.json["paths"][path].is_object(), "{path} missing");
    }
}
