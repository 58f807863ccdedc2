//! The Nova-compatible API through `api::app` with `oneshot`: console URLs
//! and tokens, and every failure answered in Nova's error body.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use consolegate::api::ApiState;
use consolegate::config::Config;
use consolegate::connections::ConsoleConnections;
use consolegate::connections::tokens::{ConsoleProtocol, TokenRefusal, token_hash};
use serde_json::{Value, json};
use tower::ServiceExt;

const ADMIN: &str = "admin-token-for-tests";
const MEMBER: &str = "member-token-for-tests";

async fn setup(extra: &str) -> (tempfile::TempDir, Router, ApiState) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "data_dir = \"data\"\n[api]\nlisten = \"127.0.0.1:8774\"\n[nova]\n{extra}\n\
         [[nova_token]]\ntoken_sha256 = \"{}\"\nproject = \"p1\"\nrole = \"admin\"\n\
         [[nova_token]]\ntoken_sha256 = \"{}\"\nproject = \"p1\"\nrole = \"member\"\n\
         [[instance]]\nid = \"vm1\"\ncompartment = \"p1\"\nserial = \"simulator\"\nvnc = \"tcp:127.0.0.1:5999\"\n\
         [[instance]]\nid = \"vm2\"\ncompartment = \"p2\"\nserial = \"simulator\"\n",
        token_hash(ADMIN),
        token_hash(MEMBER),
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();
    let (store, host_keys) = consolegate::gateway::open_state(&config).await.unwrap();
    let connections = ConsoleConnections::new(store, Arc::new(config), &host_keys);
    let state = ApiState::new(connections, Default::default(), Default::default()).unwrap();
    (dir, consolegate::api::app(state.clone()), state)
}

