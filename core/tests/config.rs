//! A phone's configuration is checked when it is built: what cannot work is refused with a
//! typed error naming what is wrong, before any call is placed.

use std::time::Duration;

use viska::PhoneConfig;
use viska::media::codec::OpusConfig;
use viska::phone::{ConfigError, generate_identity};
use viska::proto::FrameDuration;
use viska::sframe::CipherSuite;

fn builder() -> viska::PhoneConfigBuilder {
    PhoneConfig::builder("cfg", generate_identity())
}

#[test]
fn the_defaults_build() {
    let config = builder().build().expect("defaults");
    assert_eq!(config.opus().frame, FrameDuration::Ms20);
    assert_eq!(config.max_calls(), 4);
}

#[test]
fn frames_a_version_1_phone_does_not_play_are_refused() {
    for frame in [FrameDuration::Ms40, FrameDuration::Ms60] {
        let opus = OpusConfig {
            frame,
            ..OpusConfig::default()
        };
        match builder().opus(opus).build() {
            Err(ConfigError::FrameDuration(f)) => assert_eq!(f, frame),
            other => panic!("{frame:?}: {other:?}"),
        }
    }
    for frame in [FrameDuration::Ms10, FrameDuration::Ms20] {
        let opus = OpusConfig {
            frame,
            ..OpusConfig::default()
        };
        let config = builder().opus(opus).build().expect("played");
        assert_eq!(config.opus().frame, frame);
    }
}

#[test]
fn suites_names_limits_durations_and_codec_settings_are_checked() {
    assert!(matches!(
        builder().suites(vec![]).build(),
        Err(ConfigError::Suites(_))
    ));
    assert!(matches!(
        builder()
            .suites(vec![
                CipherSuite::Aes128GcmSha256,
                CipherSuite::Aes128GcmSha256
            ])
            .build(),
        Err(ConfigError::Suites(_))
    ));
    for name in ["", "thirteen-char"] {
        assert!(matches!(
            PhoneConfig::builder(name, generate_identity()).build(),
            Err(ConfigError::Name(n)) if n == name
        ));
    }
    assert!(matches!(
        builder().max_calls(0).build(),
        Err(ConfigError::ZeroLimit("max_calls"))
    ));
    assert!(matches!(
        builder().max_ringing_per_source(0).build(),
        Err(ConfigError::ZeroLimit("max_ringing_per_source"))
    ));
    assert!(matches!(
        builder().ring_timeout(Duration::ZERO).build(),
        Err(ConfigError::ZeroDuration("ring_timeout"))
    ));
    assert!(matches!(
        builder().tls_deadline(Duration::ZERO).build(),
        Err(ConfigError::ZeroDuration("tls_deadline"))
    ));
    let opus = OpusConfig {
        bitrate_bps: 1_000,
        ..OpusConfig::default()
    };
    assert!(matches!(
        builder().opus(opus).build(),
        Err(ConfigError::Codec(_))
    ));
}
