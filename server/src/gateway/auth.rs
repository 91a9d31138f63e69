//! JWT verification for connection and subscription tokens, with Centrifugo's rules (GATEWAY-PROTOCOL.md §5,
//! Centrifugo `internal/jwtverify/token_verifier_jwt.go`).
//!
//! Signatures are checked by `jsonwebtoken`: HS256/384/512 with the HMAC secret, RS256/384/512 with the RSA
//! public key, ES256/384 with the ECDSA public key; the header's `alg` picks the key, and an algorithm whose key
//! is not configured (or `none`, PS*, EdDSA) makes the token invalid. Claims are checked here, in Centrifugo's
//! order: signature, then `aud`/`iss` (only when configured), then the `channel` rule of connection tokens,
//! then `exp` (expired when `exp <= now`, no leeway) and `nbf` (invalid when `nbf > now`), then the `channel`
//! rule of subscription tokens. The clock is the caller's `now_unix`.

use std::fmt;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::gateway::config::TokenKeys;

/// Why a token was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// `exp` is not in the future: the client should fetch a new token (error 109 / close 3005).
    Expired,
    /// Anything else: bad signature, disabled or unknown algorithm, malformed token or claims, wrong
    /// audience or issuer, `nbf` in the future, a `channel` rule broken.
    Invalid(String),
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Expired => f.write_str("token expired"),
            TokenError::Invalid(why) => write!(f, "invalid token: {why}"),
        }
    }
}

impl std::error::Error for TokenError {}

/// The claims of a verified connection token.
#[derive(Clone, Debug, Default)]
pub struct ConnectClaims {
    /// The user id, from the configured `user_id_claim` (default `sub`); "" = anonymous.
    pub user: String,
    /// `exp`, unix seconds.
    pub exp: Option<u64>,
    /// `expire_at`: the connection expiry when present, overriding `exp` (0 = never expire; a negative value
    /// reads as 0, as in Centrifugo).
    pub expire_at: Option<u64>,
    /// `info`, raw JSON.
    pub info: Option<Box<RawValue>>,
    /// Server-side subscriptions to create on connect: the keys of `subs` when it is a non-empty object
    /// (Centrifugo then ignores `channels`; the per-channel `subs` options are not kept), else `channels`.
    pub channels: Vec<String>,
}

/// The claims of a verified subscription token.
#[derive(Clone, Debug, Default)]
pub struct SubscribeClaims {
    /// The user id, from the configured `user_id_claim` (default `sub`); must equal the connection's user.
    pub user: String,
    /// `channel`: never empty; must equal the channel subscribed to.
    pub channel: String,
    /// `client`: when present (and not ""), must equal the connection's client id.
    pub client: Option<String>,
    /// `exp`, unix seconds.
    pub exp: Option<u64>,
    /// `expire_at`: the subscription expiry when present, overriding `exp` (0 = never expire).
    pub expire_at: Option<u64>,
    /// `info`, raw JSON (channel info shown in presence and join/leave).
    pub info: Option<Box<RawValue>>,
    /// `data`, raw JSON (sent to the client in the subscribe reply).
    pub data: Option<Box<RawValue>>,
}

/// When a token makes its connection or subscription expire (unix seconds): `expire_at` when the token has
/// it (0: never), else `exp`.
pub fn expiry(exp: Option<u64>, expire_at: Option<u64>) -> Option<u64> {
    match expire_at {
        Some(0) => None,
        Some(t) => Some(t),
        None => exp,
    }
}

impl ConnectClaims {
    /// See [`expiry`].
    pub fn expiry(&self) -> Option<u64> {
        expiry(self.exp, self.expire_at)
    }
}

impl SubscribeClaims {
    /// See [`expiry`].
    pub fn expiry(&self) -> Option<u64> {
        expiry(self.exp, self.expire_at)
    }
}

/// Verifies tokens against one key set (`client.token` or `client.subscription_token`).
#[derive(Clone)]
pub struct Verifier {
    /// Key for HS256/384/512.
    hmac: Option<DecodingKey>,
    /// Key for RS256/384/512.
    rsa: Option<DecodingKey>,
    /// Key for ES256/384.
    ecdsa: Option<DecodingKey>,
    /// Required `aud` value.
    audience: Option<String>,
    /// Required `iss` value.
    issuer: Option<String>,
    /// Claim holding the user id when not `sub` (a gjson-style dotted path, as in Centrifugo).
    user_id_claim: Option<String>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("hmac", &self.hmac.is_some())
            .field("rsa", &self.rsa.is_some())
            .field("ecdsa", &self.ecdsa.is_some())
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("user_id_claim", &self.user_id_claim)
            .finish()
    }
}

