# cmake --install build --prefix P: headers, libperceiver.a (+ .so), the CLI, the ImageNet labels, perceiver.pc
# and the CMake package perceiverConfig.cmake (find_package(perceiver CONFIG) -> perceiver::perceiver).
include(CMakePackageConfigHelpers)

install(DIRECTORY ${CMAKE_SOURCE_DIR}/include/perceiver DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
        FILES_MATCHING PATTERN "*.h")
set(perceiver_installed_libraries perceiver)
if(PERCEIVER_BUILD_SHARED)
  list(APPEND perceiver_installed_libraries perceiver_shared)
endif()
install(TARGETS ${perceiver_installed_libraries} EXPORT perceiverTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS perceiver_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(FILES ${CMAKE_SOURCE_DIR}/data/imagenet-1k-labels.txt DESTINATION ${CMAKE_INSTALL_DATADIR}/perceiver)

# --- CMake package ---------------------------------------------------------------------------------------
set(PERCEIVER_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/perceiver)
install(EXPORT perceiverTargets NAMESPACE perceiver:: DESTINATION ${PERCEIVER_CMAKE_DIR})
# The package's perceiver::perceiver is the shared library when BUILD_SHARED_LIBS was ON, else the static one;
# a consumer may choose with perceiver_USE_SHARED before find_package.
set(PERCEIVER_PACKAGE_DEFAULT_SHARED OFF)
if(BUILD_SHARED_LIBS AND PERCEIVER_BUILD_SHARED)
  set(PERCEIVER_PACKAGE_DEFAULT_SHARED ON)
endif()
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/perceiverConfig.cmake.in
                              ${CMAKE_BINARY_DIR}/perceiverConfig.cmake INSTALL_DESTINATION ${PERCEIVER_CMAKE_DIR})
write_basic_package_version_file(${CMAKE_BINARY_DIR}/perceiverConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/perceiverConfig.cmake ${CMAKE_BINARY_DIR}/perceiverConfigVersion.cmake
        DESTINATION ${PERCEIVER_CMAKE_DIR})

# --- pkg-config ------------------------------------------------------------------------------------------
# Relocatable: prefix is found from the .pc file's own folder.
set(PERCEIVER_PC_DIR ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
file(RELATIVE_PATH PERCEIVER_PC_TO_PREFIX /root/${PERCEIVER_PC_DIR} /root)
string(REGEX REPLACE "/$" "" PERCEIVER_PC_TO_PREFIX "${PERCEIVER_PC_TO_PREFIX}")
# What a static link of libperceiver.a needs besides it: the packages with a .pc (Requires.private) and the
# rest (Libs.private). libcurl is named as -lcurl: its own Requires.private list libraries Debian ships only as
# shared objects without -dev packages, and the shared libcurl is what we link anyway.
set(PERCEIVER_PC_REQUIRES_PRIVATE "libzip libdeflate libpng libwebp libexif libjpeg zlib")
set(PERCEIVER_PC_LIBS_PRIVATE "")
if(PERCEIVER_HUB)
  string(APPEND PERCEIVER_PC_REQUIRES_PRIVATE " libcrypto")
  string(APPEND PERCEIVER_PC_LIBS_PRIVATE " -lcurl")
endif()
if(PERCEIVER_ONEDNN)
  string(APPEND PERCEIVER_PC_LIBS_PRIVATE " -ldnnl")
endif()
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
  string(APPEND PERCEIVER_PC_LIBS_PRIVATE " -lgomp -lstdc++ -lm -lpthread")
else()
  string(APPEND PERCEIVER_PC_LIBS_PRIVATE " -lomp -lstdc++ -lm -lpthread")
endif()
string(STRIP "${PERCEIVER_PC_LIBS_PRIVATE}" PERCEIVER_PC_LIBS_PRIVATE)
# With the shared library installed, -lperceiver links it; the run path lets the program find it without
# LD_LIBRARY_PATH. Without it (PERCEIVER_BUILD_SHARED=OFF), -lperceiver is libperceiver.a and --static adds
# its dependencies.
set(PERCEIVER_PC_LIBS "-L\${libdir} -lperceiver")
if(PERCEIVER_BUILD_SHARED)
  set(PERCEIVER_PC_LIBS "-L\${libdir} -Wl,-rpath,\${libdir} -lperceiver")
endif()
# A sanitizer build's library needs the sanitizer runtimes in every program that links it.
if(PERCEIVER_SANITIZE)
  set(PERCEIVER_PC_LIBS "-fsanitize=address,undefined ${PERCEIVER_PC_LIBS}")
  foreach(library ${perceiver_installed_libraries})
    target_link_options(${library} INTERFACE $<INSTALL_INTERFACE:-fsanitize=address,undefined>)
  endforeach()
endif()
configure_file(${CMAKE_CURRENT_LIST_DIR}/perceiver.pc.in ${CMAKE_BINARY_DIR}/perceiver.pc @ONLY)
install(FILES ${CMAKE_BINARY_DIR}/perceiver.pc DESTINATION ${PERCEIVER_PC_DIR})
