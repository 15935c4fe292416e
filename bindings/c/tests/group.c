/*
 * A 3-party group call through a real relay (the viska-relay binary, started by
 * scripts/test-c), through the C API alone: one device creates the call and adds the two
 * others, they accept it from their on_joined callback, every member hears the two others and
 * shows the same verification code, then one leaves and the two others see it go.
 *
 * Then, on a second relay that admits registered devices only (started by scripts/test-c with
 * an account and its TOTP secret), a device without a login is refused with
 * VISKA_ERROR_CODE_LOGIN_REQUIRED, a wrong password with VISKA_ERROR_CODE_LOGIN_FAILED, and
 * the right password with the current RFC 6238 code (computed here, from the RFC) admits a
 * device that keeps a key store: the call it creates is recorded in the store, forgotten when
 * it leaves, and the registered device later connects with its key alone.
 *
 * Usage: group <relay ip:port> <relay fingerprint hex> <speech.wav>
 *              [<accounts relay ip:port> <its fingerprint hex> <account> <password>
 *               <TOTP secret, base32> <scratch directory>].
 * Exits non-zero with a message on failure. Conditions are awaited with a generous timeout;
 * nothing asserts on timing.
 */
#define _GNU_SOURCE /* pthread_getname_np */
#include "harness.h"

#include <pthread.h>
#include <stdatomic.h>

typedef struct Device {
    ViskaGroupPhone *_Atomic phone;
    uint8_t key[VISKA_PUBLIC_KEY_LEN];
    atomic_int joined, left, epochs, bad_thread;
    uint8_t left_key[VISKA_PUBLIC_KEY_LEN];
} Device;

static void on_thread(Device *d) {
    char name[32] = {0};
    pthread_getname_np(pthread_self(), name, sizeof name);
    if (strcmp(name, "vk-group-events") != 0) {
        atomic_fetch_add(&d->bad_thread, 1);
    }
}

/* Accepts every call the device is added to, as a user tapping "join" would. */
static void on_joined(void *ud, const char *call) {
    Device *d = ud;
    on_thread(d);
    atomic_fetch_add(&d->joined, 1);
    ViskaGroupPhone *phone = atomic_load(&d->phone);
    if (phone != NULL) {
        check(viska_group_phone_accept(phone, call), "accept from on_joined");
    }
}

static void on_left(void *ud, const char *call, uint32_t participant, const uint8_t *key) {
    Device *d = ud;
    (void)call;
    (void)participant;
    on_thread(d);
    memcpy(d->left_key, key, VISKA_PUBLIC_KEY_LEN);
    atomic_fetch_add(&d->left, 1);
}

static void on_epoch(void *ud, const char *call, uint64_t epoch, const char *code) {
    Device *d = ud;
    (void)call;
    (void)epoch;
    on_thread(d);
    if (code == NULL || strlen(code) == 0) {
        fail("an epoch without a verification code");
    }
    atomic_fetch_add(&d->epochs, 1);
}

/* ---- RFC 6238 TOTP (HMAC-SHA-1, 30 s steps, 6 digits), from FIPS 180-4 and RFC 2104 ---- */

static uint32_t rol(uint32_t x, int n) { return x << n | x >> (32 - n); }

static void sha1_block(uint32_t h[5], const uint8_t *b) {
    uint32_t w[80];
    for (int i = 0; i < 16; i++) {
        w[i] = (uint32_t)b[4 * i] << 24 | (uint32_t)b[4 * i + 1] << 16 |
               (uint32_t)b[4 * i + 2] << 8 | (uint32_t)b[4 * i + 3];
    }
    for (int i = 16; i < 80; i++) {
        w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    }
    uint32_t a = h[0], bb = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) {
            f = (bb & c) | (~bb & d);
            k = 0x5A827999;
        } else if (i < 40) {
            f = bb ^ c ^ d;
            k = 0x6ED9EBA1;
        } else if (i < 60) {
            f = (bb & c) | (bb & d) | (c & d);
            k = 0x8F1BBCDC;
        } else {
            f = bb ^ c ^ d;
            k = 0xCA62C1D6;
        }
        uint32_t t = rol(a, 5) + f + e + k + w[i];
        e = d;
        d = c;
        c = rol(bb, 30);
        bb = a;
        a = t;
    }
    h[0] += a;
    h[1] += bb;
    h[2] += c;
    h[3] += d;
    h[4] += e;
}

