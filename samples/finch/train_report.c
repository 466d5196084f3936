/* Progress display, metrics log and loss curve of `finch train`. */
#include "samples/finch/train_report.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int push(train_point **v, size_t *n, size_t *cap, int64_t step, double value)
{
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 256;
        train_point *p = realloc(*v, c * sizeof *p);
        if (!p) return -1;
        *v = p;
        *cap = c;
    }
    (*v)[(*n)++] = (train_point){step, value};
    return 0;
}

int train_report_open(train_report *r, const char *out_dir, int64_t resume_step)
{
    memset(r, 0, sizeof *r);
    r->tty = isatty(fileno(stdout));
    snprintf(r->metrics_path, sizeof r->metrics_path, "%s/metrics.jsonl", out_dir);
    snprintf(r->svg_path, sizeof r->svg_path, "%s/loss.svg", out_dir);
    /* Keep what a resumed run has already logged, up to its checkpoint. */
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", r->metrics_path, (long)getpid());
    FILE *old = resume_step > 0 ? fopen(r->metrics_path, "r") : NULL, *out = fopen(tmp, "w");
    if (!out) {
        if (old) fclose(old);
        fprintf(stderr, "finch train: cannot write %s: %s\n", tmp, strerror(errno));
        return 1;
    }
    char line[4096];
    while (old && fgets(line, sizeof line, old)) {
        cJSON *o = cJSON_Parse(line);
        const cJSON *step = cJSON_GetObjectItemCaseSensitive(o, "step"), *loss = cJSON_GetObjectItemCaseSensitive(o, "loss"),
                    *eval = cJSON_GetObjectItemCaseSensitive(o, "eval_loss");
        if (cJSON_IsNumber(step) && step->valuedouble <= (double)resume_step) {
            fputs(line, out);
            if (cJSON_IsNumber(loss)) push(&r->loss, &r->n_loss, &r->cap_loss, (int64_t)step->valuedouble, loss->valuedouble);
            if (cJSON_IsNumber(eval)) push(&r->eval, &r->n_eval, &r->cap_eval, (int64_t)step->valuedouble, eval->valuedouble);
        }
        cJSON_Delete(o);
    }
    if (old) fclose(old);
    if (fclose(out) || rename(tmp, r->metrics_path)) {
        fprintf(stderr, "finch train: cannot write %s: %s\n", r->metrics_path, strerror(errno));
        remove(tmp);
        return 1;
    }
    r->metrics = fopen(r->metrics_path, "a");
    if (!r->metrics) {
        fprintf(stderr, "finch train: cannot append to %s: %s\n", r->metrics_path, strerror(errno));
        return 1;
    }
    return 0;
}

