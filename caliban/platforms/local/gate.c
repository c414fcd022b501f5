/* caliban's start gate: the process a pre-warmed container starts with.
 *
 * argv: gate DIR PROGRAM [ARGS...]
 * Opens DIR/done and writes 'r' (armed) to it, then blocks reading DIR/go until
 * caliban releases it (one byte). It then runs PROGRAM with ARGS and the
 * container's environment untouched (PATH lookup as tini's execvp), forwards
 * signals to it, waits for it and for every other process of the container's
 * PID namespace, writes the exit status (one byte) to DIR/done and exits with
 * the status a plain start would give: the job's own code, or 128+signal.
 * caliban holds both FIFOs open from before the container is created, so
 * neither open here ever waits, and once this helper has opened DIR/go a
 * released byte cannot be lost. No writer left on DIR/go (caliban died) and no
 * byte: exit 125 without running anything. Linked statically, so it needs
 * nothing in the image. caliban never uses it with a PID namespace shared with
 * the host (the final kill(-1) would reach the host's processes).
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

    /* Non-blocking opens: a FIFO's open otherwise waits for the other side,
     * forever if caliban is gone. Reads then block again, and end (0) once no
     * writer is left. */
    int fd = open(go, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    int out = open(done, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0 || out < 0 || fcntl(fd, F_SETFL, 0) < 0) {
        fprintf(stderr, "caliban gate: caliban is gone, the job was not started\n");
        return 125;
    }
    signal(SIGPIPE, SIG_IGN); /* caliban gone: its end of done is closed */
    char byte = 'r';
    while (write(out, &byte, 1) < 0 && errno == EINTR)
        ;
    ssize_t got;
    while ((got = read(fd, &byte, 1)) < 0 && errno == EINTR)
        ;
    close(fd);
    if (got != 1) {
        fprintf(stderr, "caliban gate: caliban is gone, the job was not started\n");
        return 125;
    }

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
        sigaction(SIGPIPE, &dfl, NULL); /* as a plain start leaves it */
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
    unsigned char status_byte = (unsigned char)code;
    while (write(out, &status_byte, 1) < 0 && errno == EINTR)
        ;
    close(out);
    return code;
}