/* SHA-1 of `len` (< 200) bytes. */
static void sha1(const uint8_t *msg, size_t len, uint8_t out[20]) {
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    uint8_t buf[256] = {0};
    memcpy(buf, msg, len);
    buf[len] = 0x80;
    size_t total = (len + 9 + 63) / 64 * 64;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++) {
        buf[total - 1 - i] = (uint8_t)(bits >> (8 * i));
    }
    for (size_t off = 0; off < total; off += 64) {
        sha1_block(h, buf + off);
    }
    for (int i = 0; i < 20; i++) {
        out[i] = (uint8_t)(h[i / 4] >> (24 - 8 * (i % 4)));
    }
}

/* HMAC-SHA-1 with a key of at most 64 bytes over an 8-byte message. */
static void hmac_sha1(const uint8_t *key, size_t key_len, const uint8_t msg[8], uint8_t out[20]) {
    uint8_t inner[64 + 8], outer[64 + 20];
    for (int i = 0; i < 64; i++) {
        uint8_t k = (size_t)i < key_len ? key[i] : 0;
        inner[i] = k ^ 0x36;
        outer[i] = k ^ 0x5c;
    }
    memcpy(inner + 64, msg, 8);
    sha1(inner, sizeof inner, outer + 64);
    sha1(outer, sizeof outer, out);
}

/* RFC 4648 base32 (upper case, no padding) into `out`; its length, or -1. */
static int base32_decode(const char *s, uint8_t *out, size_t cap) {
    uint32_t acc = 0;
    int bits = 0;
    size_t n = 0;
    for (; *s != '\0' && *s != '='; s++) {
        const char *alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        const char *p = strchr(alphabet, *s);
        if (p == NULL) {
            return -1;
        }
        acc = acc << 5 | (uint32_t)(p - alphabet);
        bits += 5;
        if (bits >= 8) {
            bits -= 8;
            if (n == cap) {
                return -1;
            }
            out[n++] = (uint8_t)(acc >> bits);
        }
    }
    return (int)n;
}

/* The 6-digit code of `key` for the Unix time `at`. */
static void totp(const uint8_t *key, size_t key_len, long long at, char out[7]) {
    uint64_t step = (uint64_t)(at / 30);
    uint8_t msg[8], mac[20];
    for (int i = 0; i < 8; i++) {
        msg[i] = (uint8_t)(step >> (56 - 8 * i));
    }
    hmac_sha1(key, key_len, msg, mac);
    int off = mac[19] & 0x0f;
    uint32_t bin = ((uint32_t)mac[off] & 0x7f) << 24 | (uint32_t)mac[off + 1] << 16 |
                   (uint32_t)mac[off + 2] << 8 | (uint32_t)mac[off + 3];
    snprintf(out, 7, "%06u", (unsigned)(bin % 1000000));
}

/* Whether the store's setting `key` is `want` (NULL: there is none). */
static int setting_is(const ViskaStore *store, const char *key, const char *want) {
    char *value = NULL;
    check(viska_store_setting(store, key, &value), "viska_store_setting");
    int same = (value == NULL || want == NULL) ? (value == NULL && want == NULL)
                                               : strcmp(value, want) == 0;
    viska_string_free(value);
    return same;
}

/* Whether the setting is `state` followed by ':' and a route in decimal ("accepted:0"). */
static int setting_is_state(const ViskaStore *store, const char *key, const char *state) {
    char *value = NULL;
    check(viska_store_setting(store, key, &value), "viska_store_setting");
    size_t n = strlen(state);
    int same = value != NULL && strncmp(value, state, n) == 0 && value[n] == ':' &&
               value[n + 1] != '\0' && strspn(value + n + 1, "0123456789") == strlen(value + n + 1);
    viska_string_free(value);
    return same;
}

static ViskaPhoneConfig *config_of(ViskaIdentity *id) {
    ViskaPhoneConfig *config = NULL;
    check(viska_phone_config_new("acct", id, &config), "config");
    return config;
}

