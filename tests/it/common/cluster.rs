//! Servers a test owns, so it can stop and start them under load: a
//! private Postgres cluster (initdb and pg_ctl of the installed server, in a
//! temporary directory, on a free port) and a private `redis-server`.
//! Both are stopped, and the cluster's directory removed, on drop, also
//! when the test panics.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// A TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Where the server's binaries are: `PG_BIN`, else `pg_config --bindir`,
/// else the newest `/usr/lib/postgresql/<version>/bin`.
fn pg_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return dir.into();
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let v = e.file_name().to_str()?.parse().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("initdb").exists().then_some((v, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .expect("no Postgres server binaries (set PG_BIN)")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A Postgres cluster of its own: superuser `postgres`, trust
/// authentication, TCP on 127.0.0.1 only, fsync off (commits still wait
/// for their WAL to be written).
pub struct PgCluster {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    /// initdb refuses to run as root: then everything runs as `postgres`.
    as_postgres: bool,
}

impl PgCluster {
    /// Creates and starts a cluster; panics with initdb's or the server's
    /// output when it cannot.
    pub fn start() -> PgCluster {
        let dir = std::env::temp_dir().join(format!("tenantry-pg-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("cluster directory");
        let as_postgres = is_root();
        let cluster = PgCluster {
            port: free_port(),
            dir,
            bin: pg_bin(),
            as_postgres,
        };
        if as_postgres {
            cluster.expect_ok(
                "chown",
                &["-R", "postgres:postgres", cluster.dir_str()],
                false,
            );
        }
        let data = cluster.data_str();
        cluster.expect_ok(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            true,
        );
        cluster.start_server();
        cluster
    }

    fn dir_str(&self) -> &str {
        self.dir.to_str().expect("utf-8 temp dir")
    }

    fn data_str(&self) -> String {
        self.dir.join("data").to_string_lossy().into_owned()
    }

    /// A superuser URL of `database` on this cluster.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The superuser URL of the `postgres` database.
    pub fn admin_url(&self) -> String {
        self.url("postgres")
    }

    fn command(&self, program: &str, server_tool: bool) -> Command {
        let path = if server_tool {
            self.bin.join(program)
        } else {
            Path::new(program).to_owned()
        };
        if self.as_postgres && server_tool {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn run(&self, program: &str, args: &[&str], server_tool: bool) -> Output {
        self.command(program, server_tool)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
    }

    fn expect_ok(&self, program: &str, args: &[&str], server_tool: bool) {
        let out = self.run(program, args, server_tool);
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start_server(&self) {
        // fsync off only spares the disk: a stopped server's writes are in
        // the OS cache. synchronous_commit stays on: off, a commit is
        // acknowledged before its WAL is written, and an immediate stop loses
        // it (the outage test saw exactly that).
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c fsync=off -c max_connections=50",
            self.port,
            self.dir_str()
        );
        let log = self.dir.join("server.log");
        let out = self.run(
            "pg_ctl",
            &[
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                &self.data_str(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &options,
            ],
            true,
        );
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default(),
        );
    }

    /// Stops the server at once, as a crash would: backends are killed
    /// (clients see their connections drop), and the next start recovers.
    pub fn stop_immediate(&self) {
        self.expect_ok(
            "pg_ctl",
            &["stop", "-w", "-m", "immediate", "-D", &self.data_str()],
            true,
        );
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Whether or not it runs: a failed stop just means it was stopped.
        let _ = self.run(
            "pg_ctl",
            &["stop", "-w", "-m", "immediate", "-D", &self.data_str()],
            true,
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private `redis-server` (no persistence) on a fixed port, so it can be
/// stopped and started again where its clients expect it.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts on a free port.
    pub fn start() -> RedisServer {
        let mut r = RedisServer {
            port: free_port(),
            child: None,
        };
        r.start_again();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server (again, empty) on its port and waits until it listens.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server is running");
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (no shutdown: what it held is gone, as in a crash).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