/// The claims tetherd reads, as Centrifugo's decoder types them.
#[derive(Deserialize)]
struct Claims {
    /// Subject: must be a string when present.
    #[serde(default)]
    sub: Option<String>,
    /// Expiry, a JSON number (fractions allowed).
    #[serde(default)]
    exp: Option<f64>,
    /// Not before, a JSON number (fractions allowed).
    #[serde(default)]
    nbf: Option<f64>,
    /// Audience: a string or an array of strings.
    #[serde(default)]
    aud: Option<Value>,
    /// Issuer.
    #[serde(default)]
    iss: Option<String>,
    /// Centrifugo's expiry override, an integer.
    #[serde(default)]
    expire_at: Option<i64>,
    /// Raw JSON info.
    #[serde(default)]
    info: Option<Box<RawValue>>,
    /// Raw JSON data (subscription tokens).
    #[serde(default)]
    data: Option<Box<RawValue>>,
    /// Server-side subscriptions (connection tokens).
    #[serde(default)]
    channels: Option<Vec<String>>,
    /// Richer server-side subscriptions (connection tokens): only the keys are used.
    #[serde(default)]
    subs: Option<serde_json::Map<String, Value>>,
    /// The channel (subscription tokens only).
    #[serde(default)]
    channel: Option<String>,
    /// The client id (subscription tokens).
    #[serde(default)]
    client: Option<String>,
}

impl Verifier {
    /// Builds a verifier from `keys`, parsing the PEM keys; the error names the bad key.
    pub fn new(keys: &TokenKeys) -> Result<Verifier, String> {
        let hmac =
            (!keys.hmac_secret_key.is_empty()).then(|| DecodingKey::from_secret(keys.hmac_secret_key.as_bytes()));
        let rsa = if keys.rsa_public_key.trim().is_empty() {
            None
        } else {
            let key = DecodingKey::from_rsa_pem(keys.rsa_public_key.trim().as_bytes())
                .map_err(|e| format!("rsa_public_key: not a valid RSA public key in PEM: {e}"))?;
            Some(key)
        };
        let ecdsa = if keys.ecdsa_public_key.trim().is_empty() {
            None
        } else {
            let key = DecodingKey::from_ec_pem(keys.ecdsa_public_key.trim().as_bytes())
                .map_err(|e| format!("ecdsa_public_key: not a valid ECDSA public key in PEM: {e}"))?;
            Some(key)
        };
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Ok(Verifier {
            hmac,
            rsa,
            ecdsa,
            audience: non_empty(&keys.audience),
            issuer: non_empty(&keys.issuer),
            user_id_claim: non_empty(&keys.user_id_claim).filter(|c| c != "sub"),
        })
    }

    /// Any key is set (HMAC, RSA or ECDSA).
    pub fn is_configured(&self) -> bool {
        self.hmac.is_some() || self.rsa.is_some() || self.ecdsa.is_some()
    }

    /// Verifies a connection token at time `now_unix` (unix seconds).
    pub fn connect(&self, token: &str, now_unix: u64) -> Result<ConnectClaims, TokenError> {
        let raw = self.verify_signature(token)?;
        let claims = self.parse_claims(&raw)?;
        if claims.channel.as_deref().is_some_and(|c| !c.is_empty()) {
            return Err(invalid("connection token can not contain channel claim, only subscription token can"));
        }
        check_time(&claims, now_unix)?;
        let user = self.user(&claims, &raw)?;
        let channels = match claims.subs {
            Some(subs) if !subs.is_empty() => subs.into_iter().map(|(channel, _)| channel).collect(),
            _ => claims.channels.unwrap_or_default(),
        };
        Ok(ConnectClaims {
            user,
            exp: claims.exp.map(unix_seconds),
            expire_at: claims.expire_at.map(expire_at_seconds),
            info: claims.info,
            channels,
        })
    }

