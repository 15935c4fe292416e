/*
 * The key store through the C API alone: a real SQLCipher file opened with a passphrase, a
 * wrong passphrase refused, two phones whose identities and trust come from their stores
 * placing real calls over loopback QUIC (trust on first use, then verified after
 * viska_call_mark_verified), an encrypted backup restored into a fresh store, a tampered
 * one refused, and the store's key changed while a phone uses it (passphrase to platform key
 * and back; the old key refused afterwards, a weak passphrase refused before anything
 * changes).
 *
 * Usage: store <scratch directory>. Exits non-zero with a message on failure.
 */
#include "harness.h"

#include <pthread.h>
#include <stdatomic.h>

#define PASS "amber walrus sings 1931 softly"
#define NEW_PASS "copper lantern 4410 hums low"

/* The callee answers every call and keeps the last one. */
typedef struct Callee {
    pthread_mutex_t lock;
    ViskaCall *last;
    atomic_int count;
    atomic_int last_trust;
} Callee;

static void on_incoming(void *ud, ViskaCall *call, const uint8_t *key, ViskaTrust trust,
                        const char *addr) {
    Callee *c = ud;
    (void)key;
    (void)addr;
    check(viska_call_answer(call), "answer");
    pthread_mutex_lock(&c->lock);
    if (c->last != NULL) {
        viska_call_free(c->last);
    }
    c->last = call;
    pthread_mutex_unlock(&c->lock);
    atomic_store(&c->last_trust, (int)trust);
    atomic_fetch_add(&c->count, 1);
}

static ViskaPhone *phone_of(const char *name, ViskaStore *store, Callee *callee) {
    ViskaIdentity *id = NULL;
    check(viska_store_identity(store, &id), "viska_store_identity");
    ViskaPhoneConfig *config = NULL;
    check(viska_phone_config_new(name, id, &config), "config");
    check(viska_phone_config_set_store(config, store), "viska_phone_config_set_store");
    check(viska_phone_config_set_realtime(config, false), "realtime");
    ViskaPhoneCallbacks cb;
    memset(&cb, 0, sizeof cb);
    cb.user_data = callee;
    cb.on_incoming_call = callee ? on_incoming : NULL;
    ViskaPhone *phone = NULL;
    check(viska_phone_new(config, &cb, &phone), "viska_phone_new");
    viska_phone_config_free(config);
    viska_identity_free(id);
    return phone;
}

static int is_active(const ViskaCall *call) {
    ViskaCallState st;
    check(viska_call_state(call, &st), "state");
    return st.kind == VISKA_CALL_STATE_KIND_ACTIVE;
}

static int is_ended(const ViskaCall *call) {
    bool ended = false;
    check(viska_call_is_ended(call, &ended), "is_ended");
    return ended;
}

static ViskaTrust call_trust(const ViskaCall *call) {
    ViskaTrust trust;
    bool known = false;
    check(viska_call_peer(call, NULL, &trust, &known), "viska_call_peer");
    return known ? trust : VISKA_TRUST_UNKNOWN;
}

static ViskaTrust contact_trust(const ViskaStore *store, const char *handle) {
    ViskaTrust trust;
    check(viska_store_contact_trust(store, handle, &trust), "viska_store_contact_trust");
    return trust;
}

/* Alice calls the contact "bob"; returns her call once both ends are active. */
static ViskaCall *call_bob(ViskaPhone *alice, const char *addr, Callee *bob, int nth) {
    ViskaCall *call = NULL;
    check(viska_phone_call_contact(alice, "bob", addr, &call), "viska_phone_call_contact");
    WAIT_FOR(is_active(call) && atomic_load(&bob->count) == nth, "an answered call");
    return call;
}

