//! One device's membership of one call's MLS group: the key source of a group call.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::signatures::{Signer, SignerError};
use viska_e2ee::identity::{IdentityKeyPair, PublicIdentity};
use viska_e2ee::keys::{Epoch, KeyUpdate, ParticipantId, SframeKey};
use viska_sframe::{BaseKey, CipherSuite, SendKey};
use zeroize::Zeroizing;

use crate::kid::{BASE_KEY_LABEL, EPOCHS_DISTINGUISHED, MAX_LEAVES, key_id, verification_code};
use crate::storage::{MemoryStorage, MlsStorage};
use crate::{GroupError, GroupEvent, GroupOutput};

/// The MLS cipher suite of every Viska group.
pub const MLS_SUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519;

/// How a member moves between epochs.
#[derive(Clone, Debug)]
pub struct GroupConfig {
    /// The SFrame cipher suite of the call's media.
    pub suite: CipherSuite,
    /// How long a member keeps sending under the previous epoch after it installed the next
    /// one, waiting for the delivery service to say every member holds the new keys
    /// ([`GroupMember::switch`]). After this it switches anyway.
    pub transition_timeout: Duration,
    /// How long the previous epochs' receive keys stay after this member switched: frames a
    /// slower member still sends under them keep playing.
    pub retain_previous: Duration,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            suite: CipherSuite::AesCtr128HmacSha256_80,
            transition_timeout: Duration::from_secs(2),
            retain_previous: Duration::from_secs(4),
        }
    }
}

/// The device's identity key as the MLS signature key: the same Ed25519 key signs the direct
/// handshake and the member's MLS messages, so its fingerprint and verification carry over.
struct IdentitySigner(IdentityKeyPair);

impl Signer for IdentitySigner {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignerError> {
        Ok(self.0.sign(payload).to_vec())
    }

    fn signature_scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

/// An epoch this member installed but does not send under yet.
struct PendingSend {
    epoch: Epoch,
    key: SendKey,
    deadline: Instant,
}

/// A commit this member made, waiting for the delivery service's verdict.
#[derive(Debug)]
pub struct Commit {
    /// The commit (an MLS `PublicMessage`), for the delivery service to order and fan out.
    pub commit: Vec<u8>,
    /// The Welcome for the members it adds, if any.
    pub welcome: Option<Vec<u8>>,
    /// The epoch the commit is for: the group's epoch before it.
    pub epoch: Epoch,
}

/// One device in one call's MLS group: builds and processes the group's handshake messages and
/// turns every epoch into SFrame keys ([`KeyUpdate`]s for the session), without IO or a clock.
///
/// Feed it the delivery service's messages ([`GroupMember::handle_message`]), its verdict on
/// this member's commits ([`GroupMember::commit_accepted`], [`GroupMember::commit_refused`]),
/// its word that every member holds an epoch ([`GroupMember::switch`]) and the time
/// ([`GroupMember::handle_timeout`]); drain [`GroupMember::poll_output`].
///
/// # Epoch transitions
///
/// When a commit arrives its epoch's keys are exported from the staged commit and installed
/// for receiving at once (every member's KID of the new epoch), and [`GroupOutput::Ready`]
/// tells the delivery service. This member keeps sending under the previous epoch until the
/// delivery service says every member is ready (or [`GroupConfig::transition_timeout`]
/// passed), so no receiver ever gets a frame it has no key for; the previous epochs' receive
/// keys go [`GroupConfig::retain_previous`] after the switch.
///
/// # State
///
/// The group's MLS state is written to the member's [`MlsStorage`] (memory by default), each
/// operation in one transaction. A member on persistent storage can be built again after the
/// process stopped and take up its group where it was ([`GroupMember::resume`]).
pub struct GroupMember<S: MlsStorage = MemoryStorage> {
    storage: S,
    crypto: RustCrypto,
    signer: IdentitySigner,
    public: PublicIdentity,
    credential: CredentialWithKey,
    config: GroupConfig,
    group: Option<MlsGroup>,
    roster: BTreeMap<ParticipantId, PublicIdentity>,
    sending: Option<Epoch>,
    pending: Option<PendingSend>,
    retire: Option<(Epoch, Instant)>,
    out: VecDeque<GroupOutput>,
    expected_group: Option<Vec<u8>>,
    /// Resumed from storage at this epoch: no send key for it or any before it.
    send_after: Option<Epoch>,
}

impl<S: MlsStorage> fmt::Debug for GroupMember<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupMember")
            .field("identity", &self.public.fingerprint())
            .field("epoch", &self.epoch())
            .field("sending", &self.sending)
            .field("roster", &self.roster.len())
            .finish_non_exhaustive()
    }
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .build()
}