    /// Verifies a subscription token at time `now_unix` (unix seconds); it must carry a `channel`.
    pub fn subscribe(&self, token: &str, now_unix: u64) -> Result<SubscribeClaims, TokenError> {
        let raw = self.verify_signature(token)?;
        let claims = self.parse_claims(&raw)?;
        check_time(&claims, now_unix)?;
        let channel = match claims.channel.as_deref() {
            Some(channel) if !channel.is_empty() => channel.to_string(),
            _ => return Err(invalid("channel claim is required for subscription token")),
        };
        let user = self.user(&claims, &raw)?;
        Ok(SubscribeClaims {
            user,
            channel,
            client: claims.client.filter(|c| !c.is_empty()),
            exp: claims.exp.map(unix_seconds),
            expire_at: claims.expire_at.map(expire_at_seconds),
            info: claims.info,
            data: claims.data,
        })
    }

    /// Checks the signature with the key the header's `alg` picks; returns the claims JSON.
    fn verify_signature(&self, token: &str) -> Result<Box<RawValue>, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(format!("malformed token: {e}")))?;
        let key = match header.alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => self.hmac.as_ref(),
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => self.rsa.as_ref(),
            Algorithm::ES256 | Algorithm::ES384 => self.ecdsa.as_ref(),
            other => return Err(invalid(format!("unsupported JWT algorithm: {other:?}"))),
        };
        let Some(key) = key else {
            return Err(invalid(format!("disabled JWT algorithm: {:?}", header.alg)));
        };
        // Signature only: every claim is checked by this module against the caller's clock.
        let mut validation = Validation::new(header.alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        validation.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Box<RawValue>>(token, key, &validation)
            .map_err(|e| invalid(format!("signature check failed: {e}")))?;
        Ok(data.claims)
    }

    /// Types the claims and checks `aud` and `iss` when configured.
    fn parse_claims(&self, raw: &RawValue) -> Result<Claims, TokenError> {
        let claims: Claims = serde_json::from_str(raw.get()).map_err(|e| invalid(format!("malformed claims: {e}")))?;
        if let Some(audience) = &self.audience {
            let matches = match &claims.aud {
                Some(Value::String(aud)) => aud == audience,
                Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(audience)),
                None | Some(Value::Null) => false,
                Some(_) => return Err(invalid("malformed claims: aud must be a string or an array of strings")),
            };
            if !matches {
                return Err(invalid("invalid audience"));
            }
        }
        if let Some(issuer) = &self.issuer {
            if claims.iss.as_deref() != Some(issuer) {
                return Err(invalid("invalid issuer"));
            }
        }
        Ok(claims)
    }

    /// The user id: `sub`, or the configured `user_id_claim` read from the whole claims object.
    fn user(&self, claims: &Claims, raw: &RawValue) -> Result<String, TokenError> {
        let Some(path) = &self.user_id_claim else {
            return Ok(claims.sub.clone().unwrap_or_default());
        };
        let all: Value = serde_json::from_str(raw.get()).map_err(|e| invalid(format!("malformed claims: {e}")))?;
        Ok(claim_as_string(lookup(&all, path)))
    }
}

/// `exp` (expired unless strictly after `now`) and `nbf` (invalid while after `now`).
fn check_time(claims: &Claims, now_unix: u64) -> Result<(), TokenError> {
    let now = now_unix as f64;
    if claims.exp.is_some_and(|exp| exp <= now) {
        return Err(TokenError::Expired);
    }
    if claims.nbf.is_some_and(|nbf| nbf > now) {
        return Err(invalid("token is not valid yet (nbf)"));
    }
    Ok(())
}

/// The latest expiry a token can set: 9999-12-31T23:59:59Z. A later `exp` or `expire_at` (up to 1e308 in a
/// JSON number) means the same thing, "not in any foreseeable future", and clamping it here keeps the
/// deadline arithmetic downstream (`Instant + Duration`, which panics on overflow) within range.
pub const MAX_EXPIRY_UNIX: u64 = 253_402_300_799;

/// A JSON number of seconds as whole unix seconds (fraction dropped, negative as 0, at most
/// [`MAX_EXPIRY_UNIX`]).
fn unix_seconds(t: f64) -> u64 {
    if t > 0.0 {
        (t as u64).min(MAX_EXPIRY_UNIX)
    } else {
        0
    }
}

/// `expire_at` as unix seconds: negative reads as 0 (never expire), at most [`MAX_EXPIRY_UNIX`].
fn expire_at_seconds(at: i64) -> u64 {
    (at.max(0) as u64).min(MAX_EXPIRY_UNIX)
}

