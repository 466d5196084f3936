/* bench_tokenize: single-threaded encoding throughput of finch's tokenizer on a 10 MB mixed-language text.
 *
 *   bench_tokenize [--tokenizers DIR] [--out DIR] [--size BYTES] [--text FILE] [--repeat N] [NAME...]
 *
 * Writes OUT/text.txt (generated from a fixed seed unless --text is given: English, code, Chinese,
 * Japanese, Russian, Arabic, emoji, numbers), then for each tokenizer NAME (default: qwen3 llama3
 * llama2, each a folder of DIR, default $FINCH_SHARED_DIR/tokenizers or ../shared/tokenizers) encodes
 * the text without special tokens, whole and line by line (every line keeps its '\n'), best of N runs.
 * The ids go to OUT/ids_<NAME>_whole.i32 and OUT/ids_<NAME>_lines.i32 (int32, little-endian) so that
 * hf_tokenizers_bench.py can check Hugging Face produces the same; the timings go to stdout and
 * OUT/finch.json as JSON: mb_per_s from the best wall time, first_mb_per_s from the first run (cold cache),
 * cpu_mb_per_s from the best thread CPU time (steadier on a busy machine). MB is 10^6 bytes of input. */
#include "finch/finch.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* ---- a deterministic mixed-language text ---- */

static uint64_t rng_state = 0x5EED0F1C4u;

static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull); /* splitmix64 */
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static size_t rnd(size_t n) { return (size_t)(rng_next() % n); }

typedef struct text_buf { char *p; size_t len, cap; } text_buf;

static void put(text_buf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 1 << 20;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) { fprintf(stderr, "bench_tokenize: out of memory\n"); exit(1); }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void puts_(text_buf *b, const char *s) { put(b, s, strlen(s)); }

static void putf(text_buf *b, const char *fmt, long long v)
{
    char tmp[64];
    int n = snprintf(tmp, sizeof tmp, fmt, v);
    put(b, tmp, (size_t)n);
}

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))
#define PICK(a) ((a)[rnd(COUNT(a))])

static const char *EN_WORDS[] = {
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not",
    "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "had", "they", "you", "were",
    "their", "one", "all", "we", "can", "her", "has", "there", "been", "if", "more", "when", "will", "would",
    "who", "so", "no", "model", "training", "data", "language", "network", "learning", "gradient", "memory",
    "however", "although", "performance", "results", "experiment", "question", "answer", "between", "through",
    "government", "development", "information", "university", "international", "understanding", "because",
    "different", "important", "something", "everything", "children", "beautiful", "mountain", "river", "city",
    "weather", "morning", "evening", "yesterday", "tomorrow", "quickly", "slowly", "carefully", "probably",
    "don't", "it's", "we're", "they've", "I'm", "you'll", "she'd", "couldn't", "isn't", "what's", "let's",
    "tokenizer", "embedding", "attention", "transformer", "optimizer", "checkpoint", "dataset", "benchmark",
    "Paris", "London", "Tokyo", "Berlin", "Monday", "January", "Einstein", "Shakespeare", "Python", "Linux",
    "naïve", "café", "résumé", "coördinate", "façade", "jalapeño", "über", "São", "Zürich", "Ångström",
};
static const char *SYLLABLES[] = {
    "ka", "lo", "mi", "ren", "tor", "vel", "as", "qu", "ix", "on", "ber", "stra", "phe", "ul", "dra", "zy", "ne",
    "wa", "gh", "tion", "ment", "ic", "al", "er", "ous", "ly", "ing", "ed", "pre", "un", "re", "sch", "th",
};
static const char *PUNCT[] = {".", ".", ".", ",", ",", ";", ":", "!", "?", " -", " —", "...", ")", "\""};
static const char *ZH = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可也你子说年着"
                        "能下过家学发然都当没多天还所经开去起看长把好事些同现面机学习模型数据语言训练计算方法问题"
                        "北京上海中国世界时间工作发展社会经济历史文化科技网络信息系统研究大学老师朋友今天明天";
