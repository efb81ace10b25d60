//! An attacker who knows only the URL, as tests and the flood benchmark play it (the benchmark
//! includes this file too).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One attack on the service at `addr`: the headers of a delivery (well formed, timestamped now,
/// a signature that matches nothing) announcing a body of `length` bytes, then all of it but the
/// last byte as fast as the service takes it, then a stall until the service answers or closes.
/// Returns how the service ended it: the status of its answer, `closed` without one, or
/// `refused` when no connection could be opened.
pub async fn large_unsigned_body(addr: &str, length: usize) -> String {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return "refused".to_owned();
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let head = format!(
        "POST /webhooks/replicate HTTP/1.1\r\nHost: inbox\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\nwebhook-id: msg_{:016x}\r\nwebhook-timestamp: {now}\r\n\
         webhook-signature: v1,{}=\r\n\r\n{{",
        fastrand::u64(..),
        "A".repeat(43)
    );
    let chunk = vec![b' '; 64 << 10];
    let mut sent = 1;
    let mut writing = stream.write_all(head.as_bytes()).await.is_ok();
    while writing && sent < length - 1 {
        let n = chunk.len().min(length - 1 - sent);
        writing = stream.write_all(&chunk[..n]).await.is_ok();
        sent += n;
    }
    let mut answer = [0u8; 12];
    match stream.read(&mut answer).await {
        Ok(n) if n >= 12 => String::from_utf8_lossy(&answer[9..12]).into_owned(),
        _ => "closed".to_owned(),
    }
}
