/*
 * A real encrypted call between two phones of this process, over loopback QUIC, through the
 * C API alone.
 *
 * The caller moves its audio itself (app-fed PCM): it pushes the speech of a WAV file it
 * reads and pulls what it hears. The callee plays the same WAV file into the call and
 * records what it hears to a WAV file. The test checks that both directions carry sound, that
 * the incoming call shows the caller's identity as unverified, that the SAS agrees, that DTMF,
 * call data, hold and resume reach the other end, that hanging up ends both ends, that a
 * misuse is refused with an error, that every callback runs on its phone's listener thread
 * (vk-<name>-ev), and, in a second call, that a verified peer and an expected key are
 * trusted.
 *
 * Usage: call <speech.wav> <scratch directory>. Exits non-zero with a message on failure.
 * Conditions are awaited by polling with a generous timeout; nothing asserts on timing.
 */
#define _GNU_SOURCE /* pthread_getname_np */
#include "harness.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>

/* ---- WAV files (16-bit PCM) ---- */

typedef struct Wav {
    int16_t *samples; /* interleaved */
    size_t len;       /* samples, all channels */
    uint32_t rate;
    uint16_t channels;
} Wav;

static uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint16_t le16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }

/* Reads a 16-bit PCM WAV file, walking its chunks. */
static Wav read_wav(const char *path) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fail("cannot open %s", path);
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)size);
    if (buf == NULL || fread(buf, 1, (size_t)size, f) != (size_t)size) {
        fail("cannot read %s", path);
    }
    fclose(f);
    if (size < 12 || memcmp(buf, "RIFF", 4) != 0 || memcmp(buf + 8, "WAVE", 4) != 0) {
        fail("%s is not a WAV file", path);
    }
    Wav wav = {0};
    uint16_t bits = 0;
    long at = 12;
    while (at + 8 <= size) {
        uint32_t len = le32(buf + at + 4);
        const unsigned char *body = buf + at + 8;
        if (at + 8 + (long)len > size) {
            len = (uint32_t)(size - at - 8); /* a header written before its data finished */
        }
        if (memcmp(buf + at, "fmt ", 4) == 0 && len >= 16) {
            wav.channels = le16(body + 2);
            wav.rate = le32(body + 4);
            bits = le16(body + 14);
        } else if (memcmp(buf + at, "data", 4) == 0) {
            if (bits != 16) {
                fail("%s: %u-bit samples, expected 16", path, (unsigned)bits);
            }
            wav.len = len / 2;
            wav.samples = malloc(wav.len * sizeof(int16_t) + 1);
            for (size_t i = 0; i < wav.len; i++) {
                wav.samples[i] = (int16_t)le16(body + 2 * i);
            }
        }
        at += 8 + (long)len + (len & 1);
    }
    free(buf);
    if (wav.samples == NULL || wav.channels == 0 || wav.rate == 0) {
        fail("%s has no 16-bit PCM data", path);
    }
    return wav;
}

/* Root mean square of a stretch of samples. */
static double rms(const int16_t *s, size_t n) {
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
        sum += (double)s[i] * s[i];
    }
    return n == 0 ? 0 : sqrt(sum / (double)n);
}

/* ---- What each phone's callbacks saw ---- */

#define MAX_CALLS 4

typedef struct Seen {
    const char *name;
    const char *thread; /* the phone's listener thread, where every callback must run */
    pthread_mutex_t lock; /* guards the arrays and strings below */
    ViskaCall *incoming[MAX_CALLS];
    uint8_t caller_key[MAX_CALLS][VISKA_PUBLIC_KEY_LEN];
    ViskaTrust incoming_trust[MAX_CALLS];
    char remote_addr[64];
    char sas[32];
    char dtmf[64];
    uint8_t data[256];
    size_t data_len;
    atomic_int incoming_count;
    atomic_int active_states;
    atomic_int ended_states;
    atomic_int keys_ready;
    atomic_int keys_trust;
    atomic_int trust_changed_to;
    atomic_int dtmf_count;
    atomic_int data_count;
    atomic_int peer_hold_on;
    atomic_int peer_hold_off;
    atomic_int peer_muted;
    atomic_int stats_count;
    atomic_int security_events;
    atomic_int audio_failures;
    atomic_int closed;
    atomic_int callbacks;
    atomic_int wrong_thread;
} Seen;

