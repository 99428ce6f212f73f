//! A real `redis-server` for the tests, on a free loopback port in a temp dir (as in the
//! features tests).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> Option<PathBuf> {
    std::env::var_os("REDIS_SERVER_BIN")
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .or_else(|| Some(PathBuf::from("/usr/bin/redis-server")).filter(|p| p.exists()))
}

/// Starts a server, or returns `None` (saying why) when no redis-server is installed.
pub async fn start_redis() -> Option<RedisServer> {
    let Some(bin) = binary() else {
        eprintln!("SKIP: no redis-server (set REDIS_SERVER_BIN or run scripts/env.sh)");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(&bin)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let server = RedisServer { child, url: format!("redis://127.0.0.1:{port}"), _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(client) = redis::Client::open(server.url.as_str())
            && let Ok(mut conn) = client.get_multiplexed_async_connection().await
            && redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok()
        {
            return Some(server);
        }
        assert!(Instant::now() < deadline, "redis-server did not answer on {}", server.url);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
