/*
 * Minimal use of Viska's C API: two phones in one process, one calls the other over
 * loopback, the callee answers from its incoming-call callback, both show the SAS, the
 * caller hangs up. No audio (silence). Error handling is reduced to "print and exit".
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "viska.h"

static void check(ViskaError *err, const char *what) {
    if (err != NULL) {
        fprintf(stderr, "%s: %s (code %u)\n", what, viska_error_message(err),
                (unsigned)viska_error_code(err));
        viska_error_free(err);
        exit(1);
    }
}

static atomic_int answered;

/* Runs on the callee's listener thread "vk-callee-ev": answer, keep nothing, return fast. */
static void on_incoming_call(void *user_data, ViskaCall *call, const uint8_t *caller_key,
                             ViskaTrust trust, const char *remote_addr) {
    (void)user_data;
    (void)caller_key;
    printf("incoming call from %s (trust %u)\n", remote_addr, (unsigned)trust);
    check(viska_call_answer(call), "answer");
    viska_call_free(call); /* the call goes on; the callbacks still hear about it */
    atomic_store(&answered, 1);
}

static void on_keys_ready(void *user_data, const ViskaCall *call, const char *sas,
                          ViskaTrust trust) {
    (void)call;
    (void)trust;
    printf("%s: compare the SAS %s\n", (const char *)user_data, sas);
}

static ViskaPhone *phone(const char *name, ViskaPhoneCallbacks *callbacks) {
    ViskaIdentity *identity = NULL;
    ViskaPhoneConfig *config = NULL;
    ViskaPhone *phone = NULL;
    check(viska_identity_generate(&identity), "identity");
    check(viska_phone_config_new(name, identity, &config), "config");
    check(viska_phone_new(config, callbacks, &phone), "phone");
    viska_phone_config_free(config);
    viska_identity_free(identity);
    return phone;
}

int main(void) {
    ViskaPhoneCallbacks callee_cb = {.user_data = "callee",
                                     .on_incoming_call = on_incoming_call,
                                     .on_keys_ready = on_keys_ready};
    ViskaPhoneCallbacks caller_cb = {.user_data = "caller", .on_keys_ready = on_keys_ready};
    ViskaPhone *callee = phone("callee", &callee_cb);
    ViskaPhone *caller = phone("caller", &caller_cb);

    char *addr = NULL;
    check(viska_phone_listen(callee, "127.0.0.1:0", NULL, &addr), "listen");
    ViskaCall *call = NULL;
    check(viska_phone_call(caller, addr, &call), "call");

    ViskaCallState state = {0};
    for (int i = 0; i < 3000 && state.kind != VISKA_CALL_STATE_KIND_ACTIVE; i++) {
        nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
        check(viska_call_state(call, &state), "state");
    }
    if (state.kind != VISKA_CALL_STATE_KIND_ACTIVE || !atomic_load(&answered)) {
        fprintf(stderr, "the call was not answered\n");
        return 1;
    }
    printf("call active\n");
    check(viska_call_hangup(call), "hangup");

    viska_call_free(call);
    viska_string_free(addr);
    /* Close, wait until the last callback ran, then free. */
    check(viska_phone_close(caller), "close");
    check(viska_phone_close(callee), "close");
    check(viska_phone_wait_closed(caller, 10000, NULL), "wait");
    check(viska_phone_wait_closed(callee, 10000, NULL), "wait");
    viska_phone_free(caller);
    viska_phone_free(callee);
    return 0;
}
