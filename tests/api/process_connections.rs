//! The public port under connection abuse: silent sockets, slow headers, idle keep-alive,
//! more connections than descriptors.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{fresh_database, now, random_hex, sign_php};
use crate::process::{self, env, Server};

/// Waits for the server to close `conn` (EOF or reset); false if it is still open after `limit`.
async fn closed_within(conn: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

async fn signed_callback(server: &Server, secret: &str) -> u16 {
    let body = format!(
        r#"{{"response_code":"SP000","event":"disbursement","data":{{"transaction_id":"{}","transaction_status":{{"code":"00"}}}}}}"#,
        random_hex(8)
    );
    let ts = now().to_string();
    let sig = sign_php(secret, "/webhooks/singapay", "tok", &body, &ts);
    reqwest::Client::new()
        .post(server.url("/webhooks/singapay"))
        .header("x-signature", sig)
        .header("x-timestamp", ts)
        .header("authorization", "Bearer tok")
        .body(body)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_idle_keep_alive_connections_are_closed_at_their_deadline() {
    let (server, secret, _db) = process::serve_fresh(&[("HEADER_READ_TIMEOUT_SECS", "1")]).await;
    let addr = ("127.0.0.1", server.port);
    // Slowloris: a header that never ends, one byte now and then.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"POST /webhooks/singapay HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let trickle = async {
        for b in b"X-Slow: 1" {
            tokio::time::sleep(Duration::from_millis(400)).await;
            if slow.write_all(&[*b]).await.is_err() {
                break;
            }
        }
    };
    trickle.await;
    assert!(closed_within(&mut slow, Duration::from_secs(20)).await, "a trickled header is cut off");
    // A connection that opens and says nothing.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(20)).await, "a silent connection is closed");
    // Keep-alive: one request answered, then nothing.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut answer = vec![0u8; 1024];
    let n = idle.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer[..n]));
    assert!(closed_within(&mut idle, Duration::from_secs(20)).await, "an idle keep-alive connection is closed");
    // Real callbacks still get through.
    assert_eq!(signed_callback(&server, &secret).await, 200);
}

/// Two thousand connections that say nothing, against a receiver allowed 1,024
/// descriptors: at the cap, the oldest silent connection makes way for each new one, so a
/// real callback still gets in (nginx does the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_connections_beyond_the_descriptor_limit_make_way_for_callbacks() {
    let (db_url, _db) = fresh_database().await;
    let secret = format!("cs_{}", random_hex(8));
    let port = singapay_webhooks::embedded_pg::free_port().unwrap();
    let vars = env(&[
        ("DATABASE_URL", &db_url),
        ("SINGAPAY_WEBHOOK_SECRETS", &secret),
        ("LISTEN_ADDR", &format!("127.0.0.1:{port}")),
    ]);
    let mut child = process::command("prlimit", &vars)
        .args(["--nofile=1024:1024", "--", process::BIN, "serve"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("prlimit (util-linux) runs the binary");
    let logs: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let stderr = child.stderr.take().unwrap();
    let sink = logs.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let mut server = Server { child, logs, port };
    server.wait_ready().await;

    let opening: Vec<_> = (0..2000)
        .map(|_| {
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(("127.0.0.1", port))).await
            })
        })
        .collect();
    let mut silent = Vec::new();
    for o in opening {
        if let Ok(Ok(Ok(conn))) = o.await {
            silent.push(conn);
        }
    }
    assert!(silent.len() > 1024, "only {} silent connections were opened", silent.len());
    assert_eq!(signed_callback(&server, &secret).await, 200, "a callback gets in past {} silent sockets", silent.len());
    // The server's log is read by a thread as it comes: give the warning a moment to arrive.
    let warned =
        |text: &str| text.contains("connection limit reached") || text.contains("accepting a connection failed");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !warned(&server.log_text()) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = server.log_text();
    assert!(warned(&text), "{text}");
    drop(silent);
}
