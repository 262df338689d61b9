#if defined(__linux__)
#define _GNU_SOURCE
#endif

#include "CSpawn.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <unistd.h>

#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
#define BULWARK_HAVE_CLOSEFROM 1
#endif

/// A duplicate of `fd` at 3 or above, close-on-exec, when `fd` is one of 0-2 (a descriptor the child must see at
/// another of 0-2 would otherwise be overwritten by an earlier dup2, and dup2 onto itself keeps close-on-exec).
static int lifted(int fd, int *owned) {
    *owned = -1;
    if (fd < 0 || fd > 2) return fd;
    int copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (copy < 0) return -3;  // refused below (EBADF)
    *owned = copy;
    return copy;
}

int bulwark_spawn(pid_t *pid, const char *path, char *const argv[], char *const envp[], const char *directory,
                  int in_fd, int out_fd, int err_fd, int new_group) {
#if !defined(BULWARK_HAVE_CLOSEFROM)
    (void)pid; (void)path; (void)argv; (void)envp; (void)directory;
    (void)in_fd; (void)out_fd; (void)err_fd; (void)new_group;
    return ENOSYS;
#else
    int owned[3] = {-1, -1, -1};
    int fds[3] = {lifted(in_fd, &owned[0]), lifted(out_fd, &owned[1]), lifted(err_fd, &owned[2])};
    int result = 0;
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attributes;
    if ((result = posix_spawn_file_actions_init(&actions)) != 0) goto lifted_only;
    if ((result = posix_spawnattr_init(&attributes)) != 0) goto actions_only;
    for (int target = 0; target < 3 && result == 0; target++) {
        int fd = fds[target];
        if (fd == BULWARK_SPAWN_INHERIT) continue;
        if (fd == BULWARK_SPAWN_NULL) {
            result = posix_spawn_file_actions_addopen(&actions, target, "/dev/null", target == 0 ? O_RDONLY : O_WRONLY, 0);
        } else if (fd < 0) {
            result = EBADF;
        } else {
            result = posix_spawn_file_actions_adddup2(&actions, fd, target);
        }
    }
    if (result == 0) result = posix_spawn_file_actions_addclosefrom_np(&actions, 3);
    if (result == 0 && directory != NULL) result = posix_spawn_file_actions_addchdir_np(&actions, directory);
    sigset_t empty, all;
    sigemptyset(&empty);
    sigfillset(&all);
    short flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | (new_group ? POSIX_SPAWN_SETPGROUP : 0);
    if (result == 0) result = posix_spawnattr_setsigmask(&attributes, &empty);
    if (result == 0) result = posix_spawnattr_setsigdefault(&attributes, &all);
    if (result == 0 && new_group) result = posix_spawnattr_setpgroup(&attributes, 0);
    if (result == 0) result = posix_spawnattr_setflags(&attributes, flags);
    if (result == 0) result = posix_spawn(pid, path, &actions, &attributes, argv, envp);
    posix_spawnattr_destroy(&attributes);
actions_only:
    posix_spawn_file_actions_destroy(&actions);
lifted_only:
    for (int i = 0; i < 3; i++) {
        if (owned[i] >= 0) close(owned[i]);
    }
    return result;
#endif
}

int bulwark_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }
