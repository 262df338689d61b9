#ifndef BULWARK_CSPAWN_H
#define BULWARK_CSPAWN_H

#include <sys/types.h>

/// What a child's descriptor 0, 1 or 2 is, besides a descriptor of the parent's to duplicate there.
#define BULWARK_SPAWN_NULL (-1)    ///< /dev/null
#define BULWARK_SPAWN_INHERIT (-2) ///< the parent's own (left as it is)

/// Starts `path` with `argv` and `envp` (both NULL-terminated) and returns 0 with its pid in `*pid`, or an errno.
///
/// The child gets descriptors 0-2 as `in_fd`, `out_fd` and `err_fd` say, and no other descriptor of the parent:
/// every one from 3 up is closed in the child (`posix_spawn_file_actions_addclosefrom_np`, glibc 2.34), whatever
/// another thread opens meanwhile and without changing any descriptor of the parent. Its signal mask is empty and
/// every signal's disposition the default (the parent's threads block or ignore some). With `new_group`, it leads
/// a process group of its own (pgid = pid). `directory`, when not NULL, is its working directory.
int bulwark_spawn(pid_t *pid, const char *path, char *const argv[], char *const envp[], const char *directory,
                  int in_fd, int out_fd, int err_fd, int new_group);

/// A pipe whose two ends are close-on-exec from the start (`pipe2(O_CLOEXEC)`): 0, or -1 with errno.
int bulwark_pipe_cloexec(int fds[2]);

#endif