static void duration(double s, char *buf, size_t size)
{
    long t = s > 0 && s < 1e9 ? (long)(s + 0.5) : 0;
    if (t >= 3600) snprintf(buf, size, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else if (t >= 60) snprintf(buf, size, "%ldm%02lds", t / 60, t % 60);
    else snprintf(buf, size, "%lds", t);
}

void train_report_end_line(train_report *r)
{
    if (r->bar_shown) {
        fputc('\n', stdout);
        fflush(stdout);
        r->bar_shown = 0;
    }
}

void train_report_event(train_report *r, const finch_train_progress *p)
{
    char eta[32], el[32];
    duration(p->eta_seconds, eta, sizeof eta);
    duration(p->elapsed_seconds, el, sizeof el);
    double gib = 1024.0 * 1024.0 * 1024.0;
    if (p->event == FINCH_TRAIN_EVENT_STEP) {
        if (r->metrics) {
            fprintf(r->metrics,
                    "{\"step\": %lld, \"epoch\": %.4f, \"loss\": %.17g, \"learning_rate\": %.9g, \"grad_norm\": %.9g, \"tokens\": %lld, "
                    "\"tokens_per_second\": %.1f, \"elapsed_seconds\": %.3f, \"device_memory_used\": %llu}\n",
                    (long long)p->step, p->epoch, p->loss, p->learning_rate, p->grad_norm, (long long)p->tokens, p->tokens_per_second,
                    p->elapsed_seconds, (unsigned long long)p->device_memory_used);
            fflush(r->metrics);
        }
        push(&r->loss, &r->n_loss, &r->cap_loss, p->step, p->loss);
        if (r->tty) {
            int width = 24, done = p->total_steps ? (int)(width * p->step / p->total_steps) : 0;
            char bar[64];
            for (int i = 0; i < width; i++) bar[i] = i < done ? '#' : '-';
            bar[width] = 0;
            printf("\r\033[K[%s] %lld/%lld  loss %.4f  lr %.2e  grad %.3f  %.0f tok/s  %s<%s  mem %.1f/%.1f GiB", bar, (long long)p->step,
                   (long long)p->total_steps, p->loss, p->learning_rate, p->grad_norm, p->tokens_per_second, el, eta,
                   (double)p->device_memory_used / gib, (double)p->device_memory_total / gib);
            r->bar_shown = 1;
        } else if (r->print_every <= 1 || p->step % r->print_every == 0 || p->step == p->total_steps) {
            printf("step %lld/%lld  epoch %.2f  loss %.4f  lr %.3e  grad_norm %.4f  %.0f tok/s  elapsed %s  eta %s  mem %.2f GiB\n",
                   (long long)p->step, (long long)p->total_steps, p->epoch, p->loss, p->learning_rate, p->grad_norm, p->tokens_per_second, el, eta,
                   (double)p->device_memory_used / gib);
        }
    } else if (p->event == FINCH_TRAIN_EVENT_EVAL) {
        if (r->metrics) {
            fprintf(r->metrics, "{\"step\": %lld, \"epoch\": %.4f, \"eval_loss\": %.17g}\n", (long long)p->step, p->epoch, p->eval_loss);
            fflush(r->metrics);
        }
        push(&r->eval, &r->n_eval, &r->cap_eval, p->step, p->eval_loss);
        train_report_end_line(r);
        printf("step %lld/%lld  eval_loss %.4f\n", (long long)p->step, (long long)p->total_steps, p->eval_loss);
    } else if (p->event == FINCH_TRAIN_EVENT_CHECKPOINT) {
        train_report_end_line(r);
        printf("step %lld/%lld  checkpoint %s\n", (long long)p->step, (long long)p->total_steps, p->checkpoint);
        train_report_svg(r);
    }
    fflush(stdout);
}

/* ---- loss.svg ------------------------------------------------------------------------------ */

static double nice_step(double span)
{
    double raw = span / 5, mag = pow(10, floor(log10(raw))), f = raw / mag;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag;
}

int train_report_svg(const train_report *r)
{
    if (!r->n_loss && !r->n_eval) return 0;
    const double W = 760, H = 420, L = 70, R = 20, T = 40, B = 50;
    double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
    const train_point *sets[2] = {r->loss, r->eval};
    size_t counts[2] = {r->n_loss, r->n_eval};
    for (int s = 0; s < 2; s++)
        for (size_t i = 0; i < counts[s]; i++) {
            double x = (double)sets[s][i].step, y = sets[s][i].value;
            if (!isfinite(y)) continue;
            x0 = fmin(x0, x), x1 = fmax(x1, x), y0 = fmin(y0, y), y1 = fmax(y1, y);
        }
    if (x0 > x1) return 0;
    if (x1 == x0) x1 = x0 + 1;
    if (y1 - y0 < 1e-9) y0 -= 0.5, y1 += 0.5;
    double pad = 0.05 * (y1 - y0);
    y0 -= pad, y1 += pad;
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", r->svg_path, (long)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) return 1;
#define SX(x) (L + ((x) - x0) / (x1 - x0) * (W - L - R))
#define SY(y) (H - B - ((y) - y0) / (y1 - y0) * (H - T - B))
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
               "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n", W, H, W, H);
    fprintf(f, "<text x=\"%.0f\" y=\"24\" font-size=\"15\">finch training loss</text>\n", L);
    double ys = nice_step(y1 - y0), xs = nice_step(x1 - x0);
    if (xs < 1) xs = 1;
    for (double y = ceil(y0 / ys) * ys; y <= y1; y += ys)
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/><text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.3g</text>\n",
                L, SY(y), W - R, SY(y), L - 6, SY(y) + 4, y);
    for (double x = ceil(x0 / xs) * xs; x <= x1; x += xs)
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/><text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%.0f</text>\n",
                SX(x), T, SX(x), H - B, SX(x), H - B + 18, x);
    fprintf(f, "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" stroke=\"#444\"/>\n", L, T, W - L - R, H - T - B);
    fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">step</text>\n", (L + W - R) / 2, H - 12);
    if (r->n_loss) {
        fprintf(f, "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"");
        for (size_t i = 0; i < r->n_loss; i++)
            if (isfinite(r->loss[i].value)) fprintf(f, "%.1f,%.1f ", SX((double)r->loss[i].step), SY(r->loss[i].value));
        fprintf(f, "\"/>\n<text x=\"%.0f\" y=\"%.0f\" fill=\"#1f77b4\">train loss</text>\n", W - R - 150, T + 16);
    }
    if (r->n_eval) {
        for (size_t i = 0; i < r->n_eval; i++)
            if (isfinite(r->eval[i].value))
                fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" fill=\"#d62728\"/>\n", SX((double)r->eval[i].step), SY(r->eval[i].value));
        fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" fill=\"#d62728\">eval loss</text>\n", W - R - 150, T + 32);
    }
    fprintf(f, "</svg>\n");
#undef SX
#undef SY
    if (fclose(f) || rename(tmp, r->svg_path)) {
        remove(tmp);
        return 1;
    }
    return 0;
}

void train_report_close(train_report *r)
{
    train_report_end_line(r);
    if (r->metrics) fclose(r->metrics);
    free(r->loss);
    free(r->eval);
    memset(r, 0, sizeof *r);
}
