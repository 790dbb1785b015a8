#pragma once

// Jailed Firecracker: the jailer binary, the chroot it builds, and putting the
// VM's files into it. Vmm::Launch with VmmOptions::jail uses all of this; the
// pieces are public so that the VM manager can prepare a chroot before the
// launch (writable disk copies) and clean up after a restart.
//
// What the jailer (>= 1.7) does for `jailer --id ID --exec-file FC --uid U
// --gid G --chroot-base-dir BASE [--netns P] [--cgroup ...] -- ARGS`:
//   - copies FC into the chroot BASE/<basename of FC>/ID/root (a copy, not a
//     link: Firecracker's threat model forbids sharing its text between VMs);
//   - creates the VM's cgroups (cgroup.h) and moves itself in;
//   - unshares a mount namespace, pivot_roots into the chroot, creates
//     /dev/kvm, /dev/net/tun, /dev/urandom, /dev/userfaultfd and /run owned
//     by U:G, and chowns the chroot's root to U:G mode 0700;
//   - closes every fd but 0, 1, 2, clears the environment, and execs
//     /firecracker --id ID ... ARGS as U:G with no capabilities.
// Firecracker then installs its seccomp filters per thread (the API thread at
// once, the VMM and vCPU threads when the VM starts).
//
// Paths: Firecracker sees only its chroot, so every path given to its API
// (kernel, initrd, drives, snapshot files, the Uffd socket, vsock) is a path
// INSIDE the chroot ("jail path", "/vmlinux"); the host sees it at
// chroot_dir + jail path ("host path"). JailPaths maps between the two. A
// snapshot bakes in jail paths, so a clone in its own chroot finds its own
// copy of each disk at the same jail path.
//
// Files the VM needs are placed in the chroot by PlaceFile: a hard link when
// the file is on the chroot's file system and the VM's uid cannot write it
// (read-only files) or owns it (writable files); otherwise, at launch only, a
// bind mount (read-only for read-only files) made in a private mount
// namespace of the jailer's process, which the jailer's own namespace
// inherits: nothing is mounted on the host, and it vanishes with the VM.
// Either way the VM's uid/gid must be allowed to read the file
// (FailedPrecondition otherwise): keep shared images and snapshot memory files
// world-readable (0644) in directories only root can enter (the snapshot
// store, 0700), and give writable files to the VM with ChownForJail.
//
// Thread-safety: plain values and functions; two jails never share a chroot.

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "lib/base/process.h"
#include "lib/firecracker/cgroup.h"
#include "lib/firecracker/version.h"

namespace fcvm::firecracker {

class FirecrackerBinary;

inline const Version kMinimumJailerVersion{1, 7, 0, ""};

// A jailer executable whose version was checked.
class JailerBinary {
 public:
  // Runs `path --version` and checks it is at least 1.7.0. Errors as
  // ProbeVersion (NotFound, PermissionDenied, DeadlineExceeded, ...), and
  // FailedPrecondition naming the path and both versions for an older one.
  static absl::StatusOr<JailerBinary> Probe(const std::string& path,
                                            absl::Duration timeout = absl::Seconds(5));

  const std::string& path() const { return path_; }
  const Version& version() const { return version_; }

 private:
  JailerBinary(std::string path, Version version) : path_(std::move(path)), version_(std::move(version)) {}
  std::string path_;
  Version version_;
};

// Where a VM's jail lives on the host.
struct JailPaths {
  std::string jail_dir;    // <base>/<exec name>/<id>: everything of this VM, removed by RemoveJail
  std::string chroot_dir;  // jail_dir + "/root": "/" for Firecracker

