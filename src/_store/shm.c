/* shm.c -- creating, naming, sweeping and mapping the segment (concept in shm.h). */
#include "shm.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "status.h"

static int resolve(const char *name, char *out)
{
    int n;
    if (strchr(name, '/'))
        n = snprintf(out, SHM_PATH_MAX, "%s", name);
    else
        n = snprintf(out, SHM_PATH_MAX, "%s/%s", SHM_DIR, name);
    if (n <= 0 || n >= SHM_PATH_MAX)
        return store_fail(STORE_ERR_INVALID, "segment name too long or empty");
    return STORE_OK;
}

static void dir_of(const char *path, char *out)
{
    snprintf(out, SHM_PATH_MAX, "%s", path);
    char *slash = strrchr(out, '/');
    if (slash == out)
        out[1] = '\0';
    else if (slash)
        *slash = '\0';
    else
        snprintf(out, SHM_PATH_MAX, ".");
}

int shm_free_bytes(const char *path, uint64_t *out)
{
    char dir[SHM_PATH_MAX];
    dir_of(path, dir);
    struct statvfs sv;
    if (statvfs(dir, &sv) != 0)
        return store_fail_sys(errno, "statvfs(%s)", dir);
    *out = (uint64_t)sv.f_bavail * (uint64_t)sv.f_frsize;
    return STORE_OK;
}

int shm_sweep_stale(const char *dir, int *removed)
{
    int count = 0;
    DIR *d = opendir(dir);
    if (!d)
        return store_fail_sys(errno, "opendir(%s)", dir);
    struct dirent *de;
    size_t plen = strlen(SHM_PREFIX);
    while ((de = readdir(d)) != NULL) {
        if (strncmp(de->d_name, SHM_PREFIX, plen) != 0)
            continue;
        char *end;
        long pid = strtol(de->d_name + plen, &end, 10);
        if (end == de->d_name + plen || *end != '-' || pid <= 0)
            continue;
        if (kill((pid_t)pid, 0) == -1 && errno == ESRCH) {
            char path[SHM_PATH_MAX];
            int n = snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
            if (n > 0 && n < (int)sizeof path && unlink(path) == 0)
                count++;
        }
    }
    closedir(d);
    if (removed)
        *removed = count;
    return STORE_OK;
}

static int map_fd(int fd, uint64_t size, shm_segment_t *out)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        return store_fail_sys(errno, "mmap of %llu bytes", (unsigned long long)size);
    out->fd = fd;
    out->base = p;
    out->size = size;
    return STORE_OK;
}

int shm_create(const char *name, uint64_t size, shm_segment_t *out)
{
    char path[SHM_PATH_MAX];
    int rc;
    memset(out, 0, sizeof *out);
    out->fd = -1;
    if (name) {
        if ((rc = resolve(name, path)) != STORE_OK)
            return rc;
    } else {
        uint64_t r;
        if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
            return store_fail_sys(errno, "getrandom");
        snprintf(path, sizeof path, "%s/%s%d-%016llx", SHM_DIR, SHM_PREFIX, (int)getpid(),
                 (unsigned long long)r);
    }
    uint64_t avail;
    if ((rc = shm_free_bytes(path, &avail)) != STORE_OK)
        return rc;
    if (size > avail) {
        char dir[SHM_PATH_MAX];
        dir_of(path, dir);
        return store_fail(STORE_ERR_NOSPC,
                          "%s has %llu bytes free, the object store needs %llu bytes",
                          dir, (unsigned long long)avail, (unsigned long long)size);
    }
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        if (errno == EEXIST)
            return store_fail(STORE_ERR_EXISTS, "segment %s already exists", path);
        return store_fail_sys(errno, "open(%s)", path);
    }
    if (ftruncate(fd, (off_t)size) != 0) {
        int err = errno;
        close(fd);
        unlink(path);
        if (err == ENOSPC || err == EFBIG)
            return store_fail(STORE_ERR_NOSPC, "ftruncate(%s, %llu): no space", path,
                              (unsigned long long)size);
        return store_fail_sys(err, "ftruncate(%s)", path);
    }
    if ((rc = map_fd(fd, size, out)) != STORE_OK) {
        close(fd);
        unlink(path);
        return rc;
    }
    snprintf(out->path, sizeof out->path, "%s", path);
    return STORE_OK;
}

static int map_existing(int fd, shm_segment_t *out)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return store_fail_sys(errno, "fstat");
    if (st.st_size <= 0)
        return store_fail(STORE_ERR_INVALID, "segment is empty (not a pygen store)");
    return map_fd(fd, (uint64_t)st.st_size, out);
}

int shm_attach_path(const char *name, shm_segment_t *out)
{
    char path[SHM_PATH_MAX];
    int rc;
    memset(out, 0, sizeof *out);
    out->fd = -1;
    if ((rc = resolve(name, path)) != STORE_OK)
        return rc;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return store_fail(STORE_ERR_ABSENT, "no segment named %s", path);
        return store_fail_sys(errno, "open(%s)", path);
    }
    if ((rc = map_existing(fd, out)) != STORE_OK) {
        close(fd);
        return rc;
    }
    snprintf(out->path, sizeof out->path, "%s", path);
    return STORE_OK;
}

int shm_attach_fd(int fd, shm_segment_t *out)
{
    memset(out, 0, sizeof *out);
    out->fd = -1;
    int flags = fcntl(fd, F_GETFD);
    if (flags < 0)
        return store_fail_sys(errno, "fcntl(%d, F_GETFD)", fd);
    if (fcntl(fd, F_SETFD, flags | FD_CLOEXEC) != 0) {
        int err = errno;
        close(fd);
        return store_fail_sys(err, "fcntl(%d, F_SETFD)", fd);
    }
    int rc = map_existing(fd, out);
    if (rc != STORE_OK) {
        close(fd);
        return rc;
    }
    /* The name, for display: /proc tells what the fd points at ("... (deleted)" once
     * unlinked, which we strip). */
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out->path, sizeof out->path - 1);
    out->path[n > 0 ? n : 0] = '\0';
    char *del = strstr(out->path, " (deleted)");
    if (del)
        *del = '\0';
    return STORE_OK;
}

int shm_unlink_path(const char *path)
{
    if (unlink(path) != 0 && errno != ENOENT)
        return store_fail_sys(errno, "unlink(%s)", path);
    return STORE_OK;
}

void shm_close(shm_segment_t *seg)
{
    if (seg->base)
        munmap(seg->base, seg->size);
    if (seg->fd >= 0)
        close(seg->fd);
    seg->base = NULL;
    seg->fd = -1;
}
