/* Learning-rate schedules as Hugging Face's get_scheduler builds them: a linear warmup from 0 over
 * warmup_steps, then constant, linear decay to 0, or half a cosine to 0 at total_steps. The step is
 * the number of optimizer steps already taken, so the first step of a warmup runs at LR 0. */
#include "core/error.h"
#include "finch/train.h"

#include <math.h>
#include <string.h>

static const char *const scheduler_names[] = {"linear", "constant", "cosine"};

const char *finch_lr_scheduler_name(finch_lr_scheduler s)
{
    return (unsigned)s < sizeof scheduler_names / sizeof scheduler_names[0] ? scheduler_names[s] : "unknown";
}

finch_status finch_lr_scheduler_parse(const char *name, finch_lr_scheduler *out)
{
    for (unsigned i = 0; name && i < sizeof scheduler_names / sizeof scheduler_names[0]; i++)
        if (!strcmp(name, scheduler_names[i])) {
            *out = (finch_lr_scheduler)i;
            return FINCH_OK;
        }
    return finch_error(FINCH_ERR_INVALID_ARGUMENT, "unknown lr scheduler '%s' (linear, constant or cosine)", name ? name : "(null)");
}

double finch_lr_at(finch_lr_scheduler s, double base_lr, int64_t step, int64_t warmup_steps, int64_t total_steps)
{
    if (step < warmup_steps) return base_lr * (double)step / (double)(warmup_steps > 0 ? warmup_steps : 1);
    if (s == FINCH_LR_CONSTANT) return base_lr;
    int64_t span = total_steps - warmup_steps;
    double progress = span > 0 ? (double)(step - warmup_steps) / (double)span : 1.0;
    if (s == FINCH_LR_COSINE) {
        double f = 0.5 * (1.0 + cos(M_PI * progress));
        return base_lr * (f > 0 ? f : 0);
    }
    double f = 1.0 - progress;
    return base_lr * (f > 0 ? f : 0);
}