static void hang_up(ViskaCall *call, Callee *bob) {
    check(viska_call_hangup(call), "hangup");
    pthread_mutex_lock(&bob->lock);
    ViskaCall *other = bob->last;
    pthread_mutex_unlock(&bob->lock);
    WAIT_FOR(is_ended(call) && is_ended(other), "both ends ended");
    viska_call_free(call);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s <scratch directory>\n", argv[0]);
        return 2;
    }
    char alice_path[4096], bob_path[4096], fresh_path[4096];
    snprintf(alice_path, sizeof alice_path, "%s/alice.db", argv[1]);
    snprintf(bob_path, sizeof bob_path, "%s/bob.db", argv[1]);
    snprintf(fresh_path, sizeof fresh_path, "%s/fresh.db", argv[1]);
    remove(alice_path);
    remove(bob_path);
    remove(fresh_path);

    ViskaStore *alice_store = NULL;
    check(viska_store_open(alice_path, PASS, &alice_store), "viska_store_open");
    ViskaStore *wrong = NULL;
    expect(viska_store_open(alice_path, PASS "!", &wrong), VISKA_ERROR_CODE_WRONG_KEY,
           "a wrong passphrase");
    uint8_t key[32];
    for (int i = 0; i < 32; i++) {
        key[i] = (uint8_t)(i * 7 + 1);
    }
    expect(viska_store_open_with_key(bob_path, key, 31, &wrong),
           VISKA_ERROR_CODE_INVALID_ARGUMENT, "a 31-byte key");
    ViskaStore *bob_store = NULL;
    check(viska_store_open_with_key(bob_path, key, 32, &bob_store), "viska_store_open_with_key");

    Callee bob_seen = {PTHREAD_MUTEX_INITIALIZER, NULL, 0, 0};
    ViskaPhone *alice = phone_of("c-alice", alice_store, NULL);
    ViskaPhone *bob = phone_of("c-bob", bob_store, &bob_seen);
    char *addr = NULL;
    check(viska_phone_listen(bob, "127.0.0.1:0", NULL, &addr), "listen");

    /* First call: trust on first use. */
    ViskaCall *call = call_bob(alice, addr, &bob_seen, 1);
    if (call_trust(call) != VISKA_TRUST_UNVERIFIED) {
        fail("first call trust %u, expected unverified", (unsigned)call_trust(call));
    }
    if (contact_trust(alice_store, "bob") != VISKA_TRUST_UNVERIFIED) {
        fail("bob not pinned as unverified");
    }
    check(viska_call_mark_verified(call), "viska_call_mark_verified");
    WAIT_FOR(contact_trust(alice_store, "bob") == VISKA_TRUST_VERIFIED, "bob verified in the store");
    hang_up(call, &bob_seen);

    /* Second call: verified, from the store. */
    call = call_bob(alice, addr, &bob_seen, 2);
    if (call_trust(call) != VISKA_TRUST_VERIFIED) {
        fail("second call trust %u, expected verified", (unsigned)call_trust(call));
    }
    printf("  ok: the second call is verified\n");
    hang_up(call, &bob_seen);

    /* Backups. */
    uint8_t *backup = NULL;
    size_t len = 0;
    expect(viska_store_export_backup(alice_store, "password1234", &backup, &len),
           VISKA_ERROR_CODE_WEAK_PASSPHRASE, "a weak backup passphrase");
    check(viska_store_export_backup(alice_store, PASS, &backup, &len), "export");
    ViskaStore *fresh = NULL;
    check(viska_store_open_with_key(fresh_path, key, 32, &fresh), "open fresh");
    backup[len / 2] ^= 1;
    expect(viska_store_import_backup(fresh, backup, len, PASS), VISKA_ERROR_CODE_BAD_BACKUP,
           "a tampered backup");
    backup[len / 2] ^= 1;
    check(viska_store_import_backup(fresh, backup, len, PASS), "import");
    viska_bytes_free(backup, len);
    if (contact_trust(fresh, "bob") != VISKA_TRUST_VERIFIED) {
        fail("the restored store lost bob's verification");
    }
    ViskaIdentity *a = NULL, *b = NULL;
    check(viska_store_identity(alice_store, &a), "identity");
    check(viska_store_identity(fresh, &b), "identity");
    uint8_t ka[VISKA_PUBLIC_KEY_LEN], kb[VISKA_PUBLIC_KEY_LEN];
    check(viska_identity_public_key(a, ka), "public key");
    check(viska_identity_public_key(b, kb), "public key");
    if (memcmp(ka, kb, sizeof ka) != 0) {
        fail("the restored identity differs");
    }
    printf("  ok: the backup restores the same identity and trust\n");
    viska_identity_free(a);
    viska_identity_free(b);

    /* Changing the key while alice's phone uses the store. */
    expect(viska_store_change_key(alice_store, "password1234"), VISKA_ERROR_CODE_WEAK_PASSPHRASE,
           "a weak new passphrase");
    expect(viska_store_change_key_with_key(alice_store, key, 31),
           VISKA_ERROR_CODE_INVALID_ARGUMENT, "a 31-byte new key");
    uint8_t key2[32];
    for (int i = 0; i < 32; i++) {
        key2[i] = (uint8_t)(i * 11 + 5);
    }
    check(viska_store_change_key_with_key(alice_store, key2, 32),
          "viska_store_change_key_with_key");
    printf("  ok: alice's store is under a platform key now\n");
    /* The phone goes on with the store under its new key: the third call is verified. */
    call = call_bob(alice, addr, &bob_seen, 3);
    if (call_trust(call) != VISKA_TRUST_VERIFIED) {
        fail("the call after the key change is not verified");
    }
    hang_up(call, &bob_seen);
    check(viska_store_change_key(alice_store, NEW_PASS), "viska_store_change_key");
    viska_phone_free(alice);
    alice = NULL;
    viska_store_free(alice_store);
    alice_store = NULL;
    expect(viska_store_open(alice_path, PASS, &wrong), VISKA_ERROR_CODE_WRONG_KEY,
           "the first passphrase after the changes");
    expect(viska_store_open_with_key(alice_path, key2, 32, &wrong), VISKA_ERROR_CODE_WRONG_KEY,
           "the platform key after the change back to a passphrase");
    check(viska_store_open(alice_path, NEW_PASS, &alice_store), "open with the new passphrase");
    if (contact_trust(alice_store, "bob") != VISKA_TRUST_VERIFIED) {
        fail("bob's verification was lost in the key changes");
    }
    check(viska_store_identity(alice_store, &a), "identity");
    check(viska_identity_public_key(a, kb), "public key");
    viska_identity_free(a);
    if (memcmp(ka, kb, sizeof ka) != 0) {
        fail("the identity changed with the key");
    }
    printf("  ok: the new passphrase opens the same identity and trust; the old keys do not\n");

    pthread_mutex_lock(&bob_seen.lock);
    viska_call_free(bob_seen.last);
    bob_seen.last = NULL;
    pthread_mutex_unlock(&bob_seen.lock);
    viska_string_free(addr);
    viska_phone_free(alice);
    viska_phone_free(bob);
    viska_store_free(alice_store);
    viska_store_free(bob_store);
    viska_store_free(fresh);
    printf("store: all checks passed\n");
    return 0;
}