/* The relay with accounts: login required, refused, accepted; a store records the calls. */
static void accounts(const char *relay, const char *fingerprint, const char *account,
                     const char *password, const char *secret_b32, const char *scratch) {
    /* The TOTP here is RFC 6238's own SHA-1 vector: 12345678901234567890 at T = 59. */
    char code[7];
    totp((const uint8_t *)"12345678901234567890", 20, 59, code);
    if (strcmp(code, "287082") != 0) {
        fail("the RFC 6238 test vector gives %s, not 287082", code);
    }
    uint8_t secret[64];
    int secret_len = base32_decode(secret_b32, secret, sizeof secret);
    if (secret_len <= 0) {
        fail("the TOTP secret is not base32");
    }

    char path[4096];
    snprintf(path, sizeof path, "%s/group.db", scratch);
    remove(path);
    uint8_t store_key[32];
    for (int i = 0; i < 32; i++) {
        store_key[i] = (uint8_t)(i * 5 + 3);
    }
    ViskaStore *store = NULL;
    check(viska_store_open_with_key(path, store_key, 32, &store), "open the store");
    ViskaIdentity *id = NULL;
    check(viska_store_identity(store, &id), "the store's identity");
    ViskaPhoneConfig *config = config_of(id);
    check(viska_phone_config_set_store(config, store), "set store");
    ViskaGroupPhone *phone = NULL;

    expect(viska_group_phone_connect(relay, fingerprint, config, NULL, &phone),
           VISKA_ERROR_CODE_LOGIN_REQUIRED, "an unregistered device without a login");
    char wrong[256];
    snprintf(wrong, sizeof wrong, "%sx", password);
    totp(secret, (size_t)secret_len, (long long)time(NULL), code);
    check(viska_phone_config_set_relay_login(config, account, wrong, code), "set login");
    ViskaError *err = viska_group_phone_connect(relay, fingerprint, config, NULL, &phone);
    if (err == NULL || viska_error_code(err) != VISKA_ERROR_CODE_LOGIN_FAILED) {
        fail("a wrong password: %s", err ? viska_error_message(err) : "accepted");
    }
    printf("  ok: a wrong password refused: %s (retry after %u s)\n", viska_error_message(err),
           (unsigned)viska_error_retry_after_secs(err));
    viska_error_free(err);
    /* The failed connect took the login: without a new one, a login is required again. */
    expect(viska_group_phone_connect(relay, fingerprint, config, NULL, &phone),
           VISKA_ERROR_CODE_LOGIN_REQUIRED, "a connect after the login was used");

    totp(secret, (size_t)secret_len, (long long)time(NULL), code);
    check(viska_phone_config_set_relay_login(config, account, password, code), "set login");
    check(viska_group_phone_connect(relay, fingerprint, config, NULL, &phone),
          "connect with the login");
    printf("  ok: logged in as %s\n", account);

    char *call = NULL;
    check(viska_group_phone_create_call(phone, &call), "create call");
    char key[64];
    snprintf(key, sizeof key, "viska.group.call.%s", call);
    /* The creator took its own call: recorded as accepted, with its route, for a restart to
     * resume. */
    WAIT_FOR(setting_is_state(store, key, "accepted"), "the call recorded in the store as accepted");
    check(viska_group_phone_leave(phone, call), "leave");
    WAIT_FOR(setting_is(store, key, NULL), "the call forgotten on leaving");
    viska_string_free(call);
    viska_group_phone_free(phone);

    /* Registered now: the device's key alone is enough. */
    phone = NULL;
    check(viska_group_phone_connect(relay, fingerprint, config, NULL, &phone),
          "connect again, registered");
    viska_group_phone_free(phone);
    printf("  ok: the registered device connects with its key alone\n");
    viska_phone_config_free(config);
    viska_identity_free(id);
    viska_store_free(store);
}

