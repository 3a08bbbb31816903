//! Webhook signature checks (HMAC-SHA256 with RustCrypto), done in the ingress before admission.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use hyper::HeaderMap;
use sha2::Sha256;

use crate::config::{SignatureScheme, SignatureSpec};

type HmacSha256 = Hmac<Sha256>;

/// Why a request's signature was refused; the message goes back to the sender as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureError(pub String);

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h str, SignatureError> {
    headers
        .get(name)
        .ok_or_else(|| SignatureError(format!("missing signature header {name}")))?
        .to_str()
        .map_err(|_| SignatureError(format!("header {name} is not ASCII")))
}

fn mac(secret: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac
}

/// Constant-time comparison of the expected MAC with a hex signature.
fn matches(mac: HmacSha256, hex_sig: &str) -> bool {
    match hex::decode(hex_sig.trim()) {
        Ok(sig) => mac.verify_slice(&sig).is_ok(),
        Err(_) => false,
    }
}

fn check_timestamp(ts: &str, tolerance: Duration, now: SystemTime) -> Result<(), SignatureError> {
    let ts: u64 = ts.trim().parse().map_err(|_| SignatureError(format!("timestamp {ts:?} is not an integer")))?;
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    if now.abs_diff(ts) > tolerance.as_secs() {
        return Err(SignatureError(format!(
            "timestamp {ts} is outside the {}s tolerance (now {now})",
            tolerance.as_secs()
        )));
    }
    Ok(())
}

pub fn verify(spec: &SignatureSpec, headers: &HeaderMap, body: &[u8]) -> Result<(), SignatureError> {
    verify_at(spec, headers, body, SystemTime::now())
}

