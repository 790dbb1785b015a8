# fcvm_cc_library(NAME <name> SRCS ... HDRS ... DEPS ... PRIVATE_DEPS ...)
#
# One static library per lib/ module, in the manner of abseil's absl_cc_library:
# DEPS (what its headers include, passed on to its users) and PRIVATE_DEPS
# (what only its .cc files include) together are the whole list of what the
# module may include; tests/style/layering_test.cc checks both lists against
# the includes. Every target gets the project's warning flags and the
# repository root as its include directory (includes are written relative to
# the repo root).
function(fcvm_cc_library)
  cmake_parse_arguments(ARG "" "NAME" "SRCS;HDRS;DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(${ARG_NAME} STATIC ${ARG_SRCS} ${ARG_HDRS})
  target_include_directories(${ARG_NAME} PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(${ARG_NAME} PUBLIC ${ARG_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
  target_compile_options(${ARG_NAME} PRIVATE ${FCVM_WARNINGS})
endfunction()

# fcvm_cc_test(NAME <name> SRCS ... DEPS ... [LABELS ...] [TIMEOUT s])
#
# A GoogleTest binary registered with CTest through gtest_discover_tests, so every
# TEST() is its own CTest case and `ctest -L <label>` selects suites.
function(fcvm_cc_test)
  cmake_parse_arguments(ARG "" "NAME;TIMEOUT" "SRCS;DEPS;LABELS" ${ARGN})
  add_executable(${ARG_NAME} ${ARG_SRCS})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS} fcvm_testing GTest::gmock GTest::gtest_main)
  target_compile_options(${ARG_NAME} PRIVATE ${FCVM_WARNINGS})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  if(NOT ARG_LABELS)
    set(ARG_LABELS unit)
  endif()
  gtest_discover_tests(${ARG_NAME}
    PROPERTIES LABELS "${ARG_LABELS}" TIMEOUT ${ARG_TIMEOUT}
    DISCOVERY_TIMEOUT 60)
endfunction()
