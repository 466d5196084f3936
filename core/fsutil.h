/* Small file-system helpers for outputs that must never be left half-written. */
#ifndef FINCH_CORE_FSUTIL_H
#define FINCH_CORE_FSUTIL_H

#include <stddef.h>

/* mkdir -p; FINCH_ERR_IO naming the component that failed. */
int finch_mkdirs(const char *dir);
/* Removes a file or a folder and everything under it (symbolic links are removed, not followed).
 * A missing path is not an error. */
int finch_remove_tree(const char *path);
/* Flushes a folder's entries (after a rename into it) to the disk. */
int finch_fsync_dir(const char *dir);
/* Writes bytes to "<path>.tmp.<pid>", fsyncs, renames over path. */
int finch_write_file_atomic(const char *path, const void *data, size_t size);
/* 1 if path is an existing folder. */
int finch_is_dir(const char *path);

#endif
