//! The store's rules, on both backends: every test runs against an SQLite
//! file and against a fresh database on a private PostgreSQL server
//! (tests/postgres/server.sh; Debian's postgresql). Under CI a missing
//! PostgreSQL is a failure, not a skip.

mod common;

use common::*;
use consolegate::audit::{AuditEvent, AuditKind};
use consolegate::store::{
    ConnectionFilter, ConnectionRecord, ConsoleProtocol, ConsoleToken, FreeformTags,
    LifecycleState, NodeRegistration, PageKey, RetryKey, Store, StoreError,
};
use time::OffsetDateTime;

/// The audit row a change carries into its transaction.
fn made(kind: AuditKind) -> AuditEvent {
    let mut event = AuditEvent::new(kind);
    event.detail = Some("by tests/store.rs".into());
    event
}

fn record(id: &str, instance: &str, fingerprint: &str) -> ConnectionRecord {
    ConnectionRecord {
        id: id.into(),
        compartment_id: "c1".into(),
        instance_id: instance.into(),
        lifecycle_state: LifecycleState::Active,
        public_key: "ssh-ed25519 AAAA".into(),
        fingerprint: fingerprint.into(),
        freeform_tags: [("team".to_string(), "ops".to_string())].into(),
        defined_tags: Default::default(),
        time_created: OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_round_trip_and_survive_reopen() {
    for backend in TestStore::both().await {
        let store = backend.open().await;
        let r = record("a", "vm1", "SHA256:x");
        store
            .create_connection(&r, None, &made(AuditKind::Create))
            .await
            .unwrap();
        assert_eq!(store.get_connection("a").await.unwrap(), Some(r.clone()));
        let store = backend.reopen(store).await;
        assert_eq!(store.get_connection("a").await.unwrap(), Some(r));
        assert_eq!(store.get_connection("nope").await.unwrap(), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_live_connection_per_instance_and_key() {
    for backend in TestStore::both().await {
        let store = backend.open().await;
        store
            .create_connection(
                &record("a", "vm1", "SHA256:x"),
                None,
                &made(AuditKind::Create),
            )
            .await
            .unwrap();
        let err = store
            .create_connection(
                &record("b", "vm1", "SHA256:x"),
                None,
                &made(AuditKind::Create),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Conflict { existing_id, .. } if existing_id == "a"),
            "{err}"
        );
        assert!(store.get_connection("b").await.unwrap().is_none());
        // Another key, or another instance, is fine.
        store
            .create_connection(
                &record("c", "vm1", "SHA256:y"),
                None,
                &made(AuditKind::Create),
            )
            .await
            .unwrap();
        store
            .create_connection(
                &record("d", "vm2", "SHA256:x"),
                None,
                &made(AuditKind::Create),
            )
            .await
            .unwrap();
        // Once deleted, the slot is free again.
        let deleted = store
            .delete_connection("a", &made(AuditKind::Delete))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(deleted.lifecycle_state, LifecycleState::Deleted);
        store
            .create_connection(
                &record("b", "vm1", "SHA256:x"),
                None,
                &made(AuditKind::Create),
            )
            .await
            .unwrap();
        let filter = ConnectionFilter {
            instance_id: Some("vm1".into()),
            ..Default::default()
        };
        let ids: Vec<_> = store
            .list_connections(&filter, None, None)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(
            store.connection_state("a").await.unwrap(),
            Some(LifecycleState::Deleted)
        );
        assert!(
            store
                .delete_connection("zzz", &made(AuditKind::Delete))
                .await
                .unwrap()
                .is_none()
        );
    }
}

/// The node's periodic re-check reads the states of all its sessions'
/// connections at once: existing ones in whatever state, missing ones
/// absent, in several queries past 500 ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_states_are_read_for_many_ids_at_once() {
    for backend in TestStore::both().await {
        let store = backend.open().await;
        for i in 0..3 {
            store
                .create_connection(
                    &record(&format!("c{i}"), &format!("vm{i}"), "SHA256:x"),
                    None,
                    &made(AuditKind::Create),
                )
                .await
                .unwrap();
        }
        store
            .delete_connection("c1", &made(AuditKind::Delete))
            .await
            .unwrap();
        let mut ids: Vec<String> = (0..1200).map(|i| format!("missing{i}")).collect();
        ids.insert(0, "c0".into());
        ids.insert(600, "c1".into());
        ids.push("c2".into());
        ids.push("it's; DROP TABLE console_connections; --".into());
        let states = store.connection_states(&ids).await.unwrap();
        assert_eq!(states.len(), 3, "{states:?}");
        assert_eq!(states["c0"], LifecycleState::Active);
        assert_ne!(states["c1"], LifecycleState::Active);
        assert_eq!(states["c2"], LifecycleState::Active);
        assert!(store.connection_states(&[]).await.unwrap().is_empty());
        assert_eq!(
            store
                .get_connection("c2")
                .await
                .unwrap()
                .unwrap()
                .lifecycle_state,
            LifecycleState::Active
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_host_keys_are_stable() {
    for backend in TestStore::both().await {
        let store = backend.open().await;
        let a = store.instance_host_key("vm1").await.unwrap();
        let b = store.instance_host_key("vm1").await.unwrap();
        let c = store.instance_host_key("vm2").await.unwrap();
        assert_eq!(a.public_key().key_data(), b.public_key().key_data());
        assert_ne!(a.public_key().key_data(), c.public_key().key_data());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_cover_everything_once() {
    for backend in TestStore::both().await {
        let store = backend.open().await;
        for i in 0..7 {
            let mut r = record(&format!("id{i}"), "vm1", &format!("SHA256:{i}"));
            // Two share a creation time: the id breaks the tie.
            r.time_created = OffsetDateTime::from_unix_timestamp(1_700_000_000 + i / 2).unwrap();
            store
                .create_connection(&r, None, &made(AuditKind::Create))
                .await
                .unwrap();
        }
        let filter = ConnectionFilter::default();
        let mut seen = Vec::new();
        let mut page = None;
        loop {
            let rows = store
                .list_connections(&filter, page.as_ref(), Some(3))
                .await
                .unwrap();
            if rows.is_empty() {
                break;
            }
            page = rows.last().map(PageKey::after);
            seen.extend(rows.into_iter().map(|r| r.id));
        }
        assert_eq!(seen, ["id0", "id1", "id2", "id3", "id4", "id5", "id6"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_tokens_replay_or_conflict() {
    for backend in TestStore::both().await {
        let store = backend.open().await;
        let key = RetryKey {
            caller: "t/u/f".into(),
            token: "tok".into(),
            request_hash: "h1".into(),
        };
        store
            .create_connection(
                &record("a", "vm1", "SHA256:x"),
                Some(&key),
                &made(AuditKind::Create),
            )
            .await
            .unwrap();
        assert_eq!(
            store.find_retry_token("t/u/f", "tok").await.unwrap(),
            Some(("h1".into(), "a".into()))
        );
        assert_eq!(store.find_retry_token("other", "tok").await.unwrap(), None);
        // The same token again (say, a race of two retries) creates nothing.
        let again = RetryKey {
            request_hash: "h2".into(),
            ..key.clone()
        };
        let err = store
            .create_connection(
                &record("b", "vm1", "SHA256:y"),
                Some(&again),
                &made(AuditKind::Create),
            )
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            StoreError::RetryTokenUsed { ref connection_id, same_request: false } if connection_id == "a"
        ));
        assert!(store.get_connection("b").await.unwrap().is_none());
        // A conflict on the connection rolls the token back.
        let fresh = RetryKey {
            token: "tok2".into(),
            ..key
        };
        assert!(matches!(
            store
                .create_connection(
                    &record("c", "vm1", "SHA256:x"),
                    Some(&fresh),
                    &made(AuditKind::Create)
                )
                .await,
            Err(StoreError::Conflict { .. })
        ));
        assert_eq!(store.find_retry_token("t/u/f", "tok2").await.unwrap(), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_goes_through_deleting_to_deleted_to_gone() {
    for backend in TestStore::both().await {
        let store = backend.open().await;
        store
            .create_connection(
                &record("a", "vm1", "SHA256:x"),
                None,
                &made(AuditKind::Create),
            )
            .await
            .unwrap();
        let r = store
            .begin_delete("a", &made(AuditKind::Delete))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.lifecycle_state, LifecycleState::Deleting);
        // Not settled yet.
        assert_eq!(
            store.advance_lifecycle(60_000, 60_000).await.unwrap(),
            (0, 0)
        );
        assert_eq!(store.advance_lifecycle(0, 60_000).await.unwrap(), (1, 0));
        assert_eq!(
            store.connection_state("a").await.unwrap(),
            Some(LifecycleState::Deleted)
        );
        // A deleted connection is not deleted again, and is purged after retention.
        let r = store
            .begin_delete("a", &made(AuditKind::Delete))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.lifecycle_state, LifecycleState::Deleted);
        assert_eq!(store.advance_lifecycle(0, 0).await.unwrap(), (0, 1));
        assert!(store.get_connection("a").await.unwrap().is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_update_in_place() {
    for backend in TestStore::both().await {
        let store = backend.open().await;
        store
            .create_connection(
                &record("a", "vm1", "SHA256:x"),
                None,
                &made(AuditKind::Create),
            )
            .await
            .unwrap();
        let tags: FreeformTags = [("k".to_string(), "v".to_string())].into();
        let r = store
            .update_tags("a", Some(&tags), None, &made(AuditKind::Update))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.freeform_tags, tags);
        assert!(
            store
                .update_tags("zzz", Some(&tags), None, &made(AuditKind::Update))
                .await
                .unwrap()
                .is_none()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_backends_are_tested() {
    let names: Vec<_> = TestStore::both()
        .await
        .iter()
        .map(TestStore::name)
        .collect();
    if std::env::var_os("CI").is_some() {
        assert_eq!(names, ["sqlite", "postgres"]);
    }
    for backend in TestStore::both().await {
        let store = backend.open().await;
        assert_eq!(store.backend_name(), backend.name());
        store.ping().await.unwrap();
        assert!(store.missing_migrations().await.unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_tokens_are_bound_spent_once_and_expire() {
    let in_an_hour = (OffsetDateTime::now_utc().unix_timestamp() + 3600) * 1000;
    for backend in TestStore::both().await {
        let store = backend.open().await;
        let token = ConsoleToken {
            instance_id: "vm1".into(),
            protocol: ConsoleProtocol::Serial,
            single_use: true,
            expires_at_ms: in_an_hour,
        };
        store.create_console_token("h1", &token).await.unwrap();
        assert_eq!(
            store.console_token("h1").await.unwrap(),
            Some(token.clone())
        );
        assert_eq!(
            store.use_console_token("h1").await.unwrap(),
            Some(token.clone())
        );
        assert_eq!(
            store.use_console_token("h1").await.unwrap(),
            None,
            "{}",
            backend.name()
        );
        assert_eq!(store.console_token("h1").await.unwrap(), None);
        // Reusable tokens stay until they expire or are revoked.
        let reusable = ConsoleToken {
            single_use: false,
            protocol: ConsoleProtocol::Vnc,
            ..token.clone()
        };
        store.create_console_token("h2", &reusable).await.unwrap();
        assert!(store.use_console_token("h2").await.unwrap().is_some());
        assert!(store.use_console_token("h2").await.unwrap().is_some());
        assert_eq!(
            store
                .revoke_console_tokens("vm1", ConsoleProtocol::Vnc)
                .await
                .unwrap(),
            1
        );
        assert_eq!(store.console_token("h2").await.unwrap(), None);
        let expired = ConsoleToken {
            expires_at_ms: 1,
            ..token
        };
        store.create_console_token("h3", &expired).await.unwrap();
        assert_eq!(store.console_token("h3").await.unwrap(), None);
        assert_eq!(store.purge_console_tokens().await.unwrap(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_rows_round_trip_newest_last_and_purge() {
    use consolegate::audit::{AuditEvent, AuditKind};
    for backend in TestStore::both().await {
        let store = backend.open().await;
        for n in 0..3u64 {
            let mut e = AuditEvent::new(AuditKind::Detach);
            e.connection_id = Some("a".into());
            e.instance_id = Some("vm1".into());
            e.read_only = Some(n == 1);
            e.bytes_in = Some(n);
            e.bytes_out = Some(u64::from(u32::MAX) + n);
            e.detail = Some(format!("row {n}"));
            store.insert_audit(&e).await.unwrap();
        }
        store
            .insert_audit(&AuditEvent::new(AuditKind::Refused))
            .await
            .unwrap();
        let rows = store.list_audit(Some("a"), None, 2).await.unwrap();
        let details: Vec<_> = rows.iter().map(|r| r.detail.clone().unwrap()).collect();
        assert_eq!(details, ["row 1", "row 2"], "{}", backend.name());
        assert_eq!(rows[0].read_only, Some(true));
        assert_eq!(rows[1].bytes_out, Some(u64::from(u32::MAX) + 2));
        assert_eq!(store.list_audit(None, None, 10).await.unwrap().len(), 4);
        assert_eq!(store.purge_audit(-60_000).await.unwrap(), 4);
    }
}

/// Audit rows recorded at once (as sessions end together) share the audit
/// writer's transactions: every one lands, a session's second Detach row is
/// still dropped, and a row the store refuses (PostgreSQL takes no NUL in
/// text; SQLite does) does not take the rows committed with it down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_rows_recorded_together_all_land_and_a_refused_one_takes_none_down() {
    use consolegate::audit::AuditKind::{Attach, Detach};
    for backend in TestStore::both().await {
        let name = backend.name();
        let store = backend.open().await;
        let mut rows: Vec<AuditEvent> = (0..200u64)
            .map(|n| session_row(Attach, Some("c1"), None, "together", n))
            .collect();
        rows.push(session_row(Detach, Some("c1"), None, "together", 7));
        rows.push(session_row(Detach, Some("c1"), None, "together", 7));
        let mut refused = session_row(Attach, Some("c1"), None, "together", 1_000);
        refused.detail = Some("a user name with a \0 in it".into());
        rows.insert(100, refused);
        let writes = rows.into_iter().map(|row| {
            let store = store.clone();
            tokio::spawn(async move { store.record_audit(row).await })
        });
        for write in futures_util::future::join_all(writes).await {
            write.unwrap();
        }
        let stored = store.list_audit(None, None, 10_000).await.unwrap();
        let numbers = |kind| {
            let mut n: Vec<u64> = stored
                .iter()
                .filter(|e| e.event == kind)
                .filter_map(|e| e.session.as_ref().map(|s| s.number))
                .collect();
            n.sort_unstable();
            n
        };
        let mut attached: Vec<u64> = (0..200).collect();
        if name == "sqlite" {
            attached.push(1_000);
        }
        assert_eq!(numbers(Attach), attached, "{name}");
        assert_eq!(numbers(Detach), [7], "{name}");
    }
}

/// A row of console session `number` of process `incarnation` of node
/// `node` (`None`: a gateway alone), of connection `connection`.
fn session_row(
    kind: consolegate::audit::AuditKind,
    connection: Option<&str>,
    node: Option<&str>,
    incarnation: &str,
    number: u64,
) -> consolegate::audit::AuditEvent {
    let mut e = consolegate::audit::AuditEvent::new(kind);
    e.connection_id = connection.map(str::to_owned);
    e.instance_id = Some("vm1".into());
    e.fingerprint = connection.map(|c| format!("SHA256:{c}"));
    e.peer = Some("192.0.2.7:50000".into());
    e.read_only = Some(number.is_multiple_of(2));
    e.detail = Some("outer hop, read-write (input shared by all sessions)".into());
    e.session = Some(consolegate::audit::SessionRef {
        node_id: node.map(str::to_owned),
        incarnation: incarnation.into(),
        number,
    });
    e
}

/// The Detach rows of session (`incarnation`, `number`).
async fn detaches(
    store: &Store,
    incarnation: &str,
    number: u64,
) -> Vec<consolegate::audit::AuditEvent> {
    store
        .list_audit(None, None, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| {
            e.event == consolegate::audit::AuditKind::Detach
                && e.session
                    .as_ref()
                    .is_some_and(|s| s.incarnation == incarnation && s.number == number)
        })
        .collect()
}

/// A process killed with sessions attached wrote their Attach rows and no
/// Detach rows. The next process of the same gateway writes one Detach row
/// for each, saying so (CG-OPS-011), and for nothing else: not for a
/// session that ended, one of its own, one of another node, or a row from
/// before sessions were numbered. Running it again writes nothing, and a
/// session's own Detach row arriving late is not a second one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_rows_of_sessions_a_killed_process_left_open_are_written_once() {
    use consolegate::audit::{AuditEvent, AuditKind::*};
    for backend in TestStore::both().await {
        let name = backend.name();
        let store = backend.open().await;
        let rows = [
            // The killed process "dead": one session open, one ended, one of a console token.
            session_row(Attach, Some("c1"), None, "dead", 1),
            session_row(Attach, Some("c2"), None, "dead", 2),
            session_row(Force, Some("c2"), None, "dead", 2),
            session_row(Detach, Some("c2"), None, "dead", 2),
            {
                let mut e = session_row(Attach, None, None, "dead", 3);
                e.detail = Some(
                    "web, read-write (input shared by all sessions) (console token 0a1b2c)".into(),
                );
                e
            },
            // This process's own live session, and another node's.
            session_row(Attach, Some("c4"), None, "now", 1),
            session_row(Attach, Some("c5"), Some("gw2"), "gw2-live", 1),
        ];
        for row in &rows {
            store.insert_audit(row).await.unwrap();
        }
        // A row from before sessions were numbered names none.
        let mut legacy = AuditEvent::new(Attach);
        legacy.connection_id = Some("c6".into());
        store.insert_audit(&legacy).await.unwrap();

        assert_eq!(
            store.reconcile_detaches(None, "now").await.unwrap(),
            2,
            "{name}"
        );
        let written = detaches(&store, "dead", 1).await;
        assert_eq!(written.len(), 1, "{name}: {written:#?}");
        let d = &written[0];
        assert!(
            d.detail.as_deref().unwrap().starts_with("CG-OPS-011 "),
            "{name}: {d:?}"
        );
        assert_eq!(d.connection_id.as_deref(), Some("c1"));
        assert_eq!(d.fingerprint.as_deref(), Some("SHA256:c1"));
        assert_eq!(d.instance_id.as_deref(), Some("vm1"));
        assert_eq!(d.peer.as_deref(), Some("192.0.2.7:50000"));
        assert_eq!(d.read_only, Some(false));
        assert_eq!(
            (d.bytes_in, d.bytes_out, d.duration_ms),
            (None, None, None),
            "{name}: unknown, not zero"
        );
        assert_eq!(d.session, rows[0].session);
        let token = detaches(&store, "dead", 3).await;
        assert_eq!(token.len(), 1, "{name}");
        assert!(
            token[0]
                .detail
                .as_deref()
                .unwrap()
                .ends_with(" (console token 0a1b2c)"),
            "{name}: {token:?}"
        );
        // The ended session keeps its one Detach row, its own.
        let ended = detaches(&store, "dead", 2).await;
        assert_eq!(ended.len(), 1, "{name}");
        assert!(
            !ended[0]
                .detail
                .as_deref()
                .unwrap()
                .starts_with("CG-OPS-011"),
            "{name}"
        );
        // Not this process's live session, not another node's, not the legacy row.
        assert!(detaches(&store, "now", 1).await.is_empty(), "{name}");
        assert!(detaches(&store, "gw2-live", 1).await.is_empty(), "{name}");
        let all = store.list_audit(None, None, 10_000).await.unwrap();
        assert_eq!(
            all.iter().filter(|e| e.event == Detach).count(),
            3,
            "{name}"
        );

        // Again: nothing left to write.
        assert_eq!(
            store.reconcile_detaches(None, "now").await.unwrap(),
            0,
            "{name}"
        );
        // The "dead" process was not dead after all (a process fenced off
        // its node_id, ending late): its own Detach row is not a second one.
        store
            .insert_audit(&session_row(Detach, Some("c1"), None, "dead", 1))
            .await
            .unwrap();
        let ids = |rows: Vec<consolegate::audit::AuditEvent>| {
            rows.iter().map(|e| e.id).collect::<Vec<_>>()
        };
        assert_eq!(
            ids(detaches(&store, "dead", 1).await),
            ids(written),
            "{name}"
        );
        // Node gw2's next process writes its predecessor's, and no other.
        assert_eq!(
            store
                .reconcile_detaches(Some("gw2"), "gw2-next")
                .await
                .unwrap(),
            1,
            "{name}"
        );
        assert_eq!(detaches(&store, "gw2-live", 1).await.len(), 1, "{name}");
        assert_eq!(
            store
                .reconcile_detaches(Some("gw3"), "gw3-next")
                .await
                .unwrap(),
            0,
            "{name}"
        );
        // And a later process of the gateway alone writes this one's.
        assert_eq!(
            store.reconcile_detaches(None, "later").await.unwrap(),
            1,
            "{name}"
        );
        assert_eq!(detaches(&store, "now", 1).await.len(), 1, "{name}");
        // Two rows more than before the late Detach: gw2's and this one's.
        let store = backend.reopen(store).await;
        assert!(
            store.missing_migrations().await.unwrap().is_empty(),
            "{name}"
        );
        assert_eq!(
            store.list_audit(None, None, 10_000).await.unwrap().len(),
            all.len() + 2,
            "{name}"
        );
    }
}

/// The whole gateway: at start-up, before it answers, it writes the Detach
/// rows its killed predecessor left unwritten, and only its own: a gateway
/// alone on SQLite, and a node of a fleet on PostgreSQL, whose store holds
/// a live session of another node too. A clean stop then leaves nothing to
/// write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_at_start_writes_the_detach_rows_of_sessions_its_killed_predecessor_left_open() {
    use consolegate::audit::AuditKind::*;
    for backend in TestStore::both().await {
        let name = backend.name();
        let dir = tempfile::tempdir().unwrap();
        node_data_dir(&dir.path().join("data"), None);
        let (settings, node, other) = match &backend {
            TestStore::Sqlite(_) => (String::new(), None, Some("gw2")),
            TestStore::Postgres(url) => (
                format!(
                    "[store]\nurl = \"{url}\"\n[cluster]\nnode_id = \"gw1\"\nlisten = \"127.0.0.1:0\"\n\n"
                ),
                Some("gw1"),
                None,
            ),
        };
        let seed = match &backend {
            TestStore::Sqlite(_) => Store::open_sqlite(&dir.path().join("data/consolegate.db"))
                .await
                .unwrap(),
            TestStore::Postgres(url) => Store::open_postgres(url).await.unwrap(),
        };
        seed.insert_audit(&session_row(Attach, Some("c1"), node, "killed", 7))
            .await
            .unwrap();
        seed.insert_audit(&session_row(Attach, Some("c2"), other, "elsewhere", 1))
            .await
            .unwrap();
        seed.close().await;

        let instances = format!("{settings}{}", instance("vm1", "simulator", None));
        let gw = Gateway::start_with(dir, 0, "", &instances).await;
        // The API answers once the gateway serves, which is after.
        assert_eq!(http_get(gw.api_port, "/healthz").await.0, 200, "{name}");
        let store = backend_store(&backend, &gw).await;
        let written = detaches(&store, "killed", 7).await;
        assert_eq!(written.len(), 1, "{name}: {written:#?}");
        assert!(
            written[0]
                .detail
                .as_deref()
                .unwrap()
                .starts_with("CG-OPS-011 ")
        );
        assert_eq!(
            written[0].session.as_ref().unwrap().node_id.as_deref(),
            node,
            "{name}"
        );
        assert!(
            detaches(&store, "elsewhere", 1).await.is_empty(),
            "{name}: another node's session"
        );
        let before = store.list_audit(None, None, 10_000).await.unwrap().len();
        store.close().await;

        let dir = gw.stop().await;
        let gw = Gateway::start_with(dir, 0, "", &instances).await;
        assert_eq!(http_get(gw.api_port, "/healthz").await.0, 200, "{name}");
        let store = backend_store(&backend, &gw).await;
        assert_eq!(
            store.list_audit(None, None, 10_000).await.unwrap().len(),
            before,
            "{name}"
        );
        store.close().await;
        gw.stop().await;
    }
}

/// The store of `gw`, which runs on `backend`'s kind of store.
async fn backend_store(backend: &TestStore, gw: &Gateway) -> Store {
    match backend {
        TestStore::Sqlite(_) => Store::open_sqlite(&gw.path("data/consolegate.db"))
            .await
            .unwrap(),
        TestStore::Postgres(url) => Store::open_postgres(url).await.unwrap(),
    }
}

/// Two gateway nodes on one PostgreSQL database: what one writes, the
/// other sees, and the rules hold between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_sharing_a_postgres_store_keep_its_rules() {
    let Some(url) = postgres_database().await else {
        return;
    };
    let a = Store::open_postgres(&url).await.unwrap();
    let b = Store::open_postgres(&url).await.unwrap();
    // A retry of a create sent to node B after node A answered finds A's connection.
    let key = RetryKey {
        caller: "t/u/f".into(),
        token: "tok".into(),
        request_hash: "h".into(),
    };
    a.create_connection(
        &record("a", "vm1", "SHA256:x"),
        Some(&key),
        &made(AuditKind::Create),
    )
    .await
    .unwrap();
    assert!(matches!(
        b.create_connection(&record("b", "vm1", "SHA256:y"), Some(&key), &made(AuditKind::Create)).await,
        Err(StoreError::RetryTokenUsed { ref connection_id, same_request: true }) if connection_id == "a"
    ));
    // A console token issued on A is redeemable on B, once.
    let token = ConsoleToken {
        instance_id: "vm1".into(),
        protocol: ConsoleProtocol::Serial,
        single_use: true,
        expires_at_ms: (OffsetDateTime::now_utc().unix_timestamp() + 600) * 1000,
    };
    a.create_console_token("hash", &token).await.unwrap();
    assert_eq!(b.use_console_token("hash").await.unwrap(), Some(token));
    assert_eq!(a.use_console_token("hash").await.unwrap(), None);
    // One live connection per instance and key, with creates racing on
    // both nodes: exactly one wins.
    let mut racing = Vec::new();
    for n in 0..16 {
        let node = if n % 2 == 0 { a.clone() } else { b.clone() };
        racing.push(tokio::spawn(async move {
            node.create_connection(
                &record(&format!("r{n}"), "vm2", "SHA256:race"),
                None,
                &made(AuditKind::Create),
            )
            .await
        }));
    }
    let mut won = 0;
    for task in racing {
        match task.await.unwrap() {
            Ok(()) => won += 1,
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(won, 1);
    // Instance host keys: both nodes present the same key.
    let ka = a.instance_host_key("vm3").await.unwrap();
    let kb = b.instance_host_key("vm3").await.unwrap();
    assert_eq!(ka.public_key().key_data(), kb.public_key().key_data());
}

/// The whole gateway on PostgreSQL: the CLI creates a connection, the real
/// ssh reaches the console, doctor checks the store, and a delete through
/// the CLI ends the live session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_serves_consoles_from_postgres() {
    let Some(url) = postgres_database().await else {
        return;
    };
    let gw = Gateway::start_with(
        tempfile::tempdir().unwrap(),
        0,
        "",
        &format!(
            "[store]\nurl = \"{url}\"\n\n{}",
            instance("vm1", "simulator", None)
        ),
    )
    .await;
    let key = Key::ed25519(gw.dir.path(), "user");
    let conn = gw.create("vm1", &key).await;
    assert!(
        !gw.path("data/consolegate.db").exists(),
        "an SQLite file was created beside PostgreSQL"
    );
    let mut term = Terminal::spawn(&conn.ssh_argv(&key)).await;
    term.expect("vm1 login: ").await;

    let out = gw.cli(&["doctor", "--json", "--instance", "vm1"]).await;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let store = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "store")
        .unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(store["outcome"], "ok", "{store}");
    assert!(
        store["message"]
            .as_str()
            .unwrap()
            .starts_with("PostgreSQL postgres://consolegate@127.0.0.1:"),
        "{store}"
    );

    let out = gw.cli(&["connection", "delete", &conn.id]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    term.expect("has been deleted").await;
    term.wait().await;
    let rows = gw.audit(&conn.id).await;
    assert!(rows.iter().any(|r| r["event"] == "detach"), "{rows:#?}");
    gw.stop().await;
}

fn registration<'a>(node_id: &'a str, incarnation: &'a str) -> NodeRegistration<'a> {
    NodeRegistration {
        node_id,
        incarnation,
        advertise: None,
        link_key: None,
        version: "0.1.0",
        stale_after_ms: 60_000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_register_beat_and_leave() {
    for backend in TestStore::both().await {
        let store = backend.open().await;
        assert!(
            !store.node_heartbeat("gw1", "i1").await.unwrap(),
            "unregistered"
        );
        let gw1 = NodeRegistration {
            advertise: Some("10.0.0.1:7022"),
            link_key: Some("ssh-ed25519 AAAA"),
            ..registration("gw1", "i1")
        };
        assert!(store.register_node(&gw1).await.unwrap());
        assert!(
            store
                .register_node(&registration("gw2", "i2"))
                .await
                .unwrap()
        );
        assert!(store.node_heartbeat("gw1", "i1").await.unwrap());
        store.node_left("gw2", "i2").await.unwrap();
        // A node that left beats no more until it registers again.
        assert!(!store.node_heartbeat("gw2", "i2").await.unwrap());
        let nodes = store.list_nodes().await.unwrap();
        assert_eq!(nodes.len(), 2, "{}", backend.name());
        assert_eq!(nodes[0].advertise.as_deref(), Some("10.0.0.1:7022"));
        assert_eq!(nodes[0].link_key.as_deref(), Some("ssh-ed25519 AAAA"));
        assert!(nodes[0].left_at_ms.is_none());
        assert!(nodes[1].left_at_ms.is_some());
        let gw2 = NodeRegistration {
            version: "0.2.0",
            ..registration("gw2", "i3")
        };
        assert!(store.register_node(&gw2).await.unwrap());
        let gw2 = store.list_nodes().await.unwrap().remove(1);
        assert_eq!((gw2.version.as_str(), gw2.left_at_ms), ("0.2.0", None));
    }
}

/// Two processes under one node_id: the second cannot register while the
/// first beats; once the first has been quiet for the timeout it may, and
/// the first then learns at its next heartbeat that it lost the name (and
/// its leaving does not mark the new process as left).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_id_is_held_by_one_process_at_a_time() {
    for backend in TestStore::both().await {
        let store = backend.open().await;
        assert!(
            store
                .register_node(&registration("gw1", "first"))
                .await
                .unwrap()
        );
        assert!(
            !store
                .register_node(&registration("gw1", "second"))
                .await
                .unwrap(),
            "{}: a second process took a live node's name",
            backend.name()
        );
        // The same process may register again (its row went away, say).
        assert!(
            store
                .register_node(&registration("gw1", "first"))
                .await
                .unwrap()
        );
        // Quiet for longer than the timeout: the name is free.
        let quick = NodeRegistration {
            stale_after_ms: 0,
            ..registration("gw1", "second")
        };
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        assert!(store.register_node(&quick).await.unwrap());
        assert!(!store.node_heartbeat("gw1", "first").await.unwrap());
        assert!(store.node_heartbeat("gw1", "second").await.unwrap());
        store.node_left("gw1", "first").await.unwrap();
        assert!(store.list_nodes().await.unwrap()[0].left_at_ms.is_none());
    }
}

/// Two gateways on one PostgreSQL database list each other, alive; one
/// stopping cleanly shows as left, and rejoins under its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_lists_the_nodes_of_a_fleet() {
    let Some(url) = postgres_database().await else {
        return;
    };
    let node = |id: &str| {
        format!(
            "[store]\nurl = \"{url}\"\n\
             [cluster]\nnode_id = \"{id}\"\nlisten = \"127.0.0.1:0\"\n\
             heartbeat_secs = 1\nnode_timeout_secs = 3\n\n{}",
            instance("vm1", "simulator", None)
        )
    };
    let a = Gateway::start_with(tempfile::tempdir().unwrap(), 0, "", &node("gw-a")).await;
    let b = Gateway::start_with(tempfile::tempdir().unwrap(), 0, "", &node("gw-b")).await;
    let status = |gw_config: std::path::PathBuf| async move {
        cluster_status(&gw_config)
            .await
            .iter()
            .map(|n| {
                (
                    n["nodeId"].as_str().unwrap().to_owned(),
                    n["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect::<Vec<_>>()
    };
    let alive = |id: &str| (id.to_owned(), "alive".to_owned());
    let left = |id: &str| (id.to_owned(), "left".to_owned());
    // Either node's config sees the whole fleet.
    assert_eq!(
        status(a.config_path.clone()).await,
        [alive("gw-a"), alive("gw-b")]
    );
    assert_eq!(
        status(b.config_path.clone()).await,
        [alive("gw-a"), alive("gw-b")]
    );
    let table = run_cli(&a.config_path, &["cluster", "status"]).await;
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.starts_with("NODE "), "{table}");
    assert!(table.contains("CONSOLES"), "{table}");
    assert!(table.contains("127.0.0.1:"), "{table}");

    let b_config = b.config_path.clone();
    let b_dir = b.stop().await;
    assert_eq!(
        status(b_config.clone()).await,
        [alive("gw-a"), left("gw-b")]
    );
    // It rejoins under its name.
    let b = Gateway::start_in(b_dir, 0, &node("gw-b")).await;
    assert_eq!(
        status(b_config.clone()).await,
        [alive("gw-a"), alive("gw-b")]
    );
    // A node that dies without a word is missing once its heartbeats stop
    // for longer than the node timeout.
    let _b_dir = b.crash().await;
    let missing = (String::from("gw-b"), String::from("missing"));
    tokio::time::timeout(GUARD, async {
        while status(b_config.clone()).await != [alive("gw-a"), missing.clone()] {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    })
    .await
    .expect("the crashed node never showed as missing");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_lease_has_one_owner_at_a_time() {
    const TTL: i64 = 60_000;
    for backend in TestStore::both().await {
        let store = backend.open().await;
        let a = store
            .acquire_lease("vm1", "gw-a", TTL)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (a.owner.as_str(), a.epoch),
            ("gw-a", 1),
            "{}",
            backend.name()
        );
        // Held: another node gets nothing, and nothing changes.
        assert_eq!(store.acquire_lease("vm1", "gw-b", TTL).await.unwrap(), None);
        assert_eq!(store.lease_of("vm1").await.unwrap().unwrap().owner, "gw-a");
        assert!(store.renew_lease("vm1", "gw-a", 1, TTL).await.unwrap());
        assert!(!store.renew_lease("vm1", "gw-b", 1, TTL).await.unwrap());
        // Released: the next node takes it at once, in a new epoch; the old
        // owner's renewal then changes nothing.
        store.release_lease("vm1", "gw-a", 1).await.unwrap();
        assert_eq!(store.lease_of("vm1").await.unwrap(), None);
        let b = store
            .acquire_lease("vm1", "gw-b", TTL)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((b.owner.as_str(), b.epoch), ("gw-b", 2));
        assert!(!store.renew_lease("vm1", "gw-a", 1, TTL).await.unwrap());
        // A release naming an old epoch does not free the new owner's lease.
        store.release_lease("vm1", "gw-a", 1).await.unwrap();
        assert_eq!(store.lease_of("vm1").await.unwrap().unwrap().owner, "gw-b");
        // Lapsed (a lease of no time at all): it cannot be renewed, and
        // another node takes it.
        store
            .acquire_lease("vm2", "gw-b", 0)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(store.lease_of("vm2").await.unwrap(), None);
        assert!(!store.renew_lease("vm2", "gw-b", 1, TTL).await.unwrap());
        let a = store
            .acquire_lease("vm2", "gw-a", TTL)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((a.owner.as_str(), a.epoch), ("gw-a", 2));
    }
}

/// A node renews all its leases in one statement; the answer leaves out
/// those it lost, which it must let go of.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_renews_all_its_leases_at_once_and_learns_which_it_lost() {
    const TTL: i64 = 60_000;
    for backend in TestStore::both().await {
        let store = backend.open().await;
        for vm in ["vm1", "vm2", "vm3"] {
            store.acquire_lease(vm, "gw-a", TTL).await.unwrap().unwrap();
        }
        store
            .acquire_lease("vm4", "gw-b", TTL)
            .await
            .unwrap()
            .unwrap();
        // vm2 lapses and changes hands; vm3 is released.
        store
            .acquire_lease("vm2", "gw-a", 0)
            .await
            .unwrap()
            .unwrap();
        store
            .acquire_lease("vm2", "gw-b", TTL)
            .await
            .unwrap()
            .unwrap();
        store.release_lease("vm3", "gw-a", 1).await.unwrap();
        let held: Vec<String> = store
            .renew_leases("gw-a", TTL)
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.instance_id)
            .collect();
        assert_eq!(held, ["vm1"], "{}", backend.name());
        let all: Vec<(String, String)> = store
            .list_leases()
            .await
            .unwrap()
            .into_iter()
            .map(|l| (l.instance_id, l.owner))
            .collect();
        let expected = [("vm1", "gw-a"), ("vm2", "gw-b"), ("vm4", "gw-b")]
            .map(|(i, o)| (i.to_owned(), o.to_owned()));
        assert_eq!(all, expected, "{}", backend.name());
    }
}

/// Eight nodes start at once for one console, a hundred times over: each
/// time exactly one holds the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_race_has_exactly_one_winner() {
    for backend in TestStore::both().await {
        let mut nodes = Vec::new();
        for _ in 0..8 {
            nodes.push(backend.open().await);
        }
        for round in 0..100 {
            let instance = format!("race-{round}");
            let mut racing = Vec::new();
            for (n, node) in nodes.iter().enumerate() {
                let (node, instance) = (node.clone(), instance.clone());
                racing.push(tokio::spawn(async move {
                    node.acquire_lease(&instance, &format!("gw-{n}"), 60_000)
                        .await
                        .unwrap()
                }));
            }
            let mut owners = Vec::new();
            for task in racing {
                owners.extend(task.await.unwrap());
            }
            assert_eq!(
                owners.len(),
                1,
                "{} round {round}: {owners:?}",
                backend.name()
            );
            let held = nodes[0].lease_of(&instance).await.unwrap().unwrap();
            assert_eq!(held, owners[0]);
        }
    }
}

/// A delete through one node ends a session on another at once (NOTIFY),
/// not at its next re-check, which here is ten minutes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_on_one_node_ends_sessions_on_another_at_once() {
    let Some(url) = postgres_database().await else {
        return;
    };
    let node = |id: &str| {
        format!(
            "[store]\nurl = \"{url}\"\n[cluster]\nnode_id = \"{id}\"\nlisten = \"127.0.0.1:0\"\n\n{}",
            instance("vm1", "simulator", None)
        )
    };
    let slow = "revalidate_interval_secs = 600\n";
    let a = Gateway::start_with(tempfile::tempdir().unwrap(), 0, slow, &node("gw-a")).await;
    // Nodes behind one name present one host key: B gets A's.
    let b_dir = tempfile::tempdir().unwrap();
    node_data_dir(&b_dir.path().join("data"), Some(&a.path("data")));
    let b = Gateway::start_with(b_dir, 0, slow, &node("gw-b")).await;
    // Created through node A; used through node B.
    let key = Key::ed25519(b.dir.path(), "user");
    let conn = a.create("vm1", &key).await;
    // The same string, and the same known_hosts lines, with B's port.
    let (a_port, b_port) = (a.port.to_string(), b.port.to_string());
    let known_b = b.path("known_hosts_b");
    std::fs::write(
        &known_b,
        std::fs::read_to_string(&conn.known_hosts)
            .unwrap()
            .replace(&format!("]:{a_port} "), &format!("]:{b_port} ")),
    )
    .unwrap();
    let known_a = conn.known_hosts.display().to_string();
    let through_b = conn
        .ssh_argv(&key)
        .iter()
        .map(|arg| {
            arg.replace(&format!(" -p {a_port} "), &format!(" -p {b_port} "))
                .replace(&known_a, &known_b.display().to_string())
        })
        .collect::<Vec<_>>();
    assert_ne!(
        through_b,
        conn.ssh_argv(&key),
        "the string names node A's port"
    );
    let mut term = Terminal::spawn(&through_b).await;
    term.expect("vm1 login: ").await;
    let started = std::time::Instant::now();
    let out = a.cli(&["connection", "delete", &conn.id]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    term.expect("has been deleted").await;
    term.wait().await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "ended by a re-check, not by the notification"
    );
    b.stop().await;
    a.stop().await;
}

/// A PostgreSQL server that does not answer: a clear error naming the
/// server, never its password, and no gateway half started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_postgres_is_a_clear_error_without_the_password() {
    let port = free_port().await;
    let url = format!("postgres://cg:s3cret@127.0.0.1:{port}/consolegate");
    let e = Store::open_postgres(&url).await.unwrap_err().to_string();
    assert!(
        e.contains(&format!(
            "cannot open the database postgres://cg:***@127.0.0.1:{port}/"
        )),
        "{e}"
    );
    assert!(!e.contains("s3cret"), "{e}");
    // The gateway refuses to start on it, saying the same.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nurl = \"{url}\"\n\n{}",
            instance("vm1", "simulator", None)
        ),
    )
    .unwrap();
    let out = run_cli(&config, &["cluster", "status"]).await;
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("postgres://cg:***@127.0.0.1"), "{said}");
    assert!(!said.contains("s3cret"), "{said}");
}