/* Counts a callback, and whether it runs on another thread than the phone's listener. */
static void on_thread(Seen *s) {
    char name[32] = "";
    pthread_getname_np(pthread_self(), name, sizeof name);
    atomic_fetch_add(&s->callbacks, 1);
    if (strcmp(name, s->thread) != 0) {
        fprintf(stderr, "  [%s] a callback ran on thread \"%s\", not %s\n", s->name, name,
                s->thread);
        atomic_fetch_add(&s->wrong_thread, 1);
    }
}

static void on_incoming_call(void *ud, ViskaCall *call, const uint8_t *caller_key,
                             ViskaTrust trust, const char *remote_addr) {
    Seen *s = ud;
    on_thread(s);
    pthread_mutex_lock(&s->lock);
    int n = atomic_load(&s->incoming_count);
    if (n < MAX_CALLS) {
        s->incoming[n] = call;
        memcpy(s->caller_key[n], caller_key, VISKA_PUBLIC_KEY_LEN);
        s->incoming_trust[n] = trust;
        snprintf(s->remote_addr, sizeof s->remote_addr, "%s", remote_addr);
    } else {
        viska_call_free(call);
    }
    pthread_mutex_unlock(&s->lock);
    atomic_fetch_add(&s->incoming_count, 1);
    printf("  [%s] incoming call from %s, trust %u\n", s->name, remote_addr, (unsigned)trust);
}

static void on_call_state(void *ud, const ViskaCall *call, const ViskaCallState *state) {
    Seen *s = ud;
    on_thread(s);
    (void)call;
    if (state->kind == VISKA_CALL_STATE_KIND_ACTIVE) {
        atomic_fetch_add(&s->active_states, 1);
    } else if (state->kind == VISKA_CALL_STATE_KIND_ENDED) {
        atomic_fetch_add(&s->ended_states, 1);
    }
    printf("  [%s] state %u (hold %d/%d, muted %d, end %u by %u)\n", s->name,
           (unsigned)state->kind, state->local_hold, state->remote_hold, state->muted,
           (unsigned)state->end_reason, (unsigned)state->ended_by);
}

static void on_keys_ready(void *ud, const ViskaCall *call, const char *sas, ViskaTrust trust) {
    Seen *s = ud;
    on_thread(s);
    (void)call;
    pthread_mutex_lock(&s->lock);
    snprintf(s->sas, sizeof s->sas, "%s", sas);
    pthread_mutex_unlock(&s->lock);
    atomic_store(&s->keys_trust, (int)trust);
    atomic_fetch_add(&s->keys_ready, 1);
}

static void on_trust_changed(void *ud, const ViskaCall *call, ViskaTrust trust) {
    Seen *s = ud;
    on_thread(s);
    (void)call;
    atomic_store(&s->trust_changed_to, (int)trust);
}

static void on_dtmf(void *ud, const ViskaCall *call, char digit, uint16_t duration_ms) {
    Seen *s = ud;
    on_thread(s);
    (void)call;
    (void)duration_ms;
    pthread_mutex_lock(&s->lock);
    size_t n = strlen(s->dtmf);
    if (n + 1 < sizeof s->dtmf) {
        s->dtmf[n] = digit;
        s->dtmf[n + 1] = '\0';
    }
    pthread_mutex_unlock(&s->lock);
    atomic_fetch_add(&s->dtmf_count, 1);
}

static void on_data(void *ud, const ViskaCall *call, const uint8_t *data, size_t len) {
    Seen *s = ud;
    on_thread(s);
    (void)call;
    pthread_mutex_lock(&s->lock);
    s->data_len = len < sizeof s->data ? len : sizeof s->data;
    memcpy(s->data, data, s->data_len);
    pthread_mutex_unlock(&s->lock);
    atomic_fetch_add(&s->data_count, 1);
}

static void on_peer_hold(void *ud, const ViskaCall *call, bool on_hold) {
    Seen *s = ud;
    on_thread(s);
    (void)call;
    atomic_fetch_add(on_hold ? &s->peer_hold_on : &s->peer_hold_off, 1);
}