impl GroupMember<MemoryStorage> {
    /// A device with `identity`, in no group yet, its MLS state in memory.
    pub fn new(identity: IdentityKeyPair, config: GroupConfig) -> Result<Self, GroupError> {
        Self::with_storage(identity, config, MemoryStorage::default())
    }
}

impl<S: MlsStorage> GroupMember<S> {
    /// A device with `identity`, in no group yet, its MLS state in `storage`.
    pub fn with_storage(
        identity: IdentityKeyPair,
        config: GroupConfig,
        storage: S,
    ) -> Result<Self, GroupError> {
        let public = identity.public();
        let credential = CredentialWithKey {
            credential: BasicCredential::new(public.to_bytes().to_vec()).into(),
            signature_key: public.to_bytes().to_vec().into(),
        };
        Ok(Self {
            storage,
            crypto: RustCrypto::default(),
            signer: IdentitySigner(identity),
            public,
            credential,
            config,
            group: None,
            roster: BTreeMap::new(),
            sending: None,
            pending: None,
            retire: None,
            out: VecDeque::new(),
            expected_group: None,
            send_after: None,
        })
    }

    /// This device's identity.
    pub fn identity(&self) -> &PublicIdentity {
        &self.public
    }

    /// The group's current epoch (merged), if in a group.
    pub fn epoch(&self) -> Option<Epoch> {
        self.group.as_ref().map(|g| Epoch(g.epoch().as_u64()))
    }

    /// The epoch this member sends under.
    pub fn sending_epoch(&self) -> Option<Epoch> {
        self.sending
    }

    /// This member's participant id (its leaf index), if in a group.
    pub fn own_participant(&self) -> Option<ParticipantId> {
        self.group
            .as_ref()
            .map(|g| ParticipantId(g.own_leaf_index().u32()))
    }

    /// The members of the current epoch with their identities, this device included.
    pub fn roster(&self) -> &BTreeMap<ParticipantId, PublicIdentity> {
        &self.roster
    }

    /// The current epoch's verification code ([`crate::kid::verification_code`]).
    pub fn verification_code(&self) -> Option<String> {
        self.group
            .as_ref()
            .and_then(|g| verification_code(g.epoch_authenticator().as_slice()))
    }

    /// An MLS exporter secret of the current epoch (RFC 9420 section 8.5), for a protocol
    /// layered on the group; wiped when dropped. The SFrame keys use the label
    /// [`crate::kid::BASE_KEY_LABEL`].
    pub fn export_secret(
        &self,
        label: &str,
        context: &[u8],
        len: usize,
    ) -> Result<Zeroizing<Vec<u8>>, GroupError> {
        let group = self.group.as_ref().ok_or(GroupError::NotInGroup)?;
        group
            .export_secret(&self.crypto, label, context, len)
            .map(Zeroizing::new)
            .map_err(|e| GroupError::Mls(e.to_string()))
    }

    /// A key package for someone to add this device with (a serialized MLS message). Each is
    /// for one use; `last_resort` makes one that may be used again when the others are gone
    /// (RFC 9420 section 16.8).
    pub fn key_package(&mut self, last_resort: bool) -> Result<Vec<u8>, GroupError> {
        let mut builder = KeyPackage::builder();
        if last_resort {
            // The extension must be among the leaf's capabilities, or the package is invalid.
            let capabilities = Capabilities::builder()
                .extensions(vec![ExtensionType::LastResort])
                .build();
            builder = builder
                .mark_as_last_resort()
                .leaf_node_capabilities(capabilities);
        }
        let (signer, credential) = (&self.signer, &self.credential);
        let bundle = self.storage.transact(|provider| {
            builder
                .build(MLS_SUITE, provider, signer, credential.clone())
                .map_err(|e| GroupError::Mls(e.to_string()))
        })?;
        MlsMessageOut::from(bundle.key_package().clone())
            .tls_serialize_detached()
            .map_err(|e| GroupError::Mls(e.to_string()))
    }

