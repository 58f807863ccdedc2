//! The OpenSSH matrix: what OpenSSH's regress suite asks of an sshd, asked
//! of the gateway's two hops (the outer hop, and the nested inner hop the
//! connection string reaches through its `ProxyCommand`) with the real
//! `/usr/bin/ssh`, real sockets and a real gateway.
//!
//! - Algorithms (`try-ciphers.sh`, `kextype.sh`, the host-key half of
//!   `keytype.sh`): each hop's offer is read from its KEXINIT (`ssh -vv`
//!   prints the server's proposal) and must be the offer written down
//!   here, so that changing it is a deliberate change to this file. Then
//!   every cipher, MAC, key exchange and host-key algorithm the client
//!   knows (`ssh -Q`) is forced on the hops: where a hop offers it, a
//!   console session runs over it (forced on both hops at once where both
//!   offer it); where a hop does not, its handshake fails with "no
//!   matching …".
//! - Client keys (`keytype.sh`): Ed25519, ECDSA P-256/384/521 and RSA with
//!   rsa-sha2-256 and rsa-sha2-512 each log in on both hops; SHA-1
//!   `ssh-rsa` is refused (the stock client will not even try it against
//!   the gateway's `server-sig-algs`, so a client that signs with SHA-1
//!   regardless, russh's, is refused on both hops too); a key that is not
//!   the connection's is refused on either hop; DSA cannot be registered.
//! - Compression (`-C`): `zlib@openssh.com` on both hops, never plain
//!   `zlib` (which would inflate before authentication).
//! - Forwarding (`forward-control.sh`, `dynamic-forward.sh`,
//!   `forwarding.sh`, `agent.sh`): `-L` reaches the instance's VNC display
//!   and nothing else (another instance, another port, another host, the
//!   gateway's own SSH, API and port 22, a unix socket); `-R` (TCP and
//!   streamlocal) is refused; `-D` leads only where `-L` may; agent
//!   forwarding opens no agent channel, and X11 requests are refused.
//!   Listeners on the forbidden targets must see no connection, and a
//!   user's session keeps working throughout.
//! - Exec and subsystem requests (`ssh host cmd`, `ssh -s host sftp`, the
//!   real `sftp`) are refused on both hops and attach nothing.
//! - Multiplexing (`multiplex.sh`): one `ControlMaster`, consoles on both
//!   hops through it, sharing the console and one TCP connection, and
//!   `-O check` / `-O exit`.
//! - Login grace time (`login-timeout.sh`), on a `consolegate serve` with
//!   `handshake_timeout_secs = 3` and `max_startups = 1`: a client that
//!   sends its identification and stalls, and the real client left at its
//!   passphrase prompt on either hop, are cut at the grace time (the real
//!   client is told CG-AUTH-007), and the next client gets in.
//!
//! The cases of a test run a few at a time, each with `BatchMode` and the
//! shortest console session there is (the greeting, then end of input).

mod common;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::served::{Served, ServedConfig};
use common::*;
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener};

/// The first words of every console session on vm1.
const BANNER: &str = "serial console of vm1";

/// How many ssh cases of one test run at once.
const AT_ONCE: usize = 3;

/// The key exchanges each hop offers, pseudo-algorithms included.
const KEX_OFFER: &[&str] = &[
    "mlkem768x25519-sha256",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "diffie-hellman-group18-sha512",
    "diffie-hellman-group17-sha512",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group15-sha512",
    "ext-info-s",
    "kex-strict-s-v00@openssh.com",
];
/// Names in a KEXINIT that are signals, not key exchanges.
const KEX_SIGNALS: &[&str] = &["ext-info-s", "kex-strict-s-v00@openssh.com"];
/// The outer hop's host keys: the gateway's Ed25519 and RSA keys, RSA
/// with SHA-2 signatures only.
const OUTER_HOST_KEY_OFFER: &[&str] = &["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"];
/// The inner hop's host key: the instance's own Ed25519 key.
const INNER_HOST_KEY_OFFER: &[&str] = &["ssh-ed25519"];
const CIPHER_OFFER: &[&str] = &[
    "chacha20-poly1305@openssh.com",
    "aes256-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
];
const MAC_OFFER: &[&str] = &[
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256-etm@openssh.com",
];
const COMPRESSION_OFFER: &[&str] = &["none", "zlib@openssh.com"];