int main(int argc, char **argv) {
    if (argc != 4 && argc != 10) {
        fprintf(stderr,
                "usage: %s <relay ip:port> <relay fingerprint hex> <speech.wav> [<accounts relay "
                "ip:port> <fingerprint hex> <account> <password> <TOTP secret> <scratch dir>]\n",
                argv[0]);
        return 2;
    }
    const char *relay = argv[1], *fingerprint = argv[2], *speech = argv[3];
    static Device dev[3];
    for (int i = 0; i < 3; i++) {
        ViskaIdentity *id = NULL;
        ViskaPhoneConfig *config = NULL;
        ViskaGroupPhone *phone = NULL;
        check(viska_identity_generate(&id), "identity");
        check(viska_identity_public_key(id, dev[i].key), "public key");
        check(viska_phone_config_new("group", id, &config), "config");
        check(viska_phone_config_set_audio_files(config, speech, true, NULL), "audio");
        ViskaGroupCallbacks cb = {0};
        cb.user_data = &dev[i];
        cb.on_joined = on_joined;
        cb.on_participant_left = on_left;
        cb.on_epoch = on_epoch;
        check(viska_group_phone_connect(relay, fingerprint, config, &cb, &phone), "connect");
        atomic_store(&dev[i].phone, phone);
        viska_phone_config_free(config);
        viska_identity_free(id);
    }
    printf("  ok: three devices connected to the relay\n");

    /* A wrong fingerprint is refused (the relay's certificate is pinned). */
    {
        ViskaIdentity *id = NULL;
        ViskaPhoneConfig *config = NULL;
        ViskaGroupPhone *phone = NULL;
        check(viska_identity_generate(&id), "identity");
        check(viska_phone_config_new("intruder", id, &config), "config");
        char wrong[VISKA_FINGERPRINT_HEX_LEN + 1];
        memset(wrong, '0', VISKA_FINGERPRINT_HEX_LEN);
        wrong[VISKA_FINGERPRINT_HEX_LEN] = '\0';
        ViskaError *err = viska_group_phone_connect(relay, wrong, config, NULL, &phone);
        if (err == NULL || phone != NULL) {
            fail("a relay with another certificate was accepted");
        }
        printf("  ok: another certificate refused: [%u] %s\n", (unsigned)viska_error_code(err),
               viska_error_message(err));
        viska_error_free(err);
        viska_phone_config_free(config);
        viska_identity_free(id);
    }

    ViskaGroupPhone *alice = atomic_load(&dev[0].phone);
    char *call = NULL;
    check(viska_group_phone_create_call(alice, &call), "create call");
    if (strlen(call) != VISKA_GROUP_CALL_HEX_LEN) {
        fail("a call id is not 32 hex digits");
    }
    check(viska_group_phone_add(alice, call, dev[1].key, VISKA_PUBLIC_KEY_LEN), "add bob");
    check(viska_group_phone_add(alice, call, dev[2].key, VISKA_PUBLIC_KEY_LEN), "add carol");

    char *codes[3] = {0};
    for (int i = 0; i < 3; i++) {
        bool done = false;
        check(viska_group_phone_wait_heard(atomic_load(&dev[i].phone), call, 3, WAIT_MS, &done),
              "wait heard");
        if (!done) {
            fail("a member did not hear the two others");
        }
        ViskaGroupCallInfo info;
        check(viska_group_phone_call_info(atomic_load(&dev[i].phone), call, &info, &codes[i]),
              "call info");
        if (info.members != 3 || info.members_heard != 2 || !info.accepted || info.ended ||
            info.unverified != 2 || !info.sending_current_epoch || codes[i] == NULL) {
            fail("a member's view of the call is wrong");
        }
    }
    if (strcmp(codes[0], codes[1]) != 0 || strcmp(codes[0], codes[2]) != 0) {
        fail("the members show different verification codes");
    }
    printf("  ok: every member hears the two others; verification code %s\n", codes[0]);
    for (int i = 0; i < 3; i++) {
        viska_string_free(codes[i]);
        if (atomic_load(&dev[i].epochs) == 0) {
            fail("no epoch callback");
        }
    }

    /* Carol leaves: the two others see her go and go on hearing each other. */
    check(viska_group_phone_leave(atomic_load(&dev[2].phone), call), "leave");
    for (int i = 0; i < 2; i++) {
        bool done = false;
        check(viska_group_phone_wait_heard(atomic_load(&dev[i].phone), call, 2, WAIT_MS, &done),
              "wait heard after the leave");
        /* The left callback comes on the dispatcher thread, maybe after the wait returns. */
        WAIT_FOR(atomic_load(&dev[i].left) >= 1, "the leaver's departure reported");
        if (!done || atomic_load(&dev[i].left) != 1 ||
            memcmp(dev[i].left_key, dev[2].key, VISKA_PUBLIC_KEY_LEN) != 0) {
            fail("a member did not see the leaver go");
        }
    }
    printf("  ok: the leaver is gone for the two others\n");

    /* Misuse: a call id that is not one. */
    ViskaError *err = viska_group_phone_accept(alice, "not a call");
    if (err == NULL || viska_error_code(err) != VISKA_ERROR_CODE_INVALID_ARGUMENT) {
        fail("a malformed call id was not refused as an invalid argument");
    }
    viska_error_free(err);

    viska_string_free(call);
    for (int i = 0; i < 3; i++) {
        if (atomic_load(&dev[i].bad_thread) != 0) {
            fail("a callback ran outside vk-group-events");
        }
        viska_group_phone_free(atomic_exchange(&dev[i].phone, NULL));
    }
    viska_group_phone_free(NULL);
    if (argc == 10) {
        accounts(argv[4], argv[5], argv[6], argv[7], argv[8], argv[9]);
    }
    printf("C group call: all checks passed\n");
    return 0;
}
