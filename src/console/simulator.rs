//! The built-in console simulator: a pretend machine on the far end of a
//! serial line, so the README walkthrough and the tests work without any VM.
//!
//! This is what `serial = "simulator"` in `gateway.toml` runs. The machine
//! prints a Linux-like boot log, offers a `login:` prompt that accepts any
//! user name, and then runs a tiny shell (`help` lists its commands). Input is
//! handled like a serial getty in cooked mode (echo, backspace, Ctrl-C, Ctrl-D)
//! and a serial break arms a Magic SysRq key, as on a real Linux console.
//! Everything it prints uses CRLF line endings.
//!
//! A break travels in band, in order with the typed bytes (as it does on a
//! real line): the input side of the simulated line uses telnet framing, where
//! `IAC BRK` (255 243) is a break and `IAC IAC` a literal 0xFF byte.

use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// Telnet's Interpret As Command byte, which frames a break on the input side.
pub const IAC: u8 = 255;
/// Telnet's BREAK command: `IAC BRK` is a serial break.
pub const BRK: u8 = 243;

const RELEASE: &str = "6.1.0-consolegate-demo";
/// Longest input line kept; further bytes are ignored until CR/LF.
const MAX_LINE: usize = 4096;
/// Longest user name kept (longer names are truncated, as getty would).
const MAX_USER: usize = 32;
const HELP: &str = "commands: help, uname [-r|-a], hostname, whoami, echo ARGS, uptime, dmesg, reboot, exit, logout";
const SYSRQ_HELP: &str = "sysrq: HELP : loglevel(0-9) reboot(b) crash(c) show-all-locks(d) terminate-all-tasks(e) memory-full-oom-kill(f) kill-all-tasks(i) thaw-filesystems(j) sak(k) show-backtrace-all-active-cpus(l) show-memory-usage(m) nice-all-RT-tasks(n) poweroff(o) show-registers(p) show-all-timers(q) unraw(r) sync(s) show-task-states(t) unmount(u) show-blocked-tasks(w) dump-ftrace-buffer(z)";
/// The kernel log printed at boot and by `dmesg`; `@HOST@` is the hostname.
const BOOT_LOG: &[&str] = &[
    "[    0.000000] Linux version 6.1.0-consolegate-demo (builder@consolegate) (gcc (Debian 12.2.0-14) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC",
    "[    0.000000] Command line: console=ttyS0,115200 root=/dev/vda1 ro",
    "[    0.000000] BIOS-provided physical RAM map:",
    "[    0.000000] BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
    "[    0.004000] DMI: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014",
    "[    0.012000] Hypervisor detected: KVM",
    "[    0.120000] smpboot: Allowing 2 CPUs, 0 hotplug CPUs",
    "[    0.250000] Memory: 1004532K/1048056K available",
    "[    0.410000] Serial: 8250/16550 driver, 4 ports, IRQ sharing enabled",
    "[    0.412000] 00:04: ttyS0 at I/O 0x3f8 (irq = 4, base_baud = 115200) is a 16550A",
    "[    0.520000] virtio_blk virtio1: [vda] 20971520 512-byte logical blocks (10.7 GB/10.0 GiB)",
    "[    0.530000]  vda: vda1",
    "[    0.610000] virtio_net virtio0 ens3: renamed from eth0",
    "[    0.702000] EXT4-fs (vda1): mounted filesystem with ordered data mode. Quota mode: none.",
    "[    0.705000] Run /init as init process",
    "[    0.910000] systemd[1]: systemd 252.22-1~deb12u1 running in system mode",
    "[    0.915000] systemd[1]: Hostname set to <@HOST@>.",
    "[    1.200000] systemd[1]: Reached target local-fs.target - Local File Systems.",
    "[    1.420000] systemd[1]: Started serial-getty@ttyS0.service - Serial Getty on ttyS0.",
    "[    1.430000] systemd[1]: Reached target multi-user.target - Multi-User System.",
];