    /// Starts the call's group with this device alone in it, at epoch 0: it sends at once.
    pub fn create(&mut self, now: Instant, group_id: &[u8]) -> Result<(), GroupError> {
        if self.group.is_some() {
            return Err(GroupError::AlreadyInGroup);
        }
        let (signer, credential) = (&self.signer, &self.credential);
        let group = self.storage.transact(|provider| {
            MlsGroup::builder()
                .ciphersuite(MLS_SUITE)
                .with_group_id(GroupId::from_slice(group_id))
                .use_ratchet_tree_extension(true)
                .with_wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
                .build(provider, signer, credential.clone())
                .map_err(|e| GroupError::Mls(e.to_string()))
        })?;
        let base = export_base_key(&group, self.config.suite)?;
        self.group = Some(group);
        self.enter_epoch(now, base)?;
        // Alone, nobody needs to be waited for.
        self.switch_now(now);
        Ok(())
    }

    /// A commit adding the devices of `key_packages` (serialized MLS key-package messages).
    /// It takes effect when the delivery service accepts it ([`GroupMember::commit_accepted`]).
    /// A package from a delivery service should go through [`GroupMember::add_expecting`]:
    /// this one adds whoever the package names.
    pub fn add(&mut self, key_packages: &[Vec<u8>]) -> Result<Commit, GroupError> {
        self.add_checked(key_packages, None)
    }

    /// Like [`GroupMember::add`], for the packages of the devices `expected` (in order): a
    /// package of any other identity is refused with [`GroupError::CredentialMismatch`], so a
    /// delivery service cannot answer "the package of Bob" with one of its own.
    pub fn add_expecting(
        &mut self,
        key_packages: &[Vec<u8>],
        expected: &[PublicIdentity],
    ) -> Result<Commit, GroupError> {
        if key_packages.len() != expected.len() {
            return Err(GroupError::Malformed(
                "one expected identity per package".into(),
            ));
        }
        self.add_checked(key_packages, Some(expected))
    }

    fn add_checked(
        &mut self,
        key_packages: &[Vec<u8>],
        expected: Option<&[PublicIdentity]>,
    ) -> Result<Commit, GroupError> {
        let mut packages = Vec::with_capacity(key_packages.len());
        for (i, bytes) in key_packages.iter().enumerate() {
            let message = MlsMessageIn::tls_deserialize_exact(bytes)
                .map_err(|e| GroupError::Malformed(e.to_string()))?;
            let MlsMessageBodyIn::KeyPackage(package) = message.extract() else {
                return Err(GroupError::Malformed("not a key package".into()));
            };
            let package = package
                .validate(&self.crypto, ProtocolVersion::Mls10)
                .map_err(|e| GroupError::Malformed(e.to_string()))?;
            check_credential(
                package.leaf_node().credential(),
                package.leaf_node().signature_key().as_slice(),
            )?;
            let key = package.leaf_node().signature_key().as_slice();
            if expected
                .and_then(|e| e.get(i))
                .is_some_and(|want| want.to_bytes()[..] != *key)
            {
                return Err(GroupError::CredentialMismatch);
            }
            packages.push(package);
        }
        let group = self.group.as_mut().ok_or(GroupError::NotInGroup)?;
        if group.members().count() + packages.len() > MAX_LEAVES as usize {
            return Err(GroupError::TooManyMembers);
        }
        let epoch = Epoch(group.epoch().as_u64());
        let signer = &self.signer;
        let (commit, welcome, _) = self.storage.transact(|provider| {
            group
                .add_members(provider, signer, &packages)
                .map_err(|e| GroupError::Mls(e.to_string()))
        })?;
        Ok(Commit {
            commit: serialize(&commit)?,
            welcome: Some(serialize(&welcome)?),
            epoch,
        })
    }

    /// A commit removing `participants`.
    pub fn remove(&mut self, participants: &[ParticipantId]) -> Result<Commit, GroupError> {
        let group = self.group.as_mut().ok_or(GroupError::NotInGroup)?;
        let epoch = Epoch(group.epoch().as_u64());
        let leaves: Vec<_> = participants
            .iter()
            .map(|p| LeafNodeIndex::new(p.0))
            .collect();
        let signer = &self.signer;
        let (commit, welcome, _) = self.storage.transact(|provider| {
            group
                .remove_members(provider, signer, &leaves)
                .map_err(|e| GroupError::Mls(e.to_string()))
        })?;
        Ok(Commit {
            commit: serialize(&commit)?,
            welcome: welcome.as_ref().map(serialize).transpose()?,
            epoch,
        })
    }

