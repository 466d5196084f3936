/* File-system helpers: mkdir -p, rm -r, fsync of a folder, atomic small files. */
#include "core/fsutil.h"
#include "core/error.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int finch_mkdirs(const char *dir)
{
    char p[4096];
    if (!dir || !*dir) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "empty folder name");
    if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "folder name too long: %s", dir);
    for (char *s = p + 1;; s++) {
        if (*s == '/' || *s == 0) {
            char c = *s;
            *s = 0;
            if (mkdir(p, 0755) && errno != EEXIST) return finch_error(FINCH_ERR_IO, "cannot create folder %s: %s", p, strerror(errno));
            if (!finch_is_dir(p)) return finch_error(FINCH_ERR_IO, "cannot create folder %s: %s", p, strerror(ENOTDIR));
            *s = c;
            if (!c) break;
        }
    }
    return FINCH_OK;
}

int finch_is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path) ? -1 : 0;
}

int finch_remove_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st)) return errno == ENOENT ? FINCH_OK : finch_error(FINCH_ERR_IO, "cannot remove %s: %s", path, strerror(errno));
    if (!S_ISDIR(st.st_mode)) return remove(path) ? finch_error(FINCH_ERR_IO, "cannot remove %s: %s", path, strerror(errno)) : FINCH_OK;
    if (nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS))
        return finch_error(FINCH_ERR_IO, "cannot remove %s: %s", path, strerror(errno));
    return FINCH_OK;
}

int finch_fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return finch_error(FINCH_ERR_IO, "cannot open folder %s: %s", dir, strerror(errno));
    int rc = fsync(fd) && errno != EINVAL ? finch_error(FINCH_ERR_IO, "cannot sync folder %s: %s", dir, strerror(errno)) : FINCH_OK;
    close(fd);
    return rc;
}

int finch_write_file_atomic(const char *path, const void *data, size_t size)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) return finch_error(FINCH_ERR_IO, "cannot create %s: %s", tmp, strerror(errno));
    int ok = fwrite(data, 1, size, f) == size;
    ok = fflush(f) == 0 && ok && fsync(fileno(f)) == 0;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path)) {
        int e = errno;
        remove(tmp);
        return finch_error(FINCH_ERR_IO, "cannot write %s: %s", path, strerror(e));
    }
    return FINCH_OK;
}
