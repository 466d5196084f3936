/* Trainer checkpoints. A checkpoint is a folder:
 *     trainer_state.safetensors   every trainable tensor, its master copy and optimizer moments, raw
 *                                 and in device order; metadata "finch_trainer_state" = a JSON object
 *                                 with the step, the data position, the model's step counter and the
 *                                 settings a resume must share
 *     adapter_config.json, adapter_model.safetensors   the PEFT adapter (LoRA runs)
 * It is written into "<dir>.tmp.<pid>" and renamed into place, so a failure (disk full, no
 * permission) leaves no half-written checkpoint and never touches an older one. */
#include "core/error.h"
#include "core/fsutil.h"
#include "core/safetensors.h"
#include "core/trainer.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define STATE_FILE "trainer_state.safetensors"
#define STATE_KEY "finch_trainer_state"
#define CHECKPOINT_PREFIX "checkpoint-"

int trainer_check_output_dir(const char *dir)
{
    int rc = finch_mkdirs(dir);
    if (rc) return finch_error_prefix(rc, "output_dir '%s' is not usable: ", dir);
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/.finch-write-test.%ld", dir, (long)getpid());
    FILE *f = fopen(probe, "wb");
    if (!f) return finch_error(FINCH_ERR_IO, "output_dir '%s' is not writable: %s", dir, strerror(errno));
    fclose(f);
    remove(probe);
    return FINCH_OK;
}

static st_dtype st_of(finch_dtype t)
{
    switch (t) {
    case FINCH_DTYPE_BF16: return ST_BF16;
    case FINCH_DTYPE_F16: return ST_F16;
    case FINCH_DTYPE_U8: return ST_U8;
    default: return ST_F32;
    }
}

/* The state a resume restores (position) and the settings it must share (checked). */
static cJSON *state_json(const finch_trainer *t)
{
    const finch_trainer_config *c = &t->cfg;
    cJSON *o = cJSON_CreateObject();
    char seed[32];
    snprintf(seed, sizeof seed, "%" PRIu64, c->seed);
    cJSON_AddStringToObject(o, "format", "finch-trainer-checkpoint-1");
    cJSON_AddNumberToObject(o, "global_step", (double)t->step);
    cJSON_AddNumberToObject(o, "epoch", (double)t->epoch);
    cJSON_AddNumberToObject(o, "row", (double)t->row);
    cJSON_AddNumberToObject(o, "model_step", (double)t->m->step);
    cJSON_AddNumberToObject(o, "total_steps", (double)t->total_steps);
    cJSON_AddStringToObject(o, "optim", finch_optimizer_name(c->optim));
    cJSON_AddStringToObject(o, "seed", seed);
    cJSON_AddNumberToObject(o, "per_device_train_batch_size", c->per_device_train_batch_size);
    cJSON_AddNumberToObject(o, "gradient_accumulation_steps", c->gradient_accumulation_steps);
    cJSON_AddNumberToObject(o, "packing", c->packing);
    cJSON_AddNumberToObject(o, "shuffle", c->shuffle);
    cJSON_AddNumberToObject(o, "max_seq_length", (double)c->max_seq_length);
    cJSON_AddNumberToObject(o, "eval_split", c->eval_split);
    cJSON_AddNumberToObject(o, "n_examples", (double)finch_train_data_count(t->data));
    return o;
}

/* Writes the checkpoint files into an existing, empty folder. */
static int write_files(finch_trainer *t, const char *dir)
{
    int n = finch_optim_tensor_count(t->opt), rc = FINCH_OK;
    st_entry *e = calloc((size_t)n + 1, sizeof *e);
    void **bufs = calloc((size_t)n + 1, sizeof *bufs);
    finch_optim_tensor *info = calloc((size_t)n + 1, sizeof *info);
    if (!e || !bufs || !info) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    for (int i = 0; !rc && i < n; i++) {
        finch_optim_tensor_info(t->opt, i, &info[i]);
        bufs[i] = malloc((size_t)info[i].numel * finch_dtype_size(info[i].dtype) + 1);
        if (!bufs[i]) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
        if (!rc) rc = finch_optim_tensor_read(t->opt, i, bufs[i]);
        e[i].name = info[i].name;
        e[i].dtype = st_of(info[i].dtype);
        e[i].ndim = 1;
        e[i].shape[0] = info[i].numel;
        e[i].data = bufs[i];
    }
    cJSON *state = rc ? NULL : state_json(t);
    char *json = state ? cJSON_PrintUnformatted(state) : NULL;
    if (!rc && !json) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    if (!rc) {
        char path[4400];
        snprintf(path, sizeof path, "%s/" STATE_FILE, dir);
        const char *meta[] = {STATE_KEY, json, NULL};
        rc = st_write(path, e, n, meta);
    }
    if (!rc && t->m->lora_attached) rc = finch_lora_save(t->m, dir);
    free(json);
    cJSON_Delete(state);
    for (int i = 0; bufs && i < n; i++) free(bufs[i]);
    free(bufs);
    free(e);
    free(info);
    return rc;
}

