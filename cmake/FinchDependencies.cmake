# Third-party libraries, all from Debian packages (see README: setup).
find_package(PkgConfig REQUIRED)
find_package(Threads REQUIRED)
find_package(OpenMP REQUIRED COMPONENTS C)

pkg_check_modules(CJSON REQUIRED IMPORTED_TARGET libcjson)
# PCRE2: PEFT adapters may give target_modules as a (Python-syntax) regular expression.
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)

# OpenBLAS: CPU GEMM. Debian ships openblas.pc; the cblas.h header lives in an alternatives dir.
pkg_check_modules(OPENBLAS REQUIRED IMPORTED_TARGET openblas)

set(FINCH_PUBLIC_LIBS PkgConfig::CJSON PkgConfig::PCRE2 PkgConfig::OPENBLAS OpenMP::OpenMP_C Threads::Threads ${CMAKE_DL_LIBS} m)
set(FINCH_SYSTEM_INCLUDES "")
set(FINCH_PKGCONFIG_REQUIRES "libcjson libpcre2-8 openblas")
