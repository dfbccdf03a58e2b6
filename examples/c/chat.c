/*
 * A small chat program over the edgelm C API (crates/edgelm-capi/include/edgelm.h).
 *
 *   chat [-m MODEL] [-s SYSTEM] [-n MAX_TOKENS] [-c CTX] [-t THREADS] [--temp T] [--seed N]
 *        [--demo-cancel] [MESSAGE...]
 *
 * Each MESSAGE is one user turn; without any, each line of stdin is one. The whole
 * conversation goes through the model's chat template every turn, and the session reuses the
 * KV cache of the shared prefix. -s sets the system message (default: the template's own). Replies stream to stdout; Ctrl-C stops the current reply (it
 * sets the cancel flag). --demo-cancel adds a last turn that another thread cancels after the
 * third token; the program fails if that reply is not reported as cancelled.
 * Without -m it uses the cached default model (`edgelm fetch` downloads it).
 *
 * Build: cargo build --release -p edgelm-capi, then
 *   gcc -std=c11 -O2 -Icrates/edgelm-capi/include examples/c/chat.c \
 *       target/release/libedgelm_capi.a -lpthread -ldl -lm -o edgelm-chat
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "edgelm.h"

/* Set by SIGINT and by the canceller thread; the library reads it during generation. */
static int32_t cancel_flag;

static void on_sigint(int sig) {
    (void)sig;
    __atomic_store_n(&cancel_flag, 1, __ATOMIC_RELAXED);
}

/* The conversation: parallel arrays of owned strings. */
struct conversation {
    char **roles;
    char **contents;
    size_t n, cap;
};

static char *copy_string(const char *s) {
    size_t n = strlen(s) + 1;
    char *c = malloc(n);
    if (c) memcpy(c, s, n);
    return c;
}

static int push_message(struct conversation *c, const char *role, const char *content) {
    if (c->n == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 8;
        char **r = realloc(c->roles, cap * sizeof *r);
        if (!r) return -1;
        c->roles = r;
        char **t = realloc(c->contents, cap * sizeof *t);
        if (!t) return -1;
        c->contents = t;
        c->cap = cap;
    }
    c->roles[c->n] = copy_string(role);
    c->contents[c->n] = copy_string(content);
    if (!c->roles[c->n] || !c->contents[c->n]) {
        free(c->roles[c->n]);
        free(c->contents[c->n]);
        return -1;
    }
    c->n++;
    return 0;
}

static void drop_last_message(struct conversation *c) {
    if (c->n == 0) return;
    c->n--;
    free(c->roles[c->n]);
    free(c->contents[c->n]);
}

static void free_conversation(struct conversation *c) {
    while (c->n) drop_last_message(c);
    free(c->roles);
    free(c->contents);
}

/* State shared by the stream callback and the canceller thread of --demo-cancel. */
struct stream_state {
    int ends_with_newline;
    size_t n_tokens;
    int demo_cancel;
    pthread_mutex_t lock;
    pthread_cond_t third_token;
    int signalled;
};

static int32_t on_text(const char *text, size_t len, uint32_t token, void *user_data) {
    struct stream_state *st = user_data;
    if (len) {
        fwrite(text, 1, len, stdout);
        fflush(stdout);
        st->ends_with_newline = text[len - 1] == '\n';
    }
    if (token != EDGELM_TOKEN_NONE) st->n_tokens++;
    if (st->demo_cancel && st->n_tokens == 3) {
        /* Wake the canceller, then wait until its flag is visible: the library checks the
         * flag right after this callback returns, so the reply stops at exactly 3 tokens. */
        pthread_mutex_lock(&st->lock);
        st->signalled = 1;
        pthread_cond_signal(&st->third_token);
        pthread_mutex_unlock(&st->lock);
        while (!__atomic_load_n(&cancel_flag, __ATOMIC_RELAXED)) {
            struct timespec ms = {0, 1000000};
            nanosleep(&ms, NULL);
        }
    }
    return 0; /* non-zero would stop the reply too */
}