    /// A commit that updates this member's own leaf and changes nobody's membership: the
    /// group's next epoch has keys none of the current epoch's holders can derive without
    /// processing it (an emergency rekey). It takes effect when the delivery service accepts
    /// it ([`GroupMember::commit_accepted`]).
    pub fn update(&mut self) -> Result<Commit, GroupError> {
        let group = self.group.as_mut().ok_or(GroupError::NotInGroup)?;
        let epoch = Epoch(group.epoch().as_u64());
        let signer = &self.signer;
        let bundle = self.storage.transact(|provider| {
            group
                .self_update(provider, signer, LeafNodeParameters::default())
                .map_err(|e| GroupError::Mls(e.to_string()))
        })?;
        Ok(Commit {
            commit: serialize(bundle.commit())?,
            welcome: None,
            epoch,
        })
    }

    /// The delivery service put this member's pending commit in the call's order: it takes
    /// effect.
    pub fn commit_accepted(&mut self, now: Instant) -> Result<(), GroupError> {
        let group = self.group.as_mut().ok_or(GroupError::NotInGroup)?;
        let Some(staged) = group.pending_commit() else {
            return Err(GroupError::NoPendingCommit);
        };
        let base = export_from_staged(staged, &self.crypto, self.config.suite)?;
        self.storage.transact(|provider| {
            group
                .merge_pending_commit(provider)
                .map_err(|e| GroupError::Mls(e.to_string()))
        })?;
        self.enter_epoch(now, base)
    }

    /// Another commit won the epoch: this member's is dropped (it processes the winner as it
    /// arrives, and may commit again on top of it).
    pub fn commit_refused(&mut self) -> Result<(), GroupError> {
        let group = self.group.as_mut().ok_or(GroupError::NotInGroup)?;
        self.storage.transact(|provider| {
            group
                .clear_pending_commit(provider.storage())
                .map_err(|e| GroupError::Mls(e.to_string()))
        })
    }

    /// Takes up this device's state in the group `group_id` as its storage holds it: after a
    /// restart, the member is back at the epoch it last merged, with every other member's
    /// receive keys of that epoch installed, so it hears the call at once. Returns `false`
    /// when the storage holds no such group (nothing changes then).
    ///
    /// It does **not** send under that epoch, nor under any it held before: the SFrame counters
    /// it used under them went with the process, and a counter must never be used twice under
    /// a key. It sends again from the next epoch on, whose keys are new: the driver commits an
    /// [`GroupMember::update`] (or any other commit moves the group on). A commit of its own
    /// that was waiting for the delivery service's verdict when it stopped is dropped: the
    /// verdict is lost, and the delivery service's order says what happened to it.
    pub fn resume(&mut self, now: Instant, group_id: &[u8]) -> Result<bool, GroupError> {
        if self.group.is_some() {
            return Err(GroupError::AlreadyInGroup);
        }
        let id = GroupId::from_slice(group_id);
        let loaded = self.storage.transact(|provider| {
            let Some(mut group) = MlsGroup::load(provider.storage(), &id)
                .map_err(|e| GroupError::Storage(e.to_string()))?
            else {
                return Ok(None);
            };
            if group.pending_commit().is_some() {
                group
                    .clear_pending_commit(provider.storage())
                    .map_err(|e| GroupError::Storage(e.to_string()))?;
            }
            Ok(Some(group))
        })?;
        let Some(group) = loaded else {
            return Ok(false);
        };
        if !group.is_active() {
            return Ok(false);
        }
        for member in group.members() {
            check_credential(&member.credential, &member.signature_key)?;
        }
        let base = export_base_key(&group, self.config.suite)?;
        let epoch = Epoch(group.epoch().as_u64());
        self.group = Some(group);
        self.send_after = Some(epoch);
        self.enter_epoch(now, base)?;
        Ok(true)
    }

    /// Whether this member was taken up from storage ([`GroupMember::resume`]) and does not
    /// send yet: it waits for an epoch after the one it resumed at.
    pub fn resumed_silent(&self) -> bool {
        self.send_after.is_some() && self.sending.is_none() && self.pending.is_none()
    }

    /// Deletes this member's group from its storage, without a word to anyone: the device is
    /// out of the call, or joins it again from a new Welcome.
    pub fn discard(mut self) {
        self.delete_group();
    }