static const char *ZH_PUNCT[] = {"，", "。", "、", "！", "？", "：", "；", "「", "」", "（", "）"};
static const char *JA_WORDS[] = {
    "こんにちは", "ありがとう", "です", "ます", "でした", "ません", "これは", "それは", "私は", "日本語",
    "東京", "大阪", "学生", "先生", "勉強", "コンピューター", "プログラム", "データ", "モデル", "トークン",
    "の", "に", "を", "が", "は", "と", "で", "から", "まで", "ラーメン", "寿司", "桜", "山", "川", "今日",
    "明日", "天気", "いい", "とても", "少し", "たくさん", "カタカナ", "ひらがな", "漢字", "インターネット",
};
static const char *RU_WORDS[] = {
    "и", "в", "не", "на", "я", "что", "он", "с", "это", "как", "а", "по", "но", "они", "к", "у", "мы",
    "привет", "мир", "язык", "модель", "обучение", "данные", "время", "человек", "жизнь", "день", "работа",
    "слово", "место", "вопрос", "сторона", "страна", "Москва", "Россия", "университет", "программа",
    "компьютер", "сеть", "память", "результат", "эксперимент", "сегодня", "завтра", "хорошо", "быстро",
    "большой", "новый", "последний", "русский", "английский", "Україна", "Київ", "Беларусь", "ёжик", "щука",
};
static const char *AR_WORDS[] = {
    "في", "من", "على", "إلى", "عن", "مع", "هذا", "هذه", "الذي", "التي", "كان", "قال", "لا", "ما", "أن",
    "مرحبا", "العالم", "اللغة", "العربية", "النموذج", "البيانات", "التعلم", "الآلي", "الحاسوب", "الشبكة",
    "القاهرة", "بيروت", "دمشق", "اليوم", "غدا", "كتاب", "مدرسة", "جامعة", "طالب", "معلم", "شكرا", "سلام",
};
static const char *EMOJI[] = {
    "😀", "😂", "🥲", "😍", "🤔", "👍", "👍🏽", "🙏", "🎉", "🔥", "✨", "❤️", "💯", "🚀", "🌍", "🍣", "🐍",
    "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵", "🇺🇦", "🇧🇷", "👩🏻‍💻", "🧑‍🔬", "☕", "⚡", "✅", "❌", "🤖", "📈",
};
static const char *CODE_KEYWORDS[] = {"if", "for", "while", "return", "int", "float", "const", "static", "def",
                                      "class", "import", "self", "None", "True", "False", "void", "struct"};
static const char *CODE_OPS[] = {" = ", " + ", " - ", " * ", " / ", " == ", " != ", " <= ", " += ", " && ",
                                 " || ", "->", ".", ", ", "[", "]", "(", ")"};

static void en_word(text_buf *b)
{
    if (rnd(8) == 0) { /* a made-up word, so that not every word repeats */
        size_t k = 2 + rnd(3);
        for (size_t i = 0; i < k; i++) puts_(b, PICK(SYLLABLES));
    } else {
        puts_(b, PICK(EN_WORDS));
    }
}

static void number(text_buf *b)
{
    switch (rnd(7)) {
    case 0: putf(b, "%lld", (long long)rnd(100)); break;
    case 1: putf(b, "%lld", (long long)rnd(100000000)); break;
    case 2: putf(b, "%lld.", (long long)rnd(1000)); putf(b, "%02lld", (long long)rnd(100)); break;
    case 3: putf(b, "%lld-", 1900 + (long long)rnd(130)); putf(b, "%02lld-", 1 + (long long)rnd(12));
            putf(b, "%02lld", 1 + (long long)rnd(28)); break;
    case 4: putf(b, "%lld,", 1 + (long long)rnd(999)); putf(b, "%03lld,", (long long)rnd(1000));
            putf(b, "%03lld", (long long)rnd(1000)); break;
    case 5: putf(b, "%lld%%", (long long)rnd(101)); break;
    default: putf(b, "0x%llx", (long long)rnd(1u << 31)); break;
    }
}

static void english(text_buf *b)
{
    size_t sentences = 2 + rnd(6);
    for (size_t s = 0; s < sentences; s++) {
        size_t words = 4 + rnd(16);
        for (size_t w = 0; w < words; w++) {
            if (w) puts_(b, rnd(40) ? " " : "  ");
            size_t r = rnd(30);
            if (r == 0) number(b);
            else if (r == 1) puts_(b, PICK(EMOJI));
            else en_word(b);
            if (w + 1 < words && rnd(10) == 0) puts_(b, PICK(PUNCT));
        }
        puts_(b, rnd(5) ? ". " : "! ");
    }
    puts_(b, "\n");
}

static void identifier(text_buf *b)
{
    size_t k = 1 + rnd(3);
    for (size_t i = 0; i < k; i++) {
        if (i) puts_(b, rnd(2) ? "_" : "");
        puts_(b, rnd(3) ? PICK(SYLLABLES) : EN_WORDS[48 + rnd(COUNT(EN_WORDS) - 48)]);
    }
}

