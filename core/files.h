/* File helpers of the exporters, beside core/fsutil.h (mkdir -p, atomic writes): every file is
 * written under a temporary name in its destination folder and renamed over the final name once
 * complete, so a failure (unwritable folder, full disk) never leaves a half-written file behind. */
#ifndef FINCH_CORE_FILES_H
#define FINCH_CORE_FILES_H

#include "core/fsutil.h"

#include <stddef.h>

/* "<path>.tmp.<pid>" into buf. */
void finch_temp_name(char *buf, size_t size, const char *path);
int finch_write_text_atomic(const char *path, const char *text);
/* Copies src to dst (through a temporary file); *copied = 0 and FINCH_OK when src does not exist. */
int finch_copy_file_atomic(const char *src, const char *dst, int *copied);
/* Reads a whole file (NUL-terminated; the length without it in *len when len is not NULL). */
int finch_read_file(const char *path, char **out, size_t *len);
/* Closes f, checking that every buffered byte reached the file (fflush + fsync + fclose); on failure
 * the message names path. */
int finch_close_checked(void *f, const char *path);

/* A set of outputs written under temporary names and renamed into place together at the end:
 * finch_stage() gives the temporary path to write for a final path; commit renames them all;
 * abort (or a failed commit) removes the temporaries. */
typedef struct finch_staged {
    char **tmp, **final;
    int n;
} finch_staged;

int finch_stage(finch_staged *s, const char *final_path, const char **tmp_path);
int finch_stage_commit(finch_staged *s);
void finch_stage_abort(finch_staged *s);

#endif
