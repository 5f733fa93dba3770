//! What the end-to-end tests start and inspect: the real binaries, a real etcd
//! member on 127.0.0.1 as the service, real SQLite files.

use std::fs;
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use rusqlite::Connection;
use sha2::{Digest as _, Sha256};

/// The workspace's `target/<profile>` folder, where cargo put the binaries.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/e2e-HASH -> target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("target folder")
        .to_owned()
}

/// Path of a workspace binary, with a clear message when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, as tests/run.sh does)",
        path.display()
    );
    path
}

/// Outcome of running a binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(out: Output) -> Self {
        Self {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "command failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// The build time of the tests' bundles, Unix seconds: the start of the
/// current 30-day period, so two builds in one test are byte-identical and
/// a bundle of the demo (`expires_after_days = 365`) is never expired, as
/// one fixed date would be once a year had passed.
pub fn build_epoch() -> u64 {
    const PERIOD: u64 = 30 * 86_400;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs();
    now - now % PERIOD
}

/// Runs `airlock-build ARGS` with `SOURCE_DATE_EPOCH` at [`build_epoch`].
pub fn airlock_build(args: &[&str]) -> Run {
    Run::from(
        Command::new(bin("airlock-build"))
            .args(args)
            .env("SOURCE_DATE_EPOCH", build_epoch().to_string())
            .env_remove("AIRLOCK_PASSPHRASE")
            .output()
            .expect("run airlock-build"),
    )
}

/// Runs `airlock-apply ARGS`.
pub fn airlock_apply(args: &[&str]) -> Run {
    Run::from(
        Command::new(bin("airlock-apply"))
            .args(args)
            .output()
            .expect("run airlock-apply"),
    )
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("pick a free port")
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(
        fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())),
    ))
}

/// SHA-256 over every file below `dir` (paths and contents), hex.
pub fn sha256_tree(dir: &Path) -> String {
    let mut h = Sha256::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry.unwrap();
        if entry.file_type().is_file() {
            h.update(
                entry
                    .path()
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .as_bytes(),
            );
            h.update(fs::read(entry.path()).unwrap());
        }
    }
    hex::encode(h.finalize())
}

/// SHA-256 of a logical dump of a SQLite database: every table's schema and
/// every row in rowid order.
pub fn sqlite_dump_hash(path: &Path) -> String {
    let conn =
        Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut h = Sha256::new();
    let tables: Vec<(String, String)> = conn
        .prepare("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY type, name")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (name, sql) in tables {
        h.update(sql.as_bytes());
        if !sql.starts_with("CREATE TABLE") {
            continue;
        }
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM \"{name}\" ORDER BY rowid"))
            .unwrap();
        let cols = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            for i in 0..cols {
                let v: rusqlite::types::Value = row.get(i).unwrap();
                h.update(format!("{v:?}|").as_bytes());
            }
            h.update(b"\n");
        }
    }
    hex::encode(h.finalize())
}

/// Creates the service's database at version 1.0.0: 120,000 rows over three tables.
pub fn create_app_db(path: &Path) {
    let mut conn = Connection::open(path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, region TEXT NOT NULL);
         CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id),
                              amount_cents INTEGER NOT NULL, placed_at INTEGER NOT NULL);
         CREATE TABLE order_lines (id INTEGER PRIMARY KEY, order_id INTEGER NOT NULL REFERENCES orders(id),
                                   sku TEXT NOT NULL, quantity INTEGER NOT NULL);",
    )
    .unwrap();
    let tx = conn.transaction().unwrap();
    {
        let mut c = tx
            .prepare("INSERT INTO customers (id, name, region) VALUES (?1, ?2, ?3)")
            .unwrap();
        for i in 0..10_000i64 {
            c.execute(rusqlite::params![
                i,
                format!("customer-{i}"),
                ["north", "south", "east", "west"][(i % 4) as usize]
            ])
            .unwrap();
        }
        let mut o = tx
            .prepare("INSERT INTO orders (id, customer_id, amount_cents, placed_at) VALUES (?1, ?2, ?3, ?4)")
            .unwrap();
        for i in 0..50_000i64 {
            o.execute(rusqlite::params![
                i,
                i % 10_000,
                (i * 37) % 100_000,
                1_700_000_000 + i
            ])
            .unwrap();
        }
        let mut l = tx
            .prepare(
                "INSERT INTO order_lines (id, order_id, sku, quantity) VALUES (?1, ?2, ?3, ?4)",
            )
            .unwrap();
        for i in 0..60_000i64 {
            l.execute(rusqlite::params![
                i,
                i % 50_000,
                format!("SKU-{:05}", i % 997),
                1 + i % 5
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
}

/// The migrations of release 1.1.0, written as sqlx writes them.
pub fn write_migrations(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    fs::write(
        dir.join("0001_add_order_status.sql"),
        "ALTER TABLE orders ADD COLUMN status TEXT NOT NULL DEFAULT 'open';\n\
         CREATE INDEX orders_by_status ON orders (status);\n",
    )
    .unwrap();
    fs::write(
        dir.join("0002_customer_totals.sql"),
        "CREATE TABLE customer_totals (customer_id INTEGER PRIMARY KEY, total_cents INTEGER NOT NULL);\n\
         INSERT INTO customer_totals SELECT customer_id, SUM(amount_cents) FROM orders GROUP BY customer_id;\n",
    )
    .unwrap();
}

/// One node: a folder with an installed etcd, its data dir (the Raft data),
/// the service's SQLite database, and a site profile.
pub struct EtcdNode {
    pub root: PathBuf,
    pub client_port: u16,
    _dir: tempfile::TempDir,
}

pub const KEY_COUNT: usize = 3000;

/// A member's name and ports.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
}

impl Member {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            client_port: free_port(),
            peer_port: free_port(),
        }
    }

    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// `NAME=PEER_URL`, an entry of etcd's `--initial-cluster`.
    pub fn initial_cluster_entry(&self) -> String {
        format!("{}=http://127.0.0.1:{}", self.name, self.peer_port)
    }
}

