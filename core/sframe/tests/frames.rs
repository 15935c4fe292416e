//! Sender/receiver behaviour, run for every cipher suite.

use viska_sframe::{
    BaseKey, CipherSuite, HeaderError, KeyId, ReceiverStats, ReplayConfig, SframeError,
    SframeHeader, SframeReceiver, SframeSender, overhead,
};

fn base_key(byte: u8) -> BaseKey {
    BaseKey::new(vec![byte; 32])
}

fn receiver(suite: CipherSuite, kid: KeyId, key: &BaseKey) -> SframeReceiver {
    let mut rx = SframeReceiver::new(suite, ReplayConfig::default()).expect("receiver");
    rx.add_key(kid, key).expect("add key");
    rx
}

fn protect(tx: &mut SframeSender, metadata: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8; tx.protected_len(plaintext.len())];
    let len = tx
        .protect(metadata, plaintext, &mut frame)
        .expect("protect");
    assert_eq!(len, frame.len());
    frame
}

fn unprotect(
    rx: &mut SframeReceiver,
    metadata: &[u8],
    frame: &[u8],
) -> Result<(u64, Vec<u8>), SframeError> {
    let mut out = vec![0u8; frame.len()];
    let got = rx.unprotect(metadata, frame, &mut out)?;
    out.truncate(got.len);
    Ok((got.ctr, out))
}

#[test]
fn round_trip_with_and_without_metadata() {
    for suite in CipherSuite::ALL {
        let key = base_key(1);
        let kid = KeyId(0x1234);
        let mut tx = SframeSender::new(suite, kid, &key).expect("sender");
        let mut rx = receiver(suite, kid, &key);
        for (i, metadata) in [&b""[..], b"route:42", &[0x55; 600]]
            .into_iter()
            .enumerate()
        {
            for size in [0usize, 1, 60, 160, 320, 1500] {
                let plaintext: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
                let frame = protect(&mut tx, metadata, &plaintext);
                assert_eq!(
                    frame.len(),
                    plaintext.len() + overhead(suite, kid, frame_ctr(&frame))
                );
                if size > 8 {
                    assert_ne!(
                        &frame[frame.len() - suite.tag_len() - size..frame.len() - suite.tag_len()],
                        &plaintext[..]
                    );
                }
                let (ctr, out) = unprotect(&mut rx, metadata, &frame).expect("unprotect");
                assert_eq!(out, plaintext, "{suite:?} metadata #{i} size {size}");
                assert_eq!(ctr, frame_ctr(&frame));
            }
        }
        assert_eq!(rx.stats().frames_ok, 18);
    }
}

fn frame_ctr(frame: &[u8]) -> u64 {
    SframeHeader::decode(frame).expect("header").0.ctr
}

#[test]
fn counters_increase_from_start() {
    for suite in CipherSuite::ALL {
        let key = base_key(2);
        let mut tx = SframeSender::starting_at(suite, KeyId(1), &key, 1000).expect("sender");
        assert_eq!(tx.next_counter(), Some(1000));
        for expected in 1000..1010 {
            let frame = protect(&mut tx, b"", b"x");
            assert_eq!(frame_ctr(&frame), expected);
        }
        assert_eq!(tx.next_counter(), Some(1010));
    }
}

#[test]
fn skip_to_moves_only_forward() {
    for suite in CipherSuite::ALL {
        let mut tx = SframeSender::new(suite, KeyId(1), &base_key(3)).expect("sender");
        protect(&mut tx, b"", b"a");
        assert_eq!(tx.skip_to(1), Ok(()), "skip to the next counter is a no-op");
        assert_eq!(tx.skip_to(500), Ok(()));
        assert_eq!(frame_ctr(&protect(&mut tx, b"", b"b")), 500);
        assert_eq!(
            tx.skip_to(500),
            Err(SframeError::CounterRegression {
                next: 501,
                requested: 500
            })
        );
        assert_eq!(
            tx.skip_to(3),
            Err(SframeError::CounterRegression {
                next: 501,
                requested: 3
            })
        );
        assert_eq!(tx.next_counter(), Some(501));
    }
}

#[test]
fn counter_limit_requires_rekey() {
    for suite in CipherSuite::ALL {
        let mut tx = SframeSender::new(suite, KeyId(1), &base_key(4))
            .expect("sender")
            .with_counter_limit(3);
        for _ in 0..3 {
            protect(&mut tx, b"", b"a");
        }
        assert_eq!(tx.next_counter(), None);
        let mut out = [0u8; 64];
        assert_eq!(
            tx.protect(b"", b"a", &mut out),
            Err(SframeError::RekeyRequired)
        );
        assert_eq!(tx.skip_to(5), Err(SframeError::RekeyRequired));

        let mut tx = SframeSender::new(suite, KeyId(1), &base_key(4))
            .expect("sender")
            .with_counter_limit(10);
        assert_eq!(tx.skip_to(10), Err(SframeError::RekeyRequired));
        assert_eq!(tx.skip_to(9), Ok(()));
        protect(&mut tx, b"", b"a");
        assert_eq!(
            tx.protect(b"", b"a", &mut out),
            Err(SframeError::RekeyRequired)
        );
    }
}

