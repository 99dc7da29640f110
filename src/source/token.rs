//! OAUTHBEARER: the access token of `kafka.oauthbearer_token_file`, read again each time
//! librdkafka asks for one (at 80 % of the last one's lifetime), so a token a sidecar or
//! a projected volume rotates in place is picked up before the old one expires.

use std::ffi::CString;
use std::path::Path;

use base64::Engine as _;
use rdkafka::client::OAuthToken;

/// How long a token without an `exp` claim (an opaque token) is used before the file is
/// read again.
const OPAQUE_LIFETIME_MS: i64 = 60_000;

/// The principal librdkafka is told for a token that names none (`sub`).
const DEFAULT_PRINCIPAL: &str = "churnwatch";

/// Why no token could be had; never quotes the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read.
    #[error("kafka.oauthbearer_token_file: cannot read {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// The file is empty.
    #[error("kafka.oauthbearer_token_file: {0} is empty")]
    Empty(String),
    /// The token's `exp` is past: whatever writes the file has stopped renewing it.
    #[error("kafka.oauthbearer_token_file: the token in {path} expired {ago_s} s ago (is its writer running?)")]
    Expired {
        /// The file.
        path: String,
        /// Seconds since it expired.
        ago_s: i64,
    },
}

/// The token in `path` as librdkafka wants it, at wall time `now_ms` (ms since the epoch).
pub fn from_file(path: &Path, now_ms: i64) -> Result<OAuthToken, TokenError> {
    let shown = || path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| TokenError::Read {
        path: shown(),
        error,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenError::Empty(shown()));
    }
    let (exp, sub) = jwt_claims(token);
    let lifetime_ms = match exp {
        Some(exp) if exp * 1000 <= now_ms => {
            return Err(TokenError::Expired {
                path: shown(),
                ago_s: (now_ms - exp * 1000) / 1000,
            })
        }
        Some(exp) => exp * 1000,
        None => now_ms + OPAQUE_LIFETIME_MS,
    };
    Ok(OAuthToken {
        token: token.to_string(),
        principal_name: sub.unwrap_or_else(|| DEFAULT_PRINCIPAL.to_string()),
        lifetime_ms,
    })
}

/// `exp` and `sub` of a JWT's payload; nothing for an opaque token.
fn jwt_claims(token: &str) -> (Option<i64>, Option<String>) {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (None, None);
    };
    let Ok(bytes) =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('='))
    else {
        return (None, None);
    };
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return (None, None);
    };
    let exp = claims["exp"]
        .as_i64()
        .or_else(|| claims["exp"].as_f64().map(|f| f as i64));
    let sub = claims["sub"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    (exp, sub)
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Sets the first token on a client right after it is made. librdkafka asks for tokens
/// through an event the application's poll handles, but the worker asks for metadata
/// before its first poll: without a token then, that request would wait for nothing.
/// A failure is logged and left to the refresh event, which retries.
pub fn set_first<C: rdkafka::ClientContext>(client: &rdkafka::client::Client<C>, path: &Path) {
    let t = match from_file(path, now_ms()) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "kafka: no OAUTHBEARER token yet");
            return;
        }
    };
    let (Ok(token), Ok(principal)) = (CString::new(t.token), CString::new(t.principal_name)) else {
        tracing::error!("kafka.oauthbearer_token_file: the token holds a NUL byte");
        return;
    };
    let mut err = [0 as std::ffi::c_char; 512];
    // SAFETY: the client pointer is valid for the client's lifetime; the strings are
    // NUL-terminated and outlive the call, which copies them; no extensions are passed
    // (null with count 0); `err` is a writable buffer of the length given.
    let code = unsafe {
        rdkafka::bindings::rd_kafka_oauthbearer_set_token(
            client.native_ptr(),
            token.as_ptr(),
            t.lifetime_ms,
            principal.as_ptr(),
            std::ptr::null_mut(),
            0,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if code != rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
        // SAFETY: librdkafka writes a NUL-terminated message into `err` on failure.
        let why = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) };
        tracing::error!(error = %why.to_string_lossy(), "kafka: the OAUTHBEARER token was refused");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.{}",
            b(r#"{"alg":"RS256"}"#),
            b(claims),
            b("signature")
        )
    }

    #[test]
    fn a_jwt_lives_until_its_exp_with_its_subject_an_opaque_token_a_minute() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("token");
        let now = 1_700_000_000_000;
        std::fs::write(
            &f,
            jwt(r#"{"sub":"svc-churnwatch","exp":1700000600}"#) + "\n",
        )
        .expect("write");
        let t = from_file(&f, now).expect("token");
        assert_eq!(t.lifetime_ms, 1_700_000_600_000);
        assert_eq!(t.principal_name, "svc-churnwatch");
        assert!(!t.token.ends_with('\n'));

        std::fs::write(&f, "opaque-token-value").expect("write");
        let t = from_file(&f, now).expect("token");
        assert_eq!(t.lifetime_ms, now + OPAQUE_LIFETIME_MS);
        assert_eq!(t.principal_name, DEFAULT_PRINCIPAL);
        assert_eq!(t.token, "opaque-token-value");
    }

    #[test]
    fn an_expired_empty_or_missing_token_is_an_error_that_does_not_quote_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("token");
        let old = jwt(r#"{"sub":"a","exp":1600000000}"#);
        std::fs::write(&f, &old).expect("write");
        let Err(e) = from_file(&f, 1_600_000_090_000) else {
            panic!("an expired token was accepted")
        };
        let e = e.to_string();
        assert!(e.contains("expired 90 s ago"), "{e}");
        assert!(!e.contains(&old), "{e}");
        std::fs::write(&f, "\n").expect("write");
        assert!(matches!(from_file(&f, 0), Err(TokenError::Empty(_))));
        assert!(matches!(
            from_file(&dir.path().join("none"), 0),
            Err(TokenError::Read { .. })
        ));
    }
}