fn one_vm() -> String {
    instance("vm1", "simulator", None)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// Runs `jobs` [`AT_ONCE`] at a time; the failures they report.
async fn failures_of<F>(jobs: impl IntoIterator<Item = F>) -> Vec<String>
where
    F: Future<Output = Result<(), String>>,
{
    futures_util::stream::iter(jobs)
        .buffer_unordered(AT_ONCE)
        .filter_map(|result| async move { result.err() })
        .collect()
        .await
}

fn assert_none_failed(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// A hop of a console connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop {
    Outer,
    Inner,
}

/// A connection string's argv with `outer` added to the `ProxyCommand`'s
/// ssh and `inner` to the main one.
fn per_hop(mut argv: Vec<String>, outer: &[String], inner: &[String]) -> Vec<String> {
    for arg in argv.iter_mut() {
        if let Some(rest) = arg.strip_prefix("ProxyCommand=ssh ") {
            *arg = format!("ProxyCommand=ssh {} {rest}", outer.join(" "));
        }
    }
    argv.splice(1..1, inner.iter().cloned());
    argv
}

/// The connection string with the key and known-hosts options on both
/// hops, and `outer` and `inner` added as [`per_hop`].
fn nested(conn: &Connection, key: &Key, outer: &[String], inner: &[String]) -> Vec<String> {
    per_hop(conn.ssh_argv(key), outer, inner)
}

/// ssh straight to the outer hop as the connection, with `opts`.
fn outer(gw_port: u16, conn: &Connection, key: &Key, opts: &[String]) -> Vec<String> {
    let mut argv = vec!["ssh".to_owned()];
    argv.extend(client_options(key, &conn.known_hosts));
    argv.extend(opts.iter().cloned());
    argv.extend([
        "-p".to_owned(),
        gw_port.to_string(),
        format!("{}@127.0.0.1", conn.id),
    ]);
    argv
}

/// Options that make one hop's ssh log at `level` (`-v`, `-vv`) to `file`.
fn logging(level: &str, file: &Path) -> Vec<String> {
    vec![
        level.to_owned(),
        "-E".to_owned(),
        file.display().to_string(),
    ]
}

fn read_log(file: &Path) -> String {
    std::fs::read_to_string(file).unwrap_or_default()
}

/// Whether a log has the line `line` (ssh's logs end lines with CRLF).
fn has_line(log: &str, line: &str) -> bool {
    log.lines().any(|l| l.trim_end() == line)
}

/// A directory of its own for one case's files.
fn case_dir(gw: &Gateway, name: &str) -> PathBuf {
    let dir = gw.path(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs ssh (argv[0] = "ssh") without a terminal, with `env` added.
async fn ssh_with_env(argv: &[String], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new("/usr/bin/ssh");
    cmd.args(&argv[1..]).stdin(Stdio::null()).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::time::timeout(GUARD, cmd.output())
        .await
        .expect("ssh hung")
        .expect("cannot run ssh")
}

/// ssh running in the background, its stderr kept.
fn spawn_ssh(argv: &[String]) -> tokio::process::Child {
    tokio::process::Command::new("/usr/bin/ssh")
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ssh")
}

/// Kills a background ssh; what it said.
async fn stop_ssh(mut ssh: tokio::process::Child) -> String {
    let _ = ssh.kill().await;
    let out = ssh.wait_with_output().await.unwrap();
    stderr(&out)
}

// ---------------------------------------------------------------------
// Algorithms
// ---------------------------------------------------------------------

/// One hop's offer: the server's KEXINIT proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Proposal {
    kex: Vec<String>,
    host_keys: Vec<String>,
    ciphers: Vec<String>,
    macs: Vec<String>,
    compression: Vec<String>,
}

impl Proposal {
    /// The server's proposal in an `ssh -vv` log.
    fn from_log(log: &str) -> Proposal {
        let Some((_, server)) = log.split_once("peer server KEXINIT proposal") else {
            panic!("no server KEXINIT in the log:\n{log}");
        };
        let list = |name: &str| -> Vec<String> {
            let prefix = format!("debug2: {name}: ");
            server
                .lines()
                .find_map(|l| {
                    l.trim_end()
                        .strip_prefix(prefix.as_str())
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| panic!("no {name:?} in the server's KEXINIT:\n{server}"))
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        for what in ["ciphers", "MACs", "compression"] {
            assert_eq!(
                list(&format!("{what} ctos")),
                list(&format!("{what} stoc")),
                "the {what} offered differ by direction"
            );
        }
        Proposal {
            kex: list("KEX algorithms"),
            host_keys: list("host key algorithms"),
            ciphers: list("ciphers ctos"),
            macs: list("MACs ctos"),
            compression: list("compression ctos"),
        }
    }
}

/// A gateway, a connection, and what each hop offers.
struct Offered {
    gw: Gateway,
    key: Key,
    conn: Connection,
    outer: Proposal,
    inner: Proposal,
}

impl Offered {
    /// Starts a gateway and reads both hops' KEXINIT from a console
    /// session of the real client.
    async fn start() -> Offered {
        let gw = Gateway::start(&one_vm()).await;
        let key = Key::ed25519(gw.dir.path(), "user");
        let conn = gw.create("vm1", &key).await;
        let dir = case_dir(&gw, "offer");
        let (outer_log, inner_log) = (dir.join("outer.log"), dir.join("inner.log"));
        let argv = nested(
            &conn,
            &key,
            &logging("-vv", &outer_log),
            &logging("-vv", &inner_log),
        );
        let out = ssh_batch(&argv).await;
        assert!(
            stdout(&out).contains(BANNER),
            "no console session with the default algorithms: {}\n{}",
            stderr(&out),
            read_log(&inner_log)
        );
        Offered {
            outer: Proposal::from_log(&read_log(&outer_log)),
            inner: Proposal::from_log(&read_log(&inner_log)),
            gw,
            key,
            conn,
        }
    }

    fn offer(&self, hop: Hop) -> &Proposal {
        match hop {
            Hop::Outer => &self.outer,
            Hop::Inner => &self.inner,
        }
    }
}

/// A family of algorithms, as the client names and forces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Cipher,
    Mac,
    Kex,
    HostKey,
}

impl Family {
    /// The client option that forces one.
    fn option(self) -> &'static str {
        match self {
            Family::Cipher => "Ciphers",
            Family::Mac => "MACs",
            Family::Kex => "KexAlgorithms",
            Family::HostKey => "HostKeyAlgorithms",
        }
    }

    /// What `ssh -Q` lists them under.
    fn query(self) -> &'static str {
        match self {
            Family::Cipher => "cipher",
            Family::Mac => "mac",
            Family::Kex => "kex",
            Family::HostKey => "HostKeyAlgorithms",
        }
    }

    /// What the client says when the server offers none of its choice.
    fn no_match(self) -> &'static str {
        match self {
            Family::Cipher => "no matching cipher found",
            Family::Mac => "no matching MAC found",
            Family::Kex => "no matching key exchange method found",
            Family::HostKey => "no matching host key type found",
        }
    }

    fn offered(self, p: &Proposal) -> &[String] {
        match self {
            Family::Cipher => &p.ciphers,
            Family::Mac => &p.macs,
            Family::Kex => &p.kex,
            Family::HostKey => &p.host_keys,
        }
    }

    /// The offer written down in this file.
    fn expected(self, hop: Hop) -> &'static [&'static str] {
        match (self, hop) {
            (Family::Cipher, _) => CIPHER_OFFER,
            (Family::Mac, _) => MAC_OFFER,
            (Family::Kex, _) => KEX_OFFER,
            (Family::HostKey, Hop::Outer) => OUTER_HOST_KEY_OFFER,
            (Family::HostKey, Hop::Inner) => INNER_HOST_KEY_OFFER,
        }
    }

    /// Whether a hop's `ssh -v` log shows `alg` in use.
    fn negotiated(self, log: &str, alg: &str) -> bool {
        let both_ways = |matches: &dyn Fn(&str) -> bool| {
            ["client->server", "server->client"].iter().all(|dir| {
                let prefix = format!("debug1: kex: {dir} cipher: ");
                log.lines()
                    .filter_map(|l| l.trim_end().strip_prefix(prefix.as_str()))
                    .any(matches)
            })
        };
        match self {
            Family::Kex => has_line(log, &format!("debug1: kex: algorithm: {alg}")),
            Family::HostKey => has_line(log, &format!("debug1: kex: host key algorithm: {alg}")),
            Family::Cipher => both_ways(&|rest| rest.starts_with(&format!("{alg} MAC: "))),
            Family::Mac => both_ways(&|rest| rest.contains(&format!(" MAC: {alg} compression: "))),
        }
    }
}

/// The algorithms of a family this client knows.
fn client_knows(query: &str) -> Vec<String> {
    let out = std::process::Command::new("/usr/bin/ssh")
        .args(["-Q", query])
        .output()
        .expect("ssh -Q");
    assert!(out.status.success(), "ssh -Q {query}: {}", stderr(&out));
    let known: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert!(!known.is_empty(), "ssh -Q {query} listed nothing");
    known
}

/// One algorithm forced on some hops, and whether it must work there.
#[derive(Debug)]
struct AlgorithmCase {
    alg: String,
    forced: Vec<Hop>,
    works: bool,
}

/// The cases for every algorithm the client knows: one session with it
/// forced on both hops where both offer it; otherwise one per hop, which
/// works exactly where that hop offers it.
fn plan(family: Family, offered: &Offered, client: &[String]) -> Vec<AlgorithmCase> {
    let mut cases = Vec::new();
    for alg in client {
        let on = |hop| family.offered(offered.offer(hop)).contains(alg);
        if on(Hop::Outer) && on(Hop::Inner) {
            cases.push(AlgorithmCase {
                alg: alg.clone(),
                forced: vec![Hop::Outer, Hop::Inner],
                works: true,
            });
        } else {
            for hop in [Hop::Outer, Hop::Inner] {
                cases.push(AlgorithmCase {
                    alg: alg.clone(),
                    forced: vec![hop],
                    works: on(hop),
                });
            }
        }
    }
    cases
}

/// Runs one case: a console session with the algorithm forced on its
/// hops (and, for a MAC, a cipher that needs one).
async fn run_algorithm_case(
    offered: &Offered,
    family: Family,
    case: &AlgorithmCase,
    n: usize,
    plain_cipher: &str,
) -> Result<(), String> {
    let dir = case_dir(&offered.gw, &format!("{}-{n}", family.query()));
    let log = |hop: Hop| dir.join(format!("{hop:?}.log"));
    let opts = |hop: Hop| {
        let mut opts = logging("-v", &log(hop));
        if case.forced.contains(&hop) {
            opts.extend(["-o".to_owned(), format!("{}={}", family.option(), case.alg)]);
            if family == Family::Mac {
                // With an AEAD cipher no MAC is negotiated at all.
                opts.extend(["-o".to_owned(), format!("Ciphers={plain_cipher}")]);
            }
        }
        opts
    };
    let argv = nested(
        &offered.conn,
        &offered.key,
        &opts(Hop::Outer),
        &opts(Hop::Inner),
    );
    let out = ssh_batch(&argv).await;
    let what = format!(
        "{}={} forced on {:?}",
        family.option(),
        case.alg,
        case.forced
    );
    let logs = || {
        format!(
            "stderr: {}\nouter hop's log:\n{}\ninner hop's log:\n{}",
            stderr(&out),
            read_log(&log(Hop::Outer)),
            read_log(&log(Hop::Inner))
        )
    };
    let console = stdout(&out).contains(BANNER);
    if case.works {
        if !console || !out.status.success() {
            return Err(format!(
                "{what}: offered, but no console session\n{}",
                logs()
            ));
        }
        for hop in &case.forced {
            if !family.negotiated(&read_log(&log(*hop)), &case.alg) {
                return Err(format!("{what}: not in use on the {hop:?} hop\n{}", logs()));
            }
        }
    } else {
        if console || out.status.success() {
            return Err(format!("{what}: not offered, but accepted\n{}", logs()));
        }
        let hop_log = read_log(&log(case.forced[0]));
        if !hop_log.contains("Unable to negotiate") || !hop_log.contains(family.no_match()) {
            return Err(format!(
                "{what}: refused, but not with {:?}\n{}",
                family.no_match(),
                logs()
            ));
        }
    }
    Ok(())
}