/// Lays out a node under `root`: an installed etcd 1.0.0 (a copy of
/// /usr/bin/etcd), its RELEASE file, config, the application database, a stop
/// script and the node's own `site.toml`. Returns the start command.
pub fn prepare_node(
    root: &Path,
    member: &Member,
    initial_cluster: &str,
    cluster_state: &str,
    trusted: &[&Path],
    threshold: usize,
    health_wait_secs: u64,
) -> String {
    for sub in ["node/bin", "keys", "state", "backups"] {
        fs::create_dir_all(root.join(sub)).unwrap();
    }
    fs::copy("/usr/bin/etcd", root.join("node/bin/etcd"))
        .expect("copy /usr/bin/etcd (install etcd-server)");
    fs::write(root.join("node/RELEASE"), "1.0.0\n").unwrap();
    fs::write(
        root.join("node/etcd.conf"),
        "# service config, backed up with the data\nquota=2GiB\n",
    )
    .unwrap();
    create_app_db(&root.join("node/app.db"));
    let mut keys = String::new();
    for (i, key) in trusted.iter().enumerate() {
        let name = format!("keys/trusted-{i}.pub");
        fs::copy(key, root.join(&name)).unwrap();
        keys.push_str(&format!("\"{name}\", "));
    }
    let (name, client_port, peer_port) = (&member.name, member.client_port, member.peer_port);
    let start = format!(
        "for v in $(env | grep -o '^ETCD_[A-Z_]*'); do unset $v; done; \
         nohup node/bin/etcd --name {name} --data-dir node/data \
         --listen-client-urls http://127.0.0.1:{client_port} --advertise-client-urls http://127.0.0.1:{client_port} \
         --listen-peer-urls http://127.0.0.1:{peer_port} --initial-advertise-peer-urls http://127.0.0.1:{peer_port} \
         --initial-cluster {initial_cluster} --initial-cluster-state {cluster_state} --initial-cluster-token airlock-test \
         > node/etcd.log 2>&1 & echo $! > node/pid"
    );
    fs::write(
        root.join("stop.sh"),
        "#!/bin/sh\n# Stops the member and waits until the process is gone (a zombie counts as gone).\n\
         [ -f node/pid ] || exit 0\npid=$(cat node/pid)\nkill \"$pid\" 2>/dev/null\n\
         while [ -d /proc/$pid ] && ! grep -q '^State:[[:space:]]*Z' /proc/$pid/status 2>/dev/null; do sleep 0.1; done\n\
         rm -f node/pid\n",
    )
    .unwrap();
    fs::set_permissions(root.join("stop.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    let site = format!(
        r#"[service]
name = "etcd member {name}"
start = '''{start}'''
stop = "./stop.sh"
health = {{ url = "http://127.0.0.1:{client_port}/health", timeout_secs = 3 }}
version = {{ command = "cat node/RELEASE" }}
health_wait_secs = {health_wait_secs}
stop_wait_secs = 30

[binaries]
etcd = "node/bin/etcd"

[files]
"files/RELEASE" = "node/RELEASE"

[data]
databases = {{ main = "node/app.db" }}
raft_dir = "node/data"
config_files = ["node/etcd.conf"]

[trust]
keys = [{keys}]
threshold = {threshold}

[paths]
state_dir = "state"
backup_dir = "backups"
keep_backups = 2
"#
    );
    fs::write(root.join("site.toml"), site).unwrap();
    start
}

impl EtcdNode {
    /// Sets up a node running release 1.0.0 (a copy of /usr/bin/etcd) with
    /// `KEY_COUNT` keys written and the application database created; the
    /// site trusts `trusted` keys with `threshold`.
    pub fn start(trusted: &[&Path], threshold: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let member = Member::new("n1");
        let initial = member.initial_cluster_entry();
        let start = prepare_node(dir.path(), &member, &initial, "new", trusted, threshold, 30);
        let node = Self {
            root: dir.path().to_owned(),
            client_port: member.client_port,
            _dir: dir,
        };
        node.run_sh(&start);
        node.wait_healthy(Duration::from_secs(30));
        node.put_keys(KEY_COUNT);
        node
    }

    /// A node prepared by [`prepare_node`] under `root`, not owning its folder.
    pub fn member_at(root: &Path, client_port: u16, dir: tempfile::TempDir) -> Self {
        Self {
            root: root.to_owned(),
            client_port,
            _dir: dir,
        }
    }

    pub fn site(&self) -> String {
        self.root.join("site.toml").display().to_string()
    }

    pub fn run_sh(&self, script: &str) {
        let status = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(&self.root)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "`{script}` failed");
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.client_port)
    }

    pub fn healthy(&self) -> bool {
        Command::new("etcdctl")
            .args([
                "--endpoints",
                &self.url(""),
                "--dial-timeout",
                "2s",
                "--command-timeout",
                "3s",
                "endpoint",
                "health",
            ])
            .env_remove("ETCDCTL_API")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    pub fn wait_healthy(&self, wait: Duration) {
        let deadline = Instant::now() + wait;
        while !self.healthy() {
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.root.join("node/etcd.log")).unwrap_or_default()
    }

    fn post(&self, path: &str, body: &serde_json::Value) -> serde_json::Value {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let mut resp = agent
            .post(&self.url(path))
            .header("content-type", "application/json")
            .send(body.to_string())
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap()
    }

    /// Writes `key/00000` .. through etcd's v3 HTTP gateway.
    pub fn put_keys(&self, n: usize) {
        for i in 0..n {
            let key = BASE64.encode(format!("key/{i:05}"));
            let value = BASE64.encode(format!("value-{i}"));
            self.post(
                "/v3/kv/put",
                &serde_json::json!({"key": key, "value": value}),
            );
        }
    }

    /// How many `key/` keys etcd holds.
    pub fn count_keys(&self) -> usize {
        let v = self.post(
            "/v3/kv/range",
            &serde_json::json!({"key": BASE64.encode("key/"), "range_end": BASE64.encode("key0"), "count_only": true}),
        );
        v["count"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// Hashes of what an apply may change: binary, release file, database, Raft data, config.
    pub fn snapshot(&self) -> [String; 4] {
        [
            sha256_file(&self.root.join("node/bin/etcd")),
            sha256_file(&self.root.join("node/RELEASE")),
            sqlite_dump_hash(&self.root.join("node/app.db")),
            sha256_file(&self.root.join("node/etcd.conf")),
        ]
    }

    /// File-level hashes of the database file and the Raft folder (stable only while nothing writes).
    pub fn file_snapshot(&self) -> [String; 2] {
        [
            sha256_file(&self.root.join("node/app.db")),
            sha256_tree(&self.root.join("node/data")),
        ]
    }
}

impl Drop for EtcdNode {
    fn drop(&mut self) {
        let _ = Command::new("sh")
            .arg("-c")
            .arg("./stop.sh")
            .current_dir(&self.root)
            .status();
    }
}

/// A release key made with `airlock-build keygen --unencrypted`.
pub struct Keys {
    pub dir: tempfile::TempDir,
}

impl Keys {
    pub fn new(names: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for name in names {
            airlock_build(&[
                "keygen",
                "--out",
                &dir.path().join(name).display().to_string(),
                "--unencrypted",
            ])
            .ok();
        }
        Self { dir }
    }

    pub fn secret(&self, name: &str) -> String {
        self.dir
            .path()
            .join(format!("{name}.key"))
            .display()
            .to_string()
    }

    pub fn public(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.pub"))
    }
}

/// Writes the trust update `out` (`airlock-build trust new`) of `version`,
/// trusting the public key file `public`, signed by the secret key files
/// `signers` in order (`airlock-build trust sign`).
pub fn trust_update(out: &Path, public: &Path, version: u32, signers: &[&str]) -> String {
    let out = out.display().to_string();
    airlock_build(&[
        "trust",
        "new",
        "--key",
        &public.display().to_string(),
        "--trust-version",
        &version.to_string(),
        "--out",
        &out,
    ])
    .ok();
    for key in signers {
        airlock_build(&["trust", "sign", &out, "--key", key]).ok();
    }
    out
}

/// Writes a release folder for `version`: the etcd binary (with `marker`
/// appended so each release's binary hashes differently, or replaced by a
/// script when `broken`), a RELEASE file and the 1.1.0 migrations.
pub fn write_release(dir: &Path, version: &str, upgrades_from: &str, broken: bool) -> PathBuf {
    write_release_with(dir, version, upgrades_from, broken, version, true)
}

/// As [`write_release`], with the RELEASE file saying `reports` (what the
/// version probe will read) and `rolling_allowed` set as given.
pub fn write_release_with(
    dir: &Path,
    version: &str,
    upgrades_from: &str,
    broken: bool,
    reports: &str,
    rolling_allowed: bool,
) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let binary = dir.join("etcd");
    if broken {
        fs::write(
            &binary,
            "#!/bin/sh\necho 'this build crashes at start' >&2\nexit 1\n",
        )
        .unwrap();
    } else {
        fs::copy("/usr/bin/etcd", &binary).unwrap();
        let mut f = fs::OpenOptions::new().append(true).open(&binary).unwrap();
        // Bytes after the ELF sections change the file's hash, not how it runs.
        f.write_all(format!("\nairlock-test-release-{version}\n").as_bytes())
            .unwrap();
    }
    fs::write(dir.join("RELEASE"), format!("{reports}\n")).unwrap();
    write_migrations(&dir.join("migrations"));
    let spec = dir.join("bundle.toml");
    fs::write(
        &spec,
        format!(
            r#"name = "etcd-node"
version = "{version}"
upgrades_from = "{upgrades_from}"
rolling_allowed = {rolling_allowed}

[[binary]]
name = "etcd"
source = "etcd"
install_path = "/opt/etcd/bin/etcd"

[[file]]
source = "RELEASE"
install_path = "/opt/etcd/RELEASE"

[[migrations]]
database = "main"
dir = "migrations"
"#
        ),
    )
    .unwrap();
    spec
}

/// Builds the release at `spec` signed by `key` into `out`; returns the bundle path.
pub fn build_bundle(spec: &Path, key: &str, out: &Path) -> PathBuf {
    let run = airlock_build(&[
        "--no-progress",
        "build",
        "--spec",
        &spec.display().to_string(),
        "--key",
        key,
        "--out",
        &out.display().to_string(),
    ])
    .ok();
    PathBuf::from(run.stdout.trim())
}

/// `sqlite_dump_hash` without the migration history tables (airlock's, and
/// diesel's, sqlx's and golang-migrate's), to compare a migrated database
/// with one migrated by hand.
pub fn sqlite_content_hash(path: &Path) -> String {
    let copy = tempfile::NamedTempFile::new().unwrap();
    fs::copy(path, copy.path()).unwrap();
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    if wal.exists() {
        fs::copy(&wal, format!("{}-wal", copy.path().display())).unwrap();
    }
    let conn = Connection::open(copy.path()).unwrap();
    conn.execute_batch(
        "DROP TABLE IF EXISTS airlock_migrations;
         DROP TABLE IF EXISTS _sqlx_migrations;
         DROP TABLE IF EXISTS __diesel_schema_migrations;
         DROP TABLE IF EXISTS schema_migrations;",
    )
    .unwrap();
    drop(conn);
    sqlite_dump_hash(copy.path())
}

/// The content hash the database should have after release 1.1.0's migrations.
pub fn migrated_content_hash(original: &Path, migrations: &Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("app.db");
    let conn = Connection::open(original).unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    drop(conn);
    fs::copy(original, &copy).unwrap();
    let conn = Connection::open(&copy).unwrap();
    let mut files: Vec<_> = fs::read_dir(migrations)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        conn.execute_batch(&fs::read_to_string(f).unwrap()).unwrap();
    }
    drop(conn);
    sqlite_content_hash(&copy)
}