/// The value at a claim path: the top-level key `path` if present, else a dotted path into nested objects
/// (array elements by index), like gjson's simple paths.
fn lookup<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    path.split('.').try_fold(claims, |v, part| match v {
        Value::Object(map) => map.get(part),
        Value::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// A claim as Centrifugo's gjson `String()` gives it: strings as themselves, numbers and booleans as text,
/// objects and arrays as JSON, missing or null as "".
fn claim_as_string(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// `TokenError::Invalid` with `why`.
fn invalid(why: impl Into<String>) -> TokenError {
    TokenError::Invalid(why.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;

    const RSA_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDHbOb+0n64K8OP
SUHEUyJHPCas0X6+nK1cfmEprDqANF8wXG9taKRbG91ugLOnEe2Lc7o0jIb7dRc8
273XUBtx2qHIxz3xLdw01aDZ7N0AgMZSZFBAfoJYuSJLCds0mzu6on3MBdYrZ1bx
x0/3iiTr8kdzLrRY5nwSqAbaQYYq8i+k0Ov82D9nvgH0wcuDImoEmKeY/gVceo5x
GXiOVnaP7CNFD2w5UmQX29+D4b2tiWWRmwClvMNUNZLPWym7yyFZJggQnBbR1aq7
XDM7j7qz8g3HW7dDJwBt/Ffjz/DHXOoReNFCXRyGSEpbaQe7ggC4r2kXKK3LXBCa
ZNtyI9rfAgMBAAECggEADegAK6DOCVWz61f2aBRL/Z+qKr7pEa2nQR3m9Jr38Vy1
jo/DjWOQonHM/RmobWwInoLRZzytZPeDSVEhadRCNaxDP9b08M573otPDiNAPfq8
2Z35IqYvvLQcOhNT39U7UwZls0Zs6tXn8DAv2Vkevf1FEjkdhl18JWjmIW4URwZA
qCwV6xpDz7utJHqFvez6aAvMTGhiVC/OKJ57mO7jJDKbvR/9/c9QAn8tISpVmB2q
uMlPC5dLhVT4FlUYa4HpTCNv3Q6bQKsoe/7oOL8pSA46xlHQnhuOQqChFIY8rTm9
xRyTtPl8M5sHZgbGMxbVYLAKLucBxRAh30OO6XYT0QKBgQD9YQK10RYt+ze/jslW
88EWSw7k5JAGopv09BET7o4QFlSSnhcIC7whp9tjHXLhog2QyXsGjU/Kbpw625nK
YUvxFQeX0PhJgc4H3oSfcUIIaWDy9go4fXa3OX7iRA3XkHdtXTmG/M2GiIkxg/Ym
fqJc3HncgUuOU/39Y9DVzL3q8wKBgQDJfQOJAqGG1jPApzGUsGPin8I0+A+CHHPs
Qi2wR87k5tcXq1rOvAW+lT48+BvMjw3gvnz5tXrNZGUq9AZ0t+pcZ7R0B7VDGh4z
4iRPIdZgqWA2Auq047RMcZyCcYanFLPMwueFVtwKOPGuPLf+JoVQTxPjztKqf3CC
KWPWT2lzZQKBgQCo9+COzvgzgawTmmy6B6Nj8nnkOmexhQ7rszcQS62BHOMZQ0Oo
oeq7puyulBzgSukw/KuGGwZywIB+36MXSvsRsix2GWz52A5FQSbADQ8z/NIiM+Fs
+n4IgdcTnL5+WmDKFbkfQ8brSHH1C0NDOH+d3YmGetKf/3MJX18MtJSR8QKBgH4l
hbwW6JgprZcVVkZYNQEiso1FLThxpeYp/L7cBl1rZQkNoDnEn/gVKjUzxPvKKI8n
08jm5S6Ih4pf41bZ+qHFz8XBOav8QyKKl97vOW+lO3Y1V0rPMQeXLbzBZONgY71z
3U2u9u5zfmRu4Wb+KQMBr1s2FtDmHsNvNHFtoIC9AoGBAL+HxFn/womm3hzWRfTA
NiEjqYpJMlqWEJ0kUqH1dIMZJAoSgBk/DK9MqeDk6N2iqfm8k2H9PDhkYxtpiwtw
DMd5J1RY26kWUQoZVHOARYDw+p6iGYURsJRBYuHqjlcRB73QtoyGR6bot0osNKGX
KFHj1wsLf/M3Hdo0PM8/fSdr
-----END PRIVATE KEY-----
";

    const RSA_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAx2zm/tJ+uCvDj0lBxFMi
RzwmrNF+vpytXH5hKaw6gDRfMFxvbWikWxvdboCzpxHti3O6NIyG+3UXPNu911Ab
cdqhyMc98S3cNNWg2ezdAIDGUmRQQH6CWLkiSwnbNJs7uqJ9zAXWK2dW8cdP94ok
6/JHcy60WOZ8EqgG2kGGKvIvpNDr/Ng/Z74B9MHLgyJqBJinmP4FXHqOcRl4jlZ2
j+wjRQ9sOVJkF9vfg+G9rYllkZsApbzDVDWSz1spu8shWSYIEJwW0dWqu1wzO4+6
s/INx1u3QycAbfxX48/wx1zqEXjRQl0chkhKW2kHu4IAuK9pFyity1wQmmTbciPa
3wIDAQAB
-----END PUBLIC KEY-----
";

    const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgKjTSaFAJ975Z3hy0
fmSOij9PZkxPb3KCHG2gVFxfagKhRANCAASrbMjwtL/Cd7yDYwlXVfHYSoRl3F5U
8wsY9WMSyeTBnUhsCLnMw7b2Ls9SeCC8uKrSLj8GceDbwvgMo+HQXa3S
-----END PRIVATE KEY-----
";

    const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEq2zI8LS/wne8g2MJV1Xx2EqEZdxe
VPMLGPVjEsnkwZ1IbAi5zMO29i7PUnggvLiq0i4/BnHg28L4DKPh0F2t0g==
-----END PUBLIC KEY-----
";

    const EC384_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDBopFyK88pmmt4pu6Ae
93yw7QTcutlip5VCQDNe3Vt+RxypiWPSa9yhK2mpaiJ3KSuhZANiAATIRUf7zVax
SlZktB2jEjo22AlVXYVcOAlsCHnW1CtLHsN8dfcvEboCrEf4A7ljZ5eORrNo7rc3
wSKw9x8f3ylDpSXpErE+Vb3BFp/PajoXW9NM8JOtlGMLrVbZTAZCX9A=
-----END PRIVATE KEY-----
";

    const EC384_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEyEVH+81WsUpWZLQdoxI6NtgJVV2FXDgJ
bAh51tQrSx7DfHX3LxG6AqxH+AO5Y2eXjkazaO63N8EisPcfH98pQ6Ul6RKxPlW9
wRafz2o6F1vTTPCTrZRjC61W2UwGQl/Q
-----END PUBLIC KEY-----
";

    /// `{"alg":"none","typ":"JWT"}.{"sub":"42"}.` (no signature).
    const ALG_NONE_TOKEN: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiI0MiJ9.";

    fn hmac_keys(secret: &str) -> TokenKeys {
        TokenKeys { hmac_secret_key: secret.to_string(), ..TokenKeys::default() }
    }

    fn hs256(secret: &str, claims: &Value) -> String {
        sign(Algorithm::HS256, &EncodingKey::from_secret(secret.as_bytes()), claims)
    }

    fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
    }

    fn is_invalid<T: fmt::Debug>(r: Result<T, TokenError>) -> bool {
        matches!(r, Err(TokenError::Invalid(_)))
    }

    #[test]
    fn shareable_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Verifier>();
        assert_send_sync::<TokenError>();
        assert_send_sync::<crate::gateway::config::GatewayConfig>();
    }

    #[test]
    fn hs256_ok() {
        let v = Verifier::new(&hmac_keys("secret")).unwrap();
        assert!(v.is_configured());
        // Claims signed verbatim, so `info` must come back byte for byte.
        let text = format!(
            r#"{{"sub":"42","exp":{},"info":{{"name": "Ann", "n":[1, 2]}},"channels":["news","chat:1"]}}"#,
            NOW + 60
        );
        let raw = RawValue::from_string(text).unwrap();
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &raw, &EncodingKey::from_secret(b"secret"));
        let c = v.connect(&token.unwrap(), NOW).unwrap();
        assert_eq!(c.user, "42");
        assert_eq!(c.exp, Some(NOW + 60));
        assert_eq!(c.expire_at, None);
        assert_eq!(c.info.unwrap().get(), r#"{"name": "Ann", "n":[1, 2]}"#);
        assert_eq!(c.channels, ["news", "chat:1"]);
        // HS384/HS512 with the same secret, no exp, anonymous.
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let t = sign(alg, &EncodingKey::from_secret(b"secret"), &json!({}));
            let c = v.connect(&t, NOW).unwrap();
            assert_eq!((c.user.as_str(), c.exp, c.channels.len()), ("", None, 0));
        }
    }

    #[test]
    fn wrong_secret_invalid() {
        let v = Verifier::new(&hmac_keys("secret")).unwrap();
        assert!(is_invalid(v.connect(&hs256("other", &json!({"sub": "42"})), NOW)));
        assert!(is_invalid(v.subscribe(&hs256("other", &json!({"sub": "42", "channel": "c"})), NOW)));
    }

    #[test]
    fn expired_uses_the_clock() {
        let v = Verifier::new(&hmac_keys("secret")).unwrap();
        let t = hs256("secret", &json!({"sub": "42", "exp": NOW}));
        assert_eq!(v.connect(&t, NOW).unwrap_err(), TokenError::Expired);
        assert_eq!(v.connect(&t, NOW + 1).unwrap_err(), TokenError::Expired);
        assert_eq!(v.connect(&t, NOW - 1).unwrap().exp, Some(NOW));
        let s = hs256("secret", &json!({"sub": "42", "channel": "c", "exp": NOW - 10}));
        assert_eq!(v.subscribe(&s, NOW).unwrap_err(), TokenError::Expired);
        assert_eq!(TokenError::Expired.to_string(), "token expired");
    }

    #[test]
    fn nbf_in_the_future_invalid() {
        let v = Verifier::new(&hmac_keys("secret")).unwrap();
        let t = hs256("secret", &json!({"sub": "42", "nbf": NOW + 5}));
        assert!(is_invalid(v.connect(&t, NOW)));
        assert!(v.connect(&t, NOW + 5).is_ok());
    }

    #[test]
    fn alg_none_and_garbage_invalid() {
        let v = Verifier::new(&hmac_keys("secret")).unwrap();
        for token in [ALG_NONE_TOKEN, "", "abc", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30"] {
            assert!(is_invalid(v.connect(token, NOW)), "{token:?}");
            assert!(is_invalid(v.subscribe(token, NOW)), "{token:?}");
        }
        let e = v.connect(ALG_NONE_TOKEN, NOW).unwrap_err();
        assert!(e.to_string().starts_with("invalid token: "), "{e}");
    }

    #[test]
    fn algorithm_without_key_invalid() {
        let rsa_only = Verifier::new(&TokenKeys { rsa_public_key: RSA_PUBLIC.into(), ..TokenKeys::default() }).unwrap();
        assert!(is_invalid(rsa_only.connect(&hs256("secret", &json!({"sub": "1"})), NOW)));
        let none = Verifier::new(&TokenKeys::default()).unwrap();
        assert!(!none.is_configured());
        assert!(is_invalid(none.connect(&hs256("", &json!({"sub": "1"})), NOW)));
    }

    #[test]
    fn rs256_ok() {
        let v = Verifier::new(&TokenKeys { rsa_public_key: RSA_PUBLIC.into(), ..TokenKeys::default() }).unwrap();
        assert!(v.is_configured());
        let key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        for alg in [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512] {
            let c = v.connect(&sign(alg, &key, &json!({"sub": "7", "exp": NOW + 1})), NOW).unwrap();
            assert_eq!(c.user, "7");
        }
        // An RSA-signed token whose payload was swapped keeps the old signature: invalid.
        let good = sign(Algorithm::RS256, &key, &json!({"sub": "7"}));
        let other = sign(Algorithm::RS256, &key, &json!({"sub": "8"}));
        let parts: Vec<&str> = good.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], other.split('.').nth(1).unwrap(), parts[2]);
        assert!(is_invalid(v.connect(&forged, NOW)));
    }

    #[test]
    fn es256_and_es384_ok() {
        let v = Verifier::new(&TokenKeys { ecdsa_public_key: EC_PUBLIC.into(), ..TokenKeys::default() }).unwrap();
        let key = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap();
        let c = v.subscribe(&sign(Algorithm::ES256, &key, &json!({"sub": "7", "channel": "$chat:1"})), NOW).unwrap();
        assert_eq!((c.user.as_str(), c.channel.as_str()), ("7", "$chat:1"));
        // The P-256 key does not verify an ES384 claim, and HMAC is not configured.
        let key384 = EncodingKey::from_ec_pem(EC384_PRIVATE.as_bytes()).unwrap();
        assert!(is_invalid(v.connect(&sign(Algorithm::ES384, &key384, &json!({"sub": "7"})), NOW)));
        assert!(is_invalid(v.connect(&hs256("x", &json!({"sub": "7"})), NOW)));
        let v384 = Verifier::new(&TokenKeys { ecdsa_public_key: EC384_PUBLIC.into(), ..TokenKeys::default() }).unwrap();
        assert_eq!(v384.connect(&sign(Algorithm::ES384, &key384, &json!({"sub": "9"})), NOW).unwrap().user, "9");
    }

    #[test]
    fn bad_pem_names_the_key() {
        let e = Verifier::new(&TokenKeys { rsa_public_key: "nope".into(), ..TokenKeys::default() }).unwrap_err();
        assert!(e.contains("rsa_public_key"), "{e}");
        let e = Verifier::new(&TokenKeys { ecdsa_public_key: RSA_PUBLIC.into(), ..TokenKeys::default() }).unwrap_err();
        assert!(e.contains("ecdsa_public_key"), "{e}");
        let e = Verifier::new(&TokenKeys { rsa_public_key: EC_PUBLIC.into(), ..TokenKeys::default() }).unwrap_err();
        assert!(e.contains("rsa_public_key"), "{e}");
    }

    #[test]
    fn connect_token_with_channel_invalid() {
        let v = Verifier::new(&hmac_keys("secret")).unwrap();
        assert!(is_invalid(v.connect(&hs256("secret", &json!({"sub": "42", "channel": "news"})), NOW)));
        // An empty channel claim is no channel (Centrifugo checks `channel != ""`).
        assert!(v.connect(&hs256("secret", &json!({"sub": "42", "channel": ""})), NOW).is_ok());
    }

    #[test]
    fn subscribe_claims_parsed() {
        let v = Verifier::new(&hmac_keys("secret")).unwrap();
        let claims = json!({"sub": "42", "channel": "$chat:1", "client": "c-1", "exp": NOW + 100,
                            "expire_at": NOW + 50, "info": {"role": "admin"}, "data": [1, "two"]});
        let s = v.subscribe(&hs256("secret", &claims), NOW).unwrap();
        assert_eq!(s.user, "42");
        assert_eq!(s.channel, "$chat:1");
        assert_eq!(s.client.as_deref(), Some("c-1"));
        assert_eq!(s.exp, Some(NOW + 100));
        assert_eq!(s.expire_at, Some(NOW + 50));
        assert_eq!(s.info.unwrap().get(), r#"{"role":"admin"}"#);
        assert_eq!(s.data.unwrap().get(), r#"[1,"two"]"#);
        // Minimal: no client, no exp, no info.
        let s = v.subscribe(&hs256("secret", &json!({"channel": "news", "client": ""})), NOW).unwrap();
        assert_eq!((s.user.as_str(), s.client, s.exp, s.info.is_none()), ("", None, None, true));
        // Without a channel (or with an empty one): invalid.
        assert!(is_invalid(v.subscribe(&hs256("secret", &json!({"sub": "42"})), NOW)));
        assert!(is_invalid(v.subscribe(&hs256("secret", &json!({"sub": "42", "channel": ""})), NOW)));
    }

    #[test]
    fn expiry_beyond_any_clock_is_clamped() {
        // exp 1e300 once became u64::MAX and overflowed `Instant + Duration` on the shard (a panic).
        let v = Verifier::new(&hmac_keys("secret")).unwrap();
        for claims in [
            json!({"sub": "42", "exp": 1e300}),
            json!({"sub": "42", "exp": 18446744073709551615u64}),
            json!({"sub": "42", "expire_at": i64::MAX}),
        ] {
            let c = v.connect(&hs256("secret", &claims), NOW).unwrap();
            assert_eq!(c.expiry(), Some(MAX_EXPIRY_UNIX), "{claims}");
        }
        let c = v.connect(&hs256("secret", &json!({"sub": "42", "exp": NOW + 60})), NOW).unwrap();
        assert_eq!(c.expiry(), Some(NOW + 60), "ordinary expiries are kept");
        let s = v.subscribe(&hs256("secret", &json!({"sub": "42", "channel": "c", "exp": 1e300})), NOW).unwrap();
        assert_eq!(s.expiry(), Some(MAX_EXPIRY_UNIX));
    }

    #[test]
    fn expire_at_overrides() {
        let v = Verifier::new(&hmac_keys("secret")).unwrap();
        let c = v.connect(&hs256("secret", &json!({"sub": "1", "exp": NOW + 10, "expire_at": 0})), NOW).unwrap();
        assert_eq!((c.exp, c.expire_at), (Some(NOW + 10), Some(0)));
        let c = v.connect(&hs256("secret", &json!({"sub": "1", "expire_at": -5})), NOW).unwrap();
        assert_eq!(c.expire_at, Some(0));
        // Fractional exp is allowed (a JSON NumericDate); a fractional expire_at is not.
        let c = v.connect(&hs256("secret", &json!({"sub": "1", "exp": NOW as f64 + 0.5})), NOW).unwrap();
        assert_eq!(c.exp, Some(NOW));
        assert!(is_invalid(v.connect(&hs256("secret", &json!({"expire_at": 1.5})), NOW)));
    }

    #[test]
    fn subs_claim_gives_channels() {
        let v = Verifier::new(&hmac_keys("secret")).unwrap();
        let claims = json!({"sub": "1", "channels": ["ignored"], "subs": {"a:1": {"data": {"x": 1}}, "b": {}}});
        let mut channels = v.connect(&hs256("secret", &claims), NOW).unwrap().channels;
        channels.sort();
        assert_eq!(channels, ["a:1", "b"]);
    }

    #[test]
    fn malformed_claims_invalid() {
        let v = Verifier::new(&hmac_keys("secret")).unwrap();
        for claims in [json!({"sub": 42}), json!({"exp": "soon"}), json!({"channels": "news"}), json!([1])] {
            assert!(is_invalid(v.connect(&hs256("secret", &claims), NOW)), "{claims}");
        }
    }

    #[test]
    fn user_id_claim_honoured() {
        let keys = TokenKeys { user_id_claim: "uid".into(), ..hmac_keys("secret") };
        let v = Verifier::new(&keys).unwrap();
        let c = v.connect(&hs256("secret", &json!({"sub": "ignored", "uid": "u-7"})), NOW).unwrap();
        assert_eq!(c.user, "u-7");
        assert_eq!(v.connect(&hs256("secret", &json!({"uid": 1234})), NOW).unwrap().user, "1234");
        assert_eq!(v.connect(&hs256("secret", &json!({"sub": "x"})), NOW).unwrap().user, "");
        let s = v.subscribe(&hs256("secret", &json!({"uid": "u-8", "channel": "c"})), NOW).unwrap();
        assert_eq!(s.user, "u-8");
        // Nested paths as in gjson; a top-level key containing dots wins.
        let nested = Verifier::new(&TokenKeys { user_id_claim: "user.id".into(), ..hmac_keys("secret") }).unwrap();
        assert_eq!(nested.connect(&hs256("secret", &json!({"user": {"id": "n-1"}})), NOW).unwrap().user, "n-1");
        assert_eq!(nested.connect(&hs256("secret", &json!({"user.id": "d-1"})), NOW).unwrap().user, "d-1");
    }

    #[test]
    fn audience_and_issuer_checked_when_configured() {
        let keys = TokenKeys { audience: "tether".into(), issuer: "auth.example".into(), ..hmac_keys("secret") };
        let v = Verifier::new(&keys).unwrap();
        let ok = json!({"sub": "1", "aud": ["other", "tether"], "iss": "auth.example"});
        assert!(v.connect(&hs256("secret", &ok), NOW).is_ok());
        assert!(v.connect(&hs256("secret", &json!({"aud": "tether", "iss": "auth.example"})), NOW).is_ok());
        for bad in [
            json!({"iss": "auth.example"}),
            json!({"aud": "other", "iss": "auth.example"}),
            json!({"aud": "tether"}),
            json!({"aud": "tether", "iss": "evil"}),
        ] {
            assert!(is_invalid(v.connect(&hs256("secret", &bad), NOW)), "{bad}");
        }
        // Not configured: any aud/iss is accepted.
        let plain = Verifier::new(&hmac_keys("secret")).unwrap();
        assert!(plain.connect(&hs256("secret", &json!({"aud": "x", "iss": "y"})), NOW).is_ok());
    }
}