/// The whole matrix of one family: the offer is the one written down, and
/// every algorithm the client knows works where offered and fails where
/// not, on each hop.
async fn algorithm_matrix(family: Family) {
    let offered = Offered::start().await;
    for hop in [Hop::Outer, Hop::Inner] {
        assert_eq!(
            family.offered(offered.offer(hop)),
            strings(family.expected(hop)),
            "the {hop:?} hop's {} offer changed",
            family.option()
        );
    }
    let client = client_knows(family.query());
    let aead = client_knows("cipher-auth");
    let plain_cipher = offered
        .outer
        .ciphers
        .iter()
        .find(|c| !aead.contains(c))
        .expect("no cipher without its own MAC is offered")
        .clone();
    let cases = plan(family, &offered, &client);
    assert!(
        cases.iter().any(|c| c.works),
        "this client knows none of the {} offered",
        family.option()
    );
    let failures = failures_of(
        cases
            .iter()
            .enumerate()
            .map(|(n, case)| run_algorithm_case(&offered, family, case, n, &plain_cipher)),
    )
    .await;
    // What the gateway offers that this client cannot try (newer
    // algorithms than it knows): said, not tested.
    let untried: Vec<&String> = [Hop::Outer, Hop::Inner]
        .iter()
        .flat_map(|hop| family.offered(offered.offer(*hop)))
        .filter(|alg| !client.contains(alg) && !KEX_SIGNALS.contains(&alg.as_str()))
        .collect();
    if !untried.is_empty() {
        eprintln!(
            "{}: offered, unknown to this ssh, not tried: {untried:?}",
            family.option()
        );
    }
    assert_none_failed(&failures);
    offered.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cipher_works_on_both_hops_where_offered_and_fails_where_not() {
    algorithm_matrix(Family::Cipher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mac_works_on_both_hops_where_offered_and_fails_where_not() {
    algorithm_matrix(Family::Mac).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_exchange_works_on_both_hops_where_offered_and_fails_where_not() {
    algorithm_matrix(Family::Kex).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_host_key_algorithm_works_on_the_hops_that_offer_it_and_fails_elsewhere() {
    algorithm_matrix(Family::HostKey).await;
}

/// `-C` on both hops: `zlib@openssh.com`, in use on each; the offer has no
/// plain `zlib` (compression before authentication).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_works_on_both_hops_and_only_after_authentication() {
    let offered = Offered::start().await;
    for hop in [Hop::Outer, Hop::Inner] {
        assert_eq!(
            offered.offer(hop).compression,
            strings(COMPRESSION_OFFER),
            "the {hop:?} hop's compression offer changed"
        );
    }
    let dir = case_dir(&offered.gw, "compression");
    let log = |hop: Hop| dir.join(format!("{hop:?}.log"));
    let opts = |hop: Hop| {
        let mut opts = logging("-v", &log(hop));
        opts.push("-C".to_owned());
        opts
    };
    let argv = nested(
        &offered.conn,
        &offered.key,
        &opts(Hop::Outer),
        &opts(Hop::Inner),
    );
    let out = ssh_batch(&argv).await;
    assert!(
        out.status.success() && stdout(&out).contains(BANNER),
        "-C: {}",
        stderr(&out)
    );
    for hop in [Hop::Outer, Hop::Inner] {
        let text = read_log(&log(hop));
        for dir in ["client->server", "server->client"] {
            let compressed = text.lines().any(|l| {
                l.starts_with(&format!("debug1: kex: {dir} cipher: "))
                    && l.trim_end().ends_with(" compression: zlib@openssh.com")
            });
            assert!(compressed, "{hop:?} hop, {dir}: not compressed:\n{text}");
        }
    }
    offered.gw.stop().await;
}

// ---------------------------------------------------------------------
// Client keys
// ---------------------------------------------------------------------

/// A key, registered in its own connection, with the one signature
/// algorithm a client is to use.
struct Login<'a> {
    key: &'a Key,
    conn: &'a Connection,
    alg: &'static str,
}

/// A console session with `PubkeyAcceptedAlgorithms` forced to the
/// login's algorithm on both hops.
async fn logs_in_on_both_hops(gw: &Gateway, login: &Login<'_>, n: usize) -> Result<(), String> {
    let dir = case_dir(gw, &format!("login-{n}"));
    let log = |hop: Hop| dir.join(format!("{hop:?}.log"));
    let opts = |hop: Hop| {
        let mut opts = logging("-v", &log(hop));
        opts.extend([
            "-o".to_owned(),
            format!("PubkeyAcceptedAlgorithms={}", login.alg),
        ]);
        opts
    };
    let argv = nested(login.conn, login.key, &opts(Hop::Outer), &opts(Hop::Inner));
    let out = ssh_batch(&argv).await;
    let hop_logs = [log(Hop::Outer), log(Hop::Inner)].map(|l| read_log(&l));
    let authenticated = hop_logs
        .iter()
        .all(|l| l.contains("Authenticated to") && l.contains("using \"publickey\""));
    if out.status.success() && stdout(&out).contains(BANNER) && authenticated {
        Ok(())
    } else {
        Err(format!(
            "{}: no console session\nstderr: {}\nouter hop:\n{}\ninner hop:\n{}",
            login.alg,
            stderr(&out),
            hop_logs[0],
            hop_logs[1]
        ))
    }
}

/// The refusal of one hop's key, as the client logged it.
async fn refused_on(argv: &[String], hop_log: &Path, why: &[&str]) -> Result<(), String> {
    let out = ssh_batch(argv).await;
    let text = read_log(hop_log);
    if !out.status.success()
        && !stdout(&out).contains(BANNER)
        && why.iter().all(|w| text.contains(w))
    {
        Ok(())
    } else {
        Err(format!(
            "expected a refusal saying {why:?}; exit {:?}, stdout {:?}\nthe hop's log:\n{text}",
            out.status.code(),
            stdout(&out)
        ))
    }
}

/// The `server-sig-algs` a hop's `-v` log shows the gateway announced.
fn server_sig_algs(log: &str) -> Vec<String> {
    let (_, rest) = log
        .split_once("server-sig-algs=<")
        .unwrap_or_else(|| panic!("no server-sig-algs in:\n{log}"));
    rest.split('>')
        .next()
        .unwrap()
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// A russh client's connection to the outer hop, not yet authenticated.
async fn russh_outer(port: u16) -> russh_client::Client {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tokio::time::timeout(
        GUARD,
        russh::client::connect_stream(russh_client::config(), tcp, russh_client::AnyHostKey),
    )
    .await
    .expect("key exchange hung")
    .expect("key exchange failed")
}

/// Whether `client` gets in as `user` signing with `hash` (RSA: `None` is
/// SHA-1 `ssh-rsa`).
async fn signs_in(
    client: &mut russh_client::Client,
    user: &str,
    key: &Arc<russh::keys::PrivateKey>,
    hash: Option<russh::keys::HashAlg>,
) -> bool {
    let signed = russh::keys::PrivateKeyWithHashAlg::new(key.clone(), hash);
    tokio::time::timeout(GUARD, client.authenticate_publickey(user, signed))
        .await
        .expect("authentication hung")
        .expect("authentication failed at the protocol level")
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_key_type_logs_in_on_both_hops_and_sha1_rsa_and_strangers_do_not() {
    let gw = Gateway::start(&one_vm()).await;
    let dir = gw.dir.path().to_owned();
    let mut keys = Vec::new();
    for (kind, bits, alg) in [
        ("ed25519", None, "ssh-ed25519"),
        ("ecdsa", Some(256), "ecdsa-sha2-nistp256"),
        ("ecdsa", Some(384), "ecdsa-sha2-nistp384"),
        ("ecdsa", Some(521), "ecdsa-sha2-nistp521"),
    ] {
        let key = Key::generate(&dir, &format!("{kind}{}", bits.unwrap_or(0)), kind, bits);
        let conn = gw.create("vm1", &key).await;
        keys.push((key, conn, alg));
    }
    let rsa = Key::generate(&dir, "rsa3072", "rsa", Some(3072));
    let rsa_conn = gw.create("vm1", &rsa).await;
    let mut logins: Vec<Login> = keys
        .iter()
        .map(|(key, conn, alg)| Login { key, conn, alg })
        .collect();
    for alg in ["rsa-sha2-256", "rsa-sha2-512"] {
        logins.push(Login {
            key: &rsa,
            conn: &rsa_conn,
            alg,
        });
    }
    let mut failures = failures_of(
        logins
            .iter()
            .enumerate()
            .map(|(n, login)| logs_in_on_both_hops(&gw, login, n)),
    )
    .await;

    // SHA-1 `ssh-rsa`, forced on one hop at a time: the gateway does not
    // announce it, so the stock client has no signature to offer.
    let sha1 = "PubkeyAcceptedAlgorithms=ssh-rsa".to_owned();
    let refusals = case_dir(&gw, "refusals");
    let log = |name: &str| refusals.join(format!("{name}.log"));
    let sha1_outer = nested(
        &rsa_conn,
        &rsa,
        &[
            logging("-v", &log("sha1-outer")),
            vec!["-o".into(), sha1.clone()],
        ]
        .concat(),
        &[],
    );
    let sha1_inner = nested(
        &rsa_conn,
        &rsa,
        &logging("-v", &log("sha1-inner-outer")),
        &[logging("-v", &log("sha1-inner")), vec!["-o".into(), sha1]].concat(),
    );
    // A key that is not the connection's, on either hop.
    let stranger = Key::ed25519(&dir, "stranger");
    let (owner, owner_conn, _) = &keys[0];
    let string = |outer_key, inner_key| {
        argv_with_options(
            &owner_conn.connection_string,
            outer_key,
            inner_key,
            &owner_conn.known_hosts,
        )
    };
    let stranger_outer = per_hop(
        string(&stranger, owner),
        &logging("-v", &log("stranger-outer")),
        &[],
    );
    let stranger_inner = per_hop(
        string(owner, &stranger),
        &[],
        &logging("-v", &log("stranger-inner")),
    );
    let no_mutual = "no mutual signature algorithm";
    let denied = "Permission denied (publickey)";
    failures.extend(
        failures_of([
            refused_on(&sha1_outer, &log("sha1-outer"), &[no_mutual, denied]),
            refused_on(&sha1_inner, &log("sha1-inner"), &[no_mutual, denied]),
            refused_on(&stranger_outer, &log("stranger-outer"), &[denied]),
            refused_on(&stranger_inner, &log("stranger-inner"), &[denied]),
        ])
        .await,
    );
    // Neither hop announces SHA-1 RSA; both announce SHA-2 RSA.
    for name in ["sha1-inner-outer", "sha1-inner"] {
        let announced = server_sig_algs(&read_log(&log(name)));
        assert!(
            !announced.iter().any(|a| a == "ssh-rsa"),
            "{name}: server-sig-algs announces ssh-rsa: {announced:?}"
        );
        for alg in ["rsa-sha2-256", "rsa-sha2-512"] {
            assert!(
                announced.iter().any(|a| a == alg),
                "{name}: {alg} not announced: {announced:?}"
            );
        }
    }
    assert_none_failed(&failures);

    // A client that signs with SHA-1 anyway is refused on each hop, and
    // gets in with the same key signing with SHA-2.
    let secret = Arc::new(russh::keys::load_secret_key(&rsa.private, None).unwrap());
    let mut client = russh_outer(gw.port).await;
    assert!(
        !signs_in(&mut client, &rsa_conn.id, &secret, None).await,
        "the outer hop accepted an ssh-rsa (SHA-1) signature"
    );
    assert!(
        signs_in(
            &mut client,
            &rsa_conn.id,
            &secret,
            Some(russh::keys::HashAlg::Sha512)
        )
        .await,
        "the outer hop refused rsa-sha2-512"
    );
    let channel = client
        .channel_open_direct_tcpip("vm1", 22, "127.0.0.1", 0)
        .await
        .expect("no inner hop");
    let mut inner = tokio::time::timeout(
        GUARD,
        russh::client::connect_stream(
            russh_client::config(),
            channel.into_stream(),
            russh_client::AnyHostKey,
        ),
    )
    .await
    .expect("inner key exchange hung")
    .expect("inner key exchange failed");
    assert!(
        !signs_in(&mut inner, "", &secret, None).await,
        "the inner hop accepted an ssh-rsa (SHA-1) signature"
    );
    assert!(
        signs_in(&mut inner, "", &secret, Some(russh::keys::HashAlg::Sha256)).await,
        "the inner hop refused rsa-sha2-256"
    );
    let audit = gw.audit(&rsa_conn.id).await;
    assert!(
        audit.iter().any(|row| row["event"] == "refused"
            && row["detail"]
                .as_str()
                .is_some_and(|d| d.contains("CG-AUTH-008"))),
        "the SHA-1 refusal was not audited: {audit:?}"
    );

    // DSA cannot even be registered.
    let dsa = Key::generate(&dir, "dsa", "dsa", None);
    let out = gw
        .cli(&[
            "connection",
            "create",
            "--instance",
            "vm1",
            "--public-key-file",
            dsa.public.to_str().unwrap(),
        ])
        .await;
    assert!(!out.status.success(), "a DSA key was registered");
    assert!(
        stderr(&out).contains("ssh-dss is not accepted"),
        "{}",
        stderr(&out)
    );
    gw.stop().await;
}

// ---------------------------------------------------------------------
// Forwarding
// ---------------------------------------------------------------------

/// What a stand-in VNC display says first.
const RFB: &[u8] = b"RFB 003.008\n";

/// A listener that counts who connects to it; a display greets as a VNC
/// server and echoes, anything else is only counted.
struct Watched {
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watched {
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn tcp(listener: TcpListener, display: bool) -> Watched {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(answer(s, display));
            }
        });
        Watched { hits, task }
    }

    fn unix(listener: UnixListener) -> Watched {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(answer(s, false));
            }
        });
        Watched { hits, task }
    }
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, display: bool) {
    if display && s.write_all(RFB).await.is_ok() {
        let (mut r, mut w) = tokio::io::split(s);
        let _ = tokio::io::copy(&mut r, &mut w).await;
    }
}

