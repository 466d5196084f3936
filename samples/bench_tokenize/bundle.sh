#!/bin/sh
# Packs bench_tokenize with every shared library it loads, glibc's dynamic loader included, into one
# folder that runs on any x86-64 Linux, with or without finch's dependencies (libcjson, PCRE2, utf8proc)
# or a matching glibc installed. (Debian ships no static libcjson, so a fully static binary is not an
# option; the folder is the same thing in practice, about 4 MB.)
#
#   samples/bench_tokenize/bundle.sh [BINARY] [FOLDER]     (default build/bin/bench_tokenize build-bench)
#   FOLDER/run [bench_tokenize arguments]
set -eu
bin=${1:-build/bin/bench_tokenize}
out=${2:-build-bench}
[ -x "$bin" ] || { echo "bundle.sh: $bin is not built (cmake --build build --target bench_tokenize)" >&2; exit 1; }
rm -rf "$out"
mkdir -p "$out/lib"
cp "$bin" "$out/lib/bench_tokenize"
loader=
for lib in $(ldd "$bin" | awk '/=> \//{print $3} /^[ \t]*\/.*ld-linux/{print $1}'); do
    cp -L "$lib" "$out/lib/"
    case "$lib" in *ld-linux*) loader=$(basename "$lib") ;; esac
done
[ -n "$loader" ] || { echo "bundle.sh: no dynamic loader found in ldd $bin" >&2; exit 1; }
cat > "$out/run" <<RUN
#!/bin/sh
here=\$(cd "\$(dirname "\$0")" && pwd)
exec "\$here/lib/$loader" --library-path "\$here/lib" "\$here/lib/bench_tokenize" "\$@"
RUN
chmod +x "$out/run"
du -sh "$out"
