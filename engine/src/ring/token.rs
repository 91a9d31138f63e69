//! `user_data` encoding: which operation a completion belongs to, for which slot and generation.
//!
//! Layout (64 bits): op (8) | generation (24) | slot (32). The generation lets the shard recognise a
//! completion that belongs to an earlier occupant of a reused slot.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Close = 5,
    Wake = 6,
    PeerName = 7,
    Socket = 8,
    Bind = 9,
    Connect = 10,
    /// Completions we do not care about (cancel requests).
    Ignore = 11,
    /// A process descriptor installed into the table (an adopted socket); the slot field is the tag.
    Install = 12,
    /// A multishot receive into the large provided buffers (its completions carry their buffers).
    RecvLarge = 13,
}

impl Op {
    fn from_u8(v: u8) -> Option<Op> {
        Some(match v {
            1 => Op::Accept,
            2 => Op::Recv,
            3 => Op::Send,
            5 => Op::Close,
            6 => Op::Wake,
            7 => Op::PeerName,
            8 => Op::Socket,
            9 => Op::Bind,
            10 => Op::Connect,
            11 => Op::Ignore,
            12 => Op::Install,
            13 => Op::RecvLarge,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    pub op: Op,
    pub slot: u32,
    pub generation: u32,
}

impl Token {
    pub fn new(op: Op, slot: u32, generation: u32) -> Token {
        Token { op, slot, generation: generation & 0xff_ffff }
    }
    pub fn encode(self) -> u64 {
        ((self.op as u64) << 56) | ((self.generation as u64 & 0xff_ffff) << 32) | self.slot as u64
    }
    pub fn decode(v: u64) -> Option<Token> {
        Some(Token { op: Op::from_u8((v >> 56) as u8)?, generation: ((v >> 32) & 0xff_ffff) as u32, slot: v as u32 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for op in [Op::Accept, Op::Recv, Op::Send, Op::Close, Op::Connect, Op::RecvLarge] {
            let t = Token::new(op, 19_999, 0xab_cdef);
            assert_eq!(Token::decode(t.encode()), Some(t));
        }
        assert_eq!(Token::decode(0), None);
    }
}
