# Turns the OpenCL C sources into one C array: cmake -DOUTPUT=x.h -DSOURCES="a.cl;b.cl" -P embed_sources.cmake
set(text "")
foreach(src ${SOURCES})
  file(READ ${src} body)
  get_filename_component(name ${src} NAME)
  string(APPEND text "/* ---- ${name} ---- */\n${body}\n")
endforeach()
string(HEX "${text}" hex)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
string(REGEX REPLACE "((0x[0-9a-f][0-9a-f],){24})" "\\1\n" bytes "${bytes}")
file(WRITE ${OUTPUT}.tmp "/* Generated from plugins/opencl/kernels by embed_sources.cmake; do not edit. */\n"
  "static const char ocl_program_source[] = {\n${bytes}0x00};\n")
file(RENAME ${OUTPUT}.tmp ${OUTPUT})
