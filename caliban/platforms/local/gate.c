/* caliban's start gate: the process a pre-warmed container starts with.
 *
 * argv: gate DIR PROGRAM [ARGS...]
 * Blocks reading DIR/go until caliban releases it (one byte), then runs
 * PROGRAM with ARGS and the container's environment untouched (PATH lookup as
 * tini's execvp), forwards signals to it, waits for it and for every other
 * process of the container's PID namespace, writes the exit status (one
 * byte) to DIR/done and exits with the status a plain start would give: the
 * job's own code, or 128+signal. EOF on DIR/go without a byte: exit 125 without
 * running anything. Linked statically, so it needs nothing in the image.
 * caliban never uses it with a PID namespace shared with the host (the final
 * kill(-1) would reach the host's processes).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t child = 0;

static void forward(int sig) {
    if (child > 0)
        kill(child, sig);
    else
        _exit(128 + sig); /* still gated: nothing ran */
}

static int path_in(char *buf, size_t size, const char *dir, const char *name) {
    int n = snprintf(buf, size, "%s/%s", dir, name);
    return n > 0 && (size_t)n < size;
}

int main(int argc, char **argv) {
    static const int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1,
                                    SIGUSR2, SIGWINCH, SIGCONT, SIGTSTP};
    char go[4096], done[4096];
    if (argc < 3 || !path_in(go, sizeof go, argv[1], "go") ||
        !path_in(done, sizeof done, argv[1], "done"))
        return 125;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = forward;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof forwarded / sizeof *forwarded; i++)
        sigaction(forwarded[i], &sa, NULL);

    int fd;
    while ((fd = open(go, O_RDONLY | O_CLOEXEC)) < 0)
        if (errno != EINTR)
            return 125;
    char byte;
    ssize_t got;
    while ((got = read(fd, &byte, 1)) < 0 && errno == EINTR)
        ;
    close(fd);
    if (got != 1)
        return 125;

    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &old);
    pid_t pid = fork();
    if (pid < 0)
        return 125;
    if (pid == 0) {
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        for (size_t i = 0; i < sizeof forwarded / sizeof *forwarded; i++)
            sigaction(forwarded[i], &dfl, NULL);
        sigprocmask(SIG_SETMASK, &old, NULL);
        execvp(argv[2], argv + 2);
        fprintf(stderr, "caliban gate: exec %s failed: %s\n", argv[2], strerror(errno));
        _exit(errno == ENOENT ? 127 : 126); /* tini's codes */
    }
    child = pid;
    sigprocmask(SIG_SETMASK, &old, NULL);

    int status = 0, code = 125;
    for (;;) {
        pid_t w = waitpid(-1, &status, 0);
        if (w == pid) {
            code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            break;
        }
        if (w < 0 && errno == ECHILD)
            break;
    }
    child = -1;
    /* What the job left behind dies before the slot is handed on, as it would
     * with the container; zombies count until their parent reaps them. */
    struct timespec pause = {0, 1000000};
    while (kill(-1, 0) == 0) {
        kill(-1, SIGKILL);
        while (waitpid(-1, NULL, WNOHANG) > 0)
            ;
        nanosleep(&pause, NULL);
    }
    while ((fd = open(done, O_WRONLY | O_CLOEXEC)) < 0 && errno == EINTR)
        ;
    if (fd >= 0) {
        unsigned char out = (unsigned char)code;
        while (write(fd, &out, 1) < 0 && errno == EINTR)
            ;
        close(fd);
    }
    return code;
}