/// A running simulated machine: `io` is the console end of its serial line.
pub struct SimulatedConsole {
    /// The console end of the serial line: read what the machine prints, write
    /// what is typed (0xFF doubled; `IAC BRK` sends a break, after which the
    /// next byte typed is a Magic SysRq key: `h` help, `b` reboot, `s` sync).
    /// Dropping it ends the machine.
    pub io: DuplexStream,
    /// The machine's task; it ends by itself once `io` is dropped.
    pub task: tokio::task::JoinHandle<()>,
}

/// Starts a simulated machine whose hostname is `hostname`. The machine task
/// ends by itself when `io` (the console end) is dropped / closed, so the
/// caller owns it by owning `io`.
///
/// Must be called from within a Tokio runtime.
pub fn spawn(hostname: &str) -> SimulatedConsole {
    let (console, machine) = tokio::io::duplex(64 * 1024);
    let task = tokio::spawn(run(machine, Machine::new(hostname)));
    SimulatedConsole { io: console, task }
}

async fn run(mut io: DuplexStream, mut m: Machine) {
    let mut buf = [0u8; 1024];
    let mut after_iac = false;
    m.boot();
    loop {
        if !m.out.is_empty() {
            if io.write_all(&m.out).await.is_err() {
                return;
            }
            m.out.clear();
        }
        let n = match io.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if after_iac {
                after_iac = false;
                match b {
                    IAC => m.feed(IAC),
                    BRK => m.sysrq_armed = true,
                    _ => {}
                }
            } else if b == IAC {
                after_iac = true;
            } else {
                m.feed(b);
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Esc {
    None,
    /// After ESC.
    Start,
    /// Inside `ESC [ ...` until a final byte.
    Csi,
    /// After `ESC O`: one more byte.
    Ss3,
}

/// The machine's state; `feed` turns each input byte into output in `out`.
struct Machine {
    host: String,
    start: Instant,
    /// Logged-in user, or `None` at the login prompt.
    user: Option<String>,
    line: Vec<u8>,
    prev_cr: bool,
    esc: Esc,
    sysrq_armed: bool,
    out: Vec<u8>,
}

impl Machine {
    fn new(host: &str) -> Self {
        Machine {
            host: host.to_owned(),
            start: Instant::now(),
            user: None,
            line: Vec::new(),
            prev_cr: false,
            esc: Esc::None,
            sysrq_armed: false,
            out: Vec::new(),
        }
    }

    fn put(&mut self, s: &str) {
        self.out.extend_from_slice(s.as_bytes());
    }

    fn say(&mut self, s: &str) {
        self.put(s);
        self.put("\r\n");
    }

    /// Kernel-style timestamp of now, e.g. `[   12.345678]`.
    fn ts(&self) -> String {
        let e = self.start.elapsed();
        format!("[{:5}.{:06}]", e.as_secs(), e.subsec_micros())
    }

    fn prompt(&mut self) {
        let p = match &self.user {
            Some(user) => format!("{user}@{}:~$ ", self.host),
            None => format!("{} login: ", self.host),
        };
        self.put(&p);
    }

    fn dmesg(&mut self) {
        for l in BOOT_LOG {
            let l = l.replace("@HOST@", &self.host);
            self.say(&l);
        }
    }

    fn boot(&mut self) {
        self.start = Instant::now();
        self.line.clear();
        self.esc = Esc::None;
        self.prev_cr = false;
        self.dmesg();
        self.login_prompt();
    }

    /// Back to the login prompt with the getty banner.
    fn login_prompt(&mut self) {
        self.user = None;
        let banner = format!("\r\nDebian GNU/Linux 12 {} ttyS0\r\n", self.host);
        self.say(&banner);
        self.prompt();
    }

    fn feed(&mut self, b: u8) {
        if self.sysrq_armed {
            self.sysrq_armed = false;
            return self.sysrq(b);
        }
        let after_cr = std::mem::take(&mut self.prev_cr);
        if self.esc != Esc::None && (0x20..0x7f).contains(&b) {
            self.esc = match (self.esc, b) {
                (Esc::Start, b'[') => Esc::Csi,
                (Esc::Start, b'O') => Esc::Ss3,
                (Esc::Csi, 0x20..=0x3f) => Esc::Csi,
                _ => Esc::None,
            };
            return;
        }
        // Control bytes abort an escape sequence and act as usual.
        self.esc = Esc::None;
        match b {
            b'\r' => {
                self.prev_cr = true;
                self.enter();
            }
            b'\n' if !after_cr => self.enter(),
            0x08 | 0x7f if !self.line.is_empty() => {
                self.line.pop();
                self.put("\x08 \x08");
            }
            0x03 => {
                self.line.clear();
                self.say("^C");
                self.prompt();
            }
            0x04 if self.line.is_empty() && self.user.is_some() => {
                self.say("logout");
                self.login_prompt();
            }
            0x1b => self.esc = Esc::Start,
            0x20..=0x7e if self.line.len() < MAX_LINE => {
                self.line.push(b);
                self.out.push(b);
            }
            _ => {}
        }
    }

    fn sysrq(&mut self, key: u8) {
        let ts = self.ts();
        self.put("\r\n");
        match key {
            b'b' => {
                self.say(&format!("{ts} sysrq: Resetting"));
                return self.boot();
            }
            b's' => {
                self.say(&format!("{ts} sysrq: Emergency Sync"));
                let ts = self.ts();
                self.say(&format!("{ts} Emergency Sync complete"));
            }
            _ => self.say(&format!("{ts} {SYSRQ_HELP}")),
        }
        self.prompt();
        let line = std::mem::take(&mut self.line);
        self.out.extend_from_slice(&line);
        self.line = line;
    }

    fn enter(&mut self) {
        self.put("\r\n");
        let line = String::from_utf8_lossy(&std::mem::take(&mut self.line)).into_owned();
        let Some(user) = self.user.clone() else {
            let name = line.trim();
            if !name.is_empty() {
                let mut name = name.to_owned();
                // The line holds printable ASCII only, so this cannot split a char.
                name.truncate(MAX_USER);
                self.user = Some(name);
                self.say("Welcome! This is consolegate's built-in demo console; type `help` to list commands.");
            }
            return self.prompt();
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] => {}
            ["help"] => self.say(HELP),
            ["uname"] | ["uname", "-s"] => self.say("Linux"),
            ["uname", "-r"] => self.say(RELEASE),
            ["uname", "-a"] => {
                let l = format!(
                    "Linux {} {RELEASE} #1 SMP PREEMPT_DYNAMIC x86_64 GNU/Linux",
                    self.host
                );
                self.say(&l);
            }
            ["uname", arg, ..] => self.say(&format!("uname: unrecognized option '{arg}'")),
            ["hostname"] => self.say(&self.host.clone()),
            ["whoami"] => self.say(&user),
            ["echo", args @ ..] => self.say(&args.join(" ")),
            ["uptime"] => {
                let secs = self.start.elapsed().as_secs();
                self.say(&format!(
                    " up {secs} seconds,  1 user,  load average: 0.00, 0.00, 0.00"
                ));
            }
            ["dmesg"] => self.dmesg(),
            ["reboot"] => {
                let ts = self.ts();
                self.say(&format!("{ts} reboot: Restarting system"));
                return self.boot();
            }
            ["exit"] | ["logout"] => return self.login_prompt(),
            [cmd, ..] => self.say(&format!("-sh: {cmd}: command not found")),
        }
        self.prompt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncRead, ReadHalf, WriteHalf};
    use tokio::time::timeout;

    const GUARD: Duration = Duration::from_secs(10);
    const PROMPT: &str = "root@demo:~$ ";

    /// Reads the console, keeping what is past the last match.
    struct Reader<R> {
        r: R,
        buf: Vec<u8>,
    }

    impl<R: AsyncRead + Unpin> Reader<R> {
        /// Everything up to and including the next `needle`.
        async fn until(&mut self, needle: &str) -> String {
            let n = needle.as_bytes();
            let mut from = 0;
            let found = timeout(GUARD, async {
                loop {
                    if let Some(i) = self.buf[from..].windows(n.len()).position(|w| w == n) {
                        let rest = self.buf.split_off(from + i + n.len());
                        return std::mem::replace(&mut self.buf, rest);
                    }
                    from = self.buf.len().saturating_sub(n.len());
                    let mut chunk = [0u8; 4096];
                    let got = self.r.read(&mut chunk).await.expect("read");
                    assert!(got > 0, "EOF while waiting for {needle:?}");
                    self.buf.extend_from_slice(&chunk[..got]);
                }
            });
            let bytes = found
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {needle:?}"));
            String::from_utf8_lossy(&bytes).into_owned()
        }
    }

    type Console = (Reader<ReadHalf<DuplexStream>>, WriteHalf<DuplexStream>);

    const BREAK: [u8; 2] = [IAC, BRK];

    /// Boots a machine called `demo` and logs in as `root`.
    async fn logged_in() -> Console {
        let c = spawn("demo");
        let (r, mut w) = tokio::io::split(c.io);
        let mut r = Reader { r, buf: Vec::new() };
        r.until("demo login: ").await;
        w.write_all(b"root\r").await.unwrap();
        r.until(PROMPT).await;
        (r, w)
    }

    #[tokio::test]
    async fn boots_to_login_prompt_and_logs_in() {
        let c = spawn("demo");
        let (r, mut w) = tokio::io::split(c.io);
        let mut r = Reader { r, buf: Vec::new() };
        let boot = r.until("demo login: ").await;
        assert!(boot.starts_with("[    0.000000] Linux version 6.1.0-consolegate-demo "));
        assert!(boot.contains("Command line: console=ttyS0,115200"));
        assert!(boot.contains("Run /init as init process\r\n"));
        assert!(boot.ends_with("\r\n\r\nDebian GNU/Linux 12 demo ttyS0\r\n\r\ndemo login: "));
        assert!(boot.lines().count() >= 20);
        assert!(
            !boot.replace("\r\n", "").contains('\n'),
            "bare LF in boot log"
        );
        w.write_all(b"\rroot\r").await.unwrap();
        let out = r.until(PROMPT).await;
        assert!(out.starts_with("\r\ndemo login: root\r\n"), "{out:?}");
        assert!(out.contains("consolegate's built-in demo console") && out.contains("help"));
    }

    #[tokio::test]
    async fn runs_commands_and_treats_crlf_as_one_line_end() {
        let (mut r, mut w) = logged_in().await;
        w.write_all(b"uname -r\r\nwhoami\nhostname\r")
            .await
            .unwrap();
        let out = r.until("hostname\r\ndemo\r\nroot@demo:~$ ").await;
        let want = "uname -r\r\n6.1.0-consolegate-demo\r\nroot@demo:~$ whoami\r\nroot\r\nroot@demo:~$ hostname\r\ndemo\r\nroot@demo:~$ ";
        assert_eq!(out, want);
        w.write_all(b"echo  a   b\r").await.unwrap();
        assert!(r.until(PROMPT).await.ends_with("\r\na b\r\nroot@demo:~$ "));
    }

    #[tokio::test]
    async fn backspace_and_escape_sequences_edit_the_line() {
        let (mut r, mut w) = logged_in().await;
        w.write_all(b"unamx\x7fe\x1b[A\x1bOB -r\r").await.unwrap();
        let out = r.until(PROMPT).await;
        assert_eq!(
            out,
            "unamx\x08 \x08e -r\r\n6.1.0-consolegate-demo\r\nroot@demo:~$ "
        );
    }

    #[tokio::test]
    async fn unknown_command_and_ctrl_c() {
        let (mut r, mut w) = logged_in().await;
        w.write_all(b"frobnicate now\r").await.unwrap();
        assert!(
            r.until(PROMPT)
                .await
                .contains("\r\n-sh: frobnicate: command not found\r\n")
        );
        w.write_all(b"uname\x03whoami\r").await.unwrap();
        r.until("uname^C\r\nroot@demo:~$ whoami\r\nroot\r\n").await;
    }

    #[tokio::test]
    async fn logout_returns_to_login_prompt() {
        let (mut r, mut w) = logged_in().await;
        let login = "\r\n\r\nDebian GNU/Linux 12 demo ttyS0\r\n\r\ndemo login: ";
        w.write_all(b"exit\r").await.unwrap();
        assert_eq!(r.until("login: ").await, format!("exit{login}"));
        w.write_all(b"root\r\x04").await.unwrap();
        r.until(PROMPT).await;
        assert_eq!(r.until("login: ").await, format!("logout{login}"));
    }

    #[tokio::test]
    async fn break_then_h_prints_sysrq_help_without_echo() {
        let (mut r, mut w) = logged_in().await;
        w.write_all(b"ec").await.unwrap();
        r.until("ec").await;
        // The break and the key arrive in one write: order is kept in band.
        w.write_all(&[IAC, BRK, b'h']).await.unwrap();
        let out = r.until("dump-ftrace-buffer(z)\r\n").await;
        assert!(
            out.starts_with("\r\n[") && out.contains("] sysrq: HELP : loglevel(0-9) reboot(b)")
        );
        assert_eq!(r.until("~$ ec").await, "root@demo:~$ ec");
        // The `h` did not reach the line: "ec" + "ho x" is `echo x`.
        w.write_all(b"ho x\r").await.unwrap();
        assert_eq!(r.until(PROMPT).await, "ho x\r\nx\r\nroot@demo:~$ ");
    }

    #[tokio::test]
    async fn break_then_s_syncs_and_b_reboots() {
        let (mut r, mut w) = logged_in().await;
        w.write_all(&BREAK).await.unwrap();
        w.write_all(b"s").await.unwrap();
        let out = r.until(PROMPT).await;
        assert!(
            out.contains("] sysrq: Emergency Sync\r\n[")
                && out.contains("] Emergency Sync complete\r\n")
        );
        w.write_all(&BREAK).await.unwrap();
        w.write_all(b"b").await.unwrap();
        r.until("] sysrq: Resetting\r\n").await;
        r.until("Linux version 6.1.0-consolegate-demo").await;
        r.until("demo login: ").await;
        // IAC IAC is a literal 0xFF (not printable: ignored by the line editor).
        w.write_all(&[IAC, IAC]).await.unwrap();
        w.write_all(b"root\r").await.unwrap();
        r.until(PROMPT).await;
    }

    #[tokio::test]
    async fn dropping_io_ends_the_task() {
        let c = spawn("demo");
        drop(c.io);
        timeout(GUARD, c.task)
            .await
            .expect("machine task still running")
            .unwrap();
    }

    #[tokio::test]
    async fn survives_junk_input() {
        let (mut r, mut w) = logged_in().await;
        let mut x: u32 = 0x2545_f491;
        let junk: Vec<u8> = (0..100 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let writer = tokio::spawn(async move {
            w.write_all(&junk).await.unwrap();
            // Clear the line, log out if still logged in, log in afresh.
            w.write_all(b"\x03\x04root\runame -r\r").await.unwrap();
            w
        });
        r.until("root@demo:~$ uname -r\r\n6.1.0-consolegate-demo\r\n")
            .await;
        writer.await.unwrap();
    }
}
