/* shm.h -- the shared segment: one tmpfs file, mapped by every process.
 *
 * Concept.  The store lives in a file `/dev/shm/pygen-<creator pid>-<16 hex digits>`,
 * created O_EXCL|O_CLOEXEC with mode 0600, sized with ftruncate and mapped MAP_SHARED.
 * Each process maps it at whatever address the kernel picks, so nothing inside the
 * segment is a pointer: everything is an offset from the segment's start.
 *
 *   creator:  shm_sweep_stale -> shm_create (statvfs check, O_EXCL, ftruncate, mmap)
 *             -> [runtime] shm_unlink at once, pass the fd to workers
 *   others:   shm_attach_path (by name) or shm_attach_fd (inherited fd, FD_CLOEXEC set)
 *
 * Nothing is left behind: a runtime that unlinks right after creating leaves no name to
 * clean; a creator SIGKILLed before unlinking leaves a file whose name carries its dead
 * pid, which the next shm_sweep_stale (run by every create) removes.
 *
 * The file is sparse after ftruncate: pages are reserved later (reserve.h), so creation
 * is fast even for tens of GB.  shm_create refuses up front (STORE_ERR_NOSPC) a segment
 * larger than the free space of its file system.
 */
#ifndef PYGEN_SHM_H
#define PYGEN_SHM_H

#include <stdint.h>

#define SHM_DIR "/dev/shm"
#define SHM_PREFIX "pygen-"
#define SHM_PATH_MAX 256

typedef struct shm_segment {
    int fd;
    uint8_t *base;            /* where this process mapped it */
    uint64_t size;
    char path[SHM_PATH_MAX];  /* the name it was created or attached under ("" if unknown) */
} shm_segment_t;

/* Unlink every `SHM_DIR/pygen-<pid>-*` whose pid is dead (kill(pid, 0) fails with ESRCH).
 * Out (may be NULL): how many were removed. */
int shm_sweep_stale(const char *dir, int *removed);

/* Create and map a new segment of `size` bytes.  `path` NULL: a fresh name under SHM_DIR;
 * a name without '/': that name under SHM_DIR; otherwise the path itself.
 * STORE_ERR_NOSPC (with the figures in store_last_error()) if it cannot fit;
 * STORE_ERR_EXISTS if the name is taken. */
int shm_create(const char *path, uint64_t size, shm_segment_t *out);

/* Map an existing segment by name (same naming rules as shm_create). */
int shm_attach_path(const char *path, shm_segment_t *out);

/* Map an existing segment from an open fd.  Takes ownership of fd (closed on failure). */
int shm_attach_fd(int fd, shm_segment_t *out);

/* Remove the name (ENOENT is success: unlinking is idempotent). */
int shm_unlink_path(const char *path);

/* Unmap and close. */
void shm_close(shm_segment_t *seg);

/* Bytes available to unprivileged users in the file system holding `path`'s directory. */
int shm_free_bytes(const char *path, uint64_t *out);

#endif
