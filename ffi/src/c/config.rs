//! A phone's configuration ([`ViskaPhoneConfig`]): a builder the application fills and gives
//! to [`viska_phone_new`](super::phone::viska_phone_new). Settings are checked there (an error
//! with code `VISKA_ERROR_CODE_CONFIG`); a configuration can make several phones.

use std::ffi::c_char;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use viska::group::RelayLogin;
use viska::identity::{IdentityKeyPair, PublicIdentity};
#[cfg(feature = "device")]
use viska::phone::DeviceAudio;
use viska::phone::{AppAudio, AppAudioConfig, AudioFactory, FileAudio, NullAudio};
use viska::sframe::CipherSuite;
use viska::{PhoneConfig, PhoneConfigBuilder};

use super::audio::{ViskaAppCapture, ViskaAppPlayback};
use super::error::ViskaError;
#[cfg(not(feature = "device"))]
use super::error::ViskaErrorCode;
use super::identity::{ViskaIdentity, public_key_arg};
use super::util::{Result, borrow, bytes_arg, opt_str_arg, out_arg, run, str_arg, write};

/// The settings of a phone, built up by the `viska_phone_config_*` functions.
pub struct ViskaPhoneConfig {
    name: String,
    identity: IdentityKeyPair,
    suites: Option<Vec<CipherSuite>>,
    audio: Option<Arc<dyn AudioFactory>>,
    ring_timeout: Option<Duration>,
    verified_peers: Vec<PublicIdentity>,
    max_calls: Option<usize>,
    recording: Option<PathBuf>,
    realtime: Option<bool>,
    dtx: Option<bool>,
    store: Option<viska::store::Store>,
    /// For a group phone: taken (and so wiped) by the next connect.
    relay_login: Mutex<Option<RelayLogin>>,
}

/// What a group phone takes from a configuration.
pub(crate) struct GroupParts {
    pub(crate) identity: IdentityKeyPair,
    pub(crate) audio: Arc<dyn AudioFactory>,
    pub(crate) verified_peers: Vec<PublicIdentity>,
    pub(crate) store: Option<viska::store::Store>,
    pub(crate) login: Option<RelayLogin>,
}

impl ViskaPhoneConfig {
    /// The Rust builder with every setting given.
    pub(crate) fn builder(&self) -> PhoneConfigBuilder {
        let mut b = PhoneConfig::builder(self.name.clone(), self.identity.clone());
        if let Some(suites) = &self.suites {
            b = b.suites(suites.clone());
        }
        if let Some(audio) = &self.audio {
            b = b.audio(Arc::clone(audio));
        }
        if let Some(timeout) = self.ring_timeout {
            b = b.ring_timeout(timeout);
        }
        if !self.verified_peers.is_empty() {
            b = b.verified_peers(self.verified_peers.clone());
        }
        if let Some(n) = self.max_calls {
            b = b.max_calls(n);
        }
        if let Some(path) = &self.recording {
            b = b.recording(path.clone());
        }
        if let Some(on) = self.realtime {
            b = b.realtime(on);
        }
        if let Some(store) = &self.store {
            b = b.store(store.clone());
        }
        if let Some(on) = self.dtx {
            b = b.dtx(on);
        }
        b
    }

    /// The parts of the settings a group phone uses: identity, audio, verified peers, the key
    /// store, and the relay login, which this takes out of the configuration.
    pub(crate) fn group_parts(&self) -> GroupParts {
        let audio = self
            .audio
            .clone()
            .unwrap_or_else(|| Arc::new(NullAudio) as Arc<dyn AudioFactory>);
        let login = self
            .relay_login
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        GroupParts {
            identity: self.identity.clone(),
            audio,
            verified_peers: self.verified_peers.clone(),
            store: self.store.clone(),
            login,
        }
    }
}

/// Borrows a configuration mutably.
///
/// # Safety
///
/// `config` is NULL or a live configuration not used elsewhere during the call.
unsafe fn config_mut<'a>(config: *mut ViskaPhoneConfig) -> Result<&'a mut ViskaPhoneConfig> {
    // SAFETY: forwarded to the caller.
    unsafe { config.as_mut() }.ok_or_else(|| ViskaError::null("config"))
}

