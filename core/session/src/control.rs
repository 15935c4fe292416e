//! Who controls a session's call: the direct call's state machine (signaling, handshake,
//! answer, hold), or, in a group call, the session itself. A group call's keys come from
//! outside ([`crate::Input::Keys`], from MLS) and its membership from the group's delivery
//! service, so here it is only answered, held, muted or over.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use viska_call::{
    Call, CallError, CallEvent, CallState, CallStats, Command, EndReason, Input as CallInput,
    Output as CallOutput, Reason, Role, Side, Trust,
};
use viska_e2ee::direct::Sas;
use viska_e2ee::identity::PublicIdentity;
use viska_proto::{CallId, MediaParams};

/// How far ahead a group call's own timer lies: it has none.
const NO_TIMER: Duration = Duration::from_secs(3600);

pub(crate) enum Control {
    Direct(Box<Call>),
    Group(GroupControl),
}

/// A group call as the session sees it: active from the start, until hung up.
pub(crate) struct GroupControl {
    state: CallState,
    media: MediaParams,
    out: VecDeque<CallOutput>,
    now: Instant,
}

impl GroupControl {
    pub(crate) fn new(now: Instant, media: MediaParams) -> Self {
        let state = CallState::Active {
            local_hold: false,
            remote_hold: false,
            muted: false,
        };
        let mut control = Self {
            state,
            media,
            out: VecDeque::new(),
            now,
        };
        control.changed();
        control
    }

    fn changed(&mut self) {
        self.out
            .push_back(CallOutput::Event(CallEvent::StateChanged(self.state)));
        let (send, receive) = match self.state {
            CallState::Active {
                local_hold, muted, ..
            } => (!local_hold && !muted, !local_hold),
            _ => (false, false),
        };
        self.out
            .push_back(CallOutput::Event(CallEvent::MediaDirection {
                send,
                receive,
            }));
    }

    fn end(&mut self, reason: EndReason) {
        if !self.state.is_ended() {
            self.state = CallState::Ended(reason);
            self.changed();
        }
    }

    fn handle_input(&mut self, input: CallInput) -> Result<(), CallError> {
        match input {
            CallInput::Timeout(now) => {
                self.now = now;
                Ok(())
            }
            CallInput::Closed(now, reason) => {
                self.now = now;
                self.end(reason);
                Ok(())
            }
            CallInput::Command(now, command) => {
                self.now = now;
                self.command(command)
            }
            _ => Err(CallError::UnexpectedMessage {
                message: "direct-call signaling",
                state: self.state,
            }),
        }
    }

    fn command(&mut self, command: Command) -> Result<(), CallError> {
        let CallState::Active {
            local_hold, muted, ..
        } = self.state
        else {
            return Err(CallError::InvalidCommand {
                command: "a command",
                state: self.state,
            });
        };
        let (hold, mute) = match command {
            Command::Hangup | Command::Abort(_) => {
                let reason = match command {
                    Command::Abort(reason) => reason,
                    _ => Reason::Normal,
                };
                self.end(EndReason::Hangup {
                    by: Side::Local,
                    reason,
                });
                return Ok(());
            }
            Command::Hold => (true, muted),
            Command::Resume => (false, muted),
            Command::Mute(m) => (local_hold, m),
            // Reception reports travel with the group's own signaling, not this stream.
            Command::SendReceptionReport { .. } => return Ok(()),
            _ => {
                return Err(CallError::InvalidCommand {
                    command: "a direct-call command",
                    state: self.state,
                });
            }
        };
        if (hold, mute) != (local_hold, muted) {
            self.state = CallState::Active {
                local_hold: hold,
                remote_hold: false,
                muted: mute,
            };
            self.changed();
        }
        Ok(())
    }
}

impl Control {
    pub(crate) fn role(&self) -> Role {
        match self {
            Self::Direct(call) => call.role(),
            // Every member keeps its own frame clock: nobody follows another's phase.
            Self::Group(_) => Role::Caller,
        }
    }

    pub(crate) fn is_group(&self) -> bool {
        matches!(self, Self::Group(_))
    }

    pub(crate) fn state(&self) -> CallState {
        match self {
            Self::Direct(call) => call.state(),
            Self::Group(g) => g.state,
        }
    }

    pub(crate) fn call_id(&self) -> Option<CallId> {
        match self {
            Self::Direct(call) => call.call_id(),
            Self::Group(_) => None,
        }
    }

    pub(crate) fn peer(&self) -> Option<&PublicIdentity> {
        match self {
            Self::Direct(call) => call.peer(),
            Self::Group(_) => None,
        }
    }

    pub(crate) fn trust(&self) -> Option<Trust> {
        match self {
            Self::Direct(call) => call.trust(),
            Self::Group(_) => None,
        }
    }

    pub(crate) fn sas(&self) -> Option<Sas> {
        match self {
            Self::Direct(call) => call.sas(),
            Self::Group(_) => None,
        }
    }

    pub(crate) fn call(&self) -> Option<&Call> {
        match self {
            Self::Direct(call) => Some(call),
            Self::Group(_) => None,
        }
    }

    pub(crate) fn media(&self) -> MediaParams {
        match self {
            Self::Direct(call) => call.media(),
            Self::Group(g) => g.media,
        }
    }

    pub(crate) fn stats(&self) -> CallStats {
        match self {
            Self::Direct(call) => call.stats(),
            Self::Group(g) => CallStats {
                bitrate_bps: g.media.bitrate_bps,
                ..CallStats::default()
            },
        }
    }

    pub(crate) fn handle_input(&mut self, input: CallInput) -> Result<(), CallError> {
        match self {
            Self::Direct(call) => call.handle_input(input),
            Self::Group(g) => g.handle_input(input),
        }
    }

    pub(crate) fn poll_output(&mut self) -> CallOutput {
        match self {
            Self::Direct(call) => call.poll_output(),
            Self::Group(g) => g
                .out
                .pop_front()
                .unwrap_or(CallOutput::Timeout(g.now + NO_TIMER)),
        }
    }
}