/// One JSON event of `airlock-apply --json`.
#[derive(Debug, Clone)]
pub struct Event {
    pub step: String,
    pub status: String,
}

/// Runs `airlock-apply --json ARGS`, reading its events; each time `act`
/// returns true for an event (given with how many times that step and status
/// were seen), `signal` (`KILL`, `TERM`, ...) goes to the process. Returns the
/// events, the exit code and stderr.
pub fn apply_with_signal(
    args: &[&str],
    signal: &str,
    act: impl FnMut(&Event, usize) -> bool,
) -> (Vec<Event>, i32, String) {
    run_with_signal(&bin("airlock-apply"), &[], args, signal, act)
}

/// The `airlock-apply` built with fail points (tests/run.sh builds it).
pub fn failpoints_bin() -> PathBuf {
    let path = bin_dir().join("airlock-apply-failpoints");
    assert!(
        path.exists(),
        "{} is missing: build it as tests/run.sh does (`cargo build -p airlock-applier --bin airlock-apply --features failpoints`, then copy target/debug/airlock-apply to that name)",
        path.display()
    );
    path
}

/// Runs `airlock-apply-failpoints ARGS` with `FAILPOINTS` set to `failpoints`.
pub fn airlock_apply_failpoints(failpoints: &str, args: &[&str]) -> Run {
    Run::from(
        Command::new(failpoints_bin())
            .args(args)
            .env("FAILPOINTS", failpoints)
            .output()
            .expect("run airlock-apply-failpoints"),
    )
}