static int parent_of(const char *dir, char *out, size_t size)
{
    snprintf(out, size, "%s", dir);
    size_t n = strlen(out);
    while (n > 1 && out[n - 1] == '/') out[--n] = 0;
    char *slash = strrchr(out, '/');
    if (!slash) snprintf(out, size, ".");
    else if (slash == out) out[1] = 0;
    else *slash = 0;
    return FINCH_OK;
}

finch_status finch_trainer_save(finch_trainer *t, const char *dir)
{
    if (!t || !dir || !*dir) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_trainer_save: NULL argument");
    int finite = 1, rc = finch_optim_weights_finite(t->opt, &finite);
    if (rc) return rc;
    if (!finite)
        return finch_error(FINCH_ERR_NUMERIC, "not saving checkpoint %s: the weights after step %lld hold NaN or infinite values; last good "
                           "checkpoint: %s", dir, (long long)t->step, t->last_checkpoint[0] ? t->last_checkpoint : "(none)");
    char tmp[4200], old[4200], parent[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", dir, (long)getpid());
    snprintf(old, sizeof old, "%s.old.%ld", dir, (long)getpid());
    parent_of(dir, parent, sizeof parent);
    rc = finch_mkdirs(parent);
    if (!rc) rc = finch_remove_tree(tmp);
    if (!rc && mkdir(tmp, 0755)) rc = finch_error(FINCH_ERR_IO, "cannot create %s: %s", tmp, strerror(errno));
    if (!rc) rc = write_files(t, tmp);
    if (!rc) {
        /* An existing folder of that name is moved aside, replaced, then removed. */
        int had = finch_is_dir(dir);
        if (had && rename(dir, old)) rc = finch_error(FINCH_ERR_IO, "cannot move %s aside: %s", dir, strerror(errno));
        if (!rc && rename(tmp, dir)) {
            rc = finch_error(FINCH_ERR_IO, "cannot rename %s to %s: %s", tmp, dir, strerror(errno));
            if (had) rename(old, dir);
        }
        if (!rc && had) finch_remove_tree(old);
        if (!rc) rc = finch_fsync_dir(parent);
    }
    if (rc) {
        char msg[2048];
        snprintf(msg, sizeof msg, "%s", finch_last_error());
        finch_remove_tree(tmp);
        return finch_error(rc, "saving checkpoint %s failed, nothing was written and older checkpoints are intact: %s", dir, msg);
    }
    snprintf(t->last_checkpoint, sizeof t->last_checkpoint, "%s", dir);
    t->last_saved_step = t->step;
    return FINCH_OK;
}

/* checkpoint-<N> folders of dir, sorted by N. */
typedef struct ckpt_list {
    int64_t *steps;
    int n;
} ckpt_list;

static int list_checkpoints(const char *dir, ckpt_list *out)
{
    memset(out, 0, sizeof *out);
    DIR *d = opendir(dir);
    if (!d) return finch_error(FINCH_ERR_IO, "cannot read folder %s: %s", dir, strerror(errno));
    int cap = 0;
    for (struct dirent *de; (de = readdir(d));) {
        const char *name = de->d_name;
        size_t pl = strlen(CHECKPOINT_PREFIX);
        if (strncmp(name, CHECKPOINT_PREFIX, pl) || !name[pl]) continue;
        char *end;
        long long step = strtoll(name + pl, &end, 10);
        if (*end || step < 0) continue;
        char path[4200];
        snprintf(path, sizeof path, "%s/%s", dir, name);
        if (!finch_is_dir(path)) continue;
        if (out->n == cap) {
            cap = cap ? cap * 2 : 16;
            int64_t *p = realloc(out->steps, (size_t)cap * sizeof *p);
            if (!p) {
                closedir(d);
                free(out->steps);
                return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
            }
            out->steps = p;
        }
        out->steps[out->n++] = step;
    }
    closedir(d);
    for (int i = 1; i < out->n; i++)
        for (int j = i; j > 0 && out->steps[j - 1] > out->steps[j]; j--) {
            int64_t x = out->steps[j];
            out->steps[j] = out->steps[j - 1];
            out->steps[j - 1] = x;
        }
    return FINCH_OK;
}

finch_status finch_trainer_save_checkpoint(finch_trainer *t, char *path, size_t size)
{
    if (!t) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_trainer_save_checkpoint: NULL trainer");
    if (!t->output_dir) return finch_error(FINCH_ERR_STATE, "finch_trainer_save_checkpoint: no output_dir was configured");
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/" CHECKPOINT_PREFIX "%lld", t->output_dir, (long long)t->step);
    int rc = finch_trainer_save(t, dir);
    if (rc) return rc;
    if (path && size) snprintf(path, size, "%s", dir);
    if (t->cfg.save_total_limit > 0) {
        ckpt_list l;
        if (list_checkpoints(t->output_dir, &l) == FINCH_OK) {
            for (int i = 0; i + t->cfg.save_total_limit < l.n; i++) {
                if (l.steps[i] == t->step) continue;
                char old[4200];
                snprintf(old, sizeof old, "%s/" CHECKPOINT_PREFIX "%lld", t->output_dir, (long long)l.steps[i]);
                finch_remove_tree(old);
            }
            free(l.steps);
        }
    }
    return FINCH_OK;
}

finch_status finch_trainer_latest_checkpoint(const char *output_dir, char *path, size_t size)
{
    if (!output_dir || !path) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_trainer_latest_checkpoint: NULL argument");
    ckpt_list l;
    int rc = list_checkpoints(output_dir, &l);
    if (rc) return rc;
    for (int i = l.n - 1; i >= 0; i--) {
        char file[4400];
        snprintf(path, size, "%s/" CHECKPOINT_PREFIX "%lld", output_dir, (long long)l.steps[i]);
        snprintf(file, sizeof file, "%s/" STATE_FILE, path);
        if (access(file, R_OK) == 0) {
            free(l.steps);
            return FINCH_OK;
        }
    }
    free(l.steps);
    return finch_error(FINCH_ERR_IO, "%s holds no checkpoint (%s<step>/%s)", output_dir, CHECKPOINT_PREFIX, STATE_FILE);
}

/* ---- resume ---------------------------------------------------------------------------------- */

static int json_number(const cJSON *o, const char *key, const char *file, double *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v)) return finch_error(FINCH_ERR_FORMAT, "%s: the trainer state has no number '%s'", file, key);
    *out = v->valuedouble;
    return FINCH_OK;
}