/// A gateway whose vm1 has a VNC display, with a second instance whose
/// display and a TCP and a unix-socket bystander must never be reached,
/// and a user's console session that must keep working.
struct Forwarding {
    gw: Gateway,
    key: Key,
    conn: Connection,
    display: Watched,
    other_display: Watched,
    bystander: Watched,
    bystander_port: u16,
    socket_bystander: Watched,
    socket_path: PathBuf,
    watcher: Terminal,
    _sockets: tempfile::TempDir,
}

impl Forwarding {
    async fn start() -> Forwarding {
        let display = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let other = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bystander = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bystander_port = bystander.local_addr().unwrap().port();
        let sockets = tempfile::tempdir().unwrap();
        let socket_path = sockets.path().join("bystander.sock");
        let socket_bystander = UnixListener::bind(&socket_path).unwrap();
        let vnc = |l: &TcpListener| format!("tcp:127.0.0.1:{}", l.local_addr().unwrap().port());
        let gw = Gateway::start(
            &(instance("vm1", "simulator", Some(&vnc(&display)))
                + &instance("vm2", "simulator", Some(&vnc(&other)))),
        )
        .await;
        let key = Key::ed25519(gw.dir.path(), "user");
        let conn = gw.create("vm1", &key).await;
        let watcher_key = Key::ed25519(gw.dir.path(), "watcher");
        let watcher_conn = gw.create("vm1", &watcher_key).await;
        let mut watcher = Terminal::spawn(&watcher_conn.ssh_argv(&watcher_key)).await;
        watcher.expect(BANNER).await;
        Forwarding {
            display: Watched::tcp(display, true),
            other_display: Watched::tcp(other, false),
            bystander: Watched::tcp(bystander, false),
            bystander_port,
            socket_bystander: Watched::unix(socket_bystander),
            socket_path,
            gw,
            key,
            conn,
            watcher,
            _sockets: sockets,
        }
    }