    fn delete_group(&mut self) {
        let Some(mut group) = self.group.take() else {
            return;
        };
        if let Err(e) = self.storage.transact(|provider| {
            group
                .delete(provider.storage())
                .map_err(|e| GroupError::Storage(e.to_string()))
        }) {
            tracing::warn!(error = %e, "a left group's state was not deleted");
        }
    }

    /// Requires the next Welcome to be into the group `group_id` (the call it is delivered
    /// for); any other is refused as undecryptable.
    pub fn expect_group(&mut self, group_id: &[u8]) {
        self.expected_group = Some(group_id.to_vec());
    }

    /// A message from the delivery service: a commit of another member, or the Welcome into a
    /// group. A message that cannot be used is refused with an error and reported
    /// ([`GroupEvent::Failure`]); the member stays in its epoch.
    pub fn handle_message(&mut self, now: Instant, bytes: &[u8]) -> Result<(), GroupError> {
        let result = self.handle_message_inner(now, bytes);
        if let Some(reason) = result.as_ref().err().and_then(GroupError::failure) {
            self.out
                .push_back(GroupOutput::Event(GroupEvent::Failure { reason }));
        }
        result
    }

    fn handle_message_inner(&mut self, now: Instant, bytes: &[u8]) -> Result<(), GroupError> {
        let message = MlsMessageIn::tls_deserialize_exact(bytes)
            .map_err(|e| GroupError::Malformed(e.to_string()))?;
        match message.extract() {
            MlsMessageBodyIn::Welcome(welcome) => self.join(now, welcome),
            MlsMessageBodyIn::PublicMessage(message) => self.process(now, message.into()),
            MlsMessageBodyIn::PrivateMessage(message) => self.process(now, message.into()),
            _ => Err(GroupError::Malformed("not a group message".into())),
        }
    }

    fn join(&mut self, now: Instant, welcome: Welcome) -> Result<(), GroupError> {
        if self.group.is_some() {
            return Err(GroupError::AlreadyInGroup);
        }
        let expected = self.expected_group.take();
        // One transaction: a Welcome refused for its group or a member leaves nothing behind.
        let group = self.storage.transact(|provider| {
            let group = StagedWelcome::new_from_welcome(provider, &join_config(), welcome, None)
                .and_then(|staged| staged.into_group(provider))
                .map_err(|e| GroupError::Undecryptable(e.to_string()))?;
            if expected.is_some_and(|want| group.group_id().as_slice() != want.as_slice()) {
                // A Welcome into another group than the call it was delivered for.
                return Err(GroupError::Undecryptable(
                    "welcome into another group".into(),
                ));
            }
            for member in group.members() {
                check_credential(&member.credential, &member.signature_key)?;
            }
            Ok(group)
        })?;
        let base = export_base_key(&group, self.config.suite)?;
        self.group = Some(group);
        self.enter_epoch(now, base)
    }

    fn process(&mut self, now: Instant, message: ProtocolMessage) -> Result<(), GroupError> {
        let group = self.group.as_mut().ok_or(GroupError::NotInGroup)?;
        let current = group.epoch().as_u64();
        let theirs = message.epoch().as_u64();
        if theirs < current {
            return Err(GroupError::StaleEpoch {
                message: Epoch(theirs),
                current: Epoch(current),
            });
        }
        if theirs > current {
            return Err(GroupError::FutureEpoch {
                message: Epoch(theirs),
                current: Epoch(current),
            });
        }
        let suite = self.config.suite;
        let crypto = &self.crypto;
        // Processing and merging in one transaction: a commit refused half-way (a credential
        // that is not its identity) leaves the stored group where it was.
        let outcome = self.storage.transact(|provider| {
            let processed = group
                .process_message(provider, message)
                .map_err(|e| GroupError::Invalid(e.to_string()))?;
            match processed.into_content() {
                ProcessedMessageContent::StagedCommitMessage(staged) => {
                    for add in staged.add_proposals() {
                        let leaf = add.add_proposal().key_package().leaf_node();
                        check_credential(leaf.credential(), leaf.signature_key().as_slice())?;
                    }
                    if let Some(leaf) = staged.update_path_leaf_node() {
                        check_credential(leaf.credential(), leaf.signature_key().as_slice())?;
                    }
                    if staged.self_removed() {
                        group
                            .merge_staged_commit(provider, *staged)
                            .map_err(|e| GroupError::Mls(e.to_string()))?;
                        return Ok(Processed::Removed);
                    }
                    let base = export_from_staged(&staged, crypto, suite)?;
                    group
                        .merge_staged_commit(provider, *staged)
                        .map_err(|e| GroupError::Mls(e.to_string()))?;
                    Ok(Processed::Epoch(base))
                }
                ProcessedMessageContent::ProposalMessage(proposal) => group
                    .store_pending_proposal(provider.storage(), *proposal)
                    .map(|()| Processed::Proposal)
                    .map_err(|e| GroupError::Mls(e.to_string())),
                _ => Err(GroupError::Malformed("unexpected group content".into())),
            }
        })?;
        match outcome {
            Processed::Removed => {
                self.leave_group(now);
                Ok(())
            }
            Processed::Epoch(base) => self.enter_epoch(now, base),
            Processed::Proposal => Ok(()),
        }
    }