static void *canceller(void *arg) {
    struct stream_state *st = arg;
    pthread_mutex_lock(&st->lock);
    while (!st->signalled) pthread_cond_wait(&st->third_token, &st->lock);
    pthread_mutex_unlock(&st->lock);
    __atomic_store_n(&cancel_flag, 1, __ATOMIC_RELAXED);
    return NULL;
}

static const char *finish_name(edgelm_finish_reason r) {
    switch (r) {
    case EDGELM_FINISH_STOP: return "stop";
    case EDGELM_FINISH_LENGTH: return "length";
    case EDGELM_FINISH_EOG: return "eog";
    case EDGELM_FINISH_CANCELLED: return "cancelled";
    }
    return "?";
}

/* One user turn: template → tokens → streamed reply, which joins the conversation.
 * Returns 0, or -1 after printing the error (the user message is then taken back). */
static int turn(edgelm_model *model, edgelm_session *session, struct conversation *conv,
                const char *user, const edgelm_generate_params *gp, int demo_cancel,
                edgelm_generation *out) {
    if (push_message(conv, "user", user) != 0) {
        fprintf(stderr, "error: out of memory\n");
        return -1;
    }
    edgelm_chat_message *msgs = malloc(conv->n * sizeof *msgs);
    if (!msgs) {
        drop_last_message(conv);
        fprintf(stderr, "error: out of memory\n");
        return -1;
    }
    for (size_t i = 0; i < conv->n; i++) {
        msgs[i].role = conv->roles[i];
        msgs[i].content = conv->contents[i];
    }
    char *prompt = NULL;
    uint32_t *tokens = NULL;
    size_t n_tokens = 0;
    edgelm_status s = edgelm_apply_chat_template(model, msgs, conv->n, true, &prompt);
    free(msgs);
    if (s == EDGELM_OK) s = edgelm_tokenize(model, prompt, true, true, &tokens, &n_tokens);
    edgelm_string_free(prompt);
    if (s != EDGELM_OK) {
        fprintf(stderr, "error: %s\n", edgelm_last_error());
        drop_last_message(conv);
        return -1;
    }

    struct stream_state st = {0};
    st.demo_cancel = demo_cancel;
    pthread_t thread;
    if (demo_cancel) {
        pthread_mutex_init(&st.lock, NULL);
        pthread_cond_init(&st.third_token, NULL);
        if (pthread_create(&thread, NULL, canceller, &st) != 0) {
            fprintf(stderr, "error: cannot start the canceller thread\n");
            edgelm_tokens_free(tokens);
            drop_last_message(conv);
            return -1;
        }
    }
    __atomic_store_n(&cancel_flag, 0, __ATOMIC_RELAXED);
    s = edgelm_generate(session, tokens, n_tokens, gp, on_text, &st, &cancel_flag, out);
    edgelm_tokens_free(tokens);
    if (demo_cancel) {
        if (!st.signalled) { /* the reply ended before its third token: release the thread */
            pthread_mutex_lock(&st.lock);
            st.signalled = 1;
            pthread_cond_signal(&st.third_token);
            pthread_mutex_unlock(&st.lock);
        }
        pthread_join(thread, NULL);
        pthread_cond_destroy(&st.third_token);
        pthread_mutex_destroy(&st.lock);
    }
    if (s != EDGELM_OK) {
        fprintf(stderr, "\nerror: %s\n", edgelm_last_error());
        drop_last_message(conv);
        return -1;
    }
    if (!st.ends_with_newline) putchar('\n');
    fflush(stdout);
    fprintf(stderr, "[%zu prompt tokens (%zu reused) in %.0f ms, %zu tokens in %.0f ms, %s]\n",
            out->n_prompt_tokens, out->n_reused_tokens, out->prompt_ms, out->n_generated_tokens,
            out->generation_ms, finish_name(out->finish_reason));
    if (push_message(conv, "assistant", out->text) != 0) {
        fprintf(stderr, "error: out of memory\n");
        return -1;
    }
    return 0;
}

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s [-m MODEL] [-s SYSTEM] [-n MAX_TOKENS] [-c CTX] [-t THREADS] [--temp T]\n"
            "          [--seed N] [--demo-cancel] [MESSAGE...]\n",
            argv0);
}