/* A data-shaping setting must equal this run's, or the data stream would not continue. */
static int same_setting(const cJSON *o, const char *key, double now, const char *file)
{
    double was = 0;
    int rc = json_number(o, key, file, &was);
    if (rc) return rc;
    if (was != now)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "%s was written with %s = %g, this run has %g; resume with the same value", file, key,
                           was, now);
    return FINCH_OK;
}

finch_status finch_trainer_resume(finch_trainer *t, const char *dir)
{
    if (!t || !dir) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_trainer_resume: NULL argument");
    char file[4200];
    snprintf(file, sizeof file, "%s/" STATE_FILE, dir);
    st_file *f = NULL;
    int rc = st_open(file, &f);
    if (rc) return rc;
    const char *meta = st_metadata(f, STATE_KEY);
    cJSON *o = meta ? cJSON_Parse(meta) : NULL;
    const finch_trainer_config *c = &t->cfg;
    if (!o) rc = finch_error(FINCH_ERR_FORMAT, "%s: no readable '%s' metadata (not a finch trainer checkpoint)", file, STATE_KEY);
    const cJSON *optim = o ? cJSON_GetObjectItemCaseSensitive(o, "optim") : NULL, *seed = o ? cJSON_GetObjectItemCaseSensitive(o, "seed") : NULL;
    char seed_now[32];
    snprintf(seed_now, sizeof seed_now, "%" PRIu64, c->seed);
    if (!rc && (!cJSON_IsString(optim) || strcmp(optim->valuestring, finch_optimizer_name(c->optim))))
        rc = finch_error(FINCH_ERR_INVALID_ARGUMENT, "%s was written with optimizer %s, this run uses %s", file,
                         cJSON_IsString(optim) ? optim->valuestring : "?", finch_optimizer_name(c->optim));
    if (!rc && (!cJSON_IsString(seed) || strcmp(seed->valuestring, seed_now)))
        rc = finch_error(FINCH_ERR_INVALID_ARGUMENT, "%s was written with seed %s, this run has %s; resume with the same seed", file,
                         cJSON_IsString(seed) ? seed->valuestring : "?", seed_now);
    if (!rc) rc = same_setting(o, "per_device_train_batch_size", c->per_device_train_batch_size, file);
    if (!rc) rc = same_setting(o, "gradient_accumulation_steps", c->gradient_accumulation_steps, file);
    if (!rc) rc = same_setting(o, "packing", c->packing, file);
    if (!rc) rc = same_setting(o, "shuffle", c->shuffle, file);
    if (!rc) rc = same_setting(o, "max_seq_length", (double)c->max_seq_length, file);
    if (!rc) rc = same_setting(o, "eval_split", c->eval_split, file);
    if (!rc) rc = same_setting(o, "n_examples", (double)finch_train_data_count(t->data), file);
    double step = 0, epoch = 0, row = 0, model_step = 0;
    if (!rc) rc = json_number(o, "global_step", file, &step);
    if (!rc) rc = json_number(o, "epoch", file, &epoch);
    if (!rc) rc = json_number(o, "row", file, &row);
    if (!rc) rc = json_number(o, "model_step", file, &model_step);
    if (!rc && (int64_t)step > t->total_steps)
        rc = finch_error(FINCH_ERR_INVALID_ARGUMENT, "%s is at step %lld, past this run's %lld steps (raise max_steps)", dir, (long long)step,
                         (long long)t->total_steps);
    /* Every state tensor of this trainer must be there with its dtype and size; nothing else may be. */
    int n = finch_optim_tensor_count(t->opt);
    if (!rc && st_count(f) != n)
        rc = finch_error(FINCH_ERR_INVALID_ARGUMENT, "%s holds %d tensors, this model and optimizer have %d (another model, adapter or optimizer?)",
                         file, st_count(f), n);
    for (int i = 0; !rc && i < n; i++) {
        finch_optim_tensor info;
        finch_optim_tensor_info(t->opt, i, &info);
        const st_tensor *s = st_find(f, info.name);
        if (!s) rc = finch_error(FINCH_ERR_INVALID_ARGUMENT, "%s has no tensor '%s' (another model, adapter or optimizer?)", file, info.name);
        else if (s->dtype != st_of(info.dtype) || s->numel != info.numel)
            rc = finch_error(FINCH_ERR_INVALID_ARGUMENT, "%s: tensor '%s' is %s [%lld], this run needs %s [%lld]", file, info.name,
                             st_dtype_name(s->dtype), (long long)s->numel, st_dtype_name(st_of(info.dtype)), (long long)info.numel);
    }
    /* Only now, with everything checked, does the trainer change. */
    for (int i = 0; !rc && i < n; i++) {
        finch_optim_tensor info;
        finch_optim_tensor_info(t->opt, i, &info);
        const st_tensor *s = st_find(f, info.name);
        void *tmp = malloc(s->nbytes + 1);
        if (!tmp) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
        if (!rc) {
            memcpy(tmp, s->data, s->nbytes);  /* the mapping may be unaligned */
            rc = finch_optim_tensor_write(t->opt, i, tmp);
        }
        free(tmp);
    }
    if (!rc) {
        t->step = (int64_t)step;
        t->epoch = (int64_t)epoch;
        t->row = (int64_t)row;
        t->m->step = (uint64_t)model_step;
        t->last_saved_step = t->step;
        snprintf(t->last_checkpoint, sizeof t->last_checkpoint, "%s", dir);
    }
    cJSON_Delete(o);
    st_close(f);
    return rc;
}