    /// ssh with `opts` (and `-N`) on `hop`: the outer hop directly, the
    /// inner hop through the connection string.
    fn ssh(&self, hop: Hop, opts: &[String]) -> Vec<String> {
        let mut opts = opts.to_vec();
        opts.insert(0, "-N".to_owned());
        match hop {
            Hop::Outer => outer(self.gw.port, &self.conn, &self.key, &opts),
            Hop::Inner => nested(&self.conn, &self.key, &[], &opts),
        }
    }

    /// The display was reached `expected` times and nothing else ever
    /// was; the user's session still works; the gateway stops cleanly.
    async fn finish(mut self, expected: usize) {
        assert_eq!(self.bystander.hits(), 0, "a TCP bystander was reached");
        assert_eq!(
            self.socket_bystander.hits(),
            0,
            "a unix-socket bystander was reached"
        );
        assert_eq!(
            self.other_display.hits(),
            0,
            "another instance's display was reached"
        );
        assert_eq!(self.display.hits(), expected, "vm1's display");
        self.watcher.send(b"still-here\x03").await;
        self.watcher.expect("still-here").await;
        self.watcher.send(b"\r&.").await;
        assert!(self.watcher.wait().await.success());
        self.gw.stop().await;
    }
}

/// Reads the display's greeting through a tunnel and an echo back.
async fn reaches_display(s: &mut TcpStream) -> Result<(), String> {
    let mut greeting = [0u8; RFB.len()];
    tokio::time::timeout(GUARD, s.read_exact(&mut greeting))
        .await
        .map_err(|_| "no greeting".to_owned())?
        .map_err(|e| format!("closed before the greeting: {e}"))?;
    if greeting != RFB {
        return Err(format!("greeted with {greeting:?}"));
    }
    s.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut back = [0u8; 4];
    tokio::time::timeout(GUARD, s.read_exact(&mut back))
        .await
        .map_err(|_| "no echo".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Whether a tunnel's local end is closed without a byte.
async fn closed_without_a_byte(s: &mut TcpStream) -> Result<(), String> {
    let mut buf = [0u8; 1];
    match tokio::time::timeout(GUARD, s.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => Ok(()),
        Ok(Ok(_)) => Err("bytes came through".to_owned()),
        Err(_) => Err("neither refused nor closed".to_owned()),
    }
}

/// Where a forward leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    Display,
    Refused,
}

/// `-L 127.0.0.1:<local>:<target>` on `hop`; a connection to its local
/// end either reaches the display or is refused as administratively
/// prohibited.
async fn local_forward(
    f: &Forwarding,
    hop: Hop,
    target: String,
    reach: Reach,
) -> Result<(), String> {
    let local = free_port().await;
    let spec = format!("127.0.0.1:{local}:{target}");
    let ssh = spawn_ssh(&f.ssh(
        hop,
        &[
            "-o".into(),
            "ExitOnForwardFailure=yes".into(),
            "-L".into(),
            spec,
        ],
    ));
    let mut s = connect_eventually(local).await;
    let result = match reach {
        Reach::Display => reaches_display(&mut s).await,
        Reach::Refused => closed_without_a_byte(&mut s).await,
    };
    drop(s);
    let said = stop_ssh(ssh).await;
    let told = match reach {
        Reach::Display => !said.contains("open failed"),
        Reach::Refused => said.contains("open failed: administratively prohibited"),
    };
    match (result, told) {
        (Ok(()), true) => Ok(()),
        (result, _) => Err(format!(
            "-L to {target} on the {hop:?} hop, expected {reach:?}: {result:?}; ssh said:\n{said}"
        )),
    }
}

/// `-L` reaches vm1's display and nothing else, from either hop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_forwards_reach_the_vnc_display_and_nothing_else_on_either_hop() {
    let f = Forwarding::start().await;
    let bystander = f.bystander_port;
    let socket = f.socket_path.display().to_string();
    let mut cases = vec![
        (Hop::Outer, "vm1:5900".to_owned(), Reach::Display),
        (Hop::Inner, "vm1:5900".to_owned(), Reach::Display),
        (Hop::Inner, "localhost:5900".to_owned(), Reach::Display),
        // Another instance, another port of this one.
        (Hop::Outer, "vm2:5900".to_owned(), Reach::Refused),
        (Hop::Inner, "vm2:5900".to_owned(), Reach::Refused),
        (Hop::Outer, "vm1:5901".to_owned(), Reach::Refused),
        (Hop::Inner, "vm1:22".to_owned(), Reach::Refused),
        // Other hosts, and the gateway's own ports.
        (Hop::Outer, format!("127.0.0.1:{bystander}"), Reach::Refused),
        (Hop::Inner, format!("127.0.0.1:{bystander}"), Reach::Refused),
        (Hop::Inner, format!("localhost:{bystander}"), Reach::Refused),
        (Hop::Outer, "localhost:22".to_owned(), Reach::Refused),
        (
            Hop::Outer,
            format!("127.0.0.1:{}", f.gw.port),
            Reach::Refused,
        ),
        (
            Hop::Outer,
            format!("127.0.0.1:{}", f.gw.api_port),
            Reach::Refused,
        ),
        (
            Hop::Inner,
            format!("127.0.0.1:{}", f.gw.api_port),
            Reach::Refused,
        ),
    ];
    // A unix socket on the gateway's host (direct-streamlocal).
    for hop in [Hop::Outer, Hop::Inner] {
        cases.push((hop, socket.clone(), Reach::Refused));
    }
    let failures = failures_of(
        cases
            .into_iter()
            .map(|(hop, target, reach)| local_forward(&f, hop, target, reach)),
    )
    .await;
    assert_none_failed(&failures);
    f.finish(3).await;
}

/// A SOCKS5 CONNECT to `host:port` through `ssh -D` on local port
/// `local`: the stream if ssh's channel opened, `None` if it was closed.
async fn socks5(local: u16, host: &str, port: u16) -> Option<TcpStream> {
    let mut s = connect_eventually(local).await;
    tokio::time::timeout(GUARD, async {
        s.write_all(&[5, 1, 0]).await.ok()?;
        let mut method = [0u8; 2];
        s.read_exact(&mut method).await.ok()?;
        assert_eq!(method, [5, 0], "ssh -D chose no SOCKS method");
        let mut request = vec![5, 1, 0, 3, host.len() as u8];
        request.extend_from_slice(host.as_bytes());
        request.extend_from_slice(&port.to_be_bytes());
        s.write_all(&request).await.ok()?;
        let mut reply = [0u8; 10];
        s.read_exact(&mut reply).await.ok()?;
        (reply[1] == 0).then_some(())
    })
    .await
    .expect("the SOCKS request was neither answered nor closed")?;
    Some(s)
}