/// A new configuration into `*out` (free it with [`viska_phone_config_free`]): the phone's
/// `name` (1 to 12 characters; its threads are `vk-<name>` and `vk-<name>-ev`) and identity
/// (copied; the handle stays the caller's). The defaults are Viska's: every cipher suite, no
/// audio, the default ring timeout, 4 calls, raised priority for the media thread.
///
/// # Safety
///
/// `name` is a NUL-terminated string; `identity` a live identity; `out` a valid pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_phone_config_new(
    name: *const c_char,
    identity: *const ViskaIdentity,
    out: *mut *mut ViskaPhoneConfig,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: a NUL-terminated string per the caller.
        let name = unsafe { str_arg(name, "name") }?;
        // SAFETY: NULL or live per the caller.
        let identity = unsafe { borrow(identity, "identity") }?;
        let out = out_arg(out, "out")?;
        let config = ViskaPhoneConfig {
            name: name.to_owned(),
            identity: identity.key.clone(),
            suites: None,
            audio: None,
            ring_timeout: None,
            verified_peers: Vec::new(),
            max_calls: None,
            recording: None,
            realtime: None,
            dtx: None,
            store: None,
            relay_login: Mutex::new(None),
        };
        // SAFETY: non-NULL and writable per the caller.
        unsafe { write(out, Box::into_raw(Box::new(config))) };
        Ok(())
    })
}

/// The SFrame suites the phone accepts, in order of preference (the first is offered): `len`
/// suite ids (`VISKA_SUITE_*`). Unknown ids are refused here; an empty or repeated list when
/// the phone is made.
///
/// # Safety
///
/// `config` is a live configuration; `suites` points to `len` readable ids.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_phone_config_set_suites(
    config: *mut ViskaPhoneConfig,
    suites: *const u16,
    len: usize,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: live and unshared per the caller.
        let config = unsafe { config_mut(config) }?;
        // SAFETY: `len` readable ids per the caller.
        let ids = unsafe { bytes_arg(suites, len, "suites") }?;
        let suites = ids
            .iter()
            .map(|&id| {
                CipherSuite::from_id(id).ok_or_else(|| {
                    ViskaError::invalid(format_args!("unknown cipher suite id {id:#06x}"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        config.suites = Some(suites);
        Ok(())
    })
}

/// No audio (the default): calls send silence and discard what they hear.
///
/// # Safety
///
/// `config` is a live configuration.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_phone_config_set_audio_none(
    config: *mut ViskaPhoneConfig,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: live and unshared per the caller.
        let config = unsafe { config_mut(config) }?;
        config.audio = Some(Arc::new(NullAudio));
        Ok(())
    })
}

/// WAV files: each call sends `input_wav` (any PCM WAV, converted to 48 kHz mono; NULL:
/// silence), from its start again at its end if `loop_input`, and writes what it hears to
/// `output_wav` (48 kHz mono 16-bit; NULL: discarded). A file that cannot be opened ends the
/// call (an audio event `VISKA_AUDIO_EVENT_KIND_START_FAILED`).
///
/// # Safety
///
/// `config` is a live configuration; the paths are NULL or NUL-terminated strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_phone_config_set_audio_files(
    config: *mut ViskaPhoneConfig,
    input_wav: *const c_char,
    loop_input: bool,
    output_wav: *const c_char,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: live and unshared per the caller.
        let config = unsafe { config_mut(config) }?;
        // SAFETY: NULL or NUL-terminated per the caller.
        let input = unsafe { opt_str_arg(input_wav, "input_wav") }?;
        // SAFETY: NULL or NUL-terminated per the caller.
        let output = unsafe { opt_str_arg(output_wav, "output_wav") }?;
        config.audio = Some(Arc::new(FileAudio {
            input: input.map(PathBuf::from),
            loop_input,
            output: output.map(PathBuf::from),
        }));
        Ok(())
    })
}