#[test]
fn counter_space_end_requires_rekey() {
    for suite in CipherSuite::ALL {
        let key = base_key(5);
        let mut tx =
            SframeSender::starting_at(suite, KeyId(9), &key, u64::MAX - 1).expect("sender");
        let mut rx = receiver(suite, KeyId(9), &key);
        for expected in [u64::MAX - 1, u64::MAX] {
            let frame = protect(&mut tx, b"", b"last");
            assert_eq!(unprotect(&mut rx, b"", &frame).expect("ok").0, expected);
        }
        assert_eq!(tx.next_counter(), None);
        let mut out = [0u8; 64];
        assert_eq!(
            tx.protect(b"", b"a", &mut out),
            Err(SframeError::RekeyRequired)
        );
    }
}

#[test]
fn failed_protect_consumes_no_counter() {
    for suite in CipherSuite::ALL {
        let mut tx = SframeSender::new(suite, KeyId(1), &base_key(6)).expect("sender");
        let needed = tx.protected_len(10);
        let mut small = vec![0u8; needed - 1];
        assert_eq!(
            tx.protect(b"", &[0; 10], &mut small),
            Err(SframeError::BufferTooSmall {
                needed,
                available: needed - 1
            })
        );
        assert_eq!(tx.next_counter(), Some(0));
    }
}

#[test]
fn replay_is_rejected_and_counted() {
    for suite in CipherSuite::ALL {
        let key = base_key(7);
        let kid = KeyId(3);
        let mut tx = SframeSender::new(suite, kid, &key).expect("sender");
        let mut rx = receiver(suite, kid, &key);
        let first = protect(&mut tx, b"", b"hello");
        unprotect(&mut rx, b"", &first).expect("first");
        assert_eq!(
            unprotect(&mut rx, b"", &first),
            Err(SframeError::Duplicate { kid, ctr: 0 })
        );

        tx.skip_to(128).expect("skip");
        let later = protect(&mut tx, b"", b"later");
        unprotect(&mut rx, b"", &later).expect("later");
        // Counter 0 is now exactly `window` behind 128.
        assert_eq!(
            unprotect(&mut rx, b"", &first),
            Err(SframeError::TooOld { kid, ctr: 0 })
        );
        let stats = rx.stats();
        assert_eq!(
            (stats.frames_ok, stats.duplicates, stats.too_old),
            (2, 1, 1)
        );
    }
}

#[test]
fn reordered_frames_inside_window_are_accepted() {
    for suite in CipherSuite::ALL {
        let key = base_key(8);
        let mut tx = SframeSender::new(suite, KeyId(1), &key).expect("sender");
        let mut rx = receiver(suite, KeyId(1), &key);
        let frames: Vec<_> = (0..50).map(|_| protect(&mut tx, b"", b"frame")).collect();
        for frame in frames.iter().rev() {
            unprotect(&mut rx, b"", frame).expect("reordered frame accepted");
        }
        for frame in &frames {
            assert!(matches!(
                unprotect(&mut rx, b"", frame),
                Err(SframeError::Duplicate { .. })
            ));
        }
    }
}

/// A forged frame with a far-ahead counter must not slide the window: the genuine frames that
/// follow still get in.
#[test]
fn window_moves_only_after_authentication() {
    for suite in CipherSuite::ALL {
        let key = base_key(9);
        let kid = KeyId(1);
        let mut tx = SframeSender::new(suite, kid, &key).expect("sender");
        let mut rx = receiver(suite, kid, &key);
        let genuine = protect(&mut tx, b"", b"genuine");

        let mut forger =
            SframeSender::starting_at(suite, kid, &base_key(0xee), 1_000_000).expect("forger");
        let forged = protect(&mut forger, b"", b"forged");
        assert_eq!(
            unprotect(&mut rx, b"", &forged),
            Err(SframeError::AuthenticationFailed)
        );
        // Same counter as the genuine frame, wrong key: must not mark counter 0 as seen either.
        let mut forger0 = SframeSender::new(suite, kid, &base_key(0xee)).expect("forger");
        let forged0 = protect(&mut forger0, b"", b"forged");
        assert_eq!(
            unprotect(&mut rx, b"", &forged0),
            Err(SframeError::AuthenticationFailed)
        );

        assert_eq!(
            unprotect(&mut rx, b"", &genuine).expect("genuine").1,
            b"genuine"
        );
        assert_eq!(rx.stats().auth_failures, 2);
    }
}

