/*
 * An LD_PRELOAD layer for the power-loss nemesis.
 *
 * A node started with this library preloaded journals, for every regular file
 * under $CHORUS_POWERLOSS_DIR:
 *
 *   - before each write: where it lands, the file's size before it, and the
 *     bytes it is about to overwrite (an undo record);
 *   - after each successful fsync or fdatasync: the size the sync covered.
 *
 * After the node is killed, jepsen-like-tests/src/powerloss.rs replays the
 * journal backwards: every write after a file's last sync is undone and the
 * file is cut back to the size that sync covered. What remains is what a disk
 * would hold had the machine lost power at the moment of the kill.
 *
 * The journal ($CHORUS_POWERLOSS_JOURNAL) is appended to with one write(2)
 * per record on an O_APPEND descriptor, so a record is whole or absent. Its
 * own writes, and every real call below, go through syscall(2), so nothing
 * here recurses into the wrappers and nothing needs dlsym.
 *
 * Not modelled: renames, unlinks and truncations take effect at once, as if
 * the directory were synced; mmap'd writes are not seen (RocksDB does not
 * write through mmap by default).
 *
 * Record layout (native-endian u64s): kind, a, b, c, path length; then the
 * path; then, for a write, the undo bytes.
 *   kind 1, write: a = offset, b = length, c = size before, undo = old bytes
 *                  of [offset, min(offset + length, size before)).
 *   kind 2, sync:  a = size covered.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

enum { KIND_WRITE = 1, KIND_SYNC = 2 };

static const char *watched;
static size_t watched_len;
static int journal = -1;

__attribute__((constructor)) static void powerloss_init(void) {
    const char *dir = getenv("CHORUS_POWERLOSS_DIR");
    const char *path = getenv("CHORUS_POWERLOSS_JOURNAL");
    if (dir == NULL || path == NULL || dir[0] != '/') {
        return;
    }
    watched = dir;
    watched_len = strlen(dir);
    while (watched_len > 1 && watched[watched_len - 1] == '/') {
        watched_len--;
    }
    journal = (int)syscall(SYS_openat, AT_FDCWD, path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
}

/* The path of `fd` into `path` if it is a regular file under the watched
 * directory; its current size into `size`. */
static int tracked(int fd, char *path, size_t cap, off_t *size) {
    if (journal < 0) {
        return 0;
    }
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, cap - 1);
    if (n <= 0) {
        return 0;
    }
    path[n] = '\0';
    if ((size_t)n <= watched_len || strncmp(path, watched, watched_len) != 0 || path[watched_len] != '/') {
        return 0;
    }
    struct stat st;
    if (syscall(SYS_fstat, fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        return 0;
    }
    *size = st.st_size;
    return 1;
}

static void append_record(uint64_t kind, uint64_t a, uint64_t b, uint64_t c, const char *path, const void *undo, size_t undo_len) {
    size_t path_len = strlen(path);
    size_t len = 5 * sizeof(uint64_t) + path_len + undo_len;
    unsigned char *buf = malloc(len);
    if (buf == NULL) {
        /* A lost record would make the replay keep a write it should drop,
         * and the nemesis would claim a loss it did not cause. */
        abort();
    }
    uint64_t head[5] = {kind, a, b, c, path_len};
    memcpy(buf, head, sizeof head);
    memcpy(buf + sizeof head, path, path_len);
    if (undo_len > 0) {
        memcpy(buf + sizeof head + path_len, undo, undo_len);
    }
    int saved = errno;
    ssize_t w = syscall(SYS_write, journal, buf, len);
    free(buf);
    if (w != (ssize_t)len) {
        abort();
    }
    errno = saved;
}

/* The bytes a write is about to overwrite, read through `fd` or, when it was
 * opened write-only, through a second descriptor on the same file. */
static int read_old(int fd, const char *path, void *buf, size_t len, off_t off) {
    if (syscall(SYS_pread64, fd, buf, len, off) == (ssize_t)len) {
        return 1;
    }
    int rd = (int)syscall(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC);
    if (rd < 0) {
        return 0;
    }
    ssize_t r = syscall(SYS_pread64, rd, buf, len, off);
    syscall(SYS_close, rd);
    return r == (ssize_t)len;
}

/* Journals a write of `len` bytes at `off` (or at the end, for O_APPEND). */
static void before_write(int fd, off_t off, size_t len, int at_cursor) {
    char path[PATH_MAX];
    off_t size;
    if (!tracked(fd, path, sizeof path, &size)) {
        return;
    }
    if (at_cursor) {
        int flags = (int)syscall(SYS_fcntl, fd, F_GETFL);
        off = (flags >= 0 && (flags & O_APPEND)) ? size : (off_t)syscall(SYS_lseek, fd, 0, SEEK_CUR);
        if (off < 0) {
            return;
        }
    }
    size_t undo_len = 0;
    void *undo = NULL;
    if (off < size) {
        off_t end = off + (off_t)len < size ? off + (off_t)len : size;
        undo_len = (size_t)(end - off);
        undo = malloc(undo_len);
        if (undo == NULL) {
            abort();
        }
        if (!read_old(fd, path, undo, undo_len, off)) {
            abort();
        }
    }
    append_record(KIND_WRITE, (uint64_t)off, (uint64_t)len, (uint64_t)size, path, undo, undo_len);
    free(undo);
}

/* The size a sync is about to cover: taken before the sync starts, so a write
 * racing the sync is never counted as covered. */
static int before_sync(int fd, char *path, size_t cap, off_t *size) {
    return tracked(fd, path, cap, size);
}

static void after_sync(const char *path, off_t size) {
    append_record(KIND_SYNC, (uint64_t)size, 0, 0, path, NULL, 0);
}

ssize_t write(int fd, const void *buf, size_t count) {
    before_write(fd, 0, count, 1);
    return syscall(SYS_write, fd, buf, count);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    before_write(fd, offset, count, 0);
    return syscall(SYS_pwrite64, fd, buf, count, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset) {
    return pwrite(fd, buf, count, offset);
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++) {
        total += iov[i].iov_len;
    }
    before_write(fd, 0, total, 1);
    return syscall(SYS_writev, fd, iov, iovcnt);
}

ssize_t pwritev(int fd, const struct iovec *iov, int iovcnt, off_t offset) {
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++) {
        total += iov[i].iov_len;
    }
    before_write(fd, offset, total, 0);
    /* The raw syscall takes the offset split in two halves. */
    return syscall(SYS_pwritev, fd, iov, iovcnt, (unsigned long)offset, (unsigned long)((uint64_t)offset >> 32));
}

ssize_t pwritev64(int fd, const struct iovec *iov, int iovcnt, off_t offset) {
    return pwritev(fd, iov, iovcnt, offset);
}

int fsync(int fd) {
    char path[PATH_MAX];
    off_t size;
    int watch = before_sync(fd, path, sizeof path, &size);
    int r = (int)syscall(SYS_fsync, fd);
    if (r == 0 && watch) {
        after_sync(path, size);
    }
    return r;
}

int fdatasync(int fd) {
    char path[PATH_MAX];
    off_t size;
    int watch = before_sync(fd, path, sizeof path, &size);
    int r = (int)syscall(SYS_fdatasync, fd);
    if (r == 0 && watch) {
        after_sync(path, size);
    }
    return r;
}