/// The system's sound devices: the input and output device of these names (as the system
/// lists them), or the default ones for NULL.
///
/// # Safety
///
/// `config` is a live configuration; the names are NULL or NUL-terminated strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_phone_config_set_audio_device(
    config: *mut ViskaPhoneConfig,
    input_device: *const c_char,
    output_device: *const c_char,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: live and unshared per the caller.
        let config = unsafe { config_mut(config) }?;
        // SAFETY: NULL or NUL-terminated per the caller.
        let input = unsafe { opt_str_arg(input_device, "input_device") }?;
        // SAFETY: NULL or NUL-terminated per the caller.
        let output = unsafe { opt_str_arg(output_device, "output_device") }?;
        #[cfg(feature = "device")]
        {
            config.audio = Some(Arc::new(DeviceAudio {
                input: input.map(str::to_owned),
                output: output.map(str::to_owned),
            }));
            Ok(())
        }
        #[cfg(not(feature = "device"))]
        {
            let _ = (config, input, output);
            Err(ViskaError::new(
                ViskaErrorCode::Audio,
                "built without sound devices (feature `device`)",
            ))
        }
    })
}

/// Audio the application moves itself: it pushes interleaved 16-bit samples at
/// `capture_rate` Hz with `capture_channels` channels into `*capture_out`, and pulls what to
/// play at `playback_rate` Hz with `playback_channels` channels from `*playback_out` (see
/// `viska_app_capture_push`, `viska_app_playback_pull`). Both ends belong to the caller (free
/// them with `viska_app_capture_free` and `viska_app_playback_free`); either out-pointer may
/// be NULL if that end is not wanted. Every call of the phone hears what is pushed; what is
/// pulled is every call mixed.
///
/// # Safety
///
/// `config` is a live configuration; the out-pointers are NULL or valid pointers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_phone_config_set_audio_app(
    config: *mut ViskaPhoneConfig,
    capture_rate: u32,
    capture_channels: u16,
    playback_rate: u32,
    playback_channels: u16,
    capture_out: *mut *mut ViskaAppCapture,
    playback_out: *mut *mut ViskaAppPlayback,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: live and unshared per the caller.
        let config = unsafe { config_mut(config) }?;
        if capture_rate == 0 || playback_rate == 0 {
            return Err(ViskaError::invalid("a sample rate is 0"));
        }
        if capture_channels == 0 || playback_channels == 0 {
            return Err(ViskaError::invalid("a channel count is 0"));
        }
        let (audio, capture, playback) = AppAudio::new(AppAudioConfig {
            capture_rate,
            capture_channels,
            playback_rate,
            playback_channels,
        });
        config.audio = Some(Arc::new(audio));
        let capture = ViskaAppCapture { inner: capture };
        let playback = ViskaAppPlayback {
            inner: Mutex::new(playback),
        };
        if !capture_out.is_null() {
            // SAFETY: non-NULL and writable per the caller.
            unsafe { write(capture_out, Box::into_raw(Box::new(capture))) };
        }
        if !playback_out.is_null() {
            // SAFETY: non-NULL and writable per the caller.
            unsafe { write(playback_out, Box::into_raw(Box::new(playback))) };
        }
        Ok(())
    })
}

/// How long an incoming call may ring unanswered, in milliseconds (0 is refused when the
/// phone is made).
///
/// # Safety
///
/// `config` is a live configuration.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_phone_config_set_ring_timeout_ms(
    config: *mut ViskaPhoneConfig,
    timeout_ms: u64,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: live and unshared per the caller.
        let config = unsafe { config_mut(config) }?;
        config.ring_timeout = Some(Duration::from_millis(timeout_ms));
        Ok(())
    })
}

/// Adds an identity the user verified in an earlier session (the public key of `len` =
/// `VISKA_PUBLIC_KEY_LEN` bytes, as `viska_phone_verified_peers` gave it): calls with it are
/// `VISKA_TRUST_VERIFIED`.
///
/// # Safety
///
/// `config` is a live configuration; `public_key` points to `len` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_phone_config_add_verified_peer(
    config: *mut ViskaPhoneConfig,
    public_key: *const u8,
    len: usize,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: live and unshared per the caller.
        let config = unsafe { config_mut(config) }?;
        // SAFETY: `len` readable bytes per the caller.
        let peer = unsafe { public_key_arg(public_key, len) }?;
        config.verified_peers.push(peer);
        Ok(())
    })
}

