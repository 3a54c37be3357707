//! This node's addresses: the IPv4 of the default route's interface.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use anyhow::{Context, Result};

use super::fs::Host;

/// A DNS host name (RFC 1123): labels of letters, digits and inner
/// hyphens, 63 characters each, 253 in all, one trailing dot allowed. A
/// dotted name of numbers only is a mistyped IPv4 address, not a name.
pub fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    let labels: Vec<&str> = name.split('.').collect();
    name.len() <= 253
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        && !labels.iter().all(|l| l.chars().all(|c| c.is_ascii_digit()))
}

/// Name of the interface that carries the default route, from
/// `/proc/net/route` (lowest metric wins).
pub fn default_route_interface(route_table: &str) -> Option<String> {
    route_table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
            if f.len() >= 8 && f[1] == "00000000" && f[7] == "00000000" {
                let metric: u32 = f[6].parse().unwrap_or(u32::MAX);
                Some((metric, f[0].to_string()))
            } else {
                None
            }
        })
        .min()
        .map(|(_, iface)| iface)
}

/// The IPv4 address of the default route's interface.
pub fn default_route_ipv4(host: &Host) -> Result<Ipv4Addr> {
    let table = host
        .read_capped(Path::new("/proc/net/route"), super::fs::Cap::FILE)?
        .context("reading /proc/net/route: no such file")?;
    let table = String::from_utf8_lossy(&table);
    let iface = default_route_interface(&table)
        .context("this host has no default route, so its address is unknown; pass --ip")?;
    let addrs = nix::ifaddrs::getifaddrs().context("listing network interfaces")?;
    for a in addrs {
        if a.interface_name != iface {
            continue;
        }
        if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
            return Ok(sin.ip());
        }
    }
    anyhow::bail!("interface {iface} (default route) has no IPv4 address; pass --ip")
}

/// The addresses of this host's interfaces, read under the root: IPv4
/// from the kernel's local routing table (`/proc/net/fib_trie`, the
/// `/32 host LOCAL` entries), IPv6 from `/proc/net/if_inet6`. `Ok(None)`
/// when the kernel's tables are not there (no /proc under the root).
pub fn local_addresses(host: &Host) -> Result<Option<Vec<IpAddr>>> {
    use super::fs::Cap;
    let Some(trie) = host.read_capped(Path::new("/proc/net/fib_trie"), Cap::FILE)? else {
        return Ok(None);
    };
    let mut out: Vec<IpAddr> = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in String::from_utf8_lossy(&trie).lines() {
        let line = line.trim_start_matches([' ', '|', '+', '-']);
        if let Ok(ip) = line.trim().parse::<Ipv4Addr>() {
            last = Some(ip);
        } else if line.trim() == "/32 host LOCAL" {
            if let Some(ip) = last.filter(|ip| !out.contains(&IpAddr::V4(*ip))) {
                out.push(IpAddr::V4(ip));
            }
        }
    }
    if let Some(v6) = host.read_capped(Path::new("/proc/net/if_inet6"), Cap::FILE)? {
        for line in String::from_utf8_lossy(&v6).lines() {
            let Some(hex) = line.split_whitespace().next().filter(|h| h.len() == 32) else {
                continue;
            };
            if let Ok(bits) = u128::from_str_radix(hex, 16) {
                out.push(IpAddr::V6(std::net::Ipv6Addr::from(bits)));
            }
        }
    }
    Ok(Some(out))
}

/// A private IPv4 (RFC 1918, or the shared 100.64.0.0/10 of carrier NAT).
pub fn is_private_ipv4(ip: Ipv4Addr) -> bool {
    ip.is_private() || (ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_default_route_with_the_lowest_metric() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
ens6\t00000000\t0101000A\t0003\t0\t0\t200\t00000000\t0\t0\t0\n\
ens5\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n";
        assert_eq!(default_route_interface(table).as_deref(), Some("ens5"));
        assert_eq!(default_route_interface("Iface\tDestination\n"), None);
    }

    #[test]
    fn private_addresses() {
        for ip in ["10.0.1.5", "172.31.0.1", "192.168.1.1", "100.64.0.1"] {
            assert!(is_private_ipv4(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "100.128.0.1", "172.32.0.1"] {
            assert!(!is_private_ipv4(ip.parse().unwrap()), "{ip}");
        }
    }
}
