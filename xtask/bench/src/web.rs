//! The web library's timeline over HTTP against the library the `library` bench built:
//! how fast the first page opens and each further page arrives while a person scrolls,
//! beside the in-process search it rests on (same run, same library).

use anyhow::{Context, Result, bail};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One HTTP/1.1 exchange on a fresh connection: (status, set-cookie, body).
fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: &str,
    body: &str,
) -> Result<(u16, String, String)> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nCookie: {cookie}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").context("no HTTP head")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    let set_cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .unwrap_or_default()
        .to_string();
    Ok((status, set_cookie, body.to_string()))
}

/// Timeline latencies: the first page (120 photos) opened `opens` times, and a scroll of
/// `pages` pages in a row, each page timed.
pub struct Timeline {
    pub first_page: Vec<Duration>,
    pub next_pages: Vec<Duration>,
    pub shown: usize,
}

/// Serves the web library in front of the cloud at `cloud_url` and measures its timeline.
pub async fn timeline(
    cloud_url: &str,
    dir: &Path,
    account: &str,
    password: &str,
) -> Result<Timeline> {
    let channel = keepsake_transport::client::connect(cloud_url).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let config = keepsake_web::WebConfig::new(channel, dir.join("web-uploads"));
    tokio::spawn(keepsake_web::serve(
        listener,
        config,
        Arc::new(keepsake_store::SystemClock),
        Arc::new(keepsake_store::OsEntropy),
        std::future::pending(),
    ));
    let form = serde_json::json!({ "account": account, "password": password }).to_string();
    tokio::task::spawn_blocking(move || -> Result<Timeline> {
        let (status, cookie, body) = exchange(addr, "POST", "/api/sign-in", "", &form)?;
        if status != 200 {
            bail!("sign-in answered {status}: {body}");
        }
        let page = |query: &str| -> Result<(Duration, serde_json::Value)> {
            let t = Instant::now();
            let (status, _, body) =
                exchange(addr, "GET", &format!("/api/assets?{query}"), &cookie, "")?;
            let took = t.elapsed();
            if status != 200 {
                bail!("a timeline page answered {status}: {body}");
            }
            Ok((took, serde_json::from_str(&body)?))
        };
        let mut first_page = Vec::new();
        for _ in 0..100 {
            first_page.push(page("size=120")?.0);
        }
        let (mut next_pages, mut shown, mut next) = (Vec::new(), 0, String::new());
        for _ in 0..100 {
            let (took, answer) = page(&format!("size=120&page={next}"))?;
            next_pages.push(took);
            shown += answer["assets"].as_array().map_or(0, Vec::len);
            match answer["next"].as_str() {
                Some(n) => next = n.to_string(),
                None => break,
            }
        }
        first_page.sort();
        next_pages.sort();
        Ok(Timeline {
            first_page,
            next_pages,
            shown,
        })
    })
    .await?
}
