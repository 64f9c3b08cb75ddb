//! Webhook deliveries: a message's JSON as the body of a POST, signed so the receiver can tell it
//! came from Carga and was not replayed.
//!
//! `Carga-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" with the shared secret>`
//! (the scheme Stripe and others use: the time inside the signature bounds replays).
//! `Carga-Event` names the event and `Carga-Delivery` the message (the same on every retry of
//! it, so a receiver can drop a repeat).

use std::time::Duration;

use ring::hmac;

pub const SIGNATURE_HEADER: &str = "carga-signature";
/// The field of the subscription's entry in the secrets provider that holds its key.
pub const SECRET_FIELD: &str = "secret";

/// Where a subscription's signing secret lives in the secrets provider (as a connection's
/// credentials do; connection ids cannot hold a `/`, so the two never meet).
pub fn secret_name(webhook_id: &str) -> String {
    format!("webhooks/{webhook_id}")
}
pub const EVENT_HEADER: &str = "carga-event";
pub const DELIVERY_HEADER: &str = "carga-delivery";

/// The signature header's value for `body` sent at `timestamp` (unix seconds).
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac(secret, timestamp, body))
    )
}

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> hmac::Tag {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut context = hmac::Context::with_key(&key);
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    context.sign()
}

/// Whether `header` is a valid signature of `body` with `secret`, made within `tolerance` of
/// `now` (unix seconds). For receivers (and the tests, which are one); constant-time.
pub fn verify(secret: &str, header: &str, body: &[u8], now: i64, tolerance: Duration) -> bool {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", v)) => signatures.extend(hex::decode(v).ok()),
            _ => {}
        }
    }
    let Some(timestamp) = timestamp else {
        return false;
    };
    if now.abs_diff(timestamp) > tolerance.as_secs() {
        return false;
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut message = format!("{timestamp}.").into_bytes();
    message.extend_from_slice(body);
    signatures
        .iter()
        .any(|signature| hmac::verify(&key, &message, signature).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_with_its_secret_body_and_time() {
        let body = br#"{"event":"run_succeeded"}"#;
        let header = sign("s3cr3t", 1_800_000_000, body);
        assert!(header.starts_with("t=1800000000,v1="));
        let tolerance = Duration::from_secs(300);
        assert!(verify("s3cr3t", &header, body, 1_800_000_100, tolerance));
        assert!(!verify("other", &header, body, 1_800_000_100, tolerance));
        assert!(!verify("s3cr3t", &header, b"{}", 1_800_000_100, tolerance));
        // A replay long after it was signed.
        assert!(!verify("s3cr3t", &header, body, 1_800_001_000, tolerance));
        assert!(!verify("s3cr3t", "v1=00", body, 1_800_000_000, tolerance));
        // HMAC-SHA256("key", "1.body"), as Python's hmac module computes it.
        assert_eq!(
            sign("key", 1, b"body"),
            "t=1,v1=91b5374b153842ad05b2c4eab9349b8321b14703165bd3fb8b034dfb8be98ae5"
        );
    }
}
