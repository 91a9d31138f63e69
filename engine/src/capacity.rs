//! [`plan_capacity`]: how many shard threads, rings per thread and slots the limits (cores, RLIMIT_NOFILE,
//! `max_connections`) allow.
//!
//! Threads follow the cores (or `Config::shards`), never the connection count: a registered-file table is
//! capped by RLIMIT_NOFILE (20,000 on our machines), so a thread that must hold more connections owns several
//! rings and waits on all of them in one place. On a host with a high limit one ring per thread suffices.

use std::io;

use crate::config::Config;

/// What the limits allow, worked out at start-up and logged.
#[derive(Clone, Debug)]
pub struct Capacity {
    /// Shard threads.
    pub shards: usize,
    /// io_uring rings per shard thread.
    pub rings_per_shard: usize,
    /// Registered file table slots per ring.
    pub slots_per_ring: u32,
    /// Concurrent connections allowed over all shards: `Config::max_connections`, or when that is 0, what the
    /// tables hold (`shards * (slots_per_ring - 64)`: 64 slots per ring are kept back so that a connection
    /// past the limit can still be accepted and answered 503).
    pub max_connections: usize,
    /// The process's RLIMIT_NOFILE (soft limit) at start-up, which caps each ring's file table.
    pub rlimit_nofile: u64,
    /// Provided receive buffers per ring (`Config::recv_buffers`, or what auto chose).
    pub recv_buffers: u16,
}

impl Capacity {
    /// Slots per shard thread, over all its rings.
    pub fn slots_per_shard(&self) -> usize {
        self.rings_per_shard * self.slots_per_ring as usize
    }
}

/// Receive buffers per shard thread under `recv_buffers = 0`.
pub const AUTO_RECV_BUFFERS: u16 = 2048;
/// The fewest receive buffers auto gives a ring.
pub const MIN_AUTO_RECV_BUFFERS: u16 = 256;

/// What `recv_buffers = 0` means per ring for a thread with `rings` rings: AUTO_RECV_BUFFERS per thread (a
/// core can only drain so many receives at once, and every buffer ends up resident as the ring cycles them),
/// shared out, rounded down to a power of two, at least MIN_AUTO_RECV_BUFFERS.
pub fn auto_recv_buffers(rings: usize) -> u16 {
    let share = AUTO_RECV_BUFFERS as usize / rings.max(1);
    let share = share.clamp(MIN_AUTO_RECV_BUFFERS as usize, AUTO_RECV_BUFFERS as usize);
    // Largest power of two <= share.
    (1usize << (usize::BITS - 1 - share.leading_zeros())) as u16
}

/// Slots kept back in each ring's file table so that a connection past max_connections can still be accepted
/// and told 503 instead of being left in the kernel's backlog.
pub(crate) const RESERVED_SLOTS: u32 = 64;

/// A connection id names a slot of its shard in 24 bits.
const MAX_SLOTS_PER_SHARD: usize = 1 << 24;

/// Works out threads, rings and slots from the config and RLIMIT_NOFILE.
pub fn plan_capacity(config: &Config) -> io::Result<Capacity> {
    let rlimit_nofile = crate::ring::nofile_limit();
    let table_max = rlimit_nofile.min(u32::MAX as u64 / 2) as u32;
    let slots = if config.slots_per_shard == 0 { table_max } else { config.slots_per_shard.min(table_max) };
    let slots = slots.min(1 << 24);
    if slots <= RESERVED_SLOTS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("only {slots} file table slots per ring (RLIMIT_NOFILE {rlimit_nofile}); need more than {RESERVED_SLOTS}"),
        ));
    }
    let usable = (slots - RESERVED_SLOTS) as usize;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let shards = if config.shards == 0 { cores } else { config.shards };
    if shards > u16::MAX as usize {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many shards"));
    }
    let rings = if config.max_connections > 0 { config.max_connections.div_ceil(shards * usable).max(1) } else { 1 };
    if rings * slots as usize > MAX_SLOTS_PER_SHARD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} connections need more than {MAX_SLOTS_PER_SHARD} slots per shard: use more shards",
                config.max_connections
            ),
        ));
    }
    if config.recv_large_buffer_size != 0 {
        if config.recv_large_buffer_size <= config.recv_buffer_size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "recv_large_buffer_size ({}) must be larger than recv_buffer_size ({}), or 0 for none",
                    config.recv_large_buffer_size, config.recv_buffer_size
                ),
            ));
        }
        crate::ring::BufRing::check_entries(config.recv_large_buffers, "recv_large_buffers")?;
    }
    let max_connections = if config.max_connections == 0 { shards * usable } else { config.max_connections };
    let recv_buffers = if config.recv_buffers == 0 { auto_recv_buffers(rings) } else { config.recv_buffers };
    Ok(Capacity { shards, rings_per_shard: rings, slots_per_ring: slots, max_connections, rlimit_nofile, recv_buffers })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_recv_buffers_share_a_per_thread_budget() {
        assert_eq!(auto_recv_buffers(1), 2048);
        assert_eq!(auto_recv_buffers(2), 1024);
        assert_eq!(auto_recv_buffers(3), 512);
        assert_eq!(auto_recv_buffers(6), 256);
        // Never below the floor.
        assert_eq!(auto_recv_buffers(26), 256);
        assert_eq!(auto_recv_buffers(0), 2048);
    }

    #[test]
    fn threads_follow_the_cores_and_rings_the_connections() {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let base = Config { listen: None, slots_per_shard: 2064, ..Config::default() };
        let cap = plan_capacity(&base).unwrap();
        assert_eq!((cap.shards, cap.rings_per_shard, cap.slots_per_ring), (cores, 1, 2064));
        assert_eq!(cap.max_connections, cores * 2000);
        // Five times what one ring per thread holds: five rings per thread, never more threads.
        let big = Config { max_connections: cores * 10_000, ..base.clone() };
        let cap = plan_capacity(&big).unwrap();
        assert_eq!((cap.shards, cap.rings_per_shard), (cores, 5));
        assert_eq!(cap.recv_buffers, 256);
        let two = Config { shards: 2, max_connections: 4001, ..base };
        let cap = plan_capacity(&two).unwrap();
        assert_eq!((cap.shards, cap.rings_per_shard, cap.max_connections), (2, 2, 4001));
        assert_eq!(cap.slots_per_shard(), 2 * 2064);
    }

    #[test]
    fn capacity_resolves_auto_recv_buffers() {
        let explicit = Config { recv_buffers: 512, listen: None, ..Config::default() };
        assert_eq!(plan_capacity(&explicit).unwrap().recv_buffers, 512);
        let auto = Config { listen: None, ..Config::default() };
        let cap = plan_capacity(&auto).unwrap();
        assert_eq!(cap.recv_buffers, auto_recv_buffers(cap.rings_per_shard));
        assert!(cap.recv_buffers.is_power_of_two());
    }
}