static void code(text_buf *b)
{
    size_t lines = 3 + rnd(12);
    for (size_t l = 0; l < lines; l++) {
        size_t indent = rnd(4);
        for (size_t i = 0; i < indent; i++) puts_(b, rnd(6) ? "    " : "\t");
        if (rnd(6) == 0) { puts_(b, "// "); english(b); continue; }
        puts_(b, PICK(CODE_KEYWORDS));
        puts_(b, " ");
        size_t terms = 1 + rnd(6);
        for (size_t t = 0; t < terms; t++) {
            if (t) puts_(b, PICK(CODE_OPS));
            if (rnd(4) == 0) number(b);
            else if (rnd(8) == 0) { puts_(b, "\""); en_word(b); puts_(b, rnd(2) ? "\\n\"" : "\""); }
            else identifier(b);
        }
        puts_(b, rnd(3) ? ";\n" : rnd(2) ? " {\n" : ":\n");
        if (rnd(10) == 0) puts_(b, "\n");
    }
}

static void utf8_chars(text_buf *b, const char *s, size_t count)
{
    size_t n = strlen(s), chars = 0;
    for (size_t i = 0; i < n; i++) chars += ((unsigned char)s[i] & 0xC0) != 0x80;
    for (size_t c = 0; c < count; c++) {
        size_t want = rnd(chars), i = 0, seen = 0;
        for (; i < n; i++) {
            if (((unsigned char)s[i] & 0xC0) != 0x80 && seen++ == want) break;
        }
        size_t j = i + 1;
        while (j < n && ((unsigned char)s[j] & 0xC0) == 0x80) j++;
        put(b, s + i, j - i);
    }
}

static void chinese(text_buf *b)
{
    size_t clauses = 2 + rnd(8);
    for (size_t c = 0; c < clauses; c++) {
        utf8_chars(b, ZH, 3 + rnd(14));
        if (rnd(12) == 0) number(b);
        if (rnd(15) == 0) { puts_(b, " "); en_word(b); puts_(b, " "); }
        puts_(b, PICK(ZH_PUNCT));
    }
    puts_(b, "\n");
}

static void words_from(text_buf *b, const char *const *list, size_t n, const char *sep, const char *end)
{
    size_t words = 5 + rnd(25);
    for (size_t w = 0; w < words; w++) {
        if (w) puts_(b, sep);
        if (rnd(25) == 0) number(b);
        else if (rnd(40) == 0) puts_(b, PICK(EMOJI));
        else puts_(b, list[rnd(n)]);
        if (rnd(12) == 0) puts_(b, ",");
    }
    puts_(b, end);
}

static void generate(text_buf *b, size_t target)
{
    while (b->len < target) {
        size_t r = rnd(100);
        if (r < 35) english(b);
        else if (r < 55) code(b);
        else if (r < 67) chinese(b);
        else if (r < 75) words_from(b, JA_WORDS, COUNT(JA_WORDS), "", "。\n");
        else if (r < 84) words_from(b, RU_WORDS, COUNT(RU_WORDS), " ", ".\n");
        else if (r < 91) words_from(b, AR_WORDS, COUNT(AR_WORDS), " ", ".\n");
        else if (r < 96) { /* a table of numbers */
            size_t rows = 2 + rnd(6), cols = 2 + rnd(5);
            for (size_t i = 0; i < rows; i++) {
                for (size_t j = 0; j < cols; j++) { puts_(b, "| "); number(b); puts_(b, " "); }
                puts_(b, "|\n");
            }
        } else {
            for (size_t i = 0, k = 1 + rnd(8); i < k; i++) puts_(b, PICK(EMOJI));
            puts_(b, "\n");
        }
        if (rnd(8) == 0) puts_(b, "\n");
    }
}

/* ---- timing ---- */

static double clock_s(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int write_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "bench_tokenize: cannot write %s: %s\n", path, strerror(errno));
        if (f) fclose(f);
        return -1;
    }
    return 0;
}

static char *read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = len >= 0 ? malloc((size_t)len + 1) : NULL;
    if (p && fread(p, 1, (size_t)len, f) != (size_t)len) { free(p); p = NULL; }
    fclose(f);
    if (p) { p[len] = 0; *n = (size_t)len; }
    return p;
}

/* Encodes text whole (lines = 0) or line by line; returns the best wall time of repeat runs (and the
 * first run's, and the best thread CPU time), ids of the last. */
static double encode_best(const finch_tokenizer *tok, const char *text, size_t len, int lines, int repeat,
                          double *first, double *best_cpu, finch_tokens *ids)
{
    double best = 1e30;
    *best_cpu = 1e30;
    for (int r = 0; r < repeat; r++) {
        ids->len = 0;
        double t0 = clock_s(CLOCK_MONOTONIC), c0 = clock_s(CLOCK_THREAD_CPUTIME_ID);
        if (!lines) {
            if (finch_tokenizer_encode(tok, text, len, 0, ids)) return -1;
        } else {
            size_t a = 0;
            while (a < len) {
                const char *nl = memchr(text + a, '\n', len - a);
                size_t b = nl ? (size_t)(nl - text) + 1 : len;
                if (finch_tokenizer_encode(tok, text + a, b - a, 0, ids)) return -1;
                a = b;
            }
        }
        double t = clock_s(CLOCK_MONOTONIC) - t0, c = clock_s(CLOCK_THREAD_CPUTIME_ID) - c0;
        if (c < *best_cpu) *best_cpu = c;
        if (r == 0) *first = t;
        if (t < best) best = t;
    }
    return best;
}