/// `-D` on `hop`: only the display is reachable through it.
async fn dynamic_forward(f: &Forwarding, hop: Hop) -> Result<(), String> {
    let local = free_port().await;
    let ssh = spawn_ssh(&f.ssh(hop, &["-D".into(), format!("127.0.0.1:{local}")]));
    let mut problems = Vec::new();
    let display = if hop == Hop::Outer {
        "vm1"
    } else {
        "localhost"
    };
    match socks5(local, display, 5900).await {
        Some(mut s) => {
            if let Err(e) = reaches_display(&mut s).await {
                problems.push(format!("{display}:5900: {e}"));
            }
        }
        None => problems.push(format!("{display}:5900 was refused")),
    }
    for (host, port) in [("127.0.0.1", f.bystander_port), ("vm2", 5900)] {
        if socks5(local, host, port).await.is_some() {
            problems.push(format!("{host}:{port} was opened"));
        }
    }
    let said = stop_ssh(ssh).await;
    if !said.contains("open failed: administratively prohibited") {
        problems.push("ssh was not told the opens were prohibited".to_owned());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "-D on the {hop:?} hop: {problems:?}; ssh said:\n{said}"
        ))
    }
}

/// `-R` with `ExitOnForwardFailure`: refused, and nothing listens.
async fn remote_forward(f: &Forwarding, hop: Hop, unix: bool) -> Result<(), String> {
    let (listen, told) = if unix {
        let path =
            f.gw.path(&format!("remote-{hop:?}.sock"))
                .display()
                .to_string();
        (
            path.clone(),
            format!("remote port forwarding failed for listen path {path}"),
        )
    } else {
        let port = free_port().await;
        (
            format!("127.0.0.1:{port}"),
            format!("remote port forwarding failed for listen port {port}"),
        )
    };
    let spec = format!("{listen}:127.0.0.1:{}", f.bystander_port);
    let argv = f.ssh(
        hop,
        &[
            "-o".into(),
            "ExitOnForwardFailure=yes".into(),
            "-R".into(),
            spec,
        ],
    );
    let out = ssh_batch(&argv).await;
    let listening = if unix {
        Path::new(&listen).exists()
    } else {
        TcpStream::connect(&listen).await.is_ok()
    };
    if !out.status.success() && stderr(&out).contains(&told) && !listening {
        Ok(())
    } else {
        Err(format!(
            "-R {listen} on the {hop:?} hop: exit {:?}, listening: {listening}; ssh said:\n{}",
            out.status.code(),
            stderr(&out)
        ))
    }
}

/// `-R` (TCP and unix socket) is refused on either hop; `-D` on either
/// hop leads only to the display.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_and_dynamic_forwards_lead_nowhere_else_on_either_hop() {
    let f = Forwarding::start().await;
    let mut failures = failures_of(
        [Hop::Outer, Hop::Inner]
            .into_iter()
            .flat_map(|hop| [(hop, false), (hop, true)])
            .map(|(hop, unix)| remote_forward(&f, hop, unix)),
    )
    .await;
    failures
        .extend(failures_of([Hop::Outer, Hop::Inner].map(|hop| dynamic_forward(&f, hop))).await);
    assert_none_failed(&failures);
    f.finish(2).await;
}

/// Agent forwarding (`-A`, with a real `ssh-agent`) is asked for on each
/// hop and opens no agent channel back to the client; the console works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_forwarding_opens_no_agent_channel_on_either_hop() {
    let f = Forwarding::start().await;
    let agent_socket = f.gw.path("agent.sock");
    let mut agent = tokio::process::Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&agent_socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("ssh-agent");
    tokio::time::timeout(GUARD, async {
        while !agent_socket.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("ssh-agent never made its socket");
    let agent_env = agent_socket.display().to_string();
    let dir = case_dir(&f.gw, "agent");
    let mut failures = Vec::new();
    for hop in [Hop::Outer, Hop::Inner] {
        let log = dir.join(format!("{hop:?}.log"));
        let mut opts = logging("-v", &log);
        opts.extend(["-A".to_owned(), "-tt".to_owned()]);
        let argv = match hop {
            Hop::Outer => outer(f.gw.port, &f.conn, &f.key, &opts),
            Hop::Inner => nested(&f.conn, &f.key, &[], &opts),
        };
        let out = ssh_with_env(&argv, &[("SSH_AUTH_SOCK", &agent_env)]).await;
        let text = read_log(&log);
        let console = stdout(&out).contains(BANNER);
        let asked = text.contains("Requesting authentication agent forwarding.");
        let opened = text.contains("auth-agent@openssh.com");
        if !console || !asked || opened {
            failures.push(format!(
                "{hop:?} hop: console {console}, agent forwarding asked for {asked}, \
                 agent channel opened {opened}; the client logged:\n{text}"
            ));
        }
    }
    agent.kill().await.unwrap();
    assert_none_failed(&failures);
    f.finish(0).await;
}

/// X11 forwarding (`-Y`, to a stand-in display) is refused on each hop, as
/// an sshd without X11 says: "X11 forwarding request failed"; no X11
/// channel ever reaches the client's display; the console works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x11_forwarding_is_refused_on_either_hop() {
    let f = Forwarding::start().await;
    // The client's X display: TCP port 6000 + n on 127.0.0.1.
    let x_display = loop {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        if l.local_addr().unwrap().port() > 6000 {
            break l;
        }
    };
    let display_env = format!(
        "127.0.0.1:{}",
        x_display.local_addr().unwrap().port() - 6000
    );
    let x_display = Watched::tcp(x_display, false);
    let dir = case_dir(&f.gw, "x11");
    let mut failures = Vec::new();
    for hop in [Hop::Outer, Hop::Inner] {
        let log = dir.join(format!("{hop:?}.log"));
        let mut opts = logging("-vv", &log);
        opts.extend(["-Y".to_owned(), "-tt".to_owned()]);
        let argv = match hop {
            Hop::Outer => outer(f.gw.port, &f.conn, &f.key, &opts),
            Hop::Inner => nested(&f.conn, &f.key, &[], &opts),
        };
        let out = ssh_with_env(&argv, &[("DISPLAY", &display_env)]).await;
        let text = read_log(&log);
        let console = stdout(&out).contains(BANNER);
        let asked = text.contains("Requesting X11 forwarding");
        let refused = text.contains("X11 forwarding request failed on channel 0");
        let opened = text.contains("ctype x11");
        if !console || !asked || !refused || opened {
            let about_x11: Vec<&str> = text
                .lines()
                .filter(|l| {
                    ["X11", "x11", ": request ", "accepted on", "failed on"]
                        .iter()
                        .any(|w| l.contains(w))
                })
                .collect();
            failures.push(format!(
                "{hop:?} hop: console {console}, X11 asked for {asked}, refused {refused}, \
                 X11 channel opened {opened}; the client logged:\n{}",
                about_x11.join("\n")
            ));
        }
    }
    assert_eq!(
        x_display.hits(),
        0,
        "an X11 channel reached the client's display"
    );
    assert_none_failed(&failures);
    f.finish(0).await;
}

// ---------------------------------------------------------------------
// Exec and subsystems
// ---------------------------------------------------------------------

