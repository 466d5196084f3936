#include "tests/testing.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

int testing_passed, testing_failed;

int testing_finish(void)
{
    printf("%d passed, %d failed\n", testing_passed, testing_failed);
    return (testing_failed == 0 && testing_passed > 0) ? 0 : 1;
}

const char *testing_shared_dir(void)
{
    const char *d = getenv("FINCH_SHARED_DIR");
    return d && *d ? d : "../shared";
}

const char *testing_tmp_dir(void)
{
    const char *d = getenv("FINCH_TEST_TMP");
    return d && *d ? d : "/tmp";
}

double testing_rel_err(const float *a, const float *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)ref[i];
        num += d * d;
        den += (double)ref[i] * (double)ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

void testing_fill_random(float *x, size_t n, unsigned long long seed)
{
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        x[i] = (float)((double)(s >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    }
}