  // "/vmlinux" -> chroot_dir + "/vmlinux". InvalidArgument unless `jail_path`
  // is absolute and free of "." and ".." components.
  absl::StatusOr<std::string> HostPath(const std::string& jail_path) const;
  // The inverse: InvalidArgument when `host_path` is not below chroot_dir.
  absl::StatusOr<std::string> JailPath(const std::string& host_path) const;
};

// The jail of VM `id` for `firecracker` under `chroot_base_dir`:
// <base>/<basename of realpath(firecracker)>/<id>/root, as the jailer builds
// it. InvalidArgument for a bad id (1-64 of [A-Za-z0-9-]), a relative base,
// or an executable whose name lacks "firecracker" (the jailer refuses it).
absl::StatusOr<JailPaths> JailPathsFor(const std::string& firecracker_path,
                                       const std::string& chroot_base_dir, const std::string& id);

// Creates jail_dir (0700, root) and chroot_dir, so that the caller can put
// files in the chroot before the launch. Idempotent.
absl::Status PrepareJail(const JailPaths& paths);

// One file the VM opens, and where it sees it.
struct JailFile {
  std::string host_path;
  std::string jail_path;  // absolute, inside the chroot
  // False: the VM must not be able to change it (kernel, initrd, read-only
  // drives, snapshot files): hard-linked only if its uid/gid cannot write it,
  // else bind-mounted read-only. True: the VM writes it (a private disk
  // copy, a log): it must already be writable by the VM's uid/gid.
  bool writable = false;
};

// Puts `file` at its jail path (parent directories created 0755; an earlier
// file there replaced). Returns the bind mount the launch must make when a
// hard link is not possible (other file system, or a read-only file the VM
// could write); with allow_bind false that case is FailedPrecondition
// instead (after the launch nothing can be mounted into the jail).
// FailedPrecondition when uid/gid may not read (or, for writable files,
// write) the file; NotFound when it does not exist. A file already at its
// jail path (host_path == HostPath(jail_path)) is only checked.
absl::StatusOr<std::optional<BindMount>> PlaceFile(const JailPaths& paths, uint32_t uid, uint32_t gid,
                                                   const JailFile& file, bool allow_bind);

// chown `host_path` to uid:gid and chmod it to `mode`: for files the caller
// creates in the chroot for the VM to write (private disk copies).
absl::Status ChownForJail(const std::string& host_path, uint32_t uid, gid_t gid, mode_t mode = 0600);

// Moves a file the jailed VM created (a snapshot, with a jail path resolved
// by HostPath) to `dest` outside the jail: rename, or copy + unlink across
// file systems; then root:root and `mode`. The VM's uid no longer owns it.
absl::Status TakeFromJail(const std::string& host_path, const std::string& dest, mode_t mode = 0644);

// Removes VM `id`'s jail: its cgroups (RemoveVmCgroups) and jail_dir with
// everything in it. OK when nothing is left. FailedPrecondition when a cgroup
// still holds a process (kill it first).
absl::Status RemoveJail(const JailPaths& paths, const CgroupHost& cgroups, const std::string& parent_cgroup,
                        const std::string& id);

// The VM ids that have a jail under `chroot_base_dir` for `firecracker`: for
// reconciliation after a restart (remove those of VMs that no longer exist).
absl::StatusOr<std::vector<std::string>> ListJails(const std::string& firecracker_path,
                                                   const std::string& chroot_base_dir);

// How a Vmm is jailed (VmmOptions::jail).
struct JailOptions {
  std::optional<JailerBinary> jailer;  // required
  // --chroot-base-dir; absolute. Put it on the file system of the images and
  // snapshots, so their files can be hard-linked in.
  std::string chroot_base_dir;
  // Both non-zero (lease them from a UidPool).
  uint32_t uid = 0;
  uint32_t gid = 0;
  // Firecracker in a new PID namespace, where it is PID 1. fcvm creates the
  // namespace when it spawns the jailer (clone CLONE_NEWPID) instead of
  // passing --new-pid-ns: the jailer then execs Firecracker in place, so
  // Firecracker stays fcvm's direct child (pidfd from clone, exit status
  // known, no child subreaper needed). As PID 1 it ignores SIGTERM.
  bool new_pid_ns = true;
  // --netns: a network namespace file (/run/netns/NAME) to join.
  std::string netns_path;
  CgroupVersion cgroup_version = CgroupVersion::kAuto;
  std::string parent_cgroup = "fcvm";
  CgroupLimits limits;
  // The host's cgroups; detected from /proc/self/mounts when unset.
  std::optional<CgroupHost> cgroup_host;
  // Files placed in the chroot before the jailer runs.
  std::vector<JailFile> files;
  // More jailer arguments, before "--" (e.g. "--resource-limit", "no-file=2048").
  std::vector<std::string> extra_jailer_args;
};

}  // namespace fcvm::firecracker
