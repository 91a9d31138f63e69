//! The connection state machine (engine/src/proto/conn.rs) in the server role, driven by an arbitrary script:
//! the peer's bytes chopped at arbitrary points, clock steps and timer runs, sends, pings, closes and EOF.
//! The checks are in fuzz/src/lib.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether::proto::Role;

fuzz_target!(|script: tether_fuzz::Script| {
    tether_fuzz::run(Role::Server, &script);
});
