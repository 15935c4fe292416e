//! Identity keys, fingerprints and safety numbers.
// In tests a panic is the failure report.
#![allow(clippy::unwrap_used)]

use rand::SeedableRng;
use rand::rngs::StdRng;
use viska_e2ee::identity::{
    IdentityError, IdentityKeyPair, PublicIdentity, SAFETY_NUMBER_DIGITS, SafetyNumber,
};

#[test]
fn secret_bytes_round_trip() {
    let mut rng = StdRng::seed_from_u64(1);
    let pair = IdentityKeyPair::generate(&mut rng);
    let secret = pair.to_secret_bytes();
    let restored = IdentityKeyPair::from_secret_bytes(secret.expose_secret()).unwrap();
    assert_eq!(restored.public(), pair.public());
    assert_eq!(restored.to_secret_bytes(), secret);
    assert_eq!(restored.sign(b"call"), pair.sign(b"call"));
    assert_eq!(
        IdentityKeyPair::from_secret_bytes(&[0; 31]).unwrap_err(),
        IdentityError::InvalidLength {
            expected: 32,
            actual: 31
        }
    );
}

#[test]
fn generated_identities_differ() {
    let mut rng = StdRng::seed_from_u64(2);
    let a = IdentityKeyPair::generate(&mut rng);
    let b = IdentityKeyPair::generate(&mut rng);
    assert_ne!(a.public(), b.public());
    let os_a = IdentityKeyPair::generate_from_os().unwrap();
    let os_b = IdentityKeyPair::generate_from_os().unwrap();
    assert_ne!(os_a.public(), os_b.public());
    assert_ne!(os_a.to_secret_bytes(), os_b.to_secret_bytes());
}

#[test]
fn public_identity_round_trips_and_validates() {
    let mut rng = StdRng::seed_from_u64(3);
    let public = IdentityKeyPair::generate(&mut rng).public();
    assert_eq!(PublicIdentity::from_bytes(&public.to_bytes()), Ok(public));
    assert_eq!(
        PublicIdentity::from_bytes(&[1; 33]).unwrap_err(),
        IdentityError::InvalidLength {
            expected: 32,
            actual: 33
        }
    );
    // y = 2 has no x on edwards25519 ((y^2 - 1) / (d y^2 + 1) is not a square mod p).
    let mut not_on_curve = [0u8; 32];
    not_on_curve[0] = 2;
    assert_eq!(
        PublicIdentity::from_bytes(&not_on_curve).unwrap_err(),
        IdentityError::InvalidPublicKey
    );
    // The neutral element (y = 1) has small order: every signature would verify under it.
    let mut neutral = [0u8; 32];
    neutral[0] = 1;
    assert_eq!(
        PublicIdentity::from_bytes(&neutral).unwrap_err(),
        IdentityError::WeakPublicKey
    );
}

#[test]
fn signatures_verify_only_for_their_message_and_key() {
    let mut rng = StdRng::seed_from_u64(4);
    let alice = IdentityKeyPair::generate(&mut rng);
    let bob = IdentityKeyPair::generate(&mut rng);
    let signature = alice.sign(b"hello");
    assert_eq!(alice.public().verify(b"hello", &signature), Ok(()));
    assert_eq!(
        alice.public().verify(b"hellO", &signature),
        Err(IdentityError::BadSignature)
    );
    assert_eq!(
        bob.public().verify(b"hello", &signature),
        Err(IdentityError::BadSignature)
    );
    let mut altered = signature;
    altered[40] ^= 0x80;
    assert_eq!(
        alice.public().verify(b"hello", &altered),
        Err(IdentityError::BadSignature)
    );
    assert!(matches!(
        alice.public().verify(b"hello", &signature[..63]),
        Err(IdentityError::InvalidLength { .. })
    ));
}

#[test]
fn fingerprint_display_is_sixteen_hex_groups() {
    let mut rng = StdRng::seed_from_u64(5);
    let public = IdentityKeyPair::generate(&mut rng).public();
    let shown = public.fingerprint().to_string();
    let groups: Vec<&str> = shown.split(' ').collect();
    assert_eq!(groups.len(), 16);
    assert!(groups.iter().all(|g| {
        g.len() == 4
            && g.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    }));
    let from_bytes: String = public
        .fingerprint()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(shown.replace(' ', ""), from_bytes);
}

#[test]
fn safety_number_is_symmetric_stable_and_pair_specific() {
    let mut rng = StdRng::seed_from_u64(6);
    let a = IdentityKeyPair::generate(&mut rng).public();
    let b = IdentityKeyPair::generate(&mut rng).public();
    let c = IdentityKeyPair::generate(&mut rng).public();
    let ab = SafetyNumber::for_pair(&a, &b);
    assert_eq!(ab, SafetyNumber::for_pair(&b, &a));
    assert_eq!(ab, SafetyNumber::for_pair(&a, &b));
    assert_ne!(ab, SafetyNumber::for_pair(&a, &c));
    assert_ne!(ab, SafetyNumber::for_pair(&c, &b));
    assert_eq!(ab.digits().len(), SAFETY_NUMBER_DIGITS);
    assert!(ab.digits().bytes().all(|d| d.is_ascii_digit()));
    let shown = ab.to_string();
    let groups: Vec<&str> = shown.split(' ').collect();
    assert_eq!(groups.len(), 12);
    assert!(groups.iter().all(|g| g.len() == 5));
    assert_eq!(shown.replace(' ', ""), ab.digits());
    // The half an identity contributes is the same in every pair it is part of.
    let ac = SafetyNumber::for_pair(&a, &c);
    let halves = |n: &SafetyNumber| {
        let d = n.digits().to_owned();
        [d[..30].to_owned(), d[30..].to_owned()]
    };
    let shared: Vec<String> = halves(&ab)
        .into_iter()
        .filter(|h| halves(&ac).contains(h))
        .collect();
    assert_eq!(shared.len(), 1, "a's half appears in both of its pairs");
}

#[test]
fn debug_never_shows_the_secret() {
    let mut rng = StdRng::seed_from_u64(7);
    let pair = IdentityKeyPair::generate(&mut rng);
    let secret = pair.to_secret_bytes();
    let hex: String = secret
        .expose_secret()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    for shown in [format!("{pair:?}"), format!("{secret:?}")] {
        assert!(!shown.contains(&hex));
        assert!(!shown.contains(&format!("{:?}", secret.expose_secret())));
        assert!(shown.contains("***"));
    }
}
