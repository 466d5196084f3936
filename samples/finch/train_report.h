/* What `finch train` shows and writes while training: a progress bar on a terminal (plain lines
 * otherwise), <out>/metrics.jsonl (one JSON object per step / eval), <out>/loss.svg. */
#ifndef FINCH_SAMPLES_TRAIN_REPORT_H
#define FINCH_SAMPLES_TRAIN_REPORT_H

#include "finch/train.h"

#include <stdio.h>

typedef struct train_point {
    int64_t step;
    double value;
} train_point;

typedef struct train_report {
    char metrics_path[4200], svg_path[4200];
    FILE *metrics;
    int tty, bar_shown;
    int64_t print_every;             /* plain lines (not a terminal): every Nth step and the last; 0 = every step */
    train_point *loss, *eval;
    size_t n_loss, n_eval, cap_loss, cap_eval;
} train_report;

/* Opens <out_dir>/metrics.jsonl. A resumed run (resume_step > 0) keeps the records up to that step
 * and drops later ones; a fresh run starts the file anew. */
int train_report_open(train_report *r, const char *out_dir, int64_t resume_step);
/* Shows and logs one progress event. */
void train_report_event(train_report *r, const finch_train_progress *p);
/* Ends the progress bar line, if one is shown. */
void train_report_end_line(train_report *r);
/* Writes <out_dir>/loss.svg (temporary file + rename). */
int train_report_svg(const train_report *r);
void train_report_close(train_report *r);

#endif