int main(int argc, char **argv) {
    const char *model_path = NULL;
    const char *system = NULL;
    edgelm_model_params mp = edgelm_model_params_default();
    edgelm_session_params sp = edgelm_session_params_default();
    edgelm_generate_params gp = edgelm_generate_params_default();
    int demo_cancel = 0;
    int first_message = argc;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has_value = i + 1 < argc;
        if (!strcmp(a, "-m") && has_value) model_path = argv[++i];
        else if (!strcmp(a, "-s") && has_value) system = argv[++i];
        else if (!strcmp(a, "-n") && has_value) gp.max_tokens = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(a, "-c") && has_value) sp.n_ctx = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(a, "-t") && has_value) mp.n_threads = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(a, "--temp") && has_value) sp.temperature = strtof(argv[++i], NULL);
        else if (!strcmp(a, "--seed") && has_value) sp.seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(a, "--demo-cancel")) demo_cancel = 1;
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(argv[0]); return 0; }
        else if (a[0] == '-' && a[1] != '\0') { usage(argv[0]); return 2; }
        else { first_message = i; break; }
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL);

    char *default_path = NULL;
    if (!model_path) {
        if (edgelm_default_model_path(&default_path) != EDGELM_OK) {
            fprintf(stderr, "error: %s\n", edgelm_last_error());
            return 1;
        }
        model_path = default_path;
    }
    edgelm_model *model = NULL;
    edgelm_session *session = NULL;
    struct conversation conv = {0};
    edgelm_generation out = {0};
    int rc = 1;
    if (edgelm_model_load(model_path, &mp, &model) != EDGELM_OK ||
        edgelm_session_new(model, &sp, &session) != EDGELM_OK) {
        fprintf(stderr, "error: %s\n", edgelm_last_error());
        goto done;
    }
    fprintf(stderr, "edgelm %s, model %s\n", edgelm_version(), model_path);
    if (system && push_message(&conv, "system", system) != 0) {
        fprintf(stderr, "error: out of memory\n");
        rc = 1;
        goto done;
    }

    rc = 0;
    if (first_message < argc) {
        for (int i = first_message; i < argc && rc == 0; i++) {
            fprintf(stderr, "> %s\n", argv[i]);
            rc = turn(model, session, &conv, argv[i], &gp, 0, &out) ? 1 : 0;
            edgelm_generation_clear(&out);
        }
    } else {
        char *line = NULL;
        size_t cap = 0;
        ssize_t n;
        while ((n = getline(&line, &cap, stdin)) > 0) {
            while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
            if (n == 0) continue;
            if (!strcmp(line, "/exit")) break;
            turn(model, session, &conv, line, &gp, 0, &out); /* errors are reported; go on */
            edgelm_generation_clear(&out);
        }
        free(line);
    }
    if (rc == 0 && demo_cancel) {
        const char *msg = "Count from one to one hundred.";
        fprintf(stderr, "> %s   (cancelled by another thread after 3 tokens)\n", msg);
        if (turn(model, session, &conv, msg, &gp, 1, &out) != 0) {
            rc = 1;
        } else if (out.finish_reason != EDGELM_FINISH_CANCELLED || out.n_generated_tokens != 3) {
            fprintf(stderr, "error: expected a reply cancelled after 3 tokens, got %zu (%s)\n",
                    out.n_generated_tokens, finish_name(out.finish_reason));
            rc = 1;
        }
        edgelm_generation_clear(&out);
    }

done:
    free_conversation(&conv);
    edgelm_session_free(session);
    edgelm_model_free(model);
    edgelm_string_free(default_path);
    return rc;
}