static void on_peer_mute(void *ud, const ViskaCall *call, bool muted) {
    Seen *s = ud;
    on_thread(s);
    (void)call;
    atomic_store(&s->peer_muted, muted ? 1 : 2);
}

static void on_stats(void *ud, const ViskaCall *call, const ViskaCallStats *stats) {
    Seen *s = ud;
    on_thread(s);
    (void)call;
    (void)stats;
    atomic_fetch_add(&s->stats_count, 1);
}

static void on_audio_event(void *ud, const ViskaCall *call, ViskaAudioEventKind kind,
                           ViskaAudioDirection direction, const char *detail) {
    Seen *s = ud;
    on_thread(s);
    (void)call;
    printf("  [%s] audio event %u (direction %u): %s\n", s->name, (unsigned)kind,
           (unsigned)direction, detail);
    if (kind == VISKA_AUDIO_EVENT_KIND_START_FAILED) {
        atomic_fetch_add(&s->audio_failures, 1);
    }
}

static void on_security_event(void *ud, const ViskaCall *call, ViskaSecurityEventKind kind,
                              const char *description) {
    Seen *s = ud;
    on_thread(s);
    printf("  [%s] security event %u (%s): %s\n", s->name, (unsigned)kind,
           call ? "call" : "phone", description);
    atomic_fetch_add(&s->security_events, 1);
}

static void on_closed(void *ud) {
    Seen *s = ud;
    on_thread(s);
    atomic_store(&s->closed, 1);
}

static ViskaPhoneCallbacks callbacks_for(Seen *seen) {
    ViskaPhoneCallbacks cb;
    memset(&cb, 0, sizeof cb);
    cb.user_data = seen;
    cb.on_incoming_call = on_incoming_call;
    cb.on_call_state = on_call_state;
    cb.on_keys_ready = on_keys_ready;
    cb.on_trust_changed = on_trust_changed;
    cb.on_dtmf = on_dtmf;
    cb.on_data = on_data;
    cb.on_peer_hold = on_peer_hold;
    cb.on_peer_mute = on_peer_mute;
    cb.on_stats = on_stats;
    cb.on_audio_event = on_audio_event;
    cb.on_security_event = on_security_event;
    cb.on_closed = on_closed;
    return cb;
}

/* ---- The caller's audio thread: pushes the WAV's speech, pulls what it hears ---- */

typedef struct AudioLoop {
    ViskaAppCapture *capture;
    ViskaAppPlayback *playback;
    Wav speech;
    atomic_int stop;
    atomic_int loud_frames; /* pulled 20 ms frames with sound in them */
} AudioLoop;

static void *audio_thread(void *arg) {
    AudioLoop *a = arg;
    size_t push_len = a->speech.rate / 50 * a->speech.channels; /* 20 ms */
    size_t at = 0;
    int16_t heard[960];                                          /* 20 ms at 48 kHz mono */
    while (!atomic_load(&a->stop)) {
        if (at + push_len > a->speech.len) {
            at = 0;
        }
        check(viska_app_capture_push(a->capture, a->speech.samples + at, push_len), "push");
        at += push_len;
        check(viska_app_playback_pull(a->playback, heard, 960), "pull");
        if (rms(heard, 960) > 100.0) {
            atomic_fetch_add(&a->loud_frames, 1);
        }
        sleep_ms(20);
    }
    return NULL;
}

/* ---- Small readers ---- */

static ViskaCallState state_of(const ViskaCall *call) {
    ViskaCallState st;
    check(viska_call_state(call, &st), "viska_call_state");
    return st;
}

static bool is_active(const ViskaCall *call) {
    return state_of(call).kind == VISKA_CALL_STATE_KIND_ACTIVE;
}

static bool is_ended(const ViskaCall *call) {
    bool ended = false;
    check(viska_call_is_ended(call, &ended), "viska_call_is_ended");
    return ended;
}

static char *sas_of(const ViskaCall *call) {
    char *sas = NULL;
    check(viska_call_sas(call, &sas), "viska_call_sas");
    return sas;
}