/// How many calls the phone runs at once (default 4).
///
/// # Safety
///
/// `config` is a live configuration.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_phone_config_set_max_calls(
    config: *mut ViskaPhoneConfig,
    max_calls: usize,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: live and unshared per the caller.
        let config = unsafe { config_mut(config) }?;
        config.max_calls = Some(max_calls);
        Ok(())
    })
}

/// Records each call (both sides mixed) to the Ogg Opus file at `path`; NULL: no recording.
///
/// # Safety
///
/// `config` is a live configuration; `path` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_phone_config_set_recording(
    config: *mut ViskaPhoneConfig,
    path: *const c_char,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: live and unshared per the caller.
        let config = unsafe { config_mut(config) }?;
        // SAFETY: NULL or NUL-terminated per the caller.
        let path = unsafe { opt_str_arg(path, "path") }?;
        config.recording = path.map(PathBuf::from);
        Ok(())
    })
}

/// Whether to ask for real-time priority for the media thread where the system allows it
/// (default true; refusals are ignored).
///
/// # Safety
///
/// `config` is a live configuration.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_phone_config_set_realtime(
    config: *mut ViskaPhoneConfig,
    on: bool,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: live and unshared per the caller.
        let config = unsafe { config_mut(config) }?;
        config.realtime = Some(on);
        Ok(())
    })
}

/// Discontinuous transmission (default true): while the user is silent, only comfort-noise
/// updates are sent, a few kbit/s instead of the full rate.
///
/// # Safety
///
/// `config` is a live configuration.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_phone_config_set_dtx(
    config: *mut ViskaPhoneConfig,
    on: bool,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: live and unshared per the caller.
        let config = unsafe { config_mut(config) }?;
        config.dtx = Some(on);
        Ok(())
    })
}

/// The device's key store (shared, not consumed: the handle stays the caller's). Calls take
/// their trust from its contacts (trust on first use, verification, changed keys) and are
/// recorded in its history; [`viska_phone_config_add_verified_peer`] is then not consulted.
/// A group phone (`viska_group_phone_connect`) records in it the group calls it is in, and
/// after a restart asks to be put back into them. The identity given to
/// [`viska_phone_config_new`] should be the store's (`viska_store_identity`).
///
/// # Safety
///
/// `config` is a live configuration; `store` a live store.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_phone_config_set_store(
    config: *mut ViskaPhoneConfig,
    store: *const super::store::ViskaStore,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: live and unshared per the caller.
        let config = unsafe { config_mut(config) }?;
        // SAFETY: NULL or live per the caller.
        let store = unsafe { borrow(store, "store") }?;
        config.store = Some(store.store.clone());
        Ok(())
    })
}

/// For a group phone (`viska_group_phone_connect`) on a relay that admits registered devices
/// only: the account to log in as when this device is not registered yet (the login
/// registers it; later connections need only the device's key). `code` is the current
/// 6-digit code of the account's authenticator (TOTP). The strings are copied; the copy of
/// the password is wiped once the next connect with this configuration used it (or when the
/// configuration is freed or given another login), so set it again for another connect.
///
/// # Safety
///
/// `config` is a live configuration; `account`, `password` and `code` NUL-terminated strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_phone_config_set_relay_login(
    config: *mut ViskaPhoneConfig,
    account: *const c_char,
    password: *const c_char,
    code: *const c_char,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: live and unshared per the caller.
        let config = unsafe { config_mut(config) }?;
        // SAFETY: NUL-terminated per the caller.
        let account = unsafe { str_arg(account, "account") }?;
        // SAFETY: NUL-terminated per the caller.
        let password = unsafe { str_arg(password, "password") }?;
        // SAFETY: NUL-terminated per the caller.
        let code = unsafe { str_arg(code, "code") }?;
        let login = RelayLogin {
            account: account.to_owned(),
            password: zeroize::Zeroizing::new(password.to_owned()),
            code: code.to_owned(),
        };
        *config
            .relay_login
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(login);
        Ok(())
    })
}

/// Frees a configuration (phones made from it keep running). NULL is fine.
///
/// # Safety
///
/// `config` is NULL or a configuration not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_phone_config_free(config: *mut ViskaPhoneConfig) {
    // SAFETY: NULL or owned and not yet freed, per the caller.
    unsafe { super::util::free(config) }
}
