/* halo-exec: the last step into the sandboxed command, used by the warm-sandbox agent.
 *
 *   halo-exec AS CPU NPROC FSIZE NOFILE UID GID CWD -- argv...
 *
 * New session, rlimits (CPU hard limit = soft + 1 so SIGXCPU comes first; no core dumps), working
 * directory, no supplementary groups, the sandbox gid/uid (UID -1: keep), no_new_privs, exec.
 * A C program because it is exec'd for every compile and run: the agent can then start it with
 * vfork+exec instead of forking a Python interpreter (about a millisecond less per command). */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

static void limit(int resource, const char *value, rlim_t extra) {
    rlim_t v = (rlim_t)strtoull(value, NULL, 10);
    struct rlimit r = {v, v + extra};
    if (setrlimit(resource, &r) != 0) {
        perror("halo-exec: setrlimit");
        _exit(126);
    }
}

int main(int argc, char **argv) {
    if (argc < 11 || strcmp(argv[9], "--") != 0) {
        fprintf(stderr, "halo-exec: usage: AS CPU NPROC FSIZE NOFILE UID GID CWD -- argv...\n");
        return 126;
    }
    setsid();
    limit(RLIMIT_AS, argv[1], 0);
    limit(RLIMIT_CPU, argv[2], 1);
    limit(RLIMIT_NPROC, argv[3], 0);
    limit(RLIMIT_FSIZE, argv[4], 0);
    limit(RLIMIT_NOFILE, argv[5], 0);
    struct rlimit core = {0, 0};
    setrlimit(RLIMIT_CORE, &core);
    if (chdir(argv[8]) != 0) {
        perror("halo-exec: chdir");
        return 126;
    }
    long uid = strtol(argv[6], NULL, 10), gid = strtol(argv[7], NULL, 10);
    if (uid >= 0) {
        if (setgroups(0, NULL) != 0 || setgid((gid_t)gid) != 0 || setuid((uid_t)uid) != 0) {
            perror("halo-exec: dropping privileges");
            return 126;
        }
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        perror("halo-exec: no_new_privs");
        return 126;
    }
    execvp(argv[10], argv + 10);
    fprintf(stderr, "cannot execute %s: %s\n", argv[10], strerror(errno));
    return 127;
}