    /// The delivery service says every member holds `epoch`'s keys: send under it.
    pub fn switch(&mut self, now: Instant, epoch: Epoch) {
        if self.pending.as_ref().is_some_and(|p| p.epoch == epoch) {
            self.switch_now(now);
        }
    }

    /// Time passed: a transition that waited too long switches, retired keys go.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.pending.as_ref().is_some_and(|p| now >= p.deadline) {
            tracing::debug!("epoch transition timed out; switching");
            self.switch_now(now);
        }
        if let Some((epoch, _)) = self.retire.filter(|(_, at)| now >= *at) {
            self.retire = None;
            self.out
                .push_back(GroupOutput::Keys(KeyUpdate::RetireBefore { epoch }));
        }
    }

    /// When [`GroupMember::handle_timeout`] must next be called.
    pub fn next_timeout(&self) -> Option<Instant> {
        let a = self.pending.as_ref().map(|p| p.deadline);
        let b = self.retire.map(|(_, at)| at);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<GroupOutput> {
        self.out.pop_front()
    }

    fn switch_now(&mut self, now: Instant) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        let previous = self.sending.replace(pending.epoch);
        self.out.push_back(GroupOutput::Keys(KeyUpdate::Send {
            epoch: pending.epoch,
            suite: self.config.suite,
            key: pending.key,
        }));
        self.out.push_back(GroupOutput::Event(GroupEvent::Sending {
            epoch: pending.epoch,
        }));
        if previous.is_some() {
            self.retire = Some((pending.epoch, now + self.config.retain_previous));
        }
    }

    /// Installs the group's (just merged) epoch: receive keys for every other member, this
    /// member's send key held back for the switch, the roster's changes.
    fn enter_epoch(&mut self, now: Instant, base: BaseKey) -> Result<(), GroupError> {
        let group = self.group.as_ref().ok_or(GroupError::NotInGroup)?;
        let epoch = Epoch(group.epoch().as_u64());
        let me = ParticipantId(group.own_leaf_index().u32());
        let mut roster = BTreeMap::new();
        for member in group.members() {
            let participant = ParticipantId(member.index.u32());
            // A member already known keeps its parsed identity (parsing an Ed25519 key is
            // the costly part of a large group's roster).
            let identity = match self.roster.get(&participant) {
                Some(known) if known.to_bytes()[..] == member.signature_key[..] => *known,
                _ => PublicIdentity::from_bytes(&member.signature_key)
                    .map_err(|_| GroupError::CredentialMismatch)?,
            };
            roster.insert(participant, identity);
        }
        let code = verification_code(group.epoch_authenticator().as_slice());
        // RFC 9605 section 5.2: the KIDs of epoch n are those of epoch n - 8; those keys go
        // first, whatever their grace period.
        if epoch.0 >= EPOCHS_DISTINGUISHED {
            let oldest = Epoch(epoch.0 - (EPOCHS_DISTINGUISHED - 1));
            self.out
                .push_back(GroupOutput::Keys(KeyUpdate::RetireBefore { epoch: oldest }));
        }
        for (participant, identity) in &self.roster {
            if !roster.contains_key(participant) {
                self.out.push_back(GroupOutput::Keys(KeyUpdate::Remove {
                    participant: *participant,
                }));
                self.out.push_back(GroupOutput::Event(GroupEvent::Left {
                    participant: *participant,
                    identity: *identity,
                }));
            }
        }
        for (participant, identity) in &roster {
            if *participant == me {
                continue;
            }
            if self.roster.get(participant) != Some(identity) {
                if self.roster.contains_key(participant) {
                    // Another device took a freed leaf in the same commit's epoch: the old
                    // one's stream goes first.
                    self.out.push_back(GroupOutput::Keys(KeyUpdate::Remove {
                        participant: *participant,
                    }));
                }
                self.out.push_back(GroupOutput::Event(GroupEvent::Joined {
                    participant: *participant,
                    identity: *identity,
                }));
            }
            let kid = key_id(*participant, epoch).ok_or(GroupError::TooManyMembers)?;
            self.out.push_back(GroupOutput::Keys(KeyUpdate::Receive {
                participant: *participant,
                epoch,
                suite: self.config.suite,
                key: SframeKey {
                    key_id: kid,
                    base_key: base.clone(),
                },
            }));
        }
        self.roster = roster;
        let kid = key_id(me, epoch).ok_or(GroupError::TooManyMembers)?;
        // The transition timeout runs from the first epoch this member holds without sending
        // under it: commits in quick succession do not push the switch back for ever.
        let deadline = self
            .pending
            .as_ref()
            .map_or(now + self.config.transition_timeout, |p| p.deadline);
        // A member resumed from storage may have sent under this epoch before it stopped,
        // with counters it no longer knows: no send key for it (`resume`).
        if self.send_after.is_none_or(|after| epoch > after) {
            self.pending = Some(PendingSend {
                epoch,
                key: SendKey::new(kid, base),
                deadline,
            });
        }
        // Never send more than seven epochs behind the newest (the rollover rule: receivers
        // drop the keys of epoch n - 8 when they install n, whose KIDs are the same).
        if self
            .sending
            .is_some_and(|s| epoch.0.saturating_sub(s.0) >= EPOCHS_DISTINGUISHED - 1)
        {
            self.switch_now(now);
        }
        self.out.push_back(GroupOutput::Event(GroupEvent::Epoch {
            epoch,
            verification_code: code.unwrap_or_default(),
        }));
        self.out.push_back(GroupOutput::Ready(epoch));
        Ok(())
    }

    fn leave_group(&mut self, _now: Instant) {
        // The group's state goes from storage too: the device may be added back later, into
        // the same group id.
        self.delete_group();
        for participant in self.roster.keys().copied().collect::<Vec<_>>() {
            self.out
                .push_back(GroupOutput::Keys(KeyUpdate::Remove { participant }));
        }
        self.roster.clear();
        self.group = None;
        self.pending = None;
        self.retire = None;
        self.sending = None;
        self.out.push_back(GroupOutput::Event(GroupEvent::Removed));
    }
}

