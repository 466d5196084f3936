# CTest "install": installs the build into a scratch prefix, then builds samples/embed_minimal against
# the installed tree twice, through find_package(finch) and through pkg-config, and runs both.
# Run with cmake -P; every step's failure fails the test.
foreach(var FINCH_BUILD_DIR FINCH_SOURCE_DIR WORK_DIR C_COMPILER PKG_CONFIG GENERATOR)
  if(NOT ${var})
    message(FATAL_ERROR "test_install.cmake: -D${var}=... is required")
  endif()
endforeach()

function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}):\n${out}")
  endif()
  message(STATUS "${what}: ok")
  set(last_output "${out}" PARENT_SCOPE)
endfunction()

set(prefix ${WORK_DIR}/prefix)
file(REMOVE_RECURSE ${WORK_DIR})
run("install" ${CMAKE_COMMAND} --install ${FINCH_BUILD_DIR} --prefix ${prefix})

foreach(f include/finch/finch.h include/finch/plugin.h include/finch/types.h bin/finch)
  if(NOT EXISTS ${prefix}/${f})
    message(FATAL_ERROR "the install lacks ${f}")
  endif()
endforeach()
file(GLOB_RECURSE libs ${prefix}/*/libfinch.a)
file(GLOB_RECURSE pcs ${prefix}/*/pkgconfig/finch.pc)
file(GLOB_RECURSE configs ${prefix}/*/finchConfig.cmake)
if(NOT libs OR NOT pcs OR NOT configs)
  message(FATAL_ERROR "the install lacks libfinch.a, finch.pc or finchConfig.cmake: '${libs}' '${pcs}' '${configs}'")
endif()

# 1. find_package(finch)
run("configure embed_minimal with find_package(finch)" ${CMAKE_COMMAND}
  -S ${FINCH_SOURCE_DIR}/samples/embed_minimal -B ${WORK_DIR}/cmake-build -G ${GENERATOR}
  -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_C_COMPILER=${C_COMPILER})
run("build embed_minimal (CMake)" ${CMAKE_COMMAND} --build ${WORK_DIR}/cmake-build)
run("run embed_minimal (CMake)" ${WORK_DIR}/cmake-build/embed_minimal)
if(NOT last_output MATCHES "device: cpu:0")
  message(FATAL_ERROR "embed_minimal (CMake) printed no CPU device:\n${last_output}")
endif()

# 2. pkg-config, statically linked as libfinch is a static library
get_filename_component(pcdir "${pcs}" DIRECTORY)
set(ENV{PKG_CONFIG_PATH} ${pcdir})
execute_process(COMMAND ${PKG_CONFIG} --cflags --libs --static finch
  RESULT_VARIABLE rc OUTPUT_VARIABLE flags ERROR_VARIABLE err OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "pkg-config --static --libs finch failed: ${err}")
endif()
separate_arguments(flags UNIX_COMMAND "${flags}")
run("build embed_minimal (pkg-config)" ${C_COMPILER} -std=c11 -Wall -Wextra -Werror
  ${FINCH_SOURCE_DIR}/samples/embed_minimal/main.c -o ${WORK_DIR}/embed_minimal_pc ${flags})
run("run embed_minimal (pkg-config)" ${WORK_DIR}/embed_minimal_pc)
if(NOT last_output MATCHES "device: cpu:0")
  message(FATAL_ERROR "embed_minimal (pkg-config) printed no CPU device:\n${last_output}")
endif()
message(STATUS "${last_output}")
