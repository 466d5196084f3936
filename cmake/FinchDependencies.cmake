# Third-party libraries, all from Debian packages (see README: setup).
find_package(PkgConfig REQUIRED)
find_package(Threads REQUIRED)
find_package(OpenMP REQUIRED COMPONENTS C)

pkg_check_modules(CJSON REQUIRED IMPORTED_TARGET libcjson)

# OpenBLAS: CPU GEMM. Debian ships openblas.pc; the cblas.h header lives in an alternatives dir.
pkg_check_modules(OPENBLAS REQUIRED IMPORTED_TARGET openblas)

# stb_image: Debian's libstb-dev ships the implementation compiled as libstb (stb.pc); finch includes
# <stb/stb_image.h> for declarations only and links the library.
pkg_check_modules(STB REQUIRED IMPORTED_TARGET stb)

set(FINCH_PUBLIC_LIBS PkgConfig::CJSON PkgConfig::OPENBLAS PkgConfig::STB OpenMP::OpenMP_C Threads::Threads ${CMAKE_DL_LIBS} m)
set(FINCH_SYSTEM_INCLUDES "")
set(FINCH_PKGCONFIG_REQUIRES "libcjson openblas stb")

# Tokenizer: PCRE2 runs the pre-tokenizer regexes of tokenizer.json; utf8proc does NFC/NFKC.
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
pkg_check_modules(UTF8PROC REQUIRED IMPORTED_TARGET libutf8proc)
list(APPEND FINCH_PUBLIC_LIBS PkgConfig::PCRE2 PkgConfig::UTF8PROC)
string(APPEND FINCH_PKGCONFIG_REQUIRES " libpcre2-8 libutf8proc")
