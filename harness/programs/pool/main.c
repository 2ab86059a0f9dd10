// harness-pool: a thread-pool server as a fuzzing target. Three workers wait on a condition
// variable; the main thread reads a request from stdin, hands each line of it to the pool,
// starts a helper thread for the request's length check and joins it, waits until the
// workers are done, and exits. A line "KILL" followed by a digit the helper thread approves
// makes a worker write through a null pointer (the planted bug). Each run first checks it
// has exactly the threads of the snapshot: a thread left over from an earlier run crashes
// in thread_leaked().
//
//   harness-pool          prints READY, then reads stdin.
#define _GNU_SOURCE
#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WORKERS 3
#define MAXJOBS 64

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work = PTHREAD_COND_INITIALIZER, done = PTHREAD_COND_INITIALIZER;
static char *jobs[MAXJOBS];
static int queued, taken, finished;
static volatile int approved;
static char request[4096];
static ssize_t length;

__attribute__((noinline)) static void thread_leaked(void) { abort(); }

__attribute__((noinline)) static void handle_line(const char *line) {
    if (strncmp(line, "KILL", 4) == 0 && approved && line[4] >= '0' && line[4] <= '9') {
        volatile int *nowhere = NULL;
        *nowhere = line[4];
    }
}

static void *worker(void *arg) {
    (void)arg;
    pthread_mutex_lock(&lock);
    for (;;) {
        while (taken == queued) pthread_cond_wait(&work, &lock);
        char *line = jobs[taken++];
        pthread_mutex_unlock(&lock);
        handle_line(line);
        pthread_mutex_lock(&lock);
        finished++;
        pthread_cond_broadcast(&done);
    }
    return NULL;
}

static void *checker(void *arg) {
    (void)arg;
    approved = length > 5 && length < 200;
    return NULL;
}

static int threads(void) {
    DIR *d = opendir("/proc/self/task");
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) if (e->d_name[0] != '.') n++;
    if (d) closedir(d);
    return n;
}

int main(void) {
    pthread_t t;
    for (int i = 0; i < WORKERS; i++) pthread_create(&t, NULL, worker, NULL);
    while (threads() != WORKERS + 1) usleep(1000);
    printf("READY pid=%d\n", getpid());
    fflush(stdout);
    length = read(0, request, sizeof request - 1);
    if (threads() != WORKERS + 1) thread_leaked();
    if (length <= 0) return 0;
    request[length] = 0;
    pthread_t helper;
    pthread_create(&helper, NULL, checker, NULL);
    pthread_join(helper, NULL);
    pthread_mutex_lock(&lock);
    for (char *line = strtok(request, "\n"); line && queued < MAXJOBS; line = strtok(NULL, "\n")) jobs[queued++] = line;
    pthread_cond_broadcast(&work);
    while (finished < queued) pthread_cond_wait(&done, &lock);
    pthread_mutex_unlock(&lock);
    return 0;
}