fn serialize(message: &MlsMessageOut) -> Result<Vec<u8>, GroupError> {
    message
        .tls_serialize_detached()
        .map_err(|e| GroupError::Mls(e.to_string()))
}

/// A member's credential must be its identity: a basic credential holding exactly the
/// Ed25519 key it signs with.
fn check_credential(credential: &Credential, signature_key: &[u8]) -> Result<(), GroupError> {
    let basic = BasicCredential::try_from(credential.clone())
        .map_err(|_| GroupError::CredentialMismatch)?;
    // The key itself is parsed (and refused if it is no Ed25519 key) when the member enters
    // the roster.
    if basic.identity() != signature_key || signature_key.len() != 32 {
        return Err(GroupError::CredentialMismatch);
    }
    Ok(())
}

fn export_base_key(group: &MlsGroup, suite: CipherSuite) -> Result<BaseKey, GroupError> {
    let crypto = openmls_rust_crypto::RustCrypto::default();
    group
        .export_secret(&crypto, BASE_KEY_LABEL, b"", suite.key_len())
        .map(BaseKey::new)
        .map_err(|e| GroupError::Mls(e.to_string()))
}

/// What processing a group message came to.
enum Processed {
    /// A commit into a new epoch, with its SFrame base key.
    Epoch(BaseKey),
    /// A commit that removed this member.
    Removed,
    /// A proposal, kept for a later commit.
    Proposal,
}

fn export_from_staged(
    staged: &StagedCommit,
    crypto: &RustCrypto,
    suite: CipherSuite,
) -> Result<BaseKey, GroupError> {
    staged
        .export_secret(crypto, BASE_KEY_LABEL, b"", suite.key_len())
        .map(BaseKey::new)
        .map_err(|e| GroupError::Mls(e.to_string()))
}
