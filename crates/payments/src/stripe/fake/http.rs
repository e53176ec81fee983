//! A minimal HTTP/1.1 server: one request per connection, so that a fault can hang or drop the
//! connection at exactly the chosen moment (which a full server framework does not allow).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{api, Fault, RecordedRequest, Shared};

/// An answer, before it is written.
pub(super) struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(connection(stream, shared.clone()));
    }
}

async fn connection(mut stream: TcpStream, shared: Arc<Shared>) {
    let Some(req) = read_request(&mut stream).await else { return };
    let latency = shared.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let fault = shared.next_fault();
    if fault == Some(Fault::CloseBeforeExecuting) {
        return;
    }
    let resp = api::handle(&shared, req, fault.as_ref());
    match fault {
        Some(Fault::Hang) => {
            // Past any sensible client timeout; the connection is held open, unanswered.
            tokio::time::sleep(Duration::from_secs(120)).await;
        }
        Some(Fault::CloseAfterExecuting) => {}
        Some(Fault::MalformedJson) => {
            let mut resp = resp;
            resp.body.truncate(resp.body.len() / 2);
            write(&mut stream, resp).await;
        }
        _ => write(&mut stream, resp).await,
    }
}

async fn write(stream: &mut TcpStream, resp: Response) {
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (k, v) in resp.headers.iter().chain(&[
        ("Content-Type".to_owned(), "application/json".to_owned()),
        ("Content-Length".to_owned(), resp.body.len().to_string()),
        ("Connection".to_owned(), "close".to_owned()),
    ]) {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&resp.body).await;
    let _ = stream.shutdown().await;
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Request Failed",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        _ => "Status",
    }
}

fn form(s: &str) -> Vec<(String, String)> {
    serde_urlencoded::from_str(s).unwrap_or_default()
}

async fn read_request(stream: &mut TcpStream) -> Option<RecordedRequest> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 1 << 20 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).ok()?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_owned(), first.next()?);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize =
        headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Some(RecordedRequest {
        method,
        path: path.to_owned(),
        query: form(query),
        form: form(std::str::from_utf8(&body).ok()?),
        headers,
    })
}