pub fn verify_at(
    spec: &SignatureSpec,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Result<(), SignatureError> {
    let secret = &spec.secret;
    match &spec.scheme {
        SignatureScheme::Hex { header: name, prefix } => verify_hex(secret, headers, body, name, prefix),
        SignatureScheme::Slack { tolerance } => verify_slack(secret, headers, body, *tolerance, now),
        SignatureScheme::Stripe { tolerance } => verify_stripe(secret, headers, body, *tolerance, now),
        SignatureScheme::Standard { tolerance } => verify_standard(secret, headers, body, *tolerance, now),
    }
}

/// `Ok` when `verified`, else the error that says `what` does not match.
fn verdict(verified: bool, what: &str) -> Result<(), SignatureError> {
    if verified {
        Ok(())
    } else {
        Err(SignatureError(format!("{what} does not match the request body")))
    }
}

/// `header: <prefix><hex(hmac(body))>` (GitHub and generic HMAC).
fn verify_hex(secret: &[u8], headers: &HeaderMap, body: &[u8], name: &str, prefix: &str) -> Result<(), SignatureError> {
    let value = header(headers, name)?;
    let Some(hex_sig) = value.strip_prefix(prefix) else {
        return Err(SignatureError(format!("header {name} must start with {prefix:?}")));
    };
    verdict(matches(mac(secret, &[body]), hex_sig), &format!("signature in {name}"))
}

fn verify_slack(
    secret: &[u8],
    headers: &HeaderMap,
    body: &[u8],
    tolerance: Duration,
    now: SystemTime,
) -> Result<(), SignatureError> {
    let ts = header(headers, "x-slack-request-timestamp")?;
    check_timestamp(ts, tolerance, now)?;
    let sig = header(headers, "x-slack-signature")?;
    let Some(hex_sig) = sig.strip_prefix("v0=") else {
        return Err(SignatureError("header x-slack-signature must start with \"v0=\"".into()));
    };
    verdict(matches(mac(secret, &[b"v0:", ts.as_bytes(), b":", body]), hex_sig), "x-slack-signature")
}

fn verify_stripe(
    secret: &[u8],
    headers: &HeaderMap,
    body: &[u8],
    tolerance: Duration,
    now: SystemTime,
) -> Result<(), SignatureError> {
    let value = header(headers, "stripe-signature")?;
    let mut ts = None;
    let mut sigs = Vec::new();
    for item in value.split(',') {
        match item.trim().split_once('=') {
            Some(("t", t)) => ts = Some(t),
            Some(("v1", s)) => sigs.push(s),
            _ => {}
        }
    }
    let ts = ts.ok_or_else(|| SignatureError("stripe-signature has no t= timestamp".into()))?;
    check_timestamp(ts, tolerance, now)?;
    let verified = sigs.iter().any(|s| matches(mac(secret, &[ts.as_bytes(), b".", body]), s));
    verdict(verified, "no v1 signature in stripe-signature")
}

fn verify_standard(
    secret: &[u8],
    headers: &HeaderMap,
    body: &[u8],
    tolerance: Duration,
    now: SystemTime,
) -> Result<(), SignatureError> {
    let id = header(headers, "webhook-id")?;
    let ts = header(headers, "webhook-timestamp")?;
    check_timestamp(ts, tolerance, now)?;
    let value = header(headers, "webhook-signature")?;
    let expected = mac(secret, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
    let verified = standard_signatures(value).any(|sig| expected.clone().verify_slice(&sig).is_ok());
    verdict(verified, "no v1 signature in webhook-signature")
}

/// The `v1` signatures of a Standard Webhooks `webhook-signature` header: a space-separated list
/// of `<version>,<base64>`; other versions and undecodable entries are skipped.
pub fn standard_signatures(value: &str) -> impl Iterator<Item = Vec<u8>> + '_ {
    use base64::Engine as _;
    value.split_ascii_whitespace().filter_map(|item| {
        let (version, sig) = item.split_once(',')?;
        (version == "v1").then(|| base64::engine::general_purpose::STANDARD.decode(sig).ok()).flatten()
    })
}

/// The base64 HMAC-SHA256 of `parts` (Standard Webhooks' encoding), for tests that sign requests.
#[cfg(test)]
pub fn sign_base64(secret: &[u8], parts: &[&[u8]]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(mac(secret, parts).finalize().into_bytes())
}

/// The hex HMAC-SHA256 of `parts`, for clients and tests that sign requests.
pub fn sign_hex(secret: &[u8], parts: &[&[u8]]) -> String {
    hex::encode(mac(secret, parts).finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn github_style_hex_signature() {
        let spec = SignatureSpec {
            secret: b"It's a Secret to Everybody".to_vec(),
            scheme: SignatureScheme::Hex { header: "x-hub-signature-256".into(), prefix: "sha256=".into() },
        };
        // The example from GitHub's documentation on validating webhook deliveries.
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(verify(&spec, &headers(&[("x-hub-signature-256", sig)]), b"Hello, World!"), Ok(()));
        assert!(verify(&spec, &headers(&[("x-hub-signature-256", sig)]), b"Hello, World?").is_err());
        assert!(verify(&spec, &headers(&[]), b"Hello, World!").unwrap_err().0.contains("missing"));
    }

    #[test]
    fn slack_and_stripe_check_timestamps() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let tol = Duration::from_secs(300);
        let slack = SignatureSpec { secret: b"s".to_vec(), scheme: SignatureScheme::Slack { tolerance: tol } };
        let sig = format!("v0={}", sign_hex(b"s", &[b"v0:1700000000:", b"{}"]));
        let h = headers(&[("x-slack-request-timestamp", "1700000000"), ("x-slack-signature", &sig)]);
        assert_eq!(verify_at(&slack, &h, b"{}", now), Ok(()));
        let late = now + Duration::from_secs(301);
        assert!(verify_at(&slack, &h, b"{}", late).unwrap_err().0.contains("tolerance"));

        let stripe = SignatureSpec { secret: b"whsec".to_vec(), scheme: SignatureScheme::Stripe { tolerance: tol } };
        let v1 = sign_hex(b"whsec", &[b"1700000000.", b"{}"]);
        let h = headers(&[("stripe-signature", &format!("t=1700000000,v1=deadbeef,v1={v1}"))]);
        assert_eq!(verify_at(&stripe, &h, b"{}", now), Ok(()));
        assert!(verify_at(&stripe, &h, b"{ }", now).is_err());
    }

    #[test]
    fn standard_webhooks_example() {
        // The example of the Standard Webhooks specification (and its reference libraries' tests).
        let secret = base64_decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let spec = SignatureSpec { secret, scheme: SignatureScheme::Standard { tolerance: Duration::from_secs(300) } };
        let body = br#"{"test": 2432232314}"#;
        let now = UNIX_EPOCH + Duration::from_secs(1_614_265_330);
        let good = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        let h = |sig: &str, ts: &str| {
            headers(&[
                ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
                ("webhook-timestamp", ts),
                ("webhook-signature", sig),
            ])
        };
        assert_eq!(verify_at(&spec, &h(good, "1614265330"), body, now), Ok(()));
        let several = format!("v1,Zm9v v1a,whatever {good}");
        assert_eq!(verify_at(&spec, &h(&several, "1614265330"), body, now), Ok(()));
        assert!(verify_at(&spec, &h(good, "1614265330"), b"{}", now).is_err());
        assert!(
            verify_at(&spec, &h("v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", "1614265330"), body, now).is_err()
        );
        let stale = verify_at(&spec, &h(good, "1614265330"), body, now + Duration::from_secs(301));
        assert!(stale.unwrap_err().0.contains("tolerance"));
        assert!(verify_at(&spec, &headers(&[]), body, now).unwrap_err().0.contains("webhook-id"));
    }

    fn base64_decode(s: &str) -> Vec<u8> {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    }
}

/// Property tests of the signature headers (256 cases each in `cargo test`; see docs/fuzzing.md).
#[cfg(test)]
mod props {
    use super::*;
    use hyper::header::{HeaderName, HeaderValue};
    use proptest::prelude::*;

    const NOW: u64 = 1_700_000_000;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn headers(pairs: &[(&str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            if let Ok(v) = HeaderValue::from_str(v) {
                h.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), v);
            }
        }
        h
    }

    fn schemes() -> Vec<SignatureScheme> {
        let tolerance = Duration::from_secs(300);
        vec![
            SignatureScheme::Hex { header: "x-hub-signature-256".into(), prefix: "sha256=".into() },
            SignatureScheme::Slack { tolerance },
            SignatureScheme::Stripe { tolerance },
            SignatureScheme::Standard { tolerance },
        ]
    }

    /// Headers as a hostile sender might write them: printable junk, with the separators and
    /// prefixes the parsers look for mixed in.
    fn junk() -> impl Strategy<Value = String> {
        prop_oneof![
            "[ -~]{0,80}",
            prop::collection::vec(
                prop_oneof![
                    Just("t=".to_string()),
                    Just("v1=".to_string()),
                    Just("v1,".to_string()),
                    Just("v0=".to_string()),
                    Just("sha256=".to_string()),
                    Just(",".to_string()),
                    Just(" ".to_string()),
                    "[0-9]{1,12}",
                    "[a-f0-9]{0,64}",
                    "[A-Za-z0-9+/=]{0,44}",
                ],
                0..12
            )
            .prop_map(|parts| parts.concat()),
        ]
    }

    proptest! {
        /// Garbage in any signature header never panics and never passes.
        #[test]
        fn junk_headers_are_refused(values in prop::collection::vec(junk(), 6), body in prop::collection::vec(any::<u8>(), 0..64)) {
            let names = ["x-hub-signature-256", "x-slack-signature", "x-slack-request-timestamp", "stripe-signature", "webhook-signature", "webhook-timestamp"];
            let mut pairs: Vec<(&str, String)> = names.iter().copied().zip(values).collect();
            pairs.push(("webhook-id", "msg_1".into()));
            let h = headers(&pairs);
            for scheme in schemes() {
                let spec = SignatureSpec { secret: b"k".to_vec(), scheme };
                prop_assert!(verify_at(&spec, &h, &body, at(NOW)).is_err());
            }
        }

        /// A correctly signed request passes among other signatures and junk entries; any change
        /// to its body fails it.
        #[test]
        fn signed_requests_pass_and_changed_bodies_fail(
            secret in prop::collection::vec(any::<u8>(), 1..48),
            body in prop::collection::vec(any::<u8>(), 0..256),
            skew in 0u64..300,
            flip in any::<prop::sample::Index>(),
            noise in "[ -~&&[^ ,]]{0,20}",
        ) {
            let ts = (NOW - skew).to_string();
            let stripe_sig = sign_hex(&secret, &[ts.as_bytes(), b".", &body]);
            let std_sig = sign_base64(&secret, &[b"msg_1.", ts.as_bytes(), b".", &body]);
            let requests = [
                (schemes()[0].clone(), headers(&[("x-hub-signature-256", format!("sha256={}", sign_hex(&secret, &[&body])))])),
                (schemes()[1].clone(), headers(&[
                    ("x-slack-request-timestamp", ts.clone()),
                    ("x-slack-signature", format!("v0={}", sign_hex(&secret, &[b"v0:", ts.as_bytes(), b":", &body]))),
                ])),
                (schemes()[2].clone(), headers(&[("stripe-signature", format!("t={ts},v1={noise},v0=x,v1={stripe_sig}"))])),
                (schemes()[3].clone(), headers(&[
                    ("webhook-id", "msg_1".into()),
                    ("webhook-timestamp", ts.clone()),
                    ("webhook-signature", format!("v1,{noise} v2,{std_sig} {noise} v1,{std_sig}")),
                ])),
            ];
            for (scheme, h) in requests {
                let spec = SignatureSpec { secret: secret.clone(), scheme };
                prop_assert_eq!(verify_at(&spec, &h, &body, at(NOW)), Ok(()));
                let mut changed = body.clone();
                if changed.is_empty() {
                    changed.push(b' ');
                } else {
                    let i = flip.index(changed.len());
                    changed[i] ^= 1;
                }
                prop_assert!(verify_at(&spec, &h, &changed, at(NOW)).is_err());
                let timed = !matches!(spec.scheme, SignatureScheme::Hex { .. });
                // Timestamped schemes refuse the same request once it is stale.
                prop_assert_eq!(verify_at(&spec, &h, &body, at(NOW + 301 + skew)).is_err(), timed);
            }
        }
    }
}