/// A refused request: ssh fails, says `told`, and shows no console.
async fn request_refused(
    what: &str,
    program: &str,
    args: &[String],
    told: &str,
) -> Result<(), String> {
    let out = tokio::time::timeout(
        GUARD,
        tokio::process::Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the client hung")
    .expect("cannot run the client");
    if !out.status.success() && stderr(&out).contains(told) && !stdout(&out).contains(BANNER) {
        Ok(())
    } else {
        Err(format!(
            "{what}: exit {:?}, expected {told:?}\nstdout: {}\nstderr: {}",
            out.status.code(),
            stdout(&out),
            stderr(&out)
        ))
    }
}

/// `ssh host cmd`, `ssh -s host sftp` and the real `sftp` are refused on
/// each hop and attach nothing; a console session on the same connection
/// is audited as the one attach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_and_subsystem_requests_are_refused_on_either_hop() {
    let gw = Gateway::start(&one_vm()).await;
    let key = Key::ed25519(gw.dir.path(), "user");
    let conn = gw.create("vm1", &key).await;
    let with = |mut argv: Vec<String>, tail: &[&str]| {
        argv.extend(tail.iter().map(|s| (*s).to_owned()));
        argv[1..].to_vec()
    };
    let outer_ssh = |opts: &[&str]| outer(gw.port, &conn, &key, &strings(opts));
    let inner_ssh = |opts: &[&str]| nested(&conn, &key, &[], &strings(opts));
    // sftp takes ssh's options, but -P for the port.
    let mut sftp_outer = client_options(&key, &conn.known_hosts);
    sftp_outer.extend([
        "-b".to_owned(),
        "/dev/null".to_owned(),
        "-P".to_owned(),
        gw.port.to_string(),
        format!("{}@127.0.0.1", conn.id),
    ]);
    let mut sftp_inner = inner_ssh(&["-b", "/dev/null"]);
    sftp_inner.remove(0);
    let exec = "exec request failed on channel 0";
    let subsystem = "subsystem request failed on channel 0";
    let ssh = "/usr/bin/ssh";
    let sftp = "/usr/bin/sftp";
    let failures = failures_of([
        request_refused(
            "outer exec",
            ssh,
            &with(outer_ssh(&[]), &["uname", "-a"]),
            exec,
        ),
        request_refused(
            "inner exec",
            ssh,
            &with(inner_ssh(&[]), &["uname", "-a"]),
            exec,
        ),
        request_refused(
            "outer -s sftp",
            ssh,
            &with(outer_ssh(&["-s"]), &["sftp"]),
            subsystem,
        ),
        request_refused(
            "inner -s sftp",
            ssh,
            &with(inner_ssh(&["-s"]), &["sftp"]),
            subsystem,
        ),
        request_refused("outer sftp", sftp, &sftp_outer, subsystem),
        request_refused("inner sftp", sftp, &sftp_inner, subsystem),
    ])
    .await;
    assert_none_failed(&failures);
    let attaches =
        |rows: &[serde_json::Value]| rows.iter().filter(|r| r["event"] == "attach").count();
    assert_eq!(
        attaches(&gw.audit(&conn.id).await),
        0,
        "a refused request attached to the console"
    );
    // The twin: a console session on the same connection is an attach.
    let out = ssh_batch(&conn.ssh_argv(&key)).await;
    assert!(stdout(&out).contains(BANNER), "{}", stderr(&out));
    let audited = tokio::time::timeout(GUARD, async {
        loop {
            if attaches(&gw.audit(&conn.id).await) == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(audited.is_ok(), "the console session was not audited");
    gw.stop().await;
}

// ---------------------------------------------------------------------
// Multiplexing
// ---------------------------------------------------------------------

/// One `ControlMaster` connection carries two console sessions on the
/// outer hop and one inner hop with a third: all three share the console
/// (each sees what the others type) and one TCP connection; `-O check`
/// sees the master, `-O exit` ends it and every session on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_control_master_carries_consoles_on_both_hops() {
    let gw = Gateway::start(&one_vm()).await;
    let key = Key::ed25519(gw.dir.path(), "user");
    let conn = gw.create("vm1", &key).await;
    let socket = gw.path("mux.sock").display().to_string();
    let master_log = gw.path("master.log");
    // Clients of the master: if it were gone, they must not connect on
    // their own.
    let through_master = strings(&[
        "-o",
        "ControlMaster=no",
        "-o",
        "ProxyCommand=false",
        "-S",
        &socket,
    ]);
    let client = |extra: &[&str]| {
        let opts = [through_master.clone(), strings(extra)].concat();
        outer(gw.port, &conn, &key, &opts)
    };
    let mut master_opts = logging("-v", &master_log);
    master_opts.extend(strings(&[
        "-M",
        "-N",
        "-o",
        "ControlPersist=no",
        "-S",
        &socket,
    ]));
    let mut master = spawn_ssh(&outer(gw.port, &conn, &key, &master_opts));
    let listening = tokio::time::timeout(GUARD, async {
        while !Path::new(&socket).exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        listening.is_ok(),
        "the ControlMaster never made its socket; it logged:\n{}",
        read_log(&master_log)
    );
    let check = ssh_batch(&client(&["-O", "check"])).await;
    assert!(
        check.status.success() && stderr(&check).contains("Master running"),
        "-O check: {}",
        stderr(&check)
    );

    // Two consoles on the outer hop, and the connection string's inner
    // hop with the ProxyCommand's `-W` through the master.
    let mut consoles = [
        Terminal::spawn(&client(&[])).await,
        Terminal::spawn(&client(&[])).await,
        Terminal::spawn(&per_hop(conn.ssh_argv(&key), &through_master, &[])).await,
    ];
    for console in consoles.iter_mut() {
        console.expect(BANNER).await;
    }
    // Each sees what each types (the simulator echoes at its prompt).
    for i in 0..consoles.len() {
        let marker = format!("typed-in-console-{i}");
        consoles[i].send(format!("{marker}\x03").as_bytes()).await;
        for console in consoles.iter_mut() {
            console.expect(&marker).await;
        }
    }
    // One TCP connection: every attach came from the master's address.
    let rows = gw.audit(&conn.id).await;
    let attaches: Vec<&serde_json::Value> =
        rows.iter().filter(|r| r["event"] == "attach").collect();
    assert_eq!(attaches.len(), 3, "{rows:?}");
    assert!(
        attaches.iter().all(|r| r["peer"] == attaches[0]["peer"]),
        "the sessions came over several connections: {attaches:?}"
    );
    assert_eq!(
        attaches
            .iter()
            .filter(|r| r["detail"].as_str().unwrap_or("").starts_with("inner hop"))
            .count(),
        1,
        "{attaches:?}"
    );

    let exit = ssh_batch(&client(&["-O", "exit"])).await;
    assert!(exit.status.success(), "-O exit: {}", stderr(&exit));
    tokio::time::timeout(GUARD, master.wait())
        .await
        .expect("the master did not exit")
        .unwrap();
    for console in consoles.iter_mut() {
        console.wait().await;
    }
    // The gateway saw all three leave.
    let detached = tokio::time::timeout(GUARD, async {
        loop {
            let rows = gw.audit(&conn.id).await;
            if rows.iter().filter(|r| r["event"] == "detach").count() == 3 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        detached.is_ok(),
        "the multiplexed sessions were not all detached"
    );
    gw.stop().await;
}

// ---------------------------------------------------------------------
// Login grace time
// ---------------------------------------------------------------------

/// `handshake_timeout_secs` in the grace-time tests.
const GRACE: Duration = Duration::from_secs(3);
/// A generous bound on how late the cut may come: the grace time, the
/// gateway's bounded goodbye, and a loaded machine.
const GRACE_SLACK: Duration = Duration::from_secs(10);

/// A `consolegate serve` with a login grace time of [`GRACE`] and, as
/// login-timeout.sh's sshd, room for one unauthenticated client; with a
/// connection whose key has no passphrase, and one whose key has.
struct Graced {
    served: Served,
    key: Key,
    conn: Connection,
    locked: Key,
    locked_conn: Connection,
}

impl Graced {
    async fn start() -> Graced {
        let served = Served::start(ServedConfig {
            ssh: format!(
                "handshake_timeout_secs = {}\nmax_startups = \"1\"\n\
                 exempt_sources = [\"127.0.0.1\"]\n",
                GRACE.as_secs()
            ),
            rest: one_vm(),
            ..ServedConfig::default()
        })
        .await;
        let dir = served.dir.path().to_owned();
        let key = Key::ed25519(&dir, "user");
        let conn = create_connection(&served.config_path, "vm1", &key, &dir).await;
        let private = dir.join("locked");
        let made = std::process::Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "grace-pass",
                "-C",
                "locked",
                "-f",
            ])
            .arg(&private)
            .output()
            .unwrap();
        assert!(made.status.success(), "{}", stderr(&made));
        let locked = Key {
            public: private.with_extension("pub"),
            private,
        };
        let locked_conn = create_connection(&served.config_path, "vm1", &locked, &dir).await;
        Graced {
            served,
            key,
            conn,
            locked,
            locked_conn,
        }
    }

    /// How many times the gateway logged a login grace time running out.
    fn timeouts(&self) -> usize {
        self.served.log_text().matches("CG-AUTH-007").count()
    }

    /// Waits until the gateway has logged `n` grace timeouts.
    async fn timeouts_reach(&self, n: usize) {
        let reached = tokio::time::timeout(GUARD, async {
            while self.timeouts() < n {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(
            reached.is_ok(),
            "the gateway never logged grace timeout {n}; its log:\n{}",
            self.served.log_text()
        );
    }

    /// A console session of the real client: there is a place for it.
    async fn gets_in(&self) {
        let out = ssh_batch(&self.conn.ssh_argv(&self.key)).await;
        assert!(
            stdout(&out).contains(BANNER),
            "a client after the grace time did not get in: {}",
            stderr(&out)
        );
    }

    /// The real client (`argv`, with the locked key where it is to
    /// prompt) whose passphrase prompt, an askpass program as a desktop's
    /// dialog would be, is left unanswered until the gateway has logged
    /// its `nth_timeout`-th grace timeout; then answered. What ssh did.
    async fn stalled_at_the_passphrase(
        &self,
        argv: &[String],
        name: &str,
        nth_timeout: usize,
    ) -> Output {
        let dir = self.served.dir.path();
        let asked = dir.join(format!("{name}.asked"));
        let answered = dir.join(format!("{name}.answered"));
        let askpass = dir.join(format!("{name}.askpass"));
        // Bounded, so that it cannot outlive a failed test by long.
        std::fs::write(
            &askpass,
            format!(
                "#!/bin/sh\n: > '{}'\nn=0\n\
                 while [ ! -e '{}' ] && [ $n -lt 600 ]; do sleep 0.05; n=$((n + 1)); done\n\
                 echo grace-pass\n",
                asked.display(),
                answered.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(
            &askpass,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        // BatchMode would not ask at all.
        let argv: Vec<String> = argv
            .iter()
            .map(|a| {
                if a == "BatchMode=yes" {
                    "BatchMode=no".to_owned()
                } else {
                    a.clone()
                }
            })
            .collect();
        let ssh = tokio::process::Command::new("/usr/bin/ssh")
            .args(&argv[1..])
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn ssh");
        let prompted = tokio::time::timeout(GUARD, async {
            while !asked.exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            prompted.is_ok(),
            "{name}: ssh never asked for the passphrase"
        );
        self.timeouts_reach(nth_timeout).await;
        std::fs::write(&answered, "").unwrap();
        let out = tokio::time::timeout(GUARD, ssh.wait_with_output())
            .await
            .expect("ssh hung after the passphrase")
            .unwrap();
        assert!(
            !out.status.success() && !stdout(&out).contains(BANNER),
            "{name}: a console after the grace time: {}",
            stdout(&out)
        );
        out
    }
}

/// As OpenSSH's login-timeout.sh: a client that sends its identification
/// and stalls holds the only place (`max_startups = 1`) until the grace
/// time cuts it, and then a real client gets in. The real client stalled
/// at its passphrase prompt on the outer hop (its key offered and
/// accepted, the signature waiting for the user) is cut too, and shows
/// CG-AUTH-007 once it goes on; the place comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_grace_time_cuts_stalled_clients_and_frees_their_place() {
    let g = Graced::start().await;
    // A client that says who it is and then nothing; its place is taken
    // once the gateway answers (a readiness probe may hold it a moment).
    let (mut stalled, started) = tokio::time::timeout(GUARD, async {
        loop {
            let mut s = TcpStream::connect(("127.0.0.1", g.served.port))
                .await
                .unwrap();
            let started = tokio::time::Instant::now();
            s.write_all(b"SSH-2.0-fake\r\n").await.unwrap();
            let mut ident = [0u8; 8];
            if s.read_exact(&mut ident).await.is_ok() && &ident == b"SSH-2.0-" {
                return (s, started);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the gateway never answered a client");
    let stalled_port = stalled.local_addr().unwrap().port();
    // Meanwhile the only place is taken (when this is surely before the
    // grace time ran out).
    let turned_away = ssh_batch(&g.conn.ssh_argv(&g.key)).await;
    if started.elapsed() + Duration::from_millis(500) < GRACE {
        assert!(
            !stdout(&turned_away).contains(BANNER),
            "a second client got in past max_startups = 1"
        );
    }
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(GUARD, stalled.read_to_end(&mut rest)).await;
    let cut_after = started.elapsed();
    assert!(closed.is_ok(), "the stalled client was never cut");
    assert!(
        cut_after >= GRACE && cut_after < GRACE + GRACE_SLACK,
        "the stalled client was cut after {cut_after:?}, not at the grace time ({GRACE:?})"
    );
    g.timeouts_reach(1).await;
    let log = g.served.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("CG-AUTH-007") && l.contains(&format!("127.0.0.1:{stalled_port}"))),
        "the cut was not logged for the stalled client:\n{log}"
    );
    g.gets_in().await;

    let argv = outer(g.served.port, &g.locked_conn, &g.locked, &[]);
    let out = g.stalled_at_the_passphrase(&argv, "outer", 2).await;
    assert!(
        stderr(&out).contains("CG-AUTH-007 authentication timed out"),
        "not told why: {}",
        stderr(&out)
    );
    g.gets_in().await;
    g.served.stop().await;
}

/// The inner hop's grace time, met by the real client: the connection
/// string whose outer hop signs with an unlocked copy of the key while the
/// inner hop waits at the passphrase prompt is cut at the grace time, the
/// place comes back, and (as docs/runbook.md's CG-AUTH-007 says) the user
/// is told why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inner_hop_stalled_at_its_passphrase_is_cut_and_told_why() {
    let g = Graced::start().await;
    let unlocked = g.served.dir.path().join("unlocked");
    std::fs::copy(&g.locked.private, &unlocked).unwrap();
    let unlock = std::process::Command::new("ssh-keygen")
        .args(["-q", "-p", "-P", "grace-pass", "-N", "", "-f"])
        .arg(&unlocked)
        .output()
        .unwrap();
    assert!(unlock.status.success(), "{}", stderr(&unlock));
    let unlocked = Key {
        public: g.locked.public.clone(),
        private: unlocked,
    };
    let argv = argv_with_options(
        &g.locked_conn.connection_string,
        &unlocked,
        &g.locked,
        &g.locked_conn.known_hosts,
    );
    let out = g.stalled_at_the_passphrase(&argv, "inner", 1).await;
    assert!(
        g.served
            .log_text()
            .contains("inner hop authentication timed out"),
        "the inner hop's cut was not logged"
    );
    g.gets_in().await;
    g.served.stop().await;
    assert!(
        stderr(&out).contains("CG-AUTH-007 authentication timed out"),
        "the user was not told why the inner hop ended: {}",
        stderr(&out)
    );
}
