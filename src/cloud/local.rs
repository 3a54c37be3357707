//! The host's own facts, for when no metadata service answers: the source
//! address the kernel would use to reach MongoDB (the local address of a
//! connected UDP socket: `connect()` on UDP only picks the route, no
//! packet is sent), and `/etc/machine-id`.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::host::Host;

/// How long a name lookup of the MongoDB host may take here (the lookup
/// runs on a thread of its own and is abandoned after this).
pub const DNS_DEADLINE: Duration = Duration::from_millis(500);

/// Reads `/etc/machine-id` (under the root): 32 lowercase hex digits.
pub fn machine_id(host: &Host) -> Result<Option<String>> {
    let Some(bytes) = host.read_optional(Path::new("/etc/machine-id"))? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&bytes).trim().to_string();
    if text.len() == 32 && text.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(Some(text.to_ascii_lowercase()))
    } else {
        Ok(None)
    }
}

/// The first host of a MongoDB URI's seed list, with its port (27017 by
/// default), parsed by the driver without any network. None for a
/// `mongodb+srv://` URI (the real hosts come from DNS) or a Unix socket.
pub fn mongo_seed(uri: &str) -> Option<(String, u16)> {
    use mongodb::options::{ConnectionString, HostInfo, ServerAddress};
    let cs = ConnectionString::parse(uri).ok()?;
    match cs.host_info {
        HostInfo::HostIdentifiers(hosts) => match hosts.into_iter().next()? {
            ServerAddress::Tcp { host, port } => Some((host, port.unwrap_or(27017))),
            _ => None,
        },
        _ => None,
    }
}

/// The address `host` resolves to, IPv4 first, within [`DNS_DEADLINE`].
fn resolve(host: &str, port: u16) -> Result<SocketAddr> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let (tx, rx) = mpsc::channel();
    let name = host.to_string();
    std::thread::spawn(move || {
        let _ = tx.send(
            (name.as_str(), port)
                .to_socket_addrs()
                .map(|a| a.collect::<Vec<_>>()),
        );
    });
    let addrs = match rx.recv_timeout(DNS_DEADLINE) {
        Ok(r) => r.with_context(|| format!("resolving {host}"))?,
        Err(_) => bail!(
            "resolving {host} took longer than {}",
            crate::human::show_duration(DNS_DEADLINE)
        ),
    };
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .with_context(|| format!("{host} has no address"))
}

/// The source address the kernel picks to reach `host:port`. A UDP
/// `connect()` sends nothing; it only binds the socket to the route.
pub fn route_source(host: &str, port: u16) -> Result<IpAddr> {
    let to = resolve(host, port)?;
    let any: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let sock = UdpSocket::bind(any).context("opening a UDP socket")?;
    sock.connect(to)
        .with_context(|| format!("finding the route to {to} (no route?)"))?;
    Ok(sock
        .local_addr()
        .context("reading the socket's address")?
        .ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_comes_from_the_drivers_parser() {
        assert_eq!(
            mongo_seed("mongodb://u@10.0.1.5,10.0.1.6:27018/?replicaSet=rs"),
            Some(("10.0.1.5".into(), 27017))
        );
        assert_eq!(
            mongo_seed("mongodb://[::1]:27019"),
            Some(("::1".into(), 27019))
        );
        assert_eq!(mongo_seed("mongodb+srv://cluster.example.com"), None);
        assert_eq!(mongo_seed("not a uri"), None);
    }

    #[test]
    fn the_route_to_loopback_leaves_from_loopback() {
        let ip = route_source("127.0.0.1", 27017).unwrap();
        assert!(ip.is_loopback(), "{ip}");
    }
}
