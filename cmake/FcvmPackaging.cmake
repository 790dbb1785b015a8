# The Debian package: `cpack -G DEB` in a release build tree, or
# scripts/package.sh. Binaries come from the install() rules of daemon/, cli/
# and pager/ (fcvmd in /usr/sbin, fcvmctl and fcvm-pager in /usr/bin); the
# rest is installed here. Depends is computed by dpkg-shlibdeps from the
# binaries, so it names the Debian runtime packages of the libraries they
# link (libgrpc++, libprotobuf, libcurl, liburing, ...).

# The unit and the default file keep the paths Debian's systemd and init
# scripts look at, whatever the install prefix.
install(FILES ${PROJECT_SOURCE_DIR}/systemd/fcvmd.service DESTINATION /lib/systemd/system)
install(FILES ${PROJECT_SOURCE_DIR}/systemd/fcvmd.default DESTINATION /etc/default RENAME fcvmd)
file(GLOB FCVM_DOCS ${PROJECT_SOURCE_DIR}/docs/*.md)
install(FILES ${PROJECT_SOURCE_DIR}/README.md ${FCVM_DOCS} DESTINATION share/doc/fcvm)

# cpack installs without building `all` first (its preinstall step would
# otherwise build every test and benchmark, one job at a time): the packaged
# binaries are built by scripts/package.sh, and before package_test by its
# dependencies.
set(CMAKE_SKIP_INSTALL_ALL_DEPENDENCY TRUE)

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME fcvm)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "fcvm developers")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "host agent that boots, snapshots and clones Firecracker microVMs")
# CPack indents each line of the long description by one space, as
# Debian's control format wants.
string(CONCAT CPACK_PACKAGE_DESCRIPTION
       "fcvmd serves a gRPC API on a Unix socket to boot Firecracker microVMs, snapshot them and\n"
       "restore many clones fast, their memory served by one userfaultfd page server. fcvmctl is\n"
       "its command-line client; fcvm-pager runs the page server on its own. Firecracker itself\n"
       "is not included.")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION admin)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${PROJECT_SOURCE_DIR}/packaging/deb/conffiles
    ${PROJECT_SOURCE_DIR}/packaging/deb/postinst
    ${PROJECT_SOURCE_DIR}/packaging/deb/prerm
    ${PROJECT_SOURCE_DIR}/packaging/deb/postrm)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION TRUE)
include(CPack)
