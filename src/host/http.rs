//! A small blocking HTTP probe: "does something answer HTTP on this URL".
//! Used to wait for AMS after a restart; any HTTP status counts as an answer.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A parsed `http://host[:port]/path` URL (no TLS: the probe is local).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl HttpUrl {
    pub fn parse(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("{url} is not an http:// URL"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let end = v6
                .find(']')
                .with_context(|| format!("{url}: unclosed '['"))?;
            let port = v6[end + 1..].strip_prefix(':').unwrap_or("80");
            (v6[..end].to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p),
                None => (authority.to_string(), "80"),
            }
        };
        let port: u16 = port
            .parse()
            .with_context(|| format!("{url}: port {port} is not a number"))?;
        if host.is_empty() {
            bail!("{url}: no host");
        }
        Ok(HttpUrl {
            host,
            port,
            path: path.to_string(),
        })
    }

    fn addrs(&self) -> Result<Vec<SocketAddr>> {
        Ok((self.host.as_str(), self.port)
            .to_socket_addrs()
            .with_context(|| format!("resolving {}", self.host))?
            .collect())
    }
}

/// One GET; returns the status code.
pub fn get_status(url: &HttpUrl, timeout: Duration) -> Result<u16> {
    let addr = *url
        .addrs()?
        .first()
        .with_context(|| format!("{} has no address", url.host))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    // One write: a request split over several segments, half read by a
    // server that then closes, turns into a reset instead of an answer.
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ams-agent\r\nConnection: close\r\n\r\n",
        url.path, url.host
    );
    s.write_all(request.as_bytes())?;
    let mut head = [0u8; 64];
    let n = match s.read(&mut head) {
        Ok(n) => n,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            bail!(
                "{addr} accepted the connection but sent no HTTP answer within {}",
                humantime::format_duration(Duration::from_millis(timeout.as_millis() as u64))
            )
        }
        Err(e) => return Err(e).context("reading the HTTP answer"),
    };
    let line = String::from_utf8_lossy(&head[..n]);
    let code = line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("{addr} did not answer HTTP"))?;
    Ok(code)
}

/// Polls until the URL answers HTTP, or fails after `deadline` naming what it
/// waited for.
pub fn wait_until_answers(url: &str, deadline: Duration, what: &str) -> Result<u16> {
    let parsed = HttpUrl::parse(url)?;
    let start = Instant::now();
    loop {
        let left = deadline.saturating_sub(start.elapsed());
        let last_err = match get_status(
            &parsed,
            left.min(Duration::from_secs(3))
                .max(Duration::from_millis(100)),
        ) {
            Ok(code) => return Ok(code),
            Err(e) => format!("{e:#}"),
        };
        if start.elapsed() >= deadline {
            bail!(
                "{what} did not answer on {url} within {} (last error: {last_err})",
                humantime::format_duration(deadline)
            );
        }
        std::thread::sleep(
            Duration::from_millis(250).min(deadline.saturating_sub(start.elapsed())),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn parses_urls() {
        let u = HttpUrl::parse("http://127.0.0.1:5080/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 5080, "/")
        );
        let u = HttpUrl::parse("http://[::1]:81").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("::1", 81, "/"));
        assert!(HttpUrl::parse("https://x").is_err());
    }

    #[test]
    fn waits_then_gives_up_with_a_clear_message() {
        // A port nobody listens on: bind then drop.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/");
        let start = Instant::now();
        let err = wait_until_answers(&url, Duration::from_millis(600), "AMS").unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(3));
        assert!(err.to_string().contains("AMS did not answer"), "{err}");
    }

    #[test]
    fn any_status_is_an_answer() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 512];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
        });
        let code = wait_until_answers(
            &format!("http://127.0.0.1:{port}/"),
            Duration::from_secs(5),
            "AMS",
        )
        .unwrap();
        assert_eq!(code, 404);
    }
}
