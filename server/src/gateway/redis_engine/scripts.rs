//! Key names and the Lua scripts of the Redis engine (each runs atomically in Redis).

use std::sync::LazyLock;

use redis::Script;

/// Keys and PUB/SUB channel names of one gateway, under its prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
    /// In a Redis Cluster the channel part is a hash tag (`{channel}`), as Centrifugo writes it: a channel's
    /// stream, meta, presence keys and PUB/SUB channel then share one slot, which its Lua scripts need.
    cluster: bool,
}

impl Keys {
    pub fn new(prefix: String, cluster: bool) -> Keys {
        Keys { prefix, cluster }
    }

    fn key(&self, kind: &str, channel: &str) -> String {
        if self.cluster {
            format!("{}.{kind}.{{{channel}}}", self.prefix)
        } else {
            format!("{}.{kind}.{channel}", self.prefix)
        }
    }

    /// The PUB/SUB channel of `channel`.
    pub fn pubsub(&self, channel: &str) -> String {
        self.key("client", channel)
    }

    /// The app channel a PUB/SUB channel name belongs to.
    pub fn channel_of<'a>(&self, pubsub: &'a str) -> Option<&'a str> {
        let rest = pubsub.strip_prefix(&self.prefix)?.strip_prefix(".client.")?;
        if self.cluster {
            rest.strip_prefix('{')?.strip_suffix('}')
        } else {
            Some(rest)
        }
    }

    pub fn stream(&self, channel: &str) -> String {
        self.key("stream", channel)
    }

    pub fn meta(&self, channel: &str) -> String {
        self.key("stream.meta", channel)
    }

    pub fn presence_data(&self, channel: &str) -> String {
        self.key("presence.data", channel)
    }

    pub fn presence_expire(&self, channel: &str) -> String {
        self.key("presence.expire", channel)
    }
}

/// KEYS: stream, meta. ARGV: payload (without offset), history size, history ttl (s), meta ttl (s, 0 =
/// none), an epoch to use if the stream has none, the PUB/SUB channel, the publish command (`publish`, or
/// `spublish` in a cluster). Appends with the next offset and
/// publishes `__p1:{offset}:{epoch}__{payload}` in the same step, so offsets and delivery order agree.
/// Returns {offset, epoch}.
pub static PUBLISH_WITH_HISTORY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local epoch = redis.call("hget", KEYS[2], "e")
if not epoch then
  epoch = ARGV[5]
  redis.call("hset", KEYS[2], "e", epoch)
end
local offset = redis.call("hincrby", KEYS[2], "s", 1)
if ARGV[4] ~= "0" then redis.call("expire", KEYS[2], ARGV[4]) end
redis.call("xadd", KEYS[1], "MAXLEN", ARGV[2], offset, "d", ARGV[1])
redis.call("expire", KEYS[1], ARGV[3])
redis.call(ARGV[7], ARGV[6], "__p1:" .. offset .. ":" .. epoch .. "__" .. ARGV[1])
return {offset, epoch}
"#,
    )
});

/// KEYS: stream, meta. ARGV: an epoch to create if there is none, meta ttl (s, 0 = none), op ("" = position
/// only, "fwd" = XRANGE, "rev" = XREVRANGE), start, end, count. Returns {top, epoch, entries}.
pub static READ_STREAM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local epoch = redis.call("hget", KEYS[2], "e")
if not epoch then
  epoch = ARGV[1]
  redis.call("hset", KEYS[2], "e", epoch)
  if ARGV[2] ~= "0" then redis.call("expire", KEYS[2], ARGV[2]) end
end
local top = redis.call("hget", KEYS[2], "s")
if not top then top = "0" end
local entries = {}
if ARGV[3] == "fwd" then
  entries = redis.call("xrange", KEYS[1], ARGV[4], ARGV[5], "COUNT", ARGV[6])
elseif ARGV[3] == "rev" then
  entries = redis.call("xrevrange", KEYS[1], ARGV[4], ARGV[5], "COUNT", ARGV[6])
end
return {top, epoch, entries}
"#,
    )
});

/// KEYS: presence data, presence expire. ARGV: ttl (s), expire-at (unix s), then client, info pairs.
pub static PRESENCE_ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
for i = 3, #ARGV, 2 do
  redis.call("hset", KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call("zadd", KEYS[2], ARGV[2], ARGV[i])
end
redis.call("expire", KEYS[1], ARGV[1])
redis.call("expire", KEYS[2], ARGV[1])
return 1
"#,
    )
});

/// KEYS: presence data, presence expire. ARGV: client.
pub static PRESENCE_REMOVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call("hdel", KEYS[1], ARGV[1])
redis.call("zrem", KEYS[2], ARGV[1])
return 1
"#,
    )
});

/// KEYS: presence data, presence expire. ARGV: now (unix s). Drops expired entries (a dead node's), then
/// returns the rest as a flat client, info list.
pub static PRESENCE_GET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local expired = redis.call("zrangebyscore", KEYS[2], "0", ARGV[1])
if #expired > 0 then
  for _, c in ipairs(expired) do redis.call("hdel", KEYS[1], c) end
  redis.call("zremrangebyscore", KEYS[2], "0", ARGV[1])
end
return redis.call("hgetall", KEYS[1])
"#,
    )
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_are_centrifugos_and_hash_tagged_in_a_cluster() {
        let k = Keys::new("centrifugo".into(), false);
        assert_eq!(k.pubsub("chat:1"), "centrifugo.client.chat:1");
        assert_eq!(k.stream("chat:1"), "centrifugo.stream.chat:1");
        assert_eq!(k.meta("chat:1"), "centrifugo.stream.meta.chat:1");
        assert_eq!(k.presence_data("chat:1"), "centrifugo.presence.data.chat:1");
        assert_eq!(k.channel_of("centrifugo.client.chat:1"), Some("chat:1"));
        assert_eq!(k.channel_of("other.client.chat:1"), None);
        let c = Keys::new("centrifugo".into(), true);
        assert_eq!(c.pubsub("chat:1"), "centrifugo.client.{chat:1}");
        assert_eq!(c.presence_expire("chat:1"), "centrifugo.presence.expire.{chat:1}");
        assert_eq!(c.channel_of("centrifugo.client.{chat:1}"), Some("chat:1"));
    }
}