#[test]
fn any_bit_flip_fails_authentication() {
    for suite in CipherSuite::ALL {
        let key = base_key(10);
        let kid = KeyId(0x42);
        let mut tx = SframeSender::new(suite, kid, &key).expect("sender");
        tx.skip_to(0x4243).expect("skip");
        let frame = protect(&mut tx, b"meta", b"sixteen byte msg");
        let header_len = SframeHeader::decode(&frame).expect("header").1;
        for byte in 0..frame.len() {
            let mut rx = receiver(suite, kid, &key);
            let mut tampered = frame.clone();
            tampered[byte] ^= 0x01;
            let result = unprotect(&mut rx, b"meta", &tampered);
            if byte >= header_len {
                assert_eq!(
                    result,
                    Err(SframeError::AuthenticationFailed),
                    "byte {byte}"
                );
            } else {
                // A flipped header bit changes KID or CTR (or the header length): rejected
                // either way, never accepted.
                assert!(result.is_err(), "byte {byte}");
            }
        }
        let mut rx = receiver(suite, kid, &key);
        assert_eq!(
            unprotect(&mut rx, b"metA", &frame),
            Err(SframeError::AuthenticationFailed)
        );
        assert_eq!(
            unprotect(&mut rx, b"", &frame),
            Err(SframeError::AuthenticationFailed)
        );
        assert!(unprotect(&mut rx, b"meta", &frame).is_ok());
    }
}

#[test]
fn failed_authentication_leaves_no_plaintext() {
    for suite in CipherSuite::ALL {
        let key = base_key(11);
        let mut tx = SframeSender::new(suite, KeyId(1), &key).expect("sender");
        let mut rx = receiver(suite, KeyId(1), &key);
        let mut frame = protect(&mut tx, b"", &[0xab; 40]);
        let last = frame.len() - 1;
        frame[last] ^= 0x80;
        let mut out = [0x77u8; 64];
        assert_eq!(
            rx.unprotect(b"", &frame, &mut out),
            Err(SframeError::AuthenticationFailed)
        );
        assert!(out[..40].iter().all(|&b| b == 0), "plaintext area wiped");
        assert!(!out.contains(&0xab));
    }
}

#[test]
fn distinct_errors_for_distinct_failures() {
    for suite in CipherSuite::ALL {
        let key = base_key(12);
        let mut tx = SframeSender::new(suite, KeyId(5), &key).expect("sender");
        let frame = protect(&mut tx, b"", b"payload");
        let mut rx = SframeReceiver::new(suite, ReplayConfig::default()).expect("receiver");
        let mut out = [0u8; 64];

        assert_eq!(
            rx.unprotect(b"", &frame, &mut out),
            Err(SframeError::UnknownKeyId(KeyId(5)))
        );
        rx.add_key(KeyId(5), &key).expect("add");
        assert_eq!(
            rx.unprotect(b"", &[], &mut out),
            Err(SframeError::MalformedHeader(HeaderError::Truncated {
                needed: 1,
                available: 0
            }))
        );
        assert!(matches!(
            rx.unprotect(b"", &[0x90, 0x01], &mut out),
            Err(SframeError::MalformedHeader(HeaderError::Truncated { .. }))
        ));
        assert_eq!(
            rx.unprotect(b"", &frame[..suite.tag_len()], &mut out),
            Err(SframeError::TruncatedFrame {
                len: suite.tag_len() - 1,
                header_len: 1,
                tag_len: suite.tag_len()
            })
        );
        assert_eq!(
            rx.unprotect(b"", &frame, &mut out[..6]),
            Err(SframeError::BufferTooSmall {
                needed: 7,
                available: 6
            })
        );
        // A failed attempt for lack of room does not burn the counter.
        assert_eq!(rx.unprotect(b"", &frame, &mut out).map(|u| u.len), Ok(7));
        let stats: ReceiverStats = rx.stats();
        assert_eq!(
            (
                stats.frames_ok,
                stats.unknown_kid,
                stats.malformed,
                stats.auth_failures
            ),
            (1, 1, 3, 0)
        );
    }
}