static ViskaTrust trust_of(const ViskaCall *call) {
    ViskaTrust trust;
    bool known;
    check(viska_call_peer(call, NULL, &trust, &known), "viska_call_peer");
    return trust;
}

static uint64_t received(const ViskaCall *call) {
    ViskaCallStats st;
    check(viska_call_stats(call, &st), "viska_call_stats");
    return st.packets_received;
}

static ViskaCall *incoming(Seen *s, int i) {
    pthread_mutex_lock(&s->lock);
    ViskaCall *c = s->incoming[i];
    pthread_mutex_unlock(&s->lock);
    return c;
}

static bool seen_dtmf(Seen *s, const char *want) {
    pthread_mutex_lock(&s->lock);
    bool ok = strcmp(s->dtmf, want) == 0;
    pthread_mutex_unlock(&s->lock);
    return ok;
}

static ViskaPhone *make_phone(ViskaPhoneConfig *config, Seen *seen) {
    ViskaPhoneCallbacks cb = callbacks_for(seen);
    ViskaPhone *phone = NULL;
    check(viska_phone_new(config, &cb, &phone), "viska_phone_new");
    return phone;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s <speech.wav> <scratch directory>\n", argv[0]);
        return 2;
    }
    const char *speech_path = argv[1];
    char heard_path[4096];
    snprintf(heard_path, sizeof heard_path, "%s/callee-heard.wav", argv[2]);
    remove(heard_path);
    printf("viska %s\n", viska_version());

    /* Identities: a round trip through the secret bytes keeps the public key. */
    printf("identities\n");
    ViskaIdentity *caller_id = NULL, *callee_id = NULL, *restored = NULL;
    check(viska_identity_generate(&caller_id), "generate caller identity");
    check(viska_identity_generate(&callee_id), "generate callee identity");
    uint8_t secret[VISKA_SECRET_KEY_LEN], caller_key[VISKA_PUBLIC_KEY_LEN],
        callee_key[VISKA_PUBLIC_KEY_LEN], restored_key[VISKA_PUBLIC_KEY_LEN];
    check(viska_identity_secret_bytes(caller_id, secret), "secret bytes");
    check(viska_identity_from_secret_bytes(secret, sizeof secret, &restored), "from secret");
    check(viska_identity_public_key(caller_id, caller_key), "caller public key");
    check(viska_identity_public_key(callee_id, callee_key), "callee public key");
    check(viska_identity_public_key(restored, restored_key), "restored public key");
    if (memcmp(caller_key, restored_key, VISKA_PUBLIC_KEY_LEN) != 0) {
        fail("the restored identity has another public key");
    }
    char *fp = NULL, *fp2 = NULL;
    check(viska_identity_fingerprint_hex(caller_id, &fp), "fingerprint");
    check(viska_public_key_fingerprint_hex(caller_key, sizeof caller_key, &fp2), "fingerprint");
    if (strlen(fp) != VISKA_FINGERPRINT_HEX_LEN || strcmp(fp, fp2) != 0) {
        fail("fingerprints %s and %s", fp, fp2);
    }
    printf("  caller fingerprint %s\n", fp);
    viska_string_free(fp);
    viska_string_free(fp2);
    viska_identity_free(restored);
    expect_error(viska_identity_from_secret_bytes(secret, 5, &restored),
                 VISKA_ERROR_CODE_INVALID_ARGUMENT, VISKA_ERROR_CODE_INVALID_ARGUMENT,
                 "a 5-byte secret");
    memset(secret, 0, sizeof secret);

    /* The callee plays the WAV into the call and records what it hears. */
    printf("phones\n");
    Seen callee_seen = {.name = "callee", .thread = "vk-c-callee-ev", .lock = PTHREAD_MUTEX_INITIALIZER};
    Seen caller_seen = {.name = "caller", .thread = "vk-c-caller-ev", .lock = PTHREAD_MUTEX_INITIALIZER};
    ViskaPhoneConfig *callee_cfg = NULL, *caller_cfg = NULL, *bad_cfg = NULL;
    check(viska_phone_config_new("c-callee", callee_id, &callee_cfg), "callee config");
    check(viska_phone_config_set_audio_files(callee_cfg, speech_path, true, heard_path),
          "callee audio");
    uint16_t suites[] = {VISKA_SUITE_CHACHA20_POLY1305_SHA256, VISKA_SUITE_AES_128_GCM_SHA256};
    check(viska_phone_config_set_suites(callee_cfg, suites, 2), "callee suites");
    check(viska_phone_config_set_realtime(callee_cfg, false), "callee realtime");
    check(viska_phone_config_set_dtx(callee_cfg, true), "callee dtx");
    check(viska_phone_config_set_ring_timeout_ms(callee_cfg, 60000), "ring timeout");
    uint16_t bad_suite = 0x7777;
    expect_error(viska_phone_config_set_suites(callee_cfg, &bad_suite, 1),
                 VISKA_ERROR_CODE_INVALID_ARGUMENT, VISKA_ERROR_CODE_INVALID_ARGUMENT,
                 "an unknown suite");
    expect_error(viska_phone_config_new(NULL, callee_id, &bad_cfg),
                 VISKA_ERROR_CODE_INVALID_ARGUMENT, VISKA_ERROR_CODE_INVALID_ARGUMENT,
                 "a NULL name");
    check(viska_phone_config_new("a-name-far-too-long", callee_id, &bad_cfg), "long name");
    ViskaPhone *bad_phone = NULL;
    expect_error(viska_phone_new(bad_cfg, NULL, &bad_phone), VISKA_ERROR_CODE_CONFIG,
                 VISKA_ERROR_CODE_CONFIG, "a phone with a 19-character name");
    viska_phone_config_free(bad_cfg);

    ViskaPhone *callee = make_phone(callee_cfg, &callee_seen);
    uint16_t port = 0;
    char *bound = NULL;
    check(viska_phone_listen(callee, "127.0.0.1:0", &port, &bound), "listen");
    printf("  callee listens on %s\n", bound);
    expect_error(viska_phone_listen(callee, "127.0.0.1:0", NULL, NULL),
                 VISKA_ERROR_CODE_ALREADY_LISTENING, VISKA_ERROR_CODE_ALREADY_LISTENING,
                 "listening twice");

    /* The caller moves its audio itself: the WAV's speech at its own rate, heard at 48 kHz. */
    AudioLoop audio = {0};
    audio.speech = read_wav(speech_path);
    check(viska_phone_config_new("c-caller", caller_id, &caller_cfg), "caller config");
    check(viska_phone_config_set_audio_app(caller_cfg, audio.speech.rate,
                                           audio.speech.channels, 48000, 1, &audio.capture,
                                           &audio.playback),
          "caller app audio");
    check(viska_phone_config_set_realtime(caller_cfg, false), "caller realtime");
    ViskaPhone *caller = make_phone(caller_cfg, &caller_seen);
    uint8_t own_key[VISKA_PUBLIC_KEY_LEN];
    check(viska_phone_public_key(caller, own_key), "phone public key");
    if (memcmp(own_key, caller_key, sizeof own_key) != 0) {
        fail("the caller phone has another identity than its configuration");
    }
    pthread_t audio_tid;
    if (pthread_create(&audio_tid, NULL, audio_thread, &audio) != 0) {
        fail("cannot start the audio thread");
    }

    /* The call: the callee's callback shows the caller, unverified. */
    printf("call\n");
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%u", (unsigned)port);
    expect_error(viska_phone_call(caller, "not an address", &(ViskaCall *){NULL}),
                 VISKA_ERROR_CODE_INVALID_ARGUMENT, VISKA_ERROR_CODE_INVALID_ARGUMENT,
                 "a bad address");
    ViskaCall *call = NULL;
    check(viska_phone_call(caller, addr, &call), "viska_phone_call");
    WAIT_FOR(atomic_load(&callee_seen.incoming_count) == 1, "the incoming call at the callee");
    ViskaCall *answered = incoming(&callee_seen, 0);
    pthread_mutex_lock(&callee_seen.lock);
    if (memcmp(callee_seen.caller_key[0], caller_key, VISKA_PUBLIC_KEY_LEN) != 0) {
        fail("the incoming call shows another identity than the caller's");
    }
    if (callee_seen.incoming_trust[0] != VISKA_TRUST_UNVERIFIED) {
        fail("the caller's trust is %u, expected unverified", (unsigned)callee_seen.incoming_trust[0]);
    }
    pthread_mutex_unlock(&callee_seen.lock);
    WAIT_FOR(state_of(answered).kind == VISKA_CALL_STATE_KIND_RINGING, "the callee ringing");
    check(viska_call_answer(answered), "answer");
    WAIT_FOR(is_active(call) && is_active(answered), "both ends active");
    WAIT_FOR(atomic_load(&caller_seen.active_states) >= 1 &&
                 atomic_load(&callee_seen.active_states) >= 1,
             "the active state in both ends' callbacks");

    /* The SAS agrees, in the handles and in the callbacks; the call id too. */
    char *sas_a = sas_of(call), *sas_b = sas_of(answered);
    if (sas_a == NULL || sas_b == NULL || strcmp(sas_a, sas_b) != 0) {
        fail("SAS %s vs %s", sas_a ? sas_a : "(none)", sas_b ? sas_b : "(none)");
    }
    WAIT_FOR(atomic_load(&caller_seen.keys_ready) >= 1 && atomic_load(&callee_seen.keys_ready) >= 1,
             "keys ready at both ends");
    pthread_mutex_lock(&caller_seen.lock);
    pthread_mutex_lock(&callee_seen.lock);
    if (strcmp(caller_seen.sas, sas_a) != 0 || strcmp(callee_seen.sas, sas_a) != 0) {
        fail("the SAS of the callbacks (%s, %s) differs from %s", caller_seen.sas,
             callee_seen.sas, sas_a);
    }
    pthread_mutex_unlock(&callee_seen.lock);
    pthread_mutex_unlock(&caller_seen.lock);
    printf("  ok: SAS %s at both ends\n", sas_a);
    viska_string_free(sas_a);
    viska_string_free(sas_b);
    uint8_t id_a[VISKA_CALL_ID_LEN], id_b[VISKA_CALL_ID_LEN], peer_key[VISKA_PUBLIC_KEY_LEN];
    check(viska_call_id(call, id_a), "call id");
    check(viska_call_id(answered, id_b), "call id");
    if (memcmp(id_a, id_b, sizeof id_a) != 0) {
        fail("the two ends have different call ids");
    }
    uint16_t suite_a = 0, suite_b = 0;
    check(viska_call_suite(call, &suite_a), "suite");
    check(viska_call_suite(answered, &suite_b), "suite");
    /* The caller offers its first suite the callee accepts: the callee takes ChaCha20 first. */
    if (suite_a != suite_b || (suite_a != VISKA_SUITE_CHACHA20_POLY1305_SHA256 &&
                               suite_a != VISKA_SUITE_AES_128_GCM_SHA256)) {
        fail("suites %#x and %#x", (unsigned)suite_a, (unsigned)suite_b);
    }
    printf("  ok: suite %#06x at both ends\n", (unsigned)suite_a);
    ViskaTrust trust;
    bool known = false;
    check(viska_call_peer(call, peer_key, &trust, &known), "peer");
    if (!known || memcmp(peer_key, callee_key, sizeof peer_key) != 0 ||
        trust != VISKA_TRUST_UNVERIFIED) {
        fail("the caller sees the callee as known=%d trust=%u", known, (unsigned)trust);
    }

    /* Audio both ways: the callee hears the pushed speech, the caller pulls the WAV's. */
    WAIT_FOR(received(answered) > 100 && received(call) > 100, "media packets at both ends");
    WAIT_FOR(atomic_load(&audio.loud_frames) > 25, "sound pulled by the caller");

    /* DTMF and call data reach the other end. */
    check(viska_call_send_dtmf(call, "159#", 0), "send DTMF");
    WAIT_FOR(seen_dtmf(&callee_seen, "159#"), "DTMF 159# at the callee");
    expect_error(viska_call_send_dtmf(call, "12x", 0), VISKA_ERROR_CODE_INVALID_ARGUMENT,
                 VISKA_ERROR_CODE_INVALID_ARGUMENT, "a DTMF string with x");
    const char *hello = "hello from the callee";
    check(viska_call_send_data(answered, (const uint8_t *)hello, strlen(hello)), "send data");
    WAIT_FOR(atomic_load(&caller_seen.data_count) >= 1, "call data at the caller");
    pthread_mutex_lock(&caller_seen.lock);
    if (caller_seen.data_len != strlen(hello) || memcmp(caller_seen.data, hello, strlen(hello)) != 0) {
        fail("the caller received other data");
    }
    pthread_mutex_unlock(&caller_seen.lock);

    /* Hold and resume are seen by the peer; so is mute. */
    check(viska_call_hold(call), "hold");
    WAIT_FOR(atomic_load(&callee_seen.peer_hold_on) >= 1 && state_of(answered).remote_hold &&
                 state_of(call).local_hold,
             "the hold at both ends");
    check(viska_call_resume(call), "resume");
    WAIT_FOR(atomic_load(&callee_seen.peer_hold_off) >= 1 && !state_of(answered).remote_hold &&
                 !state_of(call).local_hold,
             "the resume at both ends");
    check(viska_call_mute(answered, true), "mute");
    WAIT_FOR(atomic_load(&caller_seen.peer_muted) == 1 && state_of(answered).muted,
             "the mute at the caller");
    check(viska_call_mute(answered, false), "unmute");
    WAIT_FOR(atomic_load(&caller_seen.peer_muted) == 2, "the unmute at the caller");

    /* The callee's user compares the SAS and marks the caller verified. */
    check(viska_call_mark_verified(answered), "mark verified");
    WAIT_FOR(atomic_load(&callee_seen.trust_changed_to) == VISKA_TRUST_VERIFIED &&
                 trust_of(answered) == VISKA_TRUST_VERIFIED,
             "the caller verified at the callee");
    size_t count = 0;
    uint8_t verified[2 * VISKA_PUBLIC_KEY_LEN];
    check(viska_phone_verified_peers(callee, verified, 2, &count), "verified peers");
    if (count != 1 || memcmp(verified, caller_key, VISKA_PUBLIC_KEY_LEN) != 0) {
        fail("the callee's verified peers: %zu", count);
    }
    WAIT_FOR(atomic_load(&caller_seen.stats_count) >= 1, "statistics in the callbacks");

    /* Hang-up ends both ends. */
    check(viska_call_hangup(call), "hangup");
    WAIT_FOR(is_ended(call) && is_ended(answered), "both ends torn down");
    ViskaCallState end_a = state_of(call), end_b = state_of(answered);
    if (end_a.kind != VISKA_CALL_STATE_KIND_ENDED || end_a.end_reason != VISKA_END_REASON_HANGUP ||
        end_a.ended_by != VISKA_SIDE_LOCAL) {
        fail("caller ended with %u/%u/%u", (unsigned)end_a.kind, (unsigned)end_a.end_reason,
             (unsigned)end_a.ended_by);
    }
    if (end_b.kind != VISKA_CALL_STATE_KIND_ENDED || end_b.end_reason != VISKA_END_REASON_HANGUP ||
        end_b.ended_by != VISKA_SIDE_REMOTE) {
        fail("callee ended with %u/%u/%u", (unsigned)end_b.kind, (unsigned)end_b.end_reason,
             (unsigned)end_b.ended_by);
    }
    WAIT_FOR(atomic_load(&caller_seen.ended_states) >= 1 && atomic_load(&callee_seen.ended_states) >= 1,
             "the end in both ends' callbacks");

    /* A misuse: answering the ended call. */
    expect_error(viska_call_answer(answered), VISKA_ERROR_CODE_CALL_ENDED,
                 VISKA_ERROR_CODE_INVALID_STATE, "answering an ended call");
    expect_error(viska_call_answer(NULL), VISKA_ERROR_CODE_INVALID_ARGUMENT,
                 VISKA_ERROR_CODE_INVALID_ARGUMENT, "answering NULL");

    /* What the callee recorded is not silence. */
    Wav heard = read_wav(heard_path);
    double level = rms(heard.samples, heard.len);
    printf("  callee recorded %zu samples at %u Hz, RMS %.0f\n", heard.len, (unsigned)heard.rate,
           level);
    if (heard.len < 48000 || level < 100.0) {
        fail("the callee's recording is silent or short (%zu samples, RMS %.1f)", heard.len,
             level);
    }
    free(heard.samples);

    /* A second call: to the key the caller expects, from the peer the callee verified. */
    printf("second call\n");
    ViskaCall *call2 = NULL;
    check(viska_phone_call_expecting(caller, addr, callee_key, sizeof callee_key, &call2),
          "call expecting");
    WAIT_FOR(atomic_load(&callee_seen.incoming_count) == 2, "the second incoming call");
    pthread_mutex_lock(&callee_seen.lock);
    if (callee_seen.incoming_trust[1] != VISKA_TRUST_VERIFIED) {
        fail("the verified caller rings as trust %u", (unsigned)callee_seen.incoming_trust[1]);
    }
    pthread_mutex_unlock(&callee_seen.lock);
    ViskaCall *ringing = incoming(&callee_seen, 1);
    WAIT_FOR(trust_of(call2) == VISKA_TRUST_VERIFIED, "the expected key verified at the caller");
    WAIT_FOR(state_of(ringing).kind == VISKA_CALL_STATE_KIND_RINGING, "the second call ringing");
    check(viska_call_reject(ringing), "reject");
    WAIT_FOR(is_ended(call2) && is_ended(ringing), "the rejected call ended");
    ViskaCallState end2 = state_of(call2);
    if (end2.end_reason != VISKA_END_REASON_REJECTED || end2.ended_by != VISKA_SIDE_REMOTE) {
        fail("the rejected call ended with %u by %u", (unsigned)end2.end_reason,
             (unsigned)end2.ended_by);
    }

    /* Closing: on_closed is the last callback; then everything is freed. */
    printf("close\n");
    atomic_store(&audio.stop, 1);
    pthread_join(audio_tid, NULL);
    check(viska_phone_close(caller), "close caller");
    check(viska_phone_close(callee), "close callee");
    bool closed = false;
    check(viska_phone_wait_closed(caller, WAIT_MS, &closed), "wait closed");
    if (!closed) {
        fail("the caller did not close");
    }
    check(viska_phone_wait_closed(callee, WAIT_MS, &closed), "wait closed");
    if (!closed || !atomic_load(&caller_seen.closed) || !atomic_load(&callee_seen.closed)) {
        fail("a phone did not report closing");
    }
    expect_error(viska_phone_call(caller, addr, &call2), VISKA_ERROR_CODE_CLOSED,
                 VISKA_ERROR_CODE_CLOSED, "calling from a closed phone");
    if (atomic_load(&caller_seen.wrong_thread) || atomic_load(&callee_seen.wrong_thread)) {
        fail("callbacks ran on other threads than the phones' listener threads");
    }
    printf("  ok: %d and %d callbacks, all on vk-c-caller-ev and vk-c-callee-ev\n",
           atomic_load(&caller_seen.callbacks), atomic_load(&callee_seen.callbacks));
    if (atomic_load(&caller_seen.audio_failures) || atomic_load(&callee_seen.audio_failures)) {
        fail("a call's audio failed to start");
    }
    viska_call_free(call);
    viska_call_free(call2);
    viska_call_free(answered);
    viska_call_free(ringing);
    viska_phone_free(caller);
    viska_phone_free(callee);
    viska_phone_config_free(caller_cfg);
    viska_phone_config_free(callee_cfg);
    viska_app_capture_free(audio.capture);
    viska_app_playback_free(audio.playback);
    viska_identity_free(caller_id);
    viska_identity_free(callee_id);
    viska_string_free(bound);
    free(audio.speech.samples);
    /* Freeing NULL does nothing. */
    viska_call_free(NULL);
    viska_phone_free(NULL);
    viska_phone_config_free(NULL);
    viska_identity_free(NULL);
    viska_error_free(NULL);
    viska_string_free(NULL);
    viska_app_capture_free(NULL);
    viska_app_playback_free(NULL);
    printf("PASS\n");
    return 0;
}
