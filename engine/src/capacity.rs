//! [`plan_capacity`]: how many shards and slots the limits (RLIMIT_NOFILE, `max_connections`) allow.

use std::io;

use crate::config::Config;

/// What the limits allow, worked out at start-up and logged.
#[derive(Clone, Debug)]
pub struct Capacity {
    pub shards: usize,
    pub slots_per_shard: u32,
    pub max_connections: usize,
    pub rlimit_nofile: u64,
    /// Provided receive buffers per shard (`Config::recv_buffers`, or what auto chose).
    pub recv_buffers: u16,
}

/// Receive buffers per shard under `recv_buffers = 0` while shards <= cores.
pub const AUTO_RECV_BUFFERS: u16 = 2048;
/// The fewest receive buffers auto gives a shard.
pub const MIN_AUTO_RECV_BUFFERS: u16 = 256;

/// What `recv_buffers = 0` means for `shards` shards on `cores` cores: AUTO_RECV_BUFFERS per core, shared out,
/// rounded down to a power of two, at least MIN_AUTO_RECV_BUFFERS.
pub fn auto_recv_buffers(shards: usize, cores: usize) -> u16 {
    let share = AUTO_RECV_BUFFERS as usize * cores.max(1) / shards.max(1);
    let share = share.clamp(MIN_AUTO_RECV_BUFFERS as usize, AUTO_RECV_BUFFERS as usize);
    // Largest power of two <= share.
    (1usize << (usize::BITS - 1 - share.leading_zeros())) as u16
}

/// Slots kept back in each ring's file table so that a connection past max_connections can still be accepted
/// and told 503 instead of being left in the kernel's backlog.
pub(crate) const RESERVED_SLOTS: u32 = 64;

/// Works out shards and slots from the config and RLIMIT_NOFILE.
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
    let mut shards = if config.shards == 0 { cores } else { config.shards };
    if config.max_connections > 0 {
        shards = shards.max(config.max_connections.div_ceil(usable));
    }
    if shards > u16::MAX as usize {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many shards"));
    }
    let max_connections = if config.max_connections == 0 { shards * usable } else { config.max_connections };
    let recv_buffers = if config.recv_buffers == 0 { auto_recv_buffers(shards, cores) } else { config.recv_buffers };
    Ok(Capacity { shards, slots_per_shard: slots, max_connections, rlimit_nofile, recv_buffers })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_recv_buffers_share_a_per_core_budget() {
        // No more shards than cores: the full count each.
        assert_eq!(auto_recv_buffers(1, 2), 2048);
        assert_eq!(auto_recv_buffers(2, 2), 2048);
        assert_eq!(auto_recv_buffers(8, 16), 2048);
        // More shards than cores (capacity-driven): the per-core budget shared out, as a power of two.
        assert_eq!(auto_recv_buffers(4, 2), 1024);
        assert_eq!(auto_recv_buffers(11, 2), 256);
        assert_eq!(auto_recv_buffers(3, 2), 1024);
        // Never below the floor.
        assert_eq!(auto_recv_buffers(26, 2), 256);
        assert_eq!(auto_recv_buffers(0, 0), 2048);
    }

    #[test]
    fn capacity_resolves_auto_recv_buffers() {
        let explicit = Config { recv_buffers: 512, listen: None, ..Config::default() };
        assert_eq!(plan_capacity(&explicit).unwrap().recv_buffers, 512);
        let auto = Config { listen: None, ..Config::default() };
        let cap = plan_capacity(&auto).unwrap();
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        assert_eq!(cap.recv_buffers, auto_recv_buffers(cap.shards, cores));
        assert!(cap.recv_buffers.is_power_of_two());
    }
}
