//! Free loopback ports for local clusters (the demo's fallbacks, tests, `quorumkv check`).
//!
//! Why not port 0: the kernel hands out port-0 listeners from the ephemeral range, the same
//! range outgoing connections take their local ports from. A harness that picks a port that
//! way, kills a node and restarts it on the same port can find the port taken by some client's
//! connection in between ("Address already in use"). Ports below the ephemeral range are never
//! given to outgoing connections, so a port found free here stays usable across restarts.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port tried.
const FLOOR: u32 = 10_000;

/// A loopback port that is free now and below the kernel's ephemeral range. Each call in a
/// process returns a different port; processes start at different offsets, so concurrent
/// test binaries rarely probe the same ports (a taken port is skipped anyway).
pub fn free_loopback_port() -> std::io::Result<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ceiling = ephemeral_low().max(FLOOR + 1_000);
    let span = ceiling - FLOOR;
    let start = (std::process::id().wrapping_mul(7_919)) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = FLOOR + (start + n) % span;
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return Ok(port as u16);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrNotAvailable,
        format!("no free loopback port between {FLOOR} and {ceiling}"),
    ))
}

/// The first port of the kernel's ephemeral range (32768 if it cannot be read).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|lo| lo.parse().ok()))
        .filter(|&lo: &u32| lo > FLOOR && lo <= 65_535)
        .unwrap_or(32_768)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..20).map(|_| free_loopback_port().expect("a port")).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        for p in ports {
            assert!(u32::from(p) >= FLOOR && u32::from(p) < ephemeral_low().max(FLOOR + 1_000));
            TcpListener::bind(("127.0.0.1", p)).expect("still free");
        }
    }
}
