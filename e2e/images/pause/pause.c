/* The pod sandbox's process: holds the pod's namespaces and sleeps until it is told to stop. */
#include <signal.h>
#include <unistd.h>

static void stop(int sig) { _exit(128 + sig); }

int main(void) {
    signal(SIGINT, stop);
    signal(SIGTERM, stop);
    for (;;) pause();
}
