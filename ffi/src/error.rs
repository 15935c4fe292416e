//! The one error type of the bindings, and the one listeners may return.

/// Why a method of the bindings failed.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum ViskaError {
    /// An argument the method cannot use (an address that does not parse, a key of the wrong
    /// length, DTMF digits the protocol cannot carry).
    #[error("invalid argument: {detail}")]
    InvalidArgument {
        /// What was wrong.
        detail: String,
    },
    /// The call is over; the command was not sent.
    #[error("the call has ended")]
    CallEnded,
    /// The command is not possible in the call's current state (answering a call that is not
    /// ringing, holding one not yet answered).
    #[error("{detail}")]
    InvalidState {
        /// The command and the state.
        detail: String,
    },
    /// The phone is closed.
    #[error("closed")]
    Closed,
    /// The phone already runs as many calls as it takes.
    #[error("already {limit} calls, the most this phone takes")]
    TooManyCalls {
        /// The configured limit.
        limit: u32,
    },
    /// A socket, TLS or QUIC failure.
    #[error("transport: {detail}")]
    Transport {
        /// What failed.
        detail: String,
    },
    /// A setting the phone refused.
    #[error("configuration: {detail}")]
    Config {
        /// What was refused.
        detail: String,
    },
    /// Audio could not start, or the phone was not set up for app-fed audio.
    #[error("audio: {detail}")]
    Audio {
        /// What failed.
        detail: String,
    },
    /// The relay refused a request, broke its protocol, or the MLS group refused an operation.
    #[error("group call: {detail}")]
    Group {
        /// What failed.
        detail: String,
    },
    /// No such call on this phone.
    #[error("no such call")]
    NoSuchCall,
    /// The operation did not finish in time.
    #[error("timed out")]
    Timeout,
    /// The key (or passphrase) does not open the key store, or the file is not a store.
    #[error("wrong key, or not a Viska store")]
    WrongKey,
    /// A backup passphrase the password policy refused.
    #[error("passphrase refused: {detail}")]
    WeakPassphrase {
        /// Why.
        detail: String,
    },
    /// A backup that does not open: a wrong passphrase, or it was changed or cut short.
    #[error("{detail}")]
    BadBackup {
        /// What was wrong.
        detail: String,
    },
    /// The relay admits registered devices only and no login was given.
    #[error("the relay requires an account login")]
    LoginRequired,
    /// The relay refused the login (it does not say which part was wrong); try again after
    /// `retry_after_secs` (0: at once).
    #[error("login refused (retry after {retry_after_secs} s)")]
    LoginFailed {
        /// Seconds of lock-out left.
        retry_after_secs: u32,
    },
    /// The key store failed (its file, its database).
    #[error("key store: {detail}")]
    Store {
        /// What failed.
        detail: String,
    },
}

impl ViskaError {
    pub(crate) fn invalid(detail: impl Into<String>) -> Self {
        Self::InvalidArgument {
            detail: detail.into(),
        }
    }
}

impl From<viska::PhoneError> for ViskaError {
    fn from(e: viska::PhoneError) -> Self {
        use viska::PhoneError as E;
        match e {
            E::Config(e) => Self::Config {
                detail: e.to_string(),
            },
            E::Runtime(e) => Self::Transport {
                detail: e.to_string(),
            },
            E::Transport(e) => Self::Transport {
                detail: e.to_string(),
            },
            E::Closed => Self::Closed,
            E::CallEnded => Self::CallEnded,
            E::TooManyCalls { limit } => Self::TooManyCalls {
                limit: u32::try_from(limit).unwrap_or(u32::MAX),
            },
            E::AlreadyListening(addr) => Self::InvalidState {
                detail: format!("already listening on {addr}"),
            },
            e @ E::InvalidState { .. } => Self::InvalidState {
                detail: e.to_string(),
            },
            e @ (E::InvalidDtmf(_) | E::DtmfDuration(_)) => Self::invalid(e.to_string()),
            e @ E::Devices(_) => Self::Audio {
                detail: e.to_string(),
            },
            e => Self::Config {
                detail: e.to_string(),
            },
        }
    }
}

impl From<viska::group::GroupPhoneError> for ViskaError {
    fn from(e: viska::group::GroupPhoneError) -> Self {
        use viska::group::GroupPhoneError as E;
        match e {
            E::Transport(e) => Self::Transport {
                detail: e.to_string(),
            },
            E::NoSuchCall => Self::NoSuchCall,
            E::Closed => Self::Closed,
            E::Timeout => Self::Timeout,
            E::LoginRequired => Self::LoginRequired,
            E::LoginFailed { retry_after_secs } => Self::LoginFailed { retry_after_secs },
            e => Self::Group {
                detail: e.to_string(),
            },
        }
    }
}

impl From<viska::identity::IdentityError> for ViskaError {
    fn from(e: viska::identity::IdentityError) -> Self {
        Self::invalid(e.to_string())
    }
}

/// What a listener may return (throw): the library logs it, counts it and goes on.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum ListenerError {
    /// The listener failed.
    #[error("listener failed: {detail}")]
    Failed {
        /// Why.
        detail: String,
    },
}

impl From<uniffi::UnexpectedUniFFICallbackError> for ListenerError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        Self::Failed { detail: e.reason }
    }
}
