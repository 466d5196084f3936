# Install rules: libfinch.a, the public headers, the finch tool (samples/), the plugin modules
# (plugins/, through finch_add_plugin), a CMake package so that find_package(finch) gives
# finch::finch, and finch.pc for pkg-config (link statically: pkg-config --static --libs finch).
include(CMakePackageConfigHelpers)

set(FINCH_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/finch)

# Where the registry looks for installed plugins: the configured directory, and the same place
# relative to the running executable so that an install moved with --prefix still finds them.
cmake_path(ABSOLUTE_PATH FINCH_INSTALL_PLUGINDIR BASE_DIRECTORY ${CMAKE_INSTALL_PREFIX} OUTPUT_VARIABLE plugin_dir)
file(RELATIVE_PATH plugin_dir_from_bin ${CMAKE_INSTALL_FULL_BINDIR} ${plugin_dir})
set_property(SOURCE backends/registry.c APPEND PROPERTY COMPILE_DEFINITIONS
  FINCH_PLUGIN_INSTALL_DIR="${plugin_dir}" FINCH_PLUGIN_DIR_FROM_BIN="${plugin_dir_from_bin}")

install(TARGETS finch EXPORT finchTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY include/finch DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} FILES_MATCHING PATTERN "*.h")

# The package finds finch's dependencies with the very file the build uses.
install(EXPORT finchTargets NAMESPACE finch:: DESTINATION ${FINCH_INSTALL_CMAKEDIR})
configure_package_config_file(cmake/finchConfig.cmake.in ${CMAKE_CURRENT_BINARY_DIR}/finchConfig.cmake
  INSTALL_DESTINATION ${FINCH_INSTALL_CMAKEDIR})
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/finchConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/finchConfig.cmake ${CMAKE_CURRENT_BINARY_DIR}/finchConfigVersion.cmake
  DESTINATION ${FINCH_INSTALL_CMAKEDIR})
install(FILES cmake/FinchDependencies.cmake DESTINATION ${FINCH_INSTALL_CMAKEDIR} RENAME finchDependencies.cmake)

# pkg-config: prefix relative to the .pc file, so the install can be moved.
file(RELATIVE_PATH FINCH_PC_PREFIX_FROM_PCDIR ${CMAKE_INSTALL_FULL_LIBDIR}/pkgconfig ${CMAKE_INSTALL_PREFIX})
string(REGEX REPLACE "/$" "" FINCH_PC_PREFIX_FROM_PCDIR "${FINCH_PC_PREFIX_FROM_PCDIR}")
set(FINCH_PC_LIBS_PRIVATE "${OpenMP_C_FLAGS} -pthread")
foreach(lib ${CMAKE_DL_LIBS} m)
  string(APPEND FINCH_PC_LIBS_PRIVATE " -l${lib}")
endforeach()
configure_file(cmake/finch.pc.in ${CMAKE_CURRENT_BINARY_DIR}/finch.pc @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/finch.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