/// As [`apply_with_signal`], with another `program` and extra environment.
pub fn run_with_signal(
    program: &Path,
    env: &[(&str, &str)],
    args: &[&str],
    signal: &str,
    mut act: impl FnMut(&Event, usize) -> bool,
) -> (Vec<Event>, i32, String) {
    use std::io::{BufRead as _, Read as _};
    let mut child = Command::new(program)
        .envs(env.iter().copied())
        .arg("--json")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut events = Vec::new();
    let mut counts = std::collections::HashMap::new();
    for line in stdout.lines() {
        let Ok(line) = line else { break };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let event = Event {
            step: v["step"].as_str().unwrap_or_default().to_owned(),
            status: v["status"].as_str().unwrap_or_default().to_owned(),
        };
        let n = counts
            .entry((event.step.clone(), event.status.clone()))
            .or_insert(0usize);
        *n += 1;
        let nth = *n;
        if act(&event, nth) {
            Command::new("kill")
                .args([&format!("-{signal}"), &child.id().to_string()])
                .status()
                .unwrap();
        }
        events.push(event);
    }
    let code = child.wait().unwrap().code().unwrap_or(-1);
    let stderr = err_thread.join().unwrap();
    (events, code, stderr)
}

/// A tmpfs of `mib` MiB mounted on `dir` until dropped (needs root).
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    pub fn mount(dir: &Path, mib: u64) -> Self {
        fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a {mib} MiB tmpfs on {} failed: this test needs root",
            dir.display()
        );
        Self {
            dir: dir.to_owned(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// A real sshd on 127.0.0.1 with its own host key, `authorized_keys` (the
/// `client_key` only) and config in a temp folder; stopped on drop.
pub struct Sshd {
    child: std::process::Child,
    pub port: u16,
    /// Authorized.
    pub identity: PathBuf,
    /// Not authorized.
    pub stranger: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sshd {
    /// Starts it; with `sftp`, it offers the `sftp` subsystem (OpenSSH 9's
    /// scp copies with it).
    pub fn start(sftp: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for key in ["host_key", "client_key", "stranger_key"] {
            let ok = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(d.join(key))
                .status()
                .unwrap()
                .success();
            assert!(ok, "ssh-keygen failed");
        }
        fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        let port = free_port();
        let mut config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n",
            d = d.display()
        );
        if sftp {
            config.push_str("Subsystem sftp internal-sftp\n");
        }
        fs::write(d.join("sshd_config"), config).unwrap();
        fs::create_dir_all("/run/sshd").unwrap(); // privilege separation folder sshd insists on
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdout(std::process::Stdio::null())
            .stderr(fs::File::create(d.join("sshd.log")).unwrap())
            .spawn()
            .expect("start /usr/sbin/sshd (install openssh-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not listen: {}",
                fs::read_to_string(d.join("sshd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            child,
            port,
            identity: d.join("client_key"),
            stranger: d.join("stranger_key"),
            _dir: dir,
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
