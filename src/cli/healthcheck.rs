//! `healthcheck`: asks the local receiver's `/readyz` (or `/healthz` with `--live`) on its
//! admin listener (`ADMIN_LISTEN_ADDR`; with `off`, on `LISTEN_ADDR`) and exits 0 only on
//! 200, for the container HEALTHCHECK (no curl in the image).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Env;

pub async fn healthcheck(env: &Env<'_>, live: bool) -> Result<()> {
    // The admin listener when there is one: the public port may refuse this host
    // (ALLOWED_SOURCE_CIDRS).
    let settings = env.settings(false)?;
    let addr = super::local(settings.admin_listen_addr.unwrap_or(settings.listen_addr));
    let path = if live { "/healthz" } else { "/readyz" };
    let ask = async {
        let mut stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        anyhow::Ok(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(5), ask).await.context("no answer within 5 s")??;
    let text = String::from_utf8_lossy(&answer);
    let status_line = text.lines().next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        bail!("{addr} {path}: {status_line} {body}")
    }
}
