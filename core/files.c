#include "core/files.h"
#include "core/error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void finch_temp_name(char *buf, size_t size, const char *path)
{
    snprintf(buf, size, "%s.tmp.%ld", path, (long)getpid());
}

int finch_close_checked(void *fp, const char *path)
{
    FILE *f = fp;
    int ok = fflush(f) == 0;
    int e = ok ? 0 : errno;
    if (ok && fsync(fileno(f))) {
        ok = 0;
        e = errno;
    }
    if (fclose(f) && ok) {
        ok = 0;
        e = errno;
    }
    return ok ? FINCH_OK : finch_error(FINCH_ERR_IO, "cannot write %s: %s", path, strerror(e));
}

int finch_write_text_atomic(const char *path, const char *text)
{
    return finch_write_file_atomic(path, text, strlen(text));
}

int finch_read_file(const char *path, char **out, size_t *len)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return finch_error(FINCH_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t n = 0, cap = 0, got;
    do {
        if (cap - n < 65536) {
            cap = cap ? 2 * cap : 262144;
            char *p = realloc(buf, cap + 1);
            if (!p) {
                free(buf);
                fclose(f);
                return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory reading %s", path);
            }
            buf = p;
        }
        got = fread(buf + n, 1, cap - n, f);
        n += got;
    } while (got);
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return finch_error(FINCH_ERR_IO, "cannot read %s", path);
    }
    buf[n] = 0;
    *out = buf;
    if (len) *len = n;
    return FINCH_OK;
}

int finch_copy_file_atomic(const char *src, const char *dst, int *copied)
{
    if (copied) *copied = 0;
    struct stat st;
    if (stat(src, &st)) return errno == ENOENT ? FINCH_OK : finch_error(FINCH_ERR_IO, "cannot read %s: %s", src, strerror(errno));
    char *data;
    size_t len;
    int rc = finch_read_file(src, &data, &len);
    if (rc) return rc;
    rc = finch_write_file_atomic(dst, data, len);
    free(data);
    if (!rc && copied) *copied = 1;
    return rc;
}

int finch_stage(finch_staged *s, const char *final_path, const char **tmp_path)
{
    char **t = realloc(s->tmp, (size_t)(s->n + 1) * sizeof *t);
    if (t) s->tmp = t;
    char **f = realloc(s->final, (size_t)(s->n + 1) * sizeof *f);
    if (f) s->final = f;
    size_t len = strlen(final_path) + 32;
    char *tp = malloc(len), *fp = strdup(final_path);
    if (!t || !f || !tp || !fp) {
        free(tp);
        free(fp);
        return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    }
    snprintf(tp, len, "%s.partial.%ld", final_path, (long)getpid());
    s->tmp[s->n] = tp;
    s->final[s->n] = fp;
    s->n++;
    *tmp_path = tp;
    return FINCH_OK;
}

static void stage_free(finch_staged *s)
{
    for (int i = 0; i < s->n; i++) {
        free(s->tmp[i]);
        free(s->final[i]);
    }
    free(s->tmp);
    free(s->final);
    memset(s, 0, sizeof *s);
}

void finch_stage_abort(finch_staged *s)
{
    for (int i = 0; i < s->n; i++) remove(s->tmp[i]);
    stage_free(s);
}

int finch_stage_commit(finch_staged *s)
{
    for (int i = 0; i < s->n; i++)
        if (rename(s->tmp[i], s->final[i])) {
            int rc = finch_error(FINCH_ERR_IO, "cannot rename %s to %s: %s", s->tmp[i], s->final[i], strerror(errno));
            for (int j = i; j < s->n; j++) remove(s->tmp[j]);
            stage_free(s);
            return rc;
        }
    stage_free(s);
    return FINCH_OK;
}