async fn call(
    app: &Router,
    method: Method,
    path: &str,
    token: Option<&str>,
    version: Option<&str>,
    body: &str,
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    if let Some(t) = token {
        request = request.header("x-auth-token", t);
    }
    if let Some(v) = version {
        request = request.header("openstack-api-version", format!("compute {v}"));
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn token_of(url: &str) -> String {
    url.rsplit("token")
        .next()
        .unwrap()
        .trim_start_matches('=')
        .trim_start_matches("%3D")
        .to_owned()
}

#[tokio::test]
async fn remote_consoles_and_legacy_actions_return_urls_with_tokens() {
    let (_dir, app, _) = setup("").await;
    let serial = json!({"remote_console": {"protocol": "serial", "type": "serial"}}).to_string();
    let (status, body) = call(
        &app,
        Method::POST,
        "/v2.1/servers/vm1/remote-consoles",
        Some(MEMBER),
        Some("2.6"),
        &serial,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let url = body["remote_console"]["url"].as_str().unwrap();
    assert!(
        url.starts_with("ws://127.0.0.1:8774/serial?token="),
        "{url}"
    );
    assert!(token_of(url).len() * 5 >= 128);

    let vnc = json!({"remote_console": {"protocol": "vnc", "type": "novnc"}}).to_string();
    let (status, body) = call(
        &app,
        Method::POST,
        "/v2/p1/servers/vm1/remote-consoles",
        Some(MEMBER),
        Some("2.6"),
        &vnc,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["remote_console"]["url"]
            .as_str()
            .unwrap()
            .contains("/novnc/vnc_lite.html?path=websockify%3Ftoken%3D")
    );

    let (status, body) = call(
        &app,
        Method::POST,
        "/v2.1/servers/vm1/action",
        Some(MEMBER),
        None,
        r#"{"os-getSerialConsole": {"type": "serial"}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["console"]["type"], "serial");
    let (status, body) = call(
        &app,
        Method::POST,
        "/v2.1/servers/vm1/action",
        Some(MEMBER),
        None,
        r#"{"os-getVNCConsole": {"type": "novnc"}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let token = token_of(body["console"]["url"].as_str().unwrap());

    // The admin looks the token up; a member may not.
    let (status, body) = call(
        &app,
        Method::GET,
        &format!("/v2.1/os-console-auth-tokens/{token}"),
        Some(ADMIN),
        Some("2.31"),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["console"]["instance_uuid"], "vm1");
    assert_eq!(body["console"]["port"], 5999);
    let (status, body) = call(
        &app,
        Method::GET,
        &format!("/v2.1/os-console-auth-tokens/{token}"),
        Some(MEMBER),
        Some("2.31"),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["forbidden"]["code"], 403);
    let (status, body) = call(
        &app,
        Method::GET,
        "/v2.1/os-console-auth-tokens/nope",
        Some(ADMIN),
        None,
        "",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["itemNotFound"]["code"], 404);

    // os-consoles.
    let (status, body) = call(
        &app,
        Method::GET,
        "/v2.1/servers/vm1/consoles",
        Some(MEMBER),
        None,
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["consoles"].as_array().unwrap().len(), 2);
    let (status, body) = call(
        &app,
        Method::GET,
        "/v2.1/servers/vm1/consoles/2",
        Some(MEMBER),
        None,
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["console"]["console_type"], "novnc");
    assert!(body["console"]["password"].as_str().unwrap().len() >= 26);
    let (status, _) = call(
        &app,
        Method::DELETE,
        "/v2.1/servers/vm1/consoles/2",
        Some(MEMBER),
        None,
        "",
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = call(
        &app,
        Method::GET,
        "/v2.1/servers/vm1/consoles/9",
        Some(MEMBER),
        None,
        "",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn failures_use_novas_error_bodies() {
    let (_dir, app, _) = setup("").await;
    let serial = json!({"remote_console": {"protocol": "serial", "type": "serial"}}).to_string();
    // No token, a wrong token.
    let (status, body) = call(
        &app,
        Method::POST,
        "/v2.1/servers/vm1/remote-consoles",
        None,
        Some("2.6"),
        &serial,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["unauthorized"]["code"], 401);
    let (status, _) = call(
        &app,
        Method::POST,
        "/v2.1/servers/vm1/remote-consoles",
        Some("guess"),
        Some("2.6"),
        &serial,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Below 2.6 remote-consoles does not exist; outside 2.1..2.31 is not acceptable.
    let (status, body) = call(
        &app,
        Method::POST,
        "/v2.1/servers/vm1/remote-consoles",
        Some(MEMBER),
        Some("2.5"),
        &serial,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = call(
        &app,
        Method::POST,
        "/v2.1/servers/vm1/remote-consoles",
        Some(MEMBER),
        Some("2.99"),
        &serial,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_ACCEPTABLE, "{body}");
    // Bad pairs, unsupported protocols, unoffered VNC, unknown and foreign servers.
    let bad = json!({"remote_console": {"protocol": "vnc", "type": "serial"}}).to_string();
    let (status, body) = call(
        &app,
        Method::POST,
        "/v2.1/servers/vm1/remote-consoles",
        Some(MEMBER),
        Some("2.6"),
        &bad,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["badRequest"]["code"], 400);
    let spice = json!({"remote_console": {"protocol": "spice", "type": "spice-html5"}}).to_string();
    let (status, _) = call(
        &app,
        Method::POST,
        "/v2.1/servers/vm1/remote-consoles",
        Some(MEMBER),
        Some("2.6"),
        &spice,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
    let vnc = json!({"remote_console": {"protocol": "vnc", "type": "novnc"}}).to_string();
    let (status, body) = call(
        &app,
        Method::POST,
        "/v2.1/servers/vm2/remote-consoles",
        Some(ADMIN),
        Some("2.6"),
        &vnc,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{body}");
    for server in ["vm9", "vm2"] {
        let (status, body) = call(
            &app,
            Method::POST,
            &format!("/v2.1/servers/{server}/remote-consoles"),
            Some(MEMBER),
            Some("2.6"),
            &serial,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{server}");
        assert_eq!(body["itemNotFound"]["code"], 404);
    }
    let (status, _) = call(
        &app,
        Method::POST,
        "/v2/p2/servers/vm1/remote-consoles",
        Some(MEMBER),
        Some("2.6"),
        &serial,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Unknown actions, and bodies that are not JSON, exactly as seed 003.
    let (status, body) = call(
        &app,
        Method::POST,
        "/v2.1/servers/vm1/action",
        Some(MEMBER),
        None,
        "os-getVNCConsole=novnc",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body,
        json!({"badRequest": {"message": "There is no such action: None", "code": 400}})
    );
    let (status, body) = call(
        &app,
        Method::POST,
        "/v2.1/servers/vm1/action",
        Some(MEMBER),
        None,
        r#"{"os-reboot": {}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["badRequest"]["message"],
        "There is no such action: os-reboot"
    );
    let (status, body) = call(
        &app,
        Method::POST,
        "/v2.1/servers/vm1/action",
        Some(MEMBER),
        None,
        r#"{"os-getVNCConsole": {"type": "xvpvnc"}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn discovery_is_unauthenticated_and_honest() {
    let (_dir, app, _) = setup("").await;
    for path in ["/v2.1", "/v2.1/"] {
        let (status, body) = call(&app, Method::GET, path, None, None, "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["version"]["id"], "v2.1");
        assert_eq!(body["version"]["version"], "2.31");
        assert_eq!(body["version"]["min_version"], "2.1");
    }
    let (status, body) = call(&app, Method::GET, "/", None, None, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["versions"][0]["status"], "CURRENT");
}

#[tokio::test]
async fn tokens_are_bound_expire_and_can_be_single_use() {
    let (dir, app, state) = setup("single_use_tokens = true\ntoken_ttl_secs = 1").await;
    let tokens = state.tokens();
    let store = consolegate::store::Store::open_sqlite(&dir.path().join("data/consolegate.db"))
        .await
        .unwrap();
    let (_, body) = call(
        &app,
        Method::POST,
        "/v2.1/servers/vm1/action",
        Some(MEMBER),
        None,
        r#"{"os-getSerialConsole": {"type": "serial"}}"#,
    )
    .await;
    let token = token_of(body["console"]["url"].as_str().unwrap());
    let found = tokens.peek(&token).await.unwrap().unwrap();
    assert_eq!(
        (found.instance_id.as_str(), found.protocol),
        ("vm1", ConsoleProtocol::Serial)
    );
    // Bound to its protocol: a VNC socket is refused, and does not spend it.
    assert!(matches!(
        tokens.redeem(Some(&token), ConsoleProtocol::Vnc).await,
        Err(TokenRefusal::OtherProtocol)
    ));
    // Single use: the first use takes it, a replay finds nothing.
    let redeemed = tokens
        .redeem(Some(&token), ConsoleProtocol::Serial)
        .await
        .unwrap();
    assert_eq!(redeemed.instance.id, "vm1");
    assert_eq!(redeemed.token_id, token_hash(&token)[..12]);
    assert!(matches!(
        tokens.redeem(Some(&token), ConsoleProtocol::Serial).await,
        Err(TokenRefusal::Invalid)
    ));
    assert!(tokens.peek(&token).await.unwrap().is_none());
    // Expiry: a 1-second token is gone once its second has passed.
    let (_, body) = call(
        &app,
        Method::POST,
        "/v2.1/servers/vm1/action",
        Some(MEMBER),
        None,
        r#"{"os-getSerialConsole": {"type": "serial"}}"#,
    )
    .await;
    let second = token_of(body["console"]["url"].as_str().unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert!(tokens.peek(&second).await.unwrap().is_none());
    assert_eq!(store.purge_console_tokens().await.unwrap(), 2);
    // Tokens never stored in the clear.
    assert!(store.console_token(&token).await.unwrap().is_none());
}
