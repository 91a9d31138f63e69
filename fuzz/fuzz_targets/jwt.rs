//! JWT handling (server/src/gateway/auth.rs): `Verifier::connect` and `Verifier::subscribe` on arbitrary token
//! strings, and on tokens correctly signed with the verifier's HS256 key whose header and claims are arbitrary
//! (raw text, or JSON built from arbitrary values), so that the claim checks are reached, under verifiers
//! with and without `aud`, `iss` and a `user_id_claim` path.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Number, Value};
use tetherd::gateway::auth::{TokenError, Verifier, MAX_EXPIRY_UNIX};
use tetherd::gateway::config::TokenKeys;

const SECRET: &str = "fuzz-secret";

#[derive(Debug)]
enum Token {
    /// Any string as the token.
    Raw(String),
    /// A token signed with the right key; header and claims are raw text.
    SignedText { alg: u8, header: Option<String>, claims: String },
    /// A token signed with the right key; claims are a JSON object of arbitrary values.
    SignedJson { alg: u8, claims: Vec<(Key, Json)> },
}

/// Claim names: mostly the ones the verifier reads.
#[derive(Arbitrary, Debug)]
enum Key {
    Sub,
    Exp,
    Nbf,
    Aud,
    Iss,
    ExpireAt,
    Info,
    Data,
    Channels,
    Subs,
    Channel,
    Client,
    User,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

/// Decoded by hand so that seeds are plain bytes (fuzz/seeds.py): a flags byte (bits 0-1: the verifier
/// configuration, bit 2: subscription token, bits 3-4: 0 or 1 raw token, 2 signed text, 3 signed JSON; bits
/// 5-6: HS256/384/512), `now` (u64, little-endian), then the token text (raw: the token; signed text: header,
/// `\n`, claims, or claims alone) or the derived encoding of the JSON claims.
#[derive(Debug)]
struct Case {
    token: Token,
    /// Which verifier configuration: plain, aud/iss required, a user_id_claim path.
    verifier: u8,
    now: u64,
    subscribe: bool,
}

impl<'a> Arbitrary<'a> for Case {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let flags = u8::arbitrary(u)?;
        let now = u64::arbitrary(u)?;
        let alg = flags >> 5;
        let token = match (flags >> 3) & 3 {
            0 | 1 => Token::Raw(String::from_utf8_lossy(u.bytes(u.len())?).into_owned()),
            2 => {
                let rest = String::from_utf8_lossy(u.bytes(u.len())?).into_owned();
                match rest.split_once('\n') {
                    Some((header, claims)) => {
                        Token::SignedText { alg, header: Some(header.to_string()), claims: claims.to_string() }
                    }
                    None => Token::SignedText { alg, header: None, claims: rest },
                }
            }
            _ => Token::SignedJson { alg, claims: Vec::arbitrary_take_rest(Unstructured::new(u.bytes(u.len())?))? },
        };
        Ok(Case { token, verifier: flags & 3, now, subscribe: flags & 4 != 0 })
    }
}

fuzz_target!(|case: Case| {
    let verifier = verifier(case.verifier);
    let token = case.token.build();
    // A clock before the year 10000 (expiries are clamped to MAX_EXPIRY_UNIX).
    let now = case.now % (MAX_EXPIRY_UNIX + 1);
    if case.subscribe {
        let result = verifier.subscribe(&token, now);
        if let Ok(claims) = &result {
            assert!(!claims.channel.is_empty());
            assert!(claims.client.as_deref() != Some(""));
            check_expiry(claims.exp, claims.expire_at, claims.expiry(), now);
        }
        assert_eq!(format!("{result:?}"), format!("{:?}", verifier.subscribe(&token, now)), "not deterministic");
    } else {
        let result = verifier.connect(&token, now);
        if let Ok(claims) = &result {
            check_expiry(claims.exp, claims.expire_at, claims.expiry(), now);
        }
        if let Err(TokenError::Invalid(why)) = &result {
            assert!(!why.is_empty());
        }
        assert_eq!(format!("{result:?}"), format!("{:?}", verifier.connect(&token, now)), "not deterministic");
    }
});

/// A verified token is not expired at `now` (exp strictly after it), `expiry` follows its rule, and no
/// expiry lies past MAX_EXPIRY_UNIX (the gateway adds it to an `Instant`).
fn check_expiry(exp: Option<u64>, expire_at: Option<u64>, expiry: Option<u64>, now: u64) {
    assert!(expiry.is_none_or(|e| e <= MAX_EXPIRY_UNIX), "expiry {expiry:?} past the clamp");
    if let Some(exp) = exp {
        assert!(exp >= now, "verified a token whose exp {exp} is before now {now}");
    }
    match expire_at {
        Some(0) => assert_eq!(expiry, None),
        Some(at) => assert_eq!(expiry, Some(at)),
        None => assert_eq!(expiry, exp),
    }
}

fn verifier(which: u8) -> Verifier {
    let mut keys = TokenKeys { hmac_secret_key: SECRET.into(), ..TokenKeys::default() };
    match which % 4 {
        0 => {}
        1 => {
            keys.audience = "aud".into();
            keys.issuer = "iss".into();
        }
        2 => keys.user_id_claim = "user.id".into(),
        _ => keys.user_id_claim = "user".into(),
    }
    Verifier::new(&keys).expect("an HMAC-only verifier")
}

impl Token {
    fn build(&self) -> String {
        match self {
            Token::Raw(s) => s.clone(),
            Token::SignedText { alg, header, claims } => {
                let alg = algorithm(*alg);
                let header = header.clone().unwrap_or_else(|| format!(r#"{{"alg":"{alg:?}","typ":"JWT"}}"#));
                sign(alg, header.as_bytes(), claims.as_bytes())
            }
            Token::SignedJson { alg, claims } => {
                let alg = algorithm(*alg);
                let object: Map<String, Value> = claims.iter().map(|(k, v)| (k.name(), v.value())).collect();
                let header = format!(r#"{{"alg":"{alg:?}","typ":"JWT"}}"#);
                sign(alg, header.as_bytes(), &serde_json::to_vec(&object).unwrap())
            }
        }
    }
}

fn algorithm(n: u8) -> Algorithm {
    match n % 3 {
        0 => Algorithm::HS256,
        1 => Algorithm::HS384,
        _ => Algorithm::HS512,
    }
}

/// header.claims.signature, signed with SECRET whatever the header says.
fn sign(alg: Algorithm, header: &[u8], claims: &[u8]) -> String {
    let message = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &EncodingKey::from_secret(SECRET.as_bytes()), alg)
        .expect("HMAC signing");
    format!("{message}.{signature}")
}

impl Key {
    fn name(&self) -> String {
        match self {
            Key::Sub => "sub",
            Key::Exp => "exp",
            Key::Nbf => "nbf",
            Key::Aud => "aud",
            Key::Iss => "iss",
            Key::ExpireAt => "expire_at",
            Key::Info => "info",
            Key::Data => "data",
            Key::Channels => "channels",
            Key::Subs => "subs",
            Key::Channel => "channel",
            Key::Client => "client",
            Key::User => "user",
            Key::Other(name) => return name.clone(),
        }
        .to_string()
    }
}

impl Json {
    fn value(&self) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Int(n) => Value::Number((*n).into()),
            Json::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Json::Str(s) => Value::String(s.clone()),
            Json::Array(items) => Value::Array(items.iter().map(Json::value).collect()),
            Json::Object(fields) => Value::Object(fields.iter().map(|(k, v)| (k.clone(), v.value())).collect()),
        }
    }
}
