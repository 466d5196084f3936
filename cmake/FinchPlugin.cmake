# Plugin build support, included by plugins/CMakeLists.txt.
#
# finch_plugin_decide(<NAME> <found> <what> <install_hint>)
#   applies FINCH_<NAME> = AUTO|ON|OFF once the toolchain was looked for: sets FINCH_<NAME>_ENABLED
#   (configured) and FINCH_<NAME>_IN_ALL (in the default build: ON, or AUTO where
#   FINCH_<NAME>_DRIVER_HERE) in the caller and prints one STATUS line either way; ON with the
#   toolchain missing is fatal.
# finch_add_plugin(<name> <sources>... [OUTPUT_DIRECTORY dir] [NO_INSTALL])
#   creates the MODULE library libfinch-<name>.so (target finch_plugin_<name>) in ${CMAKE_BINARY_DIR}/bin,
#   next to the finch executable so that the registry finds it, exporting only finch_plugin_entry,
#   and installs it to ${FINCH_INSTALL_PLUGINDIR}. Tests' fake modules pass another directory and
#   NO_INSTALL.

function(finch_plugin_decide NAME found what install_hint)
  string(TOLOWER ${NAME} dir)
  set(label "${NAME} plugin")
  if(NAME STREQUAL "OPENCL")
    set(label "OpenCL plugin")
  elseif(NAME STREQUAL "CUDA")
    set(label "CUDA plugin")
  endif()
  set(FINCH_${NAME}_ENABLED OFF PARENT_SCOPE)
  set(FINCH_${NAME}_IN_ALL OFF PARENT_SCOPE)
  if(found AND FINCH_${NAME} STREQUAL "AUTO" AND NOT FINCH_${NAME}_DRIVER_HERE)
    message(STATUS "${label}: configured, not in the default build (${what}; no driver on this machine): "
                   "`cmake --build <dir> --target finch_plugins` builds it, -DFINCH_${NAME}=ON always does")
    set(FINCH_${NAME}_ENABLED ON PARENT_SCOPE)
  elseif(found)
    message(STATUS "${label}: building (${what})")
    set(FINCH_${NAME}_ENABLED ON PARENT_SCOPE)
    set(FINCH_${NAME}_IN_ALL ON PARENT_SCOPE)
  elseif(FINCH_${NAME} STREQUAL "ON")
    message(FATAL_ERROR "${label}: FINCH_${NAME}=ON but ${what}. ${install_hint} "
                        "or configure with -DFINCH_${NAME}=AUTO (build it when possible) or OFF.")
  else()
    message(STATUS "${label}: skipped — ${what}")
  endif()
endfunction()

function(finch_add_plugin name)
  cmake_parse_arguments(PARSE_ARGV 1 arg "NO_INSTALL" "OUTPUT_DIRECTORY" "")
  if(NOT arg_OUTPUT_DIRECTORY)
    set(arg_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
  endif()
  set(target finch_plugin_${name})
  add_library(${target} MODULE ${arg_UNPARSED_ARGUMENTS})
  set_target_properties(${target} PROPERTIES
    PREFIX "lib" OUTPUT_NAME "finch-${name}" SUFFIX ".so"
    LIBRARY_OUTPUT_DIRECTORY ${arg_OUTPUT_DIRECTORY})
  target_include_directories(${target} PRIVATE ${PROJECT_SOURCE_DIR}/include ${PROJECT_SOURCE_DIR})
  target_compile_definitions(${target} PRIVATE ${FINCH_DEFS})
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:C>:${FINCH_WARNINGS}>)
  # Export nothing but the entry point, and fail at link time rather than at dlopen time on a
  # missing library.
  target_link_options(${target} PRIVATE
    -Wl,--version-script=${PROJECT_SOURCE_DIR}/cmake/finch-plugin.map -Wl,--no-undefined)
  set_property(TARGET ${target} APPEND PROPERTY LINK_DEPENDS ${PROJECT_SOURCE_DIR}/cmake/finch-plugin.map)
  if(NOT arg_NO_INSTALL)
    # OPTIONAL: a plugin left out of the default build (FinchPlugin AUTO without a driver) installs
    # when it was built.
    install(TARGETS ${target} LIBRARY DESTINATION ${FINCH_INSTALL_PLUGINDIR} OPTIONAL)
  endif()
endfunction()
