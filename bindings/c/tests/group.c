/*
 * A 3-party group call through a real relay (the viska-relay binary, started by
 * scripts/test-c), through the C API alone: one device creates the call and adds the two
 * others, they accept it from their on_joined callback, every member hears the two others and
 * shows the same verification code, then one leaves and the two others see it go.
 *
 * Usage: group <relay ip:port> <relay fingerprint hex> <speech.wav>. Exits non-zero with a
 * message on failure. Conditions are awaited with a generous timeout; nothing asserts on
 * timing.
 */
#define _GNU_SOURCE /* pthread_getname_np */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "viska.h"

#define WAIT_MS 60000

static void check(ViskaError *err, const char *what) {
    if (err != NULL) {
        fprintf(stderr, "FAIL: %s: error %u: %s\n", what, (unsigned)viska_error_code(err),
                viska_error_message(err));
        viska_error_free(err);
        exit(1);
    }
}

static void fail(const char *what) {
    fprintf(stderr, "FAIL: %s\n", what);
    exit(1);
}

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

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s <relay ip:port> <relay fingerprint hex> <speech.wav>\n", argv[0]);
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
    printf("C group call: all checks passed\n");
    return 0;
}