int main(int argc, char **argv)
{
    const char *dir = NULL, *out = "bench-tokenize-out", *text_path = NULL;
    size_t size = 10u * 1000 * 1000;
    int repeat = 3;
    const char *names[16];
    int n_names = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tokenizers") && i + 1 < argc) dir = argv[++i];
        else if (!strcmp(argv[i], "--out") && i + 1 < argc) out = argv[++i];
        else if (!strcmp(argv[i], "--text") && i + 1 < argc) text_path = argv[++i];
        else if (!strcmp(argv[i], "--size") && i + 1 < argc) size = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--repeat") && i + 1 < argc) repeat = atoi(argv[++i]);
        else if (argv[i][0] != '-' && n_names < 16) names[n_names++] = argv[i];
        else {
            fprintf(stderr, "usage: %s [--tokenizers DIR] [--out DIR] [--size BYTES] [--text FILE] [--repeat N] [NAME...]\n", argv[0]);
            return 2;
        }
    }
    if (repeat < 1) repeat = 1;
    if (!n_names) { names[0] = "qwen3"; names[1] = "llama3"; names[2] = "llama2"; n_names = 3; }
    char dir_buf[4096];
    if (!dir) {
        const char *shared = getenv("FINCH_SHARED_DIR");
        snprintf(dir_buf, sizeof dir_buf, "%s/tokenizers", shared ? shared : "../shared");
        dir = dir_buf;
    }
    if (mkdir(out, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "bench_tokenize: cannot create %s: %s\n", out, strerror(errno));
        return 1;
    }
    char path[8192];
    text_buf text = {0};
    if (text_path) {
        text.p = read_file(text_path, &text.len);
        if (!text.p) { fprintf(stderr, "bench_tokenize: cannot read %s\n", text_path); return 1; }
    } else {
        generate(&text, size);
    }
    snprintf(path, sizeof path, "%s/text.txt", out);
    if (write_file(path, text.p, text.len)) return 1;

    text_buf json = {0};
    puts_(&json, "{\"tool\": \"finch\", \"bytes\": ");
    putf(&json, "%lld", (long long)text.len);
    putf(&json, ", \"repeat\": %lld, \"tokenizers\": {", repeat);
    int status = 0;
    for (int k = 0; k < n_names; k++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[k]);
        finch_tokenizer *tok = NULL;
        if (finch_tokenizer_load(path, &tok)) {
            fprintf(stderr, "bench_tokenize: %s\n", finch_last_error());
            status = 1;
            continue;
        }
        if (json.p[json.len - 1] != '{') puts_(&json, ", ");
        puts_(&json, "\"");
        puts_(&json, names[k]);
        puts_(&json, "\": {");
        for (int lines = 0; lines < 2; lines++) {
            finch_tokens ids = {0};
            double first = 0, cpu = 0, best = encode_best(tok, text.p, text.len, lines, repeat, &first, &cpu, &ids);
            if (best < 0) { fprintf(stderr, "bench_tokenize: %s: %s\n", names[k], finch_last_error()); status = 1; }
            snprintf(path, sizeof path, "%s/ids_%s_%s.i32", out, names[k], lines ? "lines" : "whole");
            if (write_file(path, ids.ids, ids.len * sizeof *ids.ids)) status = 1;
            char tmp[256];
            double mb = 1e-6 * (double)text.len;
            snprintf(tmp, sizeof tmp,
                     "%s\"%s\": {\"tokens\": %zu, \"mb_per_s\": %.2f, \"first_mb_per_s\": %.2f, \"cpu_mb_per_s\": %.2f}",
                     lines ? ", " : "", lines ? "lines" : "whole", ids.len, best > 0 ? mb / best : 0,
                     first > 0 ? mb / first : 0, cpu > 0 ? mb / cpu : 0);
            puts_(&json, tmp);
            finch_tokens_free(&ids);
        }
        puts_(&json, "}");
        finch_tokenizer_free(tok);
    }
    puts_(&json, "}}\n");
    fputs(json.p, stdout);
    snprintf(path, sizeof path, "%s/finch.json", out);
    if (write_file(path, json.p, json.len)) status = 1;
    free(json.p);
    free(text.p);
    return status;
}