#[test]
fn keys_per_kid_and_removal() {
    for suite in CipherSuite::ALL {
        let (alice, bob) = (base_key(20), base_key(21));
        let mut tx_a = SframeSender::new(suite, KeyId(1), &alice).expect("a");
        let mut tx_b = SframeSender::new(suite, KeyId(2), &bob).expect("b");
        let mut rx = SframeReceiver::new(suite, ReplayConfig { window: 16 }).expect("receiver");
        rx.add_key(KeyId(1), &alice).expect("add");
        rx.add_key(KeyId(2), &bob).expect("add");
        // Both senders use counter 0: windows are per KID.
        let fa = protect(&mut tx_a, b"", b"from a");
        let fb = protect(&mut tx_b, b"", b"from b");
        assert_eq!(unprotect(&mut rx, b"", &fa).expect("a").1, b"from a");
        assert_eq!(unprotect(&mut rx, b"", &fb).expect("b").1, b"from b");
        assert!(rx.has_key(KeyId(1)));
        assert!(rx.remove_key(KeyId(1)));
        assert!(!rx.remove_key(KeyId(1)));
        let fa2 = protect(&mut tx_a, b"", b"again");
        assert_eq!(
            unprotect(&mut rx, b"", &fa2),
            Err(SframeError::UnknownKeyId(KeyId(1)))
        );
        // A key under the wrong KID does not authenticate.
        rx.add_key(KeyId(1), &bob).expect("add");
        assert_eq!(
            unprotect(&mut rx, b"", &fa2),
            Err(SframeError::AuthenticationFailed)
        );
    }
}

#[test]
fn suites_do_not_cross_decrypt() {
    let key = base_key(30);
    let mut tx =
        SframeSender::new(CipherSuite::ChaCha20Poly1305Sha256, KeyId(1), &key).expect("sender");
    let frame = protect(&mut tx, b"", b"chacha");
    let mut rx = receiver(CipherSuite::Aes128GcmSha256, KeyId(1), &key);
    assert_eq!(
        unprotect(&mut rx, b"", &frame),
        Err(SframeError::AuthenticationFailed)
    );
}

#[test]
fn invalid_configs_and_keys_are_refused() {
    for suite in CipherSuite::ALL {
        assert!(matches!(
            SframeReceiver::new(suite, ReplayConfig { window: 0 }),
            Err(SframeError::InvalidReplayWindow { .. })
        ));
        assert!(matches!(
            SframeSender::new(suite, KeyId(1), &BaseKey::new(vec![1; 8])),
            Err(SframeError::BaseKeyTooShort { len: 8, min: 16 })
        ));
        let mut rx = SframeReceiver::new(suite, ReplayConfig::default()).expect("receiver");
        assert!(rx.add_key(KeyId(1), &BaseKey::new(Vec::new())).is_err());
        assert!(!rx.has_key(KeyId(1)));
    }
}

#[test]
fn debug_output_holds_no_key_material() {
    for suite in CipherSuite::ALL {
        let secret = vec![0x3c; 32];
        let key = BaseKey::new(secret.clone());
        let tx = SframeSender::new(suite, KeyId(1), &key).expect("sender");
        let rx = receiver(suite, KeyId(1), &key);
        let derived = viska_sframe::key::DerivedKey::derive(suite, KeyId(1), &key).expect("derive");
        let printed = [
            format!("{key:?}"),
            format!("{tx:?}"),
            format!("{rx:?}"),
            format!("{derived:?}"),
        ];
        let needles = [
            "3c3c".to_string(),
            "60, 60".to_string(),
            format!(
                "{:02x}{:02x}",
                derived.expose_key()[0],
                derived.expose_key()[1]
            ),
            format!("{}, {}", derived.expose_key()[0], derived.expose_key()[1]),
            format!("{}, {}", derived.expose_salt()[0], derived.expose_salt()[1]),
        ];
        for text in &printed {
            assert!(text.contains("***"), "{text}");
            for needle in &needles {
                assert!(!text.contains(needle.as_str()), "{text} leaks {needle}");
            }
        }
    }
}

/// Pseudo-random garbage, and random corruptions of a real frame, never panic and never
/// authenticate.
#[test]
fn random_input_never_panics_or_authenticates() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for suite in CipherSuite::ALL {
        let key = base_key(40);
        let mut rx = SframeReceiver::new(suite, ReplayConfig::default()).expect("receiver");
        for kid in 0..8 {
            rx.add_key(KeyId(kid), &key).expect("add");
        }
        let mut tx = SframeSender::new(suite, KeyId(3), &key).expect("sender");
        let real = protect(&mut tx, b"", &[9u8; 40]);
        let mut out = [0u8; 128];
        for i in 0..4000 {
            let len = (next() % 80) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if i % 2 == 0 {
                bytes = real.clone();
                // One flip: two could cancel out and restore the genuine frame.
                let at = (next() as usize) % bytes.len();
                bytes[at] ^= 1 << (next() % 8);
            }
            let _ = SframeHeader::decode(&bytes);
            assert!(
                rx.unprotect(b"", &bytes, &mut out).is_err(),
                "garbage authenticated"
            );
        }
        let stats = rx.stats();
        assert_eq!(stats.frames_ok, 0);
        assert_eq!(
            stats.auth_failures
                + stats.malformed
                + stats.unknown_kid
                + stats.too_old
                + stats.duplicates,
            4000
        );
    }
}
